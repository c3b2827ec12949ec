/**
 * `stowage-controller nats-config`: writes the nats-server config that trusts this controller's NATS keys
 * (nats-auth.ts): the operator JWT, the system account, a full resolver preloaded with both accounts' JWTs, and
 * JetStream; with a certificate, TLS for clients (docs/security.md, NATS). The server is started on it once and
 * never needs reloading: agents' credentials are user JWTs the controller signs, and revocations are account
 * updates the controller pushes.
 */

import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { loadControllerConfig, pkiDirOf } from "./config.js";
import { writeFileAtomic } from "./files.js";
import { accountJwt, loadNatsKeys, type NatsKeys, operatorJwt, systemAccountJwt } from "./nats-auth.js";

export interface NatsServerConfigOptions {
  /** host:port clients connect to. Default 0.0.0.0:4222. */
  listen?: string;
  /** JetStream's store directory. */
  jetstreamDir: string;
  /** Where the full resolver keeps the account JWTs it is sent (revocations survive a restart there). */
  resolverDir: string;
  /** Client TLS: the server's certificate and key (PEM files), and optionally a CA file. */
  tls?: { cert: string; key: string; ca?: string };
  /** JetStream's limits in bytes (the server's defaults otherwise). */
  maxMemoryStore?: number;
  maxFileStore?: number;
}

export const DEFAULT_NATS_LISTEN = "0.0.0.0:4222";
export const DEFAULT_JETSTREAM_DIR = "/var/lib/nats/jetstream";
export const DEFAULT_RESOLVER_DIR = "/var/lib/nats/accounts";

/**
 * A string of the config file, quoted: the server's parser reads a double-quoted string with JSON's escapes of
 * `"` and `\`, and takes no variable (`$NAME`) or include inside one. Control characters are refused.
 */
export function confString(value: string, what: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: that is what is refused
  if (/[\u0000-\u001f\u007f]/.test(value)) throw new Error(`${what} contains a control character`);
  return JSON.stringify(value);
}

const LISTEN = /^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}$/;

/** The complete nats-server config for these keys. */
export async function natsServerConfig(keys: NatsKeys, o: NatsServerConfigOptions): Promise<string> {
  const listen = o.listen ?? DEFAULT_NATS_LISTEN;
  if (!LISTEN.test(listen)) throw new Error(`--listen ${JSON.stringify(listen)}: use host:port`);
  const account = keys.account.getPublicKey();
  const system = keys.system.getPublicKey();
  const bytes = (n: number | undefined, what: string) => {
    if (n === undefined) return [];
    if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`${what} must be a positive number of bytes`);
    return [`  ${what}: ${n}`];
  };
  const lines = [
    "# Written by `stowage-controller nats-config`: NATS decentralised JWT auth with this controller's keys",
    "# (docs/security.md). Agents authenticate with user JWTs the controller signs; no reload is ever needed.",
    `listen: ${confString(listen, "--listen")}`,
    "",
    "jetstream {",
    `  store_dir: ${confString(resolve(o.jetstreamDir), "--jetstream-dir")}`,
    ...bytes(o.maxMemoryStore, "max_memory_store"),
    ...bytes(o.maxFileStore, "max_file_store"),
    "}",
    "",
    `operator: ${confString(await operatorJwt(keys), "operator JWT")}`,
    `system_account: ${confString(system, "system account")}`,
    "",
    // A full resolver, not MEMORY: it takes the account updates the controller pushes (revocations), and keeps
    // them in its directory across restarts.
    "resolver {",
    "  type: full",
    `  dir: ${confString(resolve(o.resolverDir), "--resolver-dir")}`,
    "  allow_delete: false",
    '  interval: "2m"',
    "}",
    "resolver_preload {",
    `  ${confString(account, "account")}: ${confString(await accountJwt(keys), "account JWT")}`,
    `  ${confString(system, "system account")}: ${confString(await systemAccountJwt(keys), "system account JWT")}`,
    "}",
  ];
  if (o.tls) {
    lines.push(
      "",
      // Clients are not asked for certificates: agents authenticate by their JWT, over TLS.
      "tls {",
      `  cert_file: ${confString(resolve(o.tls.cert), "--tls-cert")}`,
      `  key_file: ${confString(resolve(o.tls.key), "--tls-key")}`,
      ...(o.tls.ca ? [`  ca_file: ${confString(resolve(o.tls.ca), "--tls-ca")}`] : []),
      "  verify: false",
      "}",
    );
  }
  return `${lines.join("\n")}\n`;
}

export const NATS_CONFIG_USAGE = `Usage: stowage-controller nats-config --out FILE [--listen HOST:PORT]
         [--tls-cert FILE --tls-key FILE [--tls-ca FILE]]
         [--jetstream-dir DIR] [--resolver-dir DIR] [--pki-dir DIR]
         [--jetstream-max-memory BYTES] [--jetstream-max-file BYTES]

Writes a nats-server config (mode 0600) that trusts this controller's NATS keys, making the keys in the PKI
directory (STOWAGE_PKI_DIR, or STOWAGE_DATA_DIR/pki) if they do not exist yet. Run the controller with
STOWAGE_NATS_AUTH=jwt against that server.
  --listen         client address (default ${DEFAULT_NATS_LISTEN})
  --tls-cert/-key  the server's certificate and key: clients must use TLS (no client certificates asked)
  --jetstream-dir  JetStream's store (default ${DEFAULT_JETSTREAM_DIR})
  --resolver-dir   the account JWTs the server is sent (default ${DEFAULT_RESOLVER_DIR})
`;

/** A shell word for `s` (what is printed is meant to be pasted). */
const shellQuote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", "'\\''")}'`);

/** The `nats-config` subcommand; returns the exit code. */
export async function natsConfigCommand(
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
  out: (s: string) => void = (s) => void process.stdout.write(s),
  err: (s: string) => void = (s) => void process.stderr.write(s),
): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        out: { type: "string" },
        listen: { type: "string" },
        "tls-cert": { type: "string" },
        "tls-key": { type: "string" },
        "tls-ca": { type: "string" },
        "jetstream-dir": { type: "string" },
        "resolver-dir": { type: "string" },
        "pki-dir": { type: "string" },
        "jetstream-max-memory": { type: "string" },
        "jetstream-max-file": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    err(`stowage-controller nats-config: ${(e as Error).message}\n\n${NATS_CONFIG_USAGE}`);
    return 2;
  }
  if (values.help) {
    out(NATS_CONFIG_USAGE);
    return 0;
  }
  const str = (k: string) => (typeof values[k] === "string" ? (values[k] as string) : undefined);
  const outFile = str("out");
  const cert = str("tls-cert");
  const key = str("tls-key");
  const problem = !outFile
    ? "--out is required"
    : (cert === undefined) !== (key === undefined)
      ? "--tls-cert and --tls-key go together"
      : str("tls-ca") && !cert
        ? "--tls-ca needs --tls-cert and --tls-key"
        : undefined;
  if (problem) {
    err(`stowage-controller nats-config: ${problem}\n\n${NATS_CONFIG_USAGE}`);
    return 2;
  }
  try {
    const number = (k: string) => (str(k) === undefined ? undefined : Number(str(k)));
    const pkiDir = str("pki-dir") ?? pkiDirOf(loadControllerConfig(env));
    const keys = await loadNatsKeys(pkiDir);
    const text = await natsServerConfig(keys, {
      ...(str("listen") ? { listen: str("listen") } : {}),
      jetstreamDir: str("jetstream-dir") ?? DEFAULT_JETSTREAM_DIR,
      resolverDir: str("resolver-dir") ?? DEFAULT_RESOLVER_DIR,
      ...(cert && key ? { tls: { cert, key, ...(str("tls-ca") ? { ca: str("tls-ca") } : {}) } } : {}),
      ...(number("jetstream-max-memory") !== undefined
        ? { maxMemoryStore: number("jetstream-max-memory") }
        : {}),
      ...(number("jetstream-max-file") !== undefined ? { maxFileStore: number("jetstream-max-file") } : {}),
    });
    const path = resolve(outFile!);
    await writeFileAtomic(path, text);
    out(
      `wrote ${path} (NATS keys in ${pkiDir}).\nRun:  nats-server -c ${shellQuote(path)}\n` +
        `Then start the controller with STOWAGE_NATS_AUTH=jwt${cert ? " and STOWAGE_NATS_CA_FILE (or the controller's CA) trusting that certificate" : ""}.\n`,
    );
    return 0;
  } catch (e) {
    err(`stowage-controller nats-config: ${(e as Error).message}\n`);
    return 1;
  }
}
