import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  AuditService,
  ExportService,
  type Finding,
  FindingKind,
  FindingSchema,
  FindingService,
  type Host,
  HostSchema,
  HostService,
  HostState,
  type Operation,
  OperationKind,
  OperationSchema,
  OperationService,
  OperationState,
  PlacementService,
  type Pool,
  PoolKind,
  PoolSchema,
  PoolService,
  TokenService,
  type Volume,
  VolumeFormat,
  VolumeSchema,
  VolumeService,
  VolumeState,
} from "@stowage/proto";

/**
 * A fake controller for the CLI's tests: a real Connect server (gRPC over h2c on 127.0.0.1) answering with
 * canned data and recording every request. Each service takes overrides, so a test can make one method fail or
 * stream what it needs.
 */

export const NOW = new Date("2025-01-01T12:00:00Z");
const ago = (seconds: number) => timestampFromDate(new Date(NOW.getTime() - seconds * 1000));
const GiB = 1024n ** 3n;

export const HOSTS: Host[] = [
  create(HostSchema, {
    id: "node1",
    state: HostState.UP,
    zone: "z1",
    labels: { rack: "r1" },
    numaNodes: [
      { id: 0, cpuList: "0-3", cpus: [0, 1, 2, 3], memoryBytes: 32n * GiB, distances: [10, 21] },
      { id: 1, cpuList: "4-7", cpus: [4, 5, 6, 7], memoryBytes: 32n * GiB, distances: [21, 10] },
    ],
    cpuCount: 8,
    memoryBytes: 64n * GiB,
    agentVersion: "0.1.0",
    registeredAt: ago(3600),
    lastHeartbeatAt: ago(3),
    schedulable: true,
    poolCount: 2,
    volumeCount: 2,
  }),
  create(HostSchema, {
    id: "node2",
    state: HostState.DOWN,
    zone: "z2",
    cpuCount: 4,
    memoryBytes: 16n * GiB,
    agentVersion: "0.1.0",
    registeredAt: ago(7200),
    lastHeartbeatAt: ago(600),
    schedulable: false,
    poolCount: 1,
    volumeCount: 0,
  }),
];

export const POOLS: Pool[] = [
  create(PoolSchema, {
    id: "node1/default",
    name: "default",
    hostId: "node1",
    kind: PoolKind.DIR,
    numaNode: 0,
    healthy: true,
    capacity: {
      totalBytes: 500n * GiB,
      usedBytes: 100n * GiB,
      freeBytes: 400n * GiB,
      provisionedBytes: 120n * GiB,
      reservedBytes: 10n * GiB,
    },
    overcommitRatio: 1,
    formats: [VolumeFormat.QCOW2, VolumeFormat.RAW],
    volumeCount: 2,
    zone: "z1",
    updatedAt: ago(5),
  }),
  create(PoolSchema, {
    id: "node1/thin",
    name: "thin",
    hostId: "node1",
    kind: PoolKind.LVMTHIN,
    numaNode: 1,
    healthy: false,
    healthMessage: "thin pool metadata 95% full",
    capacity: { totalBytes: 1024n * GiB, freeBytes: 24n * GiB, dataPercent: 97.5, metadataPercent: 95 },
    overcommitRatio: 20,
    formats: [VolumeFormat.RAW],
    zone: "z1",
    updatedAt: ago(5),
  }),
];

export function volume(init: MessageInitShape<typeof VolumeSchema> & { name: string }): Volume {
  return create(VolumeSchema, {
    id: `vol-${init.name}`,
    sizeBytes: 10n * GiB,
    format: VolumeFormat.QCOW2,
    poolId: "node1/default",
    hostId: "node1",
    state: VolumeState.AVAILABLE,
    numaNode: 0,
    cpuSet: "0-3",
    createdAt: ago(300),
    updatedAt: ago(60),
    operationId: `op-${init.name}`,
    hostPath: `/var/lib/stowage/default/vol-${init.name}.qcow2`,
    ...init,
  });
}

export const VOLUMES: Volume[] = [
  volume({ name: "vm1-disk0", labels: { app: "web" }, allocatedBytes: 196608n }),
  volume({ name: "vm2-disk0", sizeBytes: 20n * GiB, format: VolumeFormat.RAW, state: VolumeState.CREATING }),
];

export const OPERATIONS: Operation[] = [
  create(OperationSchema, {
    id: "op-vm1-disk0",
    kind: OperationKind.CREATE_VOLUME,
    state: OperationState.SUCCEEDED,
    hostId: "node1",
    poolId: "node1/default",
    volumeId: "vol-vm1-disk0",
    attempts: 1,
    createdAt: ago(300),
    finishedAt: ago(298),
    requestedBy: "admin",
  }),
];

export const ORPHAN_ID = "vol-0192f7c4e5a87b3c9d1e2f3a4b5c6d7e";

export const FINDINGS: Finding[] = [
  create(FindingSchema, {
    hostId: "node1",
    kind: FindingKind.ORPHAN,
    subject: ORPHAN_ID,
    poolId: "node1/default",
    detail: `artefact /var/lib/stowage/default/${ORPHAN_ID}.qcow2 has no volume in the database`,
    firstSeen: ago(7200),
    lastSeen: ago(60),
    sizeBytes: 8n * GiB,
    format: VolumeFormat.QCOW2,
    allocatedBytes: GiB,
    path: `/var/lib/stowage/default/${ORPHAN_ID}.qcow2`,
  }),
  create(FindingSchema, {
    hostId: "node1",
    kind: FindingKind.FOREIGN,
    subject: "default/old-disk.img",
    detail: "no Stowage ownership marker: left alone",
    firstSeen: ago(7200),
    lastSeen: ago(60),
  }),
];

export interface Recorded {
  method: string;
  request: unknown;
  authorization: string | null;
}

export interface FakeOverrides {
  hosts?: Partial<ServiceImpl<typeof HostService>>;
  pools?: Partial<ServiceImpl<typeof PoolService>>;
  volumes?: Partial<ServiceImpl<typeof VolumeService>>;
  placement?: Partial<ServiceImpl<typeof PlacementService>>;
  operations?: Partial<ServiceImpl<typeof OperationService>>;
  findings?: Partial<ServiceImpl<typeof FindingService>>;
  tokens?: Partial<ServiceImpl<typeof TokenService>>;
  audit?: Partial<ServiceImpl<typeof AuditService>>;
  exports?: Partial<ServiceImpl<typeof ExportService>>;
}

export interface FakeController {
  url: string;
  calls: Recorded[];
  /** The requests of one method, in order. */
  requests<T = unknown>(method: string): T[];
  close(): Promise<void>;
}

function notFound(what: string): never {
  throw new ConnectError(`${what} not found`, Code.NotFound);
}

const defaults: Required<FakeOverrides> = {
  // Token tests pass their own implementations.
  tokens: {},
  // Audit tests pass their own implementations.
  audit: {},
  exports: {},
  hosts: {
    listHosts: () => ({ hosts: HOSTS }),
    getHost: (req) => ({ host: HOSTS.find((h) => h.id === req.hostId) ?? notFound(`host ${req.hostId}`) }),
  },
  pools: {
    listPools: (req) => ({
      pools: POOLS.filter(
        (p) => (!req.hostId || p.hostId === req.hostId) && (!req.kind || p.kind === req.kind),
      ),
    }),
    getPool: (req) => ({ pool: POOLS.find((p) => p.id === req.poolId) ?? notFound(`pool ${req.poolId}`) }),
  },
  volumes: {
    listVolumes: () => ({ volumes: VOLUMES }),
    getVolume: (req) => ({
      volume:
        VOLUMES.find((v) => v.id === req.volume || v.name === req.volume) ?? notFound(`volume ${req.volume}`),
    }),
    createVolume: (req) => ({
      volume: volume({
        name: req.name,
        sizeBytes: req.sizeBytes,
        format: req.format || VolumeFormat.QCOW2,
        state: VolumeState.CREATING,
        labels: req.labels,
      }),
      operation: create(OperationSchema, {
        id: `op-${req.name}`,
        kind: OperationKind.CREATE_VOLUME,
        state: OperationState.PENDING,
      }),
      placement: { hostId: "node1", poolId: "node1/default", numaNode: 0, cpuSet: "0-3" },
    }),
  },
  placement: {},
  findings: {
    listFindings: (req) => ({
      findings: FINDINGS.filter(
        (f) =>
          (!req.hostId || f.hostId === req.hostId) &&
          (!req.poolId || f.poolId === req.poolId) &&
          (!req.kind || f.kind === req.kind),
      ),
    }),
    quarantineFinding: (req) => {
      const f = FINDINGS.find((x) => x.kind === FindingKind.ORPHAN && x.subject === req.volumeId);
      if (!f) notFound(`no orphan ${req.volumeId}`);
      return {
        finding: create(FindingSchema, {
          ...f,
          quarantinedAt: ago(0),
          quarantinedBy: "admin",
          quarantineReason: req.reason,
        }),
      };
    },
    adoptFinding: (req) => {
      const f = FINDINGS.find((x) => x.kind === FindingKind.ORPHAN && x.subject === req.volumeId);
      if (!f) notFound(`no orphan ${req.volumeId}`);
      return {
        volume: volume({
          id: f.subject,
          name: req.name || f.subject,
          sizeBytes: f.sizeBytes,
          hostPath: f.path,
          labels: req.labels,
          operationId: "",
        }),
      };
    },
  },
  operations: {
    getOperation: (req) => ({
      operation: OPERATIONS.find((o) => o.id === req.operationId) ?? notFound(`operation ${req.operationId}`),
    }),
    listOperations: (req) => ({
      operations: OPERATIONS.filter((o) => !req.volumeId || o.volumeId === req.volumeId),
    }),
  },
};

/** Wraps every method so its request is recorded before the implementation runs. */
function recorded<T extends object>(calls: Recorded[], impl: T): T {
  const out: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(impl)) {
    out[name] = (req: unknown, ctx: { requestHeader: Headers }) => {
      calls.push({ method: name, request: req, authorization: ctx.requestHeader.get("authorization") });
      return (fn as (req: unknown, ctx: unknown) => unknown)(req, ctx);
    };
  }
  return out as T;
}

export async function startFakeController(overrides: FakeOverrides = {}): Promise<FakeController> {
  const calls: Recorded[] = [];
  const handler = connectNodeAdapter({
    routes: (router) => {
      router.service(HostService, recorded(calls, { ...defaults.hosts, ...overrides.hosts }));
      router.service(PoolService, recorded(calls, { ...defaults.pools, ...overrides.pools }));
      router.service(VolumeService, recorded(calls, { ...defaults.volumes, ...overrides.volumes }));
      router.service(PlacementService, recorded(calls, { ...defaults.placement, ...overrides.placement }));
      router.service(OperationService, recorded(calls, { ...defaults.operations, ...overrides.operations }));
      router.service(FindingService, recorded(calls, { ...defaults.findings, ...overrides.findings }));
      router.service(TokenService, recorded(calls, { ...defaults.tokens, ...overrides.tokens }));
      router.service(AuditService, recorded(calls, { ...defaults.audit, ...overrides.audit }));
      router.service(ExportService, recorded(calls, { ...defaults.exports, ...overrides.exports }));
    },
  });
  const server = http2.createServer(handler);
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    calls,
    requests: <T>(method: string) => calls.filter((c) => c.method === method).map((c) => c.request as T),
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sessions) s.destroy();
        server.close(() => resolve());
      }),
  };
}
