import type { Queryable } from "./db.js";

export type AuditOutcome = "ok" | "error" | "denied";

export interface AuditEntry {
  /** A token's name, "host:NAME" for an agent, "anonymous" without auth, "controller" for its own acts. */
  actor: string;
  /** The caller's role (viewer, operator, admin, agent), "" when unknown or not a call. */
  role?: string;
  /** The caller's address (host:port), "" when unknown or not a call. */
  source?: string;
  action: string;
  target?: string;
  request?: unknown;
  outcome: AuditOutcome;
  error?: string;
}

/** An audit row as it is read back. */
export interface AuditRow {
  id: bigint;
  at: Date;
  actor: string;
  role: string;
  source: string;
  action: string;
  target: string;
  request: Record<string, unknown>;
  outcome: string;
  error: string;
}

/** The longest request an audit row keeps, as JSON text; a longer one is shortened (see auditRequest). */
export const MAX_AUDIT_REQUEST = 16 * 1024;
/** The longest target and error text kept. */
const MAX_AUDIT_TEXT = 2048;

export const REDACTED = "[redacted]";

/**
 * Keys whose values are secrets, wherever they appear in a request: tokens and their secrets, passwords, keys
 * (private keys, API keys, nkey seeds), JWTs, CHAP secrets, credentials. Matched on the key with `_` and `-`
 * removed, case-insensitively.
 */
const SECRET_KEY =
  /secret|token|passw(or)?d|passphrase|private|seed|jwt|key|chap|credential|authori[sz]ation|bearer|cookie/i;
/** Keys that match SECRET_KEY but name something public: ids, paging cursors and public keys. */
const SAFE_KEYS = new Set([
  "tokenid",
  "pagetoken",
  "nextpagetoken",
  "publickey",
  "natspublickey",
  "tokenkind",
]);

/** Whether a request field of this name is redacted in audit rows. */
export function isSecretKey(key: string): boolean {
  const k = key.replace(/[-_]/g, "").toLowerCase();
  return SECRET_KEY.test(k) && !SAFE_KEYS.has(k);
}

/**
 * Secrets recognised by their shape, wherever they are (a token pasted into a name, a key in an error message):
 * Stowage API and join tokens, PEM private keys, NATS nkey seeds, JWTs.
 */
const SECRET_SHAPES: RegExp[] = [
  /stw_[A-Za-z0-9_]{16,}/g,
  /-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)/g,
  /\bS[A-Z][A-Z2-7]{50,}\b/g,
  /\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*/g,
];

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/**
 * Replaces every secret-shaped part of a text by "[redacted]"; drops NUL and replaces lone surrogates, which
 * PostgreSQL's text and jsonb cannot hold.
 */
export function redactSecrets(text: string): string {
  let out = text.includes("\u0000") ? text.replaceAll("\u0000", "") : text;
  out = out.replace(LONE_SURROGATE, "\uFFFD");
  for (const shape of SECRET_SHAPES) out = out.replace(shape, REDACTED);
  return out;
}

function clipText(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}…[${text.length - max} more characters]`;
}

/** Every mutating call is written here, in the same transaction as the change it describes. */
export async function writeAudit(sql: Queryable, e: AuditEntry): Promise<void> {
  const a = auditValues(e);
  await sql`insert into audit_log (actor, role, source, action, target, request, outcome, error)
    values (${a.actor}, ${a.role}, ${a.source}, ${a.action}, ${a.target}, ${sql.json(a.request as never)}, ${a.outcome}, ${a.error})`;
}

/** The columns of an audit row as they are stored: secrets redacted, texts and the request bounded. */
export function auditValues(e: AuditEntry) {
  return {
    actor: clipText(redactSecrets(e.actor), 256),
    role: e.role ?? "",
    source: e.source ?? "",
    action: e.action,
    target: clipText(redactSecrets(e.target ?? ""), MAX_AUDIT_TEXT),
    request: auditRequest(e.request),
    outcome: e.outcome,
    error: clipText(redactSecrets(e.error ?? ""), MAX_AUDIT_TEXT),
  };
}

/**
 * The request as the audit row keeps it: JSON (bigints as strings, bytes as their length), every value under a
 * secret-named key (isSecretKey) replaced by "[redacted]" at any depth, secret-shaped strings redacted too
 * (redactSecrets), and at most MAX_AUDIT_REQUEST bytes of JSON: past that, long strings and arrays are cut,
 * and if it is still too long only a note of its size is kept.
 */
export function auditRequest(request: unknown): Record<string, unknown> {
  const clean = scrub(request ?? {}, 0, new WeakSet());
  const value: Record<string, unknown> =
    clean !== null && typeof clean === "object" && !Array.isArray(clean)
      ? (clean as Record<string, unknown>)
      : { value: clean };
  let size = JSON.stringify(value).length;
  if (size <= MAX_AUDIT_REQUEST) return value;
  const shortened = shorten(value) as Record<string, unknown>;
  const shortSize = JSON.stringify(shortened).length;
  if (shortSize <= MAX_AUDIT_REQUEST) return { ...shortened, truncated: true };
  size = Math.max(size, shortSize);
  return { truncated: true, bytes: size, fields: Object.keys(value).slice(0, 50) };
}

const MAX_DEPTH = 32;

function scrub(v: unknown, depth: number, seen: WeakSet<object>): unknown {
  if (v === null || v === undefined) return null;
  switch (typeof v) {
    case "string":
      return redactSecrets(v);
    case "bigint":
      return v.toString();
    case "number":
      return Number.isFinite(v) ? v : String(v);
    case "boolean":
      return v;
    case "object":
      break;
    default:
      return null;
  }
  if (v instanceof Date) return Number.isNaN(v.getTime()) ? null : v.toISOString();
  if (v instanceof Uint8Array) return `[${v.byteLength} bytes]`;
  if (depth >= MAX_DEPTH) return "[too deep]";
  if (seen.has(v)) return "[circular]";
  seen.add(v);
  try {
    if (Array.isArray(v)) return v.map((x) => scrub(x, depth + 1, seen));
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
      // protobuf-es messages carry their type name; functions and undefined are not data.
      if (k === "$typeName" || x === undefined || typeof x === "function") continue;
      const key = redactSecrets(k);
      out[key] =
        isSecretKey(k) && x !== null && typeof x !== "boolean" ? REDACTED : scrub(x, depth + 1, seen);
    }
    return out;
  } finally {
    seen.delete(v);
  }
}

/** Long strings and arrays cut down, for a request past MAX_AUDIT_REQUEST. */
function shorten(v: unknown): unknown {
  if (typeof v === "string") return clipText(v, 256);
  if (Array.isArray(v)) {
    const head = v.slice(0, 20).map(shorten);
    return v.length > 20 ? [...head, `…[${v.length - 20} more items]`] : head;
  }
  if (v !== null && typeof v === "object") {
    const entries = Object.entries(v as Record<string, unknown>);
    const out: Record<string, unknown> = {};
    for (const [k, x] of entries.slice(0, 100)) out[k] = shorten(x);
    if (entries.length > 100) out["…"] = `${entries.length - 100} more fields`;
    return out;
  }
  return v;
}

/** The filters of `listAudit`: each is exact and optional; all that are given must match. */
export interface AuditFilter {
  actor?: string;
  target?: string;
  action?: string;
  outcome?: string;
  /** Rows at or after this time. */
  since?: Date;
  /** Rows before this time. */
  until?: Date;
  /** Rows with an id below this one: the keyset cursor of the next page (newest first). */
  before?: bigint;
  limit: number;
}

/** Audit rows, newest (highest id) first, matching every filter given; page on with `before` = the last id. */
export async function listAudit(sql: Queryable, f: AuditFilter): Promise<AuditRow[]> {
  const empty = sql``;
  const eq = (column: string, value: string | undefined) =>
    value ? sql`and ${sql(column)} = ${value}` : empty;
  return sql<AuditRow[]>`
    select id, at, actor, role, source, action, target, request, outcome, error from audit_log
    where true
      ${eq("actor", f.actor)} ${eq("target", f.target)} ${eq("action", f.action)} ${eq("outcome", f.outcome)}
      ${f.since ? sql`and at >= ${f.since}` : empty}
      ${f.until ? sql`and at < ${f.until}` : empty}
      ${f.before !== undefined ? sql`and id < ${f.before}` : empty}
    order by id desc limit ${f.limit}`;
}

export async function recentAudit(sql: Queryable, limit = 100) {
  return sql<
    {
      id: bigint;
      at: Date;
      actor: string;
      role: string;
      source: string;
      action: string;
      target: string;
      outcome: string;
      error: string;
    }[]
  >`
    select id, at, actor, role, source, action, target, outcome, error from audit_log order by id desc limit ${limit}`;
}
