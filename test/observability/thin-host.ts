import { create, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { type Bus, connectBus } from "@stowage/bus";
import {
  AgentService,
  HeartbeatSchema,
  HostInfoSchema,
  InventorySchema,
  PoolKind,
  PoolReportSchema,
  type RegisterAgentResponse,
  VolumeFormat,
} from "@stowage/proto";
import { startOpsServer } from "@stowage/telemetry";
import { createAgentMetrics } from "../../apps/agent/src/metrics.js";

export interface SimulatedThinHost {
  hostId: string;
  poolId: string;
  /** host:port of its /metrics: the agent's own metrics (createAgentMetrics) for its thin pool. */
  metricsTarget: string;
  /** Physically used bytes in the last report. */
  usedBytes(): number;
  stop(): Promise<void>;
}

/**
 * A host that speaks the agent protocol (register over gRPC, heartbeats and inventories on NATS) for one lvmthin
 * pool whose physical use grows steadily, without running any operation: commands sent to it stay in its
 * JetStream consumer. It stands in for a real thin pool (which needs root and LVM) so that thin data and metadata
 * percentages, growth and the time-to-full forecast reach the controller's metrics, and serves the agent's metrics
 * registry for that pool on its own /metrics.
 */
export async function startSimulatedThinHost(opts: {
  controllerUrl: string;
  natsUrl: string;
  name: string;
  capacityBytes: number;
  startUsedBytes: number;
  growthBytesPerSecond: number;
  intervalMs: number;
}): Promise<SimulatedThinHost> {
  const started = Date.now();
  const used = () =>
    Math.min(
      opts.capacityBytes,
      Math.round(opts.startUsedBytes + ((Date.now() - started) / 1000) * opts.growthBytesPerSecond),
    );
  const host = create(HostInfoSchema, {
    name: opts.name,
    numaNodes: [{ id: 0, cpuList: "0-1", cpus: [0, 1], memoryBytes: 2n ** 31n, distances: [10] }],
    cpuCount: 2,
    memoryBytes: 2n ** 31n,
    agentVersion: "simulated",
  });
  const pool = () => {
    const u = used();
    return create(PoolReportSchema, {
      name: "thin",
      kind: PoolKind.LVMTHIN,
      healthy: true,
      totalBytes: BigInt(opts.capacityBytes),
      usedBytes: BigInt(u),
      freeBytes: BigInt(opts.capacityBytes - u),
      provisionedBytes: 0n,
      dataPercent: (100 * u) / opts.capacityBytes,
      metadataPercent: 5 + (10 * u) / opts.capacityBytes,
      formats: [VolumeFormat.RAW],
    });
  };
  const metrics = createAgentMetrics(opts.name, () => {
    const p = pool();
    return [
      {
        pool: p.name,
        kind: "lvmthin",
        totalBytes: p.totalBytes,
        usedBytes: p.usedBytes,
        freeBytes: p.freeBytes,
        provisionedBytes: p.provisionedBytes,
        dataPercent: p.dataPercent,
        metadataPercent: p.metadataPercent,
        healthy: p.healthy,
        volumes: 0,
      },
    ];
  });
  const ops = await startOpsServer({
    host: "127.0.0.1",
    port: 0,
    registry: metrics.registry,
    ready: async () => ({ ok: true, detail: {} }),
  });
  let reg: RegisterAgentResponse;
  let bus: Bus;
  try {
    const client = createClient(AgentService, createGrpcTransport({ baseUrl: opts.controllerUrl }));
    host.metricsAddress = `127.0.0.1:${ops.port}`;
    reg = await client.registerAgent({ host, pools: [pool()] }, { timeoutMs: 10_000 });
    bus = await connectBus({ servers: opts.natsUrl, name: `simulated-${opts.name}` });
  } catch (err) {
    await ops.close();
    throw err;
  }
  let sequence = 0n;
  const report = () => {
    sequence++;
    bus.nc.publish(
      reg.heartbeatSubject,
      toBinary(
        HeartbeatSchema,
        create(HeartbeatSchema, { hostId: reg.hostId, sequence, at: timestampNow() }),
      ),
    );
    sequence++;
    bus.nc.publish(
      reg.inventorySubject,
      toBinary(
        InventorySchema,
        create(InventorySchema, { hostId: reg.hostId, sequence, at: timestampNow(), host, pools: [pool()] }),
      ),
    );
  };
  report();
  const timer = setInterval(report, opts.intervalMs);
  return {
    hostId: reg.hostId,
    poolId: `${reg.hostId}/thin`,
    metricsTarget: host.metricsAddress,
    usedBytes: used,
    async stop() {
      clearInterval(timer);
      await bus.close();
      await ops.close();
    },
  };
}
