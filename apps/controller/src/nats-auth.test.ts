import { webcrypto } from "node:crypto";
import { readFile, stat, writeFile } from "node:fs/promises";
import { connect as tcpConnect } from "node:net";
import { join } from "node:path";
import { decode as decodeJwt, type User } from "@nats-io/jwt";
import { createUser, type KeyPair } from "@nats-io/nkeys";
import { connect, jwtAuthenticator, type NatsConnection, type Status } from "@nats-io/transport-node";
import * as x509 from "@peculiar/x509";
import {
  ALL_HEARTBEATS,
  agentConsumerName,
  agentDeadLetterSubject,
  agentInboxPrefix,
  type Bus,
  COMMAND_STREAM,
  commandSubject,
  connectBus,
  ensureAgentConsumer,
  ensureResultConsumer,
  ensureStreams,
  heartbeatSubject,
  inventoryRequestSubject,
  RESULT_STREAM,
  resultSubject,
  tlsIdentityHost,
} from "@stowage/bus";
import { type Database, migrate, openDatabase } from "@stowage/store";
import { createLogger } from "@stowage/telemetry";
import {
  freePorts,
  makeTempDir,
  natsAvailable,
  natsServerPath,
  postgresAvailable,
  type Service,
  spawnService,
  type TempDir,
  testPostgres,
} from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadControllerConfig } from "./config.js";
import type { NatsAuthority } from "./context.js";
import { startController } from "./controller.js";
import {
  controllerCredentials,
  createNatsAuthority,
  keepRevocationsPushed,
  loadNatsKeys,
  type NatsKeys,
  natsTlsEnabled,
} from "./nats-auth.js";
import { natsConfigCommand, natsServerConfig } from "./nats-config.js";

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const HOST_A = "node-a.rack1";
const HOST_B = "node-b";

const ECDSA = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString("base64");
  return `-----BEGIN ${label}-----\n${b64.replace(/.{64}/g, "$&\n").replace(/\n$/, "")}\n-----END ${label}-----\n`;
}

/** A CA and a certificate for 127.0.0.1 signed by it (PEM), as an operator would give the NATS server. */
async function testCertificates(): Promise<{ ca: string; cert: string; key: string }> {
  const notBefore = new Date(Date.now() - 60_000);
  const notAfter = new Date(Date.now() + 24 * 3600_000);
  const caKeys = await webcrypto.subtle.generateKey(ECDSA, true, ["sign", "verify"]);
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: "CN=stowage test CA",
    notBefore,
    notAfter,
    keys: caKeys,
    signingAlgorithm: ECDSA,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    ],
  });
  const keys = await webcrypto.subtle.generateKey(ECDSA, true, ["sign", "verify"]);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: "02",
    subject: "CN=127.0.0.1",
    issuer: ca.subject,
    notBefore,
    notAfter,
    signingKey: caKeys.privateKey,
    publicKey: keys.publicKey,
    signingAlgorithm: ECDSA,
    extensions: [
      new x509.SubjectAlternativeNameExtension([{ type: "ip", value: "127.0.0.1" }]),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
    ],
  });
  return {
    ca: ca.toString("pem"),
    cert: cert.toString("pem"),
    key: pem("PRIVATE KEY", await webcrypto.subtle.exportKey("pkcs8", keys.privateKey)),
  };
}

/** The next error status of `nc` naming `subject` (a permissions violation), or undefined after `ms`. */
async function nextViolation(nc: NatsConnection, subject: string, ms = 3000): Promise<Error | undefined> {
  const it = nc.status()[Symbol.asyncIterator]();
  const timeout = new Promise<undefined>((r) => setTimeout(() => r(undefined), ms));
  for (;;) {
    const next = await Promise.race([it.next(), timeout]);
    if (!next || next.done) return undefined;
    const s = next.value as Status;
    if (s.type === "error" && String(s.error).includes(subject)) return s.error;
  }
}

describe.skipIf(!natsAvailable())("NATS JWT auth against a real nats-server (TLS, full resolver)", () => {
  let dir: TempDir;
  let db: Database;
  let keys: NatsKeys;
  let server: Service;
  let startServer: () => Promise<Service>;
  let url: string;
  let certs: { ca: string; cert: string; key: string };
  let authority: NatsAuthority;
  let controller: Bus;
  const opened: { close(): Promise<void> }[] = [];

  /** Credentials of a new agent key for `host`, as Join gives them. */
  async function agentCredentials(host: string): Promise<{ kp: KeyPair; jwt: string; seed: string }> {
    const kp = createUser();
    const jwt = await authority.mintAgentJwt(host, kp.getPublicKey(), new Date(Date.now() + 3600_000));
    return { kp, jwt, seed: new TextDecoder().decode(kp.getSeed()) };
  }

  async function agentBus(host: string, creds: { jwt: string | (() => string); seed: string }): Promise<Bus> {
    const bus = await connectBus({
      servers: url,
      name: `agent-${host}`,
      credentials: creds,
      tlsCa: certs.ca,
      inboxPrefix: agentInboxPrefix(host),
    });
    opened.push(bus);
    return bus;
  }

  beforeAll(async () => {
    dir = await makeTempDir("stowage-nats-auth-");
    certs = await testCertificates();
    for (const [name, text] of Object.entries(certs)) await writeFile(join(dir.path, `${name}.pem`), text);
    const [port, monitorPort] = await freePorts(2);
    url = `nats://127.0.0.1:${port}`;
    // Paths the config must quote: a space, a quote, a dollar sign (a variable when unquoted), a backslash.
    const odd = join(dir.path, 'js "dir" $HOME \\x');
    const conf = join(dir.path, "nats.conf");
    const printed: string[] = [];
    const code = await natsConfigCommand(
      [
        "--out",
        conf,
        "--listen",
        `127.0.0.1:${port}`,
        "--tls-cert",
        join(dir.path, "cert.pem"),
        "--tls-key",
        join(dir.path, "key.pem"),
        "--tls-ca",
        join(dir.path, "ca.pem"),
        "--jetstream-dir",
        odd,
        "--resolver-dir",
        join(dir.path, "accounts"),
        "--pki-dir",
        join(dir.path, "pki"),
        "--jetstream-max-memory",
        String(64 * 1024 * 1024),
        "--jetstream-max-file",
        String(512 * 1024 * 1024),
      ],
      {},
      (s) => printed.push(s),
      (s) => printed.push(s),
    );
    expect(code, printed.join("")).toBe(0);
    expect(printed.join("")).toContain("nats-server -c");
    keys = await loadNatsKeys(join(dir.path, "pki"));
    startServer = () =>
      spawnService({
        name: "nats-server (jwt)",
        command: natsServerPath()!,
        args: ["-c", conf, "-m", String(monitorPort)],
        readyWhen: `http://127.0.0.1:${monitorPort}/healthz?js-enabled-only=true`,
        readyTimeoutMs: 20_000,
        logFile: join(dir.path, "nats.log"),
      });
    server = await startServer();
    db = await openDatabase({ dataDir: join(dir.path, "db") });
    await migrate(db.sql);
    authority = createNatsAuthority({ keys, sql: db.sql, nats: { servers: url, tlsCa: certs.ca } });
    controller = await connectBus({
      servers: url,
      name: "controller",
      credentials: await controllerCredentials(keys),
      tlsCa: certs.ca,
    });
    opened.push(controller);
  }, 60_000);

  afterAll(async () => {
    for (const c of opened.reverse()) await c.close().catch(() => {});
    await server?.stop();
    await db?.close();
    await dir?.cleanup();
  });

  it("keeps the signing keys in 0600 files that a second load reads back", async () => {
    const pki = join(dir.path, "pki");
    for (const f of ["nats-operator.nk", "nats-account.nk", "nats-sys.nk"])
      expect((await stat(join(pki, f))).mode & 0o777).toBe(0o600);
    expect((await stat(pki)).mode & 0o777).toBe(0o700);
    const again = await loadNatsKeys(pki);
    expect(again.account.getPublicKey()).toBe(keys.account.getPublicKey());
    expect((await stat(join(dir.path, "nats.conf"))).mode & 0o777).toBe(0o600);
  });

  it("makes one set of keys when several processes load a new directory at once", async () => {
    const pki = join(dir.path, "pki-race");
    const loaded = await Promise.all(Array.from({ length: 8 }, () => loadNatsKeys(pki)));
    expect(new Set(loaded.map((k) => k.operator.getPublicKey())).size).toBe(1);
    expect(new Set(loaded.map((k) => k.system.getPublicKey())).size).toBe(1);
  });

  it("refuses a seed file of the wrong kind without showing it", async () => {
    const pki = join(dir.path, "pki-bad");
    await loadNatsKeys(pki);
    const user = new TextDecoder().decode(createUser().getSeed());
    await writeFile(join(pki, "nats-account.nk"), user);
    await expect(loadNatsKeys(pki)).rejects.toThrow(/wrong kind/);
    await expect(loadNatsKeys(pki)).rejects.not.toThrow(user);
  });

  it("lets the controller's credentials do what the controller does", async () => {
    await ensureStreams(controller.jsm);
    await ensureAgentConsumer(controller.jsm, HOST_A);
    await ensureAgentConsumer(controller.jsm, HOST_B);
    await ensureResultConsumer(controller.jsm);
    await controller.js.publish(commandSubject(HOST_B), new TextEncoder().encode("for b"));
    const sub = controller.nc.subscribe(ALL_HEARTBEATS, { max: 1 });
    controller.nc.publish(heartbeatSubject(HOST_B), new TextEncoder().encode("hb"));
    for await (const m of sub) expect(m.subject).toBe(heartbeatSubject(HOST_B));
  });

  it("mints an agent JWT of exactly its host's subjects, until the given time", async () => {
    const kp = createUser();
    const exp = new Date(Date.now() + 3600_000);
    const claims = decodeJwt<User>(await authority.mintAgentJwt(HOST_A, kp.getPublicKey(), exp));
    expect(claims.sub).toBe(kp.getPublicKey());
    expect(claims.iss).toBe(keys.account.getPublicKey());
    expect(claims.exp).toBe(Math.floor(exp.getTime() / 1000));
    expect(claims.nats.resp).toBeUndefined();
    expect(claims.nats.pub?.allow?.sort()).toEqual(
      [
        "stowage.result.node-a~rack1",
        "stowage.heartbeat.node-a~rack1",
        "stowage.inventory.node-a~rack1",
        "$JS.API.CONSUMER.INFO.STOWAGE_COMMANDS.agent-node-a~rack1",
        "$JS.API.CONSUMER.MSG.NEXT.STOWAGE_COMMANDS.agent-node-a~rack1",
        "$JS.ACK.STOWAGE_COMMANDS.agent-node-a~rack1.>",
        "stowage.dead.commands.node-a~rack1",
      ].sort(),
    );
    expect(claims.nats.sub?.allow?.sort()).toEqual(
      ["_INBOX_node-a~rack1.>", "stowage.inventory.request.node-a~rack1"].sort(),
    );
    await expect(authority.mintAgentJwt(HOST_A, keys.account.getPublicKey(), exp)).rejects.toThrow(
      /not a user key/,
    );
    await expect(authority.mintAgentJwt(HOST_A, "nonsense", exp)).rejects.toThrow(/not an nkey/);
  });

  it("lets agent A pull and ack its own commands and publish its own result, heartbeat and inventory", async () => {
    const a = await agentBus(HOST_A, await agentCredentials(HOST_A));
    await controller.js.publish(commandSubject(HOST_A), new TextEncoder().encode("cmd-a"));
    const consumer = await a.js.consumers.get(COMMAND_STREAM, agentConsumerName(HOST_A));
    const msg = await consumer.next({ expires: 5000 });
    expect(msg && new TextDecoder().decode(msg.data)).toBe("cmd-a");
    msg!.working();
    await msg!.ackAck();
    // Results go through JetStream (the ack comes back on A's own inbox).
    const ack = await a.js.publish(resultSubject(HOST_A), new TextEncoder().encode("result-a"));
    expect(ack.stream).toBe(RESULT_STREAM);
    // A poison command is parked in the dead-letter stream.
    expect((await a.js.publish(agentDeadLetterSubject(HOST_A), new TextEncoder().encode("x"))).stream).toBe(
      "STOWAGE_DEAD_LETTERS",
    );
    const heard = controller.nc.subscribe(heartbeatSubject(HOST_A), { max: 1 });
    await controller.nc.flush();
    a.nc.publish(heartbeatSubject(HOST_A), new TextEncoder().encode("hb"));
    for await (const m of heard) expect(m.subject).toBe(heartbeatSubject(HOST_A));
    // The controller's inventory request reaches it.
    const asked = a.nc.subscribe(inventoryRequestSubject(HOST_A), { max: 1 });
    await a.nc.flush();
    controller.nc.publish(inventoryRequestSubject(HOST_A));
    for await (const m of asked) expect(m.subject).toBe(inventoryRequestSubject(HOST_A));
    expect(await nextViolation(a.nc, "stowage", 300)).toBeUndefined();
  });

  it("refuses agent A B's commands, inbox and consumer, and B's result subject", async () => {
    const a = await agentBus(HOST_A, await agentCredentials(HOST_A));
    for (const subject of [commandSubject(HOST_B), `${agentInboxPrefix(HOST_B)}.>`, "stowage.>", ">"]) {
      const seen = nextViolation(a.nc, subject);
      const sub = a.nc.subscribe(subject);
      await a.nc.flush();
      expect(String(await seen), subject).toMatch(/permissions violation for subscription/i);
      await expect(sub.closed).resolves.toBeInstanceOf(Error);
    }
    await expect(a.js.consumers.get(COMMAND_STREAM, agentConsumerName(HOST_B))).rejects.toThrow(
      /permission/i,
    );
    const nextB = `$JS.API.CONSUMER.MSG.NEXT.${COMMAND_STREAM}.${agentConsumerName(HOST_B)}`;
    await expect(a.nc.request(nextB, undefined, { timeout: 3000 })).rejects.toThrow(/permission/i);
    // Publishing as B, or where only the controller may (its commands, JetStream's administration), is refused.
    for (const subject of [
      resultSubject(HOST_B),
      heartbeatSubject(HOST_B),
      commandSubject(HOST_A),
      `$JS.API.STREAM.DELETE.${COMMAND_STREAM}`,
      "$JS.API.INFO",
    ]) {
      const seen = nextViolation(a.nc, subject);
      a.nc.publish(subject, new TextEncoder().encode("forged"));
      await a.nc.flush();
      expect(String(await seen), subject).toMatch(/permissions violation for publish/i);
    }
    // Nothing forged reached the result stream: the controller's consumer sees only A's result.
    const results = await controller.js.consumers.get(RESULT_STREAM, "controller-results");
    const batch = await results.fetch({ max_messages: 10, expires: 1500 });
    const subjects: string[] = [];
    for await (const m of batch) {
      subjects.push(m.subject);
      m.ack();
    }
    expect(subjects.every((s) => s === resultSubject(HOST_A))).toBe(true);
  });

  it("reconnects an agent whose JWT expired with the renewed one it is given", async () => {
    const kp = createUser();
    let jwt = await authority.mintAgentJwt(HOST_B, kp.getPublicKey(), new Date(Date.now() + 2000));
    const b = await agentBus(HOST_B, { jwt: () => jwt, seed: new TextDecoder().decode(kp.getSeed()) });
    jwt = await authority.mintAgentJwt(HOST_B, kp.getPublicKey(), new Date(Date.now() + 3600_000));
    const seen: string[] = [];
    for await (const s of b.nc.status()) {
      seen.push(s.type);
      if (s.type === "reconnect") break;
    }
    expect(seen).toContain("disconnect");
    b.nc.publish(heartbeatSubject(HOST_B), new TextEncoder().encode("hb"));
    await b.nc.flush();
    expect(b.nc.isClosed()).toBe(false);
  }, 20_000);

  it("closes a revoked agent's connection within 10 s and refuses it from then on", async () => {
    const creds = await agentCredentials(HOST_A);
    const other = await agentCredentials(HOST_B);
    const nc = await connect({
      servers: url,
      authenticator: jwtAuthenticator(creds.jwt, new TextEncoder().encode(creds.seed)),
      tls: { ca: certs.ca, ...tlsIdentityHost(url) },
      inboxPrefix: agentInboxPrefix(HOST_A),
      reconnectTimeWait: 200,
    });
    const b = await agentBus(HOST_B, other);
    const closed = nc.closed();
    await db.sql`
      insert into host_certificates (serial, host_id, fingerprint_sha256, not_before, not_after, nats_public_key,
        issued_by, revoked_at)
      values ('aa01', ${HOST_A}, 'f', now(), now() + interval '1 hour', ${creds.kp.getPublicKey()}, 'join:t', now())`;
    const t0 = Date.now();
    await authority.pushRevocations();
    const err = await Promise.race([closed, new Promise((r) => setTimeout(() => r("still open"), 10_000))]);
    expect(err).not.toBe("still open");
    expect(String(err)).toMatch(/revoked|authorization/i);
    expect(Date.now() - t0).toBeLessThan(10_000);
    await expect(
      connect({
        servers: url,
        authenticator: jwtAuthenticator(creds.jwt, new TextEncoder().encode(creds.seed)),
        tls: { ca: certs.ca, ...tlsIdentityHost(url) },
        reconnect: false,
      }),
    ).rejects.toThrow(/revoked|authorization/i);
    // A revoked key gets no new JWT; the other agent is untouched; a second push changes nothing.
    await expect(
      authority.mintAgentJwt(HOST_A, creds.kp.getPublicKey(), new Date(Date.now() + 60_000)),
    ).rejects.toThrow(/revoked/);
    await authority.pushRevocations();
    expect(b.nc.isClosed()).toBe(false);
    await b.nc.flush();
    // The server keeps the revocation across a restart (its resolver directory), over its preloaded account JWT.
    await server.stop();
    server = await startServer();
    await expect(
      connect({
        servers: url,
        authenticator: jwtAuthenticator(creds.jwt, new TextEncoder().encode(creds.seed)),
        tls: { ca: certs.ca, ...tlsIdentityHost(url) },
        reconnect: false,
      }),
    ).rejects.toThrow(/revoked|authorization/i);
  }, 40_000);

  it("starts a controller with STOWAGE_NATS_AUTH=jwt over TLS: its own credentials, an authority, a push", async () => {
    // On PostgreSQL: the leader holds the lease's advisory lock meanwhile, and a push takes one of its own.
    const pg = postgresAvailable() ? await testPostgres() : undefined;
    const config = loadControllerConfig(
      {},
      {
        ...(pg ? { databaseUrl: pg.url } : {}),
        dataDir: join(dir.path, "controller"),
        pkiDir: join(dir.path, "pki"),
        natsUrl: url,
        natsAuth: "jwt",
        natsCaFile: join(dir.path, "ca.pem"),
        grpcListen: "127.0.0.1:0",
        metricsListen: "127.0.0.1:0",
        logLevel: "silent",
      },
    );
    // On loopback, auto means plaintext; this server wants TLS.
    expect(natsTlsEnabled(config)).toBe(false);
    const handle = await startController({ ...config, natsTls: "on" });
    try {
      const authority = handle.context.natsAuthority!;
      expect(authority).toBeDefined();
      await expect.poll(() => handle.leading, { timeout: 10_000 }).toBe(true);
      await authority.pushRevocations();
      const creds = createUser();
      const jwt = await authority.mintAgentJwt(HOST_B, creds.getPublicKey(), new Date(Date.now() + 60_000));
      const nc = await connect({
        servers: url,
        authenticator: jwtAuthenticator(jwt, creds.getSeed()),
        tls: { ca: certs.ca, ...tlsIdentityHost(url) },
        reconnect: false,
      });
      await nc.close();
    } finally {
      await handle.stop();
      await pg?.release();
    }
    expect(natsTlsEnabled({ natsTls: "auto", natsUrl: "nats://203.0.113.5:4222" })).toBe(true);
    expect(natsTlsEnabled({ natsTls: "auto", natsUrl: "nats://127.0.0.1:4222,nats://localhost:4223" })).toBe(
      false,
    );
  }, 30_000);

  it("refuses a plaintext client and a client that does not trust the server's CA", async () => {
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = tcpConnect({ host: "127.0.0.1", port: Number(new URL(url).port) });
      let text = "";
      socket.on("data", (d) => {
        text += d.toString();
        if (text.startsWith("INFO") && text.includes("\r\n") && !text.includes("CONNECT_SENT")) {
          text += "CONNECT_SENT";
          socket.write('CONNECT {"verbose":false}\r\nPING\r\n');
        }
      });
      socket.on("close", () => resolve(text));
      socket.on("error", reject);
      setTimeout(() => {
        socket.destroy();
        resolve(text);
      }, 5000);
    });
    expect(answer).toMatch(/"tls_required":true/);
    expect(answer).not.toMatch(/PONG/);
    const creds = await agentCredentials(HOST_B);
    await expect(
      connect({
        servers: url,
        authenticator: jwtAuthenticator(creds.jwt, new TextEncoder().encode(creds.seed)),
        reconnect: false,
        timeout: 3000,
      }),
    ).rejects.toThrow();
    const ok = await connect({
      servers: url,
      authenticator: jwtAuthenticator(creds.jwt, new TextEncoder().encode(creds.seed)),
      tls: { ca: certs.ca, ...tlsIdentityHost(url) },
      reconnect: false,
    });
    await ok.close();
  });
});

describe("nats-config", () => {
  it("needs --out, and the TLS certificate with its key", async () => {
    const err: string[] = [];
    const run = (args: string[]) =>
      natsConfigCommand(
        args,
        {},
        () => {},
        (s) => err.push(s),
      );
    expect(await run([])).toBe(2);
    expect(await run(["--out", "/nonexistent/x.conf", "--tls-cert", "c.pem"])).toBe(2);
    expect(await run(["--bogus"])).toBe(2);
    expect(err.join("")).toMatch(/--out is required[\s\S]*go together/);
  });

  it("quotes every path and refuses control characters and a bad listen address", async () => {
    const dir = await makeTempDir("stowage-nats-config-");
    try {
      const keys = await loadNatsKeys(join(dir.path, "pki"));
      const text = await natsServerConfig(keys, {
        jetstreamDir: '/var/lib/a "b" $X',
        resolverDir: "/r",
      });
      expect(text).toContain('store_dir: "/var/lib/a \\"b\\" $X"');
      expect(text).not.toContain("tls {");
      await expect(natsServerConfig(keys, { jetstreamDir: "/a\nb", resolverDir: "/r" })).rejects.toThrow(
        /control character/,
      );
      await expect(
        natsServerConfig(keys, { listen: "0.0.0.0:4222\ninclude x", jetstreamDir: "/a", resolverDir: "/r" }),
      ).rejects.toThrow(/host:port/);
      // No secret goes into the config: it holds public keys and signed JWTs only.
      const seeds = await Promise.all(
        ["nats-operator.nk", "nats-account.nk", "nats-sys.nk"].map((f) =>
          readFile(join(dir.path, "pki", f), "utf8"),
        ),
      );
      for (const s of seeds) expect(text).not.toContain(s.trim());
    } finally {
      await dir.cleanup();
    }
  });
});

describe("keeping the revocations pushed", () => {
  it("pushes at once, retries after a failure, and pushes again after each reconnect", async () => {
    const queue: { type: string }[] = [];
    let wake: (() => void) | undefined;
    const bus = {
      nc: {
        status: () => ({
          async *[Symbol.asyncIterator]() {
            for (;;) {
              while (queue.length) yield queue.shift()!;
              await new Promise<void>((r) => {
                wake = r;
              });
            }
          },
        }),
      },
    } as unknown as Pick<Bus, "nc">;
    let pushes = 0;
    let failing = 1;
    const authority: NatsAuthority = {
      mintAgentJwt: async () => "",
      pushRevocations: async () => {
        pushes++;
        if (failing-- > 0) throw new Error("no server");
      },
    };
    const kept = keepRevocationsPushed(authority, bus, createLogger("test", "silent"), 50);
    try {
      await kept.first;
      expect(pushes).toBe(1);
      await expect.poll(() => pushes, { timeout: 2000 }).toBe(2);
      await new Promise((r) => setTimeout(r, 150));
      expect(pushes).toBe(2);
      queue.push({ type: "disconnect" }, { type: "reconnect" });
      wake?.();
      await expect.poll(() => pushes, { timeout: 2000 }).toBe(3);
    } finally {
      kept.stop();
    }
  });
});
