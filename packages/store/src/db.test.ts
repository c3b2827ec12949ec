import { setTimeout as sleep } from "node:timers/promises";
import { makeTempDir } from "@stowage/testkit";
import { describe, expect, it } from "vitest";
import { openDatabase } from "./db.js";
import { upsertHost } from "./hosts.js";
import { migrate } from "./migrate.js";
import { applyPoolReports } from "./pools.js";
import { hostRegistration, poolReport } from "./testing/fixtures.js";

describe("embedded PGlite", () => {
  it("vacuums its hot tables on its own (it has no autovacuum)", async () => {
    const dir = await makeTempDir("stowage-pglite-vacuum-");
    const db = await openDatabase({ dataDir: dir.path, vacuumIntervalMs: 300 });
    try {
      await migrate(db.sql);
      await upsertHost(db.sql, hostRegistration("h1"));
      await applyPoolReports(db.sql, "h1", [poolReport("p1", 1n << 40n), poolReport("p2", 1n << 40n)]);
      for (let i = 0; i < 100; i++)
        await db.sql`update pools set reserved_bytes = ${BigInt(i)} where id = 'h1/p1'`;
      // reltuples is -1 until a VACUUM (or ANALYZE) has looked at the table; nothing else here runs one.
      const counted = async () => {
        const [row] = await db.sql<
          { n: number }[]
        >`select reltuples::int as n from pg_class where relname = 'pools'`;
        return row?.n;
      };
      let n = await counted();
      for (let t = 0; t < 50 && n !== 2; t++) {
        await sleep(100);
        n = await counted();
      }
      expect(n).toBe(2);
    } finally {
      await db.close();
      await dir.cleanup();
    }
  });
});
