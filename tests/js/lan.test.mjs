// Unit tests of src/atenet/web/lan.js: the page's HTTP GET and echo test over a mio session,
// against a scripted node (the end-to-end run with chromium and a real node is in
// tests/test_browser_mio.py).
import assert from "node:assert/strict";
import { test } from "node:test";

import * as lan from "../../src/atenet/web/lan.js";
import * as mio from "../../src/atenet/web/mio.js";

const text = (bytes) => new TextDecoder().decode(bytes);
const bytes = (s) => new TextEncoder().encode(s);

test("targets: URLs and HOST:PORT parse, bad ones say why in one line", () => {
  assert.deepEqual(lan.parseHttpTarget("http://10.1.0.5:8000/a/b?x=1"), { host: "10.1.0.5", port: 8000, path: "/a/b?x=1", hostHeader: "10.1.0.5:8000" });
  assert.deepEqual(lan.parseHttpTarget("10.1.0.5"), { host: "10.1.0.5", port: 80, path: "/", hostHeader: "10.1.0.5" });
  assert.equal(lan.parseHttpTarget("http://[fd00::5]:81/").host, "fd00::5");
  assert.throws(() => lan.parseHttpTarget("https://10.1.0.5/"), /only http:\/\//);
  assert.throws(() => lan.parseHttpTarget(""), /give an address/);
  assert.throws(() => lan.parseHttpTarget("http://a b/"), /not a URL/);
  assert.deepEqual(lan.parseHostPort("10.1.0.5:7"), { host: "10.1.0.5", port: 7 });
  assert.deepEqual(lan.parseHostPort("[fd00::5]:7"), { host: "fd00::5", port: 7 });
  assert.throws(() => lan.parseHostPort("10.1.0.5"), /give HOST:PORT/);
  assert.throws(() => lan.parseHostPort("10.1.0.5:70000"), /outside 1-65535/);
});

test("responses: status, headers, body; chunked bodies joined; junk refused", () => {
  const r = lan.parseHttpResponse(bytes("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello"));
  assert.equal(r.status, 200);
  assert.equal(r.reason, "OK");
  assert.deepEqual(r.headers, [["content-type", "text/plain"]]);
  assert.equal(text(r.body), "hello");
  const c = lan.parseHttpResponse(bytes("HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"));
  assert.equal(c.status, 404);
  assert.equal(text(c.body), "abcde");
  assert.throws(() => lan.parseHttpResponse(bytes("SSH-2.0-OpenSSH\r\n\r\n")), /not an HTTP response/);
  assert.throws(() => lan.parseHttpResponse(bytes("HTTP/1.0 200")), /without a header end/);
});

test("errors: the errno's meaning with the node's reason", () => {
  assert.equal(lan.describe(new mio.MioError(111, "")), "connection refused (nothing listens there)");
  assert.match(lan.describe(new mio.MioError(113, "no ARP answer from 10.1.0.9")), /^no route to the host.*: no ARP answer/);
  assert.equal(lan.describe(new mio.MioError(111, "connection refused")), "connection refused (nothing listens there)");
  assert.equal(lan.describe(new mio.MioError(5, "odd")), "odd (errno 5)");
});

/** A scripted node: records what the page sends. */
class FakeWs {
  constructor() {
    this.sent = [];
    this.wake = null;
  }
  send(raw) {
    this.sent.push(mio.decode(raw));
    this.wake?.();
  }
  async next(...ops) {
    for (;;) {
      const i = this.sent.findIndex((m) => ops.includes(m.op));
      if (i >= 0) return this.sent.splice(i, 1)[0];
      await new Promise((resolve) => (this.wake = resolve));
    }
  }
}

test("fetch: one GET, the reply read to its end, shown as text", async () => {
  const ws = new FakeWs();
  const session = new mio.MioSession(ws, {});
  const pending = lan.fetchOverMio(session, "http://10.1.0.5:8000/hi?x=<b>");
  const connect = await ws.next(mio.Op.CONNECT);
  assert.deepEqual(connect.remote, { address: "10.1.0.5", port: 8000 });
  const reply = (m) => session.onMessage(mio.encode({ ...m, id: connect.id }));
  reply({ op: mio.Op.CONNECTED, local: { address: "10.1.0.9", port: 40000 }, remote: connect.remote, credit: 65536 });
  const request = text((await ws.next(mio.Op.DATA)).payload);
  assert.match(request, /^GET \/hi\?x=%3Cb%3E HTTP\/1\.0\r\nHost: 10\.1\.0\.5:8000\r\n/);
  assert.ok(request.endsWith("\r\n\r\n"));
  reply({ op: mio.Op.DATA, payload: bytes("HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<script>x</script>") });
  reply({ op: mio.Op.SHUTDOWN });
  const r = await pending;
  assert.equal(r.status, 200);
  assert.equal(r.text, "<script>x</script>"); // the page shows it with textContent
  assert.deepEqual(r.from, { address: "10.1.0.9", port: 40000 });
  assert.equal((await ws.next(mio.Op.CLOSE)).abort, false);
});

test("fetch: a refused connection rejects with errno 111", async () => {
  const ws = new FakeWs();
  const session = new mio.MioSession(ws, {});
  const pending = lan.fetchOverMio(session, "http://10.1.0.5:81/");
  const connect = await ws.next(mio.Op.CONNECT);
  session.onMessage(mio.encode({ op: mio.Op.ERROR, id: connect.id, errno: 111, reason: "" }));
  await assert.rejects(pending, (err) => err.errno === 111);
});

test("echo: the bytes sent come back, compared; a half-close ends the sending", async () => {
  const ws = new FakeWs();
  const session = new mio.MioSession(ws, {});
  const pending = lan.echoOverMio(session, "10.1.0.5:7", 100000);
  const connect = await ws.next(mio.Op.CONNECT);
  const reply = (m) => session.onMessage(mio.encode({ ...m, id: connect.id }));
  reply({ op: mio.Op.CONNECTED, local: { address: "10.1.0.9", port: 40001 }, remote: connect.remote, credit: 1 << 20 });
  let got = 0;
  for (;;) {
    const m = await ws.next(mio.Op.DATA, mio.Op.SHUTDOWN); // in the order the page sent them
    if (m.op === mio.Op.SHUTDOWN) break;
    got += m.payload.length;
    reply({ op: mio.Op.DATA, payload: m.payload });
  }
  assert.equal(got, 100000);
  reply({ op: mio.Op.SHUTDOWN });
  const r = await pending;
  assert.deepEqual([r.sent, r.received, r.same], [100000, 100000, true]);
});
