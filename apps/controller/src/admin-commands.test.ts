import { X509Certificate } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { hashTokenSecret, openDatabase, tokenByHash } from "@stowage/store";
import { makeTempDir } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseTtl, runAdminCommand } from "./admin-commands.js";

describe("stowage-controller subcommands", () => {
  let tmp: Awaited<ReturnType<typeof makeTempDir>>;
  let env: NodeJS.ProcessEnv;
  const run = async (command: "issue-cert" | "token" | "ca-cert", ...args: string[]) => {
    let out = "";
    let err = "";
    const code = await runAdminCommand(command, args, {
      out: { write: (s: string) => (out += s) },
      err: { write: (s: string) => (err += s) },
      env,
    });
    return { code, out, err };
  };
  beforeAll(async () => {
    tmp = await makeTempDir("stowage-admin-");
    env = { STOWAGE_DATA_DIR: join(tmp.path, "data"), STOWAGE_LOG_LEVEL: "silent" };
  });
  afterAll(async () => tmp?.cleanup());

  it("ca-cert prints the CA, the same each time; issue-cert writes a certificate it signed, its key 0600", async () => {
    const a = await run("ca-cert");
    expect(a.code).toBe(0);
    expect(a.out).toMatch(/^-----BEGIN CERTIFICATE-----/);
    expect((await run("ca-cert")).out).toBe(a.out);
    const out = join(tmp.path, "nats-tls");
    const r = await run(
      "issue-cert",
      "--name",
      "nats",
      "--san",
      "10.0.0.5,nats.lab",
      "--out-dir",
      out,
      "--ttl",
      "30d",
    );
    expect(r).toMatchObject({ code: 0 });
    expect((await stat(join(out, "nats.key"))).mode & 0o777).toBe(0o600);
    const cert = new X509Certificate(await readFile(join(out, "nats.crt"), "utf8"));
    expect(cert.subjectAltName).toBe("IP Address:10.0.0.5, DNS:nats.lab");
    expect(cert.checkIssued(new X509Certificate(a.out))).toBe(true);
    expect(await readFile(join(out, "ca.crt"), "utf8")).toBe(a.out);
    // Only the CA was made: the listeners' certificate is the controller's business.
    await expect(stat(join(tmp.path, "data", "pki", "server.crt"))).rejects.toThrow();
    expect((await run("issue-cert", "--name", "../x", "--san", "a", "--out-dir", out)).code).toBe(2);
    expect((await run("issue-cert", "--name", "n", "--out-dir", out)).code).toBe(2);
    expect((await run("issue-cert", "--bogus")).code).toBe(2);
    expect((await run("issue-cert", "--help")).out).toMatch(/^Usage: stowage-controller issue-cert/);
  });

  it("token create writes a bootstrap API token into the database and prints its secret once", async () => {
    const r = await run("token", "create", "--name", "root", "--role", "admin", "--ttl", "24h");
    expect(r.code).toBe(0);
    const secret = r.out.trim();
    expect(secret).toMatch(/^stw_[0-9a-f]{64}$/);
    expect(r.err).not.toContain(secret.slice(4));
    const dup = await run("token", "create", "--name", "root", "--role", "admin");
    expect(dup.code).toBe(2);
    expect(dup.err).toContain("a live token is already named root");
    expect((await run("token", "create", "--name", "x", "--role", "god")).code).toBe(2);
    expect((await run("token", "list")).code).toBe(2);
    const db = await openDatabase({ dataDir: join(tmp.path, "data") });
    try {
      const row = await tokenByHash(db.sql, hashTokenSecret(secret));
      expect(row).toMatchObject({ name: "root", role: "admin", kind: "api" });
      expect(row!.expiresAt).toBeInstanceOf(Date);
      const audit = await db.sql<{ action: string }[]>`select action from audit_log`;
      expect(audit.map((a) => a.action)).toEqual(["CreateToken"]);
    } finally {
      await db.close();
    }
  });

  it("parses lifetimes", () => {
    expect(parseTtl("365d")).toBe(365 * 86_400_000);
    expect(parseTtl("90s")).toBe(90_000);
    expect(() => parseTtl("1y")).toThrow(/not a duration/);
    expect(() => parseTtl("10ms")).toThrow(/at least 1s/);
  });
});
