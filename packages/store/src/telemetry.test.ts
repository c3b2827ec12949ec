import { describe, expect, it } from "vitest";
import { databaseAnswers } from "./db.js";
import { replaceFindings } from "./findings.js";
import { upsertHost } from "./hosts.js";
import { applyPoolReports } from "./pools.js";
import { insertSnapshot } from "./snapshots.js";
import {
  findingCountsByHost,
  hostHeartbeatAges,
  migrationPlanCountsByPhase,
  operationsUnfinishedByHost,
  poolCapacities,
  snapshotCountsByState,
  volumeCountsByState,
} from "./telemetry.js";
import { backends, migratedDatabase } from "./testing/backends.js";
import {
  GiB,
  hostRegistration,
  newVolume,
  operationInState,
  poolReport,
  volumeInState,
} from "./testing/fixtures.js";

describe.each(backends)("scrape-time reads on %s", (_name, makeBackend) => {
  const db = migratedDatabase(makeBackend);

  it("reads every host's state and heartbeat age, by id", async () => {
    const { sql } = db();
    for (const id of ["hb-b", "hb-a"]) await upsertHost(sql, hostRegistration(id));
    await sql`update hosts set state = 'down', last_heartbeat_at = now() - interval '90 seconds' where id = 'hb-b'`;
    const rows = (await hostHeartbeatAges(sql)).filter((r) => r.id.startsWith("hb-"));
    expect(rows.map((r) => [r.id, r.state])).toEqual([
      ["hb-a", "up"],
      ["hb-b", "down"],
    ]);
    expect(rows[0]!.age).toBeLessThan(60);
    expect(rows[1]!.age).toBeGreaterThanOrEqual(90);
  });

  it("counts unfinished operations per host and state, zeros included, with the oldest's age", async () => {
    const { sql } = db();
    for (const id of ["op-h1", "op-h2"]) await upsertHost(sql, hostRegistration(id));
    for (const [id, state] of [
      ["op-1", "pending"],
      ["op-2", "sent"],
      ["op-3", "sent"],
      ["op-4", "succeeded"],
    ] as const)
      await operationInState(sql, id, "op-h1/p", state, 600);
    const rows = (await operationsUnfinishedByHost(sql)).filter((r) => r.hostId.startsWith("op-"));
    const by = (hostId: string, state: string) => rows.find((r) => r.hostId === hostId && r.state === state);
    expect(rows).toHaveLength(4);
    expect(by("op-h1", "pending")?.n).toBe(1);
    expect(by("op-h1", "sent")?.n).toBe(2);
    expect(by("op-h1", "sent")?.oldest).toBeGreaterThan(599);
    expect(by("op-h2", "pending")).toMatchObject({ n: 0, oldest: 0 });
  });

  it("counts findings per host and kind, each kind asked for included", async () => {
    const { sql } = db();
    for (const id of ["f-h1", "f-h2"]) await upsertHost(sql, hostRegistration(id));
    await replaceFindings(sql, "f-h1", [
      { hostId: "f-h1", kind: "orphan", subject: "vol-x", poolId: "", detail: "" },
      { hostId: "f-h1", kind: "orphan", subject: "vol-y", poolId: "", detail: "" },
      { hostId: "f-h1", kind: "foreign", subject: "/x", poolId: "", detail: "" },
    ]);
    const rows = (await findingCountsByHost(sql, ["orphan", "missing"])).filter((r) =>
      r.hostId.startsWith("f-"),
    );
    expect(rows.sort((a, b) => `${a.hostId}${a.kind}`.localeCompare(`${b.hostId}${b.kind}`))).toEqual([
      { hostId: "f-h1", kind: "missing", n: 0 },
      { hostId: "f-h1", kind: "orphan", n: 2 },
      { hostId: "f-h2", kind: "missing", n: 0 },
      { hostId: "f-h2", kind: "orphan", n: 0 },
    ]);
  });

  it("counts volumes and snapshots by state", async () => {
    const { sql } = db();
    await upsertHost(sql, hostRegistration("vc"));
    await applyPoolReports(sql, "vc", [poolReport("p", 100n * GiB)]);
    for (const [id, state] of [
      ["vol-c1", "available"],
      ["vol-c2", "available"],
      ["vol-c3", "error"],
      ["vol-c4", "creating"],
    ] as const)
      await volumeInState(sql, newVolume(id, "vc/p", GiB), state);
    for (const [id, state] of [
      ["snap-1", "available"],
      ["snap-2", "creating"],
      ["snap-3", "creating"],
    ] as const) {
      await insertSnapshot(sql, { id, name: id, volumeId: "vol-c1", sizeBytes: GiB, operationId: "op-x" });
      await sql`update snapshots set state = ${state} where id = ${id}`;
    }
    expect(Object.fromEntries(await volumeCountsByState(sql))).toEqual({
      available: 2,
      error: 1,
      creating: 1,
    });
    expect(Object.fromEntries(await snapshotCountsByState(sql))).toEqual({ available: 1, creating: 2 });
  });

  it("counts migration plans by phase, none while their table does not exist", async () => {
    const { sql } = db();
    expect(await migrationPlanCountsByPhase(sql)).toEqual(new Map());
    await sql`create table migration_plans (id text primary key, phase text not null)`;
    try {
      await sql`insert into migration_plans values ('m1', 'planned'), ('m2', 'planned'), ('m3', 'failed')`;
      expect(Object.fromEntries(await migrationPlanCountsByPhase(sql))).toEqual({ planned: 2, failed: 1 });
    } finally {
      await sql`drop table migration_plans`;
    }
  });

  it("reads the numbers of present pools only, by id", async () => {
    const { sql } = db();
    await upsertHost(sql, hostRegistration("pc"));
    const reports = [
      poolReport("b", 10n * GiB, { usedBytes: GiB, freeBytes: 9n * GiB }),
      poolReport("a", 20n * GiB, {
        kind: "lvmthin",
        dataPercent: 5,
        metadataPercent: 1,
        overcommitRatio: 20,
      }),
      poolReport("gone", GiB),
    ];
    await applyPoolReports(sql, "pc", reports);
    // The agent no longer reports "gone": it is kept, marked absent.
    await applyPoolReports(sql, "pc", reports.slice(0, 2));
    const rows = (await poolCapacities(sql)).filter((p) => p.hostId === "pc");
    expect(rows.map((p) => p.id)).toEqual(["pc/a", "pc/b"]);
    expect(rows[1]).toMatchObject({
      kind: "dir",
      healthy: true,
      totalBytes: 10n * GiB,
      usedBytes: GiB,
      allocatedBytes: 0n,
      reservedBytes: 0n,
      dataPercent: null,
      volumeCount: 0,
    });
    expect(rows[1]!.updatedAt).toBeInstanceOf(Date);
  });
});

describe("database readiness", () => {
  it("answers true while the database is open and false once it is closed", async () => {
    const [, makeBackend] = backends[0]!;
    const backend = await makeBackend();
    const db = await backend.open();
    try {
      expect(await databaseAnswers(db.sql)).toBe(true);
    } finally {
      await db.close();
    }
    expect(await databaseAnswers(db.sql)).toBe(false);
    await backend.close();
  });
});
