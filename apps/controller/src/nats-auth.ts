/**
 * NATS decentralised JWT auth (docs/security.md, NATS). The controller holds three nkey seeds in its PKI directory:
 * the operator's (it signs the account JWTs the server trusts), the STOWAGE account's (it signs every user JWT:
 * the controller's own, and one per agent, allowing only that host's subjects) and the system account's (its
 * users push account updates, such as revocations, to `$SYS.REQ.CLAIMS.UPDATE`). The server learns the operator
 * and both accounts from the config `stowage-controller nats-config` writes (nats-config.ts) and is never
 * reloaded: a user JWT is checked against its account key when it connects, and a revocation is an account
 * JWT update.
 */

import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { encodeAccount, encodeOperator, encodeUser, type User } from "@nats-io/jwt";
import {
  createAccount,
  createOperator,
  createUser,
  fromPublic,
  fromSeed,
  type KeyPair,
} from "@nats-io/nkeys";
import {
  agentConsumerName,
  agentDeadLetterSubject,
  agentInboxPrefix,
  type Bus,
  COMMAND_STREAM,
  connectBus,
  heartbeatSubject,
  hostToken,
  inventoryRequestSubject,
  inventorySubject,
  resultSubject,
} from "@stowage/bus";
import type { Sql } from "@stowage/store";
import type { Logger } from "@stowage/telemetry";
import { type ControllerConfig, isLoopback, pkiDirOf } from "./config.js";
import type { NatsAuthority } from "./context.js";
import { writeFileAtomic } from "./files.js";

/** The PKI directory's nkey seed files (mode 0600, made once, kept across restarts). */
export const NATS_KEY_FILES = {
  operator: "nats-operator.nk",
  account: "nats-account.nk",
  system: "nats-sys.nk",
} as const;

/** The names in the JWTs (shown by the server's monitoring; nothing depends on them). */
export const NATS_OPERATOR_NAME = "stowage";
export const NATS_ACCOUNT_NAME = "STOWAGE";
export const NATS_SYSTEM_ACCOUNT_NAME = "SYS";

export interface NatsKeys {
  operator: KeyPair;
  /** The account the controller and the agents are users of. */
  account: KeyPair;
  /** The server's system account. */
  system: KeyPair;
}

const PREFIX: Record<keyof NatsKeys, string> = { operator: "O", account: "A", system: "A" };
const CREATE: Record<keyof NatsKeys, () => KeyPair> = {
  operator: createOperator,
  account: createAccount,
  system: createAccount,
};

/**
 * Reads the NATS signing keys from the PKI directory, making each one the first time (0700 directory, 0600 files).
 * Safe when several controllers start at once on one directory: a new seed is written to a file of its own and
 * linked into place, which fails when another process got there first; that one's seed is then read.
 */
export async function loadNatsKeys(pkiDir: string): Promise<NatsKeys> {
  await mkdir(pkiDir, { recursive: true, mode: 0o700 });
  const keys: Partial<NatsKeys> = {};
  for (const name of Object.keys(NATS_KEY_FILES) as (keyof NatsKeys)[]) {
    keys[name] = await loadOrCreateSeed(join(pkiDir, NATS_KEY_FILES[name]), PREFIX[name], CREATE[name]);
  }
  return keys as NatsKeys;
}

async function loadOrCreateSeed(path: string, prefix: string, create: () => KeyPair): Promise<KeyPair> {
  const existing = await readSeed(path, prefix);
  if (existing) return existing;
  const kp = create();
  // Linked, not renamed: a key another controller made first is never overwritten (files.ts).
  await writeFileAtomic(path, `${new TextDecoder().decode(kp.getSeed())}\n`, { exclusive: true });
  const made = await readSeed(path, prefix);
  if (!made) throw new Error(`${path}: the NATS key was written but cannot be read back`);
  return made;
}

/** The key in `path`, or undefined when there is no such file; a file that holds no such key is an error. */
async function readSeed(path: string, prefix: string): Promise<KeyPair | undefined> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  let kp: KeyPair;
  try {
    kp = fromSeed(new TextEncoder().encode(text.trim()));
  } catch {
    // Never the file's content: it is a secret.
    throw new Error(`${path} does not hold an nkey seed`);
  }
  if (!kp.getPublicKey().startsWith(prefix))
    throw new Error(`${path} holds an nkey of the wrong kind (expected an ${prefix}... key)`);
  return kp;
}

/** The system account gets no connections without limits of its own: unlimited, as the server bounds them. */
const SYSTEM_LIMITS = {
  subs: -1,
  data: -1,
  payload: -1,
  conn: -1,
  leaf: -1,
  imports: -1,
  exports: -1,
  wildcards: true,
};
/** The same for the Stowage account, which also needs JetStream enabled in its claims. */
const ACCOUNT_LIMITS = {
  ...SYSTEM_LIMITS,
  mem_storage: -1,
  disk_storage: -1,
  streams: -1,
  consumer: -1,
};

/** The operator JWT of the server's config (nats-config.ts), naming the system account. */
export function operatorJwt(keys: NatsKeys): Promise<string> {
  return encodeOperator(NATS_OPERATOR_NAME, keys.operator, {
    system_account: keys.system.getPublicKey(),
  });
}

/**
 * The STOWAGE account's JWT, signed by the operator, with JetStream on and `revocations`: user key ("U...") ->
 * unix seconds; the server refuses that key's JWTs issued at or before then, and closes its connections.
 */
export function accountJwt(keys: NatsKeys, revocations: Record<string, number> = {}): Promise<string> {
  return encodeAccount(
    NATS_ACCOUNT_NAME,
    keys.account,
    { limits: ACCOUNT_LIMITS, ...(Object.keys(revocations).length ? { revocations } : {}) },
    { signer: keys.operator },
  );
}

/** The system account's JWT, signed by the operator. */
export function systemAccountJwt(keys: NatsKeys): Promise<string> {
  return encodeAccount(
    NATS_SYSTEM_ACCOUNT_NAME,
    keys.system,
    { limits: SYSTEM_LIMITS },
    { signer: keys.operator },
  );
}

/**
 * What a host's agent may do on NATS, and nothing more: publish its results, heartbeats and inventories (and park
 * a poison command in the dead-letter stream), read its own durable consumer (info, next message, ack), and
 * receive on its own inbox and its inventory-request subject. It answers no requests (no `resp`), creates or
 * deletes nothing in JetStream, and never asks for `$JS.API.INFO` (connectBus skips that check for an agent).
 */
export function agentPermissions(hostId: string): Pick<User, "pub" | "sub"> {
  const consumer = agentConsumerName(hostId);
  return {
    pub: {
      allow: [
        resultSubject(hostId),
        heartbeatSubject(hostId),
        inventorySubject(hostId),
        `$JS.API.CONSUMER.INFO.${COMMAND_STREAM}.${consumer}`,
        `$JS.API.CONSUMER.MSG.NEXT.${COMMAND_STREAM}.${consumer}`,
        `$JS.ACK.${COMMAND_STREAM}.${consumer}.>`,
        // The agent's poison policy (apps/agent commands.ts) copies a parked command to its own subject there.
        agentDeadLetterSubject(hostId),
      ],
    },
    sub: { allow: [`${agentInboxPrefix(hostId)}.>`, inventoryRequestSubject(hostId)] },
  };
}

/** The name in an agent's user JWT (the server shows it; the token encoding keeps it one subject token). */
const agentUserName = (hostId: string) => `host:${hostToken(hostId)}`;

/** A user JWT with its seed: what a connection of the controller's own presents (connectBus `credentials`). */
export interface NatsCredentials {
  jwt: string;
  seed: string;
}

/** A user of `issuer` (an account key) with a key made in memory; its seed never leaves the process. */
async function inMemoryUser(
  name: string,
  issuer: KeyPair,
  user: Partial<User> = {},
  expiresAt?: Date,
): Promise<NatsCredentials> {
  const kp = createUser();
  const jwt = await encodeUser(name, kp, issuer, user, expiresAt ? { exp: unixSeconds(expiresAt) } : {});
  return { jwt, seed: new TextDecoder().decode(kp.getSeed()) };
}

const unixSeconds = (d: Date) => Math.floor(d.getTime() / 1000);

/** The controller's own credentials: a user of the STOWAGE account that may use every subject. */
export function controllerCredentials(keys: NatsKeys): Promise<NatsCredentials> {
  return inMemoryUser("stowage-controller", keys.account, { allowed_connection_types: ["STANDARD"] });
}

/** Where the short-lived system connection of a revocation push goes (the controller's own NATS settings). */
export interface NatsServerAccess {
  servers: string | string[];
  /** The CA (PEM) of the server's TLS certificate; without it the connection is plaintext. */
  tlsCa?: string;
}

export interface NatsAuthorityOptions {
  keys: NatsKeys;
  sql: Sql;
  /** Where revocations are pushed. */
  nats: NatsServerAccess;
  log?: Logger;
  /** Bounds each step of a push: the connection and the server's answer (ms, default 5000). */
  timeoutMs?: number;
}

/**
 * The advisory lock revocation pushes take, so that pushes of several controllers never pass each other (the
 * migrations take 0x5707a9e, the lease 0x5707a9f).
 */
export const NATS_PUSH_LOCK = 0x5707aa0;

/**
 * The controller's NatsAuthority (context.ts): mints agents' user JWTs with `agentPermissions`, and pushes the
 * account JWT with every revoked NATS key of host_certificates.
 */
export function createNatsAuthority(o: NatsAuthorityOptions): NatsAuthority {
  const timeout = o.timeoutMs ?? 5000;
  return {
    async mintAgentJwt(hostId, publicKey, expiresAt, sql = o.sql) {
      let user: KeyPair;
      try {
        user = fromPublic(publicKey);
      } catch {
        throw new Error("the NATS public key is not an nkey");
      }
      if (!publicKey.startsWith("U")) throw new Error("the NATS public key is not a user key (U...)");
      // A key once revoked stays revoked: a JWT issued after its revocation time would be accepted again.
      const [revoked] = await sql<{ n: number }[]>`
        select 1 as n from host_certificates
        where nats_public_key = ${publicKey} and revoked_at is not null limit 1`;
      if (revoked) throw new Error(`this NATS key of host ${hostId} has been revoked`);
      return encodeUser(
        agentUserName(hostId),
        user,
        o.keys.account,
        { ...agentPermissions(hostId), allowed_connection_types: ["STANDARD"] },
        { exp: unixSeconds(expiresAt) },
      );
    },
    async pushRevocations() {
      // Under the lock, each push reads every revocation committed before it, and is issued in a later second
      // than the push before it (the server keeps the account JWT issued last).
      await o.sql.begin(async (tx) => {
        await tx`select pg_advisory_xact_lock(${NATS_PUSH_LOCK}::int8)`;
        const rows = await tx<{ natsPublicKey: string; revokedAt: Date }[]>`
          select nats_public_key, min(revoked_at) as revoked_at from host_certificates
          where revoked_at is not null and nats_public_key <> ''
          group by nats_public_key`;
        const revocations: Record<string, number> = {};
        for (const r of rows) revocations[r.natsPublicKey] = unixSeconds(new Date(r.revokedAt));
        const jwt = await accountJwt(o.keys, revocations);
        const issued = Math.floor(Date.now() / 1000);
        await pushAccountJwt(o, jwt, timeout);
        o.log?.info({ revokedKeys: rows.length }, "NATS account revocations pushed");
        const wait = (issued + 1) * 1000 - Date.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      });
    },
  };
}

/** Sends an account JWT to `$SYS.REQ.CLAIMS.UPDATE` as a system-account user minted for this one push. */
async function pushAccountJwt(o: NatsAuthorityOptions, jwt: string, timeout: number): Promise<void> {
  const sys = await inMemoryUser(
    "stowage-claims-update",
    o.keys.system,
    {},
    new Date(Date.now() + 5 * 60_000),
  );
  const bus = await connectBus({
    servers: o.nats.servers,
    name: "stowage-controller-claims-update",
    credentials: sys,
    ...(o.nats.tlsCa ? { tlsCa: o.nats.tlsCa } : {}),
    // The system account has no JetStream.
    jetstreamCheck: false,
    timeoutMs: timeout,
  });
  try {
    const reply = await bus.nc.request("$SYS.REQ.CLAIMS.UPDATE", new TextEncoder().encode(jwt), { timeout });
    const answer = reply.json<{
      data?: { code?: number; message?: string };
      error?: { code?: number; description?: string };
    }>();
    if (answer.error || (answer.data?.code ?? 200) >= 300)
      throw new Error(
        `the NATS server refused the account update: ${answer.error?.description ?? answer.data?.message ?? "no reason given"}`,
      );
  } finally {
    await bus.close();
  }
}

/** The host names of a NATS URL setting (one URL, or several separated by commas). */
function natsHosts(natsUrl: string): string[] {
  return natsUrl
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => new URL(s.includes("://") ? s : `nats://${s}`).hostname.replace(/^\[|\]$/g, ""));
}

/** Whether the controller (and so its agents) use TLS to NATS: STOWAGE_NATS_TLS, auto meaning "off loopback". */
export function natsTlsEnabled(c: Pick<ControllerConfig, "natsTls" | "natsUrl">): boolean {
  if (c.natsTls !== "auto") return c.natsTls === "on";
  return natsHosts(c.natsUrl).some((h) => !isLoopback(h));
}

/** How the controller reaches NATS: its own credentials and keys with STOWAGE_NATS_AUTH=jwt, and the CA for TLS. */
export interface ControllerNatsAccess {
  keys?: NatsKeys;
  credentials?: NatsCredentials;
  /** PEM of the CA the server's certificate is checked against; undefined: plaintext. */
  tlsCa?: string;
}

export async function controllerNatsAccess(
  config: Pick<ControllerConfig, "natsAuth" | "natsTls" | "natsUrl" | "natsCaFile" | "pkiDir" | "dataDir">,
): Promise<ControllerNatsAccess> {
  const access: ControllerNatsAccess = {};
  if (natsTlsEnabled(config)) {
    const caFile = config.natsCaFile || join(pkiDirOf(config), "ca.crt");
    try {
      access.tlsCa = await readFile(caFile, "utf8");
    } catch (err) {
      throw new Error(
        `TLS to NATS needs the CA of the server's certificate: cannot read ${caFile} (STOWAGE_NATS_CA_FILE, or the controller's CA): ${(err as Error).message}`,
      );
    }
  }
  if (config.natsAuth === "jwt") {
    access.keys = await loadNatsKeys(pkiDirOf(config));
    access.credentials = await controllerCredentials(access.keys);
  }
  return access;
}

/**
 * Pushes the revocations now, again 30 s after each failure until one succeeds, and again after each reconnect of
 * `bus` (the server may have restarted on a config whose preloaded account JWT is newer than its last update).
 * `first` settles when the first attempt has (it never rejects).
 */
export function keepRevocationsPushed(
  authority: NatsAuthority,
  bus: Pick<Bus, "nc">,
  log: Logger,
  retryMs = 30_000,
): { first: Promise<void>; stop(): void } {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let running: Promise<void> | undefined;
  let again = false;
  const attempt = (): Promise<void> => {
    if (running) {
      again = true;
      return running;
    }
    clearTimeout(timer);
    running = authority
      .pushRevocations()
      .catch((err) => {
        log.error({ err }, `cannot push the NATS revocations; retrying in ${Math.round(retryMs / 1000)} s`);
        if (!stopped) timer = setTimeout(() => void attempt(), retryMs);
      })
      .finally(() => {
        running = undefined;
        if (again && !stopped) {
          again = false;
          void attempt();
        }
      });
    return running;
  };
  void (async () => {
    for await (const s of bus.nc.status()) {
      if (stopped) return;
      if (s.type === "reconnect") void attempt();
    }
  })().catch(() => {});
  return {
    first: attempt(),
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
