import { setTimeout as sleep } from "node:timers/promises";
import { makeTempDir } from "@stowage/testkit";
import { describe, expect, it } from "vitest";
import { openDatabase } from "./db.js";
import { upsertHost } from "./hosts.js";
import { migrate } from "./migrate.js";
import { applyPoolReports } from "./pools.js";
import { hostRegistration, poolReport } from "./testing/fixtures.js";

describe("embedded PGlite", () => {
  it("vacuums its hot tables on its own, so rewritten pool rows leave no dead versions behind", async () => {
    const dir = await makeTempDir("stowage-pglite-vacuum-");
    const db = await openDatabase({ dataDir: dir.path, vacuumIntervalMs: 300 });
    try {
      await migrate(db.sql);
      await upsertHost(db.sql, hostRegistration("h1"));
      await applyPoolReports(db.sql, "h1", [poolReport("p1", 1n << 40n)]);
      for (let i = 0; i < 300; i++)
        await db.sql`update pools set reserved_bytes = ${BigInt(i)} where id = 'h1/p1'`;
      const dead = async () => {
        const [row] = await db.sql<{ n: number }[]>`
          select n_dead_tup::int as n from pg_stat_user_tables where relname = 'pools'`;
        return row?.n ?? -1;
      };
      let n = await dead();
      for (let t = 0; t < 40 && n > 10; t++) {
        await sleep(100);
        n = await dead();
      }
      expect(n).toBeLessThanOrEqual(10);
    } finally {
      await db.close();
      await dir.cleanup();
    }
  });
});
