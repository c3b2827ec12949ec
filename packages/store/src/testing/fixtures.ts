import type { Queryable } from "../db.js";
import type { HostRegistration } from "../hosts.js";
import { insertOperation, type NewOperation } from "../operations.js";
import type { PoolReportRecord } from "../pools.js";
import { insertVolume, type NewVolume } from "../volumes.js";

export const GiB = 1024n ** 3n;

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

/** Writes a volume and puts it in `state` (the state machine is the services' business, not the store's tests'). */
export async function volumeInState(sql: Queryable, v: NewVolume, state: string): Promise<void> {
  await insertVolume(sql, v);
  await sql`update volumes set state = ${state} where id = ${v.id}`;
}

/** Writes a create_volume operation of the pool `<hostId>/<pool name>` in `state`, created `ageSeconds` ago. */
export async function operationInState(
  sql: Queryable,
  id: string,
  poolId: string,
  state: string,
  ageSeconds = 0,
  over: Partial<NewOperation> = {},
): Promise<void> {
  await insertOperation(sql, {
    id,
    kind: "create_volume",
    hostId: poolId.split("/")[0]!,
    poolId,
    volumeId: "vol-1",
    command: new Uint8Array(),
    requestedBy: "test",
    ...over,
  });
  await sql`update operations set state = ${state}, created_at = now() - make_interval(secs => ${ageSeconds})
    where id = ${id}`;
}
