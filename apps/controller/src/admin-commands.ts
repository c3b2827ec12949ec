import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  hashTokenSecret,
  insertToken,
  migrate,
  newTokenSecret,
  openDatabase,
  type TokenRole,
  writeAudit,
} from "@stowage/store";
import { createLogger } from "@stowage/telemetry";
import { type ControllerConfig, loadControllerConfig } from "./config.js";
import { writeFileAtomic } from "./files.js";
import { loadPki } from "./pki.js";

/** The controller's one-shot subcommands (docs/security.md); `stowage-controller` alone runs the controller. */
export const ADMIN_COMMANDS = ["issue-cert", "token", "ca-cert"] as const;
export type AdminCommand = (typeof ADMIN_COMMANDS)[number];

export function isAdminCommand(s: string | undefined): s is AdminCommand {
  return (ADMIN_COMMANDS as readonly string[]).includes(s ?? "");
}

export interface AdminIo {
  out: { write(s: string): unknown };
  err: { write(s: string): unknown };
  env: NodeJS.ProcessEnv;
}

const HELP: Record<AdminCommand, string> = {
  "issue-cert": `Usage: stowage-controller issue-cert --name NAME --san NAME[,NAME...] --out-dir DIR [--ttl 365d]

Issues a key and a certificate signed by the cluster CA, for a server beside the controller (nats-server):
writes DIR/NAME.crt, DIR/NAME.key (mode 0600) and DIR/ca.crt. --san takes DNS names and IP addresses.
The CA is the controller's (STOWAGE_TLS_CA_CERT/KEY, or STOWAGE_PKI_DIR's own, made if it does not exist yet).

Example:
  stowage-controller issue-cert --name nats --san 10.0.0.5,nats.lab --out-dir /etc/nats/tls
`,
  token: `Usage: stowage-controller token create --name NAME --role viewer|operator|admin [--ttl 720h]

Bootstrap: writes an API token straight into the controller's database (STOWAGE_DATABASE_URL, or the PGlite
database in STOWAGE_DATA_DIR while no controller runs on it) and prints its secret once. Use it for the first
admin token of a TLS cluster; then manage tokens with \`stowctl token\`. Without --ttl it never expires.

Example:
  STOWAGE_TOKEN=$(stowage-controller token create --name root --role admin)
`,
  "ca-cert": `Usage: stowage-controller ca-cert

Prints the cluster CA certificate (PEM), for agents (STOWAGE_CA_FILE) and stowctl (--ca-file). It makes the
CA first when STOWAGE_PKI_DIR has none.
`,
};

/** The subcommands as `stowage-controller --help` lists them. */
export const ADMIN_COMMANDS_HELP = `
Subcommands (each with --help):
  stowage-controller issue-cert --name N --san A[,B] --out-dir D [--ttl 365d]   a certificate for nats-server
  stowage-controller token create --name N --role admin [--ttl 720h]            bootstrap an API token
  stowage-controller ca-cert                                                     print the cluster CA (PEM)
`;

class UsageError extends Error {}

/** "365d", "24h", "30m", "90s" or milliseconds. */
export function parseTtl(s: string): number {
  const m = /^(\d+)(ms|s|m|h|d)?$/.exec(s.trim());
  if (!m) throw new UsageError(`--ttl ${JSON.stringify(s)} is not a duration like 365d, 24h, 30m or 90s`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3600_000, d: 86_400_000 }[(m[2] ?? "ms") as "ms"];
  const ms = Number(m[1]) * unit;
  if (!Number.isSafeInteger(ms) || ms < 1000) throw new UsageError("--ttl must be at least 1s");
  return ms;
}

async function issueCert(config: ControllerConfig, args: string[], io: AdminIo): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      name: { type: "string" },
      san: { type: "string" },
      "out-dir": { type: "string" },
      ttl: { type: "string", default: "365d" },
    },
    strict: true,
  });
  const name = values.name ?? "";
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(name))
    throw new UsageError("--name is required: letters, digits, '.', '_' and '-' (it names the files)");
  const sans = (values.san ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  if (sans.length === 0)
    throw new UsageError("--san is required: the DNS names and IP addresses clients use");
  if (!values["out-dir"]) throw new UsageError("--out-dir is required");
  const ttlMs = parseTtl(values.ttl);
  const pki = await loadPki(config, createLogger("stowage-controller", "warn"), { serverCert: false });
  const issued = await pki.issue(name, sans, ttlMs);
  const dir = values["out-dir"];
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, `${name}.key`), issued.keyPem);
  await writeFileAtomic(join(dir, `${name}.crt`), issued.certPem, { mode: 0o644 });
  await writeFileAtomic(join(dir, "ca.crt"), pki.caPem, { mode: 0o644 });
  io.err.write(
    `wrote ${join(dir, `${name}.crt`)}, ${join(dir, `${name}.key`)} (0600) and ${join(dir, "ca.crt")}: serial ${issued.serial}, valid until ${issued.notAfter.toISOString()}\n`,
  );
  return 0;
}

async function createBootstrapToken(config: ControllerConfig, args: string[], io: AdminIo): Promise<number> {
  const [verb, ...rest] = args;
  if (verb !== "create") throw new UsageError("the only token subcommand is `token create`");
  const { values } = parseArgs({
    args: rest,
    options: { name: { type: "string" }, role: { type: "string" }, ttl: { type: "string" } },
    strict: true,
  });
  const name = values.name ?? "";
  if (!/^[a-z][a-z0-9-]{0,62}$/.test(name))
    throw new UsageError(
      "--name is required: 1 to 63 lowercase letters, digits and '-', starting with a letter",
    );
  const role = values.role as TokenRole;
  if (!["viewer", "operator", "admin"].includes(role ?? ""))
    throw new UsageError("--role is required: viewer, operator or admin");
  const ttlMs = values.ttl ? parseTtl(values.ttl) : undefined;
  const db = await openDatabase(
    config.databaseUrl ? { url: config.databaseUrl } : { dataDir: config.dataDir },
  );
  try {
    await migrate(db.sql);
    const secret = newTokenSecret();
    const actor = "stowage-controller token create";
    const row = await db.sql.begin(async (tx) => {
      const created = await insertToken(tx, {
        name,
        role,
        createdBy: actor,
        secretHash: hashTokenSecret(secret),
        ...(ttlMs ? { ttlMs } : {}),
      });
      if (!created)
        throw new UsageError(
          `a live token is already named ${name}: pick another name or revoke it with stowctl`,
        );
      await writeAudit(tx, {
        actor,
        action: "CreateToken",
        target: created.id,
        request: { name, role, ttlSeconds: ttlMs ? Math.round(ttlMs / 1000) : 0 },
        outcome: "ok",
      });
      return created;
    });
    io.out.write(`${secret}\n`);
    io.err.write(
      `token ${row.name} (${row.id}, ${row.role}) created: the secret above is shown only now; pass it to stowctl as --token or STOWAGE_TOKEN\n`,
    );
  } finally {
    await db.close();
  }
  return 0;
}

/** Runs a subcommand; answers the exit code (2 for a usage error). */
export async function runAdminCommand(command: AdminCommand, args: string[], io: AdminIo): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) {
    io.out.write(HELP[command]);
    return 0;
  }
  try {
    const config = loadControllerConfig(io.env);
    if (command === "issue-cert") return await issueCert(config, args, io);
    if (command === "token") return await createBootstrapToken(config, args, io);
    const pki = await loadPki(config, createLogger("stowage-controller", "warn"), { serverCert: false });
    io.out.write(pki.caPem);
    return 0;
  } catch (err) {
    const usage = err instanceof UsageError || (err as { code?: string }).code?.startsWith("ERR_PARSE_ARGS");
    io.err.write(`stowage-controller ${command}: ${(err as Error).message}\n`);
    if (usage) io.err.write(`\n${HELP[command]}`);
    return usage ? 2 : 1;
  }
}
