import { randomBytes } from "node:crypto";
import { linkSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";

/** postgres.js with int8 as bigint and camelCase columns. */
export type Sql = postgres.Sql<{ bigint: bigint }>;
export type Tx = postgres.TransactionSql<{ bigint: bigint }>;
/** Anything queries can run on: the pool or a transaction. */
export type Queryable = Sql | Tx;

export interface Database {
  readonly sql: Sql;
  /** "postgres" for a server, "pglite" for the embedded default. */
  readonly kind: "postgres" | "pglite";
  close(): Promise<void>;
}

export interface OpenDatabaseOptions {
  /** A PostgreSQL URL. When absent, PGlite runs embedded in `dataDir`. */
  url?: string;
  /** Where the embedded PGlite keeps its files (required without `url`). */
  dataDir?: string;
  /** Connection pool size for PostgreSQL (PGlite always uses 1). */
  max?: number;
  /** PGlite only: how often its hot tables are vacuumed (default PGLITE_VACUUM_INTERVAL_MS). */
  vacuumIntervalMs?: number;
}

const options = {
  types: { bigint: postgres.BigInt },
  transform: postgres.camel,
  onnotice: () => {},
} as const;

export async function openDatabase(opts: OpenDatabaseOptions): Promise<Database> {
  if (opts.url) {
    const sql = postgres(opts.url, {
      ...options,
      max: opts.max ?? 10,
      connect_timeout: 10,
    }) as unknown as Sql;
    await sql`select 1`;
    return { sql, kind: "postgres", close: () => sql.end({ timeout: 5 }) };
  }
  if (!opts.dataDir) throw new Error("openDatabase needs a url or a dataDir");
  return openPglite(opts.dataDir, opts.vacuumIntervalMs ?? PGLITE_VACUUM_INTERVAL_MS);
}

/**
 * The embedded default: PGlite in `<dataDir>/pglite`, served on a unix socket inside the data directory through
 * pglite-socket, so the same postgres.js code talks to it. PGlite is single-connection: pool size 1.
 */
async function openPglite(dataDir: string, vacuumIntervalMs: number): Promise<Database> {
  const { PGlite } = await import("@electric-sql/pglite");
  const { PGLiteSocketServer } = await import("@electric-sql/pglite-socket");
  mkdirSync(dataDir, { recursive: true });
  const releaseLock = lockDataDir(dataDir);
  const pg = await PGlite.create(join(dataDir, "pglite"));
  const socketDir = join(dataDir, "run");
  mkdirSync(socketDir, { recursive: true });
  // Left behind by a process that was killed; the lock above proves nobody is serving it.
  rmSync(join(socketDir, ".s.PGSQL.5432"), { force: true });
  const server = new PGLiteSocketServer({ db: pg, path: join(socketDir, ".s.PGSQL.5432") });
  await server.start();
  const sql = postgres({
    ...options,
    host: socketDir,
    port: 5432,
    max: 1,
    database: "postgres",
    username: "postgres",
  }) as unknown as Sql;
  await sql`select 1`;
  const stopVacuum = startVacuum(sql, vacuumIntervalMs);
  return {
    sql,
    kind: "pglite",
    async close() {
      stopVacuum();
      await sql.end({ timeout: 5 });
      await server.stop();
      await pg.close();
      releaseLock();
    },
  };
}

/** How often the embedded database's hot tables are vacuumed (docs/architecture.md, "Cost as the fleet grows"). */
export const PGLITE_VACUUM_INTERVAL_MS = 10_000;
const HOT_TABLES = ["pools", "hosts", "reservations", "operations", "volumes"];

/**
 * PGlite runs no autovacuum: every reservation, confirmation, result and inventory rewrites rows of these tables,
 * and nothing else ever reclaims their dead versions or refreshes the planner's statistics (a benchmark of
 * thousands of results saw the rate fall several-fold until a VACUUM). A plain VACUUM of the hot tables every
 * few seconds does what autovacuum would; it takes the one connection for a few milliseconds. Returns what stops it.
 */
function startVacuum(sql: Sql, intervalMs: number): () => void {
  let running = false;
  const timer = setInterval(() => {
    if (running) return;
    running = true;
    void (async () => {
      for (const t of HOT_TABLES) await sql.unsafe(`vacuum ${t}`).catch(() => undefined);
    })().finally(() => {
      running = false;
    });
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

/**
 * PGlite is one process's database: a second controller on the same data directory would corrupt it. The lock
 * is a pid file put in place with link(2), so of two controllers started at once exactly one makes it. A file whose
 * process is gone (a crash), or that names no pid, is taken over: renamed away first (atomic), and removed only if
 * it is still the file that was read, so a takeover cannot remove the lock that another starter has just made.
 */
export function lockDataDir(dataDir: string): () => void {
  const file = join(dataDir, "controller.pid");
  for (let attempt = 0; attempt < 20; attempt++) {
    // Written whole beside it, then linked into place: link(2) fails if the lock exists, and a reader never
    // sees a half-written pid.
    const mine = `${file}.new-${process.pid}-${randomBytes(4).toString("hex")}`;
    writeFileSync(mine, `${process.pid}\n`);
    try {
      linkSync(mine, file);
      return () => rmSync(file, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    } finally {
      rmSync(mine, { force: true });
    }
    const seen = readText(file);
    if (seen === undefined) continue; // Removed in between: try again.
    const holder = parsePid(seen);
    if (holder === process.pid) return () => rmSync(file, { force: true });
    if (holder !== undefined && isAlive(holder)) {
      throw new Error(
        `the data directory ${dataDir} is in use by process ${holder} (another controller?): stop it, or use another STOWAGE_DATA_DIR`,
      );
    }
    // Its process is gone, or the file holds no pid at all (left by a crash): move it aside.
    const aside = `${file}.stale-${process.pid}-${randomBytes(4).toString("hex")}`;
    try {
      renameSync(file, aside);
    } catch {
      continue; // Someone else moved it first.
    }
    if (readText(aside) !== seen) {
      // Not the stale file any more but a new starter's: put it back, unless yet another one exists.
      try {
        linkSync(aside, file);
      } catch {}
    }
    rmSync(aside, { force: true });
  }
  throw new Error(`could not take the lock ${file}: it keeps changing; is another controller starting?`);
}

function readText(file: string): string | undefined {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
}

/** The pid a lock file names; undefined when it names none. */
function parsePid(text: string): number | undefined {
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    // A zombie (killed, not yet reaped) counts as gone.
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return true;
  }
}

/** Whether the database answers (readiness): true, or false on any error. */
export async function databaseAnswers(sql: Queryable): Promise<boolean> {
  try {
    await sql`select 1`;
    return true;
  } catch {
    return false;
  }
}
