// The page: reads the token from the URL fragment, joins the network through net.js, and
// draws what it learns (addresses, members, ports, traffic chart, ping tool).
//
// For tests it exposes window.atenet = {ready, ip4, ip6, mac, host, source, gateway, lease, dhcp,
// ping(addr, count)} and sets document.body.dataset.state to "connecting" | "connected" |
// "refused" | "error".

import { chartScale, si } from "./chart.js";
import { LanError, describe, echoOverMio, fetchOverMio } from "./lan.js";
import { openMio } from "./mio.js";
import {
  Session,
  TokenError,
  authKey,
  cleanHostName,
  formatIp4,
  formatIp6,
  formatMac,
  fromHex,
  parseToken,
  randomBytes,
  tabHostKey,
  toHex,
} from "./net.js";

const HOST_KEY_STORAGE = "atenet-host-key";
const TAB_ID_STORAGE = "atenet-tab-id";
const TAB_CHANNEL = "atenet-tabs";
const TAB_CLAIM_MS = 150; // how long a new tab waits for another tab to say "that id is mine"
const REFUSED = "this token was refused (revoked, expired or wrong)";
const HISTORY = 60; // seconds of traffic in the chart
const RETRY_MS = [1000, 2000, 5000, 10000, 30000];

const $ = (id) => document.getElementById(id);

// --- window.atenet, for tests and the console --------------------------------------------------

let resolveReady;
let rejectReady;
const api = {
  ready: new Promise((resolve, reject) => {
    resolveReady = resolve;
    rejectReady = reject;
  }),
  ip4: null,
  ip6: null,
  mac: null,
  host: null,
  source: null, // where the IPv4 address came from: "dhcp" | "fallback" | "static" | "none"
  gateway: null,
  lease: null, // {secs, t1, t2, dns, mtu, server} while the address is leased
  dhcp: () => (session?.dhcp ? { state: session.dhcp.state, ...session.dhcp.stats } : null),
  ping: (address, count = 4) => runPing(String(address), Number(count) || 4),
  // "Reach the LAN" (lan.js over a mio session): resolve with the result shown, or reject.
  fetch: (url) => runLan("fetch", String(url)),
  echo: (target, size = 65536) => runLan("echo", String(target), Number(size) || 65536),
};
api.ready.catch(() => {}); // a refusal is shown on the page; no unhandled-rejection noise
window.atenet = api;

// --- state -------------------------------------------------------------------------------------

let session = null;
let host = null;
let welcome = null;
let myPort = null;
let everConnected = false;
let retries = 0;
let unit = "bytes";
const samples = []; // {framesIn, framesOut, bytesIn, bytesOut, drops} per second
let lastCounters = null;
let lastPortDrops = null;
let dropsThisSecond = 0;
let totalDrops = 0;

function setState(state, text) {
  document.body.dataset.state = state;
  $("state").textContent = text ?? state;
}

function banner(text) {
  const el = $("banner");
  el.textContent = text ?? "";
  el.hidden = !text;
}

function log(text, bad = false) {
  const li = document.createElement("li");
  if (bad) li.className = "bad";
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  li.append(time, text);
  const list = $("log");
  list.prepend(li);
  while (list.children.length > 100) list.lastChild.remove();
}

function profileKey() {
  try {
    const stored = localStorage.getItem(HOST_KEY_STORAGE);
    if (stored && /^[0-9a-f]{32}$/.test(stored)) return fromHex(stored);
    const fresh = randomBytes(16);
    localStorage.setItem(HOST_KEY_STORAGE, toHex(fresh));
    return fresh;
  } catch {
    log("no local storage: this browser gets new addresses on every visit", true);
    return randomBytes(16);
  }
}

// Each tab is its own host: the profile's key (localStorage, shared by the tabs of a browser
// profile) plus this tab's id (sessionStorage: per tab, kept across reloads of the tab). A tab
// made with the browser's "Duplicate tab" starts with a copy of the original's sessionStorage,
// so a new tab first asks the profile's other tabs (BroadcastChannel) whether its id is in use,
// and takes a fresh one if it is.
let tabChannel = null;
let myTabId = null;

function newTabId() {
  const id = toHex(randomBytes(8));
  try {
    sessionStorage.setItem(TAB_ID_STORAGE, id);
  } catch {
    // no session storage: this tab's addresses change on reload
  }
  return id;
}

async function claimTabId() {
  let id = null;
  try {
    const stored = sessionStorage.getItem(TAB_ID_STORAGE);
    if (stored && /^[0-9a-f]{16}$/.test(stored)) id = stored;
  } catch {
    // fall through: a fresh id
  }
  id ??= newTabId();
  if (typeof BroadcastChannel === "undefined") return id;
  tabChannel = new BroadcastChannel(TAB_CHANNEL);
  let taken = false;
  tabChannel.onmessage = (event) => {
    const msg = event.data ?? {};
    if (msg.op === "claim" && myTabId !== null && msg.id === myTabId) {
      tabChannel.postMessage({ op: "taken", id: msg.id });
    } else if (msg.op === "taken" && myTabId === null && msg.id === id) {
      taken = true;
    }
  };
  tabChannel.postMessage({ op: "claim", id });
  await new Promise((resolve) => setTimeout(resolve, TAB_CLAIM_MS));
  if (taken) {
    id = newTabId();
    log("this tab is a copy of another tab: it joins as a host of its own");
  }
  myTabId = id;
  return id;
}

// The name the node shows for this page's port: ?name=… in the page's address, else
// "browser-" and the start of the tab's id.
function pageHostName(tabId) {
  const asked = new URLSearchParams(location.search).get("name");
  return cleanHostName(asked || `browser-${tabId.slice(0, 6)}`);
}

// ?static in the page's address: the hashed address, no DHCP (as `tok connect --static`).
function staticOnly() {
  return new URLSearchParams(location.search).has("static");
}

// --- formatting --------------------------------------------------------------------------------

function count(n) {
  return Number(n ?? 0).toLocaleString("en-US");
}

// --- connection --------------------------------------------------------------------------------

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws`;
}

function start() {
  let token;
  try {
    token = parseToken(location.hash);
  } catch (err) {
    const text = err instanceof TokenError ? err.message : `bad access token: ${err.message}`;
    setState("error", "no token");
    banner(text);
    rejectReady(new Error(text));
    log(text, true);
    return;
  }
  claimTabId().then((tabId) => {
    api.host = pageHostName(tabId);
    connect(token, tabHostKey(profileKey(), fromHex(tabId)));
  });
}

// The node refuses a hello whose time is far from its own clock (replay protection), so a
// browser with a wrong clock would be told "access refused". The HTTP Date header of a HEAD
// request gives the node's time to the second: when the two differ by more than a few
// seconds, the hello carries the node's time instead.
let clockOffset = null;

async function nodeClockOffset() {
  try {
    const before = Date.now();
    const response = await fetch(location.pathname || "/", { method: "HEAD", cache: "no-store" });
    const after = Date.now();
    const date = Date.parse(response.headers.get("Date") ?? "");
    if (Number.isNaN(date)) return 0;
    const offset = date + 500 - (before + after) / 2; // Date is truncated to the second
    if (Math.abs(offset) < 5000) return 0;
    const seconds = Math.abs(Math.round(offset / 1000));
    const way = offset > 0 ? "behind" : "ahead of";
    log(`this computer's clock is ${seconds} s ${way} the node's: using the node's time`, true);
    return Math.round(offset);
  } catch {
    return 0;
  }
}

async function connect(token, key) {
  setState("connecting", "connecting…");
  if (clockOffset === null) clockOffset = await nodeClockOffset();
  session = new Session({
    url: wsUrl(),
    token,
    hostKey: key,
    hostName: api.host,
    now: () => Date.now() + clockOffset,
    dhcp: staticOnly() ? "off" : "auto",
    onWelcome: (msg, newHost) => joined(msg, newHost),
    onAddress: (address) => addressed(address),
    onStatus: (msg) => status(msg),
    onClose: (info) => closed(info, token, key),
    onEvent: (kind, text) => log(kind === "conflict" ? `address conflict: ${text}` : text, true),
  });
  lastCounters = null;
  session.open();
}

function joined(msg, newHost) {
  welcome = msg;
  host = newHost;
  everConnected = true;
  retries = 0;
  api.ip6 = host.ip6 ? formatIp6(host.ip6) : null;
  api.mac = formatMac(host.mac);
  setState("connected", "connected");
  banner(null);
  $("net-name").textContent = msg.name || "(unnamed network)";
  $("net-cidr").textContent = [msg.cidr, msg.cidr6].filter(Boolean).join("  ·  ");
  document.title = `atenet · ${msg.name || msg.cidr}`;
  $("self-ip6").textContent = api.ip6 ? `${api.ip6}/64` : "—";
  $("self-mac").textContent = api.mac;
  $("self-host").textContent = api.host || "—";
  $("self-node").textContent = msg.node ?? "—";
  if (!host.ip4) {
    $("self-ip4").textContent = "— (asking DHCP…)";
    $("self-ip4-source").textContent = "DHCP: waiting for the gateway";
  }
  log(`joined ${msg.name || "the network"} (${api.mac}) via node ${msg.node ?? "?"}`);
}

function duration(secs) {
  if (secs >= 0xffffffff) return "forever";
  if (secs >= 3600) return `${Number((secs / 3600).toFixed(1))} h`;
  if (secs >= 120) return `${Math.round(secs / 60)} min`;
  return `${secs} s`;
}

const SOURCE_TEXT = {
  dhcp: "DHCP",
  fallback: "static (no DHCP answer: the hashed address)",
  static: "static (hashed address)",
  none: "none: the DHCP lease ended, asking again",
};

// The IPv4 address is set, changed, renewed or lost (Session.onAddress).
function addressed(address) {
  const { source, lease } = address;
  const before = api.ip4;
  api.ip4 = address.ip4 ? formatIp4(address.ip4) : null;
  api.source = source;
  api.gateway = address.gateway ? formatIp4(address.gateway) : null;
  api.lease = lease
    ? { secs: lease.leaseSecs, t1: lease.t1Secs, t2: lease.t2Secs, dns: lease.dns.map(formatIp4), mtu: lease.mtu, server: formatIp4(lease.server) }
    : null;
  $("self-ip4").textContent = api.ip4 ? `${api.ip4}/${address.prefix}` : "— (asking DHCP…)";
  let from = SOURCE_TEXT[source] ?? source;
  if (lease) from += `, lease ${duration(lease.leaseSecs)} from ${api.lease.server}`;
  $("self-ip4-source").textContent = from;
  $("self-gw").textContent = api.gateway ?? "—";
  if (api.gateway && !$("ping-addr").value) $("ping-addr").placeholder = `e.g. ${api.gateway} (the gateway)`;
  $("ping-gw").disabled = !api.gateway || !api.ip4;
  if (source === "dhcp" && lease?.renewed && before === api.ip4) {
    log(`DHCP lease of ${api.ip4} renewed (${duration(lease.leaseSecs)})`);
  } else if (source === "dhcp") {
    log(`IPv4 ${api.ip4} by DHCP (lease ${duration(lease.leaseSecs)}), gateway ${api.gateway ?? "none"}`);
  } else if (source === "fallback") {
    log(`no DHCP answer: using the hashed address ${api.ip4}; still asking`, true);
  } else if (source === "static") {
    log(`IPv4 ${api.ip4} (hashed address${staticOnly() ? ", ?static" : ""})`);
  } else {
    log(`the DHCP lease of ${before ?? "the address"} ended: no IPv4 address until a server answers`, true);
  }
  if (api.ip4) {
    resolveReady({
      ip4: api.ip4,
      ip6: api.ip6,
      mac: api.mac,
      name: welcome?.name,
      cidr: welcome?.cidr,
      node: welcome?.node,
      source,
      gateway: api.gateway,
    });
  }
}

// The status cards say why they are empty instead of "waiting for status…" forever.
function noStatus(text) {
  const list = $("members");
  const li = document.createElement("li");
  li.className = "muted";
  li.textContent = text;
  list.replaceChildren(li);
  $("members-count").textContent = "";
  const body = $("ports").tBodies[0];
  body.replaceChildren();
  const td = body.insertRow().insertCell();
  td.colSpan = PORT_COLUMNS;
  td.className = "muted";
  td.textContent = text;
  $("ports-count").textContent = "";
}

function closed(info, token, key) {
  host = null;
  if (info.refused) {
    // Final: the node refuses this token (revoked, expired, unknown or a wrong secret), so
    // asking again would only be refused again.
    setState("refused", "refused");
    banner(`${REFUSED}; ask the network's owner for a new link`);
    log(REFUSED, true);
    noStatus(`not connected: ${REFUSED}`);
    rejectReady(new Error(REFUSED));
    return;
  }
  const wait = RETRY_MS[Math.min(retries, RETRY_MS.length - 1)];
  retries++;
  const why = info.reason ? `: ${info.reason}` : info.code && info.code !== 1006 ? ` (code ${info.code})` : "";
  const what = info.welcomed ? "connection to the node lost" : "could not connect to the node";
  setState("error", "disconnected");
  banner(`${what}${why} — retrying in ${Math.round(wait / 1000)} s (attempt ${retries})`);
  log(`${what}${why}; retrying in ${Math.round(wait / 1000)} s`, true);
  noStatus(`not connected: ${what}, retrying`);
  if (!everConnected && retries > RETRY_MS.length) {
    rejectReady(new Error(`${what}${why}`));
  }
  setTimeout(() => connect(token, key), wait);
}

// --- status: members and ports -----------------------------------------------------------------

function status(msg) {
  myPort = msg.port ?? myPort;
  $("self-port").textContent = myPort ?? "—";
  const members = Array.isArray(msg.members) ? msg.members : [];
  const ports = Array.isArray(msg.ports) ? msg.ports : [];
  renderMembers(members);
  renderPorts(ports);
  // The node's MAC table for this network (docs/learning.md): how many hosts it located.
  $("fdb-size").textContent = Number.isFinite(msg.fdb) ? `· ${count(msg.fdb)} MACs learned` : "";
  const mine = ports.find((p) => p.name === myPort);
  if (mine) {
    const drops = Number(mine.drops ?? 0);
    if (lastPortDrops !== null && drops > lastPortDrops) dropsThisSecond += drops - lastPortDrops;
    lastPortDrops = drops;
    totalDrops = drops;
  }
}

function renderMembers(members) {
  const list = $("members");
  list.replaceChildren();
  $("members-count").textContent = members.length ? `(${members.length})` : "";
  if (!members.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "no member nodes listed";
    list.append(li);
    return;
  }
  for (const member of members) {
    const li = document.createElement("li");
    const id = document.createElement("code");
    id.textContent = member.node_id ?? "?";
    li.append(id);
    if (welcome && member.node_id === welcome.node) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "this page's node";
      li.append(tag);
    }
    const endpoints = Array.isArray(member.endpoints) ? member.endpoints.join(", ") : "";
    if (endpoints) {
      const div = document.createElement("div");
      div.className = "muted small mono";
      div.textContent = endpoints;
      li.append(div);
    }
    list.append(li);
  }
}

const PORT_COLUMNS = 9;

// A port's name: the host name its client sent, else its key's label, else the port's own name.
function hostCell(td, port) {
  const name = String(port.host || port.label || port.name || "?");
  const main = document.createElement("span");
  main.className = "host-name";
  main.textContent = name;
  td.append(main);
  if (port.name === myPort) {
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = "(this page)";
    td.append(" ", tag);
  }
  const details = [port.host && port.label ? `key ${port.label}` : "", port.name !== name ? port.name : ""];
  const extra = details.filter(Boolean).join(" · ");
  if (extra) {
    const div = document.createElement("div");
    div.className = "muted small mono";
    div.textContent = extra;
    td.append(div);
  }
}

// IPv4 (derived by the node from the port's MAC), then IPv6 and the MAC on a small line.
function addressCell(td, port) {
  td.className = "mono";
  td.textContent = port.ipv4 || (port.mac ? "" : "— (no frame yet)");
  const extra = [port.ipv6, port.mac].filter(Boolean).join(" · ");
  if (extra) {
    const div = document.createElement("div");
    div.className = "muted small mono";
    div.textContent = extra;
    td.append(div);
  }
}

function renderPorts(ports) {
  const body = $("ports").tBodies[0];
  body.replaceChildren();
  $("ports-count").textContent = ports.length ? `(${ports.length})` : "";
  if (!ports.length) {
    const tr = body.insertRow();
    const td = tr.insertCell();
    td.colSpan = PORT_COLUMNS;
    td.className = "muted";
    td.textContent = "no ports";
    return;
  }
  for (const port of ports) {
    const tr = body.insertRow();
    if (port.name === myPort) tr.className = "mine";
    hostCell(tr.insertCell(), port);
    addressCell(tr.insertCell(), port);
    const cells = [
      port.kind,
      count(port.frames_in),
      count(port.frames_out),
      si(Number(port.bytes_in ?? 0), "B"),
      si(Number(port.bytes_out ?? 0), "B"),
      count(port.drops),
      count(port.learned ?? 0),
    ];
    cells.forEach((text, i) => {
      const td = tr.insertCell();
      td.textContent = text ?? "";
      if (i >= 1) td.className = "num";
      if (i === 5 && Number(port.drops) > 0) td.className = "num drops-up";
    });
  }
}

// --- traffic chart -----------------------------------------------------------------------------

function sample() {
  const c = session ? { ...session.counters } : null;
  let point = { framesIn: 0, framesOut: 0, bytesIn: 0, bytesOut: 0, drops: dropsThisSecond };
  if (c && lastCounters && session.counters === lastCounters.ref) {
    point = {
      framesIn: c.framesIn - lastCounters.framesIn,
      framesOut: c.framesOut - lastCounters.framesOut,
      bytesIn: c.bytesIn - lastCounters.bytesIn,
      bytesOut: c.bytesOut - lastCounters.bytesOut,
      drops: dropsThisSecond,
    };
  }
  lastCounters = c ? { ...c, ref: session.counters } : null;
  dropsThisSecond = 0;
  samples.push(point);
  while (samples.length > HISTORY) samples.shift();
  const last = samples[samples.length - 1];
  const suffix = unit === "bytes" ? "B/s" : "fr/s";
  $("rate-in").textContent = unit === "bytes" ? si(last.bytesIn, suffix) : `${count(last.framesIn)} ${suffix}`;
  $("rate-out").textContent = unit === "bytes" ? si(last.bytesOut, suffix) : `${count(last.framesOut)} ${suffix}`;
  $("drops").textContent = `${count(totalDrops)} total`;
  draw();
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function draw() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const inKey = unit === "bytes" ? "bytesIn" : "framesIn";
  const outKey = unit === "bytes" ? "bytesOut" : "framesOut";
  const max = Math.max(0, ...samples.map((s) => Math.max(s[inKey] || 0, s[outKey] || 0)));
  const { scale, ticks } = chartScale(max, unit);
  const left = 58;
  const top = 8;
  const plotW = width - left - 6;
  const plotH = height - top - 18;
  const x = (i) => left + (plotW * (i + HISTORY - samples.length)) / (HISTORY - 1);
  const y = (v) => top + plotH - (plotH * (Number(v) || 0)) / scale; // NaN/undefined: baseline

  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = cssVar("--muted");
  ctx.strokeStyle = cssVar("--line");
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const tick of ticks) {
    const gy = Math.round(y(tick.value)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(left, gy);
    ctx.lineTo(left + plotW, gy);
    ctx.stroke();
    ctx.fillText(tick.label, left - 6, gy);
  }
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  ctx.fillText("−60 s", left, height - 3);
  ctx.textAlign = "right";
  ctx.fillText("now", left + plotW, height - 3);

  // Drops: red bars from the bottom, on their own scale (any drop is visible).
  const maxDrops = Math.max(1, ...samples.map((s) => s.drops));
  ctx.fillStyle = cssVar("--drop");
  samples.forEach((s, i) => {
    if (!s.drops) return;
    const h = Math.max(3, (plotH * 0.35 * s.drops) / maxDrops);
    ctx.fillRect(x(i) - 2, top + plotH - h, 4, h);
  });

  // In: a filled area; out: a line on top (equal rates, e.g. during a ping, stay readable).
  if (samples.length) {
    ctx.beginPath();
    ctx.moveTo(x(0), y(0));
    samples.forEach((s, i) => ctx.lineTo(x(i), y(s[inKey])));
    ctx.lineTo(x(samples.length - 1), y(0));
    ctx.closePath();
    ctx.globalAlpha = 0.22;
    ctx.fillStyle = cssVar("--in");
    ctx.fill();
    ctx.globalAlpha = 1;
  }
  for (const [key, color, dash] of [
    [inKey, cssVar("--in"), []],
    [outKey, cssVar("--out"), [5, 3]],
  ]) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.setLineDash(dash);
    ctx.beginPath();
    samples.forEach((s, i) => (i ? ctx.lineTo(x(i), y(s[key])) : ctx.moveTo(x(i), y(s[key]))));
    ctx.stroke();
  }
  ctx.setLineDash([]);
}

// --- ping --------------------------------------------------------------------------------------

function pingLine(text, className = "") {
  const li = document.createElement("li");
  li.textContent = text;
  if (className) li.className = className;
  const list = $("ping-out");
  list.append(li);
  while (list.children.length > 200) list.firstChild.remove();
  list.scrollTop = list.scrollHeight;
}

async function runPing(address, n) {
  await api.ready;
  if (!host) throw new Error("not connected");
  const target = address.trim();
  pingLine(`PING ${target}: ${n} request${n === 1 ? "" : "s"}`);
  let results;
  let unresolvedSeen = false;
  try {
    results = await host.ping(target, {
      count: n,
      onReply: ({ seq, rtt, unresolved }) => {
        if (unresolved) unresolvedSeen = true;
        else if (rtt === null) pingLine(`seq=${seq} timeout`, "lost");
        else pingLine(`reply from ${target}: seq=${seq} time=${rtt.toFixed(1)} ms`);
      },
    });
  } catch (err) {
    pingLine(err.message, "lost");
    throw err;
  }
  if (unresolvedSeen) {
    const how = target.includes(":") ? "neighbour solicitation" : "ARP";
    pingLine(`${target}: no host answered ${how}; nothing sent`, "summary lost");
    return results;
  }
  const got = results.filter((r) => r !== null);
  const loss = Math.round((100 * (results.length - got.length)) / results.length);
  let summary = `${target}: ${results.length} sent, ${got.length} received, ${loss}% loss`;
  if (got.length) {
    const min = Math.min(...got);
    const max = Math.max(...got);
    const avg = got.reduce((a, b) => a + b, 0) / got.length;
    summary += `, rtt min/avg/max ${min.toFixed(1)}/${avg.toFixed(1)}/${max.toFixed(1)} ms`;
  }
  pingLine(summary, got.length ? "summary" : "summary lost");
  return results;
}

function wirePingForm() {
  const form = $("ping-form");
  const button = $("ping-go");
  $("ping-gw").addEventListener("click", () => {
    if (!api.gateway) return;
    $("ping-addr").value = api.gateway;
    form.requestSubmit();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const address = $("ping-addr").value.trim();
    const n = Math.max(1, Math.min(100, Number($("ping-count").value) || 4));
    if (!address) return;
    button.disabled = true;
    try {
      await runPing(address, n);
    } catch {
      // already shown in the result lines
    } finally {
      button.disabled = false;
    }
  });
}

// --- reach the LAN (mio) -------------------------------------------------------------------------

// One mio session for the page's tools, opened on first use (a port of its own on the switch,
// with its own address) and again after it closed.
let mio = null;

function mioSession() {
  if (!mio) {
    const token = parseToken(location.hash);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    mio = openMio(`${scheme}://${location.host}`, token, authKey(token.secret), {
      now: () => Date.now() + (clockOffset ?? 0),
      host: api.host ? cleanHostName(`${api.host}-mio`) : "",
    }).then(
      (session) => {
        session.ws.addEventListener("close", () => {
          mio = null;
        });
        const where = [session.welcome.address, session.welcome.address6].filter(Boolean).join(", ");
        log(`mio session open${where ? ` as ${where}` : ""}: the node's stack carries the page's TCP`);
        return session;
      },
      (err) => {
        mio = null;
        throw err;
      },
    );
  }
  return mio;
}

function lanStatus(text, kind = "") {
  const el = $("lan-status");
  el.textContent = text;
  el.className = `lan-status ${kind}`.trim();
}

function lanBody(text) {
  const el = $("lan-body");
  el.textContent = text ?? ""; // text, never HTML: what a LAN host sends cannot script the page
  el.hidden = text === null;
}

function from(result) {
  return result.from?.address ? ` from ${result.from.address}` : "";
}

async function runLan(kind, target, size) {
  const buttons = [$("fetch-go"), $("echo-go")];
  for (const b of buttons) b.disabled = true;
  lanBody(null);
  lanStatus(kind === "fetch" ? `GET ${target} …` : `echo test with ${target} …`);
  try {
    let session;
    try {
      session = await mioSession();
    } catch (err) {
      throw new LanError(`no mio session with the node: ${err.message}`);
    }
    if (kind === "fetch") {
      const r = await fetchOverMio(session, target);
      const type = r.headers.find(([k]) => k === "content-type")?.[1] ?? "no content type";
      const cut = r.truncated ? ` (first ${r.text.length} characters shown)` : "";
      lanStatus(
        `HTTP ${r.status} ${r.reason} · ${r.bytes.toLocaleString("en-US")} bytes · ${type} · ${r.ms.toFixed(0)} ms${from(r)}${cut}`,
        r.status < 400 ? "good" : "bad",
      );
      lanBody(r.text);
      return { status: r.status, reason: r.reason, headers: r.headers, bytes: r.bytes, text: r.text, from: r.from };
    }
    const r = await echoOverMio(session, target, size);
    if (r.same) {
      lanStatus(`echo OK: ${r.sent.toLocaleString("en-US")} bytes sent, the same bytes back in ${r.ms.toFixed(0)} ms${from(r)}`, "good");
    } else {
      lanStatus(`echo MISMATCH: ${r.sent} bytes sent, ${r.received} came back, not the same bytes${from(r)}`, "bad");
    }
    return r;
  } catch (err) {
    const text = err instanceof LanError ? err.message : describe(err);
    lanStatus(`${kind === "fetch" ? "fetch" : "echo"} failed: ${text}`, "bad");
    throw new Error(text);
  } finally {
    for (const b of buttons) b.disabled = false;
  }
}

function wireLan() {
  $("fetch-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runLan("fetch", $("fetch-url").value).catch(() => {}); // shown in the card
  });
  $("echo-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runLan("echo", $("echo-target").value, Number($("echo-size").value) || 65536).catch(() => {});
  });
}

function wireToggle() {
  for (const button of document.querySelectorAll(".toggle button")) {
    button.addEventListener("click", () => {
      unit = button.dataset.unit;
      for (const b of document.querySelectorAll(".toggle button")) b.classList.toggle("on", b === button);
      draw();
    });
  }
}

// --- go ----------------------------------------------------------------------------------------

window.addEventListener("hashchange", () => location.reload());
window.addEventListener("resize", () => draw());
wirePingForm();
wireLan();
wireToggle();
setInterval(sample, 1000);
start();
draw();
