import { describe, expect, it } from "vitest";
import {
  type AuditEntry,
  auditRequest,
  isSecretKey,
  listAudit,
  MAX_AUDIT_REQUEST,
  REDACTED,
  redactSecrets,
  writeAudit,
} from "./audit.js";
import { backends, migratedDatabase } from "./testing/backends.js";

const JOIN_TOKEN = `stw_join_${"a1".repeat(32)}`;
const API_TOKEN = `stw_${"b2".repeat(32)}`;
const CHAP = "chap-secret-Xy9!";
const PRIVATE_KEY = `-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg${"Q".repeat(40)}\n-----END PRIVATE KEY-----\n`;
const SEED = `SUA${"B".repeat(55)}`;
const JWT =
  "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJBQkNERUZHIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ";

describe("audit request redaction", () => {
  it("redacts secret-named keys at any depth and keeps ids, cursors and public keys", () => {
    const out = auditRequest({
      joinToken: JOIN_TOKEN,
      host: { name: "node1", credentials: { user: "u", password: "p" } },
      exports: [{ volume: "v1", chap: true, chapSecret: CHAP, auth: { chap_secret: CHAP } }],
      tls: { keyPem: PRIVATE_KEY, certPem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----" },
      nats: { seed: SEED, jwt: JWT, natsPublicKey: "UABC", publicKey: "UDEF" },
      tokenId: "tok-1",
      pageToken: "abc",
      page_token: "def",
      apiKey: 12345,
      size: 10n,
      csr: new Uint8Array(300),
    });
    const text = JSON.stringify(out);
    for (const secret of [JOIN_TOKEN, CHAP, "MIGHAgEA", SEED, JWT, '"p"', "12345"])
      expect(text).not.toContain(secret);
    expect(out).toMatchObject({
      joinToken: REDACTED,
      host: { name: "node1", credentials: REDACTED },
      exports: [{ volume: "v1", chap: true, chapSecret: REDACTED, auth: { chap_secret: REDACTED } }],
      tls: { keyPem: REDACTED, certPem: expect.stringContaining("CERTIFICATE") },
      nats: { seed: REDACTED, jwt: REDACTED, natsPublicKey: "UABC", publicKey: "UDEF" },
      tokenId: "tok-1",
      pageToken: "abc",
      page_token: "def",
      apiKey: REDACTED,
      size: "10",
      csr: "[300 bytes]",
    });
  });

  it("redacts secret-shaped strings under innocent keys, and in any text", () => {
    const out = auditRequest({
      name: API_TOKEN,
      note: `pasted ${JOIN_TOKEN} and ${PRIVATE_KEY} here`,
      list: [SEED, JWT],
    });
    expect(JSON.stringify(out)).not.toMatch(/stw_|MIGHAgEA|SUAB|eyJ0/);
    expect(out.note).toBe(`pasted ${REDACTED} and ${REDACTED}\n here`);
    expect(redactSecrets(`error: token ${API_TOKEN} refused`)).toBe(`error: token ${REDACTED} refused`);
    expect(redactSecrets("vol-0192f7c4e5a87b3c9d1e2f3a4b5c6d7e")).toBe(
      "vol-0192f7c4e5a87b3c9d1e2f3a4b5c6d7e",
    );
  });

  it("decides secret keys by name", () => {
    for (const k of [
      "secret",
      "join_token",
      "password",
      "passwd",
      "passphrase",
      "privateKey",
      "seed",
      "userJwt",
    ])
      expect(isSecretKey(k), k).toBe(true);
    for (const k of ["chap_secret", "chapSecret", "credentials", "key", "api-key", "Authorization"])
      expect(isSecretKey(k), k).toBe(true);
    for (const k of ["tokenId", "token_id", "pageToken", "page_token", "next_page_token", "natsPublicKey"])
      expect(isSecretKey(k), k).toBe(false);
    for (const k of ["publicKey", "name", "volume", "hostId", "requestId", "sizeBytes", "labels", "reason"])
      expect(isSecretKey(k), k).toBe(false);
  });

  it("keeps at most 16 KiB of JSON: long strings and arrays are cut first, then only the size is kept", () => {
    const long = auditRequest({
      name: "v1",
      blob: "x".repeat(40_000),
      items: Array.from({ length: 500 }, (_, i) => i),
    });
    expect(JSON.stringify(long).length).toBeLessThanOrEqual(MAX_AUDIT_REQUEST);
    expect(long).toMatchObject({ name: "v1", truncated: true });
    expect(String(long.blob)).toMatch(/^x{256}…\[39744 more characters\]$/);
    expect(long.items).toHaveLength(21);
    const wide = auditRequest(
      Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [`k${i}`, "y".repeat(200)])),
    );
    expect(JSON.stringify(wide).length).toBeLessThanOrEqual(MAX_AUDIT_REQUEST);
    expect(wide).toMatchObject({ truncated: true, bytes: expect.any(Number) });
  });

  it("drops protobuf type names, NUL and lone surrogates, and survives cycles", () => {
    const cyclic: Record<string, unknown> = { $typeName: "stowage.v1.X", name: "a\u0000b\ud800" };
    cyclic.self = cyclic;
    expect(auditRequest(cyclic)).toEqual({ name: "ab\ufffd", self: "[circular]" });
    expect(auditRequest(undefined)).toEqual({});
    expect(auditRequest("text")).toEqual({ value: "text" });
  });
});

describe.each(backends)("audit log on %s", (_name, makeBackend) => {
  const db = migratedDatabase(makeBackend);

  it("stores role and source, never the secrets of a nested request, and an oversized request bounded", async () => {
    const { sql } = db();
    await writeAudit(sql, {
      actor: "host:node9",
      role: "agent",
      source: "203.0.113.9:50000",
      action: "Join",
      target: "node9",
      request: {
        joinToken: JOIN_TOKEN,
        hostName: "node9",
        export: { chap: { user: "iqn", secret: CHAP } },
        tls: { key: PRIVATE_KEY },
        blob: "z".repeat(100_000),
      },
      outcome: "denied",
      error: `permission_denied: join token ${JOIN_TOKEN} was used already`,
    });
    const [row] = await listAudit(sql, { actor: "host:node9", limit: 10 });
    expect(row).toMatchObject({
      role: "agent",
      source: "203.0.113.9:50000",
      outcome: "denied",
      target: "node9",
    });
    const stored = JSON.stringify(
      await sql`select to_jsonb(a) as r from audit_log a where actor = 'host:node9'`,
    );
    for (const secret of [JOIN_TOKEN, CHAP, "MIGHAgEA"]) expect(stored).not.toContain(secret);
    expect(row!.request).toMatchObject({ hostName: "node9", joinToken: REDACTED, truncated: true });
    expect(row!.error).toBe(`permission_denied: join token ${REDACTED} was used already`);
    const [size] = await sql<{ n: number }[]>`select octet_length(request::text)::int as n from audit_log
      where actor = 'host:node9'`;
    expect(size!.n).toBeLessThanOrEqual(MAX_AUDIT_REQUEST + 1024);
    // Without role and source (a row of the controller's own): both empty.
    await writeAudit(sql, { actor: "controller", action: "AdoptLateCreate", outcome: "ok" });
    const [own] = await listAudit(sql, { actor: "controller", limit: 1 });
    expect(own).toMatchObject({ role: "", source: "", target: "" });
  });

  it("filters exactly by actor, target, action, outcome and time, newest first, and pages by id", async () => {
    const { sql } = db();
    const base: AuditEntry = {
      actor: "alice",
      role: "operator",
      source: "10.0.0.1:1",
      action: "CreateVolume",
      outcome: "ok",
    };
    const entries: AuditEntry[] = [];
    for (let i = 0; i < 7; i++) entries.push({ ...base, target: `vol-f${i}` });
    entries.push({ ...base, actor: "bob", role: "viewer", outcome: "denied", target: "vol-f0" });
    entries.push({
      ...base,
      action: "DeleteVolume",
      target: "vol-f1",
      outcome: "error",
      error: "not_found: x",
    });
    for (const e of entries) await writeAudit(sql, e);
    await sql`update audit_log set at = '2020-01-01T00:00:00Z' where target = 'vol-f6'`;

    const alice = await listAudit(sql, { actor: "alice", limit: 100 });
    expect(alice.map((r) => r.target)).toEqual([
      "vol-f1",
      "vol-f6",
      "vol-f5",
      "vol-f4",
      "vol-f3",
      "vol-f2",
      "vol-f1",
      "vol-f0",
    ]);
    expect(alice.map((r) => r.id)).toEqual([...alice.map((r) => r.id)].sort((a, b) => (a > b ? -1 : 1)));
    expect((await listAudit(sql, { target: "vol-f0", limit: 100 })).map((r) => r.actor)).toEqual([
      "bob",
      "alice",
    ]);
    expect((await listAudit(sql, { action: "DeleteVolume", limit: 100 })).map((r) => r.outcome)).toEqual([
      "error",
    ]);
    const denied = await listAudit(sql, { outcome: "denied", action: "CreateVolume", limit: 100 });
    expect(denied.map((r) => [r.actor, r.role])).toEqual([["bob", "viewer"]]);
    expect(await listAudit(sql, { actor: "alice", outcome: "denied", limit: 100 })).toEqual([]);
    const old = await listAudit(sql, { actor: "alice", until: new Date("2021-01-01T00:00:00Z"), limit: 100 });
    expect(old.map((r) => r.target)).toEqual(["vol-f6"]);
    const recent = await listAudit(sql, {
      actor: "alice",
      since: new Date("2021-01-01T00:00:00Z"),
      limit: 100,
    });
    expect(recent).toHaveLength(7);
    expect(recent.map((r) => r.target)).not.toContain("vol-f6");

    // Keyset paging: each page continues below the last id of the one before, nothing repeated or skipped.
    const seen: string[] = [];
    let before: bigint | undefined;
    for (;;) {
      const page = await listAudit(sql, {
        actor: "alice",
        limit: 3,
        ...(before !== undefined ? { before } : {}),
      });
      seen.push(...page.map((r) => r.id.toString()));
      if (page.length < 3) break;
      before = page[page.length - 1]!.id;
    }
    expect(seen).toEqual(alice.map((r) => r.id.toString()));
  });

  it("has the indexes the filters use", async () => {
    const { sql } = db();
    const rows = await sql<
      { indexname: string }[]
    >`select indexname from pg_indexes where tablename = 'audit_log'`;
    expect(rows.map((r) => r.indexname).sort()).toEqual(
      ["audit_log_action", "audit_log_actor", "audit_log_at", "audit_log_pkey", "audit_log_target"].sort(),
    );
  });

  it("refuses an outcome other than ok, error and denied", async () => {
    const { sql } = db();
    await expect(
      writeAudit(sql, { actor: "a", action: "X", outcome: "maybe" as AuditEntry["outcome"] }),
    ).rejects.toThrow(/audit_log_outcome/);
  });
});
