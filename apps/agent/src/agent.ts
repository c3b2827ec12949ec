import { randomUUID } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { type Bus, COMMAND_STREAM, connectBus, consumeLoop } from "@stowage/bus";
import { FORMATS_BY_KIND } from "@stowage/core";
import {
  createDirDriver,
  createLvmDriver,
  createRbdDriver,
  createToolRunner,
  LVM_NO_UDEV_CONFIG,
  lvmToolEnv,
  type PoolDriver,
  type ToolRunner,
} from "@stowage/drivers";
import {
  type AgentCommand,
  AgentCommandSchema,
  AgentService,
  HeartbeatSchema,
  type HostInfo,
  HostInfoSchema,
  InventorySchema,
  OperationKind,
  OperationResultSchema,
  PoolKind,
  type PoolReport,
  PoolReportSchema,
  type RegisterAgentResponse,
  VolumeFormat,
} from "@stowage/proto";
import { createLogger, startOpsServer } from "@stowage/telemetry";
import type { AgentConfig, PoolConfig } from "./config.js";
import { discoverHost, poolNumaNode } from "./discovery.js";
import { artifactToWire, executeCommand } from "./executor.js";
import { createAgentMetrics, type PoolSample } from "./metrics.js";

export const AGENT_VERSION = "0.1.0";

const WIRE_KIND: Record<PoolConfig["kind"], PoolKind> = {
  dir: PoolKind.DIR,
  lvm: PoolKind.LVM,
  lvmthin: PoolKind.LVMTHIN,
  rbd: PoolKind.RBD,
};

/** One driver per configured pool, each with the single tool runner (LVM's with its quiet environment). */
async function createPoolDriver(
  p: PoolConfig,
  runner: (env?: Record<string, string>) => ToolRunner,
): Promise<PoolDriver> {
  switch (p.kind) {
    case "dir":
      await mkdir(p.path, { recursive: true, mode: 0o750 });
      return createDirDriver({
        poolName: p.name,
        root: p.path,
        runner: runner(),
        qcow2Defaults: p.qcow2,
        ...(p.maxChainDepth ? { maxChainDepth: p.maxChainDepth } : {}),
      });
    case "lvm":
    case "lvmthin":
      return createLvmDriver({
        poolName: p.name,
        vg: p.vg,
        ...(p.kind === "lvmthin" ? { thinPool: p.thinPool } : {}),
        runner: runner(lvmToolEnv()),
        ...(p.udev ? {} : { lvmConfig: LVM_NO_UDEV_CONFIG }),
      });
    case "rbd":
      return createRbdDriver({
        poolName: p.name,
        cephPool: p.cephPool,
        runner: runner(),
        ...(p.namespace ? { namespace: p.namespace } : {}),
        ...(p.cephConf ? { cephConf: p.cephConf } : {}),
        ...(p.cephUser ? { cephUser: p.cephUser } : {}),
        ...(p.keyring ? { keyring: p.keyring } : {}),
      });
  }
}

export interface AgentHandle {
  hostId: string;
  metricsPort: number;
  /** Publishes a full inventory now. */
  publishInventory(): Promise<void>;
  stop(): Promise<void>;
}

const KIND_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(OperationKind)
    .filter(([, v]) => typeof v === "number")
    .map(([k, v]) => [v as number, k.toLowerCase()]),
);

export async function startAgent(config: AgentConfig): Promise<AgentHandle> {
  const log = createLogger(`stowage-agent`, config.logLevel).child({ host: config.hostName });
  const bootId = randomUUID();
  let lastPools: PoolSample[] = [];
  const metrics = createAgentMetrics(config.hostName, () => lastPools);
  const toolRunner = (env?: Record<string, string>) =>
    createToolRunner({
      defaultTimeoutMs: config.toolTimeoutMs,
      ...(env ? { env } : {}),
      onInvocation: (e) => {
        metrics.toolInvocations.inc({
          tool: e.tool,
          result: e.ok ? "ok" : e.timedOut ? "timeout" : "failed",
        });
        metrics.toolDuration.observe({ tool: e.tool }, e.durationMs / 1000);
        if (!e.ok)
          log.warn({ tool: e.tool, argv: e.argv, exitCode: e.exitCode, timedOut: e.timedOut }, "tool failed");
      },
    });

  const drivers = new Map<string, PoolDriver>();
  const poolNuma = new Map<string, number | undefined>();
  for (const p of config.pools) {
    drivers.set(p.name, await createPoolDriver(p, toolRunner));
    poolNuma.set(
      p.name,
      p.numaNode ?? (p.kind === "dir" ? await poolNumaNode(p.path, config.sysfsRoot) : undefined),
    );
  }

  const host = await discoverHost({ sysfsRoot: config.sysfsRoot, procRoot: config.procRoot });
  const hostInfo = (metricsAddress: string): HostInfo =>
    create(HostInfoSchema, {
      name: config.hostName,
      zone: config.zone,
      labels: config.labels,
      numaNodes: host.numaNodes.map((n) => ({
        id: n.id,
        cpuList: n.cpuList,
        cpus: n.cpus,
        memoryBytes: n.memoryBytes,
        distances: n.distances,
      })),
      cpuCount: host.cpuCount,
      memoryBytes: host.memoryBytes,
      agentVersion: AGENT_VERSION,
      initiatorName: config.initiatorName,
      metricsAddress,
    });

  /** Capacity and contents of every pool; a pool that fails its check is reported unhealthy, not dropped. */
  const scanPools = async () => {
    const reports: PoolReport[] = [];
    const artifacts = [];
    const foreign: string[] = [];
    const samples: PoolSample[] = [];
    for (const p of config.pools) {
      const d = drivers.get(p.name)!;
      const health = await d.check().catch((err: Error) => ({ healthy: false, message: err.message }));
      let cap = { totalBytes: 0n, usedBytes: 0n, freeBytes: 0n, provisionedBytes: 0n } as Awaited<
        ReturnType<PoolDriver["capacity"]>
      >;
      let volumes: Awaited<ReturnType<PoolDriver["list"]>> = { volumes: [], foreign: [] };
      let healthy = health.healthy;
      let message = health.message;
      if (healthy) {
        try {
          cap = await d.capacity();
          volumes = await d.list();
        } catch (err) {
          healthy = false;
          message = (err as Error).message;
        }
      }
      reports.push(
        create(PoolReportSchema, {
          name: p.name,
          kind: WIRE_KIND[p.kind],
          numaNode: poolNuma.get(p.name),
          healthy,
          healthMessage: message,
          totalBytes: cap.totalBytes,
          usedBytes: cap.usedBytes,
          freeBytes: cap.freeBytes,
          provisionedBytes: cap.provisionedBytes,
          dataPercent: cap.dataPercent,
          metadataPercent: cap.metadataPercent,
          formats: FORMATS_BY_KIND[p.kind].map((f) =>
            f === "qcow2" ? VolumeFormat.QCOW2 : VolumeFormat.RAW,
          ),
          labels: p.labels,
          overcommitRatio: p.overcommitRatio ?? 0,
          reservedPercent: p.reservedPercent,
          maxVolumes: p.maxVolumes,
          maxUsedPercent: p.maxUsedPercent,
          shared: p.kind === "rbd",
        }),
      );
      artifacts.push(...volumes.volumes.map(artifactToWire));
      foreign.push(...volumes.foreign.map((f) => `${p.name}/${f}`));
      samples.push({ pool: p.name, kind: p.kind, ...cap, healthy, volumes: volumes.volumes.length });
    }
    lastPools = samples;
    return { reports, artifacts, foreign };
  };

  const ops = await startOpsServer({
    host: config.metricsListen.slice(0, config.metricsListen.lastIndexOf(":")),
    port: Number(config.metricsListen.slice(config.metricsListen.lastIndexOf(":") + 1)),
    registry: metrics.registry,
    ready: async () => ({
      ok: registered !== undefined && !bus.nc.isClosed(),
      detail: { registered: registered !== undefined },
    }),
  });
  const metricsAddress = `${config.metricsListen.slice(0, config.metricsListen.lastIndexOf(":"))}:${ops.port}`;

  const client = createClient(AgentService, createGrpcTransport({ baseUrl: config.controllerUrl }));
  let registered: RegisterAgentResponse | undefined;
  const register = async () => {
    const scan = await scanPools();
    registered = await client.registerAgent(
      { host: hostInfo(metricsAddress), pools: scan.reports },
      { timeoutMs: 10_000 },
    );
    return registered;
  };
  // Wait for the controller: an agent may start first. Each failure is logged with what to check.
  let delay = 250;
  for (;;) {
    try {
      await register();
      break;
    } catch (err) {
      log.warn(
        { err: (err as Error).message, controller: config.controllerUrl },
        "cannot register with the controller yet; retrying",
      );
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }
  const reg = registered!;
  log.info({ consumer: reg.commandConsumer }, "registered with the controller");

  let bus: Bus;
  try {
    bus = await connectBus({
      servers: config.natsUrl,
      name: `stowage-agent-${config.hostName}`,
      user: config.natsUser,
      pass: config.natsPass,
    });
  } catch (err) {
    await ops.close();
    throw new Error(`cannot connect to NATS at ${config.natsUrl}: ${(err as Error).message}`);
  }

  let sequence = 0n;
  let running = 0;
  const publishInventory = async () => {
    const scan = await scanPools();
    sequence++;
    const inv = create(InventorySchema, {
      hostId: reg.hostId,
      sequence,
      at: timestampNow(),
      host: hostInfo(metricsAddress),
      pools: scan.reports,
      volumes: scan.artifacts,
      foreignArtifacts: scan.foreign,
    });
    bus.nc.publish(reg.inventorySubject, toBinary(InventorySchema, inv));
  };
  const publishHeartbeat = () => {
    sequence++;
    const hb = create(HeartbeatSchema, {
      hostId: reg.hostId,
      sequence,
      at: timestampNow(),
      runningOperations: running,
      bootId,
    });
    bus.nc.publish(reg.heartbeatSubject, toBinary(HeartbeatSchema, hb));
  };
  publishHeartbeat();
  await publishInventory().catch((err) => log.warn({ err }, "inventory failed"));

  const abort = new AbortController();
  const consumer = await bus.js.consumers.get(reg.commandStream || COMMAND_STREAM, reg.commandConsumer);
  const consuming = consumeLoop(
    consumer,
    async (msg) => {
      let cmd: AgentCommand;
      try {
        cmd = fromBinary(AgentCommandSchema, msg.data);
      } catch (err) {
        log.error({ err, seq: msg.seq }, "undecodable command dropped");
        return;
      }
      if (msg.info.deliveryCount > 1) metrics.redeliveries.inc();
      const kind = KIND_NAMES[cmd.kind] ?? "unknown";
      const oplog = log.child({ operationId: cmd.operationId, kind, pool: cmd.poolName });
      oplog.info({ delivery: msg.info.deliveryCount }, "operation started");
      running++;
      const backend = config.pools.find((p) => p.name === cmd.poolName)?.kind ?? "unknown";
      const end = metrics.operationDuration.startTimer({ kind, backend });
      const result = await executeCommand(drivers, reg.hostId, cmd).finally(() => {
        running--;
        end();
      });
      metrics.operations.inc({ kind, backend, result: result.success ? "succeeded" : "failed" });
      // The result is durable in JetStream before the command is acked; a crash in between means a redelivery,
      // which the idempotent driver adopts.
      await bus.js.publish(reg.resultSubject, toBinary(OperationResultSchema, result), {
        msgID: `result-${cmd.operationId}`,
        timeout: 10_000,
      });
      oplog.info(
        {
          success: result.success,
          adopted: result.adopted,
          error: result.error?.message,
          ms: Number(result.durationMs),
        },
        "operation finished",
      );
      void publishInventory().catch((err) => log.warn({ err }, "inventory failed"));
    },
    {
      signal: abort.signal,
      onError: (err) => log.warn({ err }, "command handling failed; it will be redelivered"),
    },
  );

  const heartbeatTimer = setInterval(publishHeartbeat, reg.heartbeatIntervalMs || 3000);
  const inventoryTimer = setInterval(
    () => void publishInventory().catch((err) => log.warn({ err }, "inventory failed")),
    config.inventoryIntervalMs,
  );
  // Registration is idempotent; repeating it heals a controller that lost its database.
  const registerTimer = setInterval(() => void register().catch(() => {}), 60_000);

  return {
    hostId: reg.hostId,
    metricsPort: ops.port,
    publishInventory,
    async stop() {
      clearInterval(heartbeatTimer);
      clearInterval(inventoryTimer);
      clearInterval(registerTimer);
      abort.abort();
      await consuming;
      await bus.close();
      await ops.close();
      log.info("agent stopped");
    },
  };
}
