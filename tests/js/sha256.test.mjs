// Known-answer tests of src/atenet/web/sha256.js: FIPS 180-4 examples, RFC 4231 (HMAC),
// RFC 5869 (HKDF), and random inputs cross-checked against Node's own crypto.
import assert from "node:assert/strict";
import { createHash, createHmac, hkdfSync, randomBytes } from "node:crypto";
import { test } from "node:test";

import { fromHex, hkdfSha256, hmacSha256, sha256, toHex } from "../../src/atenet/web/sha256.js";

test("SHA-256 of the FIPS 180-4 examples", () => {
  assert.equal(toHex(sha256("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  assert.equal(toHex(sha256("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  assert.equal(
    toHex(sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
  );
  assert.equal(
    toHex(sha256("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu")),
    "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
  );
  assert.equal(toHex(sha256("a".repeat(1000000))), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
});

test("SHA-256 matches node:crypto on every length around the block boundaries", () => {
  for (let len = 0; len < 300; len++) {
    const data = randomBytes(len);
    assert.equal(toHex(sha256(data)), createHash("sha256").update(data).digest("hex"), `length ${len}`);
  }
});

test("HMAC-SHA256 of RFC 4231 test cases", () => {
  const cases = [
    ["0b".repeat(20), toHex(new TextEncoder().encode("Hi There")), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"],
    [toHex(new TextEncoder().encode("Jefe")), toHex(new TextEncoder().encode("what do ya want for nothing?")), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"],
    ["aa".repeat(20), "dd".repeat(50), "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"],
    ["0102030405060708090a0b0c0d0e0f10111213141516171819", "cd".repeat(50), "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"],
    [
      "aa".repeat(131),
      toHex(new TextEncoder().encode("Test Using Larger Than Block-Size Key - Hash Key First")),
      "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ],
  ];
  for (const [key, data, mac] of cases) assert.equal(toHex(hmacSha256(fromHex(key), fromHex(data))), mac);
});

test("HMAC-SHA256 matches node:crypto for random keys and messages", () => {
  for (let i = 0; i < 100; i++) {
    const key = randomBytes(i % 90);
    const msg = randomBytes(i * 3);
    assert.equal(toHex(hmacSha256(key, msg)), createHmac("sha256", key).update(msg).digest("hex"));
  }
});

test("HKDF-SHA256 of RFC 5869 test cases 1-3", () => {
  assert.equal(
    toHex(hkdfSha256(fromHex("0b".repeat(22)), fromHex("000102030405060708090a0b0c"), fromHex("f0f1f2f3f4f5f6f7f8f9"), 42)),
    "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
  );
  const range = (from, to) => Uint8Array.from({ length: to - from }, (_, i) => from + i);
  assert.equal(
    toHex(hkdfSha256(range(0x00, 0x50), range(0x60, 0xb0), range(0xb0, 0x100), 82)),
    "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09" +
      "da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87",
  );
  // Case 3: no salt, no info — the same form as the page's auth key.
  assert.equal(
    toHex(hkdfSha256(fromHex("0b".repeat(22)), null, new Uint8Array(0), 42)),
    "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
  );
});

test("HKDF-SHA256 matches node:crypto (salt none = 32 zero bytes)", () => {
  for (let i = 0; i < 20; i++) {
    const ikm = randomBytes(32);
    const info = randomBytes(i * 5);
    const expected = Buffer.from(hkdfSync("sha256", ikm, Buffer.alloc(32), info, 32 + i)).toString("hex");
    assert.equal(toHex(hkdfSha256(ikm, null, info, 32 + i)), expected);
  }
});
