import { createHash, createPrivateKey, randomBytes, webcrypto } from "node:crypto";
import { chmod, mkdir, readFile } from "node:fs/promises";
import { isIP } from "node:net";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import type { Logger } from "@stowage/telemetry";
import { type ControllerConfig, pkiDirOf, splitHostPort } from "./config.js";
import { writeFileAtomic } from "./files.js";

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
type Algorithm = webcrypto.Algorithm;
type EcdsaParams = webcrypto.EcdsaParams;
type EcKeyAlgorithm = webcrypto.EcKeyAlgorithm;

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
const subtle = webcrypto.subtle;

/** The URI SAN that names a host in its certificate (docs/security.md). */
export const hostUri = (host: string) => `urn:stowage:host:${host}`;
const HOST_URI = /^urn:stowage:host:([a-z0-9][a-z0-9._-]*)$/;

/** The CA's lifetime when the controller makes it: ten years. */
const CA_TTL_MS = 10 * 365 * 24 * 3600_000;
/** The lifetime of the listeners' certificate the controller issues itself: one year. */
export const SERVER_CERT_TTL_MS = 365 * 24 * 3600_000;
/** Certificates are back-dated by this much, for clocks a little behind. */
const BACKDATE_MS = 5 * 60_000;
const EC = { name: "ECDSA", namedCurve: "P-256" } as const;
const SIGN_EC = { name: "ECDSA", hash: "SHA-256" } as const;

/** A certificate the CA issued. */
export interface IssuedCert {
  certPem: string;
  /** 32 lowercase hex digits. */
  serial: string;
  /** SHA-256 of the DER, lowercase hex. */
  fingerprint: string;
  notBefore: Date;
  notAfter: Date;
}

export interface Pki {
  /** The CA certificate (PEM), for agents, stowctl and nats-server. */
  caPem: string;
  caCert: x509.X509Certificate;
  /**
   * Signs an agent's CSR: it must carry a valid signature and the subject CN `host`. The certificate names the
   * host (CN and URI SAN urn:stowage:host:<host>), is for client and server auth, and carries no other
   * requested extension.
   */
  signCsr(csrPem: string, host: string, ttlMs: number): Promise<IssuedCert>;
  /** The gRPC and metrics listeners' certificate and key (PEM). */
  serverCert: { certPem: string; keyPem: string };
  /** A new key and a certificate for `name` with these SANs (DNS names or IPs), for nats-server and the like. */
  issue(name: string, sans: readonly string[], ttlMs: number): Promise<IssuedCert & { keyPem: string }>;
}

/** A refusal of a CSR: the message names what is wrong (never a key). */
export class CsrError extends Error {}

/** A positive serial: 16 random bytes, the first bit cleared and the second set (always 32 hex digits). */
export function newSerial(): string {
  const b = randomBytes(16);
  b[0] = 0x40 | (b[0]! & 0x3f);
  return b.toString("hex");
}

const pemOf = (der: ArrayBuffer, label: string) => x509.PemConverter.encode(der, label);

async function newKeyPair(): Promise<CryptoKeyPair> {
  return (await subtle.generateKey(EC, true, ["sign", "verify"])) as CryptoKeyPair;
}

async function keyPem(key: CryptoKey): Promise<string> {
  return pemOf(await subtle.exportKey("pkcs8", key), "PRIVATE KEY");
}

/** A private key (PKCS#8, SEC1 or PKCS#1 PEM) as a signing CryptoKey, and the algorithm it signs with. */
async function importSigningKey(pem: string): Promise<{ key: CryptoKey; alg: Algorithm | EcdsaParams }> {
  const ko = createPrivateKey(pem);
  const der = ko.export({ type: "pkcs8", format: "der" });
  if (ko.asymmetricKeyType === "ec") {
    const curve = ko.asymmetricKeyDetails?.namedCurve;
    const namedCurve = curve === "prime256v1" ? "P-256" : curve === "secp384r1" ? "P-384" : undefined;
    if (!namedCurve) throw new Error(`the CA key's curve ${curve} is not P-256 or P-384`);
    const key = await subtle.importKey("pkcs8", der, { name: "ECDSA", namedCurve }, false, ["sign"]);
    return {
      key,
      alg: { name: "ECDSA", hash: namedCurve === "P-384" ? "SHA-384" : "SHA-256" } as EcdsaParams,
    };
  }
  if (ko.asymmetricKeyType === "rsa") {
    const alg = { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
    return { key: await subtle.importKey("pkcs8", der, alg, false, ["sign"]), alg };
  }
  throw new Error(`a ${ko.asymmetricKeyType} key cannot sign certificates here: use ECDSA P-256 or RSA`);
}

const hex = (b: ArrayBuffer) => Buffer.from(b).toString("hex");

async function describe(cert: x509.X509Certificate): Promise<IssuedCert> {
  return {
    certPem: cert.toString("pem"),
    serial: cert.serialNumber.toLowerCase(),
    fingerprint: hex(await cert.getThumbprint("SHA-256")),
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
  };
}

/** SAN entries for names: IP addresses as IP SANs, the rest as DNS names. */
function sanEntries(sans: readonly string[]): x509.JsonGeneralName[] {
  return [...new Set(sans)].map((s) => ({ type: isIP(s) ? "ip" : "dns", value: s }) as x509.JsonGeneralName);
}

/** A name as SANs are compared: IPv6 addresses in their canonical form, the rest as they are. */
function canonical(name: string): string {
  return isIP(name) === 6 ? new URL(`http://[${name}]/`).hostname.replace(/^\[|\]$/g, "") : name;
}

/** The DNS and IP SANs of a certificate, canonical and sorted. */
function certSans(cert: x509.X509Certificate): string[] {
  const ext = cert.getExtension(x509.SubjectAlternativeNameExtension);
  if (!ext) return [];
  return ext.names.items
    .filter((n) => n.type === "dns" || n.type === "ip")
    .map((n) => canonical(n.value))
    .sort();
}

async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

/** The CA of the PKI directory: made on first start (ca.key then ca.crt, each linked in once), else read. */
async function ownCa(dir: string, log: Logger): Promise<{ certPem: string; keyPem: string }> {
  const keyPath = join(dir, "ca.key");
  const certPath = join(dir, "ca.crt");
  const existingKey = await readIfExists(keyPath);
  if (existingKey === undefined) {
    const keys = await newKeyPair();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: newSerial(),
      name: [{ CN: ["Stowage cluster CA"] }, { O: ["Stowage"] }],
      notBefore: new Date(Date.now() - BACKDATE_MS),
      notAfter: new Date(Date.now() + CA_TTL_MS),
      signingAlgorithm: SIGN_EC,
      keys,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    const pem = await keyPem(keys.privateKey);
    if (await writeFileAtomic(keyPath, pem, { exclusive: true })) {
      await writeFileAtomic(certPath, cert.toString("pem"), { exclusive: true });
      log.info({ dir, ca: hex(await cert.getThumbprint("SHA-256")) }, "made the cluster CA");
      return { certPem: cert.toString("pem"), keyPem: pem };
    }
    // Another controller made it first: use its CA.
  }
  // ca.key exists; ca.crt follows it (another controller may be writing it this very moment).
  for (let i = 0; ; i++) {
    const keyPemText = await readFile(keyPath, "utf8");
    const certPem = await readIfExists(certPath);
    if (certPem !== undefined) return { certPem, keyPem: keyPemText };
    if (i >= 50) throw new Error(`${keyPath} exists but ${certPath} does not: restore the CA or remove both`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The names the listeners' certificate must carry: the listen hosts (wildcards expanded), localhost, extras. */
export function serverSans(
  config: Pick<ControllerConfig, "grpcListen" | "metricsListen" | "tlsSans">,
): string[] {
  const out = new Set<string>(["localhost", "127.0.0.1"]);
  for (const addr of [config.grpcListen, config.metricsListen]) {
    const { host } = splitHostPort(addr);
    if (host === "0.0.0.0" || host === "::") {
      for (const list of Object.values(networkInterfaces()))
        for (const a of list ?? [])
          if (host === "::" || a.family === "IPv4") out.add(a.address.replace(/%.*$/, ""));
    } else out.add(host);
  }
  for (const s of config.tlsSans.split(",")) if (s.trim()) out.add(s.trim());
  return [...out].sort();
}

/** Whether a certificate (PEM) and a private key (PEM) belong together. */
async function keyMatches(certPem: string, keyPemText: string): Promise<boolean> {
  try {
    const cert = new x509.X509Certificate(certPem);
    const { key, alg } = await importSigningKey(keyPemText);
    const data = randomBytes(32);
    const sig = await subtle.sign(alg, key, data);
    const pub = await cert.publicKey.export();
    return await subtle.verify(alg, pub, sig, data);
  } catch {
    return false;
  }
}

/**
 * The controller's PKI (docs/security.md): the CA (STOWAGE_TLS_CA_CERT/KEY, or the PKI directory's own, made on
 * first start) and the listeners' certificate (STOWAGE_TLS_CERT/KEY, or one the CA issues for the listen
 * addresses, re-issued when it is missing, in the last third of its life, names other addresses or another CA).
 */
export async function loadPki(
  config: ControllerConfig,
  log: Logger,
  options: { serverCert?: boolean } = {},
): Promise<Pki> {
  const dir = pkiDirOf(config);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700).catch(() => {});
  if (Boolean(config.tlsCaCert) !== Boolean(config.tlsCaKey))
    throw new Error("STOWAGE_TLS_CA_CERT and STOWAGE_TLS_CA_KEY go together: set both or neither");
  if (Boolean(config.tlsCert) !== Boolean(config.tlsKey))
    throw new Error("STOWAGE_TLS_CERT and STOWAGE_TLS_KEY go together: set both or neither");
  const ca = config.tlsCaCert
    ? { certPem: await readFile(config.tlsCaCert, "utf8"), keyPem: await readFile(config.tlsCaKey, "utf8") }
    : await ownCa(dir, log);
  const caCert = new x509.X509Certificate(ca.certPem);
  if (!(await keyMatches(ca.certPem, ca.keyPem)))
    throw new Error("the CA key does not match the CA certificate");
  const signer = await importSigningKey(ca.keyPem);
  const caPem = caCert.toString("pem");

  const make = async (opts: {
    subject: x509.JsonName;
    publicKey: CryptoKey | x509.PublicKey;
    sans: x509.JsonGeneralName[];
    ttlMs: number;
  }) => {
    const now = Date.now();
    const notAfter = new Date(Math.min(now + opts.ttlMs, caCert.notAfter.getTime()));
    return x509.X509CertificateGenerator.create({
      serialNumber: newSerial(),
      subject: opts.subject,
      issuer: caCert.subjectName,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter,
      signingAlgorithm: signer.alg,
      publicKey: opts.publicKey,
      signingKey: signer.key,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
          true,
        ),
        new x509.ExtendedKeyUsageExtension([
          x509.ExtendedKeyUsage.clientAuth,
          x509.ExtendedKeyUsage.serverAuth,
        ]),
        new x509.SubjectAlternativeNameExtension(opts.sans),
        await x509.AuthorityKeyIdentifierExtension.create(caCert),
      ],
    });
  };

  const issue: Pki["issue"] = async (name, sans, ttlMs) => {
    const keys = await newKeyPair();
    const cert = await make({
      subject: [{ CN: [name] }],
      publicKey: keys.publicKey,
      sans: sanEntries(sans),
      ttlMs,
    });
    return { ...(await describe(cert)), keyPem: await keyPem(keys.privateKey) };
  };

  const signCsr: Pki["signCsr"] = async (csrPem, host, ttlMs) => {
    let csr: x509.Pkcs10CertificateRequest;
    try {
      csr = new x509.Pkcs10CertificateRequest(csrPem);
    } catch {
      throw new CsrError("csr_pem is not a PEM certificate signing request");
    }
    let valid = false;
    try {
      valid = await csr.verify();
    } catch {
      valid = false;
    }
    if (!valid) throw new CsrError("the certificate signing request's signature does not verify");
    const cns = csr.subjectName.getField("CN");
    if (cns.length !== 1 || cns[0] !== host)
      throw new CsrError(`the certificate signing request's subject CN must be the host name ${host}`);
    const alg = csr.publicKey.algorithm as EcKeyAlgorithm;
    if (alg.name !== "ECDSA" || !["P-256", "P-384"].includes(alg.namedCurve))
      throw new CsrError("the certificate signing request's key must be ECDSA P-256 (or P-384)");
    // Only the subject and the key are taken from the request: every extension is the CA's choice.
    const cert = await make({
      subject: [{ CN: [host] }],
      publicKey: csr.publicKey,
      sans: [{ type: "url", value: hostUri(host) }],
      ttlMs,
    });
    return describe(cert);
  };

  let serverCert: { certPem: string; keyPem: string };
  if (options.serverCert === false) {
    // Only the CA is wanted (stowage-controller ca-cert, issue-cert): the listeners' files are left as they are.
    serverCert = { certPem: "", keyPem: "" };
  } else if (config.tlsCert) {
    serverCert = {
      certPem: await readFile(config.tlsCert, "utf8"),
      keyPem: await readFile(config.tlsKey, "utf8"),
    };
  } else {
    const want = serverSans(config);
    const certPath = join(dir, "server.crt");
    const keyPath = join(dir, "server.key");
    const certPem = await readIfExists(certPath);
    const keyPemText = await readIfExists(keyPath);
    const why = certPem && keyPemText ? await staleReason(certPem, keyPemText, caCert, want) : "missing";
    if (why) {
      const issued = await issue("stowage-controller", want, SERVER_CERT_TTL_MS);
      // The key first, then the certificate: a reader that finds a pair that does not match issues again.
      await writeFileAtomic(keyPath, issued.keyPem);
      await writeFileAtomic(certPath, issued.certPem);
      log.info({ reason: why, sans: want, notAfter: issued.notAfter }, "issued the listeners' certificate");
      serverCert = { certPem: issued.certPem, keyPem: issued.keyPem };
    } else serverCert = { certPem: certPem!, keyPem: keyPemText! };
  }
  return { caPem, caCert, signCsr, serverCert, issue };
}

/** Why the listeners' certificate must be issued again, or "" when it is fine. */
async function staleReason(
  certPem: string,
  keyPemText: string,
  ca: x509.X509Certificate,
  want: string[],
): Promise<string> {
  let cert: x509.X509Certificate;
  try {
    cert = new x509.X509Certificate(certPem);
  } catch {
    return "unreadable";
  }
  if (!(await keyMatches(certPem, keyPemText))) return "key does not match";
  if (!(await cert.verify({ publicKey: ca.publicKey, signatureOnly: true }).catch(() => false)))
    return "issued by another CA";
  const life = cert.notAfter.getTime() - cert.notBefore.getTime();
  if (cert.notAfter.getTime() - Date.now() < life / 3) return "expiring";
  if (certSans(cert).join(",") !== want.map(canonical).sort().join(",")) return "addresses changed";
  return "";
}

/** The SHA-256 fingerprint of a PEM certificate, lowercase hex. */
export function fingerprintOf(certPem: string): string {
  return createHash("sha256")
    .update(Buffer.from(new x509.X509Certificate(certPem).rawData))
    .digest("hex");
}

/**
 * The host a verified peer certificate names (Node's getPeerCertificate()): its URI SAN urn:stowage:host:<h>,
 * which must agree with its CN. Undefined for a certificate that names no host (a user's, nats-server's).
 */
export function hostOfPeerCert(cert: {
  subject?: { CN?: string | string[] };
  subjectaltname?: string;
}): string | undefined {
  const uris = (cert.subjectaltname ?? "")
    .split(/,\s*/)
    .filter((s) => s.startsWith("URI:"))
    .map((s) => HOST_URI.exec(s.slice(4))?.[1])
    .filter((h): h is string => Boolean(h));
  const cn = cert.subject?.CN;
  if (uris.length !== 1 || typeof cn !== "string" || cn !== uris[0]) return undefined;
  return uris[0];
}
