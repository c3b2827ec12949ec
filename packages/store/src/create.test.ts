import { beforeAll, describe, expect, it } from "vitest";
import { insertPlacedVolume } from "./create.js";
import type { Database } from "./db.js";
import { upsertHost } from "./hosts.js";
import { confirmCreated, ledgerDiscrepancies, releaseCapacity } from "./ledger.js";
import { getOperation } from "./operations.js";
import { applyPoolReports } from "./pools.js";
import { backends, migratedDatabase } from "./testing/backends.js";
import { GiB, hostRegistration, newVolume, poolReport } from "./testing/fixtures.js";
import { getVolumeById } from "./volumes.js";

let seq = 0;
const ids = () => {
  const n = (++seq).toString(16).padStart(31, "0");
  return { volumeId: `vol-c${n}`, operationId: `op-c${n}` };
};

describe.each(backends)("a placed create in one statement, on %s", (_name, makeBackend) => {
  const database = migratedDatabase(makeBackend);
  let db: Database;

  const create = (size: bigint, name: string, requestId: string | null = null) => {
    const { volumeId, operationId } = ids();
    return insertPlacedVolume(db.sql, {
      volume: { ...newVolume(volumeId, "h1/small", size, { name, hostId: "h1", requestId }), operationId },
      reservation: { ttlMs: 60_000 },
      operation: {
        id: operationId,
        kind: "create_volume",
        command: new Uint8Array([1, 2, 3]),
        requestedBy: "tester",
        requestId: null,
      },
      audit: { actor: "tester", action: "CreateVolume", target: volumeId, request: { size }, outcome: "ok" },
    });
  };
  const counts = async () => {
    const [r] = await db.sql<{ v: number; r: number; o: number; a: number; reserved: bigint; n: number }[]>`
      select (select count(*)::int from volumes) as v, (select count(*)::int from reservations) as r,
        (select count(*)::int from operations) as o, (select count(*)::int from audit_log) as a,
        (select reserved_bytes from pools where id = 'h1/small') as reserved,
        (select volume_count from pools where id = 'h1/small') as n`;
    return r!;
  };

  beforeAll(async () => {
    db = database();
    await upsertHost(db.sql, hostRegistration("h1"));
    await applyPoolReports(db.sql, "h1", [poolReport("small", 10n * GiB, { kind: "dir" })]);
  });

  it("writes the reservation, the volume, its reservation row, the operation and the audit entry together", async () => {
    const before = await counts();
    const out = await create(2n * GiB, "one");
    expect(out).toBeDefined();
    const after = await counts();
    expect([after.v - before.v, after.r - before.r, after.o - before.o, after.a - before.a]).toEqual([
      1, 1, 1, 1,
    ]);
    expect(after.reserved - before.reserved).toBe(2n * GiB);
    expect(after.n - before.n).toBe(1);
    expect((await getVolumeById(db.sql, out!.volume.id))?.state).toBe("creating");
    // The operation it answers is the row it wrote.
    // (Less the watches' change_xid, which no caller reads.)
    const {
      updatedAt: _u,
      changeXid: _x,
      ...stored
    } = (await getOperation(db.sql, out!.operation.id)) as Awaited<ReturnType<typeof getOperation>> & {
      changeXid?: string;
    };
    const { updatedAt: _v, ...built } = out!.operation;
    expect({ ...built, command: Buffer.from(built.command) }).toEqual({
      ...stored,
      command: Buffer.from(stored.command),
    });
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
  });

  it("writes nothing at all when the ledger refuses the space", async () => {
    const before = await counts();
    expect(await create(100n * GiB, "too-big")).toBeUndefined();
    expect(await counts()).toEqual(before);
  });

  it("writes nothing when the name is taken meanwhile (the unique index fails the whole statement)", async () => {
    await create(1n * GiB, "taken");
    const before = await counts();
    await expect(create(1n * GiB, "taken")).rejects.toThrow(/unique|duplicate/i);
    expect(await counts()).toEqual(before);
  });

  it("confirms a batch of created volumes in one statement, once, leaving a volume that moved on as it is", async () => {
    const made = [];
    for (let i = 0; i < 5; i++) made.push((await create(1n * GiB, `batch-${i}`))!);
    // One expired meanwhile: its reservation released, the volume in error (the reconciler's doing).
    const late = made[4]!;
    await releaseCapacity(db.sql, late.volume.id);
    await db.sql`update volumes set state = 'error' where id = ${late.volume.id}`;
    const before = await counts();
    const done = made.map((m) => ({
      operationId: m.operation.id,
      allocatedBytes: 4096n,
      hostPath: `/p/${m.volume.id}`,
    }));
    expect(new Set(await confirmCreated(db.sql, done))).toEqual(new Set(made.map((m) => m.operation.id)));
    for (const m of made.slice(0, 4))
      expect(await getVolumeById(db.sql, m.volume.id)).toMatchObject({
        state: "available",
        allocatedBytes: 4096n,
        hostPath: `/p/${m.volume.id}`,
      });
    expect((await getVolumeById(db.sql, late.volume.id))?.state).toBe("error");
    const after = await counts();
    expect(before.reserved - after.reserved).toBe(4n * GiB);
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
    // A duplicate changes nothing.
    expect(await confirmCreated(db.sql, done)).toEqual([]);
    expect(await counts()).toEqual(after);
    expect(await ledgerDiscrepancies(db.sql)).toEqual([]);
  });
});
