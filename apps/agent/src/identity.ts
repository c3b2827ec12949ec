import { createPrivateKey, randomBytes, webcrypto, X509Certificate } from "node:crypto";
import { chmod, mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { join as joinPath } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import { createUser, fromSeed } from "@nats-io/nkeys";
import type { AgentService, HostCredentials } from "@stowage/proto";
import type { Logger } from "@stowage/telemetry";
import type { AgentConfig } from "./config.js";

/**
 * The host's identity in the secure mode (an https controllerUrl; docs/operating.md, the agent in secure mode):
 * a key made here (it never leaves the host), the certificate the controller signed for it, the cluster CA, and
 * a NATS user key with the JWT the controller minted for it. The first start joins with a one-time token; later
 * starts reuse what stateDir holds; the certificate is renewed at two thirds of its lifetime over mutual TLS.
 */
export interface HostIdentity {
  hostName: string;
  /** PEM: the host's certificate (client and server auth). */
  certPem: string;
  /** PKCS#8 PEM of the certificate's key. */
  keyPem: string;
  /** PEM: the cluster CA (trusted for the controller, NATS, and checked against the certificate). */
  caPem: string;
  /** The NATS user JWT ("" when NATS runs without per-agent credentials). */
  natsJwt: string;
  /** The NATS user nkey seed ("SU..."). */
  natsSeed: string;
  /** The certificate's serial (lowercase hex) and validity. */
  serial: string;
  notBefore: Date;
  notAfter: Date;
  /** When this process received it (join or renewal); unset for one loaded from stateDir. */
  receivedAt?: Date;
}

/** What the client factory is given: the CA to trust and, once joined, the host's certificate and key (mTLS). */
export interface TlsMaterial {
  ca: string;
  cert?: string;
  key?: string;
}

/** The two identity calls of the AgentService (Join without a client certificate, RenewCertificate with one). */
export type IdentityClient = Pick<Client<typeof AgentService>, "join" | "renewCertificate">;
export type IdentityClientFactory = (tls: TlsMaterial) => IdentityClient;

export type IdentityConfig = Pick<AgentConfig, "hostName" | "stateDir" | "caFile" | "joinTokenFile">;

/** The files of stateDir; the certificate is renamed into place last (commit). */
export const IDENTITY_FILES = {
  ca: "ca.crt",
  natsJwt: "nats-user.jwt",
  natsSeed: "nats-user.nk",
  key: "host.key",
  cert: "host.crt",
} as const;
type Part = keyof typeof IDENTITY_FILES;
const COMMIT_ORDER: Part[] = ["ca", "natsJwt", "natsSeed", "key", "cert"];
/** The current files, the set being committed, and the set the host had before (a fallback while it is valid). */
const SUFFIXES = ["", ".next", ".prev"] as const;

const CALL_TIMEOUT_MS = 30_000;

/** The env variable holding the join token when no joinTokenFile is set. */
export const JOIN_TOKEN_ENV = "STOWAGE_JOIN_TOKEN";

/**
 * The join token: joinTokenFile's content when that file exists (it may have been deleted after the join), else
 * STOWAGE_JOIN_TOKEN. Never logged.
 */
export async function readJoinToken(
  config: Pick<AgentConfig, "joinTokenFile">,
  env: NodeJS.ProcessEnv = process.env,
): Promise<string | undefined> {
  if (config.joinTokenFile) {
    try {
      const token = (await readFile(config.joinTokenFile, "utf8")).trim();
      if (token) return token;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT")
        throw new Error(`cannot read joinTokenFile ${config.joinTokenFile}: ${(err as Error).message}`);
    }
  }
  const token = env[JOIN_TOKEN_ENV]?.trim();
  return token ? token : undefined;
}

/** A call the controller refused for who the caller is (a bad token, a revoked or unknown certificate). */
export function isRefusal(err: unknown): boolean {
  const code = ConnectError.from(err).code;
  return code === Code.Unauthenticated || code === Code.PermissionDenied;
}

/**
 * The identity stateDir holds when it is usable (a certificate for this host, not expired, its key, the CA that
 * signed it), else the join's: it needs a join token then (an error that says how to make one otherwise). A
 * controller that cannot be reached yet is waited for; a refused join is an error.
 */
export async function loadOrJoin(
  config: IdentityConfig,
  clients: IdentityClientFactory,
  log: Logger,
  joinToken?: string,
): Promise<{ identity: HostIdentity; joined: boolean }> {
  const held = await loadIdentity(config, log);
  if (held) {
    log.info(
      { serial: held.serial, notAfter: held.notAfter.toISOString() },
      "using the host certificate in stateDir",
    );
    return { identity: held, joined: false };
  }
  const token = joinToken ?? (await readJoinToken(config));
  if (!token) {
    throw new Error(
      `no certificate in ${config.stateDir} and no join token: create one with \`stowctl token create --host ${config.hostName}\` and set ${JOIN_TOKEN_ENV} (or joinTokenFile)`,
    );
  }
  return { identity: await joinWhenReachable(config, clients, token, log), joined: true };
}

/** Joins, waiting for the controller as long as it takes (an agent may start first); a refusal is an error. */
export async function joinWhenReachable(
  config: IdentityConfig,
  clients: IdentityClientFactory,
  token: string,
  log: Logger,
): Promise<HostIdentity> {
  let delay = 250;
  for (;;) {
    try {
      return await joinCluster(config, clients, token, log);
    } catch (err) {
      if (!(err instanceof ConnectError)) throw err;
      if (err.code === Code.Unavailable || err.code === Code.DeadlineExceeded) {
        log.warn({ err: err.rawMessage }, "cannot reach the controller to join yet; retrying");
        await sleep(delay);
        delay = Math.min(delay * 2, 5000);
        continue;
      }
      if (isRefusal(err) || err.code === Code.FailedPrecondition || err.code === Code.InvalidArgument)
        throw new Error(`the controller refused the join: ${err.rawMessage}`);
      const hint = /certificate/i.test(err.rawMessage)
        ? ` (is caFile ${config.caFile} the CA that signed the controller's certificate?)`
        : "";
      throw new Error(`cannot join the cluster: ${err.rawMessage}${hint}`);
    }
  }
}

/** Joins with a one-time token: a new key and NATS user key, a CSR naming the host; commits what it gets. */
export async function joinCluster(
  config: IdentityConfig,
  clients: IdentityClientFactory,
  token: string,
  log: Logger,
): Promise<HostIdentity> {
  if (!config.caFile)
    throw new Error(
      "the first join needs caFile: the cluster CA's PEM (`stowage-controller ca-cert` prints it)",
    );
  let ca: string;
  try {
    ca = await readFile(config.caFile, "utf8");
  } catch (err) {
    throw new Error(`cannot read caFile ${config.caFile}: ${(err as Error).message}`);
  }
  const fresh = await freshKeys(config.hostName);
  const answer = await clients({ ca }).join(
    {
      joinToken: token,
      hostName: config.hostName,
      csrPem: fresh.csrPem,
      natsPublicKey: fresh.natsPublicKey,
    },
    { timeoutMs: CALL_TIMEOUT_MS },
  );
  const identity = accept(config.hostName, fresh, answer.credentials);
  await commitIdentity(config.stateDir, identity);
  log.info(
    { serial: identity.serial, notAfter: identity.notAfter.toISOString() },
    "joined the cluster; the join token is used up (its file may be deleted)",
  );
  return identity;
}

/** Renews over mTLS with the current certificate: a new key and NATS user key; commits what it gets. */
export async function renewIdentity(
  config: IdentityConfig,
  clients: IdentityClientFactory,
  current: HostIdentity,
  log: Logger,
): Promise<HostIdentity> {
  const fresh = await freshKeys(config.hostName);
  const answer = await clients(tlsOf(current)).renewCertificate(
    { csrPem: fresh.csrPem, natsPublicKey: fresh.natsPublicKey },
    { timeoutMs: CALL_TIMEOUT_MS },
  );
  const identity = accept(config.hostName, fresh, answer.credentials);
  await commitIdentity(config.stateDir, identity, current);
  log.info(
    { serial: identity.serial, notAfter: identity.notAfter.toISOString() },
    "renewed the host certificate",
  );
  return identity;
}

/** The TLS material of an identity, for the gRPC transport (mTLS) and the metrics listener. */
export function tlsOf(identity: HostIdentity): Required<TlsMaterial> {
  return { ca: identity.caPem, cert: identity.certPem, key: identity.keyPem };
}

/**
 * When to renew (ms since the epoch): at two thirds of the certificate's lifetime, counted from when it was
 * received when that is later than its notBefore (a CA backdates notBefore for clock skew, which would otherwise
 * make a short-lived certificate due at once, again and again).
 */
export function renewalDue(identity: HostIdentity): number {
  const from = Math.max(identity.notBefore.getTime(), identity.receivedAt?.getTime() ?? 0);
  return from + ((identity.notAfter.getTime() - from) * 2) / 3;
}

export interface RenewalOptions {
  config: IdentityConfig;
  clients: IdentityClientFactory;
  log: Logger;
  identity: HostIdentity;
  /** Called with each new identity once it is on disk: rebuild transports, use the new JWT on reconnect. */
  onRenewed: (identity: HostIdentity) => void;
  /** The first retry's wait after a failed renewal (doubling up to maxRetryMs). */
  minRetryMs?: number;
  maxRetryMs?: number;
}

/** setTimeout takes at most 2^31-1 ms; a later time is reached in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Renews at two thirds of each certificate's lifetime, retrying with backoff (each failure logged with the
 * certificate's not_after). The timers are unref'd. Returns what stops it.
 */
export function keepRenewed(opts: RenewalOptions): () => void {
  const minRetry = opts.minRetryMs ?? 1000;
  const maxRetry = opts.maxRetryMs ?? 5 * 60_000;
  let current = opts.identity;
  let failures = 0;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const at = (due: number) => {
    if (stopped) return;
    const wait = due - Date.now();
    timer = setTimeout(
      () => (Date.now() < due ? at(due) : void run()),
      Math.min(Math.max(wait, 0), MAX_TIMER_MS),
    );
    timer.unref();
  };
  const run = async () => {
    try {
      const next = await renewIdentity(opts.config, opts.clients, current, opts.log);
      current = next;
      failures = 0;
      if (stopped) return;
      opts.onRenewed(next);
      // Never at once again, whatever the certificate says: a renewal loop would flood the controller.
      at(Math.max(renewalDue(next), Date.now() + minRetry));
    } catch (err) {
      failures++;
      const retryMs = Math.min(maxRetry, minRetry * 2 ** Math.min(failures - 1, 20));
      const fields = {
        err: ConnectError.from(err).rawMessage,
        notAfter: current.notAfter.toISOString(),
        retryMs,
      };
      if (isRefusal(err))
        opts.log.error(
          fields,
          "the controller refused to renew this host's certificate (revoked?): the host must join again with a new token",
        );
      else if (Date.now() >= current.notAfter.getTime())
        opts.log.error(
          fields,
          "the host certificate expired before it could be renewed: the host must join again with a new token",
        );
      else opts.log.warn(fields, "cannot renew the host certificate yet; retrying");
      at(Date.now() + retryMs);
    }
  };
  opts.log.info(
    { notAfter: current.notAfter.toISOString(), renewAt: new Date(renewalDue(current)).toISOString() },
    "host certificate renewal scheduled",
  );
  at(renewalDue(current));
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

interface FreshKeys {
  keyPem: string;
  csrPem: string;
  natsSeed: string;
  natsPublicKey: string;
}

/**
 * A new ECDSA P-256 key and a CSR for it naming the host, and a new NATS user key. @peculiar/x509 is loaded
 * here, on the first join or renewal only: an agent that has its certificate does not carry it in memory.
 */
async function freshKeys(hostName: string): Promise<FreshKeys> {
  const x509 = await import("@peculiar/x509");
  x509.cryptoProvider.set(webcrypto);
  const alg = { name: "ECDSA", namedCurve: "P-256" };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${hostName}`,
    keys,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: "url", value: hostUri(hostName) }])],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
  const nkey = createUser();
  return {
    keyPem: pem("PRIVATE KEY", pkcs8),
    csrPem: csr.toString("pem"),
    natsSeed: new TextDecoder().decode(nkey.getSeed()),
    natsPublicKey: nkey.getPublicKey(),
  };
}

const hostUri = (hostName: string) => `urn:stowage:host:${hostName}`;

function pem(label: string, der: Buffer): string {
  const lines = der.toString("base64").match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/** The controller's answer, checked: a certificate for this host and the new key, signed by the CA it sent. */
function accept(hostName: string, fresh: FreshKeys, creds: HostCredentials | undefined): HostIdentity {
  if (!creds?.certificatePem || !creds.caPem)
    throw new Error("the controller's answer holds no certificate or CA");
  const identity = check({
    hostName,
    certPem: creds.certificatePem,
    keyPem: fresh.keyPem,
    caPem: creds.caPem,
    natsJwt: creds.natsJwt,
    natsSeed: fresh.natsSeed,
  });
  if (typeof identity === "string") throw new Error(`the controller's answer is not usable: ${identity}`);
  if (!natsPairMatches(creds.natsJwt, fresh.natsSeed))
    throw new Error("the controller's answer is not usable: its NATS JWT names another key");
  return { ...identity, receivedAt: new Date() };
}

type Files = Omit<HostIdentity, "serial" | "notBefore" | "notAfter">;

/** The identity of these files, or why it is not usable (never quoting a file: they hold keys). */
function check(files: Files, now = Date.now()): HostIdentity | string {
  let cert: X509Certificate;
  let ca: X509Certificate;
  try {
    cert = new X509Certificate(files.certPem);
  } catch {
    return "the certificate does not parse";
  }
  try {
    ca = new X509Certificate(files.caPem);
  } catch {
    return "the CA does not parse";
  }
  const notBefore = new Date(cert.validFrom);
  const notAfter = new Date(cert.validTo);
  if (!(notAfter.getTime() > now)) return `the certificate expired at ${notAfter.toISOString()}`;
  const names =
    cert.subject.split("\n").includes(`CN=${files.hostName}`) &&
    (cert.subjectAltName ?? "").split(", ").includes(`URI:${hostUri(files.hostName)}`);
  if (!names) return `the certificate does not name host ${files.hostName}`;
  try {
    if (!cert.checkPrivateKey(createPrivateKey(files.keyPem)))
      return "the key does not match the certificate";
  } catch {
    return "the key does not parse";
  }
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) return "the CA did not sign the certificate";
  return { ...files, serial: cert.serialNumber.toLowerCase(), notBefore, notAfter };
}

/** An empty JWT (NATS without per-agent credentials) goes with any seed; else its subject is the seed's key. */
function natsPairMatches(jwt: string, seed: string): boolean {
  let publicKey: string;
  try {
    publicKey = fromSeed(new TextEncoder().encode(seed)).getPublicKey();
  } catch {
    return false;
  }
  if (jwt === "") return true;
  try {
    const claims = JSON.parse(Buffer.from(jwt.split(".")[1] ?? "", "base64url").toString("utf8"));
    return claims?.sub === publicKey;
  } catch {
    return false;
  }
}

async function readPart(stateDir: string, part: Part, suffix: string): Promise<string | undefined> {
  try {
    return await readFile(joinPath(stateDir, IDENTITY_FILES[part] + suffix), "utf8");
  } catch {
    return undefined;
  }
}

/**
 * The usable identity in stateDir, if any. A crash during a commit may leave the current files of two sets, so
 * every combination of the current, the next and the previous files is tried: the certificate that is valid
 * for this host and expires last, with a key that matches it and the CA that signed it, then the NATS pair
 * whose JWT names its seed's key. A set found other than as the current files is committed again.
 */
export async function loadIdentity(config: IdentityConfig, log: Logger): Promise<HostIdentity | undefined> {
  const read = async (part: Part) =>
    (await Promise.all(SUFFIXES.map((s) => readPart(config.stateDir, part, s)))).map((text, i) => ({
      text,
      suffix: SUFFIXES[i] as string,
    }));
  const [certs, keys, cas, jwts, seeds] = await Promise.all(
    (["cert", "key", "ca", "natsJwt", "natsSeed"] as Part[]).map(read),
  );
  let best: HostIdentity | undefined;
  let bestAt = "";
  let bestCertAt = "";
  let why: string | undefined;
  for (const c of certs ?? []) {
    if (c.text === undefined) continue;
    for (const k of keys ?? []) {
      if (k.text === undefined) continue;
      for (const a of cas ?? []) {
        if (a.text === undefined) continue;
        const found = check({
          hostName: config.hostName,
          certPem: c.text,
          keyPem: k.text,
          caPem: a.text,
          natsJwt: "",
          natsSeed: "",
        });
        if (typeof found === "string") {
          if (c.suffix === "" && k.suffix === "" && a.suffix === "") why = found;
          continue;
        }
        if (!best || later(found, c.suffix, best, bestCertAt)) {
          best = found;
          bestAt = c.suffix + k.suffix + a.suffix;
          bestCertAt = c.suffix;
        }
      }
    }
  }
  if (!best) {
    if (why)
      log.warn({ stateDir: config.stateDir, reason: why }, "the host certificate in stateDir is not usable");
    return undefined;
  }
  let nats: { jwt: string; seed: string; at: string } | undefined;
  for (const j of jwts ?? []) {
    for (const s of seeds ?? []) {
      if (nats || j.text === undefined || s.text === undefined) continue;
      if (natsPairMatches(j.text, s.text)) nats = { jwt: j.text, seed: s.text, at: j.suffix + s.suffix };
    }
  }
  const identity: HostIdentity = { ...best, natsJwt: nats?.jwt ?? "", natsSeed: nats?.seed ?? "" };
  if (!nats) log.warn({ stateDir: config.stateDir }, "no usable NATS credentials in stateDir");
  if (bestAt !== "" || (nats && nats.at !== "")) {
    log.warn(
      { stateDir: config.stateDir, serial: identity.serial },
      "stateDir held an interrupted update: committing the usable set again",
    );
    await commitIdentity(config.stateDir, identity);
  }
  return identity;
}

/** Rank of a certificate's file: a set being committed is newer than the current one, the previous older. */
const SUFFIX_RANK: Record<string, number> = { ".next": 2, "": 1, ".prev": 0 };

/** Whether a certificate found in the file with suffix `at` is to be preferred: it expires later, or is newer. */
function later(a: HostIdentity, at: string, b: HostIdentity, bAt: string): boolean {
  if (a.notAfter.getTime() !== b.notAfter.getTime()) return a.notAfter > b.notAfter;
  if (a.notBefore.getTime() !== b.notBefore.getTime()) return a.notBefore > b.notBefore;
  return (SUFFIX_RANK[at] ?? 0) > (SUFFIX_RANK[bAt] ?? 0);
}

function contents(identity: HostIdentity): Record<Part, string> {
  return {
    ca: identity.caPem,
    natsJwt: identity.natsJwt,
    natsSeed: identity.natsSeed,
    key: identity.keyPem,
    cert: identity.certPem,
  };
}

/**
 * Writes an identity so that a crash at any point leaves a matching set to load: every file of the new set
 * under its ".next" name first, then (on a renewal) the set in use under ".prev", then each ".next" renamed
 * into place, the certificate last. Directory 0700, files 0600, each written atomically.
 */
export async function commitIdentity(
  stateDir: string,
  identity: HostIdentity,
  previous?: HostIdentity,
): Promise<void> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  await chmod(stateDir, 0o700);
  const next = contents(identity);
  for (const part of COMMIT_ORDER) await writeAtomic(stateDir, `${IDENTITY_FILES[part]}.next`, next[part]);
  await syncDir(stateDir);
  if (previous) {
    const prev = contents(previous);
    for (const part of COMMIT_ORDER) await writeAtomic(stateDir, `${IDENTITY_FILES[part]}.prev`, prev[part]);
  } else {
    // A join: what the host held before belongs to an identity it no longer has.
    for (const part of COMMIT_ORDER)
      await rm(joinPath(stateDir, `${IDENTITY_FILES[part]}.prev`), { force: true });
  }
  await syncDir(stateDir);
  for (const part of COMMIT_ORDER) {
    const name = IDENTITY_FILES[part];
    await rename(joinPath(stateDir, `${name}.next`), joinPath(stateDir, name));
  }
  await syncDir(stateDir);
}

/** Writes `dir/name` (0600) atomically: a temporary file, fsynced, renamed into place. */
export async function writeAtomic(dir: string, name: string, text: string): Promise<void> {
  const tmp = joinPath(dir, `.${name}.${randomBytes(6).toString("hex")}.tmp`);
  const fh = await open(tmp, "wx", 0o600);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, joinPath(dir, name));
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
