// The page's "Reach the LAN" tools: an HTTP GET and a TCP echo test, over a mio session
// (mio.js: the node runs the TCP/IP stack, the page only moves bytes). No DOM here, so the
// parsing runs under Node.js too (tests/js/lan.test.mjs); app.js draws the results, always as
// text (textContent), never as HTML: a page on the LAN cannot script this one.

import { MioError } from "./mio.js";

/** The most a fetch reads; the page shows the first SHOWN bytes of the body. */
export const MAX_RESPONSE = 1024 * 1024;
export const SHOWN = 64 * 1024;
export const TIMEOUT_MS = 20000;

export class LanError extends Error {}

const ERRNO_TEXT = {
  104: "connection reset by the peer",
  110: "timed out",
  111: "connection refused (nothing listens there)",
  113: "no route to the host (nobody answered ARP / neighbour discovery)",
  101: "network unreachable",
  24: "too many sockets in this session",
};

/** One line for an error of a tool: the errno's meaning, and the node's reason when it adds one. */
export function describe(err) {
  if (err instanceof MioError) {
    const meaning = ERRNO_TEXT[err.errno];
    if (!meaning) return `${err.message} (errno ${err.errno})`;
    const reason = err.message ?? "";
    const adds = reason && !reason.startsWith("mio error") && !meaning.toLowerCase().includes(reason.toLowerCase());
    return adds ? `${meaning}: ${reason}` : meaning;
  }
  return err?.message ?? String(err);
}

const IP4 = /^\d{1,3}(\.\d{1,3}){3}$/;

/** `http://HOST[:PORT]/path` → {host, port, path, hostHeader}; HOST an IP address or a name. */
export function parseHttpTarget(text) {
  let s = String(text ?? "").trim();
  if (!s) throw new LanError("give an address, e.g. http://10.1.0.5:8000/");
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(s)) s = `http://${s}`;
  let url;
  try {
    url = new URL(s);
  } catch {
    throw new LanError(`${text} is not a URL`);
  }
  if (url.protocol !== "http:") throw new LanError(`only http:// URLs (the page sends the bytes; no TLS here), not ${url.protocol}//`);
  if (url.username || url.password) throw new LanError("no user:password@ in the URL");
  const host = url.hostname.replace(/^\[|\]$/g, "");
  if (!host) throw new LanError(`${text} names no host`);
  const port = url.port ? Number(url.port) : 80;
  return { host, port, path: `${url.pathname || "/"}${url.search}`, hostHeader: url.host };
}

/** `HOST:PORT` or `[v6]:PORT` → {host, port}. */
export function parseHostPort(text) {
  const s = String(text ?? "").trim();
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d+)$/.exec(s) || /^([^:\s]+):(\d+)$/.exec(s);
  if (!m) throw new LanError(`give HOST:PORT (or [IPv6]:PORT), not ${s || "nothing"}`);
  const port = Number(m[2]);
  if (!(port >= 1 && port <= 65535)) throw new LanError(`port ${m[2]} is outside 1-65535`);
  return { host: m[1], port };
}

/** The bytes of a plain HTTP/1.0 GET: the server closes the connection after the reply. */
export function httpRequest(target) {
  const lines = [
    `GET ${target.path} HTTP/1.0`,
    `Host: ${target.hostHeader}`,
    "User-Agent: atenet-page (mio)",
    "Accept: */*",
    "Connection: close",
    "",
    "",
  ];
  return new TextEncoder().encode(lines.join("\r\n"));
}

function indexOfSeq(buf, seq, from = 0) {
  outer: for (let i = from; i <= buf.length - seq.length; i++) {
    for (let j = 0; j < seq.length; j++) if (buf[i + j] !== seq[j]) continue outer;
    return i;
  }
  return -1;
}

function dechunk(body) {
  const parts = [];
  let at = 0;
  for (;;) {
    const eol = indexOfSeq(body, [13, 10], at);
    if (eol < 0) break;
    const size = parseInt(new TextDecoder().decode(body.subarray(at, eol)).split(";")[0], 16);
    if (!Number.isFinite(size) || size <= 0) break;
    parts.push(body.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

/** Raw response bytes → {status, reason, version, headers: [[name, value]], body: Uint8Array}. */
export function parseHttpResponse(raw) {
  let end = indexOfSeq(raw, [13, 10, 13, 10]);
  let sep = 4;
  if (end < 0) {
    end = indexOfSeq(raw, [10, 10]);
    sep = 2;
  }
  if (end < 0) throw new LanError(`not an HTTP response (${raw.length} bytes without a header end)`);
  const head = new TextDecoder("latin1").decode(raw.subarray(0, end)).split(/\r?\n/);
  const m = /^HTTP\/(\d(?:\.\d)?)\s+(\d{3})\s*(.*)$/.exec(head[0]);
  if (!m) throw new LanError(`not an HTTP response: ${JSON.stringify(head[0].slice(0, 80))}`);
  const headers = [];
  for (const line of head.slice(1)) {
    const colon = line.indexOf(":");
    if (colon > 0) headers.push([line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()]);
  }
  let body = raw.subarray(end + sep);
  const te = headers.find(([k]) => k === "transfer-encoding");
  if (te && /chunked/i.test(te[1])) body = dechunk(body);
  return { version: m[1], status: Number(m[2]), reason: m[3], headers, body };
}

function withTimeout(promise, ms, onTimeout) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => {
      onTimeout?.();
      reject(new LanError(`no complete answer in ${ms / 1000} s`));
    }, ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** An IP address for `host`: itself, or the first the network's DNS has for it. */
async function address(session, host) {
  if (IP4.test(host) || host.includes(":")) return host;
  const found = await session.resolve(host);
  if (!found.length) throw new LanError(`${host} has no address on the network's DNS`);
  return found.find((a) => !a.includes(":")) ?? found[0];
}

/**
 * GET `urlText` through `session` (a MioSession). Resolves with {url, from, status, reason,
 * headers, body, bytes, text, truncated, ms}: `text` is the first SHOWN bytes of the body
 * decoded as UTF-8 (bad bytes replaced).
 */
export async function fetchOverMio(session, urlText, { timeoutMs = TIMEOUT_MS, now = () => performance.now() } = {}) {
  const target = parseHttpTarget(urlText);
  const started = now();
  const ip = await address(session, target.host);
  const stream = await session.connect(ip, target.port, { timeoutMs: Math.min(timeoutMs, 15000) });
  try {
    const reading = stream.readAll(MAX_RESPONSE);
    await stream.write(httpRequest(target));
    const raw = await withTimeout(reading, timeoutMs, () => stream.close(true));
    const response = parseHttpResponse(raw);
    const shown = response.body.subarray(0, SHOWN);
    return {
      url: `http://${target.hostHeader}${target.path}`,
      from: stream.local,
      status: response.status,
      reason: response.reason,
      headers: response.headers,
      bytes: response.body.length,
      text: new TextDecoder("utf-8").decode(shown),
      truncated: response.body.length > SHOWN,
      ms: now() - started,
    };
  } finally {
    stream.close();
  }
}

function randomChunk(n) {
  const out = new Uint8Array(n);
  for (let at = 0; at < n; at += 65536) globalThis.crypto.getRandomValues(out.subarray(at, Math.min(n, at + 65536)));
  return out;
}

/**
 * Send `size` random bytes to an echo server at `targetText` (HOST:PORT), half-close, and read
 * what comes back. Resolves with {sent, received, same, ms, from}.
 */
export async function echoOverMio(session, targetText, size, { timeoutMs = TIMEOUT_MS, now = () => performance.now() } = {}) {
  const target = parseHostPort(targetText);
  if (!(size >= 1 && size <= 16 * 1024 * 1024)) throw new LanError("send 1 byte to 16 MiB");
  const payload = randomChunk(size);
  const started = now();
  const ip = await address(session, target.host);
  const stream = await session.connect(ip, target.port, { timeoutMs: Math.min(timeoutMs, 15000) });
  try {
    const reading = stream.readAll(size + 1);
    const writing = stream.write(payload).then(() => stream.shutdown());
    const [back] = await withTimeout(Promise.all([reading, writing]), timeoutMs, () => stream.close(true));
    let same = back.length === payload.length;
    for (let i = 0; same && i < back.length; i++) same = back[i] === payload[i];
    return { sent: size, received: back.length, same, ms: now() - started, from: stream.local };
  } finally {
    stream.close();
  }
}
