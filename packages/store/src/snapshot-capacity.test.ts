import { type PoolKind, THIN_KINDS } from "@stowage/core";
import { beforeAll, describe, expect, it } from "vitest";
import type { Database, Queryable } from "./db.js";
import { upsertHost } from "./hosts.js";
import {
  cloneNeedsBase,
  confirmReservation,
  confirmSnapshotReservation,
  getSnapshotReservation,
  ledgerDiscrepancies,
  releaseCapacity,
  releaseSnapshotCapacity,
  reserveCapacity,
  reserveSnapshotCapacity,
  settleCloneBases,
  snapshotHoldingBytes,
} from "./ledger.js";
import { loadMigrations, migrate } from "./migrate.js";
import { applyPoolReports } from "./pools.js";
import { insertSnapshot } from "./snapshots.js";
import { type Backend, backends, migratedDatabase } from "./testing/backends.js";
import { GiB, hostRegistration, newVolume, poolReport } from "./testing/fixtures.js";
import { insertVolume } from "./volumes.js";

let seq = 0;
const id = (prefix: "vol" | "snap" | "op") => `${prefix}-${(++seq).toString(16).padStart(32, "0")}`;

interface Ledger {
  allocatedBytes: bigint;
  reservedBytes: bigint;
  volumeCount: number;
}
async function ledger(sql: Queryable, poolId: string): Promise<Ledger> {
  const [row] = await sql<Ledger[]>`
    select allocated_bytes, reserved_bytes, volume_count from pools where id = ${poolId}`;
  return row!;
}

/** A volume of `size` whose reservation is confirmed: it exists and holds its size. */
async function liveVolume(sql: Queryable, poolId: string, size: bigint, format = "raw"): Promise<string> {
  const v = id("vol");
  await insertVolume(sql, newVolume(v, poolId, size, { name: v, format: format as "raw" }));
  await sql`update volumes set state = 'available' where id = ${v}`;
  expect(await reserveCapacity(sql, { poolId, volumeId: v, bytes: size, ttlMs: 60_000 })).toBe(true);
  await confirmReservation(sql, v);
  return v;
}

/** What CreateSnapshot does in its transaction: reserve first, then the snapshot row (the FK is deferred). */
async function snapshotOf(
  db: Database,
  volumeId: string,
  poolId: string,
  kind: PoolKind,
  size: bigint,
): Promise<string | undefined> {
  const s = id("snap");
  const op = id("op");
  return db.sql.begin(async (tx) => {
    const ok = await reserveSnapshotCapacity(tx, {
      poolId,
      snapshotId: s,
      holds: "snapshot",
      bytes: snapshotHoldingBytes(kind, size),
      operationId: op,
      ttlMs: 60_000,
    });
    if (!ok) return undefined;
    await insertSnapshot(tx, { id: s, name: s, volumeId, sizeBytes: size, operationId: op });
    return s;
  }) as Promise<string | undefined>;
}

/**
 * What live volumes and snapshots hold by the rules (docs/architecture.md, "Snapshot capacity"), computed from
 * the volumes and snapshots themselves, not from the ledger's rows.
 */
async function heldByRule(sql: Queryable, poolId: string): Promise<bigint> {
  const [row] = await sql<{ kind: PoolKind; volumes: bigint }[]>`
    select p.kind, coalesce((select sum(size_bytes) from volumes v where v.pool_id = p.id and v.state <> 'deleted'), 0)::int8 as volumes
    from pools p where p.id = ${poolId}`;
  const snaps = await sql<{ sizeBytes: bigint }[]>`
    select s.size_bytes from snapshots s join volumes v on v.id = s.volume_id
    where v.pool_id = ${poolId} and s.state in ('creating', 'available', 'deleting')`;
  return snaps.reduce((sum, s) => sum + snapshotHoldingBytes(row!.kind, s.sizeBytes), row!.volumes);
}

describe("snapshot capacity rules", () => {
  it("holds a thick snapshot at its origin's size, a qcow2 one at the volume's size, a thin one at 0", () => {
    expect(snapshotHoldingBytes("lvm", 10n * GiB)).toBe(10n * GiB);
    expect(snapshotHoldingBytes("dir", 3n * GiB)).toBe(3n * GiB);
    expect(snapshotHoldingBytes("netfs", 3n * GiB)).toBe(3n * GiB);
    for (const kind of THIN_KINDS) expect(snapshotHoldingBytes(kind, 10n * GiB)).toBe(0n);
    expect(cloneNeedsBase("dir", "qcow2", false)).toBe(true);
    expect(cloneNeedsBase("dir", "qcow2", true)).toBe(false);
    expect(cloneNeedsBase("dir", "raw", false)).toBe(false);
    expect(cloneNeedsBase("lvmthin", "raw", false)).toBe(false);
    expect(cloneNeedsBase("rbd", "raw", false)).toBe(false);
  });
});

describe.each(backends)("snapshot capacity on %s", (_name, makeBackend) => {
  const database = migratedDatabase(makeBackend);
  let db: Database;

  beforeAll(async () => {
    db = database();
    await upsertHost(db.sql, hostRegistration("h1"));
    await applyPoolReports(db.sql, "h1", [
      poolReport("vg", 15n * GiB, { kind: "lvm" }),
      poolReport("thin", 10n * GiB, { kind: "lvmthin", overcommitRatio: 20 }),
      poolReport("files", 100n * GiB, { kind: "dir", formats: ["qcow2", "raw"] }),
      poolReport("seq", 20n * GiB, { kind: "lvm" }),
    ]);
  });

  it("refuses a thick snapshot that does not fit, writing nothing, and takes one that does", async () => {
    const v = await liveVolume(db.sql, "h1/vg", 10n * GiB);
    const before = await ledger(db.sql, "h1/vg");
    // 10 GiB held of 15: the volume fits, a 100%ORIGIN snapshot of it does not.
    expect(await snapshotOf(db, v, "h1/vg", "lvm", 10n * GiB)).toBeUndefined();
    expect(await ledger(db.sql, "h1/vg")).toEqual(before);
    const [rows] = await db.sql<{ n: number }[]>`select count(*)::int as n from snapshot_reservations
      where pool_id = 'h1/vg'`;
    expect(rows!.n).toBe(0);
    // A smaller volume's snapshot fits: reserved, then allocated once, then released once.
    const small = await liveVolume(db.sql, "h1/vg", 2n * GiB);
    const mid = await ledger(db.sql, "h1/vg");
    const s = await snapshotOf(db, small, "h1/vg", "lvm", 2n * GiB);
    expect(s).toBeDefined();
    expect(await ledger(db.sql, "h1/vg")).toEqual({ ...mid, reservedBytes: mid.reservedBytes + 2n * GiB });
    expect(await confirmSnapshotReservation(db.sql, s!)).toBe(true);
    expect(await confirmSnapshotReservation(db.sql, s!)).toBe(false);
    expect(await ledger(db.sql, "h1/vg")).toEqual({ ...mid, allocatedBytes: mid.allocatedBytes + 2n * GiB });
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
    // Reserving again what is held changes nothing.
    expect(
      await reserveSnapshotCapacity(db.sql, {
        poolId: "h1/vg",
        snapshotId: s!,
        holds: "snapshot",
        bytes: 2n * GiB,
        operationId: "op-again",
        ttlMs: 60_000,
      }),
    ).toBe(true);
    expect(await ledger(db.sql, "h1/vg")).toEqual({ ...mid, allocatedBytes: mid.allocatedBytes + 2n * GiB });
    expect(await releaseSnapshotCapacity(db.sql, s!)).toBe(1);
    expect(await releaseSnapshotCapacity(db.sql, s!)).toBe(0);
    expect(await ledger(db.sql, "h1/vg")).toEqual(mid);
    expect((await getSnapshotReservation(db.sql, s!, "snapshot"))?.state).toBe("released");
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
  });

  it("holds nothing for a thin snapshot, but a thin pool past its physical floor refuses it", async () => {
    const v = await liveVolume(db.sql, "h1/thin", 50n * GiB);
    const before = await ledger(db.sql, "h1/thin");
    const s = await snapshotOf(db, v, "h1/thin", "lvmthin", 50n * GiB);
    expect(s).toBeDefined();
    expect(await ledger(db.sql, "h1/thin")).toEqual(before);
    expect((await getSnapshotReservation(db.sql, s!, "snapshot"))?.bytes).toBe(0n);
    await db.sql`update pools set used_bytes = ${95n * (GiB / 10n)} where id = 'h1/thin'`;
    expect(await snapshotOf(db, v, "h1/thin", "lvmthin", 50n * GiB)).toBeUndefined();
    await db.sql`update pools set used_bytes = 0 where id = 'h1/thin'`;
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
  });

  it("holds a clone base once, from its first made clone, and gives it back when every clone failed", async () => {
    const v = await liveVolume(db.sql, "h1/files", 4n * GiB, "qcow2");
    const s = (await snapshotOf(db, v, "h1/files", "dir", 4n * GiB))!;
    await confirmSnapshotReservation(db.sql, s);
    const before = await ledger(db.sql, "h1/files");
    const base = (op: string) =>
      reserveSnapshotCapacity(db.sql, {
        poolId: "h1/files",
        snapshotId: s,
        holds: "base",
        bytes: 4n * GiB,
        operationId: op,
        ttlMs: 60_000,
      });
    const clone = async (state: string) => {
      const c = id("vol");
      await insertVolume(
        db.sql,
        newVolume(c, "h1/files", 4n * GiB, { format: "qcow2", sourceSnapshotId: s }),
      );
      await db.sql`update volumes set state = ${state} where id = ${c}`;
      return c;
    };
    // The first clone reserves the base; a second one while it is reserved adds nothing.
    expect(await base("op-1")).toBe(true);
    const c1 = await clone("creating");
    expect(await base("op-2")).toBe(true);
    expect(await ledger(db.sql, "h1/files")).toEqual({
      ...before,
      reservedBytes: before.reservedBytes + 4n * GiB,
    });
    // Still being made: nothing moves. Failed: released.
    expect(await settleCloneBases(db.sql, [s])).toBe(0);
    await db.sql`update volumes set state = 'error' where id = ${c1}`;
    expect(await settleCloneBases(db.sql, [s])).toBe(1);
    expect(await ledger(db.sql, "h1/files")).toEqual(before);
    // The next clone takes it again; once it is made the base is an allocation, for good.
    expect(await base("op-3")).toBe(true);
    await clone("available");
    expect(await settleCloneBases(db.sql)).toBe(1);
    expect(await settleCloneBases(db.sql)).toBe(0);
    expect(await ledger(db.sql, "h1/files")).toEqual({
      ...before,
      allocatedBytes: before.allocatedBytes + 4n * GiB,
    });
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
    // Deleting the snapshot gives back its own bytes and its base's.
    expect(await releaseSnapshotCapacity(db.sql, s)).toBe(2);
    expect((await ledger(db.sql, "h1/files")).allocatedBytes).toBe(before.allocatedBytes - 4n * GiB);
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
  });

  it("keeps the ledger equal to what live volumes and snapshots hold after a sequence, to the byte", async () => {
    const pool = "h1/seq";
    const volumes: { id: string; size: bigint }[] = [];
    const snaps: string[] = [];
    let refused = 0;
    // A fixed pseudo-random walk: creates, snapshots, snapshot confirmations and deletes, volume deletes.
    let x = 7;
    const next = (n: number) => {
      // mulberry32
      x = (x + 0x6d2b79f5) | 0;
      let t = Math.imul(x ^ (x >>> 15), 1 | x);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) % n;
    };
    for (let i = 0; i < 60; i++) {
      const step = next(5);
      if (step === 0 || volumes.length === 0) {
        const size = BigInt(1 + next(4)) * GiB;
        const v = id("vol");
        await insertVolume(db.sql, newVolume(v, pool, size, { name: v }));
        if (await reserveCapacity(db.sql, { poolId: pool, volumeId: v, bytes: size, ttlMs: 60_000 })) {
          await confirmReservation(db.sql, v);
          await db.sql`update volumes set state = 'available' where id = ${v}`;
          volumes.push({ id: v, size });
        } else {
          await db.sql`update volumes set state = 'deleted' where id = ${v}`;
          refused++;
        }
      } else if (step === 1 || step === 2) {
        const v = volumes[next(volumes.length)]!;
        const s = await snapshotOf(db, v.id, pool, "lvm", v.size);
        if (s) {
          snaps.push(s);
          if (next(3) > 0) {
            await confirmSnapshotReservation(db.sql, s);
            await db.sql`update snapshots set state = 'available' where id = ${s}`;
          }
        } else refused++;
      } else if (step === 3 && snaps.length > 0) {
        const s = snaps.splice(next(snaps.length), 1)[0]!;
        await releaseSnapshotCapacity(db.sql, s);
        await releaseSnapshotCapacity(db.sql, s);
        await db.sql`update snapshots set state = 'deleted' where id = ${s}`;
      } else {
        const [v] = volumes.splice(next(volumes.length), 1);
        const [live] = await db.sql<{ n: number }[]>`select count(*)::int as n from snapshots
          where volume_id = ${v!.id} and state <> 'deleted'`;
        if (live!.n > 0) {
          volumes.push(v!);
          continue;
        }
        await releaseCapacity(db.sql, v!.id);
        await db.sql`update volumes set state = 'deleted' where id = ${v!.id}`;
      }
      const l = await ledger(db.sql, pool);
      expect(l.allocatedBytes + l.reservedBytes).toBe(await heldByRule(db.sql, pool));
      expect(l.allocatedBytes + l.reservedBytes).toBeLessThanOrEqual(20n * GiB);
      expect(l.volumeCount).toBe(volumes.length);
    }
    expect(refused).toBeGreaterThan(0);
    expect(snaps.length).toBeGreaterThan(0);
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
  });

  it("finds a pool whose ledger does not count its snapshots", async () => {
    const v = await liveVolume(db.sql, "h1/files", GiB, "qcow2");
    const s = (await snapshotOf(db, v, "h1/files", "dir", GiB))!;
    await confirmSnapshotReservation(db.sql, s);
    await db.sql`update pools set allocated_bytes = allocated_bytes - ${GiB} where id = 'h1/files'`;
    expect(await ledgerDiscrepancies(db.sql)).toEqual([
      expect.objectContaining({ poolId: "h1/files", column: "allocated_bytes" }),
    ]);
    await db.sql`update pools set allocated_bytes = allocated_bytes + ${GiB} where id = 'h1/files'`;
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
  });
});

describe.each(backends)("migration 0009 on %s", (_name, makeBackend) => {
  let backend: Backend;
  let db: Database;
  beforeAll(async () => {
    backend = await makeBackend();
    db = await backend.open();
    return async () => {
      await db.close();
      await backend.close();
    };
  });

  it("holds the snapshots made before it by their kind's rule, and the bases of dir snapshots with clones", async () => {
    const all = loadMigrations();
    const before = all.filter((m) => m.version < 9);
    // 0009 is applied over the data made before it (with whatever came after it).
    expect(all.some((m) => m.version === 9)).toBe(true);
    await migrate(db.sql, before);
    await upsertHost(db.sql, hostRegistration("h1"));
    // Pools as the schema before 0009 holds them (today's applyPoolReports writes columns of later migrations).
    const total = 100n * GiB;
    for (const [name, kind, formats, ratio] of [
      ["vg", "lvm", ["raw"], 1],
      ["rbd", "rbd", ["raw"], 20],
      ["files", "dir", ["qcow2", "raw"], 1],
    ] as const)
      await db.sql`insert into pools (id, host_id, name, kind, formats, total_bytes, free_bytes, overcommit_ratio)
        values (${`h1/${name}`}, 'h1', ${name}, ${kind}, ${db.sql.json([...formats])}, ${total}, ${total}, ${ratio})`;
    const made: Record<string, string> = {};
    for (const [pool, format] of [
      ["vg", "raw"],
      ["rbd", "raw"],
      ["files", "qcow2"],
    ] as const) {
      const v = await liveVolume(db.sql, `h1/${pool}`, 3n * GiB, format);
      const s = id("snap");
      await insertSnapshot(db.sql, {
        id: s,
        name: "s",
        volumeId: v,
        sizeBytes: 3n * GiB,
        operationId: "op-x",
      });
      await db.sql`update snapshots set state = 'available' where id = ${s}`;
      // A deleted one holds nothing.
      const gone = id("snap");
      await insertSnapshot(db.sql, {
        id: gone,
        name: "g",
        volumeId: v,
        sizeBytes: 3n * GiB,
        operationId: "op-y",
      });
      await db.sql`update snapshots set state = 'deleted' where id = ${gone}`;
      made[pool] = s;
    }
    const clone = id("vol");
    await insertVolume(
      db.sql,
      newVolume(clone, "h1/files", 5n * GiB, { format: "qcow2", sourceSnapshotId: made.files! }),
    );
    await db.sql`update volumes set state = 'available' where id = ${clone}`;
    await reserveCapacity(db.sql, { poolId: "h1/files", volumeId: clone, bytes: 5n * GiB, ttlMs: 60_000 });
    await confirmReservation(db.sql, clone);

    await migrate(db.sql);
    expect((await ledger(db.sql, "h1/vg")).allocatedBytes).toBe(6n * GiB);
    expect((await ledger(db.sql, "h1/rbd")).allocatedBytes).toBe(3n * GiB);
    // The volume, the clone, the snapshot and its base.
    expect((await ledger(db.sql, "h1/files")).allocatedBytes).toBe((3n + 5n + 3n + 3n) * GiB);
    expect((await getSnapshotReservation(db.sql, made.files!, "base"))?.state).toBe("allocated");
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
  });
});
