// Unit tests of net.js's DHCPv4 client on a fake clock. The exchange against the real Python
// server (atenet.router.dhcp) is in tests/test_web_dhcp.py; these cover what is easier to set
// up here: the retransmission schedule and fallback, replies a server would rarely send
// (no T1/T2, an infinite or a 30-day lease, a NAK while renewing), and garbage input.
import assert from "node:assert/strict";
import { test } from "node:test";

import * as net from "../../src/atenet/web/net.js";
import { FakeClock } from "./fakeclock.mjs";

const { DHCP, DHCP_OPT, fromHex } = net;
const MAC = fromHex("02123456789a");
const SERVER_MAC = fromHex("02feedfeed01");
const SERVER = new Uint8Array([10, 5, 0, 1]);
const CIDR = "10.5.0.0/24";

/** A client on a fake clock whose frames are collected (parsed) in `sent`. */
function client(options = {}) {
  const clock = new FakeClock();
  const sent = [];
  const events = [];
  const c = new net.Dhcp4Client({
    mac: MAC,
    hostName: "tab",
    cidr: CIDR,
    now: clock.now,
    timers: clock.timers,
    random: () => 0.5, // no jitter
    transmit: (frame) => sent.push({ at: clock.now(), frame, msg: parseClientFrame(frame) }),
    onBound: (lease) => events.push(["bound", net.formatIp4(lease.ip), lease]),
    onLost: (lease) => events.push(["lost", net.formatIp4(lease.ip)]),
    onFallback: () => events.push(["fallback", clock.now()]),
    ...options,
  });
  return { c, clock, sent, events };
}

/** The DHCP message inside a client frame (UDP 68 → 67), parsed. */
function parseClientFrame(frame) {
  const ihl = (frame[14] & 0x0f) * 4;
  return net.parseDhcpMessage(frame.subarray(14 + ihl + 8));
}

/** A server reply to `request` as a frame to the client (UDP 67 → 68). */
function reply(request, type, { yiaddr = [10, 5, 0, 77], options = [], xid = request.xid, chaddr = request.chaddr, server = SERVER } = {}) {
  const serverId = server ? [[DHCP_OPT.SERVER_ID, server]] : [];
  const message = net.dhcpMessage({
    op: 2,
    xid,
    chaddr,
    yiaddr: new Uint8Array(yiaddr),
    options: [[DHCP_OPT.MESSAGE_TYPE, new Uint8Array([type])], ...serverId, ...options],
  });
  const udp = net.udpDatagram(SERVER, new Uint8Array(yiaddr), 67, 68, message);
  return net.ethernetFrame(MAC, SERVER_MAC, net.ETHERTYPE_IPV4, net.ipv4Packet(SERVER, new Uint8Array(yiaddr), 17, udp));
}

const u32 = (v) => new Uint8Array([v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255]);

/** Run the client to BOUND with an ACK carrying `ackOptions`. */
function bind(ackOptions) {
  const t = client();
  t.c.start();
  assert.ok(t.c.receive(reply(t.sent[0].msg, DHCP.OFFER)));
  assert.equal(t.c.state, "requesting");
  assert.ok(t.c.receive(reply(t.sent[1].msg, DHCP.ACK, { options: ackOptions })));
  return t;
}

test("DISCOVER at 0, 1, 3, 7 s (one xid), then 15 s …; fallback once at 7 s", () => {
  const { c, clock, sent, events } = client();
  c.start();
  clock.advance(6999);
  assert.deepEqual(events, []);
  clock.advance(1);
  assert.deepEqual(events, [["fallback", 7000]]);
  clock.advance(200000);
  const times = sent.map((s) => s.at);
  assert.deepEqual(times.slice(0, 8), [0, 1000, 3000, 7000, 15000, 31000, 63000, 127000]);
  assert.equal(times[8], 191000); // capped at 64 s
  assert.ok(sent.every((s) => s.msg.type === DHCP.DISCOVER && s.msg.xid === sent[0].msg.xid));
  assert.equal(events.length, 1);
  // Broadcast from 0.0.0.0 with our MAC as chaddr, the broadcast flag clear.
  const frame = sent[0].frame;
  assert.deepEqual(frame.subarray(0, 6), net.BROADCAST_MAC);
  assert.deepEqual(sent[0].msg.chaddr, MAC);
  assert.equal(sent[0].msg.flags, 0);
  assert.equal(new TextDecoder().decode(sent[0].msg.options.get(DHCP_OPT.HOST_NAME)), "tab");
  c.stop();
  const before = sent.length;
  clock.advance(1e6);
  assert.equal(sent.length, before, "a stopped client sends nothing");
});

test("an ACK without T1/T2 renews at half the lease and rebinds at 7/8", () => {
  const { c, clock, sent, events } = bind([[DHCP_OPT.LEASE_TIME, u32(1000)]]);
  const lease = events[0][2];
  assert.deepEqual([lease.leaseSecs, lease.t1Secs, lease.t2Secs, lease.prefix], [1000, 500, 875, 24]);
  assert.equal(lease.router, null);
  const n = sent.length;
  clock.advance(499999);
  assert.equal(sent.length, n);
  clock.advance(1);
  assert.equal(c.state, "renewing");
  assert.deepEqual(sent[n].frame.subarray(0, 6), SERVER_MAC); // unicast to the server
  clock.advance(375000);
  assert.equal(c.state, "rebinding");
  clock.advance(125000);
  assert.deepEqual(events.at(-1), ["lost", "10.5.0.77"]);
  assert.equal(c.state, "selecting");
});

test("a NAK while renewing drops the address and starts over at once", () => {
  const { c, clock, sent, events } = bind([[DHCP_OPT.LEASE_TIME, u32(100)]]);
  clock.advance(50000);
  const renewal = sent.at(-1).msg;
  assert.deepEqual(renewal.ciaddr, new Uint8Array([10, 5, 0, 77]));
  assert.ok(c.receive(reply(renewal, DHCP.NAK, { yiaddr: [0, 0, 0, 0] })));
  assert.deepEqual(events.at(-1), ["lost", "10.5.0.77"]);
  assert.equal(sent.at(-1).msg.type, DHCP.DISCOVER);
  assert.equal(c.stats.naks, 1);
  // A NAK from another server (a different server id) is not ours to obey.
  const t = bind([[DHCP_OPT.LEASE_TIME, u32(100)]]);
  t.clock.advance(50000);
  t.c.receive(reply(t.sent.at(-1).msg, DHCP.NAK, { yiaddr: [0, 0, 0, 0], server: new Uint8Array([10, 5, 0, 2]) }));
  assert.equal(t.c.state, "renewing");
  assert.deepEqual([t.c.stats.naks, t.c.stats.ignored], [0, 1]);
});

test("infinite and 30-day leases: no timers for the first, chained timers for the second", () => {
  const inf = bind([[DHCP_OPT.LEASE_TIME, u32(0xffffffff)]]);
  assert.equal(inf.clock.nextAt(), null);
  const long = bind([[DHCP_OPT.LEASE_TIME, u32(30 * 86400)]]);
  long.clock.advance(15 * 86400 * 1000 - 1);
  assert.equal(long.c.state, "bound");
  long.clock.advance(1);
  assert.equal(long.c.state, "renewing");
  long.clock.advance(15 * 86400 * 1000 - 1); // expiry at 30 days: past setTimeout's 24.8-day limit
  assert.equal(long.c.state, "rebinding");
  long.clock.advance(1);
  assert.deepEqual(long.events.at(-1), ["lost", "10.5.0.77"]);
});

test("odd but valid options: a non-contiguous mask falls back to the CIDR's prefix", () => {
  const { events } = bind([
    [DHCP_OPT.LEASE_TIME, u32(600)],
    [DHCP_OPT.MASK, new Uint8Array([255, 0, 255, 0])],
    [DHCP_OPT.ROUTER, new Uint8Array([10, 9, 9, 9])], // outside the network: not used
    [DHCP_OPT.T1, u32(900)], // past T2: replaced by the defaults
    [DHCP_OPT.DNS, new Uint8Array([1, 1, 1, 1, 8, 8, 8, 8])],
  ]);
  const lease = events[0][2];
  assert.deepEqual([lease.prefix, lease.router, lease.t1Secs, lease.t2Secs], [24, null, 300, 525]);
  assert.deepEqual(lease.dns.map(net.formatIp4), ["1.1.1.1", "8.8.8.8"]);
});

test("offers it must not take: outside the CIDR, the network or broadcast address, no server id", () => {
  const { c, sent } = client();
  c.start();
  const discover = sent[0].msg;
  for (const yiaddr of [[10, 6, 0, 5], [10, 5, 0, 0], [10, 5, 0, 255], [127, 0, 0, 1], [224, 0, 0, 1]]) {
    c.receive(reply(discover, DHCP.OFFER, { yiaddr }));
  }
  c.receive(reply(discover, DHCP.OFFER, { server: null }));
  c.receive(reply(discover, DHCP.ACK, { options: [[DHCP_OPT.LEASE_TIME, u32(60)]] })); // no REQUEST yet
  c.receive(reply(discover, DHCP.OFFER, { xid: discover.xid + 1 }));
  c.receive(reply(discover, DHCP.OFFER, { chaddr: fromHex("02000000beef") }));
  assert.equal(c.state, "selecting");
  assert.deepEqual([c.stats.malformed, c.stats.ignored, c.stats.offers], [6, 3, 0]);
});

test("garbage never throws: random frames, random DHCP payloads, truncations", () => {
  const { c, sent } = client();
  c.start();
  const good = reply(sent[0].msg, DHCP.OFFER);
  let seed = 12345;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed / 2 ** 32;
  };
  let dhcpLike = 0;
  for (let i = 0; i < 3000; i++) {
    let frame;
    if (i % 3 === 0) {
      frame = new Uint8Array(Math.floor(rand() * 400));
      for (let j = 0; j < frame.length; j++) frame[j] = rand() * 256;
    } else if (i % 3 === 1) {
      frame = good.slice(0, Math.floor(rand() * good.length));
    } else {
      frame = good.slice();
      for (let k = 0; k < 1 + rand() * 6; k++) frame[Math.floor(rand() * frame.length)] = rand() * 256;
    }
    const used = c.receive(frame); // must not throw
    if (used) dhcpLike++;
  }
  assert.equal(c.stats.received, dhcpLike);
  assert.ok(c.stats.malformed > 0);
  for (let i = 0; i < 2000; i++) {
    const buf = new Uint8Array(240 + Math.floor(rand() * 300));
    for (let j = 0; j < buf.length; j++) buf[j] = rand() * 256;
    buf.set([2, 1, 6], 0);
    buf.set([99, 130, 83, 99], 236);
    const parsed = net.parseDhcpMessage(buf); // null or a message, never a throw
    assert.ok(parsed === null || parsed.options instanceof Map);
  }
  const overload = net.dhcpMessage({ op: 2, xid: 1, chaddr: MAC, options: [[52, new Uint8Array([1])]] });
  assert.equal(net.parseDhcpMessage(overload), null);
  const noEnd = net.dhcpMessage({ op: 2, xid: 1, chaddr: MAC, options: [[53, new Uint8Array([2])]] }).slice(0, 243);
  assert.equal(net.parseDhcpMessage(noEnd), null);
});

test("a host without IPv4 answers no ARP or ping, and cannot ping over IPv4", async () => {
  const sent = [];
  const other = fromHex("02000000aa01");
  const host = new net.Host({ mac: MAC, ip4: null, send: (f) => sent.push(f) });
  host.receive(net.arpRequest(other, new Uint8Array([10, 5, 0, 9]), new Uint8Array([0, 0, 0, 0])));
  host.receive(net.icmpEchoRequest(other, MAC, new Uint8Array([10, 5, 0, 9]), new Uint8Array([0, 0, 0, 0]), 1, 1));
  host.announce();
  assert.equal(sent.length, 0);
  await assert.rejects(host.ping("10.5.0.9"), /no IPv4 address yet/);
  host.setIp4(new Uint8Array([10, 5, 0, 77]), 24, null);
  assert.deepEqual(host.gateway4, new Uint8Array([10, 5, 0, 1]));
  host.receive(net.arpRequest(other, new Uint8Array([10, 5, 0, 9]), new Uint8Array([10, 5, 0, 77])));
  assert.equal(sent.length, 1);
});
