import {
  create,
  type DescField,
  type DescMessage,
  type DescService,
  type Message,
  ScalarType,
  toBinary,
} from "@bufbuild/protobuf";
import { type ReflectMessage, reflect } from "@bufbuild/protobuf/reflect";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import * as proto from "@stowage/proto";

/**
 * Fuzzing helpers: a seeded PRNG, every service of proto/stowage/v1 from the generated descriptors, plausible
 * requests built by reflection, and structure-aware mutations of them (at the message level with
 * @bufbuild/protobuf, and at the wire level by hand for what the library refuses to encode).
 */

/** The run's seed: STOWAGE_FUZZ_SEED replays a run; otherwise a new one, printed in the suite's name. */
export function fuzzSeed(): number {
  const env = process.env.STOWAGE_FUZZ_SEED;
  if (env !== undefined && env !== "") {
    const n = Number(env);
    if (!Number.isInteger(n)) throw new Error(`STOWAGE_FUZZ_SEED must be an integer, not ${env}`);
    return n >>> 0;
  }
  return (Date.now() ^ (process.pid << 8)) >>> 0;
}

/** How many cases of each kind per method: STOWAGE_FUZZ_CASES, else `dflt`. */
export function fuzzCases(dflt: number): number {
  const n = Number(process.env.STOWAGE_FUZZ_CASES ?? dflt);
  return Number.isInteger(n) && n > 0 ? n : dflt;
}

export interface Rng {
  next(): number;
  int(lo: number, hi: number): number;
  pick<T>(xs: readonly T[]): T;
  chance(p: number): boolean;
  bytes(n: number): Uint8Array;
}

/** mulberry32: small, fast and deterministic. */
export function rng(seed: number): Rng {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1));
  return {
    next,
    int,
    pick: (xs) => xs[int(0, xs.length - 1)]!,
    chance: (p) => next() < p,
    bytes(n) {
      const out = new Uint8Array(n);
      for (let i = 0; i < n; i++) out[i] = int(0, 255);
      return out;
    },
  };
}

/** A stable 32-bit hash of a string (per-method seeds, so one method's cases replay alone). */
export function hash32(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

export interface FuzzMethod {
  service: DescService;
  name: string;
  path: string;
  input: DescMessage;
  output: DescMessage;
  streaming: boolean;
}

/** Every method of every service the generated code exports: a new method is fuzzed without a change here. */
export function allMethods(): FuzzMethod[] {
  const out: FuzzMethod[] = [];
  for (const v of Object.values(proto)) {
    if (!v || typeof v !== "object" || (v as { kind?: string }).kind !== "service") continue;
    const service = v as DescService;
    for (const m of service.methods) {
      if (m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming")
        throw new Error(`${service.typeName}.${m.name}: client streaming is not fuzzed yet; add it here`);
      out.push({
        service,
        name: m.name,
        path: `/${service.typeName}/${m.name}`,
        input: m.input,
        output: m.output,
        streaming: m.methodKind === "server_streaming",
      });
    }
  }
  return out;
}

/** Strings a request may plausibly carry: what the suite seeded, and a few names that exist nowhere. */
export interface Dictionary {
  byField: Record<string, string[]>;
  any: string[];
}

const INT32 = [0, 1, -1, 7, 2147483647, -2147483648];
const UINT32 = [0, 1, 1023, 1024, 4294967295];
const INT64 = [0n, 1n, -1n, 9223372036854775807n, -9223372036854775808n, 1073741824n];
const UINT64 = [0n, 1n, 1073741824n, 18446744073709551615n, 9223372036854775808n, 512n];
const DOUBLE = [0, -1, 0.5, 1e308, -1e308, Number.NaN, Number.POSITIVE_INFINITY, -0];
const WEIRD_STRINGS = [
  "",
  " ",
  "../x",
  "a/b/c",
  "x\u0000y",
  "\u0000",
  "ü-é",
  "%00%2F",
  "a".repeat(300),
  "vol-",
  "vol-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
  "op-00000000000000000000000000000000",
  "-",
  ".",
  "*",
  ">",
  "stowage.cmd.x",
  "'; drop table volumes; --",
  "$(reboot)",
];

function isInt64(t: ScalarType) {
  return (
    t === ScalarType.INT64 ||
    t === ScalarType.SINT64 ||
    t === ScalarType.SFIXED64 ||
    t === ScalarType.UINT64 ||
    t === ScalarType.FIXED64
  );
}

function scalarValue(r: Rng, t: ScalarType, field: string, dict: Dictionary): unknown {
  switch (t) {
    case ScalarType.STRING: {
      const known = dict.byField[field];
      if (known && r.chance(0.75)) return r.pick(known);
      return r.chance(0.5) ? r.pick(dict.any) : r.pick(WEIRD_STRINGS);
    }
    case ScalarType.BYTES:
      return r.bytes(r.int(0, 16));
    case ScalarType.BOOL:
      return r.chance(0.5);
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return /percent|ratio/.test(field) && r.chance(0.6) ? r.int(0, 100) : r.pick(DOUBLE);
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return /size|bytes/.test(field) && r.chance(0.6) ? 1073741824n : r.pick(INT64);
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return /size|bytes/.test(field) && r.chance(0.6) ? 1073741824n : r.pick(UINT64);
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return r.pick(UINT32);
    default:
      return r.pick(INT32);
  }
}

function enumValue(r: Rng, f: { enum: { values: readonly { number: number }[] } }): number {
  return r.pick(f.enum.values).number;
}

/** A plausible request: each field set with some probability, from the dictionary, nested messages too. */
export function plausible<D extends DescMessage>(r: Rng, desc: D, dict: Dictionary, depth = 0): Message {
  const msg = create(desc);
  const m = reflect(desc, msg);
  for (const f of desc.fields) {
    if (!r.chance(depth === 0 ? 0.7 : 0.5)) continue;
    if (f.oneof && m.oneofCase(f.oneof) !== undefined) continue;
    try {
      fill(r, m, f, dict, depth);
    } catch {
      // A value the field does not take (reflection checks types): leave it unset.
    }
  }
  return msg;
}

function fill(r: Rng, m: ReflectMessage, f: DescField, dict: Dictionary, depth: number) {
  switch (f.fieldKind) {
    case "scalar":
      m.set(f, scalarValue(r, f.scalar, f.name, dict) as never);
      return;
    case "enum":
      m.set(f, enumValue(r, f) as never);
      return;
    case "message":
      if (depth > 6) return;
      m.set(f, reflect(f.message, plausible(r, f.message, dict, depth + 1) as never) as never);
      return;
    case "list": {
      const list = m.get(f);
      const n = r.int(1, 3);
      for (let i = 0; i < n; i++) {
        if (f.listKind === "scalar") list.add(scalarValue(r, f.scalar, f.name, dict) as never);
        else if (f.listKind === "enum") list.add(enumValue(r, f) as never);
        else if (depth <= 6) list.add(reflect(f.message, plausible(r, f.message, dict, depth + 1) as never));
      }
      return;
    }
    case "map": {
      const map = m.get(f);
      const n = r.int(1, 3);
      for (let i = 0; i < n; i++) {
        const key = f.mapKey === ScalarType.STRING ? r.pick(["env", "team", "a/b", "", "x".repeat(70)]) : i;
        if (f.mapKind === "scalar") map.set(key, scalarValue(r, f.scalar, f.name, dict) as never);
        else if (f.mapKind === "enum") map.set(key, enumValue(r, f) as never);
        else map.set(key, reflect(f.message, plausible(r, f.message, dict, depth + 1) as never));
      }
      return;
    }
  }
}

/** Every field of a message and of the messages it holds (singular ones), with the path to reach it. */
function fieldsDeep(desc: DescMessage, depth = 0): { path: DescField[]; field: DescField }[] {
  const out: { path: DescField[]; field: DescField }[] = [];
  for (const f of desc.fields) {
    out.push({ path: [], field: f });
    if (f.fieldKind === "message" && depth < 4)
      for (const inner of fieldsDeep(f.message, depth + 1))
        out.push({ path: [f, ...inner.path], field: inner.field });
  }
  return out;
}

/** The message that holds `path`'s last field, created on the way. */
function holder(m: ReflectMessage, path: DescField[]): ReflectMessage {
  let cur = m;
  for (const f of path) {
    if (f.fieldKind !== "message") break;
    if (!cur.isSet(f)) cur.set(f, reflect(f.message) as never);
    cur = cur.get(f) as ReflectMessage;
  }
  return cur;
}

const MiB4 = 4 * 1024 * 1024;

export type Mutation =
  | "unknown-enum"
  | "extreme-int"
  | "huge-string"
  | "weird-string"
  | "huge-repeated"
  | "huge-map"
  | "deep-nesting"
  | "wrong-wire-type"
  | "truncated"
  | "group-bomb"
  | "overlong-varint"
  | "bad-length"
  | "invalid-utf8";

export const MUTATIONS: readonly Mutation[] = [
  "unknown-enum",
  "extreme-int",
  "huge-string",
  "weird-string",
  "huge-repeated",
  "huge-map",
  "deep-nesting",
  "wrong-wire-type",
  "truncated",
  "group-bomb",
  "overlong-varint",
  "bad-length",
  "invalid-utf8",
];

/** A mutation of a plausible request, as the bytes to send (what cannot be said with the library is written by hand). */
export function mutate(r: Rng, desc: DescMessage, base: Message, kind: Mutation): Uint8Array {
  const msg = base;
  const m = reflect(desc, msg as never);
  const all = fieldsDeep(desc);
  const of = (pred: (f: DescField) => boolean) => all.filter((x) => pred(x.field));
  const encode = () => toBinary(desc, msg as never);
  const apply = (
    targets: { path: DescField[]; field: DescField }[],
    set: (h: ReflectMessage, f: DescField) => void,
  ) => {
    if (targets.length === 0) return false;
    const t = r.pick(targets);
    set(holder(m, t.path), t.field);
    return true;
  };
  switch (kind) {
    case "unknown-enum":
      if (
        apply(
          of((f) => f.fieldKind === "enum" || (f.fieldKind === "list" && f.listKind === "enum")),
          (h, f) => {
            const v = r.pick([99, -1, 2147483647, -2147483648, 17]);
            if (f.fieldKind === "list") h.get(f).add(v as never);
            else h.set(f, v as never);
          },
        )
      )
        return encode();
      break;
    case "extreme-int":
      if (
        apply(
          of(
            (f) =>
              f.fieldKind === "scalar" && f.scalar !== ScalarType.STRING && f.scalar !== ScalarType.BYTES,
          ),
          (h, f) => {
            if (f.fieldKind !== "scalar") return;
            const t = f.scalar;
            const v = isInt64(t)
              ? t === ScalarType.UINT64 || t === ScalarType.FIXED64
                ? r.pick([0n, 18446744073709551615n, 9223372036854775808n, 9223372036854775807n])
                : r.pick([-9223372036854775808n, 9223372036854775807n, -1n])
              : t === ScalarType.UINT32 || t === ScalarType.FIXED32
                ? r.pick([0, 4294967295, 2147483648])
                : t === ScalarType.BOOL
                  ? true
                  : t === ScalarType.DOUBLE || t === ScalarType.FLOAT
                    ? r.pick(DOUBLE)
                    : r.pick([-2147483648, 2147483647, -1]);
            h.set(f, v as never);
          },
        )
      )
        return encode();
      break;
    case "huge-string":
    case "weird-string":
      if (
        apply(
          of(
            (f) =>
              (f.fieldKind === "scalar" && f.scalar === ScalarType.STRING) ||
              (f.fieldKind === "list" && f.listKind === "scalar" && f.scalar === ScalarType.STRING) ||
              (f.fieldKind === "map" && f.mapKey === ScalarType.STRING),
          ),
          (h, f) => {
            const s =
              kind === "huge-string" ? r.pick(["x", "é", "a-"]).repeat(MiB4 / 2) : r.pick(WEIRD_STRINGS);
            if (f.fieldKind === "list") h.get(f).add(s as never);
            else if (f.fieldKind === "map")
              h.get(f).set(
                r.chance(0.5) ? s : "k",
                (f.mapKind === "scalar" && f.scalar === ScalarType.STRING ? s : 0) as never,
              );
            else h.set(f, s as never);
          },
        )
      )
        return encode();
      break;
    case "huge-repeated":
      if (
        apply(
          of((f) => f.fieldKind === "list"),
          (h, f) => {
            if (f.fieldKind !== "list") return;
            const list = h.get(f);
            for (let i = 0; i < 10_000; i++) {
              if (f.listKind === "scalar")
                list.add(
                  (f.scalar === ScalarType.STRING ? `x${i}` : isInt64(f.scalar) ? BigInt(i) : i % 2) as never,
                );
              else if (f.listKind === "enum") list.add((i % 5) as never);
              else list.add(reflect(f.message) as never);
            }
          },
        )
      )
        return encode();
      break;
    case "huge-map":
      if (
        apply(
          of((f) => f.fieldKind === "map"),
          (h, f) => {
            if (f.fieldKind !== "map") return;
            const map = h.get(f);
            for (let i = 0; i < 10_000; i++) {
              const key = f.mapKey === ScalarType.STRING ? `k${i}` : i;
              if (f.mapKind === "scalar")
                map.set(
                  key,
                  (f.scalar === ScalarType.STRING ? `v${i}` : isInt64(f.scalar) ? BigInt(i) : 1) as never,
                );
              else if (f.mapKind === "enum") map.set(key, 1 as never);
              else map.set(key, reflect(f.message) as never);
            }
          },
        )
      )
        return encode();
      break;
    case "deep-nesting": {
      // As deep as the schema nests, then 5,000 levels of nested length-delimited unknown fields below.
      const bottom = deepUnknown(5_000);
      const nested = of((f) => f.fieldKind === "message");
      if (nested.length === 0) return concat(encode(), bottom);
      const t = nested.reduce((a, b) => (b.path.length > a.path.length ? b : a));
      const chain = [...t.path, t.field];
      let inner = bottom;
      for (let i = chain.length - 1; i >= 0; i--) inner = lengthDelimited(chain[i]!.number, inner);
      return concat(encode(), inner);
    }
    case "wrong-wire-type": {
      const f = r.pick(desc.fields.length ? desc.fields : [{ number: 1, fieldKind: "scalar" } as DescField]);
      const w = new BinaryWriter();
      const wire = r.pick([
        WireType.Varint,
        WireType.LengthDelimited,
        WireType.Bit32,
        WireType.Bit64,
        WireType.StartGroup,
      ]);
      w.tag(f.number, wire);
      if (wire === WireType.Varint) w.uint64(18446744073709551615n);
      else if (wire === WireType.LengthDelimited) w.bytes(r.bytes(r.int(0, 32)));
      else if (wire === WireType.Bit32) w.fixed32(0xffffffff);
      else if (wire === WireType.Bit64) w.fixed64(18446744073709551615n);
      else w.tag(f.number, WireType.EndGroup);
      return r.chance(0.5) ? concat(encode(), w.finish()) : concat(w.finish(), encode());
    }
    case "truncated": {
      const b = encode();
      return b.length > 1 ? b.subarray(0, r.int(1, b.length - 1)) : new Uint8Array([0x0a]);
    }
    case "group-bomb": {
      // 100,000 nested groups under an unknown field number: a recursive skipper runs out of stack.
      const depth = 100_000;
      const out = new Uint8Array(depth * 4);
      for (let i = 0; i < depth; i++) out.set([0xc3, 0x3e], i * 2); // field 1000, start group
      for (let i = 0; i < depth; i++) out.set([0xc4, 0x3e], depth * 2 + i * 2); // field 1000, end group
      return concat(encode(), out);
    }
    case "overlong-varint": {
      const f = r.pick(desc.fields.length ? desc.fields : [{ number: 1 } as DescField]);
      const tag = (f.number << 3) | WireType.Varint;
      return concat(
        encode(),
        varintBytes(tag),
        new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
      );
    }
    case "bad-length": {
      const f = r.pick(desc.fields.length ? desc.fields : [{ number: 1 } as DescField]);
      return concat(
        encode(),
        varintBytes((f.number << 3) | WireType.LengthDelimited),
        varintBytes(r.pick([0x7fffffff, 0xffffffff, 1000])),
        r.bytes(4),
      );
    }
    case "invalid-utf8": {
      const strings = desc.fields.filter((f) => f.fieldKind === "scalar" && f.scalar === ScalarType.STRING);
      const f = strings.length
        ? r.pick(strings)
        : r.pick(desc.fields.length ? desc.fields : [{ number: 1 } as DescField]);
      return concat(
        encode(),
        lengthDelimited(f.number, new Uint8Array([0xc3, 0x28, 0xff, 0xfe, 0xed, 0xa0, 0x80])),
      );
    }
  }
  // The message has no field of that kind: random bytes after a valid encoding instead.
  return concat(encode(), r.bytes(r.int(1, 32)));
}

function varintBytes(n: number): Uint8Array {
  const out: number[] = [];
  let v = n >>> 0;
  while (v > 0x7f) {
    out.push((v & 0x7f) | 0x80);
    v >>>= 7;
  }
  out.push(v);
  return new Uint8Array(out);
}

function lengthDelimited(field: number, body: Uint8Array): Uint8Array {
  return concat(varintBytes((field << 3) | WireType.LengthDelimited), varintBytes(body.length), body);
}

/** `depth` nested length-delimited fields numbered 999 (unknown everywhere). */
const deepCache = new Map<number, Uint8Array>();
function deepUnknown(depth: number): Uint8Array {
  const cached = deepCache.get(depth);
  if (cached) return cached;
  let inner: Uint8Array = new Uint8Array(0);
  for (let i = 0; i < depth; i++) inner = lengthDelimited(999, inner);
  deepCache.set(depth, inner);
  return inner;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Random bytes: mostly short, sometimes long, sometimes after a valid prefix. */
export function randomBody(r: Rng, valid: () => Uint8Array): Uint8Array {
  const roll = r.next();
  if (roll < 0.5) return r.bytes(r.int(0, 64));
  if (roll < 0.8) return r.bytes(r.int(65, 2048));
  if (roll < 0.9) return r.bytes(r.int(2049, 256 * 1024));
  return concat(valid(), r.bytes(r.int(1, 256)));
}

export const hex = (b: Uint8Array, n = 48) =>
  Buffer.from(b.subarray(0, n)).toString("hex") + (b.length > n ? `…(${b.length} bytes)` : "");
