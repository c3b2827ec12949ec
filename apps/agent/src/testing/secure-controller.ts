import { randomBytes, webcrypto } from "node:crypto";
import { writeFile } from "node:fs/promises";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import type { TLSSocket } from "node:tls";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createContextKey, createContextValues } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport } from "@connectrpc/connect-node";
import * as x509 from "@peculiar/x509";
import {
  AgentService,
  HostCredentialsSchema,
  type JoinRequest,
  type RegisterAgentRequest,
  type RegisterAgentResponse,
} from "@stowage/proto";
import type { IdentityClientFactory } from "../identity.js";

x509.cryptoProvider.set(webcrypto);

const BACKDATE_MS = 5 * 60_000;
const ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
const serial = () => {
  const b = randomBytes(16);
  b[0] = (b[0] as number) & 0x7f;
  return b.toString("hex");
};

async function keyPem(key: webcrypto.CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", key)).toString("base64");
  return `-----BEGIN PRIVATE KEY-----\n${der.match(/.{1,64}/g)?.join("\n")}\n-----END PRIVATE KEY-----\n`;
}

export interface TestCa {
  caPem: string;
  /** Signs a certificate for `publicKey` (a host's: CN and URI SAN; clientAuth and serverAuth). */
  signHost(host: string, publicKey: x509.PublicKey, ttlMs: number): Promise<x509.X509Certificate>;
  /** A server certificate and key for 127.0.0.1 and localhost. */
  server(): Promise<{ certPem: string; keyPem: string }>;
}

/** A CA made with @peculiar/x509 (ECDSA P-256), as the controller's is. */
export async function makeTestCa(name = "stowage test CA"): Promise<TestCa> {
  const keys = (await webcrypto.subtle.generateKey(ALG, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const now = Date.now();
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${name}`,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 24 * 3600_000),
    keys,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    ],
  });
  const issue = (
    subject: string,
    publicKey: x509.PublicKey | webcrypto.CryptoKey,
    ttlMs: number,
    sans: x509.JsonGeneralName[],
  ) =>
    x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject,
      issuer: ca.subject,
      // Backdated for clock skew, as the controller's CA does.
      notBefore: new Date(Date.now() - BACKDATE_MS),
      notAfter: new Date(Date.now() + ttlMs),
      publicKey,
      signingKey: keys.privateKey,
      signingAlgorithm: ALG,
      extensions: [
        new x509.BasicConstraintsExtension(false),
        new x509.ExtendedKeyUsageExtension([
          x509.ExtendedKeyUsage.clientAuth,
          x509.ExtendedKeyUsage.serverAuth,
        ]),
        new x509.SubjectAlternativeNameExtension(sans),
      ],
    });
  return {
    caPem: ca.toString("pem"),
    signHost: (host, publicKey, ttlMs) =>
      issue(`CN=${host}`, publicKey, ttlMs, [{ type: "url", value: `urn:stowage:host:${host}` }]),
    async server() {
      const k = (await webcrypto.subtle.generateKey(ALG, true, [
        "sign",
        "verify",
      ])) as webcrypto.CryptoKeyPair;
      const cert = await issue("CN=stand-in controller", k.publicKey, 24 * 3600_000, [
        { type: "ip", value: "127.0.0.1" },
        { type: "dns", value: "localhost" },
      ]);
      return { certPem: cert.toString("pem"), keyPem: await keyPem(k.privateKey) };
    },
  };
}

/** The client factory an agent uses: connect-node's gRPC transport with the given TLS material. */
export function identityClients(baseUrl: string): IdentityClientFactory {
  return (tls) => createClient(AgentService, createGrpcTransport({ baseUrl, nodeOptions: tls }));
}

const SOCKET = createContextKey<TLSSocket | undefined>(undefined);

/** The peer certificate a call came with, when the TLS layer verified it against the CA. */
function peer(socket: TLSSocket | undefined): { host: string; serial: string } | undefined {
  if (!socket?.authorized) return undefined;
  const cert = socket.getPeerCertificate();
  if (!cert?.serialNumber) return undefined;
  const cn = cert.subject?.CN;
  return {
    host: Array.isArray(cn) ? (cn[0] as string) : (cn ?? ""),
    serial: cert.serialNumber.toLowerCase(),
  };
}

export interface SecureStandIn {
  url: string;
  ca: TestCa;
  /** A file holding the CA's PEM (the agent's caFile). */
  caFile: string;
  /** Lifetime of the certificates it signs (changeable between calls). */
  ttlMs: number;
  /** Whether it mints a NATS JWT (else nats_jwt is "", as with NATS without per-agent credentials). */
  natsJwt: boolean;
  /** Join tokens it accepts once each, by secret: the host they are for. */
  tokens: Map<string, string>;
  joins: JoinRequest[];
  renewals: { serial: string; at: number }[];
  registrations: { serial: string; host: string }[];
  /** Serials it refuses (a revoked host). */
  revoked: Set<string>;
  /** Serials it issued, in order. */
  issued: string[];
  clients: IdentityClientFactory;
  close(): Promise<void>;
}

/**
 * A stand-in for the controller's AgentService over TLS (http2.createSecureServer, client certificates asked
 * for and verified against its CA): Join with a one-time token, RenewCertificate and RegisterAgent over mTLS.
 * Pure logic: the lead's fleet test runs the real controller.
 */
export async function startSecureStandIn(
  dir: string,
  register?: (req: RegisterAgentRequest) => Promise<RegisterAgentResponse>,
): Promise<SecureStandIn> {
  const ca = await makeTestCa();
  const caFile = join(dir, "cluster-ca.crt");
  await writeFile(caFile, ca.caPem);
  const s: Omit<SecureStandIn, "url" | "clients" | "close"> = {
    ca,
    caFile,
    ttlMs: 3600_000,
    natsJwt: true,
    tokens: new Map(),
    joins: [],
    renewals: [],
    registrations: [],
    revoked: new Set(),
    issued: [],
  };
  const sign = async (host: string, csrPem: string, natsPublicKey: string) => {
    const csr = new x509.Pkcs10CertificateRequest(csrPem);
    if (!(await csr.verify())) throw new ConnectError("bad CSR signature", Code.InvalidArgument);
    if (csr.subject !== `CN=${host}`)
      throw new ConnectError("the CSR does not name the host", Code.InvalidArgument);
    const cert = await ca.signHost(host, csr.publicKey, s.ttlMs);
    s.issued.push(cert.serialNumber.toLowerCase());
    return create(HostCredentialsSchema, {
      certificatePem: cert.toString("pem"),
      caPem: ca.caPem,
      natsJwt: s.natsJwt ? fakeJwt(natsPublicKey) : "",
      notAfter: timestampFromDate(cert.notAfter),
    });
  };
  const authorized = (socket: TLSSocket | undefined) => {
    const p = peer(socket);
    if (!p) throw new ConnectError("an agent needs its host certificate", Code.Unauthenticated);
    if (s.revoked.has(p.serial))
      throw new ConnectError("this host's certificate is revoked", Code.Unauthenticated);
    return p;
  };
  const handler = connectNodeAdapter({
    contextValues: (req) => createContextValues().set(SOCKET, req.socket as TLSSocket),
    routes: (router) =>
      router.service(AgentService, {
        async join(req) {
          s.joins.push(req);
          const host = s.tokens.get(req.joinToken);
          if (host === undefined)
            throw new ConnectError("the join token is unknown or used", Code.PermissionDenied);
          if (host !== req.hostName)
            throw new ConnectError("the token is for another host", Code.PermissionDenied);
          s.tokens.delete(req.joinToken);
          return { credentials: await sign(req.hostName, req.csrPem, req.natsPublicKey) };
        },
        async renewCertificate(req, ctx) {
          const p = authorized(ctx.values.get(SOCKET));
          s.renewals.push({ serial: p.serial, at: Date.now() });
          return { credentials: await sign(p.host, req.csrPem, req.natsPublicKey) };
        },
        async registerAgent(req, ctx) {
          const p = authorized(ctx.values.get(SOCKET));
          if (req.host?.name !== p.host)
            throw new ConnectError("another host's certificate", Code.PermissionDenied);
          s.registrations.push(p);
          if (!register) throw new ConnectError("no registration here", Code.Unimplemented);
          return register(req);
        },
      }),
  });
  const tls = await ca.server();
  const server = http2.createSecureServer(
    { cert: tls.certPem, key: tls.keyPem, ca: ca.caPem, requestCert: true, rejectUnauthorized: false },
    handler,
  );
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return Object.assign(s, {
    url,
    clients: identityClients(url),
    close: async () => {
      // The agents' gRPC sessions stay open (their process would exit); the stand-in closes them.
      for (const session of sessions) session.destroy();
      await new Promise((r) => server.close(r));
    },
  });
}

/** A JWT-shaped string naming the NATS user key (the agent reads only its subject). */
function fakeJwt(publicKey: string): string {
  const part = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ typ: "JWT", alg: "ed25519-nkey" })}.${part({ sub: publicKey, jti: serial() })}.${randomBytes(32).toString("base64url")}`;
}
