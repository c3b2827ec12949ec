import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { isCephxKey, newCephxKey } from "./cephx.js";

const authtool = spawnSync("ceph-authtool", ["--help"], { stdio: "ignore" });
const haveAuthtool = authtool.error === undefined;

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
/** The same bytes spelled with stray low bits in the last character (which base64 decoders ignore). */
function nonCanonical(key: string): string {
  const last = B64.indexOf(key[37]!);
  return `${key.slice(0, 37)}${B64[last | 1]}==`;
}

describe("cephx keys", () => {
  it("encodes type 1, the creation time, length 16 and 16 random bytes, little-endian", () => {
    const at = new Date(Date.UTC(2026, 11, 4, 1, 2, 3, 456));
    const key = newCephxKey(at);
    expect(key).toMatch(/^[A-Za-z0-9+/]{38}==$/);
    const b = Buffer.from(key, "base64");
    expect(b.length).toBe(28);
    expect(b.readUInt16LE(0)).toBe(1);
    expect(b.readUInt32LE(2)).toBe(Math.floor(at.getTime() / 1000));
    expect(b.readUInt32LE(6)).toBe(456_000_000);
    expect(b.readUInt16LE(10)).toBe(16);
    expect(isCephxKey(key)).toBe(true);
  });

  it("makes a different secret every time", () => {
    const keys = new Set(Array.from({ length: 1000 }, () => newCephxKey()));
    expect(keys.size).toBe(1000);
    const secrets = new Set([...keys].map((k) => Buffer.from(k, "base64").subarray(12).toString("hex")));
    expect(secrets.size).toBe(1000);
  });

  it("refuses what is not a key of that form", () => {
    const good = newCephxKey();
    const bytes = Buffer.from(good, "base64");
    const patched = (offset: number, value: number) => {
      const b = Buffer.from(bytes);
      b.writeUInt16LE(value, offset);
      return b.toString("base64");
    };
    for (const bad of [
      "",
      good.slice(0, -2),
      `${good}=`,
      ` ${good}`,
      good.replace(/==$/, "=A"),
      patched(0, 2), // type
      patched(10, 32), // secret length
      Buffer.concat([bytes, Buffer.alloc(3)]).toString("base64"), // too long
      nonCanonical(good),
      undefined,
      42,
    ]) {
      if (bad === good) continue;
      expect(isCephxKey(bad), String(bad)).toBe(false);
    }
    // Nanoseconds must stay below one second.
    const ns = Buffer.from(bytes);
    ns.writeUInt32LE(1_000_000_000, 6);
    expect(isCephxKey(ns.toString("base64"))).toBe(false);
  });

  it("refuses a creation time that does not fit the encoding", () => {
    expect(() => newCephxKey(new Date(-1))).toThrow(RangeError);
    expect(() => newCephxKey(new Date(Number.NaN))).toThrow(RangeError);
  });
});

describe.skipIf(!haveAuthtool)(
  haveAuthtool
    ? "cephx keys against Ceph's own parser (ceph-authtool)"
    : "cephx keys against ceph-authtool: SKIPPED, ceph-authtool is not installed (apt-get install ceph-common)",
  () => {
    const dir = mkdtempSync(join(tmpdir(), "stowage-cephx-"));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));
    /** Lists a keyring holding `key` (from a file, so the key is in no argv); throws when Ceph cannot decode it. */
    const listKeyring = (key: string) => {
      const file = join(dir, "keyring");
      writeFileSync(file, `[client.stowage.test]\n\tkey = ${key}\n`, { mode: 0o600 });
      return execFileSync("ceph-authtool", ["-l", file], { encoding: "utf8", stdio: "pipe" });
    };

    it("reads our keys as keys", () => {
      for (let i = 0; i < 5; i++) {
        const key = newCephxKey();
        expect(listKeyring(key)).toContain(`key = ${key}`);
      }
    });

    it("refuses a key of another type, as isCephxKey does", () => {
      const b = Buffer.from(newCephxKey(), "base64");
      b.writeUInt16LE(2, 0);
      expect(isCephxKey(b.toString("base64"))).toBe(false);
      expect(() => listKeyring(b.toString("base64"))).toThrow();
    });

    it("accepts the keys ceph-authtool makes", () => {
      for (let i = 0; i < 5; i++) {
        const key = execFileSync("ceph-authtool", ["--gen-print-key"], { encoding: "utf8" }).trim();
        expect(isCephxKey(key), "a key from ceph-authtool --gen-print-key").toBe(true);
      }
    });
  },
);
