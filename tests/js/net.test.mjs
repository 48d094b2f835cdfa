// Unit tests of src/atenet/web/net.js: tokens, address text, two hosts pinging each other.
//
// When tests/test_web_js.py runs this file it sets ATENET_WEB_VECTORS to a JSON file of values
// computed by the Python package (addresses, token, frames) and ATENET_WEB_OUT to a directory:
// the cross-checks below compare against those values and write this host's answers to
// Python-built requests into replies.json, which the Python test parses with atenet.wire.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import * as net from "../../src/atenet/web/net.js";

const { fromHex, toHex } = net;
const vectorsPath = process.env.ATENET_WEB_VECTORS;
const vectors = vectorsPath ? JSON.parse(readFileSync(vectorsPath, "utf8")) : null;
const noVectors = vectors ? false : "ATENET_WEB_VECTORS not set (run through tests/test_web_js.py)";

function b64url(bytes) {
  return Buffer.from(bytes).toString("base64url");
}

test("tokens: good one decodes, bad ones explain themselves", () => {
  const raw = new Uint8Array([1, ...new Array(16).fill(7), 0, 0, 1, 2, ...new Array(32).fill(9), 1, 14, ...new TextEncoder().encode("127.0.0.1:7000")]);
  const token = net.parseToken(`#atn1.${b64url(raw)}`);
  assert.equal(token.networkHex, "07".repeat(16));
  assert.equal(token.keyId, 258);
  assert.deepEqual(token.endpoints, ["127.0.0.1:7000"]);
  assert.throws(() => net.parseToken(""), /no access token/);
  assert.throws(() => net.parseToken("#hello"), /not an atenet access token/);
  assert.throws(() => net.parseToken("atn1.!!!!"), /damaged/);
  assert.throws(() => net.parseToken(`atn1.${b64url(raw.slice(0, 40))}`), /truncated/);
  assert.throws(() => net.parseToken(`atn1.${b64url(raw.slice(0, raw.length - 1))}`), /truncated/);
  assert.throws(() => net.parseToken(`atn1.${b64url(new Uint8Array([...raw, 0]))}`), /trailing/);
  const v2 = raw.slice();
  v2[0] = 2;
  assert.throws(() => net.parseToken(`atn1.${b64url(v2)}`), /version 2/);
});

test("IPv6 text: RFC 5952 formatting and parsing", () => {
  const cases = [
    ["fd00::1", "fd00:0000:0000:0000:0000:0000:0000:0001"],
    ["::", "0000:0000:0000:0000:0000:0000:0000:0000"],
    ["1:0:0:2::3", "0001:0000:0000:0002:0000:0000:0000:0003"],
    ["fd12:3456:789a:1:0:1:2:3", "fd12:3456:789a:0001:0000:0001:0002:0003"],
    ["ff02::1:ff00:1", "ff02:0000:0000:0000:0000:0001:ff00:0001"],
  ];
  for (const [text, full] of cases) {
    const bytes = fromHex(full.replaceAll(":", ""));
    assert.equal(net.formatIp6(bytes), text);
    assert.deepEqual(net.parseIp6(text), bytes);
    assert.deepEqual(net.parseIp6(full), bytes);
  }
  assert.deepEqual(net.parseIp6("::ffff:10.0.0.1"), fromHex("00000000000000000000ffff0a000001"));
  for (const bad of ["1::2::3", "12345::", "1:2:3:4:5:6:7:8:9", "10.0.0.1", "g::1", "1:2:3:4:5:6:7"]) {
    assert.equal(net.parseIp6(bad), null, bad);
  }
  assert.equal(net.parseIp4("10.0.0.256"), null);
  assert.deepEqual(net.parseIp4("10.1.2.3"), new Uint8Array([10, 1, 2, 3]));
});

/** Two hosts joined by a wire that delivers asynchronously (like a socket). */
function pair({ dropAll = false } = {}) {
  const networkId = new Uint8Array(16).fill(1);
  const hosts = [];
  for (const name of ["a", "b"]) {
    const mac = net.stableMac(networkId, new TextEncoder().encode(name));
    hosts.push(
      new net.Host({
        mac,
        ip4: net.ipv4For(networkId, mac, "10.9.8.0/24"),
        ip6: net.ipv6For(networkId, mac, "fd00:1:2:3::/64"),
        send: (frame) => {
          if (dropAll) return;
          const other = hosts[name === "a" ? 1 : 0];
          setImmediate(() => other.receive(frame));
        },
      }),
    );
  }
  return hosts;
}

test("two hosts: ARP, IPv4 ping, IPv6 ping (ND)", async () => {
  const [a, b] = pair();
  a.announce();
  b.announce();
  await new Promise((r) => setTimeout(r, 10));
  // Gratuitous ARP taught each the other's MAC.
  assert.deepEqual(a.neighbors.get(net.formatIp4(b.ip4)), b.mac);
  const seen = [];
  const rtts4 = await a.ping(net.formatIp4(b.ip4), { count: 3, interval: 5, timeout: 500, onReply: (r) => seen.push(r) });
  assert.equal(rtts4.length, 3);
  for (const rtt of rtts4) assert.ok(typeof rtt === "number" && rtt >= 0 && rtt < 500);
  assert.deepEqual(seen.map((r) => r.seq), [1, 2, 3]);
  const rtts6 = await b.ping(net.formatIp6(a.ip6), { count: 2, interval: 5, timeout: 500 });
  for (const rtt of rtts6) assert.ok(typeof rtt === "number" && rtt >= 0);
  assert.deepEqual(b.neighbors.get(net.formatIp6(a.ip6)), a.mac);
  assert.ok(b.stats.answered >= 3);
});

test("ping of an address nobody answers gives null per request, no hang", async () => {
  const [a] = pair({ dropAll: true });
  const results = await a.ping("10.9.8.77", { count: 2, resolveOptions: { tries: 2, interval: 5 } });
  assert.deepEqual(results, [null, null]);
  await assert.rejects(a.ping("not an address"), /not an address/);
  await assert.rejects(a.ping(net.formatIp4(a.ip4)), /own address/);
});

test("ping timeout when the peer resolves but never answers echo", async () => {
  const [a, b] = pair();
  b.receiveIcmp = () => {}; // deaf to ICMP, still answers ARP
  const results = await a.ping(net.formatIp4(b.ip4), { count: 2, interval: 5, timeout: 30 });
  assert.deepEqual(results, [null, null]);
  assert.equal(a.pending.size, 0);
});

test("frames for another MAC are ignored (the switch floods)", () => {
  const [a, b] = pair({ dropAll: true });
  const sent = [];
  b.send = (f) => sent.push(f);
  const stranger = new Uint8Array([2, 0, 0, 0, 0, 9]);
  b.receive(net.icmpEchoRequest(a.mac, stranger, a.ip4, b.ip4, 1, 1));
  assert.equal(sent.length, 0);
  b.receive(net.icmpEchoRequest(a.mac, b.mac, a.ip4, b.ip4, 1, 1));
  assert.equal(sent.length, 1);
});

test("Session: hello, welcome, frames, status, refusal", () => {
  const sent = [];
  let socket = null;
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 1;
      socket = this;
    }
    send(data) {
      sent.push(data);
    }
    close() {}
  }
  const token = net.parseToken(`atn1.${b64url(new Uint8Array([1, ...new Array(16).fill(3), 0, 0, 0, 5, ...new Array(32).fill(4), 0]))}`);
  const events = [];
  const session = new net.Session({
    url: "ws://127.0.0.1:1/ws",
    token,
    hostKey: new Uint8Array(16),
    WebSocketImpl: FakeSocket,
    now: () => 1700000000000,
    random: (n) => new Uint8Array(n).fill(0xab),
    onWelcome: (w, host) => events.push(["welcome", w.name, net.formatIp4(host.ip4)]),
    onStatus: (s) => events.push(["status", s.port]),
    onClose: (c) => events.push(["close", c.refused, c.welcomed]),
  });
  session.open();
  socket.onopen();
  const hello = JSON.parse(sent[0]);
  assert.equal(hello.op, "hello");
  assert.equal(hello.network, "03".repeat(16));
  assert.equal(hello.key_id, 5);
  assert.equal(hello.time, 1700000000000);
  assert.equal(hello.nonce, "ab".repeat(16));
  assert.equal(hello.mac, net.helloMessage(token, net.authKey(token.secret), 1700000000000, new Uint8Array(16).fill(0xab)).mac);
  socket.onmessage({ data: JSON.stringify({ op: "welcome", node: "n1", name: "lan", cidr: "10.1.2.0/24", cidr6: "fd00:1::/64", mtu: 1400 }) });
  // The welcome starts the host: a gratuitous ARP and an unsolicited NA go out as binary.
  assert.equal(sent.length, 3);
  assert.ok(sent[1] instanceof Uint8Array && sent[1].length === 42);
  socket.onmessage({ data: JSON.stringify({ op: "status", ports: [], members: [], port: "ws-1" }) });
  socket.onclose({ code: 4403, reason: "" });
  assert.deepEqual(events[1], ["status", "ws-1"]);
  assert.deepEqual(events[2], ["close", true, true]);
  assert.equal(events[0][0], "welcome");
  assert.equal(session.counters.framesOut, 2);
});

// --- cross-checks against the Python package ---------------------------------------------------

test("addresses match atenet.addressing", { skip: noVectors }, () => {
  for (const v of vectors.addressing) {
    const networkId = fromHex(v.network_id);
    const mac = net.stableMac(networkId, fromHex(v.host_key));
    assert.equal(toHex(mac), v.mac);
    assert.equal(net.formatIp4(net.ipv4For(networkId, mac, v.cidr)), v.ip4, `${v.cidr}`);
    assert.equal(net.formatIp6(net.ipv6For(networkId, mac, v.cidr6)), v.ip6);
  }
});

test("token, auth key and hello MAC match atenet.token and the node's HKDF", { skip: noVectors }, () => {
  const t = vectors.token;
  const token = net.parseToken(`#${t.text}`);
  assert.equal(token.networkHex, t.network_id);
  assert.equal(token.keyId, t.key_id);
  assert.equal(toHex(token.secret), t.secret);
  assert.deepEqual(token.endpoints, t.endpoints);
  assert.equal(toHex(net.authKey(token.secret)), t.auth_key);
  const hello = net.helloMessage(token, net.authKey(token.secret), t.hello_time, fromHex(t.hello_nonce));
  assert.equal(hello.mac, t.hello_mac);
});

test("frames are byte-identical to atenet.wire's builders", { skip: noVectors }, () => {
  const f = vectors.frames;
  const p = Object.fromEntries(Object.entries(f.params).map(([k, v]) => [k, typeof v === "string" ? fromHex(v) : v]));
  const built = {
    arp_request: net.arpRequest(p.mac_a, p.ip4_a, p.ip4_b),
    arp_reply: net.arpReply(p.mac_b, p.ip4_b, p.mac_a, p.ip4_a),
    gratuitous_arp: net.gratuitousArp(p.mac_a, p.ip4_a),
    icmp_echo_request: net.icmpEchoRequest(p.mac_a, p.mac_b, p.ip4_a, p.ip4_b, p.ident, p.seq, p.payload),
    icmp_echo_reply: net.icmpEchoReply(p.mac_b, p.mac_a, p.ip4_b, p.ip4_a, p.ident, p.seq, p.payload),
    icmpv6_echo_request: net.icmpv6EchoRequest(p.mac_a, p.mac_b, p.ip6_a, p.ip6_b, p.ident, p.seq, p.payload),
    icmpv6_echo_reply: net.icmpv6EchoReply(p.mac_b, p.mac_a, p.ip6_b, p.ip6_a, p.ident, p.seq, p.payload),
    neighbor_solicitation: net.neighborSolicitation(p.mac_a, p.ip6_a, p.ip6_b),
    neighbor_advertisement: net.neighborAdvertisement(p.mac_b, p.ip6_b, p.mac_a, p.ip6_a),
    neighbor_advertisement_unsolicited: net.neighborAdvertisement(p.mac_b, p.ip6_b),
  };
  for (const [name, frame] of Object.entries(built)) assert.equal(toHex(frame), f.expected[name], name);
});

test("the host answers Python-built requests (replies checked by atenet.wire)", { skip: noVectors }, () => {
  const p = vectors.frames.params;
  const replies = {};
  let current = null;
  const host = new net.Host({
    mac: fromHex(p.mac_b),
    ip4: fromHex(p.ip4_b),
    ip6: fromHex(p.ip6_b),
    send: (frame) => replies[current].push(toHex(frame)),
  });
  for (const [name, hex] of Object.entries(vectors.requests)) {
    current = name;
    replies[name] = [];
    host.receive(fromHex(hex));
  }
  // Every request got exactly one answer, except the ones meant to be ignored.
  for (const name of Object.keys(vectors.requests)) {
    assert.equal(replies[name].length, name.startsWith("ignore_") ? 0 : 1, name);
  }
  if (process.env.ATENET_WEB_OUT) writeFileSync(join(process.env.ATENET_WEB_OUT, "replies.json"), JSON.stringify(replies));
});

test("Session: an unusable welcome is reported and closes, nothing thrown", () => {
  let socket = null;
  let closed = false;
  class FakeSocket {
    constructor() {
      this.readyState = 1;
      socket = this;
    }
    send() {}
    close() {
      closed = true;
    }
  }
  const token = net.parseToken(`atn1.${b64url(new Uint8Array([1, ...new Array(16).fill(3), 0, 0, 0, 5, ...new Array(32).fill(4), 0]))}`);
  const events = [];
  const session = new net.Session({ url: "ws://x/ws", token, hostKey: new Uint8Array(16), WebSocketImpl: FakeSocket, onEvent: (k, t) => events.push([k, t]) });
  session.open();
  socket.onmessage({ data: JSON.stringify({ op: "welcome", cidr: "nonsense" }) });
  assert.equal(closed, true);
  assert.equal(session.host, null);
  assert.match(events[0][1], /unusable welcome/);
  class Throwing {
    constructor() {
      throw new Error("insecure");
    }
  }
  const closes = [];
  new net.Session({ url: "ws://x/ws", token, hostKey: new Uint8Array(16), WebSocketImpl: Throwing, onClose: (c) => closes.push(c) }).open();
  assert.deepEqual(closes, [{ code: 0, reason: "insecure", refused: false, welcomed: false }]);
});
