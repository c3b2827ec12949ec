import { type Database, insertOperation, migrate, openDatabase, upsertHost } from "@stowage/store";
import { makeTempDir, postgresAvailable, testPostgres } from "@stowage/testkit";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createControllerMetrics } from "./metrics.js";

const GiB = 2 ** 30;
let db: Database;
let cleanup: () => Promise<void>;

type Labels = Record<string, string | number>;
async function series(metrics: ReturnType<typeof createControllerMetrics>, name: string) {
  const all = await metrics.registry.getMetricsAsJSON();
  const metric = all.find((x) => x.name === name);
  return metric?.values.map((v) => ({ labels: v.labels as Labels, value: v.value }));
}
async function value(metrics: ReturnType<typeof createControllerMetrics>, name: string, labels: Labels) {
  const found = (await series(metrics, name))?.find((s) =>
    Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  return found?.value;
}
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The controller runs on embedded PGlite or on PostgreSQL: its scrape-time queries must work on both. */
type Backend = [string, () => Promise<{ db: Database; cleanup(): Promise<void> }>];
const backends: Backend[] = [
  [
    "pglite",
    async () => {
      const dir = await makeTempDir("stowage-metrics-");
      const db = await openDatabase({ dataDir: dir.path });
      return {
        db,
        cleanup: async () => {
          await db.close();
          await dir.cleanup();
        },
      };
    },
  ],
  ...(postgresAvailable()
    ? ([
        [
          "postgres",
          async () => {
            const pg = await testPostgres();
            const db = await openDatabase({ url: pg.url });
            return {
              db,
              cleanup: async () => {
                await db.close();
                await pg.release();
              },
            };
          },
        ],
      ] satisfies Backend[])
    : []),
];

describe.each(backends)("controller metrics on %s", (_name, open) => {
  beforeAll(async () => {
    ({ db, cleanup } = await open());
    await migrate(db.sql);
    for (const id of ["h1", "h2"])
      await upsertHost(db.sql, {
        id,
        zone: "",
        labels: {},
        numaNodes: [],
        cpuCount: 4,
        memoryBytes: 8n * 2n ** 30n,
        agentVersion: "test",
        initiatorName: "",
        metricsAddress: "",
      });
    await db.sql`update hosts set state = 'down', last_heartbeat_at = now() - interval '90 seconds' where id = 'h2'`;
    await db.sql`
    insert into pools (id, host_id, name, kind, total_bytes, used_bytes, free_bytes, reported_provisioned_bytes,
      data_percent, metadata_percent, overcommit_ratio, allocated_bytes, reserved_bytes, volume_count)
    values ('h1/thin', 'h1', 'thin', 'lvmthin', ${100 * GiB}, ${40 * GiB}, ${60 * GiB}, ${300 * GiB}, 40, 12.5, 20,
      ${250 * GiB}, ${50 * GiB}, 7),
      ('h2/files', 'h2', 'files', 'dir', ${10 * GiB}, ${GiB}, ${9 * GiB}, 0, null, null, 1, 0, 0, 0)`;
    await insertOperation(db.sql, {
      id: "op-1",
      kind: "create_volume",
      hostId: "h1",
      poolId: "h1/thin",
      volumeId: "vol-1",
      command: new Uint8Array(),
      requestedBy: "test",
    });
    await db.sql`update operations set created_at = now() - interval '10 minutes', state = 'sent' where id = 'op-1'`;
    await db.sql`insert into findings (host_id, kind, subject) values ('h1', 'orphan', 'vol-x'), ('h1', 'orphan', 'vol-y')`;
  }, 120_000);

  afterAll(async () => cleanup?.());

  it("exports each pool's capacity, use, ledger, thin percentages and health from the database", async () => {
    const m = createControllerMetrics(() => db.sql);
    const thin = { pool: "h1/thin", host: "h1", kind: "lvmthin" };
    expect(await value(m, "stowage_pool_capacity_bytes", thin)).toBe(100 * GiB);
    expect(await value(m, "stowage_pool_used_bytes", thin)).toBe(40 * GiB);
    expect(await value(m, "stowage_pool_free_bytes", thin)).toBe(60 * GiB);
    expect(await value(m, "stowage_pool_provisioned_bytes", thin)).toBe(250 * GiB);
    expect(await value(m, "stowage_pool_reserved_bytes", thin)).toBe(50 * GiB);
    expect(await value(m, "stowage_pool_reported_provisioned_bytes", thin)).toBe(300 * GiB);
    expect(await value(m, "stowage_pool_overcommit_ratio", thin)).toBe(20);
    expect(await value(m, "stowage_pool_data_percent", thin)).toBe(40);
    expect(await value(m, "stowage_pool_metadata_percent", thin)).toBe(12.5);
    expect(await value(m, "stowage_pool_healthy", thin)).toBe(1);
    expect(await value(m, "stowage_pool_volumes", thin)).toBe(7);
    // A dir pool has no thin percentages: absent rather than 0.
    expect(await value(m, "stowage_pool_data_percent", { pool: "h2/files" })).toBeUndefined();
    expect(await value(m, "stowage_pool_capacity_bytes", { pool: "h2/files" })).toBe(10 * GiB);
  });

  it("exports hosts up and down with their heartbeat age", async () => {
    const m = createControllerMetrics(() => db.sql);
    expect(await value(m, "stowage_host_up", { host: "h1" })).toBe(1);
    expect(await value(m, "stowage_host_up", { host: "h2" })).toBe(0);
    expect(await value(m, "stowage_host_heartbeat_age_seconds", { host: "h2" })).toBeGreaterThanOrEqual(90);
  });

  it("exports unfinished operations per host and state, with the age of the oldest", async () => {
    const m = createControllerMetrics(() => db.sql);
    expect(await value(m, "stowage_operations_pending", { host: "h1", state: "sent" })).toBe(1);
    expect(await value(m, "stowage_operations_pending", { host: "h1", state: "pending" })).toBe(0);
    expect(await value(m, "stowage_operations_pending", { host: "h2", state: "sent" })).toBe(0);
    expect(
      await value(m, "stowage_operations_oldest_age_seconds", { host: "h1", state: "sent" }),
    ).toBeGreaterThan(599);
    expect(await value(m, "stowage_operations_oldest_age_seconds", { host: "h2", state: "sent" })).toBe(0);
  });

  it("exports reconciler findings per host and kind, zero included", async () => {
    const m = createControllerMetrics(() => db.sql);
    expect(await value(m, "stowage_reconciler_findings", { host: "h1", kind: "orphan" })).toBe(2);
    expect(await value(m, "stowage_reconciler_findings", { host: "h1", kind: "missing" })).toBe(0);
    expect(await value(m, "stowage_reconciler_findings", { host: "h2", kind: "foreign" })).toBe(0);
  });

  it("exports volumes and snapshots by state, every state included", async () => {
    const m = createControllerMetrics(() => db.sql);
    expect(await value(m, "stowage_volumes", { state: "available" })).toBe(0);
    expect((await series(m, "stowage_volumes"))?.length).toBe(7);
    expect((await series(m, "stowage_snapshots"))?.map((s) => s.labels.state).sort()).toEqual([
      "available",
      "creating",
      "deleted",
      "deleting",
      "error",
    ]);
  });

  it("exports every migration phase at 0 while no migration plans are stored", async () => {
    const m = createControllerMetrics(() => db.sql);
    const phases = await series(m, "stowage_migration_plans");
    expect(phases?.map((s) => s.labels.phase).sort()).toEqual(
      ["aborted", "aborting", "committed", "committing", "failed", "planned", "prepared", "preparing"].sort(),
    );
    expect(phases?.every((s) => s.value === 0)).toBe(true);
  });

  it("exports every operation kind's success and failure counters from the start", async () => {
    const m = createControllerMetrics(() => db.sql);
    expect(await value(m, "stowage_operations_total", { kind: "copy_volume", result: "failed" })).toBe(0);
    m.operations.inc({ kind: "create_volume", result: "failed" });
    expect(await value(m, "stowage_operations_total", { kind: "create_volume", result: "failed" })).toBe(1);
    expect(await value(m, "stowage_operations_total", { kind: "create_volume", result: "succeeded" })).toBe(
      0,
    );
    expect(await value(m, "stowage_scheduler_decisions_total", { result: "conflict" })).toBe(0);
  });

  it("leaves gauges out, rather than reporting zeros, while the database cannot answer", async () => {
    const m = createControllerMetrics(() => undefined);
    expect(await series(m, "stowage_volumes")).toEqual([]);
    expect(await series(m, "stowage_host_up")).toEqual([]);
    expect(await series(m, "stowage_pool_capacity_bytes")).toEqual([]);
  });

  it("exports JetStream pending commands per host only when given a provider", async () => {
    expect(
      await series(
        createControllerMetrics(() => db.sql),
        "stowage_jetstream_commands_pending",
      ),
    ).toBe(undefined);
    const m = createControllerMetrics(() => db.sql, {
      pendingCommands: async (host) => {
        if (host === "h2") throw new Error("no consumer");
        return 3;
      },
    });
    expect(await value(m, "stowage_jetstream_commands_pending", { host: "h1" })).toBe(3);
    expect(await value(m, "stowage_jetstream_commands_pending", { host: "h2" })).toBeUndefined();
  });

  it("forecasts time to full from the pool's reports over time", async () => {
    const m = createControllerMetrics(() => db.sql, { forecast: { minSpanSeconds: 60, minSamples: 3 } });
    const thin = { pool: "h1/thin" };
    // Three reports a minute apart, 1 GiB more each: 1 GiB/min with 58 GiB free at the last one.
    const now = Date.now() / 1000;
    for (const [ago, used] of [
      [120, 40],
      [60, 41],
      [0, 42],
    ] as const) {
      await db.sql`update pools set used_bytes = ${used * GiB}, updated_at = to_timestamp(${now - ago})
        where id = 'h1/thin'`;
      expect(await value(m, "stowage_pool_time_to_full_seconds", thin)).toBe(ago === 0 ? 58 * 60 : undefined);
      await pause(550); // past the scrape cache
    }
    // A flat pool never fills.
    const flat = createControllerMetrics(() => db.sql, { forecast: { minSpanSeconds: 1 } });
    for (let i = 0; i < 3; i++) {
      await db.sql`update pools set updated_at = now() where id = 'h2/files'`;
      await flat.registry.metrics();
      await pause(550);
    }
    expect(await value(flat, "stowage_pool_time_to_full_seconds", { pool: "h2/files" })).toBe(
      Number.POSITIVE_INFINITY,
    );
  });

  it("passes promtool check metrics", async () => {
    const m = createControllerMetrics(() => db.sql, { pendingCommands: async () => 0 });
    m.apiRequests.inc({ method: "CreateVolume", code: "ok" });
    m.apiDuration.observe({ method: "CreateVolume" }, 0.01);
    m.schedulerRefusals.inc({ filter: "capacity" });
    const r = await execa("promtool", ["check", "metrics"], {
      input: await m.registry.metrics(),
      reject: false,
    });
    expect(`${r.stdout}${r.stderr}`).toBe("");
    expect(r.exitCode).toBe(0);
  });
});
