/**
 * One probe of a secure test fleet, run inside a fleet namespace (`fleet.exec(node, [this file, JSON])`) by
 * test/fleet-security.test.ts and test/e2e.test.ts: it plays a client the test needs to be someone else than
 * stowctl or an agent (a plaintext client, an agent without a certificate, a host with another CA's
 * certificate, agent B using its NATS credentials against agent A's subjects, ...). Prints one JSON line:
 * `{ok: true, ...}` or `{ok: false, code?, error}`. Never throws past that line; bounded in time.
 *
 * The argument is one JSON object with `op` and its fields; see the switch below.
 */
import { webcrypto } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import http2 from "node:http2";
import https from "node:https";
import { connect as netConnect } from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { jetstream } from "@nats-io/jetstream";
import { encodeUser } from "@nats-io/jwt";
import { createUser, fromSeed } from "@nats-io/nkeys";
import { connect, jwtAuthenticator } from "@nats-io/transport-node";
import * as x509 from "@peculiar/x509";
import { tlsIdentityHost } from "@stowage/bus";
import { AgentService, OperationKind, OperationResultSchema } from "@stowage/proto";

x509.cryptoProvider.set(webcrypto);
const arg = JSON.parse(process.argv[2] ?? "{}");
const read = (f) => readFileSync(f, "utf8");
const out = (o) => {
  process.stdout.write(`${JSON.stringify(o)}\n`);
  process.exit(0);
};
const failure = (err) => {
  if (err instanceof ConnectError) return { ok: false, code: Code[err.code], error: err.rawMessage };
  return { ok: false, error: String(err?.message ?? err), errorCode: err?.code };
};
setTimeout(() => out({ ok: false, error: "probe timed out" }), arg.timeoutMs ?? 20_000).unref();

const ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };

async function keyPem(key) {
  const der = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", key));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString("base64").replace(/.{64}/g, "$&\n")}\n-----END PRIVATE KEY-----\n`;
}

/** A CA of its own and a certificate for `host` signed by it: what a host of another cluster holds. */
async function foreignCertificate(host) {
  const caKeys = await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"]);
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: "CN=another cluster's CA",
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 3600_000),
    keys: caKeys,
    signingAlgorithm: ALG,
    extensions: [new x509.BasicConstraintsExtension(true, undefined, true)],
  });
  const keys = await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"]);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: "02",
    subject: `CN=${host}`,
    issuer: ca.subject,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 3600_000),
    publicKey: keys.publicKey,
    signingKey: caKeys.privateKey,
    signingAlgorithm: ALG,
    extensions: [
      new x509.SubjectAlternativeNameExtension([{ type: "url", value: `urn:stowage:host:${host}` }]),
      new x509.ExtendedKeyUsageExtension([
        x509.ExtendedKeyUsage.clientAuth,
        x509.ExtendedKeyUsage.serverAuth,
      ]),
    ],
  });
  return { cert: cert.toString("pem"), key: await keyPem(keys.privateKey) };
}

function agentClient(o) {
  const nodeOptions = {};
  if (o.ca) nodeOptions.ca = read(o.ca);
  if (o.certFile) {
    nodeOptions.cert = read(o.certFile);
    nodeOptions.key = read(o.keyFile);
  }
  if (o.certPem) {
    nodeOptions.cert = o.certPem;
    nodeOptions.key = o.keyPem;
  }
  return createClient(AgentService, createGrpcTransport({ baseUrl: o.url, nodeOptions }));
}

/**
 * GetExportCredentials as a host (its certificate from its state directory): the CHAP secret or cephx key goes
 * to `secretFile` (0600), never to stdout, so that the test's output and logs never hold it.
 */
async function exportCredentials(o) {
  const r = await agentClient({
    url: o.url,
    ca: o.ca,
    certFile: `${o.stateDir}/host.crt`,
    keyFile: `${o.stateDir}/host.key`,
  }).getExportCredentials({ exportId: o.exportId }, { timeoutMs: 5000 });
  const secret = r.chapSecret || r.cephxKey;
  if (o.secretFile) writeFileSync(o.secretFile, secret, { mode: 0o600 });
  return { ok: true, chapUser: r.chapUser, cephxUser: r.cephxUser, secretLength: secret.length };
}

async function register(o) {
  const r = await agentClient(o).registerAgent(
    { host: { name: o.host }, pools: [], processStart: false },
    { timeoutMs: 5000 },
  );
  return { ok: true, hostId: r.hostId };
}

async function join(o) {
  const keys = await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"]);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${o.csrHost ?? o.host}`,
    keys,
    signingAlgorithm: ALG,
  });
  const nkey = createUser();
  const r = await agentClient(o).join(
    {
      joinToken: o.token,
      hostName: o.host,
      csrPem: csr.toString("pem"),
      natsPublicKey: nkey.getPublicKey(),
    },
    { timeoutMs: 5000 },
  );
  const cert = new x509.X509Certificate(r.credentials.certificatePem);
  return { ok: true, subject: cert.subject, natsJwt: r.credentials.natsJwt !== "" };
}

/** A NATS connection with a host's credentials from its state directory (nats-user.jwt, nats-user.nk). */
async function natsAs(o) {
  let authenticator;
  if (o.stateDir) {
    authenticator = jwtAuthenticator(
      read(`${o.stateDir}/nats-user.jwt`).trim(),
      new TextEncoder().encode(read(`${o.stateDir}/nats-user.nk`).trim()),
    );
  } else if (o.accountSeedFile) {
    // A user of the cluster's account with every permission, signed with the account key (the controller's).
    const account = fromSeed(new TextEncoder().encode(read(o.accountSeedFile).trim()));
    const user = createUser();
    const jwt = await encodeUser(
      "fleet-test",
      user,
      account,
      {},
      { exp: Math.floor(Date.now() / 1000) + 600 },
    );
    authenticator = jwtAuthenticator(jwt, user.getSeed());
  }
  return connect({
    servers: o.natsUrl,
    name: o.name ?? "fleet-probe",
    reconnect: false,
    timeout: 5000,
    ...(o.ca ? { tls: { ca: read(o.ca), ...tlsIdentityHost(o.natsUrl) } } : {}),
    ...(authenticator ? { authenticator } : {}),
    ...(o.inboxPrefix ? { inboxPrefix: o.inboxPrefix } : {}),
  });
}

/** Runs `fn` on a connection and gathers the errors the server reports (permission violations) for a while. */
async function natsErrors(o, fn) {
  const nc = await natsAs(o);
  const errors = [];
  void (async () => {
    for await (const s of nc.status())
      if (s.type === "error") errors.push(String(s.error?.message ?? s.error));
  })();
  let result;
  try {
    result = await fn(nc);
  } catch (err) {
    errors.push(String(err?.message ?? err));
  }
  await nc.flush().catch((err) => errors.push(String(err?.message ?? err)));
  await new Promise((r) => setTimeout(r, o.settleMs ?? 1000));
  await nc.close().catch(() => {});
  return { ok: errors.length === 0, errors, result };
}

/** A client that speaks plain NATS protocol without TLS: what does the server answer? */
function rawNats(o) {
  return new Promise((resolve) => {
    const s = netConnect(o.port, o.host);
    let text = "";
    let sent = false;
    s.setTimeout(5000, () => s.destroy());
    s.on("data", (d) => {
      text += d.toString("latin1");
      if (!sent && text.includes("\r\n")) {
        sent = true;
        s.write('CONNECT {"verbose":false,"pedantic":false,"tls_required":false}\r\nPING\r\n');
      }
    });
    s.on("error", () => {});
    s.on("close", () => {
      const info = /^INFO (.*)\r\n/.exec(text);
      resolve({
        ok: true,
        info: info ? JSON.parse(info[1]) : null,
        pong: /\r\nPONG\r\n/.test(text),
        text: text.slice(0, 400),
      });
    });
  });
}

function httpsGet(o) {
  return new Promise((resolve) => {
    const req = https.get(o.url, { ca: o.ca ? read(o.ca) : undefined, timeout: 5000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d) => {
        body += d;
      });
      res.on("end", () => resolve({ ok: res.statusCode === 200, status: res.statusCode, body }));
    });
    req.on("error", (err) => resolve({ ok: false, error: err.message }));
  });
}

/** A plaintext (h2c) gRPC health check. */
function plaintextHealth(o) {
  return new Promise((resolve) => {
    const session = http2.connect(o.url);
    const done = (r) => {
      session.destroy();
      resolve(r);
    };
    session.on("error", (err) => done({ ok: false, error: err.message }));
    session.on("close", () => done({ ok: false, error: "the server closed the connection" }));
    session.setTimeout(5000, () => done({ ok: false, error: "no answer within 5 s" }));
    const req = session.request({
      ":method": "POST",
      ":path": "/grpc.health.v1.Health/Check",
      "content-type": "application/grpc",
      te: "trailers",
    });
    req.on("response", (h) => done({ ok: true, status: h[":status"], grpcStatus: h["grpc-status"] }));
    req.on("error", (err) => done({ ok: false, error: err.message }));
    req.on("close", () => done({ ok: false, error: "the stream closed without an answer" }));
    req.end(Buffer.from([0, 0, 0, 0, 0]));
  });
}

try {
  switch (arg.op) {
    case "plaintext-health":
      out(await plaintextHealth(arg));
      break;
    case "raw-nats":
      out(await rawNats(arg));
      break;
    case "register":
      out(await register(arg));
      break;
    case "export-credentials":
      out(await exportCredentials(arg));
      break;
    case "register-foreign": {
      const f = await foreignCertificate(arg.host);
      out(await register({ ...arg, certPem: f.cert, keyPem: f.key }));
      break;
    }
    case "join":
      out(await join(arg));
      break;
    case "https-get":
      out(await httpsGet(arg));
      break;
    case "http-get": {
      const res = await fetch(arg.url, { signal: AbortSignal.timeout(5000) });
      out({ ok: res.ok, status: res.status, body: await res.text() });
      break;
    }
    case "nats-connect": {
      const nc = await natsAs(arg);
      await nc.flush();
      await nc.close();
      out({ ok: true });
      break;
    }
    case "nats-sub":
      out(
        await natsErrors(arg, async (nc) => {
          const sub = nc.subscribe(arg.subject);
          await nc.flush();
          return { subscribed: !sub.isClosed() };
        }),
      );
      break;
    case "nats-pub":
      out(
        await natsErrors(arg, async (nc) => {
          nc.publish(arg.subject, new TextEncoder().encode(arg.data ?? "forged"));
        }),
      );
      break;
    case "nats-consumer":
      // Reading another host's durable consumer: the consumer info request itself must be refused.
      out(
        await natsErrors({ ...arg, settleMs: 200 }, async (nc) => {
          const js = jetstream(nc, { timeout: 3000 });
          const c = await js.consumers.get(arg.stream, arg.consumer);
          const m = await c.next({ expires: 2000 });
          return { got: m !== null };
        }),
      );
      break;
    case "forge-result": {
      // As host `arg.as` (its own result subject, its own credentials): a result for another host's operation.
      const r = create(OperationResultSchema, {
        operationId: arg.operationId,
        hostId: arg.claimHost,
        kind: OperationKind.DELETE_VOLUME,
        success: true,
      });
      out(
        await natsErrors(arg, async (nc) => {
          const js = jetstream(nc, { timeout: 3000 });
          const ack = await js.publish(arg.subject, toBinary(OperationResultSchema, r));
          return { stream: ack.stream };
        }),
      );
      break;
    }
    case "nats-js-publish":
      out(
        await natsErrors(arg, async (nc) => {
          const js = jetstream(nc, { timeout: 3000 });
          const ack = await js.publish(arg.subject, Buffer.from(arg.dataBase64, "base64"), {
            msgID: arg.msgID,
          });
          return { stream: ack.stream };
        }),
      );
      break;
    default:
      out({ ok: false, error: `unknown op ${arg.op}` });
  }
} catch (err) {
  out(failure(err));
}
