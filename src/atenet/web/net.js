// The page's network code: access tokens, hashed addresses, the WebSocket session, and a tiny
// host on the LAN (ARP, IPv4 + ICMP echo, IPv6 neighbour discovery + ICMPv6 echo, ping).
//
// No DOM access here: app.js draws the page, this module only moves bytes. It runs unchanged
// under Node.js (the unit tests in tests/js import it), where the WebSocket constructor, the
// clock and the random source can be injected. A later module adds TCP/UDP through mio next
// to this one; `Host.onIpv4`/`Host.onIpv6` are the hooks for protocols other than ICMP.
//
// The formulas for addresses mirror src/atenet/addressing.py bit for bit, and the frame
// layouts mirror src/atenet/wire (tests/test_web_js.py cross-checks both). docs/web.md
// describes the protocol.

import { concatBytes, fromHex, hkdfSha256, hmacSha256, sha256, toHex } from "./sha256.js";

export { fromHex, toHex };

export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
export const ETHERTYPE_IPV6 = 0x86dd;
export const BROADCAST_MAC = new Uint8Array([255, 255, 255, 255, 255, 255]);
const ZERO_MAC = new Uint8Array(6);
const PROTO_ICMP = 1;
const NEXT_HEADER_ICMPV6 = 58;
const ND_HOP_LIMIT = 255;
const ALL_NODES = fromHex("ff020000000000000000000000000001");

const AUTH_INFO = "atenet/v1 packet sha-256 auth";
const HELLO_TAG = "atenet/v1 ws hello|";
export const CLOSE_REFUSED = 4403;

// --- small byte helpers ------------------------------------------------------------------------

/** True when two byte arrays hold the same bytes. */
export function bytesEqual(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function u16(value) {
  return new Uint8Array([(value >> 8) & 0xff, value & 0xff]);
}

function u32(value) {
  return new Uint8Array([(value >>> 24) & 0xff, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff]);
}

function readU16(buf, offset) {
  return (buf[offset] << 8) | buf[offset + 1];
}

function readU32(buf, offset) {
  return ((buf[offset] << 24) | (buf[offset + 1] << 16) | (buf[offset + 2] << 8) | buf[offset + 3]) >>> 0;
}

/** Fresh random bytes (crypto.getRandomValues works on plain http pages too). */
export function randomBytes(n) {
  const out = new Uint8Array(n);
  globalThis.crypto.getRandomValues(out);
  return out;
}

// --- addresses as text -------------------------------------------------------------------------

export function formatMac(mac) {
  return Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join(":");
}

export function formatIp4(ip) {
  return Array.from(ip).join(".");
}

/** Parse dotted-quad IPv4 text; returns null when it is not one. */
export function parseIp4(text) {
  const parts = String(text).trim().split(".");
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    if (!/^\d{1,3}$/.test(parts[i])) return null;
    const n = Number(parts[i]);
    if (n > 255) return null;
    out[i] = n;
  }
  return out;
}

/** RFC 5952 text of an IPv6 address (the same text as Python's `str(IPv6Address)`). */
export function formatIp6(ip) {
  const groups = [];
  for (let i = 0; i < 16; i += 2) groups.push(readU16(ip, i));
  // Longest run of zero groups (at least 2), leftmost on ties, becomes "::".
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  const head = hex.slice(0, bestStart).join(":");
  const tail = hex.slice(bestStart + bestLen).join(":");
  return `${head}::${tail}`;
}

/** Parse IPv6 text (with "::" and an optional embedded IPv4 tail); null when it is not one. */
export function parseIp6(text) {
  let s = String(text).trim();
  if (s.startsWith("[") && s.endsWith("]")) s = s.slice(1, -1);
  if (!s.includes(":")) return null;
  const halves = s.split("::");
  if (halves.length > 2) return null;
  const parseGroups = (part) => {
    if (part === "") return [];
    const out = [];
    const items = part.split(":");
    for (let i = 0; i < items.length; i++) {
      const item = items[i];
      if (i === items.length - 1 && item.includes(".")) {
        const v4 = parseIp4(item);
        if (!v4) return null;
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      } else if (/^[0-9a-fA-F]{1,4}$/.test(item)) {
        out.push(parseInt(item, 16));
      } else {
        return null;
      }
    }
    return out;
  };
  const head = parseGroups(halves[0]);
  const tail = halves.length === 2 ? parseGroups(halves[1]) : [];
  if (!head || !tail) return null;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const groups = [...head, ...new Array(halves.length === 2 ? missing : 0).fill(0), ...tail];
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    out[i * 2] = g >> 8;
    out[i * 2 + 1] = g & 0xff;
  });
  return out;
}

// --- access tokens -----------------------------------------------------------------------------

export class TokenError extends Error {}

const B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

function base64urlDecode(text) {
  if (text.length % 4 === 1) throw new TokenError("the access token is damaged (bad length): copy it again");
  const out = [];
  let bits = 0;
  let value = 0;
  for (const ch of text) {
    const digit = B64URL.indexOf(ch);
    if (digit < 0) throw new TokenError("the access token is damaged (not base64url): copy it again");
    value = (value << 6) | digit;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push((value >> bits) & 0xff);
    }
  }
  return new Uint8Array(out);
}

/**
 * Decode "atn1." + base64url(version, network id, key id, secret, endpoints) (see
 * src/atenet/token.py). Throws TokenError with a message fit for the page.
 */
export function parseToken(text) {
  let s = String(text ?? "").trim();
  try {
    s = decodeURIComponent(s); // a link pasted through a chat app may come percent-encoded
  } catch {
    // not percent-encoded: keep it as it is; base64url checks below say what is wrong
  }
  if (s.startsWith("#")) s = s.slice(1);
  if (!s) throw new TokenError("no access token in the address: open the full link (…/#atn1.…) that atenet up or tok printed");
  if (!s.startsWith("atn1.")) throw new TokenError("this is not an atenet access token (it should start with atn1.)");
  const raw = base64urlDecode(s.slice(5));
  if (raw.length < 54) throw new TokenError("the access token is truncated: copy it again, whole");
  if (raw[0] !== 1) throw new TokenError(`access token version ${raw[0]} is not supported by this page`);
  const networkId = raw.slice(1, 17);
  const keyId = readU32(raw, 17);
  const secret = raw.slice(21, 53);
  const count = raw[53];
  const endpoints = [];
  let pos = 54;
  const decoder = new TextDecoder("utf-8", { fatal: true });
  for (let i = 0; i < count; i++) {
    if (pos >= raw.length) throw new TokenError("the access token is truncated: copy it again, whole");
    const len = raw[pos];
    if (pos + 1 + len > raw.length) throw new TokenError("the access token is truncated: copy it again, whole");
    try {
      endpoints.push(decoder.decode(raw.subarray(pos + 1, pos + 1 + len)));
    } catch {
      throw new TokenError("the access token is damaged (bad endpoint text): copy it again");
    }
    pos += 1 + len;
  }
  if (pos !== raw.length) throw new TokenError("the access token has trailing bytes: copy it again, exactly");
  return { networkId, networkHex: toHex(networkId), keyId, secret, endpoints };
}

/** The key that authenticates the WebSocket hello: HKDF-SHA256(secret, info = AUTH_INFO). */
export function authKey(secret) {
  return hkdfSha256(secret, null, AUTH_INFO, 32);
}

/**
 * The first WebSocket message: proves the access key without sending its secret. `host` (a
 * name for this page's port, see cleanHostName) is sent when not empty.
 */
export function helloMessage(token, key, time, nonce, host = "") {
  const nonceHex = toHex(nonce);
  const input = `${HELLO_TAG}${token.networkHex}|${token.keyId}|${time}|${nonceHex}`;
  const hello = {
    op: "hello",
    network: token.networkHex,
    key_id: token.keyId,
    time,
    nonce: nonceHex,
    mac: toHex(hmacSha256(key, input)),
  };
  if (host) hello.host = host;
  return hello;
}

/** Longest host name a node accepts in a hello (characters). */
export const HOST_NAME_MAX = 64;

/**
 * A host name as the node accepts it (Python's str.isprintable): no control, format, private
 * or unassigned characters and no separators but the space; at most 64 characters.
 */
export function cleanHostName(name) {
  const printable = String(name ?? "").replace(/(?! )[\p{C}\p{Z}]/gu, "");
  return Array.from(printable).slice(0, HOST_NAME_MAX).join("");
}

/**
 * This tab's host key: the profile's key (localStorage, shared by every tab of a browser
 * profile) followed by the tab's own id (sessionStorage: one per tab, kept across reloads).
 * Two tabs of one profile are two hosts, each with a MAC and addresses stable across reloads.
 */
export function tabHostKey(profileKey, tabId) {
  const key = new Uint8Array(profileKey.length + tabId.length);
  key.set(profileKey, 0);
  key.set(tabId, profileKey.length);
  return key;
}

// --- hashed addresses (src/atenet/addressing.py) -----------------------------------------------

/** SHA-256("atenet/v1 mac" || network id || host key)[:6], locally administered unicast. */
export function stableMac(networkId, hostKey) {
  const mac = sha256(concatBytes("atenet/v1 mac", networkId, hostKey)).slice(0, 6);
  mac[0] = (mac[0] | 0x02) & 0xfe;
  return mac;
}

/** Parse "a.b.c.d/len" → {network: Uint8Array(4), prefix}; throws on anything else. */
export function parseCidr4(cidr) {
  const [addr, len, extra] = String(cidr).split("/");
  const ip = parseIp4(addr);
  const prefix = Number(len);
  if (!ip || extra !== undefined || !/^\d+$/.test(len ?? "") || prefix > 32) {
    throw new Error(`not an IPv4 network: ${cidr}`);
  }
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return { network: u32((readU32(ip, 0) & mask) >>> 0), prefix };
}

/** Parse "x::/64" → {network: Uint8Array(16), prefix}; throws on anything else. */
export function parseCidr6(cidr6) {
  const [addr, len, extra] = String(cidr6).split("/");
  const ip = parseIp6(addr ?? "");
  const prefix = Number(len);
  if (!ip || extra !== undefined || !/^\d+$/.test(len ?? "") || prefix > 128) {
    throw new Error(`not an IPv6 network: ${cidr6}`);
  }
  const network = ip.slice();
  for (let bit = prefix; bit < 128; bit++) network[bit >> 3] &= ~(0x80 >> (bit & 7));
  return { network, prefix };
}

/** The static IPv4 address of `mac` inside `cidr` (the same as Python's ipv4_for). */
export function ipv4For(networkId, mac, cidr) {
  const { network, prefix } = parseCidr4(cidr);
  if (prefix > 30) throw new Error(`IPv4 network ${cidr} is too small for hosts`);
  const candidates = 2n ** BigInt(32 - prefix) - 3n;
  const digest = sha256(concatBytes("atenet/v1 ipv4", networkId, mac));
  const pick = BigInt(`0x${toHex(digest)}`) % candidates;
  return u32(Number((BigInt(readU32(network, 0)) + 2n + pick) & 0xffffffffn));
}

/** The static IPv6 address of `mac` inside the /64 `cidr6` (the same as Python's ipv6_for). */
export function ipv6For(networkId, mac, cidr6) {
  const { network, prefix } = parseCidr6(cidr6);
  if (prefix !== 64) throw new Error(`IPv6 network ${cidr6} must be a /64`);
  const iid = sha256(concatBytes("atenet/v1 ipv6", networkId, mac)).slice(0, 8);
  if (iid.subarray(0, 7).every((b) => b === 0) && iid[7] < 2) iid[7] += 2;
  const out = network.slice();
  out.set(iid, 8);
  return out;
}

/** True when `ip` (4 bytes) lies inside network/prefix. */
function inSubnet4(ip, network, prefix) {
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return ((readU32(ip, 0) & mask) >>> 0) === readU32(network, 0);
}

// --- checksums and frame builders (src/atenet/wire) --------------------------------------------

/** Internet checksum (RFC 1071) of `data`, starting from the 32-bit partial sum `initial`. */
export function inetChecksum(data, initial = 0) {
  let sum = initial;
  const n = data.length & ~1;
  for (let i = 0; i < n; i += 2) sum += (data[i] << 8) | data[i + 1];
  if (data.length & 1) sum += data[data.length - 1] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return ~sum & 0xffff;
}

function pseudoHeader6(src, dst, nextHeader, length) {
  let sum = 0;
  for (const addr of [src, dst]) for (let i = 0; i < 16; i += 2) sum += readU16(addr, i);
  return sum + (length >>> 16) + (length & 0xffff) + nextHeader;
}

export function ethernetFrame(dst, src, ethertype, payload) {
  return concatBytes(dst, src, u16(ethertype), payload);
}

function arpBody(op, senderMac, senderIp, targetMac, targetIp) {
  return concatBytes(new Uint8Array([0, 1, 8, 0, 6, 4, 0, op]), senderMac, senderIp, targetMac, targetIp);
}

export function arpRequest(srcMac, srcIp, targetIp) {
  return ethernetFrame(BROADCAST_MAC, srcMac, ETHERTYPE_ARP, arpBody(1, srcMac, srcIp, ZERO_MAC, targetIp));
}

export function arpReply(srcMac, srcIp, dstMac, dstIp) {
  return ethernetFrame(dstMac, srcMac, ETHERTYPE_ARP, arpBody(2, srcMac, srcIp, dstMac, dstIp));
}

/** An ARP announcement (RFC 5227): broadcast request with sender IP = target IP. */
export function gratuitousArp(mac, ip) {
  return ethernetFrame(BROADCAST_MAC, mac, ETHERTYPE_ARP, arpBody(1, mac, ip, ZERO_MAC, ip));
}

/** An IPv4 packet with a fresh header checksum (no options, no DF, id 0 unless given). */
export function ipv4Packet(src, dst, protocol, payload, ttl = 64, ident = 0) {
  const header = concatBytes(
    new Uint8Array([0x45, 0]),
    u16(20 + payload.length),
    u16(ident),
    new Uint8Array([0, 0, ttl, protocol, 0, 0]),
    src,
    dst,
  );
  header.set(u16(inetChecksum(header)), 10);
  return concatBytes(header, payload);
}

function icmpMessage(type, code, rest, payload, initial) {
  const message = concatBytes(new Uint8Array([type, code, 0, 0]), u32(rest), payload);
  message.set(u16(inetChecksum(message, initial)), 2);
  return message;
}

function icmpEcho(type, srcMac, dstMac, srcIp, dstIp, ident, seq, payload, ttl) {
  const message = icmpMessage(type, 0, ((ident << 16) | seq) >>> 0, payload, 0);
  return ethernetFrame(dstMac, srcMac, ETHERTYPE_IPV4, ipv4Packet(srcIp, dstIp, PROTO_ICMP, message, ttl));
}

export function icmpEchoRequest(srcMac, dstMac, srcIp, dstIp, ident, seq, payload = new Uint8Array(0), ttl = 64) {
  return icmpEcho(8, srcMac, dstMac, srcIp, dstIp, ident, seq, payload, ttl);
}

export function icmpEchoReply(srcMac, dstMac, srcIp, dstIp, ident, seq, payload = new Uint8Array(0), ttl = 64) {
  return icmpEcho(0, srcMac, dstMac, srcIp, dstIp, ident, seq, payload, ttl);
}

export function ipv6Packet(src, dst, nextHeader, payload, hopLimit = 64) {
  return concatBytes(u32(6 << 28), u16(payload.length), new Uint8Array([nextHeader, hopLimit]), src, dst, payload);
}

function icmpv6Frame(type, code, rest, body, srcMac, dstMac, srcIp, dstIp, hopLimit) {
  const initial = pseudoHeader6(srcIp, dstIp, NEXT_HEADER_ICMPV6, 8 + body.length);
  const message = icmpMessage(type, code, rest, body, initial);
  return ethernetFrame(dstMac, srcMac, ETHERTYPE_IPV6, ipv6Packet(srcIp, dstIp, NEXT_HEADER_ICMPV6, message, hopLimit));
}

export function icmpv6EchoRequest(srcMac, dstMac, srcIp, dstIp, ident, seq, payload = new Uint8Array(0), hopLimit = 64) {
  return icmpv6Frame(128, 0, ((ident << 16) | seq) >>> 0, payload, srcMac, dstMac, srcIp, dstIp, hopLimit);
}

export function icmpv6EchoReply(srcMac, dstMac, srcIp, dstIp, ident, seq, payload = new Uint8Array(0), hopLimit = 64) {
  return icmpv6Frame(129, 0, ((ident << 16) | seq) >>> 0, payload, srcMac, dstMac, srcIp, dstIp, hopLimit);
}

/** ff02::1:ffXX:XXXX, the solicited-node group of `ip`. */
export function solicitedNode(ip) {
  const out = fromHex("ff0200000000000000000001ff000000");
  out.set(ip.subarray(13, 16), 13);
  return out;
}

/** 33:33 + the low 32 bits of an IPv6 multicast group. */
export function multicastMac6(group) {
  return concatBytes(new Uint8Array([0x33, 0x33]), group.subarray(12, 16));
}

/** Who has `targetIp`? Sent to its solicited-node group, with our MAC as an option. */
export function neighborSolicitation(srcMac, srcIp, targetIp) {
  const dstIp = solicitedNode(targetIp);
  const body = concatBytes(targetIp, new Uint8Array([1, 1]), srcMac);
  return icmpv6Frame(135, 0, 0, body, srcMac, multicastMac6(dstIp), srcIp, dstIp, ND_HOP_LIMIT);
}

/**
 * `targetIp` is at `srcMac`. With no destination it is an unsolicited advertisement to ff02::1
 * (solicited flag cleared); flags: override always, solicited for answers.
 */
export function neighborAdvertisement(srcMac, targetIp, dstMac = null, dstIp = null) {
  const solicited = dstIp !== null;
  const to = dstIp ?? ALL_NODES;
  const flags = ((solicited ? 1 << 30 : 0) | (1 << 29)) >>> 0;
  const body = concatBytes(targetIp, new Uint8Array([2, 1]), srcMac);
  return icmpv6Frame(136, 0, flags, body, srcMac, dstMac ?? multicastMac6(to), targetIp, to, ND_HOP_LIMIT);
}

/** The link-layer address option `kind` (1 source, 2 target) among ND options, or null. */
function ndOption(options, kind) {
  for (let pos = 0; pos + 2 <= options.length; ) {
    const units = options[pos + 1];
    if (units === 0 || pos + units * 8 > options.length) return null;
    if (options[pos] === kind && units === 1) return options.slice(pos + 2, pos + 8);
    pos += units * 8;
  }
  return null;
}

// --- DHCPv4 messages (src/atenet/wire/dhcp.py) -------------------------------------------------

const PROTO_UDP = 17;
export const DHCP_SERVER_PORT = 67;
export const DHCP_CLIENT_PORT = 68;
const DHCP_MAGIC = new Uint8Array([99, 130, 83, 99]);
const DHCP_FIXED_LEN = 236; // op … file: the BOOTP header before the magic cookie
const DHCP_MAX_OPTIONS = 64; // as the server: a real peer sends about ten
export const DHCP = Object.freeze({ DISCOVER: 1, OFFER: 2, REQUEST: 3, DECLINE: 4, ACK: 5, NAK: 6, RELEASE: 7, INFORM: 8 });
export const DHCP_OPT = Object.freeze({
  MASK: 1,
  ROUTER: 3,
  DNS: 6,
  HOST_NAME: 12,
  MTU: 26,
  BROADCAST: 28,
  REQUESTED_IP: 50,
  LEASE_TIME: 51,
  OVERLOAD: 52,
  MESSAGE_TYPE: 53,
  SERVER_ID: 54,
  PARAMS: 55,
  MESSAGE: 56,
  T1: 58,
  T2: 59,
  CLASSLESS_ROUTES: 121,
});
/** What the page asks for (option 55): mask, router, DNS, MTU, broadcast, times, routes. */
const DHCP_PARAMS = new Uint8Array([1, 3, 6, 26, 28, 51, 54, 58, 59, 121]);
const ZERO_IP4 = new Uint8Array(4);
const BROADCAST_IP4 = new Uint8Array([255, 255, 255, 255]);

/** A UDP datagram over IPv4 with its checksum (RFC 768: a computed 0 is sent as 0xffff). */
export function udpDatagram(srcIp, dstIp, srcPort, dstPort, payload) {
  const udp = concatBytes(u16(srcPort), u16(dstPort), u16(8 + payload.length), u16(0), payload);
  let pseudo = PROTO_UDP + udp.length;
  for (const addr of [srcIp, dstIp]) pseudo += readU16(addr, 0) + readU16(addr, 2);
  udp.set(u16(inetChecksum(udp, pseudo) || 0xffff), 6);
  return udp;
}

/**
 * A DHCP message: the BOOTP header, the magic cookie, `options` ([code, bytes] pairs, option
 * 53 first as clients and servers expect), the end option, padded to the BOOTP minimum of 300.
 */
export function dhcpMessage({ op = 1, xid, chaddr, secs = 0, flags = 0, ciaddr = ZERO_IP4, yiaddr = ZERO_IP4, siaddr = ZERO_IP4, giaddr = ZERO_IP4, options = [] }) {
  const out = new Uint8Array(Math.max(300, DHCP_FIXED_LEN + 4 + options.reduce((n, [, v]) => n + 2 + v.length, 0) + 1));
  out.set([op, 1, 6, 0], 0);
  out.set(u32(xid), 4);
  out.set(u16(secs), 8);
  out.set(u16(flags), 10);
  out.set(ciaddr, 12);
  out.set(yiaddr, 16);
  out.set(siaddr, 20);
  out.set(giaddr, 24);
  out.set(chaddr, 28);
  out.set(DHCP_MAGIC, DHCP_FIXED_LEN);
  let pos = DHCP_FIXED_LEN + 4;
  for (const [code, value] of options) {
    if (value.length > 255) throw new Error(`DHCP option ${code} is longer than 255 bytes`);
    out[pos] = code;
    out[pos + 1] = value.length;
    out.set(value, pos + 2);
    pos += 2 + value.length;
  }
  out[pos] = 255;
  return out;
}

/**
 * Parse a DHCP message with the rules of atenet.wire.dhcp's parser: null for anything
 * malformed (short, not Ethernet 1/6, no magic cookie, an option past the end, too many
 * options, option overload, no end option). Never throws.
 */
export function parseDhcpMessage(buf) {
  if (buf.length < DHCP_FIXED_LEN + 4 || buf.length > 1500) return null;
  const op = buf[0];
  if ((op !== 1 && op !== 2) || buf[1] !== 1 || buf[2] !== 6) return null;
  if (!bytesEqual(buf.subarray(DHCP_FIXED_LEN, DHCP_FIXED_LEN + 4), DHCP_MAGIC)) return null;
  const options = new Map();
  let pos = DHCP_FIXED_LEN + 4;
  let count = 0;
  for (;;) {
    if (pos >= buf.length) return null;
    const code = buf[pos];
    if (code === 0) {
      pos++;
      continue;
    }
    if (code === 255) break;
    if (pos + 1 >= buf.length || pos + 2 + buf[pos + 1] > buf.length) return null;
    if (++count > DHCP_MAX_OPTIONS || code === DHCP_OPT.OVERLOAD) return null;
    const value = buf.slice(pos + 2, pos + 2 + buf[pos + 1]);
    const before = options.get(code);
    options.set(code, before ? concatBytes(before, value) : value); // RFC 3396 long options
    pos += 2 + buf[pos + 1];
  }
  const type = options.get(DHCP_OPT.MESSAGE_TYPE);
  return {
    op,
    xid: readU32(buf, 4),
    secs: readU16(buf, 8),
    flags: readU16(buf, 10),
    ciaddr: buf.slice(12, 16),
    yiaddr: buf.slice(16, 20),
    siaddr: buf.slice(20, 24),
    giaddr: buf.slice(24, 28),
    chaddr: buf.slice(28, 34),
    type: type && type.length === 1 ? type[0] : null,
    options,
  };
}

/** An option holding exactly one IPv4 address (or a list's first), else null. */
function dhcpIpOption(options, code, list = false) {
  const value = options.get(code);
  if (!value || value.length < 4 || (list ? value.length % 4 : value.length !== 4)) return null;
  return value.slice(0, 4);
}

function dhcpU32Option(options, code) {
  const value = options.get(code);
  return value && value.length === 4 ? readU32(value, 0) : null;
}

/** The prefix length of a contiguous netmask (4 bytes), or null for a non-contiguous one. */
function maskPrefix(mask) {
  const value = readU32(mask, 0);
  let prefix = 0;
  while (prefix < 32 && value & (0x80000000 >>> prefix)) prefix++;
  return value === (prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0) ? prefix : null;
}

/** A DHCP client frame: UDP 68 → 67 inside IPv4 inside Ethernet. */
export function dhcpClientFrame(srcMac, dstMac, srcIp, dstIp, message) {
  const udp = udpDatagram(srcIp, dstIp, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, message);
  return ethernetFrame(dstMac, srcMac, ETHERTYPE_IPV4, ipv4Packet(srcIp, dstIp, PROTO_UDP, udp));
}

/**
 * Take a frame apart down to a DHCP message sent to the client port (UDP 67 → 68).
 * Returns null when the frame is not that at all, {malformed: true} when it claims to be and
 * is broken (IPv4 or UDP checksum, truncated, bad DHCP message), else the parsed message with
 * `srcMac`, `srcIp` and `dstIp`. Never throws.
 */
export function parseDhcpReplyFrame(frame) {
  if (frame.length < 14 + 20 + 8 || readU16(frame, 12) !== ETHERTYPE_IPV4) return null;
  const packet = frame.subarray(14);
  if (packet[0] >> 4 !== 4 || packet[9] !== PROTO_UDP) return null;
  const headerLen = (packet[0] & 0x0f) * 4;
  if (headerLen < 20 || packet.length < headerLen + 8) return null; // the host drops it
  if ((readU16(packet, 6) & 0x3fff) !== 0) return null; // a fragment: not reassembled
  const udp = packet.subarray(headerLen);
  if (readU16(udp, 0) !== DHCP_SERVER_PORT || readU16(udp, 2) !== DHCP_CLIENT_PORT) return null;
  // From here on it claims to be a DHCP reply: whatever is wrong is counted as malformed.
  const total = readU16(packet, 2);
  if (total < headerLen + 8 || total > packet.length) return { malformed: true };
  if (inetChecksum(packet.subarray(0, headerLen)) !== 0) return { malformed: true };
  const length = readU16(udp, 4);
  if (length < 8 || length > total - headerLen) return { malformed: true };
  const src = packet.subarray(12, 16);
  const dst = packet.subarray(16, 20);
  if (readU16(udp, 6) !== 0) {
    let pseudo = PROTO_UDP + length;
    for (const addr of [src, dst]) pseudo += readU16(addr, 0) + readU16(addr, 2);
    if (inetChecksum(udp.subarray(0, length), pseudo) !== 0) return { malformed: true };
  }
  const message = parseDhcpMessage(udp.subarray(8, length));
  if (!message || message.op !== 2) return { malformed: true };
  return { ...message, srcMac: frame.slice(6, 12), srcIp: src.slice(), dstIp: dst.slice() };
}

// --- the host ----------------------------------------------------------------------------------

const ARP_TRIES = 3;
const RESOLVE_INTERVAL_MS = 1000;

/**
 * A host on the LAN with one MAC, one IPv4 and (optionally) one IPv6 address.
 *
 * Feed it every received frame with `receive(frame)`; it calls `send(frame)` to transmit.
 * It answers ARP and neighbour solicitations for its addresses and echo requests, learns
 * neighbours from ARP/ND, and pings (`ping`). Nothing here touches the DOM or a socket.
 *
 * `ip4` may be null (no IPv4 yet: DHCP has not answered); then it answers nothing over IPv4
 * and `setIp4` gives it one later. `gateway4` is the IPv4 next hop off the subnet (default:
 * the first host of the subnet). `dhcp`, when set, is a Dhcp4Client that sees every IPv4
 * frame first and keeps the DHCP replies.
 */
export class Host {
  constructor({ mac, ip4 = null, prefix4 = 24, gateway4 = null, ip6 = null, send, now, timers, onEvent } = {}) {
    this.mac = mac;
    this.ip4 = null;
    this.prefix4 = prefix4;
    this.net4 = null;
    this.gateway4 = null;
    this.setIp4(ip4, prefix4, gateway4);
    this.dhcp = null;
    this.ip6 = ip6;
    this.send = send;
    this.now = now ?? (() => globalThis.performance.now());
    this.timers = timers ?? { setTimeout: globalThis.setTimeout.bind(globalThis), clearTimeout: globalThis.clearTimeout.bind(globalThis) };
    this.onEvent = onEvent ?? (() => {});
    this.onIpv4 = null; // (packet info) => void, for protocols other than ICMP
    this.onIpv6 = null;
    this.neighbors = new Map(); // address text → Uint8Array MAC (IPv4 and IPv6 alike)
    this.waiters = new Map(); // address text → [resolve functions]
    this.pending = new Map(); // "4|ident|seq" or "6|ident|seq" → {sentAt, resolve}
    this.ident = (Math.random() * 0x10000) & 0xffff;
    this.seq = 0;
    this.stats = { framesIn: 0, framesOut: 0, bytesIn: 0, bytesOut: 0, ignored: 0, answered: 0 };
  }

  /** Use `ip4` (null: none) inside a /`prefix4`, with `gateway4` (null: the subnet's first host). */
  setIp4(ip4, prefix4 = this.prefix4, gateway4 = null) {
    this.ip4 = ip4 ? ip4.slice() : null;
    this.prefix4 = prefix4;
    const mask = prefix4 ? (0xffffffff << (32 - prefix4)) >>> 0 : 0;
    this.net4 = ip4 ? u32((readU32(ip4, 0) & mask) >>> 0) : null;
    this.gateway4 = gateway4 ? gateway4.slice() : this.net4 ? u32(readU32(this.net4, 0) + 1) : null;
  }

  transmit(frame) {
    this.stats.framesOut++;
    this.stats.bytesOut += frame.length;
    this.send(frame);
  }

  /** Announce our addresses: a gratuitous ARP and an unsolicited neighbour advertisement. */
  announce() {
    if (this.ip4) this.transmit(gratuitousArp(this.mac, this.ip4));
    if (this.ip6) this.transmit(neighborAdvertisement(this.mac, this.ip6));
  }

  /** Handle one received Ethernet frame (Uint8Array). Unknown or malformed frames are ignored. */
  receive(frame) {
    this.stats.framesIn++;
    this.stats.bytesIn += frame.length;
    if (frame.length < 14) return this.ignore();
    const dst = frame.subarray(0, 6);
    // The switch floods: keep frames for our MAC, broadcast and multicast only.
    if (!(dst[0] & 1) && !bytesEqual(dst, this.mac)) return this.ignore();
    const src = frame.subarray(6, 12);
    const type = readU16(frame, 12);
    const payload = frame.subarray(14);
    if (type === ETHERTYPE_ARP) return this.receiveArp(payload);
    if (type === ETHERTYPE_IPV4 && this.dhcp && this.dhcp.receive(frame)) return undefined;
    if (type === ETHERTYPE_IPV4) return this.receiveIpv4(src, payload);
    if (type === ETHERTYPE_IPV6 && this.ip6) return this.receiveIpv6(src, payload);
    return this.ignore();
  }

  ignore() {
    this.stats.ignored++;
  }

  learn(key, mac) {
    this.neighbors.set(key, mac.slice());
    const waiting = this.waiters.get(key);
    if (waiting) {
      this.waiters.delete(key);
      for (const resolve of waiting) resolve(mac.slice());
    }
  }

  receiveArp(arp) {
    if (arp.length < 28 || readU16(arp, 0) !== 1 || readU16(arp, 2) !== ETHERTYPE_IPV4 || arp[4] !== 6 || arp[5] !== 4) {
      return this.ignore();
    }
    const op = readU16(arp, 6);
    const senderMac = arp.subarray(8, 14);
    const senderIp = arp.subarray(14, 18);
    const targetIp = arp.subarray(24, 28);
    if (bytesEqual(senderMac, this.mac)) return undefined; // our own broadcast, flooded back
    if (this.ip4 && bytesEqual(senderIp, this.ip4)) {
      this.onEvent("conflict", `${formatMac(senderMac)} also claims ${formatIp4(this.ip4)}`);
      return undefined;
    }
    if (readU32(senderIp, 0) !== 0) this.learn(formatIp4(senderIp), senderMac);
    if (op === 1 && this.ip4 && bytesEqual(targetIp, this.ip4)) {
      this.stats.answered++;
      this.transmit(arpReply(this.mac, this.ip4, senderMac, senderIp));
    }
    return undefined;
  }

  receiveIpv4(srcMac, packet) {
    if (packet.length < 20 || packet[0] >> 4 !== 4) return this.ignore();
    const headerLen = (packet[0] & 0x0f) * 4;
    const total = readU16(packet, 2);
    if (headerLen < 20 || total < headerLen || total > packet.length) return this.ignore();
    if (inetChecksum(packet.subarray(0, headerLen)) !== 0) return this.ignore();
    const dst = packet.subarray(16, 20);
    if (!this.ip4 || !bytesEqual(dst, this.ip4)) return this.ignore();
    const src = packet.subarray(12, 16);
    const fragmented = (readU16(packet, 6) & 0x3fff) !== 0;
    const protocol = packet[9];
    const body = packet.subarray(headerLen, total);
    if (fragmented) return this.ignore(); // no reassembly: pings fit in one frame
    if (protocol === PROTO_ICMP) return this.receiveIcmp(srcMac, src, body);
    if (this.onIpv4) return this.onIpv4({ srcMac, src, dst, protocol, body });
    return this.ignore();
  }

  receiveIcmp(srcMac, srcIp, message) {
    if (message.length < 8 || inetChecksum(message) !== 0) return this.ignore();
    const type = message[0];
    const ident = readU16(message, 4);
    const seq = readU16(message, 6);
    if (type === 8 && message[1] === 0) {
      this.stats.answered++;
      this.transmit(icmpEchoReply(this.mac, srcMac, this.ip4, srcIp, ident, seq, message.slice(8)));
    } else if (type === 0) {
      this.settle(`4|${formatIp4(srcIp)}|${ident}|${seq}`);
    }
    return undefined;
  }

  receiveIpv6(srcMac, packet) {
    if (packet.length < 40 || packet[0] >> 4 !== 6) return this.ignore();
    const plen = readU16(packet, 4);
    if (40 + plen > packet.length) return this.ignore();
    const nextHeader = packet[6];
    const hopLimit = packet[7];
    const src = packet.subarray(8, 24);
    const dst = packet.subarray(24, 40);
    const body = packet.subarray(40, 40 + plen);
    const forUs = bytesEqual(dst, this.ip6) || bytesEqual(dst, solicitedNode(this.ip6)) || bytesEqual(dst, ALL_NODES);
    if (!forUs) return this.ignore();
    if (nextHeader !== NEXT_HEADER_ICMPV6) {
      if (this.onIpv6 && bytesEqual(dst, this.ip6)) return this.onIpv6({ srcMac, src, dst, nextHeader, body });
      return this.ignore();
    }
    if (body.length < 8 || inetChecksum(body, pseudoHeader6(src, dst, NEXT_HEADER_ICMPV6, body.length)) !== 0) {
      return this.ignore();
    }
    const type = body[0];
    if (type === 135 || type === 136) {
      if (hopLimit !== ND_HOP_LIMIT || body[1] !== 0 || body.length < 24) return this.ignore();
      const target = body.subarray(8, 24);
      const options = body.subarray(24);
      if (type === 135) {
        if (!bytesEqual(target, this.ip6)) return this.ignore();
        const unspecified = src.every((b) => b === 0);
        const theirMac = ndOption(options, 1) ?? srcMac;
        this.stats.answered++;
        if (unspecified) {
          this.onEvent("conflict", `${formatMac(srcMac)} probes for ${formatIp6(this.ip6)}`);
          this.transmit(neighborAdvertisement(this.mac, this.ip6));
        } else {
          this.learn(formatIp6(src), theirMac);
          this.transmit(neighborAdvertisement(this.mac, this.ip6, theirMac, src));
        }
      } else {
        const theirMac = ndOption(options, 2) ?? srcMac;
        if (bytesEqual(target, this.ip6) && !bytesEqual(theirMac, this.mac)) {
          this.onEvent("conflict", `${formatMac(theirMac)} also claims ${formatIp6(this.ip6)}`);
        } else if (!bytesEqual(theirMac, this.mac)) {
          this.learn(formatIp6(target), theirMac);
        }
      }
      return undefined;
    }
    if (!bytesEqual(dst, this.ip6)) return this.ignore();
    const ident = readU16(body, 4);
    const seq = readU16(body, 6);
    if (type === 128 && body[1] === 0) {
      this.stats.answered++;
      this.transmit(icmpv6EchoReply(this.mac, srcMac, this.ip6, src, ident, seq, body.slice(8)));
    } else if (type === 129) {
      this.settle(`6|${formatIp6(src)}|${ident}|${seq}`);
    }
    return undefined;
  }

  settle(key) {
    const entry = this.pending.get(key);
    if (!entry) return;
    this.pending.delete(key);
    entry.resolve(this.now() - entry.sentAt);
  }

  /** The next hop for `ip`: itself inside our subnet, else the gateway (gateway4 / ::1). */
  nextHop(ip) {
    if (ip.length === 4) {
      if (inSubnet4(ip, this.net4, this.prefix4)) return ip;
      return this.gateway4;
    }
    if (bytesEqual(ip.subarray(0, 8), this.ip6.subarray(0, 8)) || (ip[0] === 0xfe && (ip[1] & 0xc0) === 0x80)) return ip;
    const gateway = this.ip6.slice();
    gateway.fill(0, 8);
    gateway[15] = 1;
    return gateway;
  }

  /** The MAC of the on-link address `ip` (4 or 16 bytes): from the cache, else by ARP / ND. */
  resolve(ip, { tries = ARP_TRIES, interval = RESOLVE_INTERVAL_MS } = {}) {
    const key = ip.length === 4 ? formatIp4(ip) : formatIp6(ip);
    const known = this.neighbors.get(key);
    if (known) return Promise.resolve(known);
    return new Promise((resolve) => {
      let attempt = 0;
      let timer = null;
      const done = (mac) => {
        this.timers.clearTimeout(timer);
        resolve(mac);
      };
      if (!this.waiters.has(key)) this.waiters.set(key, []);
      this.waiters.get(key).push(done);
      const ask = () => {
        if (attempt++ >= tries) {
          const list = this.waiters.get(key) ?? [];
          const index = list.indexOf(done);
          if (index >= 0) list.splice(index, 1);
          if (list.length === 0) this.waiters.delete(key);
          resolve(null);
          return;
        }
        this.transmit(ip.length === 4 ? arpRequest(this.mac, this.ip4, ip) : neighborSolicitation(this.mac, this.ip6, ip));
        timer = this.timers.setTimeout(ask, interval);
      };
      ask();
    });
  }

  /**
   * Ping `address` (IPv4 or IPv6 text) `count` times, one request per `interval` ms.
   * `onReply({seq, rtt})` is called per request (rtt null on timeout or when the address
   * does not resolve). Resolves to the list of RTTs in ms (null for each lost one).
   */
  async ping(address, { count = 4, interval = 1000, timeout = 2000, payloadSize = 56, onReply = () => {}, resolveOptions } = {}) {
    const ip = parseIp4(address) ?? (this.ip6 ? parseIp6(address) : null);
    if (!ip) throw new Error(`not an address: ${address}`);
    const family = ip.length === 4 ? 4 : 6;
    if (family === 4 && !this.ip4) throw new Error("this page has no IPv4 address yet (waiting for DHCP)");
    const text = family === 4 ? formatIp4(ip) : formatIp6(ip);
    const own = family === 4 ? this.ip4 : this.ip6;
    if (bytesEqual(ip, own)) throw new Error(`${text} is this page's own address`);
    const hop = this.nextHop(ip);
    const dstMac = await this.resolve(hop, resolveOptions);
    if (!dstMac) {
      const results = new Array(count).fill(null);
      results.forEach((_, i) => onReply({ seq: i + 1, rtt: null, unresolved: true }));
      return results;
    }
    const payload = new Uint8Array(payloadSize);
    for (let i = 0; i < payloadSize; i++) payload[i] = i & 0xff;
    const waits = [];
    for (let i = 0; i < count; i++) {
      if (i > 0) await new Promise((r) => this.timers.setTimeout(r, interval));
      this.seq = (this.seq + 1) & 0xffff;
      const seq = this.seq;
      const key = `${family}|${text}|${this.ident}|${seq}`;
      const wait = new Promise((resolve) => {
        const timer = this.timers.setTimeout(() => {
          this.pending.delete(key);
          resolve(null);
        }, timeout);
        this.pending.set(key, {
          sentAt: this.now(),
          resolve: (rtt) => {
            this.timers.clearTimeout(timer);
            resolve(rtt);
          },
        });
      }).then((rtt) => {
        onReply({ seq: i + 1, rtt });
        return rtt;
      });
      waits.push(wait);
      this.transmit(
        family === 4
          ? icmpEchoRequest(this.mac, dstMac, this.ip4, ip, this.ident, seq, payload)
          : icmpv6EchoRequest(this.mac, dstMac, this.ip6, ip, this.ident, seq, payload),
      );
    }
    return Promise.all(waits);
  }
}

// --- the DHCPv4 client -------------------------------------------------------------------------

/** First retransmission delay; doubled per try up to DHCP_MAX_RETRY_MS, jittered (RFC 2131 §4.1). */
export const DHCP_FIRST_RETRY_MS = 1000;
export const DHCP_MAX_RETRY_MS = 64000;
/** Without an answer by then (3 DISCOVERs: at 0, ~1 and ~3 s), the host falls back to its hashed address. */
export const DHCP_FALLBACK_MS = 7000;
/** REQUESTs sent for one offer before starting over with DISCOVER. */
export const DHCP_REQUEST_TRIES = 4;
/** RFC 2131 §4.4.5: renewing/rebinding retransmit at half the time left, at least 60 s apart. */
export const DHCP_MIN_RENEW_RETRY_MS = 60000;
const MAX_TIMER_MS = 0x7fffffff; // setTimeout's limit (~24.8 days); longer waits are chained

/**
 * A DHCPv4 client (RFC 2131) for the page's host, sans-I/O like `Host`: frames in through
 * `receive(frame)`, frames out through `transmit`, time from the injected clock and timers.
 *
 * INIT → DISCOVER (retransmitted at ~1, 2, 4 … 64 s) → OFFER → REQUEST → ACK: bound. At T1 it
 * renews with a REQUEST unicast to the server, at T2 it rebinds by broadcast, at expiry it
 * drops the address (`onLost`) and starts over; a NAK does the same. When no server has
 * answered `fallbackMs` after starting, `onFallback` lets the page use its hashed address while
 * the client keeps asking (a late answer moves the page to the leased address).
 *
 * Only replies with our transaction id and our MAC as chaddr are taken. Everything it cannot
 * use is counted in `stats` (`malformed`, `ignored`); `receive` never throws. The client
 * never sends RELEASE: the binding is keyed by the tab's stable MAC, so a reloaded tab gets the
 * same address back, and a release per reload would be one chain event per reload.
 */
export class Dhcp4Client {
  constructor({ mac, hostName = "", cidr = null, transmit, now, timers, random, onBound, onLost, onFallback, fallbackMs = DHCP_FALLBACK_MS } = {}) {
    this.mac = mac;
    this.hostName = utf8Prefix(cleanHostName(hostName), 63);
    this.subnet = cidr ? parseCidr4(cidr) : null;
    this.transmit = transmit;
    this.now = now ?? (() => globalThis.performance.now());
    this.timers = timers ?? { setTimeout: globalThis.setTimeout.bind(globalThis), clearTimeout: globalThis.clearTimeout.bind(globalThis) };
    this.random = random ?? Math.random;
    this.onBound = onBound ?? (() => {});
    this.onLost = onLost ?? (() => {});
    this.onFallback = onFallback ?? (() => {});
    this.fallbackMs = fallbackMs;
    this.state = "stopped"; // init | selecting | requesting | bound | renewing | rebinding
    this.xid = 0;
    this.offer = null; // {ip, server} while requesting
    this.lease = null; // see parseLease, plus serverMac and boundAt (ms, this.now())
    this.tries = 0;
    this.startedAt = 0;
    this.timer = null; // retransmission (one at a time)
    this.leaseTimers = []; // T1, T2, expiry
    this.fallbackTimer = null;
    this.fellBack = false;
    this.naksInRow = 0;
    this.stats = {
      sent: 0,
      received: 0,
      malformed: 0,
      ignored: 0,
      offers: 0,
      acks: 0,
      naks: 0,
      renewals: 0,
      rebinds: 0,
      expiries: 0,
      fallbacks: 0,
      restarts: 0,
    };
  }

  /** Start asking (INIT). */
  start() {
    if (this.state === "stopped") this.init(0);
  }

  /** Stop every timer and send nothing more (the socket closed). */
  stop() {
    this.cancel(this.timer);
    this.cancel(this.fallbackTimer);
    this.leaseTimers.forEach((t) => this.cancel(t));
    this.timer = this.fallbackTimer = null;
    this.leaseTimers = [];
    this.state = "stopped";
  }

  /**
   * One received frame: true when it was a DHCP message to the client port (used or counted),
   * false when it is not DHCP at all (the host handles it).
   */
  receive(frame) {
    let reply;
    try {
      reply = parseDhcpReplyFrame(frame);
    } catch {
      reply = { malformed: true };
    }
    if (reply === null) return false;
    this.stats.received++;
    if (reply.malformed) {
      this.stats.malformed++;
      return true;
    }
    try {
      this.handle(reply);
    } catch {
      this.stats.malformed++; // a reply that broke an assumption: dropped, never thrown
    }
    return true;
  }

  // --- timers ---

  after(ms, fn) {
    const handle = { id: null };
    const arm = (left) => {
      const step = Math.min(Math.max(0, left), MAX_TIMER_MS);
      handle.id = this.timers.setTimeout(() => (left > step ? arm(left - step) : fn()), step);
    };
    arm(ms);
    return handle;
  }

  cancel(handle) {
    if (handle) this.timers.clearTimeout(handle.id);
  }

  /** Delay before try n+1 after try n: 1, 2, 4 … 64 s, ± a quarter (at most 1 s) of jitter. */
  backoff(tries) {
    const base = Math.min(DHCP_FIRST_RETRY_MS * 2 ** (tries - 1), DHCP_MAX_RETRY_MS);
    const jitter = Math.min(1000, base / 4);
    return base + (this.random() * 2 - 1) * jitter;
  }

  newXid() {
    return Math.floor(this.random() * 0x100000000) >>> 0;
  }

  // --- states ---

  init(delay) {
    this.cancel(this.timer);
    this.timer = null;
    this.state = "init";
    this.offer = null;
    if (!this.lease && !this.fellBack && !this.fallbackTimer) {
      this.fallbackTimer = this.after(this.fallbackMs, () => this.fallBack());
    }
    if (delay > 0) this.timer = this.after(delay, () => this.discover());
    else this.discover();
  }

  fallBack() {
    this.fallbackTimer = null;
    if (this.lease || this.state === "stopped") return;
    this.fellBack = true;
    this.stats.fallbacks++;
    this.onFallback();
  }

  discover() {
    this.state = "selecting";
    this.xid = this.newXid();
    this.startedAt = this.now();
    this.tries = 0;
    this.sendDiscover();
  }

  sendDiscover() {
    this.tries++;
    this.send(DHCP.DISCOVER);
    this.timer = this.after(this.backoff(this.tries), () => this.sendDiscover());
  }

  sendSelectingRequest() {
    if (this.tries >= DHCP_REQUEST_TRIES) {
      this.stats.restarts++;
      this.init(0);
      return;
    }
    this.tries++;
    this.send(DHCP.REQUEST, { requested: this.offer.ip, server: this.offer.server });
    this.timer = this.after(this.backoff(this.tries), () => this.sendSelectingRequest());
  }

  renew() {
    this.cancel(this.timer);
    this.state = "renewing";
    this.xid = this.newXid();
    this.startedAt = this.now();
    this.stats.renewals++;
    this.sendRenewal(false);
  }

  rebind() {
    this.cancel(this.timer);
    this.state = "rebinding";
    this.xid = this.newXid();
    this.stats.rebinds++;
    this.sendRenewal(true);
  }

  /** RENEWING: unicast to the server; REBINDING: broadcast to any server. */
  sendRenewal(broadcast) {
    const lease = this.lease;
    this.send(DHCP.REQUEST, { ciaddr: lease.ip, to: broadcast ? null : { mac: lease.serverMac, ip: lease.server } });
    const deadline = lease.boundAt + 1000 * (broadcast ? lease.leaseSecs : lease.t2Secs);
    const left = deadline - this.now();
    const wait = Math.max(DHCP_MIN_RENEW_RETRY_MS, left / 2);
    this.timer = wait < left ? this.after(wait, () => this.sendRenewal(broadcast)) : null;
  }

  expire() {
    this.stats.expiries++;
    this.drop();
    this.init(0);
  }

  /** Forget the lease (expired or NAKed): the host must stop using the address. */
  drop() {
    const old = this.lease;
    this.lease = null;
    this.leaseTimers.forEach((t) => this.cancel(t));
    this.leaseTimers = [];
    if (old) this.onLost(old);
  }

  send(type, { ciaddr = null, requested = null, server = null, to = null } = {}) {
    const options = [[DHCP_OPT.MESSAGE_TYPE, new Uint8Array([type])]];
    if (requested) options.push([DHCP_OPT.REQUESTED_IP, requested]);
    if (server) options.push([DHCP_OPT.SERVER_ID, server]);
    if (this.hostName.length) options.push([DHCP_OPT.HOST_NAME, this.hostName]);
    options.push([DHCP_OPT.PARAMS, DHCP_PARAMS]);
    const secs = Math.min(0xffff, Math.max(0, Math.floor((this.now() - this.startedAt) / 1000)));
    const message = dhcpMessage({ xid: this.xid, chaddr: this.mac, secs, ciaddr: ciaddr ?? ZERO_IP4, options });
    const src = ciaddr ?? ZERO_IP4;
    this.stats.sent++;
    this.transmit(to ? dhcpClientFrame(this.mac, to.mac, src, to.ip, message) : dhcpClientFrame(this.mac, BROADCAST_MAC, src, BROADCAST_IP4, message));
  }

  // --- replies ---

  handle(m) {
    if (this.state === "stopped" || m.xid !== this.xid || !bytesEqual(m.chaddr, this.mac)) {
      this.stats.ignored++; // another client's exchange (the switch floods broadcasts)
      return;
    }
    const waiting = this.state === "requesting" || this.state === "renewing" || this.state === "rebinding";
    if (m.type === DHCP.OFFER && this.state === "selecting") this.takeOffer(m);
    else if (m.type === DHCP.ACK && waiting) this.takeAck(m);
    else if (m.type === DHCP.NAK && waiting) this.takeNak(m);
    else this.stats.ignored++; // a late duplicate, or a type we never asked for
  }

  /** An address the host may use: unicast, and inside the network's CIDR when known. */
  usable(ip) {
    if (ip[0] === 0 || ip[0] === 127 || ip[0] >= 224) return false;
    if (!this.subnet) return true;
    const { network, prefix } = this.subnet;
    if (!inSubnet4(ip, network, prefix)) return false;
    if (prefix >= 31) return true;
    const host = readU32(ip, 0) & (0xffffffff >>> prefix);
    return host !== 0 && host !== 0xffffffff >>> prefix;
  }

  takeOffer(m) {
    const server = dhcpIpOption(m.options, DHCP_OPT.SERVER_ID);
    if (!server || !this.usable(m.yiaddr)) {
      this.stats.malformed++;
      return;
    }
    this.stats.offers++;
    this.cancel(this.timer);
    this.offer = { ip: m.yiaddr, server };
    this.state = "requesting";
    this.tries = 0;
    this.sendSelectingRequest();
  }

  takeAck(m) {
    const expected = this.state === "requesting" ? this.offer.ip : this.lease.ip;
    const lease = this.parseLease(m);
    if (!lease || !bytesEqual(lease.ip, expected)) {
      this.stats.malformed++;
      return;
    }
    if (this.state === "requesting" && !bytesEqual(lease.server, this.offer.server)) {
      this.stats.ignored++; // another server's ACK for the same transaction: not ours to take
      return;
    }
    const renewed = this.lease !== null;
    this.cancel(this.timer);
    this.cancel(this.fallbackTimer);
    this.timer = this.fallbackTimer = null;
    this.leaseTimers.forEach((t) => this.cancel(t));
    this.fellBack = false;
    this.naksInRow = 0;
    this.stats.acks++;
    lease.serverMac = m.srcMac;
    lease.boundAt = this.now();
    this.lease = lease;
    this.offer = null;
    this.state = "bound";
    this.leaseTimers = lease.infinite
      ? []
      : [
          this.after(lease.t1Secs * 1000, () => this.renew()),
          this.after(lease.t2Secs * 1000, () => this.rebind()),
          this.after(lease.leaseSecs * 1000, () => this.expire()),
        ];
    this.onBound({ ...lease, renewed });
  }

  /** The lease an ACK gives, or null when it lacks a lease time, server id or usable address. */
  parseLease(m) {
    const o = m.options;
    const leaseSecs = dhcpU32Option(o, DHCP_OPT.LEASE_TIME);
    const server = dhcpIpOption(o, DHCP_OPT.SERVER_ID) ?? this.lease?.server ?? null;
    if (!leaseSecs || !server || !this.usable(m.yiaddr)) return null;
    let t2 = dhcpU32Option(o, DHCP_OPT.T2);
    if (t2 === null || t2 >= leaseSecs) t2 = Math.floor((leaseSecs * 7) / 8);
    let t1 = dhcpU32Option(o, DHCP_OPT.T1);
    if (t1 === null || t1 > t2) t1 = Math.min(t2, Math.floor(leaseSecs / 2));
    const mask = dhcpIpOption(o, DHCP_OPT.MASK);
    const fromMask = mask ? maskPrefix(mask) : null;
    const prefix = fromMask !== null && fromMask >= 1 && fromMask <= 30 ? fromMask : (this.subnet?.prefix ?? 24);
    let router = dhcpIpOption(o, DHCP_OPT.ROUTER, true);
    if (router && this.subnet && !inSubnet4(router, this.subnet.network, this.subnet.prefix)) router = null;
    const dnsRaw = o.get(DHCP_OPT.DNS);
    const dns = [];
    if (dnsRaw && dnsRaw.length % 4 === 0) for (let i = 0; i < dnsRaw.length; i += 4) dns.push(dnsRaw.slice(i, i + 4));
    const mtuRaw = o.get(DHCP_OPT.MTU);
    const mtu = mtuRaw && mtuRaw.length === 2 && readU16(mtuRaw, 0) >= 68 ? readU16(mtuRaw, 0) : null;
    return { ip: m.yiaddr, prefix, router, dns, mtu, server, leaseSecs, t1Secs: t1, t2Secs: t2, infinite: leaseSecs === 0xffffffff };
  }

  takeNak(m) {
    const server = dhcpIpOption(m.options, DHCP_OPT.SERVER_ID);
    const ours = this.state === "requesting" ? this.offer.server : this.lease.server;
    if (server && !bytesEqual(server, ours)) {
      this.stats.ignored++; // another server refusing: RFC 2131 lets the one we asked decide
      return;
    }
    this.stats.naks++;
    this.naksInRow++;
    this.drop();
    // Start over at once; a server that NAKs every time is asked at the DISCOVER pace.
    const delay = this.naksInRow > 1 ? Math.min(DHCP_FIRST_RETRY_MS * 2 ** (this.naksInRow - 2), DHCP_MAX_RETRY_MS) : 0;
    this.stats.restarts++;
    this.init(delay);
  }
}

/** The UTF-8 bytes of `text`, cut at a character boundary to at most `max` bytes. */
function utf8Prefix(text, max) {
  const encoder = new TextEncoder();
  let out = encoder.encode(text);
  const chars = Array.from(text);
  while (out.length > max) {
    chars.pop();
    out = encoder.encode(chars.join(""));
  }
  return out;
}

// --- the WebSocket session ---------------------------------------------------------------------

/**
 * One WebSocket session to the node: hello → welcome, then raw frames both ways plus status.
 *
 * Callbacks: onWelcome(welcome, host), onAddress(address), onStatus(status), onClose({code,
 * reason, refused, welcomed}), onEvent(kind, text). `hostKey` is this tab's identity (app.js:
 * tabHostKey of the profile's key and the tab's id); the MAC and the hashed addresses are
 * derived from it and the welcome's CIDRs. `hostName` is sent in the hello (the node shows
 * the port under that name) and in DHCP requests (option 12).
 *
 * IPv4 comes by DHCP when the welcome says the node's gateway serves it (`"dhcp": 1`) and
 * `dhcp` is not "off": the host has no IPv4 until the ACK, or until `fallbackMs` pass without
 * an answer, when it takes its hashed address (and keeps asking). Otherwise the hashed address
 * is used at once. onAddress gets {source: "dhcp" | "static" | "fallback" | "none", ip4,
 * prefix, gateway, lease} each time the IPv4 address or its lease changes. `clock` and
 * `timers` (the monotonic clock and setTimeout pair of Host and Dhcp4Client) are for tests.
 */
export class Session {
  constructor({ url, token, hostKey, hostName, WebSocketImpl, now, random, onWelcome, onAddress, onStatus, onClose, onEvent, dhcp = "auto", fallbackMs = DHCP_FALLBACK_MS, clock, timers } = {}) {
    this.url = url;
    this.token = token;
    this.hostKey = hostKey;
    this.hostName = cleanHostName(hostName ?? "");
    this.WebSocketImpl = WebSocketImpl ?? globalThis.WebSocket;
    this.wallClock = now ?? (() => Date.now());
    this.random = random ?? randomBytes;
    this.onWelcome = onWelcome ?? (() => {});
    this.onAddress = onAddress ?? (() => {});
    this.onStatus = onStatus ?? (() => {});
    this.onClose = onClose ?? (() => {});
    this.onEvent = onEvent ?? (() => {});
    this.dhcpMode = dhcp;
    this.fallbackMs = fallbackMs;
    this.clock = clock;
    this.timers = timers;
    this.host = null;
    this.dhcp = null;
    this.address = null;
    this.welcome = null;
    this.ws = null;
    this.counters = { framesIn: 0, framesOut: 0, bytesIn: 0, bytesOut: 0 };
  }

  open() {
    let ws;
    try {
      ws = new this.WebSocketImpl(this.url);
    } catch (err) {
      // e.g. a ws:// URL from an https page: report it like any failed connection
      this.onClose({ code: 0, reason: err.message, refused: false, welcomed: false });
      return;
    }
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      const hello = helloMessage(this.token, authKey(this.token.secret), this.wallClock(), this.random(16), this.hostName);
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (event) => this.message(event.data);
    ws.onclose = (event) => {
      this.ws = null;
      if (this.dhcp) this.dhcp.stop();
      this.onClose({
        code: event.code,
        reason: event.reason,
        refused: event.code === CLOSE_REFUSED,
        welcomed: this.welcome !== null,
      });
    };
    ws.onerror = () => {}; // a close event always follows, with the code
  }

  close() {
    if (this.ws) this.ws.close(1000, "page closed");
  }

  sendFrame(frame) {
    if (!this.ws || this.ws.readyState !== 1) return;
    this.counters.framesOut++;
    this.counters.bytesOut += frame.length;
    this.ws.send(frame);
  }

  message(data) {
    if (typeof data !== "string") {
      if (!this.host) return;
      const frame = new Uint8Array(data);
      this.counters.framesIn++;
      this.counters.bytesIn += frame.length;
      this.host.receive(frame);
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg.op === "welcome") {
      try {
        this.start(msg);
      } catch (err) {
        this.onEvent("error", `unusable welcome from the node: ${err.message}`);
        this.close();
        return;
      }
      this.host.announce();
      this.onWelcome(msg, this.host);
      if (this.dhcp) this.dhcp.start();
      else this.setAddress("static", this.staticIp4, null);
    } else if (msg.op === "status") {
      this.onStatus(msg);
    } else if (msg.op === "error") {
      this.onEvent("error", msg.message ?? "the node reported an error");
    }
  }

  /** The welcome: derive the addresses and make the host (throws on unusable CIDRs). */
  start(msg) {
    const mac = stableMac(this.token.networkId, this.hostKey);
    this.staticIp4 = ipv4For(this.token.networkId, mac, msg.cidr);
    const { network, prefix } = parseCidr4(msg.cidr);
    this.prefix4 = prefix;
    // The gateway: the welcome's, when it is an address inside the CIDR; else the first host.
    const named = parseIp4(msg.gateway ?? "");
    this.gateway4 = named && inSubnet4(named, network, prefix) ? named : u32(readU32(network, 0) + 1);
    let ip6 = null;
    try {
      if (msg.cidr6) ip6 = ipv6For(this.token.networkId, mac, msg.cidr6);
    } catch {
      ip6 = null; // IPv4 alone still works
    }
    const useDhcp = this.dhcpMode !== "off" && Boolean(msg.dhcp);
    this.host = new Host({
      mac,
      ip4: useDhcp ? null : this.staticIp4,
      prefix4: prefix,
      gateway4: this.gateway4,
      ip6,
      send: (frame) => this.sendFrame(frame),
      now: this.clock,
      timers: this.timers,
      onEvent: this.onEvent,
    });
    if (useDhcp) {
      this.dhcp = new Dhcp4Client({
        mac,
        hostName: this.hostName,
        cidr: msg.cidr,
        transmit: (frame) => this.host.transmit(frame),
        now: this.clock,
        timers: this.timers,
        fallbackMs: this.fallbackMs,
        onBound: (lease) => this.setAddress("dhcp", lease.ip, lease),
        onLost: () => this.setAddress("none", null, null),
        onFallback: () => this.setAddress("fallback", this.staticIp4, null),
      });
      this.host.dhcp = this.dhcp;
    }
    this.welcome = msg;
  }

  /** Give the host its IPv4 address (or none), announce it, and tell the page. */
  setAddress(source, ip4, lease) {
    const host = this.host;
    const changed = !ip4 || !host.ip4 || !bytesEqual(ip4, host.ip4);
    const prefix = lease ? lease.prefix : this.prefix4;
    host.setIp4(ip4, prefix, lease?.router ?? this.gateway4);
    if (ip4 && changed) host.transmit(gratuitousArp(host.mac, ip4));
    this.address = { source, ip4: host.ip4, prefix, gateway: host.gateway4, lease, changed };
    this.onAddress(this.address);
  }
}
