import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { Sql } from "./db.js";

export interface Migration {
  version: number;
  name: string;
  sql: string;
  checksum: string;
}

/** The directory of plain SQL migrations, `NNNN_name.sql` (one level up from both src/ and dist/). */
export const MIGRATIONS_DIR = fileURLToPath(new URL("../migrations/", import.meta.url));

/** An arbitrary constant: the advisory lock all controllers take while migrating. */
const MIGRATION_LOCK = 0x5707a9e;

export function loadMigrations(dir = MIGRATIONS_DIR): Migration[] {
  return readdirSync(dir)
    .filter((f) => /^\d{4}_[a-z0-9_]+\.sql$/.test(f))
    .sort()
    .map((file) => {
      const sql = readFileSync(`${dir}/${file}`, "utf8");
      return {
        version: Number(file.slice(0, 4)),
        name: file.slice(5, -4),
        sql,
        checksum: createHash("sha256").update(sql).digest("hex"),
      };
    });
}

/**
 * Applies the migrations not yet applied, in one transaction under an advisory lock, so that several controllers
 * starting at once migrate exactly once. A changed checksum of an applied migration is an error: migrations are
 * append-only.
 */
export async function migrate(sql: Sql, migrations = loadMigrations()): Promise<{ applied: number[] }> {
  return sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(${MIGRATION_LOCK})`;
    await tx`create table if not exists schema_migrations (
      version integer primary key, name text not null, checksum text not null, applied_at timestamptz not null default now())`;
    const done = new Map<number, string>();
    for (const row of await tx<
      { version: number; checksum: string }[]
    >`select version, checksum from schema_migrations`) {
      done.set(row.version, row.checksum);
    }
    const applied: number[] = [];
    for (const m of migrations) {
      const seen = done.get(m.version);
      if (seen !== undefined) {
        if (seen !== m.checksum) {
          throw new Error(
            `migration ${m.version}_${m.name} was changed after it was applied (checksum ${seen.slice(0, 12)} in the database, ${m.checksum.slice(0, 12)} on disk); add a new migration instead`,
          );
        }
        continue;
      }
      await tx.unsafe(m.sql);
      await tx`insert into schema_migrations (version, name, checksum) values (${m.version}, ${m.name}, ${m.checksum})`;
      applied.push(m.version);
    }
    return { applied };
  }) as Promise<{ applied: number[] }>;
}
