import { randomBytes } from "node:crypto";

/**
 * cephx secrets in the form Ceph prints and reads (`ceph-authtool --gen-print-key`, the `key = ...` line of a
 * keyring, `ceph auth get-key`): base64 of a 28-byte CryptoKey encoding, all integers little-endian:
 *
 *   u16 type (1 = AES) | u32 created, seconds | u32 created, nanoseconds | u16 secret length (16) | 16 bytes
 *
 * The controller makes one per allowed host of an RBD export; the serving agent imports it (`ceph auth
 * import`) and the allowed host reads it with GetExportCredentials. A key is a secret: never log it.
 */

const KEY_TYPE_AES = 1;
const SECRET_BYTES = 16;
const ENCODED_BYTES = 2 + 4 + 4 + 2 + SECRET_BYTES;
/** 28 bytes in base64: 40 characters, the last two `=`. */
const CEPHX_KEY_TEXT = /^[A-Za-z0-9+/]{38}==$/;

/** A new random cephx key, created at `now` (default: the current time). */
export function newCephxKey(now: Date = new Date()): string {
  const ms = now.getTime();
  if (!Number.isFinite(ms) || ms < 0 || ms >= 2 ** 32 * 1000) {
    throw new RangeError(`a cephx key's creation time must fit in 32-bit seconds: ${now.toISOString?.()}`);
  }
  const buf = Buffer.alloc(ENCODED_BYTES);
  buf.writeUInt16LE(KEY_TYPE_AES, 0);
  buf.writeUInt32LE(Math.floor(ms / 1000), 2);
  buf.writeUInt32LE((ms % 1000) * 1_000_000, 6);
  buf.writeUInt16LE(SECRET_BYTES, 10);
  randomBytes(SECRET_BYTES).copy(buf, 12);
  return buf.toString("base64");
}

/** Whether `s` is a cephx key of that form: AES, a 16-byte secret, nanoseconds below one second. */
export function isCephxKey(s: unknown): s is string {
  if (typeof s !== "string" || !CEPHX_KEY_TEXT.test(s)) return false;
  const buf = Buffer.from(s, "base64");
  // Non-canonical base64 (stray low bits in the last character) decodes to the same bytes: refuse it, so that
  // one key has one spelling and keys can be compared as strings.
  if (buf.length !== ENCODED_BYTES || buf.toString("base64") !== s) return false;
  return (
    buf.readUInt16LE(0) === KEY_TYPE_AES &&
    buf.readUInt32LE(6) < 1_000_000_000 &&
    buf.readUInt16LE(10) === SECRET_BYTES
  );
}
