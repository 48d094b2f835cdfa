// Two tabs of one browser profile are two hosts; the hello names the page; the chart's axis
// exists with no traffic. Unit tests of src/atenet/web/net.js (tabHostKey, cleanHostName,
// helloMessage's host) and src/atenet/web/chart.js. With ATENET_WEB_VECTORS set (through
// tests/test_web_js.py), per-tab MACs are cross-checked against atenet.addressing.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { chartScale, MIN_SCALE, niceCeil, si } from "../../src/atenet/web/chart.js";
import * as net from "../../src/atenet/web/net.js";

const { fromHex, toHex } = net;
const vectorsPath = process.env.ATENET_WEB_VECTORS;
const vectors = vectorsPath ? JSON.parse(readFileSync(vectorsPath, "utf8")) : null;
const noVectors = vectors ? false : "ATENET_WEB_VECTORS not set (run through tests/test_web_js.py)";

const NETWORK = fromHex("00112233445566778899aabbccddeeff");
const PROFILE = fromHex("0f".repeat(16));

test("two tabs of one profile get two MACs; a reloaded tab keeps its own", () => {
  const tabA = fromHex("a1a2a3a4a5a6a7a8");
  const tabB = fromHex("b1b2b3b4b5b6b7b8");
  const macA = net.stableMac(NETWORK, net.tabHostKey(PROFILE, tabA));
  const macB = net.stableMac(NETWORK, net.tabHostKey(PROFILE, tabB));
  assert.notEqual(toHex(macA), toHex(macB));
  // The same tab after a reload: same profile key, same tab id (sessionStorage) → same MAC.
  const again = net.stableMac(NETWORK, net.tabHostKey(fromHex("0f".repeat(16)), fromHex("a1a2a3a4a5a6a7a8")));
  assert.equal(toHex(again), toHex(macA));
  // Another profile with the same tab id is another host too.
  const other = net.stableMac(NETWORK, net.tabHostKey(fromHex("0e".repeat(16)), tabA));
  assert.notEqual(toHex(other), toHex(macA));
  assert.equal(toHex(net.tabHostKey(PROFILE, tabA)), "0f".repeat(16) + "a1a2a3a4a5a6a7a8");
  for (const mac of [macA, macB]) assert.equal(mac[0] & 0x03, 0x02); // local, unicast
});

test("per-tab MACs and addresses match atenet.addressing", { skip: noVectors }, () => {
  assert.ok(vectors.tabs.length >= 2);
  for (const v of vectors.tabs) {
    const networkId = fromHex(v.network_id);
    const mac = net.stableMac(networkId, net.tabHostKey(fromHex(v.profile), fromHex(v.tab)));
    assert.equal(toHex(mac), v.mac);
    assert.equal(net.formatIp4(net.ipv4For(networkId, mac, v.cidr)), v.ip4);
  }
});

test("the hello carries a cleaned host name only when there is one", () => {
  assert.equal(net.cleanHostName("kiosk-1"), "kiosk-1");
  assert.equal(net.cleanHostName("a\nb\tc\u200bd e"), "abcd e");
  assert.equal(net.cleanHostName("é".repeat(70)), "é".repeat(64));
  assert.equal(net.cleanHostName(undefined), "");
  const token = { networkHex: "00".repeat(16), keyId: 3 };
  const key = new Uint8Array(32);
  const withName = net.helloMessage(token, key, 1, new Uint8Array(16), "kiosk-1");
  const without = net.helloMessage(token, key, 1, new Uint8Array(16));
  assert.equal(withName.host, "kiosk-1");
  assert.equal("host" in without, false);
  assert.equal(withName.mac, without.mac); // the name is not part of the proof
});

test("chart axis with no traffic: a 0 baseline and a small fixed scale, distinct labels", () => {
  for (const idle of [0, -1, NaN, undefined, null, Infinity]) {
    const bytes = chartScale(idle, "bytes");
    assert.equal(bytes.scale, MIN_SCALE.bytes, String(idle));
    assert.deepEqual(
      bytes.ticks.map((t) => t.label),
      ["0 B/s", "250 B/s", "500 B/s", "750 B/s", "1 kB/s"],
    );
    const frames = chartScale(idle, "frames");
    assert.equal(frames.scale, MIN_SCALE.frames);
    assert.deepEqual(
      frames.ticks.map((t) => t.label),
      ["0 fr/s", "2.5 fr/s", "5 fr/s", "7.5 fr/s", "10 fr/s"],
    );
    for (const scale of [bytes, frames]) {
      assert.equal(scale.ticks[0].value, 0);
      assert.ok(scale.ticks.every((t) => Number.isFinite(t.value) && !t.label.includes("NaN")));
    }
  }
});

test("chart axis with traffic: the top is a nice number at or above the peak", () => {
  assert.equal(chartScale(1, "bytes").scale, 1000); // a trickle is drawn against 1 kB/s
  assert.equal(chartScale(1234, "bytes").scale, 2000);
  assert.equal(chartScale(2_600_000, "bytes").scale, 5_000_000);
  assert.equal(chartScale(42, "frames").scale, 50);
  for (const peak of [1001, 7777, 123456, 9.9e9]) {
    const { scale, ticks } = chartScale(peak, "bytes");
    assert.ok(scale >= peak && scale < peak * 2.6, `${peak} → ${scale}`);
    assert.equal(new Set(ticks.map((t) => t.label)).size, ticks.length, ticks.map((t) => t.label).join());
  }
  assert.equal(niceCeil(3), 5);
  assert.equal(si(1500, "B/s"), "1.5 kB/s");
  assert.equal(si(2000, "B/s"), "2 kB/s");
});
