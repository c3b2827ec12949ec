import { randomBytes } from "node:crypto";

export type IdPrefix = "vol" | "op" | "snap" | "exp" | "mig" | "req";

const ID_PATTERN = /^(vol|op|snap|exp|mig|req)-[0-9a-f]{32}$/;

/**
 * A new id: a prefix and a UUIDv7 in hex (time-ordered, so ids sort by creation). Ids name artefacts on hosts,
 * so they only ever contain [a-z0-9-].
 */
export function newId(prefix: IdPrefix, now = Date.now()): string {
  const bytes = randomBytes(16);
  const ms = BigInt(now);
  for (let i = 0; i < 6; i++) bytes[i] = Number((ms >> BigInt(8 * (5 - i))) & 0xffn);
  bytes[6] = (bytes[6]! & 0x0f) | 0x70;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  return `${prefix}-${bytes.toString("hex")}`;
}

export function isId(value: string, prefix?: IdPrefix): boolean {
  const m = ID_PATTERN.exec(value);
  return m !== null && (prefix === undefined || m[1] === prefix);
}
