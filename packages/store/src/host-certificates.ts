import type { Queryable } from "./db.js";

/** A certificate the controller's CA issued to a host (and the NATS user key minted with it). */
export interface HostCertificateRow {
  serial: string;
  hostId: string;
  fingerprintSha256: string;
  notBefore: Date;
  notAfter: Date;
  natsPublicKey: string;
  issuedAt: Date;
  /** "join:<token id>" or "renew:<serial>". */
  issuedBy: string;
  revokedAt: Date | null;
}

const COLUMNS = [
  "serial",
  "host_id",
  "fingerprint_sha256",
  "not_before",
  "not_after",
  "nats_public_key",
  "issued_at",
  "issued_by",
  "revoked_at",
];

export async function insertHostCertificate(
  sql: Queryable,
  c: Omit<HostCertificateRow, "issuedAt" | "revokedAt">,
): Promise<HostCertificateRow> {
  const rows = await sql<HostCertificateRow[]>`
    insert into host_certificates (serial, host_id, fingerprint_sha256, not_before, not_after, nats_public_key, issued_by)
    values (${c.serial}, ${c.hostId}, ${c.fingerprintSha256}, ${c.notBefore}, ${c.notAfter}, ${c.natsPublicKey},
      ${c.issuedBy})
    returning ${sql(COLUMNS)}`;
  return rows[0]!;
}

/** A certificate by its serial (lowercase hex), or undefined when this CA never issued it. */
export async function hostCertificate(
  sql: Queryable,
  serial: string,
): Promise<HostCertificateRow | undefined> {
  const rows = await sql<HostCertificateRow[]>`select ${sql(COLUMNS)} from host_certificates
    where serial = ${serial.toLowerCase()}`;
  return rows[0];
}

/** A host's certificates, newest first. */
export async function hostCertificates(sql: Queryable, hostId: string): Promise<HostCertificateRow[]> {
  return sql<HostCertificateRow[]>`select ${sql(COLUMNS)} from host_certificates
    where host_id = ${hostId} order by issued_at desc, serial`;
}

/**
 * Revokes every certificate of a host not revoked yet; answers how many, and how many of them carried a NATS
 * user key (those keys are then in `revokedNatsKeys`).
 */
export async function revokeHostCertificates(
  sql: Queryable,
  hostId: string,
): Promise<{ certificates: number; natsUsers: number }> {
  const rows = await sql<{ natsPublicKey: string }[]>`update host_certificates set revoked_at = now()
    where host_id = ${hostId} and revoked_at is null returning nats_public_key`;
  return { certificates: rows.length, natsUsers: rows.filter((r) => r.natsPublicKey !== "").length };
}

/** Every revoked NATS user key with when it was revoked (for the account JWT's revocations). */
export async function revokedNatsKeys(sql: Queryable): Promise<{ publicKey: string; revokedAt: Date }[]> {
  return sql<{ publicKey: string; revokedAt: Date }[]>`select nats_public_key as public_key, revoked_at
    from host_certificates where revoked_at is not null and nats_public_key <> '' order by revoked_at, serial`;
}
