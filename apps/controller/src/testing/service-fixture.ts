import { CAPABILITIES, newId, type PoolKind, StowageError, type VolumeFormat } from "@stowage/core";
import {
  applyPoolReports,
  confirmReservation,
  type Database,
  insertVolume,
  migrate,
  openDatabase,
  type PoolReportRecord,
  reserveCapacity,
  type Sql,
  transitionVolume,
  upsertHost,
  type VolumeRow,
} from "@stowage/store";
import { GiB, hostRegistration, newVolume, poolReport } from "@stowage/store/testing";
import { createLogger } from "@stowage/telemetry";
import { makeTempDir } from "@stowage/testkit";
import { type ControllerConfig, loadControllerConfig } from "../config.js";
import type { ControllerContext } from "../context.js";
import { createControllerMetrics } from "../metrics.js";

export { GiB };

/** A controller context on a fresh migrated PGlite, with host h1 and no bus: what the services need. */
export interface ServiceFixture {
  ctx: ControllerContext;
  sql: Sql;
  /** Adds a healthy pool `h1/<name>` of this kind with 100 GiB free (the pools added before stay). */
  addPool(
    name: string,
    kind: PoolKind,
    formats: VolumeFormat[],
    over?: Partial<PoolReportRecord>,
  ): Promise<string>;
  close(): Promise<void>;
}

export async function openServiceFixture(config: Partial<ControllerConfig> = {}): Promise<ServiceFixture> {
  const dir = await makeTempDir("stowage-services-");
  const db: Database = await openDatabase({ dataDir: dir.path });
  await migrate(db.sql);
  await upsertHost(db.sql, hostRegistration("h1", { zone: "z1", cpuCount: 1 }));
  const ctx = {
    config: loadControllerConfig({}, { dataDir: dir.path, ...config }),
    db,
    sql: db.sql,
    log: createLogger("test", "silent"),
    metrics: createControllerMetrics(() => db.sql),
    capabilities: CAPABILITIES,
    kickRelay: () => {},
    dispatch: () => {},
    notifyChange: () => {},
    waitForChange: async () => {},
  } as unknown as ControllerContext;
  const pools: PoolReportRecord[] = [];
  return {
    ctx,
    sql: db.sql,
    async addPool(name, kind, formats, over = {}) {
      pools.push(poolReport(name, 100n * GiB, { kind, formats, ...over }));
      await applyPoolReports(db.sql, "h1", pools);
      return `h1/${name}`;
    },
    async close() {
      await ctx.placement?.stop();
      await db.close();
      await dir.cleanup();
    },
  };
}

/** An available volume of 1 GiB in the pool, its capacity held in the ledger. */
export async function addVolume(
  sql: Sql,
  v: { name: string; poolId: string; format: VolumeFormat },
): Promise<VolumeRow> {
  return sql.begin(async (tx) => {
    const id = newId("vol");
    const created = await insertVolume(
      tx,
      newVolume(id, v.poolId, GiB, { name: v.name, format: v.format, operationId: newId("op") }),
    );
    await reserveCapacity(tx, { poolId: v.poolId, volumeId: id, bytes: GiB, ttlMs: 60_000 });
    await confirmReservation(tx, id);
    return transitionVolume(tx, created, "available");
  }) as Promise<VolumeRow>;
}

/** How many rows a table holds (for "nothing was written"). */
export async function countRows(
  sql: Sql,
  table: "snapshots" | "operations" | "audit_log" | "volumes",
): Promise<number> {
  const [row] = await sql<{ n: number }[]>`select count(*)::int as n from ${sql(table)}`;
  return row!.n;
}

/** The code of what `p` was rejected with (a StowageError's), or a text saying it was not refused. */
export async function codeOf(p: Promise<unknown>): Promise<string> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  return err instanceof StowageError ? err.code : `not refused (${String(err)})`;
}
