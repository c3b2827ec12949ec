import { setTimeout as delay } from "node:timers/promises";
import { beforeAll, describe, expect, it } from "vitest";
import type { Database } from "./db.js";
import { upsertHost } from "./hosts.js";
import { operationsChangedAfter } from "./operations.js";
import { applyPoolReports } from "./pools.js";
import { backends, migratedDatabase } from "./testing/backends.js";
import { GiB, hostRegistration, newVolume, poolReport } from "./testing/fixtures.js";
import { insertVolume, volumesChangedAfter } from "./volumes.js";
import { currentSnapshot } from "./watch.js";

let seq = 0;
const volumeId = () => `vol-w${(++seq).toString(16).padStart(31, "0")}`;

describe.each(backends)("the watches' change sequence, on %s", (name, makeBackend) => {
  const database = migratedDatabase(makeBackend);
  let db: Database;
  const add = (id = volumeId()) => insertVolume(db.sql, newVolume(id, "h1/p", GiB, { name: id }));

  beforeAll(async () => {
    db = database();
    await upsertHost(db.sql, hostRegistration("h1"));
    await applyPoolReports(db.sql, "h1", [poolReport("p", 100n * GiB, { kind: "dir" })]);
  });

  it("answers each change once: what was written after the snapshot, then nothing until the next write", async () => {
    const start = await currentSnapshot(db.sql);
    const a = await add();
    const b = await add();
    const first = await volumesChangedAfter(db.sql, start, {});
    expect(first.rows.map((r) => r.id)).toEqual([a.id, b.id]);
    const again = await volumesChangedAfter(db.sql, first.snapshot, {});
    expect(again.rows).toEqual([]);
    await db.sql`update volumes set labels = '{"k":"v"}' where id = ${a.id}`;
    const third = await volumesChangedAfter(db.sql, again.snapshot, {});
    expect(third.rows.map((r) => r.id)).toEqual([a.id]);
    expect(third.rows[0]!.labels).toEqual({ k: "v" });
    // Filters apply; the snapshot moves on all the same.
    await add();
    const filtered = await volumesChangedAfter(db.sql, third.snapshot, { id: a.id });
    expect(filtered.rows).toEqual([]);
    expect((await volumesChangedAfter(db.sql, filtered.snapshot, {})).rows).toEqual([]);
  });

  it("reads operations the same way", async () => {
    const start = await currentSnapshot(db.sql);
    await db.sql`insert into operations (id, kind, state, host_id, pool_id, command) values ('op-w1', 'create_volume', 'pending', 'h1', 'h1/p', '\\x00')`;
    const read = await operationsChangedAfter(db.sql, start, {});
    expect(read.rows.map((r) => r.id)).toEqual(["op-w1"]);
    expect((await operationsChangedAfter(db.sql, read.snapshot, {})).rows).toEqual([]);
  });

  it.skipIf(name === "pglite")(
    "sees a transaction that commits long after its timestamps, when it commits, once (PostgreSQL: PGlite has one connection, so no transaction runs beside a read)",
    async () => {
      const v = await add();
      let snapshot = await currentSnapshot(db.sql);
      let release!: () => void;
      const held = new Promise<void>((r) => {
        release = r;
      });
      const late = db.sql.begin(async (tx) => {
        await tx`update volumes set labels = '{"late":"yes"}', updated_at = now() - interval '1 hour' where id = ${v.id}`;
        await held;
      });
      await delay(100);
      const others: string[] = [];
      const seen: string[] = [];
      for (let i = 0; i < 3; i++) {
        others.push((await add()).id);
        const r = await volumesChangedAfter(db.sql, snapshot, {});
        snapshot = r.snapshot;
        seen.push(...r.rows.map((x) => x.id));
      }
      expect(seen).toEqual(others);
      release();
      await late;
      const after = await volumesChangedAfter(db.sql, snapshot, {});
      expect(after.rows.map((r) => [r.id, r.labels])).toEqual([[v.id, { late: "yes" }]]);
      expect((await volumesChangedAfter(db.sql, after.snapshot, {})).rows).toEqual([]);
    },
  );
});
