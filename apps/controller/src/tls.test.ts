import { webcrypto, X509Certificate } from "node:crypto";
import { request as httpsRequest } from "node:https";
import { join as joinPath } from "node:path";
import { Code, type ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { createUser } from "@nats-io/nkeys";
import * as x509 from "@peculiar/x509";
import { AgentService, HostService, TokenService, VolumeService } from "@stowage/proto";
import { makeTempDir, type NatsServer, natsAvailable, startNats } from "@stowage/testkit";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ControllerConfig, loadControllerConfig } from "./config.js";
import { type ControllerHandle, startController } from "./controller.js";
import { loadPki } from "./pki.js";

const ADMIN = "stw_test_admin_0123456789";
const subtle = webcrypto.subtle;

/** An agent's key and CSR, as an agent makes them (the key never leaves it). */
async function agentKey(host: string) {
  const keys = (await subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ])) as webcrypto.CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [host] }],
    keys,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
  });
  const keyPem = x509.PemConverter.encode(await subtle.exportKey("pkcs8", keys.privateKey), "PRIVATE KEY");
  return { csrPem: csr.toString("pem"), keyPem };
}

const register = (name: string) => ({ host: { name }, pools: [] });

async function refusal(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    return err as ConnectError;
  }
  throw new Error("the call succeeded");
}

/** A controller with STOWAGE_TLS=on on 127.0.0.1, its CA made in the data directory, and an admin token. */
describe.skipIf(!natsAvailable())("a TLS controller", () => {
  let tmp: Awaited<ReturnType<typeof makeTempDir>>;
  let nats: NatsServer;
  let controller: ControllerHandle;
  let config: ControllerConfig;
  let caPem: string;
  const managers: Http2SessionManager[] = [];

  const url = (scheme = "https") => `${scheme}://127.0.0.1:${controller.grpcPort}`;
  /** Clients over TLS trusting the CA, with a bearer token and/or a client certificate. */
  const clients = (opts: { token?: string; cert?: string; key?: string; scheme?: string } = {}) => {
    const nodeOptions = {
      ca: caPem,
      ...(opts.cert ? { cert: opts.cert, key: opts.key } : {}),
    };
    const sessionManager = new Http2SessionManager(url(opts.scheme), {}, nodeOptions);
    managers.push(sessionManager);
    const bearer: Interceptor = (next) => (req) => {
      req.header.set("authorization", `Bearer ${opts.token}`);
      return next(req);
    };
    const transport = createGrpcTransport({
      baseUrl: url(opts.scheme),
      sessionManager,
      nodeOptions,
      interceptors: opts.token ? [bearer] : [],
    });
    return {
      agent: createClient(AgentService, transport),
      hosts: createClient(HostService, transport),
      tokens: createClient(TokenService, transport),
      volumes: createClient(VolumeService, transport),
    };
  };
  const admin = () => clients({ token: ADMIN });
  const joinToken = async (host: string, ttlSeconds = 600n) =>
    (await admin().tokens.createToken({ name: "", role: 0, host, ttl: { seconds: ttlSeconds, nanos: 0 } }))
      .secret;

  beforeAll(async () => {
    tmp = await makeTempDir("stowage-tls-");
    nats = await startNats({ dir: joinPath(tmp.path, "nats") });
    config = loadControllerConfig(
      {},
      {
        dataDir: joinPath(tmp.path, "data"),
        natsUrl: nats.url,
        grpcListen: "127.0.0.1:0",
        metricsListen: "127.0.0.1:0",
        logLevel: "silent",
        tls: "on",
        apiTokens: `root:admin:${ADMIN}`,
      },
    );
    controller = await startController(config);
    caPem = (await loadPki(config, pino({ level: "silent" }))).caPem;
  }, 120_000);
  afterAll(async () => {
    for (const m of managers) m.abort();
    await controller?.stop();
    await nats?.stop();
    await tmp?.cleanup();
  });

  let node1: { certPem: string; keyPem: string; serial: string };

  it("refuses plaintext h2c, and callers without a token", async () => {
    const plain = clients({ scheme: "http" });
    const e = await refusal(plain.volumes.listVolumes({}, { timeoutMs: 5000 }));
    expect(e.code).not.toBe(Code.Unauthenticated);
    // The TLS listener does not speak h2c: the connection fails before any call is answered.
    expect([Code.Unavailable, Code.Internal, Code.Unknown, Code.Canceled, Code.DeadlineExceeded]).toContain(
      e.code,
    );
    expect((await refusal(clients().volumes.listVolumes({}))).code).toBe(Code.Unauthenticated);
    expect((await refusal(clients({ token: "stw_nope" }).volumes.listVolumes({}))).code).toBe(
      Code.Unauthenticated,
    );
    await expect(admin().volumes.listVolumes({})).resolves.toBeDefined();
    // An agent without a certificate cannot register.
    const noCert = await refusal(clients().agent.registerAgent(register("node1")));
    expect(noCert.code).toBe(Code.Unauthenticated);
    expect(noCert.rawMessage).toBe(
      "an agent needs its host certificate: join with a token first (docs/security.md)",
    );
  });

  it("joins with a join token once; a used, expired, wrong-host or API token is refused", async () => {
    const secret = await joinToken("node1");
    const k = await agentKey("node1");
    const natsKey = createUser().getPublicKey();
    const req = { joinToken: secret, hostName: "node1", csrPem: k.csrPem, natsPublicKey: natsKey };
    const res = await clients().agent.join(req);
    const creds = res.credentials!;
    expect(creds.caPem).toBe(caPem);
    expect(creds.natsJwt).toBe("");
    const cert = new X509Certificate(creds.certificatePem);
    expect(cert.subject).toBe("CN=node1");
    expect(cert.checkIssued(new X509Certificate(caPem))).toBe(true);
    node1 = { certPem: creds.certificatePem, keyPem: k.keyPem, serial: cert.serialNumber.toLowerCase() };
    const [row] = await controller.context.sql<{ hostId: string; issuedBy: string; natsPublicKey: string }[]>`
      select host_id, issued_by, nats_public_key from host_certificates where serial = ${node1.serial}`;
    expect(row).toMatchObject({ hostId: "node1", natsPublicKey: natsKey });
    expect(row!.issuedBy).toMatch(/^join:tok-/);

    const again = await refusal(clients().agent.join({ ...req, csrPem: (await agentKey("node1")).csrPem }));
    expect(again.code).toBe(Code.PermissionDenied);
    expect(again.rawMessage).toMatch(/used already/);

    const expired = await joinToken("node3");
    await controller.context.sql`update api_tokens set expires_at = now() - interval '1 second'
      where host_id = 'node3'`;
    const e = await refusal(
      clients().agent.join({
        ...req,
        joinToken: expired,
        hostName: "node3",
        csrPem: (await agentKey("node3")).csrPem,
      }),
    );
    expect(e.code).toBe(Code.PermissionDenied);
    expect(e.rawMessage).toMatch(/expired/);

    const forNode2 = await joinToken("node2");
    const wrong = await refusal(clients().agent.join({ ...req, joinToken: forNode2 }));
    expect(wrong.code).toBe(Code.PermissionDenied);
    expect(wrong.rawMessage).toMatch(/is for host node2, not node1/);
    expect(wrong.rawMessage).not.toContain(forNode2);
    // A CSR for another host than the one named is refused, and the token stays unused.
    const otherCsr = await refusal(clients().agent.join({ ...req, joinToken: forNode2, hostName: "node2" }));
    expect(otherCsr.code).toBe(Code.InvalidArgument);
    const unknown = await refusal(clients().agent.join({ ...req, joinToken: `stw_join_${"0".repeat(64)}` }));
    expect(unknown.code).toBe(Code.Unauthenticated);
    const api = await refusal(clients().agent.join({ ...req, joinToken: ADMIN }));
    expect(api.code).toBe(Code.Unauthenticated);
    const badKey = await refusal(clients().agent.join({ ...req, joinToken: forNode2, natsPublicKey: "ABC" }));
    expect(badKey.code).toBe(Code.InvalidArgument);

    // Two joins racing with one token: one wins.
    const racing = await joinToken("node4");
    const raced = await Promise.allSettled(
      [1, 2].map(async () =>
        clients().agent.join({
          joinToken: racing,
          hostName: "node4",
          csrPem: (await agentKey("node4")).csrPem,
          natsPublicKey: natsKey,
        }),
      ),
    );
    expect(raced.map((r) => r.status).sort()).toEqual(["fulfilled", "rejected"]);
    const [certs] = await controller.context.sql<{ n: number }[]>`
      select count(*)::int as n from host_certificates where host_id in ('node2', 'node3', 'node4')`;
    expect(certs!.n).toBe(1);

    const audit = await controller.context.sql<{ actor: string; action: string; target: string }[]>`
      select actor, action, target from audit_log where action = 'Join' and outcome = 'ok' order by id`;
    expect(audit).toEqual([
      { actor: "host:node1", action: "Join", target: "node1" },
      { actor: "host:node4", action: "Join", target: "node4" },
    ]);
    // Each refused join is audited too (audit.ts), with nothing else written.
    const [denied] = await controller.context.sql<{ n: number }[]>`
      select count(*)::int as n from audit_log where action = 'Join' and outcome = 'denied'`;
    expect(denied!.n).toBeGreaterThanOrEqual(4);
    const rows = await controller.context.sql`select * from audit_log`;
    expect(JSON.stringify(rows, (_k, v) => (typeof v === "bigint" ? String(v) : v))).not.toContain(
      secret.slice(9),
    );
  });

  it("a host certificate registers its own host only, calls nothing but AgentService, and renews", async () => {
    const agent = clients({ cert: node1.certPem, key: node1.keyPem });
    const ok = await agent.agent.registerAgent(register("node1"));
    expect(ok.hostId).toBe("node1");
    const other = await refusal(agent.agent.registerAgent(register("node2")));
    expect(other.code).toBe(Code.PermissionDenied);
    const [n] = await controller.context.sql<
      { n: number }[]
    >`select count(*)::int as n from hosts where id = 'node2'`;
    expect(n!.n).toBe(0);
    expect((await refusal(agent.volumes.listVolumes({}))).code).toBe(Code.PermissionDenied);

    const k = await agentKey("node1");
    const renewed = await agent.agent.renewCertificate({
      csrPem: k.csrPem,
      natsPublicKey: createUser().getPublicKey(),
    });
    const serial = new X509Certificate(renewed.credentials!.certificatePem).serialNumber.toLowerCase();
    expect(serial).not.toBe(node1.serial);
    const [row] = await controller.context.sql<{ issuedBy: string }[]>`
      select issued_by from host_certificates where serial = ${serial}`;
    expect(row!.issuedBy).toBe(`renew:${node1.serial}`);
    const fresh = clients({ cert: renewed.credentials!.certificatePem, key: k.keyPem });
    await expect(fresh.agent.registerAgent(register("node1"))).resolves.toBeDefined();
    // A CSR naming another host is refused on renewal too.
    const theirs = await refusal(agent.agent.renewCertificate({ csrPem: (await agentKey("node2")).csrPem }));
    expect(theirs.code).toBe(Code.InvalidArgument);
  });

  it("refuses the handshake of a certificate from another CA", async () => {
    const otherTmp = await makeTempDir("stowage-tls-other-");
    try {
      const theirs = await loadPki({ ...config, dataDir: otherTmp.path }, pino({ level: "silent" }));
      const k = await agentKey("node1");
      const issued = await theirs.signCsr(k.csrPem, "node1", 3600_000);
      const forged = clients({ cert: issued.certPem, key: k.keyPem });
      const e = await refusal(forged.agent.registerAgent(register("node1"), { timeoutMs: 5000 }));
      expect([Code.Unavailable, Code.Internal, Code.Unknown, Code.Canceled]).toContain(e.code);
      // ...and that connection was closed: even a Join over it fails.
      const j = await refusal(forged.agent.join({ joinToken: "x", hostName: "node1" }, { timeoutMs: 5000 }));
      expect(j.code).not.toBe(Code.Unauthenticated);
    } finally {
      await otherTmp.cleanup();
    }
  });

  it("serves the metrics listener over HTTPS with the same certificate", async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const r = httpsRequest(
        { host: "127.0.0.1", port: controller.metricsPort, path: "/healthz", ca: caPem },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      r.on("error", reject);
      r.end();
    });
    expect(status).toBe(200);
  });

  it("the certificate works across a restart on the same data directory; a revoke bites within 10 s", async () => {
    for (const m of managers.splice(0)) m.abort();
    await controller.stop();
    controller = await startController(config);
    expect((await loadPki(config, pino({ level: "silent" }))).caPem).toBe(caPem);
    const agent = clients({ cert: node1.certPem, key: node1.keyPem });
    await expect(agent.agent.registerAgent(register("node1"))).resolves.toBeDefined();

    const unused = await joinToken("node1");
    const res = await admin().hosts.revokeHost({ hostId: "node1", reason: "test" });
    expect(res).toMatchObject({ certificatesRevoked: 2, natsUsersRevoked: 2 });
    const t0 = Date.now();
    let code: Code | undefined;
    while (Date.now() - t0 < 10_000) {
      try {
        await agent.agent.registerAgent(register("node1"));
        await new Promise((r) => setTimeout(r, 250));
      } catch (err) {
        code = (err as ConnectError).code;
        break;
      }
    }
    expect(code).toBe(Code.Unauthenticated);
    expect(Date.now() - t0).toBeLessThan(10_000);
    // Its unused join token was revoked too; a second revoke changes nothing; an unknown host is NOT_FOUND.
    const j = await refusal(
      clients().agent.join({
        joinToken: unused,
        hostName: "node1",
        csrPem: (await agentKey("node1")).csrPem,
      }),
    );
    expect(j.rawMessage).toMatch(/revoked/);
    expect(await admin().hosts.revokeHost({ hostId: "node1" })).toMatchObject({
      certificatesRevoked: 0,
      natsUsersRevoked: 0,
    });
    expect((await refusal(admin().hosts.revokeHost({ hostId: "nobody" }))).code).toBe(Code.NotFound);
    expect(
      (await refusal(clients({ token: ADMIN.slice(1) }).hosts.revokeHost({ hostId: "node1" }))).code,
    ).toBe(Code.Unauthenticated);
    const audit = await controller.context.sql<{ actor: string; target: string }[]>`
      select actor, target from audit_log where action = 'RevokeHost' and outcome = 'ok' order by id`;
    expect(audit).toEqual([
      { actor: "root", target: "node1" },
      { actor: "root", target: "node1" },
    ]);
  }, 60_000);
});
