// Unit tests of src/atenet/web/mio.js: the bus codec against Python's (vectors from
// tests/test_web_js.py: `mio` holds messages encoded by atenet.mio.bus) and a session's
// credit flow control against a scripted node.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import * as mio from "../../src/atenet/web/mio.js";
import { fromHex, toHex } from "../../src/atenet/web/net.js";

const vectorsPath = process.env.ATENET_WEB_VECTORS;
const vectors = vectorsPath ? JSON.parse(readFileSync(vectorsPath, "utf8")) : null;
const noVectors = vectors ? false : "ATENET_WEB_VECTORS not set (run through tests/test_web_js.py)";

test("bus: every message Python encodes decodes and re-encodes to the same bytes", { skip: noVectors }, () => {
  assert.ok(vectors.mio.length >= 20);
  for (const hex of vectors.mio) {
    const msg = mio.decode(fromHex(hex));
    assert.equal(toHex(mio.encode(msg)), hex, JSON.stringify(msg));
  }
});

test("bus: messages this page builds, for Python to decode", { skip: noVectors }, () => {
  const built = [
    mio.encode({ op: mio.Op.CONNECT, id: 1, remote: { address: "10.1.0.7", port: 80 } }),
    mio.encode({ op: mio.Op.CONNECT, id: 2, remote: { address: "fd00::7", port: 443 }, localPort: 5000, timeoutMs: 3000 }),
    mio.encode({ op: mio.Op.DATA, id: 1, payload: new TextEncoder().encode("GET / HTTP/1.0\r\n\r\n") }),
    mio.encode({ op: mio.Op.CREDIT, id: 1, amount: 65536 }),
    mio.encode({ op: mio.Op.SHUTDOWN, id: 1 }),
    mio.encode({ op: mio.Op.CLOSE, id: 1, abort: true }),
    mio.encode({ op: mio.Op.PING, id: 5, address: "10.1.0.1", size: 56, timeoutMs: 1000 }),
    mio.encode({ op: mio.Op.RESOLVE, id: 6, name: "printer.lan" }),
    mio.encode({ op: mio.Op.ERROR, id: 9, errno: 111, reason: "é".repeat(400) }),
  ];
  writeFileSync(join(process.env.ATENET_WEB_OUT, "mio.json"), JSON.stringify(built.map(toHex)));
});

test("bus: bad messages say what is wrong", () => {
  assert.throws(() => mio.decode(new Uint8Array(3)), /shorter than its 5-byte header/);
  assert.throws(() => mio.decode(new Uint8Array([99, 0, 0, 0, 1])), /unknown bus op 99/);
  assert.throws(() => mio.decode(new Uint8Array([mio.Op.DATA, 0, 0, 0, 1])), /DATA without payload/);
  assert.throws(() => mio.decode(new Uint8Array([mio.Op.CONNECT, 0, 0, 0, 1, 5, 0, 0])), /length 5/);
  assert.throws(() => mio.decode(new Uint8Array([mio.Op.CREDIT, 0, 0, 0, 1, 0, 0, 0, 0])), /CREDIT of 0/);
});

/** A scripted node: records what the page sends, lets the test answer. */
class FakeWs {
  constructor() {
    this.sent = [];
  }
  send(bytes) {
    this.sent.push(mio.decode(bytes));
  }
  take() {
    return this.sent.splice(0);
  }
}

test("session: connect, credit-limited writes, reads grant credit back, close", async () => {
  const ws = new FakeWs();
  const session = new mio.MioSession(ws, {});
  const pending = session.connect("10.1.0.7", 80);
  const [connect] = ws.take();
  assert.equal(connect.op, mio.Op.CONNECT);
  assert.deepEqual(connect.remote, { address: "10.1.0.7", port: 80 });
  session.onMessage(mio.encode({ op: mio.Op.CONNECTED, id: connect.id, local: { address: "10.1.0.9", port: 40000 }, remote: connect.remote, credit: 1000 }));
  const stream = await pending;
  assert.equal(stream.local.port, 40000);

  // 2,500 bytes against 1,000 of credit: 1,000 go, the rest waits for CREDIT.
  let written = false;
  const write = stream.write(new Uint8Array(2500).fill(7)).then(() => (written = true));
  assert.deepEqual(ws.take().map((m) => [m.op, m.payload.length]), [[mio.Op.DATA, 1000]]);
  await Promise.resolve();
  assert.equal(written, false);
  session.onMessage(mio.encode({ op: mio.Op.CREDIT, id: connect.id, amount: 4000 }));
  assert.deepEqual(ws.take().map((m) => m.payload.length), [1500]);
  await write;
  assert.equal(written, true);

  // The node sends a window's quarter: reading it grants it back.
  for (let i = 0; i < 4; i++) session.onMessage(mio.encode({ op: mio.Op.DATA, id: connect.id, payload: new Uint8Array(mio.WINDOW / 16) }));
  assert.deepEqual(ws.take(), []); // nothing read yet: nothing granted
  for (let i = 0; i < 4; i++) await stream.read();
  assert.deepEqual(ws.take().map((m) => [m.op, m.amount]), [[mio.Op.CREDIT, mio.WINDOW / 4]]);

  session.onMessage(mio.encode({ op: mio.Op.SHUTDOWN, id: connect.id }));
  assert.equal(await stream.read(), null);
  stream.close();
  assert.deepEqual(ws.take().map((m) => [m.op, m.abort]), [[mio.Op.CLOSE, false]]);
});

test("session: errors reject with the node's errno and reason", async () => {
  const ws = new FakeWs();
  const session = new mio.MioSession(ws, {});
  const pending = session.connect("10.1.0.7", 81);
  const [connect] = ws.take();
  session.onMessage(mio.encode({ op: mio.Op.ERROR, id: connect.id, errno: 111, reason: "refused by 10.1.0.7:81" }));
  await assert.rejects(pending, (err) => err.errno === 111 && /refused/.test(err.message));
  const ping = session.ping("10.1.0.1");
  session.onClose("gone");
  await assert.rejects(ping, /gone/);
});
