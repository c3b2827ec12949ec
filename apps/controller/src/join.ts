import { timingSafeEqual } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { fromPublic } from "@nats-io/nkeys";
import { validateName } from "@stowage/core";
import {
  type HostCredentials,
  HostCredentialsSchema,
  type JoinRequest,
  type JoinResponse,
  type RenewCertificateRequest,
  type RenewCertificateResponse,
  type RevokeHostRequest,
  type RevokeHostResponse,
} from "@stowage/proto";
import {
  getHost,
  hashTokenSecret,
  hostCertificates,
  insertHostCertificate,
  type Queryable,
  revokeHostCertificates,
  revokeUnusedJoinTokens,
  tokenByHash,
  useJoinToken,
  writeAudit,
} from "@stowage/store";
import { callerOf } from "./audit.js";
import type { Peer } from "./auth.js";
import type { ControllerContext } from "./context.js";
import { CsrError, type IssuedCert, type Pki } from "./pki.js";

/** The controllers' PKI by context: set by startController on a TLS controller (none: joining is refused). */
const PKIS = new WeakMap<ControllerContext, Pki>();
export function attachPki(ctx: ControllerContext, pki: Pki): void {
  PKIS.set(ctx, pki);
}
export function pkiOf(ctx: ControllerContext): Pki | undefined {
  return PKIS.get(ctx);
}

const JOIN_SECRET = /^stw_join_[0-9a-f]{64}$/;

const refuse = (message: string, code: Code) => new ConnectError(message, code);

function needPki(pki: Pki | undefined): Pki {
  if (!pki)
    throw refuse(
      "this controller serves no TLS (STOWAGE_TLS=off): hosts join only a TLS controller (docs/security.md)",
      Code.FailedPrecondition,
    );
  return pki;
}

/** A NATS user public key ("U..."), or "" when none was sent and NATS needs none. */
function natsUserKey(ctx: ControllerContext, key: string): string {
  if (key === "") {
    if (ctx.natsAuthority)
      throw refuse(
        "nats_public_key is required: this cluster's NATS needs a user key per agent",
        Code.InvalidArgument,
      );
    return "";
  }
  let ok = false;
  try {
    ok = key.startsWith("U") && fromPublic(key).getPublicKey() === key;
  } catch {
    ok = false;
  }
  if (!ok) throw refuse("nats_public_key is not a NATS user public key (U...)", Code.InvalidArgument);
  return key;
}

async function sign(pki: Pki, csrPem: string, host: string, ttlMs: number): Promise<IssuedCert> {
  try {
    return await pki.signCsr(csrPem, host, ttlMs);
  } catch (err) {
    if (err instanceof CsrError) throw refuse(err.message, Code.InvalidArgument);
    throw err;
  }
}

/** Records the certificate and mints the NATS JWT (in the caller's transaction: a failed mint issues nothing). */
async function record(
  ctx: ControllerContext,
  tx: Queryable,
  pki: Pki,
  host: string,
  cert: IssuedCert,
  natsKey: string,
  issuedBy: string,
): Promise<HostCredentials> {
  await insertHostCertificate(tx, {
    serial: cert.serial,
    hostId: host,
    fingerprintSha256: cert.fingerprint,
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    natsPublicKey: natsKey,
    issuedBy,
  });
  const natsJwt =
    ctx.natsAuthority && natsKey
      ? await ctx.natsAuthority.mintAgentJwt(host, natsKey, cert.notAfter, tx)
      : "";
  return create(HostCredentialsSchema, {
    certificatePem: cert.certPem,
    caPem: pki.caPem,
    natsJwt,
    notAfter: timestampFromDate(cert.notAfter),
  });
}

/**
 * An agent's first start (docs/security.md): its one-time join token must be a live, unused join token for
 * the host it names; the token is marked used, the CSR signed and the certificate recorded in one transaction
 * (of two joins with one token, one wins). Each refusal says which check failed, never the secret.
 */
export async function join(
  ctx: ControllerContext,
  pki: Pki | undefined,
  req: JoinRequest,
  peer: Peer,
): Promise<JoinResponse> {
  const ca = needPki(pki);
  const host = validateName("host_name", req.hostName);
  if (!JOIN_SECRET.test(req.joinToken))
    throw refuse("join_token is not a join token (stw_join_ and 64 hex digits)", Code.Unauthenticated);
  const natsKey = natsUserKey(ctx, req.natsPublicKey);
  const hash = hashTokenSecret(req.joinToken);
  const row = await tokenByHash(ctx.sql, hash);
  if (!row || row.secretHash.length !== hash.length || !timingSafeEqual(row.secretHash, hash))
    throw refuse(
      `the join token is unknown: create one with \`stowctl token create --host ${host}\``,
      Code.Unauthenticated,
    );
  if (row.kind !== "join") throw refuse("that token is an API token, not a join token", Code.Unauthenticated);
  if (row.revokedAt) throw refuse(`join token ${row.id} was revoked`, Code.PermissionDenied);
  if (row.usedAt)
    throw refuse(
      `join token ${row.id} was used already (${row.usedAt.toISOString()}): a join token works once; create a new one`,
      Code.PermissionDenied,
    );
  if (!row.expiresAt || row.expiresAt.getTime() <= Date.now())
    throw refuse(
      `join token ${row.id} expired at ${row.expiresAt?.toISOString()}: create a new one`,
      Code.PermissionDenied,
    );
  if (row.hostId !== host)
    throw refuse(`join token ${row.id} is for host ${row.hostId}, not ${host}`, Code.PermissionDenied);
  const cert = await sign(ca, req.csrPem, host, ctx.config.agentCertTtlMs);
  const credentials = await ctx.sql.begin(async (tx) => {
    if (!(await useJoinToken(tx, row.id)))
      throw refuse(`join token ${row.id} was used already: a join token works once`, Code.PermissionDenied);
    const creds = await record(ctx, tx, ca, host, cert, natsKey, `join:${row.id}`);
    await writeAudit(tx, {
      ...callerOf(`host:${host}`),
      role: "agent",
      action: "Join",
      target: host,
      request: {
        hostName: host,
        tokenId: row.id,
        serial: cert.serial,
        natsPublicKey: natsKey,
        from: peer.address,
      },
      outcome: "ok",
    });
    return creds;
  });
  ctx.log.info(
    { host, token: row.id, serial: cert.serial, notAfter: cert.notAfter, from: peer.address },
    "host joined",
  );
  return { $typeName: "stowage.v1.JoinResponse", credentials };
}

/**
 * A joined agent's renewal, over mTLS with the certificate it has (auth.ts checked it is live): a new
 * certificate for the same host, recorded with the serial it renews.
 */
export async function renewCertificate(
  ctx: ControllerContext,
  pki: Pki | undefined,
  req: RenewCertificateRequest,
  peer: Peer,
): Promise<RenewCertificateResponse> {
  const ca = needPki(pki);
  if (!peer.host || !peer.serial)
    throw refuse("an agent renews with its host certificate (mutual TLS)", Code.Unauthenticated);
  const host = peer.host;
  const natsKey = natsUserKey(ctx, req.natsPublicKey);
  const cert = await sign(ca, req.csrPem, host, ctx.config.agentCertTtlMs);
  const credentials = await ctx.sql.begin(async (tx) => {
    // The certificate presented must still be live now (a revoke may have just committed).
    const [old] = await tx<{ revokedAt: Date | null; hostId: string }[]>`
      select revoked_at, host_id from host_certificates where serial = ${peer.serial!} for update`;
    if (!old || old.revokedAt || old.hostId !== host)
      throw refuse(`the certificate of host ${host} is revoked: it must join again`, Code.Unauthenticated);
    const creds = await record(ctx, tx, ca, host, cert, natsKey, `renew:${peer.serial}`);
    await writeAudit(tx, {
      ...callerOf(`host:${host}`),
      action: "RenewCertificate",
      target: host,
      request: { renews: peer.serial, serial: cert.serial, natsPublicKey: natsKey, from: peer.address },
      outcome: "ok",
    });
    return creds;
  });
  ctx.log.info(
    { host, renews: peer.serial, serial: cert.serial, notAfter: cert.notAfter },
    "certificate renewed",
  );
  return { $typeName: "stowage.v1.RenewCertificateResponse", credentials };
}

/**
 * Revokes a host (admin): every certificate it holds and its unused join tokens, then tells the NATS server to
 * refuse its user keys. Idempotent (a second call answers 0, 0 and pushes the revocations again).
 */
export async function revokeHost(
  ctx: ControllerContext,
  req: RevokeHostRequest,
  actor: string,
): Promise<RevokeHostResponse> {
  const host = validateName("host_id", req.hostId);
  const reason = req.reason.slice(0, 500);
  const counts = await ctx.sql.begin(async (tx) => {
    const revoked = await revokeHostCertificates(tx, host);
    const joinTokens = await revokeUnusedJoinTokens(tx, host);
    if (revoked.certificates === 0 && joinTokens === 0) {
      const known = (await hostCertificates(tx, host)).length > 0 || (await getHost(tx, host)) !== undefined;
      if (!known)
        throw refuse(
          `no host ${host}: it has no certificates and has never registered (\`stowctl host list\`)`,
          Code.NotFound,
        );
    }
    await writeAudit(tx, {
      ...callerOf(actor),
      action: "RevokeHost",
      target: host,
      request: { hostId: host, reason, ...revoked, joinTokens },
      outcome: "ok",
    });
    return revoked;
  });
  ctx.log.warn({ actor, host, reason, ...counts }, "host revoked");
  if (ctx.natsAuthority) {
    try {
      await ctx.natsAuthority.pushRevocations();
    } catch (err) {
      ctx.log.error({ err, host }, "the NATS server was not told of a revocation");
      throw refuse(
        `host ${host} is revoked in the database, but the NATS server could not be told (${(err as Error).message}): call RevokeHost again`,
        Code.Unavailable,
      );
    }
  }
  return {
    $typeName: "stowage.v1.RevokeHostResponse",
    certificatesRevoked: counts.certificates,
    natsUsersRevoked: counts.natsUsers,
  };
}
