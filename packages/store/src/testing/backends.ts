import { makeTempDir, type TestPostgres, testPostgres } from "@stowage/testkit";
import { afterAll, beforeAll } from "vitest";
import { type Database, openDatabase } from "../db.js";
import type { HostRegistration } from "../hosts.js";
import { migrate } from "../migrate.js";
import type { PoolReportRecord } from "../pools.js";
import type { NewVolume } from "../volumes.js";

/** A database the store's tests run on: each repository must work on both. */
export interface Backend {
  open(): Promise<Database>;
  close(): Promise<void>;
}

/** Embedded PGlite and a PostgreSQL server, for `describe.each(backends)`. */
export const backends: [string, () => Promise<Backend>][] = [
  [
    "pglite",
    async () => {
      const dir = await makeTempDir("stowage-pglite-");
      return { open: () => openDatabase({ dataDir: dir.path }), close: () => dir.cleanup() };
    },
  ],
  [
    "postgres",
    async () => {
      const pg: TestPostgres = await testPostgres();
      return { open: () => openDatabase({ url: pg.url, max: 10 }), close: () => pg.release() };
    },
  ],
];

/**
 * Opens a migrated database on the backend before the suite's tests and closes it after them; the returned
 * function gives it to the tests.
 */
export function migratedDatabase(makeBackend: () => Promise<Backend>): () => Database {
  let backend: Backend | undefined;
  let db: Database | undefined;
  beforeAll(async () => {
    backend = await makeBackend();
    db = await backend.open();
    await migrate(db.sql);
  });
  afterAll(async () => {
    await db?.close();
    await backend?.close();
  });
  return () => {
    if (!db) throw new Error("the database is opened in beforeAll");
    return db;
  };
}

/** A host as an agent registers it, with nothing of note. */
export function hostRegistration(id: string, over: Partial<HostRegistration> = {}): HostRegistration {
  return {
    id,
    zone: "",
    labels: {},
    numaNodes: [],
    cpuCount: 2,
    memoryBytes: 1n,
    agentVersion: "t",
    initiatorName: "",
    metricsAddress: "",
    ...over,
  };
}

/** A healthy raw-format pool report of `totalBytes`, nothing used. */
export function poolReport(
  name: string,
  totalBytes: bigint,
  over: Partial<PoolReportRecord> = {},
): PoolReportRecord {
  return {
    name,
    kind: "dir",
    numaNode: null,
    healthy: true,
    healthMessage: "",
    totalBytes,
    usedBytes: 0n,
    freeBytes: totalBytes,
    provisionedBytes: 0n,
    dataPercent: null,
    metadataPercent: null,
    overcommitRatio: 1,
    maxUsedPercent: 90,
    reservedPercent: 0,
    maxVolumes: 0,
    labels: {},
    formats: ["raw"],
    shared: false,
    ...over,
  };
}

/** A raw volume of `sizeBytes` in the pool `<hostId>/<pool name>`, as a create writes it. */
export function newVolume(
  id: string,
  poolId: string,
  sizeBytes: bigint,
  over: Partial<NewVolume> = {},
): NewVolume {
  return {
    id,
    name: id,
    sizeBytes,
    format: "raw",
    poolId,
    hostId: poolId.split("/")[0]!,
    numaNode: null,
    cpuSet: "",
    labels: {},
    qcow2: {},
    requestId: null,
    operationId: "op-x",
    antiAffinityGroup: "",
    ...over,
  };
}
