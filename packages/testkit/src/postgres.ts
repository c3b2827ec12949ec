/**
 * Throwaway PostgreSQL servers for tests, following the recipe proven on Debian 12 (PostgreSQL 15): initdb
 * (`-A trust -E UTF8 --locale=C.UTF-8 -N`) into a directory owned by the `postgres` user (root may not run
 * initdb or postgres, so as root every server command goes through `runuser -u postgres --`), then
 * `pg_ctl -w start` on a free port, listening on 127.0.0.1 only with the unix socket inside the directory,
 * with fsync, synchronous_commit and full_page_writes off. Start-up takes about 1 s (initdb 0.5 s).
 *
 * STOWAGE_TEST_PG_URL: when set (scripts/test.sh and CI set it to a superuser URL of database `postgres`
 * of a server started once for the whole run), suites must not start their own server: they call
 * `createTestDatabase(process.env.STOWAGE_TEST_PG_URL)` for a fresh database instead. `testPostgres()` makes
 * that choice for you.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { chmod, chown, mkdir, readFile, writeFile } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { execa } from "execa";
import { trackProcess } from "./cleanup.js";
import { freePort, waitForPortFree } from "./ports.js";
import { makeTempDir } from "./temp.js";

/** The environment variable naming a running server to create test databases in. */
export const TEST_PG_URL_ENV = "STOWAGE_TEST_PG_URL";

export interface StartPostgresOptions {
  /**
   * Where the cluster (DIR/data), socket and logs live. Default: a new temp dir, removed by stop(). A given
   * dir is kept (and an existing cluster in DIR/data is reused). As root, every parent of it must be
   * traversable by the `postgres` user.
   */
  dir?: string;
  /** Default: a free port. */
  port?: number;
  /** Extra or overriding server settings (postgresql.conf names). */
  settings?: Record<string, string | number | boolean>;
  /** Default 60 s. */
  startTimeoutMs?: number;
}

export interface PostgresServer {
  /** postgresql://postgres@127.0.0.1:PORT/postgres (superuser, trust auth). */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly dir: string;
  readonly dataDir: string;
  /** Unix socket directory (= dir). */
  readonly socketDir: string;
  /** DIR/pg.log, the server log. */
  readonly logFile: string;
  /** The postmaster's pid (changes on restart; -1 when stopped). */
  readonly pid: number;
  /** `pg_ctl -m immediate stop`, then removes the dir if the testkit created it. Idempotent. */
  stop(): Promise<void>;
  /**
   * Stop and start again, same port and data. Default: a fast (clean) shutdown. With `{ crash: true }`: an
   * immediate shutdown, like a crash (recovery runs at the next start). Mind that the test settings have
   * synchronous_commit=off, so commits of the last few hundred ms may be lost by a crash: a test that needs
   * them durable runs `SET synchronous_commit = on` in its session first.
   */
  restart(opts?: { crash?: boolean }): Promise<void>;
  /** The server log so far. */
  logs(): string;
}

const PG_ROOT = "/usr/lib/postgresql";

function hasServerBinaries(dir: string): boolean {
  return existsSync(join(dir, "initdb")) && existsSync(join(dir, "pg_ctl"));
}

/**
 * The directory holding initdb and pg_ctl: $STOWAGE_PG_BIN, else /usr/lib/postgresql/15/bin, else the
 * newest /usr/lib/postgresql/N/bin, else a $PATH directory that has both.
 */
export function postgresBinDir(): string | undefined {
  const explicit = process.env.STOWAGE_PG_BIN;
  if (explicit) return hasServerBinaries(explicit) ? explicit : undefined;
  const candidates = [join(PG_ROOT, "15", "bin")];
  try {
    const versions = readdirSync(PG_ROOT)
      .map(Number)
      .filter((n) => Number.isFinite(n))
      .sort((a, b) => b - a);
    for (const v of versions) candidates.push(join(PG_ROOT, String(v), "bin"));
  } catch {
    // not the Debian layout
  }
  candidates.push(...(process.env.PATH ?? "").split(delimiter).filter(Boolean));
  return candidates.find(hasServerBinaries);
}

function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** uid and gid of the `postgres` user, from /etc/passwd. */
function postgresUser(): { uid: number; gid: number } | undefined {
  try {
    for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) {
      const [name, , uid, gid] = line.split(":");
      if (name === "postgres" && uid && gid) return { uid: Number(uid), gid: Number(gid) };
    }
  } catch {
    // no passwd file
  }
  return undefined;
}

function runuserPath(): string | undefined {
  return ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"].find((p) => existsSync(p));
}

/** True when this process can start a private server (binaries present; as root also `postgres` user and runuser). */
export function canStartPostgres(): boolean {
  if (!postgresBinDir()) return false;
  return !isRoot() || (postgresUser() !== undefined && runuserPath() !== undefined);
}

/**
 * Whether PostgreSQL suites can run: STOWAGE_TEST_PG_URL is set, or a private server can be started.
 * Use: `describe.skipIf(!postgresAvailable())`.
 */
export function postgresAvailable(): boolean {
  return Boolean(process.env[TEST_PG_URL_ENV]) || canStartPostgres();
}

/** Runs a server binary, as the postgres user when we are root. */
function runServerTool(bin: string, args: string[], cwd: string, timeoutMs: number) {
  const [cmd, argv] = isRoot()
    ? [runuserPath() ?? "runuser", ["-u", "postgres", "--", bin, ...args]]
    : [bin, args];
  return execa(cmd, argv, { cwd, reject: false, all: true, timeout: timeoutMs, stdin: "ignore" });
}

function confString(value: string): string {
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;
}

function confValue(value: string | number | boolean): string {
  if (typeof value === "boolean") return value ? "on" : "off";
  if (typeof value === "number") return String(value);
  return confString(value);
}

function tailOf(text: string, n = 30): string {
  return text.trimEnd().split("\n").slice(-n).join("\n");
}

async function readText(path: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch {
    return "";
  }
}

const BIND_FAILED =
  /could not bind|address already in use|could not create any TCP\/IP sockets|lock file .* already exists/i;

/** Starts a private PostgreSQL on 127.0.0.1 and resolves once it accepts connections. */
export async function startPostgres(opts: StartPostgresOptions = {}): Promise<PostgresServer> {
  const bin = postgresBinDir();
  if (!bin) {
    throw new Error(
      "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin, $STOWAGE_PG_BIN " +
        "or $PATH: install them with `apt-get install -y postgresql-15` (or run scripts/install-deps.sh), " +
        `or point ${TEST_PG_URL_ENV} at a running server`,
    );
  }
  const owner = isRoot() ? postgresUser() : undefined;
  if (isRoot() && (!owner || !runuserPath())) {
    throw new Error(
      "running as root needs the `postgres` user and runuser (root cannot run initdb/postgres)",
    );
  }
  const temp = opts.dir ? undefined : await makeTempDir("stowage-pg-");
  const dir = opts.dir ?? temp!.path;
  const dataDir = join(dir, "data");
  const logFile = join(dir, "pg.log");
  const confFile = join(dataDir, "stowage-test.conf");
  const startTimeoutMs = opts.startTimeoutMs ?? 60_000;
  let postmasterPid = -1;
  let untrack = () => {};

  const fail = async (message: string): Promise<never> => {
    await temp?.cleanup();
    throw new Error(message);
  };

  try {
    await mkdir(dir, { recursive: true });
    if (owner) await chown(dir, owner.uid, owner.gid);
    await chmod(dir, 0o700);
    if (!existsSync(join(dataDir, "PG_VERSION"))) {
      const r = await runServerTool(
        join(bin, "initdb"),
        ["-D", dataDir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "-N"],
        dir,
        startTimeoutMs,
      );
      await writeFile(join(dir, "initdb.log"), r.all ?? "");
      if (r.exitCode !== 0) return await fail(`initdb failed (exit ${r.exitCode}):\n${tailOf(r.all ?? "")}`);
      // our settings live in their own file, included last so they win
      await writeFile(join(dataDir, "postgresql.conf"), "\ninclude_if_exists = 'stowage-test.conf'\n", {
        flag: "a",
      });
    }
  } catch (err) {
    await temp?.cleanup();
    throw err;
  }

  let port = opts.port ?? 0;
  const writeConf = async () => {
    const settings: Record<string, string | number | boolean> = {
      port,
      listen_addresses: "127.0.0.1",
      unix_socket_directories: dir,
      fsync: false,
      synchronous_commit: false,
      full_page_writes: false,
      shared_buffers: "32MB",
      max_connections: 100,
      ...opts.settings,
    };
    const body = Object.entries(settings)
      .map(([k, v]) => `${k} = ${confValue(v)}`)
      .join("\n");
    await writeFile(confFile, `# written by @stowage/testkit\n${body}\n`);
    if (owner) await chown(confFile, owner.uid, owner.gid);
  };

  /** pg_ctl start; returns an error text, or undefined once the server is up. */
  const pgStart = async (): Promise<string | undefined> => {
    await writeConf();
    const before = (await readText(logFile)).length;
    const r = await runServerTool(
      join(bin, "pg_ctl"),
      ["-D", dataDir, "-l", logFile, "-w", "-t", String(Math.ceil(startTimeoutMs / 1000)), "start"],
      dir,
      startTimeoutMs + 10_000,
    );
    if (r.exitCode === 0) {
      const pidLine = (await readText(join(dataDir, "postmaster.pid"))).split("\n")[0] ?? "";
      postmasterPid = Number(pidLine) || -1;
      untrack();
      // on test-process exit: SIGQUIT = immediate shutdown
      untrack = postmasterPid > 0 ? trackProcess(postmasterPid, { signal: "QUIT" }) : () => {};
      return undefined;
    }
    const log = (await readText(logFile)).slice(before);
    return `pg_ctl start failed (exit ${r.exitCode}):\n${tailOf(r.all ?? "", 10)}\n--- ${logFile}:\n${tailOf(log)}`;
  };

  const pgStop = async (mode: "immediate" | "fast" = "immediate") => {
    if (!existsSync(join(dataDir, "postmaster.pid"))) {
      postmasterPid = -1;
      return;
    }
    const r = await runServerTool(
      join(bin, "pg_ctl"),
      ["-D", dataDir, "-m", mode, "-w", "stop"],
      dir,
      60_000,
    );
    if (r.exitCode !== 0 && postmasterPid > 0) {
      try {
        process.kill(postmasterPid, "SIGKILL");
      } catch {
        // gone
      }
    }
    untrack();
    untrack = () => {};
    postmasterPid = -1;
    await waitForPortFree(port).catch(() => {});
  };

  for (let attempt = 1; ; attempt++) {
    if (!opts.port) port = await freePort();
    const error = await pgStart();
    if (!error) break;
    if (opts.port || attempt >= 4 || !BIND_FAILED.test(error)) {
      await pgStop().catch(() => {});
      return fail(error);
    }
  }

  let stopped = false;
  return {
    url: `postgresql://postgres@127.0.0.1:${port}/postgres`,
    host: "127.0.0.1",
    port,
    user: "postgres",
    dir,
    dataDir,
    socketDir: dir,
    logFile,
    get pid() {
      return postmasterPid;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await pgStop();
      await temp?.cleanup();
    },
    async restart(restartOpts: { crash?: boolean } = {}) {
      if (stopped) throw new Error("startPostgres: this server was stopped for good; start a new one");
      await pgStop(restartOpts.crash ? "immediate" : "fast");
      const error = await pgStart();
      if (error) throw new Error(error);
    },
    logs: () => {
      try {
        return readFileSync(logFile, "utf8");
      } catch {
        return "";
      }
    },
  };
}

/** Path of psql: next to the server binaries, else from $PATH. */
function psqlPath(): string {
  const bin = postgresBinDir();
  return bin && existsSync(join(bin, "psql")) ? join(bin, "psql") : "psql";
}

/** Runs one SQL statement with psql against `url`. */
export async function psql(url: string, sql: string): Promise<string> {
  const r = await execa(psqlPath(), ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql], {
    reject: false,
    all: true,
    timeout: 60_000,
    stdin: "ignore",
    env: { PGCONNECT_TIMEOUT: "10" },
  });
  if (r.failed) {
    const why = r.code === "ENOENT" ? "psql not found (apt-get install -y postgresql-client-15)" : r.all;
    throw new Error(`psql failed on ${redact(url)}: ${sql}\n${why ?? r.message}`);
  }
  return (r.stdout ?? "").trim();
}

function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "<url>";
  }
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** `url` with its database replaced by `database`. */
export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${encodeURIComponent(database)}`;
  return u.toString();
}

/** The database name in a postgres URL. */
export function databaseOf(url: string): string {
  return decodeURIComponent(new URL(url).pathname.replace(/^\//, ""));
}

/**
 * Creates a fresh, uniquely named database (from template0) in the server `adminUrl` points at, and returns
 * its URL (same credentials). For suites sharing one server (STOWAGE_TEST_PG_URL).
 */
export async function createTestDatabase(adminUrl: string, prefix = "stowage_test"): Promise<string> {
  const name = `${prefix}_${process.pid}_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`
    .toLowerCase()
    .replace(/[^a-z0-9_]/g, "_")
    .slice(0, 63);
  await psql(adminUrl, `CREATE DATABASE ${quoteIdent(name)} TEMPLATE template0`);
  return withDatabase(adminUrl, name);
}

/** Drops a database made by createTestDatabase (by URL or name), disconnecting whoever is still in it. */
export async function dropTestDatabase(adminUrl: string, database: string): Promise<void> {
  const name = database.includes("://") ? databaseOf(database) : database;
  await psql(adminUrl, `DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`);
}

export interface TestPostgres {
  /** URL of a fresh database for this suite. */
  readonly url: string;
  /** Superuser URL of the server's `postgres` database. */
  readonly adminUrl: string;
  /** The private server, when one was started (STOWAGE_TEST_PG_URL unset). */
  readonly server?: PostgresServer;
  /** Drops the database, and stops the private server if one was started. */
  release(): Promise<void>;
}

/**
 * A fresh database for a suite: in the server of STOWAGE_TEST_PG_URL when set, otherwise in a private
 * server started for the caller. Call `release()` in afterAll.
 */
export async function testPostgres(): Promise<TestPostgres> {
  const shared = process.env[TEST_PG_URL_ENV];
  if (shared) {
    const url = await createTestDatabase(shared);
    return { url, adminUrl: shared, release: () => dropTestDatabase(shared, url) };
  }
  const server = await startPostgres();
  try {
    const url = await createTestDatabase(server.url);
    return { url, adminUrl: server.url, server, release: () => server.stop() };
  } catch (err) {
    await server.stop();
    throw err;
  }
}
