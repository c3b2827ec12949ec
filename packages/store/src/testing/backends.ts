import { makeTempDir, type TestPostgres, testPostgres } from "@stowage/testkit";
import { afterAll, beforeAll } from "vitest";
import { type Database, openDatabase } from "../db.js";
import { migrate } from "../migrate.js";

/** A database the store's tests run on: each repository must work on both. */
export interface Backend {
  open(): Promise<Database>;
  close(): Promise<void>;
}

/** Embedded PGlite and a PostgreSQL server, for `describe.each(backends)`. */
export const backends: [string, () => Promise<Backend>][] = [
  [
    "pglite",
    async () => {
      const dir = await makeTempDir("stowage-pglite-");
      return { open: () => openDatabase({ dataDir: dir.path }), close: () => dir.cleanup() };
    },
  ],
  [
    "postgres",
    async () => {
      const pg: TestPostgres = await testPostgres();
      return { open: () => openDatabase({ url: pg.url, max: 10 }), close: () => pg.release() };
    },
  ],
];

/**
 * Opens a migrated database on the backend before the suite's tests and closes it after them; the returned
 * function gives it to the tests.
 */
export function migratedDatabase(makeBackend: () => Promise<Backend>): () => Database {
  let backend: Backend | undefined;
  let db: Database | undefined;
  beforeAll(async () => {
    backend = await makeBackend();
    db = await backend.open();
    await migrate(db.sql);
  });
  afterAll(async () => {
    await db?.close();
    await backend?.close();
  });
  return () => {
    if (!db) throw new Error("the database is opened in beforeAll");
    return db;
  };
}
