// A page's network stack (net.js Session → Host → Dhcp4Client) on a fake socket and a fake
// clock, driven line by line over stdin/stdout by tests/test_web_dhcp.py, which plays the
// node with the real Python DHCP server and gateway (atenet.router). Not a test by itself.
//
// Each input line is one JSON command; each gets one JSON answer line:
//   {"op": "open", "network_id", "host_key", "host", "seed", "fallback_ms", "dhcp"}
//   {"op": "welcome", "msg": {...}}     the node's welcome
//   {"op": "frame", "hex"}               a frame from the node
//   {"op": "advance", "ms"}              let time pass (timers fire)
//   {"op": "ping", "address", "count"}   start a ping; {"op": "ping_result"} awaits it
// Answer: {frames: [hex sent since the last answer], events: [...], state, ip4, source,
// stats, host_stats, error}.
import { createInterface } from "node:readline";

import * as net from "../../src/atenet/web/net.js";
import { FakeClock } from "./fakeclock.mjs";

const clock = new FakeClock(0);
let session = null;
let socket = null;
let frames = [];
let events = [];
let pinging = null;

function seeded(seed) {
  // mulberry32: deterministic xids and jitter for a given seed
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class FakeSocket {
  constructor() {
    this.readyState = 1;
    socket = this;
  }
  send(data) {
    if (typeof data !== "string") frames.push(net.toHex(data));
  }
  close() {}
}

const ip = (bytes) => (bytes ? net.formatIp4(bytes) : null);

function addressEvent(a) {
  const lease = a.lease;
  return {
    kind: "address",
    source: a.source,
    ip4: ip(a.ip4),
    prefix: a.prefix,
    gateway: ip(a.gateway),
    lease: lease
      ? { secs: lease.leaseSecs, t1: lease.t1Secs, t2: lease.t2Secs, router: ip(lease.router), dns: lease.dns.map(ip), mtu: lease.mtu, server: ip(lease.server), renewed: lease.renewed }
      : null,
    at: clock.now(),
  };
}

async function run(cmd) {
  if (cmd.op === "open") {
    const token = { networkId: net.fromHex(cmd.network_id), networkHex: cmd.network_id, keyId: 1, secret: new Uint8Array(32) };
    Math.random = seeded(cmd.seed ?? 1); // the client's xids and jitter: same run, same bytes
    session = new net.Session({
      url: "ws://node/ws",
      token,
      hostKey: net.fromHex(cmd.host_key),
      hostName: cmd.host ?? "",
      WebSocketImpl: FakeSocket,
      now: () => 1_700_000_000_000 + clock.now(),
      random: (n) => new Uint8Array(n),
      dhcp: cmd.dhcp ?? "auto",
      fallbackMs: cmd.fallback_ms ?? net.DHCP_FALLBACK_MS,
      clock: clock.now,
      timers: clock.timers,
      onAddress: (a) => events.push(addressEvent(a)),
      onEvent: (kind, text) => events.push({ kind, text }),
    });
    session.open();
    socket.onopen();
    return { mac: null };
  }
  if (cmd.op === "welcome") {
    socket.onmessage({ data: JSON.stringify({ op: "welcome", ...cmd.msg }) });
    return { mac: session.host ? net.toHex(session.host.mac) : null };
  }
  if (cmd.op === "frame") {
    const bytes = net.fromHex(cmd.hex);
    socket.onmessage({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length) });
    return {};
  }
  if (cmd.op === "advance") {
    clock.advance(cmd.ms);
    return {};
  }
  if (cmd.op === "ping") {
    const out = { results: null, error: null };
    pinging = session.host
      .ping(cmd.address, { count: cmd.count ?? 1, interval: 10, timeout: 1000 })
      .then((r) => (out.results = r))
      .catch((err) => (out.error = err.message));
    pinging.out = out;
    return {};
  }
  if (cmd.op === "ping_result") {
    const out = pinging.out;
    await pinging;
    return { results: out.results, ping_error: out.error };
  }
  throw new Error(`unknown op ${cmd.op}`);
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  let answer;
  try {
    answer = await run(JSON.parse(line));
    answer.error = null;
  } catch (err) {
    answer = { error: `${err.name}: ${err.message}\n${err.stack}` };
  }
  await new Promise((r) => setImmediate(r)); // let promise chains (pings) take their step
  const client = session?.dhcp;
  Object.assign(answer, {
    frames,
    events,
    state: client?.state ?? null,
    ip4: ip(session?.host?.ip4),
    source: session?.address?.source ?? null,
    stats: client ? client.stats : null,
    host_stats: session?.host ? session.host.stats : null,
    now: clock.now(),
  });
  frames = [];
  events = [];
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
