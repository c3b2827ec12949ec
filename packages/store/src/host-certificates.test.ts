import { describe, expect, it } from "vitest";
import {
  hostCertificate,
  hostCertificates,
  insertHostCertificate,
  revokedNatsKeys,
  revokeHostCertificates,
} from "./host-certificates.js";
import { backends, migratedDatabase } from "./testing/backends.js";
import {
  hashTokenSecret,
  insertToken,
  listTokens,
  newJoinTokenSecret,
  revokeUnusedJoinTokens,
  tokenByHash,
  useJoinToken,
} from "./tokens.js";

const cert = (serial: string, hostId: string, natsPublicKey = "") => ({
  serial,
  hostId,
  fingerprintSha256: "ab".repeat(32),
  notBefore: new Date(Date.now() - 1000),
  notAfter: new Date(Date.now() + 3600_000),
  natsPublicKey,
  issuedBy: "join:tok-x",
});

describe.each(backends)("host certificates and join tokens on %s", (_name, makeBackend) => {
  const db = migratedDatabase(makeBackend);

  it("records certificates, revokes a host's once, and lists the revoked NATS keys", async () => {
    const { sql } = db();
    await insertHostCertificate(sql, cert("4a01", "hc-a", "UAAA"));
    await insertHostCertificate(sql, cert("4a02", "hc-a"));
    await insertHostCertificate(sql, cert("4b01", "hc-b", "UBBB"));
    expect((await hostCertificate(sql, "4A01"))?.hostId).toBe("hc-a");
    expect(await hostCertificate(sql, "ffff")).toBeUndefined();
    expect((await hostCertificates(sql, "hc-a")).map((c) => c.serial).sort()).toEqual(["4a01", "4a02"]);
    expect(await revokeHostCertificates(sql, "hc-a")).toEqual({ certificates: 2, natsUsers: 1 });
    expect(await revokeHostCertificates(sql, "hc-a")).toEqual({ certificates: 0, natsUsers: 0 });
    expect((await hostCertificate(sql, "4a01"))?.revokedAt).toBeInstanceOf(Date);
    expect((await hostCertificate(sql, "4b01"))?.revokedAt).toBeNull();
    expect((await revokedNatsKeys(sql)).map((k) => k.publicKey)).toEqual(["UAAA"]);
  });

  it("a join token is used once, only while live; a host's unused ones can be revoked", async () => {
    const { sql } = db();
    const secret = newJoinTokenSecret();
    expect(secret).toMatch(/^stw_join_[0-9a-f]{64}$/);
    const t = (await insertToken(sql, {
      name: "join-a",
      role: "viewer",
      createdBy: "root",
      ttlMs: 3600_000,
      hostId: "hc-a",
      secretHash: hashTokenSecret(secret),
    }))!;
    expect(t).toMatchObject({ kind: "join", hostId: "hc-a", usedAt: null });
    expect((await tokenByHash(sql, hashTokenSecret(secret)))?.kind).toBe("join");
    const [first, second] = await Promise.all([useJoinToken(sql, t.id), useJoinToken(sql, t.id)]);
    expect([first, second].filter(Boolean)).toHaveLength(1);
    expect((await listTokens(sql)).map((x) => x.id)).not.toContain(t.id);
    expect((await listTokens(sql, true)).find((x) => x.id === t.id)?.usedAt).toBeInstanceOf(Date);
    // Used tokens are not revoked by a host revoke; unused ones are.
    await insertToken(sql, {
      name: "join-a2",
      role: "viewer",
      createdBy: "root",
      ttlMs: 3600_000,
      hostId: "hc-a",
      secretHash: hashTokenSecret(newJoinTokenSecret()),
    });
    expect(await revokeUnusedJoinTokens(sql, "hc-a")).toBe(1);
    expect(await revokeUnusedJoinTokens(sql, "hc-a")).toBe(0);
  });
});
