import { existsSync } from "node:fs";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isPortFree } from "./ports.js";
import {
  canStartPostgres,
  createTestDatabase,
  databaseOf,
  dropTestDatabase,
  type PostgresServer,
  postgresAvailable,
  psql,
  startPostgres,
  testPostgres,
} from "./postgres.js";

describe.skipIf(!canStartPostgres())("startPostgres", () => {
  let pg: PostgresServer;

  beforeAll(async () => {
    pg = await startPostgres();
  });
  afterAll(async () => {
    await pg?.stop();
  });

  it("answers queries on 127.0.0.1 with the test settings", async () => {
    expect(pg.url).toBe(`postgresql://postgres@127.0.0.1:${pg.port}/postgres`);
    const r = await execa("psql", [pg.url, "-XAtc", "select 1"]);
    expect(r.stdout).toBe("1");
    expect(await psql(pg.url, "show fsync")).toBe("off");
    expect(await psql(pg.url, "show listen_addresses")).toBe("127.0.0.1");
    expect(await psql(pg.url, "show unix_socket_directories")).toBe(pg.dir);
    expect(await psql(pg.url, "show server_encoding")).toBe("UTF8");
  });

  it("creates and drops uniquely named databases", async () => {
    const a = await createTestDatabase(pg.url);
    const b = await createTestDatabase(pg.url);
    expect(a).not.toBe(b);
    expect(await psql(a, "select current_database()")).toBe(databaseOf(a));
    await dropTestDatabase(pg.url, a);
    await dropTestDatabase(pg.url, databaseOf(b));
    expect(await psql(pg.url, `select count(*) from pg_database where datname like 'stowage_test_%'`)).toBe(
      "0",
    );
  });

  it("keeps its data across a clean restart and a crash on the same port", async () => {
    await psql(pg.url, "create table kept (v int); insert into kept values (7)");
    const pid = pg.pid;
    await pg.restart();
    expect(pg.pid).not.toBe(pid);
    expect(await psql(pg.url, "select v from kept")).toBe("7");
    await psql(pg.url, "set synchronous_commit = on; insert into kept values (8)");
    await pg.restart({ crash: true });
    expect(await psql(pg.url, "select string_agg(v::text, ',' order by v) from kept")).toBe("7,8");
  });

  it("stops, frees its port and removes its dir", async () => {
    const other = await startPostgres();
    expect(await psql(other.url, "select 2")).toBe("2");
    await other.stop();
    expect(await isPortFree(other.port)).toBe(true);
    expect(existsSync(other.dir)).toBe(false);
    await other.stop();
  });
});

describe.skipIf(!postgresAvailable())("testPostgres", () => {
  it("gives a fresh database (STOWAGE_TEST_PG_URL's server, or a private one)", async () => {
    const db = await testPostgres();
    try {
      expect(await psql(db.url, "select current_database()")).toMatch(/^stowage_test_/);
      expect(Boolean(db.server)).toBe(!process.env.STOWAGE_TEST_PG_URL);
    } finally {
      await db.release();
    }
  });
});
