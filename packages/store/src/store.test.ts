import { beforeAll, describe, expect, it } from "vitest";
import type { Database } from "./db.js";
import { upsertHost } from "./hosts.js";
import { confirmReservation, ledgerDiscrepancies, releaseCapacity, reserveCapacity } from "./ledger.js";
import { loadMigrations, migrate } from "./migrate.js";
import { applyPoolReports } from "./pools.js";
import { backends, migratedDatabase } from "./testing/backends.js";
import { GiB, hostRegistration, newVolume, poolReport } from "./testing/fixtures.js";
import { getVolumeByRequestOrName, insertVolume } from "./volumes.js";

let seq = 0;
async function volumeIn(db: Database, poolId: string, size: bigint): Promise<string> {
  const id = `vol-${(++seq).toString(16).padStart(32, "0")}`;
  await insertVolume(db.sql, newVolume(id, poolId, size, { name: `v${seq}`, hostId: "h1" }));
  return id;
}

describe.each(backends)("store on %s", (_name, makeBackend) => {
  const database = migratedDatabase(makeBackend);
  let db: Database;

  beforeAll(async () => {
    db = database();
    await upsertHost(db.sql, hostRegistration("h1"));
    await applyPoolReports(db.sql, "h1", [
      poolReport("thick", 100n * GiB, { kind: "lvm", numaNode: 0 }),
      poolReport("thin", 10n * GiB, {
        kind: "lvmthin",
        usedBytes: 1n * GiB,
        freeBytes: 9n * GiB,
        dataPercent: 10,
        metadataPercent: 1,
        overcommitRatio: 20,
      }),
    ]);
  });

  it("applies migrations once and refuses an edited one", async () => {
    expect((await migrate(db.sql)).applied).toEqual([]);
    const edited = loadMigrations().map((m) => ({ ...m, checksum: "0".repeat(64) }));
    await expect(migrate(db.sql, edited)).rejects.toThrow(/was changed after it was applied/);
    const [row] = await db.sql<{ n: number }[]>`select count(*)::int as n from schema_migrations`;
    expect(row!.n).toBe(loadMigrations().length);
  });

  it("finds the volume a create repeats by request id first, else by live name, in one query", async () => {
    const a = `vol-${"a".repeat(31)}1`;
    const b = `vol-${"a".repeat(31)}2`;
    await insertVolume(
      db.sql,
      newVolume(a, "h1/thick", GiB, { name: "rq-a", hostId: "h1", requestId: "req-1" }),
    );
    await insertVolume(db.sql, newVolume(b, "h1/thick", GiB, { name: "rq-b", hostId: "h1" }));
    expect((await getVolumeByRequestOrName(db.sql, "rq-b", "req-1"))?.id).toBe(a);
    expect((await getVolumeByRequestOrName(db.sql, "rq-b", "req-2"))?.id).toBe(b);
    expect((await getVolumeByRequestOrName(db.sql, "rq-b", null))?.id).toBe(b);
    expect(await getVolumeByRequestOrName(db.sql, "rq-c", "req-2")).toBeUndefined();
    await db.sql`update volumes set state = 'deleted' where id = ${b}`;
    expect(await getVolumeByRequestOrName(db.sql, "rq-b", null)).toBeUndefined();
  });

  it("reserves until a thick pool is full, then refuses", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) {
      const id = await volumeIn(db, "h1/thick", 10n * GiB);
      const ok = await reserveCapacity(db.sql, {
        poolId: "h1/thick",
        volumeId: id,
        bytes: 10n * GiB,
        ttlMs: 60_000,
      });
      if (ok) ids.push(id);
    }
    expect(ids).toHaveLength(10);
    const [pool] = await db.sql<
      { reservedBytes: bigint; volumeCount: number }[]
    >`select reserved_bytes, volume_count from pools where id = 'h1/thick'`;
    expect(pool!.reservedBytes).toBe(100n * GiB);
    expect(pool!.volumeCount).toBe(10);
    // Confirm and release are idempotent and keep the books balanced.
    expect(await confirmReservation(db.sql, ids[0]!)).toBe(true);
    expect(await confirmReservation(db.sql, ids[0]!)).toBe(false);
    for (const id of ids) {
      await releaseCapacity(db.sql, id);
      await releaseCapacity(db.sql, id);
    }
    const [after] = await db.sql<
      { reservedBytes: bigint; allocatedBytes: bigint; volumeCount: number }[]
    >`select reserved_bytes, allocated_bytes, volume_count from pools where id = 'h1/thick'`;
    expect(after).toMatchObject({ reservedBytes: 0n, allocatedBytes: 0n, volumeCount: 0 });
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
  });

  it("lets a thin pool overcommit to its ratio and no further", async () => {
    let granted = 0n;
    for (let i = 0; i < 25; i++) {
      const id = await volumeIn(db, "h1/thin", 10n * GiB);
      if (
        await reserveCapacity(db.sql, {
          poolId: "h1/thin",
          volumeId: id,
          bytes: 10n * GiB,
          ttlMs: 60_000,
        })
      )
        granted += 10n * GiB;
    }
    expect(granted).toBe(200n * GiB);
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
  });

  it("honours the reserved percentage and the volume limit", async () => {
    await db.sql`update pools set total_bytes = ${100n * GiB}, free_bytes = ${100n * GiB}, reserved_bytes = 0, allocated_bytes = 0,
      volume_count = 0, reserved_percent = 10, max_volumes = 3 where id = 'h1/thick'`;
    await db.sql`update reservations set state = 'released' where pool_id = 'h1/thick'`;
    const big = await volumeIn(db, "h1/thick", 91n * GiB);
    expect(
      await reserveCapacity(db.sql, {
        poolId: "h1/thick",
        volumeId: big,
        bytes: 91n * GiB,
        ttlMs: 60_000,
      }),
    ).toBe(false);
    const granted = [];
    for (let i = 0; i < 4; i++) {
      const id = await volumeIn(db, "h1/thick", GiB);
      granted.push(
        await reserveCapacity(db.sql, {
          poolId: "h1/thick",
          volumeId: id,
          bytes: GiB,
          ttlMs: 60_000,
        }),
      );
    }
    expect(granted).toEqual([true, true, true, false]);
    await db.sql`update pools set reserved_percent = 0, max_volumes = 0 where id = 'h1/thick'`;
  });

  it("never oversubscribes under 50 concurrent reservations", async () => {
    await db.sql`update pools set total_bytes = ${35n * GiB}, free_bytes = ${35n * GiB}, reserved_bytes = 0, allocated_bytes = 0, volume_count = 0 where id = 'h1/thick'`;
    await db.sql`update reservations set state = 'released' where pool_id = 'h1/thick'`;
    const ids = await Promise.all(Array.from({ length: 50 }, () => volumeIn(db, "h1/thick", 1n * GiB)));
    const results = await Promise.all(
      ids.map((id) =>
        db.sql.begin((tx) =>
          reserveCapacity(tx, {
            poolId: "h1/thick",
            volumeId: id,
            bytes: 1n * GiB,
            ttlMs: 60_000,
          }),
        ),
      ),
    );
    expect(results.filter(Boolean)).toHaveLength(35);
    const [pool] = await db.sql<
      { reservedBytes: bigint }[]
    >`select reserved_bytes from pools where id = 'h1/thick'`;
    expect(pool!.reservedBytes).toBe(35n * GiB);
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
  });
});
