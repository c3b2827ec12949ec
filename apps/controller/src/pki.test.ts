import { X509Certificate as NodeX509, webcrypto } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { makeTempDir } from "@stowage/testkit";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ControllerConfig, loadControllerConfig } from "./config.js";
import { CsrError, hostOfPeerCert, hostUri, loadPki, serverSans } from "./pki.js";

const log = pino({ level: "silent" });
const subtle = webcrypto.subtle;

async function csrFor(cn: string, extra: x509.Extension[] = []) {
  const keys = (await subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ])) as webcrypto.CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [cn] }],
    keys,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions: extra,
  });
  return { pem: csr.toString("pem"), keys };
}

describe("the controller's PKI", () => {
  let tmp: Awaited<ReturnType<typeof makeTempDir>>;
  let config: ControllerConfig;
  beforeAll(async () => {
    tmp = await makeTempDir("stowage-pki-");
    config = loadControllerConfig(
      {},
      {
        dataDir: tmp.path,
        grpcListen: "127.0.0.1:0",
        metricsListen: "127.0.0.1:0",
        tlsSans: "ctl.example,10.1.2.3",
      },
    );
  });
  afterAll(async () => tmp?.cleanup());

  it("makes the CA once, keeps its key private, and reuses it (and the server certificate) on the next load", async () => {
    const [a, b] = await Promise.all([loadPki(config, log), loadPki(config, log)]);
    expect(a.caPem).toBe(b.caPem);
    const dir = join(tmp.path, "pki");
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect((await stat(join(dir, "ca.key"))).mode & 0o777).toBe(0o600);
    expect((await stat(join(dir, "server.key"))).mode & 0o777).toBe(0o600);
    const c = await loadPki(config, log);
    expect(c.caPem).toBe(a.caPem);
    expect(c.serverCert.certPem).toBe(await readFile(join(dir, "server.crt"), "utf8"));
    const again = await loadPki(config, log);
    expect(again.serverCert.certPem).toBe(c.serverCert.certPem);
    const ca = new NodeX509(a.caPem);
    expect(ca.ca).toBe(true);
  });

  it("issues the server certificate for the listen addresses, localhost and STOWAGE_TLS_SANS; new addresses re-issue it", async () => {
    const pki = await loadPki(config, log);
    const cert = new NodeX509(pki.serverCert.certPem);
    expect(cert.checkIssued(new NodeX509(pki.caPem))).toBe(true);
    expect(cert.subjectAltName?.split(", ").sort()).toEqual(
      ["DNS:ctl.example", "DNS:localhost", "IP Address:10.1.2.3", "IP Address:127.0.0.1"].sort(),
    );
    const moved = await loadPki({ ...config, tlsSans: "other.example" }, log);
    expect(moved.serverCert.certPem).not.toBe(pki.serverCert.certPem);
    expect(new NodeX509(moved.serverCert.certPem).subjectAltName).toContain("DNS:other.example");
    expect(serverSans({ grpcListen: "0.0.0.0:1", metricsListen: "127.0.0.1:2", tlsSans: "" })).toContain(
      "127.0.0.1",
    );
  });

  it("signs a CSR for its host: CN and URI SAN name the host, client and server auth, no requested extension", async () => {
    const pki = await loadPki(config, log);
    const { pem } = await csrFor("node1", [
      new x509.BasicConstraintsExtension(true, 3, true),
      new x509.SubjectAlternativeNameExtension([{ type: "dns", value: "evil.example" }]),
    ]);
    const issued = await pki.signCsr(pem, "node1", 3600_000);
    expect(issued.serial).toMatch(/^[4-7][0-9a-f]{31}$/);
    expect(issued.notAfter.getTime() - Date.now()).toBeLessThanOrEqual(3600_000);
    const cert = new NodeX509(issued.certPem);
    expect(cert.ca).toBe(false);
    expect(cert.subject).toBe("CN=node1");
    expect(cert.subjectAltName).toBe(`URI:${hostUri("node1")}`);
    expect(cert.serialNumber.toLowerCase()).toBe(issued.serial);
    expect(cert.fingerprint256.replaceAll(":", "").toLowerCase()).toBe(issued.fingerprint);
    expect(cert.keyUsage).toEqual(expect.arrayContaining(["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]));
    expect(cert.verify(new NodeX509(pki.caPem).publicKey)).toBe(true);
    expect(hostOfPeerCert({ subject: { CN: "node1" }, subjectaltname: cert.subjectAltName! })).toBe("node1");
    expect(
      hostOfPeerCert({ subject: { CN: "node2" }, subjectaltname: cert.subjectAltName! }),
    ).toBeUndefined();
  });

  it("refuses a CSR whose CN is not the host, one with a bad signature, and garbage", async () => {
    const pki = await loadPki(config, log);
    const other = await csrFor("node2");
    await expect(pki.signCsr(other.pem, "node1", 3600_000)).rejects.toThrow(CsrError);
    await expect(pki.signCsr(other.pem, "node1", 3600_000)).rejects.toThrow(/CN must be the host name node1/);
    // Swap the signature of one request onto another's body.
    const a = new x509.Pkcs10CertificateRequest((await csrFor("node1")).pem);
    const b = new x509.Pkcs10CertificateRequest((await csrFor("node1")).pem);
    const raw = Buffer.from(a.rawData);
    const sigA = Buffer.from(a.signature);
    const sigB = Buffer.from(b.signature);
    const at = raw.lastIndexOf(sigA);
    expect(at).toBeGreaterThan(0);
    const forged = Buffer.concat([
      raw.subarray(0, at),
      sigB.subarray(0, sigA.length),
      raw.subarray(at + sigA.length),
    ]);
    await expect(
      pki.signCsr(x509.PemConverter.encode(forged, "CERTIFICATE REQUEST"), "node1", 3600_000),
    ).rejects.toThrow(/signature does not verify|not a PEM/);
    await expect(pki.signCsr("hello", "node1", 3600_000)).rejects.toThrow(CsrError);
  });

  it("a certificate from another CA does not verify against this one", async () => {
    const mine = await loadPki(config, log);
    const otherTmp = await makeTempDir("stowage-pki-other-");
    try {
      const theirs = await loadPki({ ...config, dataDir: otherTmp.path }, log);
      expect(theirs.caPem).not.toBe(mine.caPem);
      const issued = await theirs.signCsr((await csrFor("node1")).pem, "node1", 3600_000);
      const cert = new NodeX509(issued.certPem);
      expect(cert.checkIssued(new NodeX509(mine.caPem))).toBe(false);
      expect(cert.verify(new NodeX509(mine.caPem).publicKey)).toBe(false);
    } finally {
      await otherTmp.cleanup();
    }
  });

  it("uses a CA the operator gives, and issues certificates for nats-server", async () => {
    const own = await loadPki(config, log);
    const dir = join(tmp.path, "pki");
    const given = await loadPki(
      {
        ...config,
        pkiDir: join(tmp.path, "elsewhere"),
        tlsCaCert: join(dir, "ca.crt"),
        tlsCaKey: join(dir, "ca.key"),
      },
      log,
    );
    expect(given.caPem).toBe(own.caPem);
    const nats = await given.issue("nats", ["10.0.0.1", "nats.example"], 24 * 3600_000);
    const cert = new NodeX509(nats.certPem);
    expect(cert.subjectAltName).toBe("IP Address:10.0.0.1, DNS:nats.example");
    expect(cert.checkIssued(new NodeX509(own.caPem))).toBe(true);
    expect(nats.keyPem).toContain("BEGIN PRIVATE KEY");
    await expect(loadPki({ ...config, tlsCaCert: join(dir, "ca.crt") }, log)).rejects.toThrow(/go together/);
  });
});
