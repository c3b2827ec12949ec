import { execFileSync } from "node:child_process";
import { createPrivateKey, createPublicKey, webcrypto, X509Certificate } from "node:crypto";
import { copyFile, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fromSeed } from "@nats-io/nkeys";
import * as x509 from "@peculiar/x509";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  commitIdentity,
  type HostIdentity,
  IDENTITY_FILES,
  type IdentityConfig,
  keepRenewed,
  loadIdentity,
  loadOrJoin,
  readJoinToken,
  renewalDue,
  renewIdentity,
} from "./identity.js";
import { waitUntil } from "./testing/fixture.js";
import { makeTestCa, type SecureStandIn, startSecureStandIn } from "./testing/secure-controller.js";

x509.cryptoProvider.set(webcrypto);

/** Every line the identity code logs, as pino writes it. */
const lines: string[] = [];
const log = pino({ level: "debug" }, { write: (line: string) => void lines.push(line) });
/** Every secret the tests made or were given: none may appear in a log line. */
const secrets = new Set<string>();
const noteSecrets = (id: HostIdentity) => {
  for (const s of [id.keyPem, id.natsSeed, id.natsJwt]) if (s) secrets.add(s);
  // The key's base64 body, in case a line held it without its PEM armour.
  secrets.add(id.keyPem.split("\n").slice(1, -2).join(""));
};

const spkiOf = (pem: string) =>
  createPublicKey(pem).export({ type: "spki", format: "der" }).toString("base64");

describe("the agent's memory", () => {
  it("does not load @peculiar/x509 until it joins or renews", () => {
    // @peculiar/x509 installs reflect-metadata's Reflect.getMetadata when loaded: the sign that it was.
    const script = `
      await import("./apps/agent/src/agent.ts");
      const before = typeof Reflect.getMetadata;
      await import("@peculiar/x509");
      console.log(before, typeof Reflect.getMetadata);
    `;
    const out = execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      cwd: new URL("../../../", import.meta.url).pathname,
      encoding: "utf8",
    });
    expect(out.trim()).toBe("undefined function");
  });
});

describe("host identity: join, reuse, renewal, crash-safe files", () => {
  let root: string;
  let c: SecureStandIn;
  let n = 0;
  const newConfig = (hostName: string): IdentityConfig => ({
    hostName,
    stateDir: join(root, `${hostName}-${++n}`, "state"),
    caFile: c.caFile,
  });
  const token = (host: string) => {
    const secret = `stw_join_${Buffer.from(webcrypto.getRandomValues(new Uint8Array(32))).toString("hex")}`;
    c.tokens.set(secret, host);
    secrets.add(secret);
    return secret;
  };

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "stowage-identity-"));
    c = await startSecureStandIn(root);
  });
  afterAll(async () => {
    await c?.close();
    await rm(root, { recursive: true, force: true });
  });

  it("without a certificate or a token, says how to make a token", async () => {
    const config = newConfig("lonely");
    await expect(loadOrJoin(config, c.clients, log)).rejects.toThrow(
      `no certificate in ${config.stateDir} and no join token: create one with \`stowctl token create --host lonely\` and set STOWAGE_JOIN_TOKEN`,
    );
    expect(c.joins).toHaveLength(0);
  });

  it("joins on the first start (a CSR naming the host; the key stays here), files 0600; reuses them after", async () => {
    const config = newConfig("alpha");
    const secret = token("alpha");
    const { identity: joined, joined: didJoin } = await loadOrJoin(config, c.clients, log, secret);
    expect(didJoin).toBe(true);
    noteSecrets(joined);

    const req = c.joins.at(-1);
    expect(req?.hostName).toBe("alpha");
    const csr = new x509.Pkcs10CertificateRequest(req?.csrPem ?? "");
    expect(csr.subject).toBe("CN=alpha");
    expect(await csr.verify()).toBe(true);
    // The CSR carries the public half of the key in stateDir, and nothing of the private key went out.
    const key = await readFile(join(config.stateDir, IDENTITY_FILES.key), "utf8");
    expect(Buffer.from(csr.publicKey.rawData).toString("base64")).toBe(spkiOf(key));
    expect(JSON.stringify(req)).not.toContain("PRIVATE KEY");
    expect(JSON.stringify(req)).not.toContain(key.split("\n")[1]);
    // The NATS key: its public half went out, its seed stayed, and the JWT names it.
    const seed = await readFile(join(config.stateDir, IDENTITY_FILES.natsSeed), "utf8");
    expect(req?.natsPublicKey).toMatch(/^U/);
    expect(fromSeed(new TextEncoder().encode(seed)).getPublicKey()).toBe(req?.natsPublicKey);
    expect(JSON.stringify(req)).not.toContain(seed);

    expect((await stat(config.stateDir)).mode & 0o777).toBe(0o700);
    for (const name of Object.values(IDENTITY_FILES))
      expect((await stat(join(config.stateDir, name))).mode & 0o777, name).toBe(0o600);
    const cert = new X509Certificate(await readFile(join(config.stateDir, IDENTITY_FILES.cert), "utf8"));
    expect(cert.serialNumber.toLowerCase()).toBe(joined.serial);
    expect(cert.checkPrivateKey(createPrivateKey(key))).toBe(true);

    // A second start: no token needed, no join made, the same certificate.
    const joins = c.joins.length;
    const { identity: again, joined: joinedAgain } = await loadOrJoin(config, c.clients, log);
    expect(joinedAgain).toBe(false);
    expect(again.serial).toBe(joined.serial);
    expect(again.natsJwt).toBe(joined.natsJwt);
    expect(c.joins).toHaveLength(joins);
  });

  it("refuses a used token with the controller's reason", async () => {
    const secret = token("beta");
    await loadOrJoin(newConfig("beta"), c.clients, log, secret);
    await expect(loadOrJoin(newConfig("beta"), c.clients, log, secret)).rejects.toThrow(
      /the controller refused the join: .*unknown or used/,
    );
  });

  it("renews at two thirds of a short lifetime (counted from its receipt: notBefore is backdated), and uses the new certificate from then on", async () => {
    const config = newConfig("gamma");
    c.ttlMs = 3000;
    try {
      const { identity: first } = await loadOrJoin(config, c.clients, log, token("gamma"));
      noteSecrets(first);
      const renewed: HostIdentity[] = [];
      const stop = keepRenewed({
        config,
        clients: c.clients,
        log,
        identity: first,
        onRenewed: (id) => {
          noteSecrets(id);
          renewed.push(id);
        },
      });
      try {
        await waitUntil("two renewals", () => renewed.length >= 2, 20_000);
      } finally {
        stop();
      }
      const calls = c.renewals.slice(-2);
      // Each renewal came at two thirds of the certificate it presented, before it expired.
      const [a, b] = renewed as [HostIdentity, HostIdentity];
      expect(calls[0]?.serial).toBe(first.serial);
      // Two renewals in all: a notBefore 5 min back did not make a 3 s certificate due at once, again and again.
      expect(c.renewals.filter((r) => r.at >= (first.receivedAt?.getTime() ?? 0))).toHaveLength(2);
      expect(calls[0]?.at).toBeGreaterThanOrEqual((first.receivedAt?.getTime() ?? 0) + 1300);
      expect(calls[0]?.at).toBeGreaterThanOrEqual(renewalDue(first));
      expect(calls[0]?.at).toBeLessThan(first.notAfter.getTime());
      // The second renewal presented the first renewal's certificate: the new one is used for new connections.
      expect(calls[1]?.serial).toBe(a.serial);
      expect(calls[1]?.at).toBeGreaterThanOrEqual(renewalDue(a));
      expect(b.serial).not.toBe(a.serial);
      expect(spkiOf(b.keyPem)).not.toBe(spkiOf(a.keyPem));
      expect(b.natsSeed).not.toBe(a.natsSeed);
      // What is on disk is the last renewal's.
      const loaded = await loadIdentity(config, log);
      expect(loaded?.serial).toBe(c.issued.at(-1));
    } finally {
      c.ttlMs = 3600_000;
    }
  });

  it("a crash between the writes of a renewal still loads a matching pair", async () => {
    const config = newConfig("delta");
    const { identity: old } = await loadOrJoin(config, c.clients, log, token("delta"));
    c.ttlMs = 2 * 3600_000;
    const renewed = await renewIdentity(config, c.clients, old, log).finally(() => {
      c.ttlMs = 3600_000;
    });
    noteSecrets(old);
    noteSecrets(renewed);
    const file = (name: string) => join(config.stateDir, name);

    // Only the new key reached its place: host.key is new, host.crt the old one, nothing else left to rename.
    await writeFile(file(IDENTITY_FILES.key), renewed.keyPem);
    await copyFile(file(`${IDENTITY_FILES.cert}.prev`), file(IDENTITY_FILES.cert));
    const fallback = await loadIdentity(config, log);
    expect(fallback?.serial).toBe(old.serial);
    expect(fallback?.keyPem).toBe(old.keyPem);
    // ... and the pair in place matches again.
    const placed = new X509Certificate(await readFile(file(IDENTITY_FILES.cert), "utf8"));
    expect(placed.checkPrivateKey(createPrivateKey(await readFile(file(IDENTITY_FILES.key), "utf8")))).toBe(
      true,
    );

    // Interrupted after the key's rename, before the certificate's: the new set is completed.
    await commitIdentity(config.stateDir, renewed, old);
    await writeFile(file(IDENTITY_FILES.cert), old.certPem);
    await writeFile(file(`${IDENTITY_FILES.cert}.next`), renewed.certPem);
    const completed = await loadIdentity(config, log);
    expect(completed?.serial).toBe(renewed.serial);
    expect(completed?.keyPem).toBe(renewed.keyPem);
    expect(await readFile(file(IDENTITY_FILES.cert), "utf8")).toBe(renewed.certPem);
    await expect(stat(file(`${IDENTITY_FILES.cert}.next`))).rejects.toThrow(/ENOENT/);

    // The NATS pair likewise: the new JWT in place with the old seed still there, the new seed not yet renamed.
    await commitIdentity(config.stateDir, renewed, old);
    await writeFile(file(IDENTITY_FILES.natsSeed), old.natsSeed);
    await writeFile(file(`${IDENTITY_FILES.natsSeed}.next`), renewed.natsSeed);
    const nats = await loadIdentity(config, log);
    expect([nats?.natsJwt, nats?.natsSeed]).toEqual([renewed.natsJwt, renewed.natsSeed]);
    expect(await readFile(file(IDENTITY_FILES.natsSeed), "utf8")).toBe(renewed.natsSeed);
  });

  it("does not join a controller that caFile does not trust, and says what to check", async () => {
    const other = await makeTestCa("another CA");
    const caFile = join(root, "other-ca.crt");
    await writeFile(caFile, other.caPem);
    const joins = c.joins.length;
    await expect(
      loadOrJoin({ ...newConfig("epsilon"), caFile }, c.clients, log, token("epsilon")),
    ).rejects.toThrow(
      /cannot join the cluster: .*certificate.*is caFile .* the CA that signed the controller's/,
    );
    expect(c.joins).toHaveLength(joins);
  });

  it("reads the token from joinTokenFile when it exists, else from STOWAGE_JOIN_TOKEN", async () => {
    const path = join(root, "join-token");
    expect(await readJoinToken({ joinTokenFile: path }, { STOWAGE_JOIN_TOKEN: "stw_join_env" })).toBe(
      "stw_join_env",
    );
    await writeFile(path, "stw_join_file\n");
    expect(await readJoinToken({ joinTokenFile: path }, {})).toBe("stw_join_file");
    expect(await readJoinToken({}, {})).toBeUndefined();
  });

  it("logged none of the secrets (tokens, keys, seeds, JWTs)", () => {
    expect(lines.length).toBeGreaterThan(5);
    expect(secrets.size).toBeGreaterThan(10);
    const all = lines.join("");
    for (const s of secrets) expect(all.includes(s), `a secret in the log: ${s.slice(0, 12)}...`).toBe(false);
    expect(all).not.toMatch(/PRIVATE KEY|stw_join_|"SU[A-Z2-7]{10}/);
  });
});
