// The mio bus for the web page: TCP and UDP sockets run by the node's stack (docs/mio.md).
//
// The page is a host on the LAN through net.js (raw frames); with mio it can also open TCP
// connections and UDP sockets without a TCP/IP stack of its own: the node runs one for it and
// this module speaks the bus. Message layout mirrors src/atenet/mio/bus.py byte for byte
// (tests/test_web_js.py cross-checks both). No DOM here; runs unchanged under Node.js.

import { formatIp4, formatIp6, helloMessage, parseIp4, parseIp6, randomBytes } from "./net.js";

export const Op = Object.freeze({
  CONNECT: 1, CONNECTED: 2, LISTEN: 3, LISTENING: 4, ACCEPT: 5, DATA: 6, CREDIT: 7,
  SHUTDOWN: 8, CLOSE: 9, BIND: 10, BOUND: 11, DATAGRAM: 12, PING: 13, PONG: 14,
  RESOLVE: 15, RESOLVED: 16, ERROR: 17,
});
const OP_NAME = Object.fromEntries(Object.entries(Op).map(([k, v]) => [v, k]));

export const ACCEPTED_ID_BIT = 0x80000000;
export const MAX_DATA = 65536;
const MAX_TEXT = 512;
/** Bytes this page lets the node send one socket before it grants more. */
export const WINDOW = 256 * 1024;

export class MioDecodeError extends Error {}

/** An error the node reported for a socket or request; `errno` is a Linux errno value. */
export class MioError extends Error {
  constructor(errno, reason) {
    super(reason || `mio error ${errno}`);
    this.errno = errno;
  }
}

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

// --- endpoints --------------------------------------------------------------------------------

/** Address text ("" = any) → raw bytes (4 or 16, or empty). */
function addressBytes(text) {
  if (!text) return new Uint8Array(0);
  const raw = parseIp4(text) || parseIp6(text);
  if (!raw) throw new MioError(22, `${text} is not an IP address`);
  return raw;
}

function addressText(raw) {
  if (raw.length === 0) return "";
  return raw.length === 4 ? formatIp4(raw) : formatIp6(raw);
}

function endpointBytes(ep) {
  const raw = addressBytes(ep.address);
  if (!(ep.port >= 0 && ep.port <= 0xffff)) throw new RangeError(`port ${ep.port} is outside 0-65535`);
  return [raw.length, ...raw, ep.port >> 8, ep.port & 0xff];
}

function readEndpoint(buf, at) {
  if (at >= buf.length) throw new MioDecodeError("bus message ends before its endpoint");
  const n = buf[at];
  if (n !== 0 && n !== 4 && n !== 16) throw new MioDecodeError(`endpoint address length ${n} is not 0, 4 or 16`);
  const end = at + 1 + n + 2;
  if (end > buf.length) throw new MioDecodeError("bus message ends inside its endpoint");
  const address = addressText(buf.subarray(at + 1, at + 1 + n));
  const port = (buf[at + 1 + n] << 8) | buf[at + 2 + n];
  return [{ address, port }, end];
}

// --- numbers ------------------------------------------------------------------------------------

const be16 = (v) => [(v >> 8) & 0xff, v & 0xff];
const be32 = (v) => [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];

function readU16(buf, at, what) {
  if (at + 2 > buf.length) throw new MioDecodeError(`bus message ends before its ${what}`);
  return (buf[at] << 8) | buf[at + 1];
}

function readU32(buf, at, what) {
  if (at + 4 > buf.length) throw new MioDecodeError(`bus message ends before its ${what}`);
  return ((buf[at] << 24) | (buf[at + 1] << 16) | (buf[at + 2] << 8) | buf[at + 3]) >>> 0;
}

function done(buf, at, op) {
  if (at !== buf.length) throw new MioDecodeError(`${OP_NAME[op]} has ${buf.length - at} bytes after its body`);
}

function clip(text) {
  // Cut to MAX_TEXT bytes on a character boundary (as bus.py's _clip does).
  let raw = utf8.encode(text || "");
  if (raw.length <= MAX_TEXT) return raw;
  let end = MAX_TEXT;
  while (end > 0 && (raw[end] & 0xc0) === 0x80) end--;
  return raw.subarray(0, end);
}

function readText(buf, limit, what) {
  if (buf.length > limit) throw new MioDecodeError(`${what} is ${buf.length} bytes, the limit is ${limit}`);
  try {
    return fromUtf8.decode(buf);
  } catch {
    throw new MioDecodeError(`${what} is not UTF-8`);
  }
}

// --- encode / decode ----------------------------------------------------------------------------

/** The bytes of one bus message `{op, id, ...fields}` (field names as in bus.py, camelCase). */
export function encode(msg) {
  let body;
  switch (msg.op) {
    case Op.CONNECT:
      if (!msg.remote.address) throw new RangeError("CONNECT needs a remote address");
      body = [...endpointBytes(msg.remote), ...be16(msg.localPort || 0), ...be32(msg.timeoutMs || 0)];
      break;
    case Op.CONNECTED:
      body = [...endpointBytes(msg.local), ...endpointBytes(msg.remote), ...be32(msg.credit)];
      break;
    case Op.LISTEN:
      body = [...endpointBytes(msg.local), ...be16(msg.backlog ?? 128)];
      break;
    case Op.LISTENING:
    case Op.BIND:
    case Op.BOUND:
      body = endpointBytes(msg.local);
      break;
    case Op.ACCEPT:
      body = [...be32(msg.conn), ...endpointBytes(msg.local), ...endpointBytes(msg.remote), ...be32(msg.credit)];
      break;
    case Op.DATA:
      if (msg.payload.length > MAX_DATA) throw new RangeError(`DATA of ${msg.payload.length} bytes is above ${MAX_DATA}`);
      body = msg.payload;
      break;
    case Op.CREDIT:
      body = be32(msg.amount);
      break;
    case Op.SHUTDOWN:
      body = [];
      break;
    case Op.CLOSE:
      body = [msg.abort ? 1 : 0, ...be16(msg.errno || 0), ...clip(msg.reason)];
      break;
    case Op.DATAGRAM:
      if (!msg.peer.address) throw new RangeError("DATAGRAM needs a peer address");
      body = [...endpointBytes(msg.peer), ...msg.payload];
      break;
    case Op.PING:
      body = [...endpointBytes({ address: msg.address, port: 0 }), ...be16(msg.size ?? 56), ...be32(msg.timeoutMs || 0)];
      break;
    case Op.PONG:
      body = be32(msg.rttUs);
      break;
    case Op.RESOLVE:
      body = utf8.encode(msg.name);
      break;
    case Op.RESOLVED:
      body = [msg.addresses.length, ...msg.addresses.flatMap((a) => endpointBytes({ address: a, port: 0 }))];
      break;
    case Op.ERROR:
      body = [...be16(msg.errno), ...clip(msg.reason)];
      break;
    default:
      throw new RangeError(`unknown bus op ${msg.op}`);
  }
  const out = new Uint8Array(5 + body.length);
  out[0] = msg.op;
  out.set(be32(msg.id), 1);
  out.set(body, 5);
  return out;
}

/** One bus message from the bytes of one binary WebSocket message; MioDecodeError says why not. */
export function decode(data) {
  const buf = data instanceof Uint8Array ? data : new Uint8Array(data);
  if (buf.length < 5) throw new MioDecodeError(`bus message of ${buf.length} bytes is shorter than its 5-byte header`);
  const op = buf[0];
  const id = readU32(buf, 1, "id");
  const b = buf.subarray(5);
  const msg = { op, id };
  let at = 0;
  switch (op) {
    case Op.CONNECT:
      [msg.remote, at] = readEndpoint(b, 0);
      if (!msg.remote.address) throw new MioDecodeError("CONNECT needs a remote address");
      msg.localPort = readU16(b, at, "local port");
      msg.timeoutMs = readU32(b, at + 2, "timeout");
      done(b, at + 6, op);
      break;
    case Op.CONNECTED:
      [msg.local, at] = readEndpoint(b, 0);
      [msg.remote, at] = readEndpoint(b, at);
      msg.credit = readU32(b, at, "credit");
      done(b, at + 4, op);
      break;
    case Op.LISTEN:
      [msg.local, at] = readEndpoint(b, 0);
      msg.backlog = readU16(b, at, "backlog");
      done(b, at + 2, op);
      break;
    case Op.LISTENING:
    case Op.BIND:
    case Op.BOUND:
      [msg.local, at] = readEndpoint(b, 0);
      done(b, at, op);
      break;
    case Op.ACCEPT:
      msg.conn = readU32(b, 0, "connection id");
      if (!(msg.conn & ACCEPTED_ID_BIT)) throw new MioDecodeError(`accepted connection id lacks the node's high bit`);
      [msg.local, at] = readEndpoint(b, 4);
      [msg.remote, at] = readEndpoint(b, at);
      msg.credit = readU32(b, at, "credit");
      done(b, at + 4, op);
      break;
    case Op.DATA:
      if (b.length === 0) throw new MioDecodeError("DATA without payload (use SHUTDOWN for end of stream)");
      if (b.length > MAX_DATA) throw new MioDecodeError(`DATA of ${b.length} bytes is above ${MAX_DATA}`);
      msg.payload = b.slice();
      break;
    case Op.CREDIT:
      msg.amount = readU32(b, 0, "amount");
      done(b, 4, op);
      if (msg.amount === 0) throw new MioDecodeError("CREDIT of 0 bytes");
      break;
    case Op.SHUTDOWN:
      if (b.length) throw new MioDecodeError(`SHUTDOWN carries no body, got ${b.length} bytes`);
      break;
    case Op.CLOSE:
      if (b.length < 3) throw new MioDecodeError("CLOSE ends before its flags and errno");
      if (b[0] > 1) throw new MioDecodeError(`CLOSE flags 0x${b[0].toString(16)} has unknown bits`);
      msg.abort = b[0] === 1;
      msg.errno = readU16(b, 1, "errno");
      msg.reason = readText(b.subarray(3), MAX_TEXT, "reason");
      break;
    case Op.DATAGRAM:
      [msg.peer, at] = readEndpoint(b, 0);
      if (!msg.peer.address) throw new MioDecodeError("DATAGRAM needs a peer address");
      if (b.length - at > MAX_DATA) throw new MioDecodeError(`DATAGRAM of ${b.length - at} bytes is above ${MAX_DATA}`);
      msg.payload = b.slice(at);
      break;
    case Op.PING: {
      let target;
      [target, at] = readEndpoint(b, 0);
      if (!target.address) throw new MioDecodeError("PING needs an address");
      msg.address = target.address;
      msg.size = readU16(b, at, "size");
      msg.timeoutMs = readU32(b, at + 2, "timeout");
      done(b, at + 6, op);
      break;
    }
    case Op.PONG:
      msg.rttUs = readU32(b, 0, "rtt");
      done(b, 4, op);
      break;
    case Op.RESOLVE:
      if (!b.length) throw new MioDecodeError("RESOLVE without a name");
      msg.name = readText(b, 253, "name");
      break;
    case Op.RESOLVED: {
      if (!b.length) throw new MioDecodeError("RESOLVED ends before its count");
      if (b[0] > 32) throw new MioDecodeError(`RESOLVED counts ${b[0]} addresses, at most 32`);
      msg.addresses = [];
      at = 1;
      for (let i = 0; i < b[0]; i++) {
        let ep;
        [ep, at] = readEndpoint(b, at);
        if (!ep.address) throw new MioDecodeError("RESOLVED holds an empty address");
        msg.addresses.push(ep.address);
      }
      done(b, at, op);
      break;
    }
    case Op.ERROR:
      msg.errno = readU16(b, 0, "errno");
      msg.reason = readText(b.subarray(2), MAX_TEXT, "reason");
      break;
    default:
      throw new MioDecodeError(`unknown bus op ${op}`);
  }
  return msg;
}

// --- sockets -----------------------------------------------------------------------------------

/** One TCP connection: `write` resolves once the node granted room for the bytes; `read`
 * resolves with the next chunk, or null at the end of the stream. */
export class MioStream {
  constructor(session, id, local, remote, credit) {
    this.session = session;
    this.id = id;
    this.local = local;
    this.remote = remote;
    this.credit = credit;
    this.chunks = [];
    this.readers = [];
    this.writers = []; // [bytes, resolve, reject] waiting for credit
    this.eof = false;
    this.error = null;
    this.closed = false;
    this.owed = 0;
  }

  write(bytes) {
    if (this.closed) return Promise.reject(this.error || new MioError(32, "the connection is closed"));
    return new Promise((resolve, reject) => {
      this.writers.push([bytes, resolve, reject]);
      this.flush();
    });
  }

  flush() {
    while (this.writers.length && this.credit > 0 && !this.closed) {
      const entry = this.writers[0];
      const n = Math.min(entry[0].length, this.credit, MAX_DATA);
      this.session.send({ op: Op.DATA, id: this.id, payload: entry[0].subarray(0, n) });
      this.credit -= n;
      entry[0] = entry[0].subarray(n);
      if (entry[0].length === 0) {
        this.writers.shift();
        entry[1]();
      }
    }
  }

  read() {
    if (this.chunks.length) return Promise.resolve(this.take());
    if (this.eof || this.closed) return this.error ? Promise.reject(this.error) : Promise.resolve(null);
    return new Promise((resolve, reject) => this.readers.push([resolve, reject]));
  }

  take() {
    const chunk = this.chunks.shift();
    this.owed += chunk.length;
    if (this.owed >= WINDOW / 4 && !this.closed) this.grant();
    return chunk;
  }

  /** Read everything until the end of the stream (bounded by `limit` bytes). */
  async readAll(limit = 16 * 1024 * 1024) {
    const parts = [];
    let total = 0;
    for (let chunk = await this.read(); chunk; chunk = await this.read()) {
      total += chunk.length;
      if (total > limit) throw new MioError(90, `more than ${limit} bytes`);
      parts.push(chunk);
    }
    const out = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  shutdown() {
    if (!this.closed) this.session.send({ op: Op.SHUTDOWN, id: this.id });
  }

  close(abort = false) {
    if (this.closed) return;
    this.session.send({ op: Op.CLOSE, id: this.id, abort });
    this.finish(null);
  }

  onData(payload) {
    const reader = this.readers.shift();
    if (!reader) {
      this.chunks.push(payload);
      return;
    }
    this.owed += payload.length;
    if (this.owed >= WINDOW / 4) this.grant();
    reader[0](payload);
  }

  grant() {
    this.session.send({ op: Op.CREDIT, id: this.id, amount: this.owed });
    this.owed = 0;
  }

  onEof() {
    this.eof = true;
    for (const [resolve] of this.readers.splice(0)) resolve(null);
  }

  finish(error) {
    if (this.closed) return;
    this.closed = true;
    this.error = error;
    this.session.sockets.delete(this.id);
    for (const [resolve, reject] of this.readers.splice(0)) (error ? reject(error) : resolve(null));
    for (const [, , reject] of this.writers.splice(0)) reject(error || new MioError(32, "the connection closed"));
  }
}

/**
 * One mio session over an open WebSocket: `ws` has sent the hello and received the welcome
 * (see openMio); feed every later binary message to `onMessage`.
 */
export class MioSession {
  constructor(ws, welcome = {}) {
    this.ws = ws;
    this.welcome = welcome;
    this.sockets = new Map();
    this.waiting = new Map();
    this.nextId = 1;
    this.badMessages = 0;
  }

  send(msg) {
    this.ws.send(encode(msg));
  }

  newId() {
    const id = this.nextId;
    this.nextId = id >= ACCEPTED_ID_BIT - 1 ? 1 : id + 1;
    return id;
  }

  ask(msg) {
    return new Promise((resolve, reject) => {
      this.waiting.set(msg.id, [resolve, reject]);
      this.send(msg);
    });
  }

  /** A TCP connection to `host`:`port`, through the node's stack. */
  async connect(host, port, { timeoutMs = 0 } = {}) {
    const id = this.newId();
    const reply = await this.ask({ op: Op.CONNECT, id, remote: { address: host, port }, timeoutMs });
    const stream = new MioStream(this, id, reply.local, reply.remote, reply.credit);
    this.sockets.set(id, stream);
    return stream;
  }

  /** One ICMP echo through the network; resolves with the round-trip time in ms. */
  async ping(host, { size = 56, timeoutMs = 5000 } = {}) {
    const id = this.newId();
    const reply = await this.ask({ op: Op.PING, id, address: host, size, timeoutMs });
    return reply.rttUs / 1000;
  }

  async resolve(name) {
    const id = this.newId();
    return (await this.ask({ op: Op.RESOLVE, id, name })).addresses;
  }

  onMessage(data) {
    let msg;
    try {
      msg = decode(data);
    } catch (err) {
      if (!(err instanceof MioDecodeError)) throw err;
      this.badMessages++;
      return;
    }
    const sock = this.sockets.get(msg.id);
    switch (msg.op) {
      case Op.DATA:
        sock?.onData(msg.payload);
        return;
      case Op.CREDIT:
        if (sock) {
          sock.credit += msg.amount;
          sock.flush();
        }
        return;
      case Op.SHUTDOWN:
        sock?.onEof();
        return;
      case Op.CLOSE:
        sock?.finish(msg.errno ? new MioError(msg.errno, msg.reason) : null);
        return;
      case Op.ACCEPT:
        this.send({ op: Op.CLOSE, id: msg.conn, abort: true }); // the page does not listen (yet)
        return;
      default: {
        const waiter = this.waiting.get(msg.id);
        if (!waiter) {
          this.badMessages++;
          return;
        }
        this.waiting.delete(msg.id);
        if (msg.op === Op.ERROR) waiter[1](new MioError(msg.errno, msg.reason));
        else waiter[0](msg);
      }
    }
  }

  /** The WebSocket closed: every socket and request fails with `reason`. */
  onClose(reason = "the mio session closed") {
    const err = new MioError(104, reason);
    for (const [, reject] of this.waiting.values()) reject(err);
    this.waiting.clear();
    for (const sock of [...this.sockets.values()]) sock.finish(err);
  }
}

/**
 * Open a mio session: `url` is the node's ws(s) base URL, `token` a parsed token (net.js
 * parseToken) and `key` its auth key (net.js authKey); `host` names the session's port. Resolves
 * with the MioSession once the node welcomed it; rejects with the node's reason otherwise.
 */
export function openMio(url, token, key, { WebSocketImpl = globalThis.WebSocket, now = Date.now, host = "" } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocketImpl(`${url.replace(/\/$/, "")}/mio`);
    ws.binaryType = "arraybuffer";
    let session = null;
    ws.onopen = () => ws.send(JSON.stringify(helloMessage(token, key, now(), randomBytes(16), host)));
    ws.onmessage = (event) => {
      if (session) session.onMessage(event.data);
      else if (typeof event.data === "string") {
        const welcome = JSON.parse(event.data);
        if (welcome.op !== "welcome") return reject(new MioError(71, `unexpected ${welcome.op}`));
        session = new MioSession(ws, welcome);
        resolve(session);
      }
    };
    ws.onclose = (event) => {
      if (session) session.onClose(`the node closed the mio session (code ${event.code})`);
      else reject(new MioError(111, `the node refused the mio session (code ${event.code})`));
    };
  });
}

