import { createHash, randomBytes } from "node:crypto";
import type { Queryable } from "./db.js";

export type TokenRole = "viewer" | "operator" | "admin";
/** An API token (a bearer with a role) or a one-time join token for one host. */
export type TokenKind = "api" | "join";

/** An API or join token's row: never its secret, only the secret's SHA-256. */
export interface TokenRow {
  id: string;
  name: string;
  /** For a join token the role means nothing (it is stored as viewer). */
  role: TokenRole;
  kind: TokenKind;
  /** A join token: the host it lets join; null for an API token. */
  hostId: string | null;
  /** A join token: when it was used (once). */
  usedAt: Date | null;
  createdBy: string;
  createdAt: Date;
  expiresAt: Date | null;
  revokedAt: Date | null;
  lastUsedAt: Date | null;
}

/** A new bearer secret: "stw_" and 256 random bits in hex. */
export function newTokenSecret(): string {
  return `stw_${randomBytes(32).toString("hex")}`;
}

/** A new join secret: "stw_join_" and 256 random bits in hex. */
export function newJoinTokenSecret(): string {
  return `stw_join_${randomBytes(32).toString("hex")}`;
}

/** What the database keeps of a secret. */
export function hashTokenSecret(secret: string): Buffer {
  return createHash("sha256").update(secret, "utf8").digest();
}

const COLUMNS = [
  "id",
  "name",
  "role",
  "created_by",
  "created_at",
  "expires_at",
  "revoked_at",
  "last_used_at",
  "kind",
  "host_id",
  "used_at",
];

/**
 * Inserts a token; undefined when a live token already has this name. A join token (`hostId` set) needs a
 * `ttlMs` (it always expires).
 */
export async function insertToken(
  sql: Queryable,
  t: {
    name: string;
    role: TokenRole;
    createdBy: string;
    ttlMs?: number;
    secretHash: Buffer;
    hostId?: string;
  },
): Promise<TokenRow | undefined> {
  const id = `tok-${randomBytes(16).toString("hex")}`;
  const expires = t.ttlMs ? new Date(Date.now() + t.ttlMs) : null;
  const kind: TokenKind = t.hostId ? "join" : "api";
  const rows = await sql<TokenRow[]>`
    insert into api_tokens (id, name, role, secret_sha256, created_by, expires_at, kind, host_id)
    select ${id}, ${t.name}, ${t.role}, ${t.secretHash}, ${t.createdBy}, ${expires}, ${kind}, ${t.hostId ?? null}
    where not exists (select 1 from api_tokens where name = ${t.name} and revoked_at is null)
    returning ${sql(COLUMNS)}`;
  return rows[0];
}

export async function listTokens(sql: Queryable, includeInactive = false): Promise<TokenRow[]> {
  const rows = includeInactive
    ? await sql<TokenRow[]>`select ${sql(COLUMNS)} from api_tokens order by created_at, id`
    : await sql<TokenRow[]>`select ${sql(COLUMNS)} from api_tokens
        where revoked_at is null and (expires_at is null or expires_at > now()) and used_at is null
        order by created_at, id`;
  return rows;
}

/** The live token by id, or else by name (a revoked token is found by id only). */
export async function findToken(sql: Queryable, ref: string): Promise<TokenRow | undefined> {
  const rows = await sql<TokenRow[]>`select ${sql(COLUMNS)} from api_tokens
    where id = ${ref} or (name = ${ref} and revoked_at is null) order by (id = ${ref}) desc limit 1`;
  return rows[0];
}

/** Revokes a token (a revoked one stays as it was). */
export async function revokeToken(sql: Queryable, id: string): Promise<TokenRow | undefined> {
  const rows = await sql<TokenRow[]>`update api_tokens set revoked_at = coalesce(revoked_at, now())
    where id = ${id} returning ${sql(COLUMNS)}`;
  return rows[0];
}

/** The token a secret's hash belongs to, with its hash (for a constant-time comparison by the caller). */
export async function tokenByHash(
  sql: Queryable,
  hash: Buffer,
): Promise<(TokenRow & { secretHash: Buffer }) | undefined> {
  const rows = await sql<(TokenRow & { secretSha256: Uint8Array })[]>`
    select ${sql(COLUMNS)}, secret_sha256 from api_tokens where secret_sha256 = ${hash}`;
  const r = rows[0];
  if (!r) return undefined;
  const { secretSha256, ...row } = r;
  return { ...row, secretHash: Buffer.from(secretSha256) };
}

/** Records a use, at most once per `minIntervalMs` per token. */
export async function touchToken(sql: Queryable, id: string, minIntervalMs = 60_000): Promise<void> {
  await sql`update api_tokens set last_used_at = now() where id = ${id}
    and (last_used_at is null or last_used_at < now() - make_interval(secs => ${minIntervalMs / 1000}))`;
}

/**
 * Marks a join token used, once: undefined when it is not a live, unused join token (so of two concurrent joins
 * with the same token only one gets the row).
 */
export async function useJoinToken(sql: Queryable, id: string): Promise<TokenRow | undefined> {
  const rows = await sql<TokenRow[]>`update api_tokens set used_at = now()
    where id = ${id} and kind = 'join' and used_at is null and revoked_at is null and expires_at > now()
    returning ${sql(COLUMNS)}`;
  return rows[0];
}

/** Revokes a host's join tokens not used yet; answers how many. */
export async function revokeUnusedJoinTokens(sql: Queryable, hostId: string): Promise<number> {
  const rows = await sql`update api_tokens set revoked_at = now()
    where kind = 'join' and host_id = ${hostId} and used_at is null and revoked_at is null returning id`;
  return rows.length;
}
