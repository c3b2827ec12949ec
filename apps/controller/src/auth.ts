import { timingSafeEqual } from "node:crypto";
import {
  Code,
  ConnectError,
  type ContextValues,
  createContextKey,
  createContextValues,
  type HandlerContext,
  type Interceptor,
} from "@connectrpc/connect";
import { hashTokenSecret, hostCertificate, type Sql, tokenByHash, touchToken } from "@stowage/store";
import { hostOfPeerCert } from "./pki.js";

/** A user's role (its bearer token's), or "agent": a host's certificate, which may call only AgentService. */
export type Role = "viewer" | "operator" | "admin" | "agent";
type UserRole = Exclude<Role, "agent">;

/** Who is calling: set by the auth interceptor ("host:<name>" for an agent). */
export interface Principal {
  name: string;
  role: Role;
}
export const principalKey = createContextKey<Principal>({
  name: "anonymous",
  role: "admin",
});

/**
 * The caller's connection, set for every request from the socket (never from a header a client could send):
 * its address, and on a TLS listener the host its verified client certificate names.
 */
export interface Peer {
  /** host:port of the caller ("" when unknown). */
  address: string;
  /** The host a verified client certificate names (agents on a TLS controller). */
  host?: string;
  /** That certificate's serial number (hex), checked against revocations. */
  serial?: string;
}
export const peerKey = createContextKey<Peer>({ address: "" });

/** What peerContext reads of a socket: its address and, on TLS, its verified peer certificate. */
interface PeerSocket {
  remoteAddress?: string;
  remotePort?: number;
  authorized?: boolean;
  getPeerCertificate?: () => {
    serialNumber?: string;
    subject?: { CN?: string | string[] };
    subjectaltname?: string;
  } | null;
}

/**
 * The context values of a request from its socket: connectNodeAdapter's `contextValues`. On a TLS listener a
 * client certificate the CA verified fills `host` (its URI SAN urn:stowage:host:<h>, agreeing with its CN) and
 * `serial`; the TLS listener has already closed connections with a certificate it did not verify.
 */
export function peerContext(req: { socket?: PeerSocket | null }): ContextValues {
  const values = createContextValues();
  const s = req.socket;
  const ip = s?.remoteAddress ?? "";
  const peer: Peer = { address: ip ? `${ip.includes(":") ? `[${ip}]` : ip}:${s?.remotePort ?? 0}` : "" };
  if (s?.authorized === true && typeof s.getPeerCertificate === "function") {
    const cert = s.getPeerCertificate();
    const host = cert ? hostOfPeerCert(cert) : undefined;
    if (host && cert?.serialNumber) {
      peer.host = host;
      peer.serial = cert.serialNumber.toLowerCase();
    }
  }
  values.set(peerKey, peer);
  return values;
}

/** The name the audit log records for the caller of a handler. */
export const actorOf = (hc: HandlerContext) => hc.values.get(principalKey).name;
const RANK: Record<UserRole, number> = { viewer: 0, operator: 1, admin: 2 };

/** Parses STOWAGE_API_TOKENS: "name:role:token,name:role:token". */
export function parseTokens(spec: string): Map<string, { name: string; role: UserRole }> {
  const out = new Map<string, { name: string; role: UserRole }>();
  for (const entry of spec
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)) {
    const [name, role, token] = entry.split(":");
    if (!name || !token || !(role === "viewer" || role === "operator" || role === "admin")) {
      throw new Error(
        `STOWAGE_API_TOKENS entry ${JSON.stringify(name ?? entry)} is not name:role:token with role viewer, operator or admin`,
      );
    }
    out.set(token, { name, role });
  }
  return out;
}

/**
 * The role a method needs: reads are for viewers, agents register themselves, load balancers check health
 * without a token, the rest needs an operator.
 */
function requiredRole(service: string, method: string): UserRole | null {
  if (service === "stowage.v1.AgentService" || service === "grpc.health.v1.Health") return null;
  if (service === "stowage.v1.TokenService" || service === "stowage.v1.AuditService") return "admin";
  if (/^(Get|List|Watch|Explain)/.test(method)) return "viewer";
  if (service === "stowage.v1.HostService" && (method === "SetHostSchedulable" || method === "RevokeHost"))
    return "admin";
  return "operator";
}

/** Tokens kept in the database (`stowctl token`), looked up by the SHA-256 of a secret. */
export interface StoredTokens {
  /** The live (not revoked, not expired) token whose secret hashes to this, with its stored hash. */
  byHash(hash: Buffer): Promise<{ id: string; name: string; role: UserRole; secretHash: Buffer } | undefined>;
  /** Whether any live token exists (then authentication is on even without STOWAGE_API_TOKENS). */
  any(): Promise<boolean>;
  /** Records a use (throttled by the store). */
  touch(id: string): void;
  /** SHA-256 of a secret. */
  hash(secret: string): Buffer;
}

/** The database's tokens for the interceptor; a failed last_used_at write is only logged at debug. */
export function storedTokens(db: { sql: Sql }): StoredTokens {
  return {
    async byHash(hash) {
      const row = await tokenByHash(db.sql, hash);
      // A join token is never a bearer token: it only joins its host (join.ts).
      if (row?.kind !== "api" || row.revokedAt || (row.expiresAt && row.expiresAt.getTime() <= Date.now()))
        return undefined;
      return row;
    },
    async any() {
      const [r] = await db.sql<{ n: number }[]>`select count(*)::int as n from api_tokens
        where kind = 'api' and revoked_at is null and (expires_at is null or expires_at > now())`;
      return (r?.n ?? 0) > 0;
    },
    touch(id) {
      void touchToken(db.sql, id).catch(() => {});
    },
    hash: hashTokenSecret,
  };
}

/** How long a looked-up stored token (or certificate) is trusted: a revoke takes effect within this. */
export const TOKEN_CACHE_MS = 5_000;

/** The certificates the CA issued: whether a serial is live (issued to this host, not revoked). */
export type CertificateCheck = (serial: string, host: string) => Promise<boolean>;

/** host_certificates as the interceptor's CertificateCheck. */
export function storedCertificates(db: { sql: Sql }): CertificateCheck {
  return async (serial, host) => {
    const row = await hostCertificate(db.sql, serial);
    return row !== undefined && row.hostId === host && row.revokedAt === null;
  };
}

export interface AuthOptions {
  /**
   * The listener serves TLS: authentication is always on (no anonymous admin, even without tokens), and agents
   * authenticate by their host certificate (checked with `certificates`).
   */
  tls?: boolean;
  certificates?: CertificateCheck;
}

const AGENT_SERVICE = "stowage.v1.AgentService";

/**
 * The authentication seam (docs/security.md). Without TLS and without tokens configured (a loopback-only
 * cluster) every caller is an anonymous admin; with tokens (STOWAGE_API_TOKENS or any live stored API token),
 * or on a TLS listener, a bearer token is required and its role is checked against the method. Stored tokens
 * are looked up by hash, and each answer is cached for TOKEN_CACHE_MS.
 *
 * On TLS, AgentService's Join needs no credential (its join token is in the body, join.ts); its other methods
 * need a host certificate whose serial is live, and run as the agent "host:<name>"; a host certificate may call
 * nothing else. Without TLS, AgentService is open as before.
 */
export function createAuthInterceptor(
  tokens: Map<string, { name: string; role: UserRole }>,
  stored?: StoredTokens,
  now: () => number = Date.now,
  options: AuthOptions = {},
): Interceptor {
  const tls = options.tls === true;
  const certCache = new Map<string, { at: number; ok: boolean }>();
  const certLive = async (serial: string, host: string) => {
    const key = `${serial}/${host}`;
    const t = now();
    const hit = certCache.get(key);
    if (hit && t - hit.at < TOKEN_CACHE_MS) return hit.ok;
    const ok = options.certificates ? await options.certificates(serial, host) : false;
    if (certCache.size > 10_000) certCache.clear();
    certCache.set(key, { at: t, ok });
    return ok;
  };
  const cache = new Map<
    string,
    { at: number; who: { name: string; role: UserRole; id: string } | undefined }
  >();
  let anyStored: { at: number; value: boolean } | undefined;
  const envEntries = [...tokens].map(([secret, who]) => ({ secret: Buffer.from(secret), who }));
  const fromEnv = (secret: string) => {
    const given = Buffer.from(secret);
    let found: { name: string; role: UserRole } | undefined;
    // Every entry is compared, in constant time for equal lengths.
    for (const e of envEntries)
      if (e.secret.length === given.length && timingSafeEqual(e.secret, given)) found = e.who;
    return found;
  };
  const authOn = async () => {
    if (tls || tokens.size > 0) return true;
    if (!stored) return false;
    const t = now();
    if (!anyStored || t - anyStored.at >= TOKEN_CACHE_MS) anyStored = { at: t, value: await stored.any() };
    return anyStored.value;
  };
  const fromStore = async (secret: string) => {
    if (!stored) return undefined;
    const hash = stored.hash(secret);
    const key = hash.toString("hex");
    const t = now();
    const hit = cache.get(key);
    if (hit && t - hit.at < TOKEN_CACHE_MS) return hit.who;
    const row = await stored.byHash(hash);
    const who =
      row && row.secretHash.length === hash.length && timingSafeEqual(row.secretHash, hash)
        ? { id: row.id, name: row.name, role: row.role }
        : undefined;
    if (who) stored.touch(who.id);
    if (cache.size > 10_000) cache.clear();
    cache.set(key, { at: t, who });
    return who;
  };
  return (next) => async (req) => {
    const service = req.service.typeName;
    const peer = req.contextValues.get(peerKey);
    if (tls && service === AGENT_SERVICE && req.method.name !== "Join") {
      if (!peer.host || !peer.serial)
        throw new ConnectError(
          "an agent needs its host certificate: join with a token first (docs/security.md)",
          Code.Unauthenticated,
        );
      if (!(await certLive(peer.serial, peer.host)))
        throw new ConnectError(
          `the certificate of host ${peer.host} is revoked or unknown: it must join again with a new join token (\`stowctl token create --host ${peer.host}\`)`,
          Code.Unauthenticated,
        );
      req.contextValues.set(principalKey, { name: `host:${peer.host}`, role: "agent" });
      return next(req);
    }
    // A host certificate acts only as its agent (the health service stays open to load balancers).
    if (tls && peer.host && service !== AGENT_SERVICE && service !== "grpc.health.v1.Health") {
      // Named before the refusal, so that the audit trail records who was refused (audit.ts).
      req.contextValues.set(principalKey, { name: `host:${peer.host}`, role: "agent" });
      throw new ConnectError(
        `host:${peer.host} (agent) may call only the AgentService, not ${req.method.name}`,
        Code.PermissionDenied,
      );
    }
    const need = requiredRole(service, req.method.name);
    if (need === null) return next(req);
    if (!(await authOn())) return next(req);
    const header = req.header.get("authorization") ?? "";
    const m = /^Bearer\s+(.+)$/i.exec(header);
    const secret = m ? m[1]!.trim() : "";
    let who: { name: string; role: UserRole } | undefined = secret ? fromEnv(secret) : undefined;
    if (!who && secret) {
      const s = await fromStore(secret);
      if (s) who = { name: s.name, role: s.role };
    }
    if (!who)
      throw new ConnectError(
        "a bearer token is required: pass --token or set STOWAGE_TOKEN",
        Code.Unauthenticated,
      );
    // Named before the role check, so that the audit trail records who was refused (audit.ts).
    req.contextValues.set(principalKey, who);
    if (RANK[who.role] < RANK[need]) {
      throw new ConnectError(
        `${who.name} (${who.role}) may not call ${req.method.name}: it needs the ${need} role`,
        Code.PermissionDenied,
      );
    }
    req.contextValues.set(principalKey, who);
    return next(req);
  };
}
