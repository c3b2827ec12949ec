import { randomUUID } from "node:crypto";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { type Bus, connectBus } from "@stowage/bus";
import { AgentService, type RegisterAgentResponse } from "@stowage/proto";
import { createLogger, type Logger } from "@stowage/telemetry";
import { type CommandConsumer, startCommandConsumer } from "./commands.js";
import type { AgentConfig } from "./config.js";
import { discoverHost } from "./discovery.js";
import { createReporter, hostInfo, type PoolScan, scanPools, startReporting } from "./inventory.js";
import { createAgentMetrics, type PoolSample, serveMetrics } from "./metrics.js";
import { createMeteredToolRunner, openPools } from "./pools.js";
import { keepRegistered, registerWhenReachable } from "./registration.js";

export { AGENT_VERSION } from "./inventory.js";

export interface AgentHandle {
  hostId: string;
  metricsPort: number;
  /** Publishes a full inventory now. */
  publishInventory(): Promise<void>;
  stop(): Promise<void>;
}

async function connectAgentBus(config: AgentConfig): Promise<Bus> {
  try {
    return await connectBus({
      servers: config.natsUrl,
      name: `stowage-agent-${config.hostName}`,
      user: config.natsUser,
      pass: config.natsPass,
    });
  } catch (err) {
    throw new Error(`cannot connect to NATS at ${config.natsUrl}: ${(err as Error).message}`);
  }
}

interface RunningAgent {
  log: Logger;
  stopTimers: (() => void)[];
  commands: CommandConsumer;
  bus: Bus;
  metricsServer: { close(): Promise<void> };
}

/** Stops in the order that loses nothing: timers, the consumer (after the operation under way), connections. */
async function stopAgent(a: RunningAgent): Promise<void> {
  for (const stop of a.stopTimers) stop();
  await a.commands.stop();
  await a.bus.close();
  await a.metricsServer.close();
  a.log.info("agent stopped");
}

/**
 * Starts the agent: opens its pools, serves its metrics, registers with the controller (waiting for it), then
 * reports inventory and heartbeats and runs the commands JetStream delivers for this host.
 */
export async function startAgent(config: AgentConfig): Promise<AgentHandle> {
  const log = createLogger(`stowage-agent`, config.logLevel).child({ host: config.hostName });
  let samples: PoolSample[] = [];
  const metrics = createAgentMetrics(config.hostName, () => samples);
  const pools = await openPools(config, createMeteredToolRunner(config, metrics, log));
  const scan = async (): Promise<PoolScan> => {
    const s = await scanPools(pools.values());
    samples = s.samples;
    return s;
  };
  const host = await discoverHost({ sysfsRoot: config.sysfsRoot, procRoot: config.procRoot });

  let registered: RegisterAgentResponse | undefined;
  let bus: Bus | undefined;
  const metricsServer = await serveMetrics(config.metricsListen, metrics.registry, async () => ({
    ok: registered !== undefined && bus !== undefined && !bus.nc.isClosed(),
    detail: { registered: registered !== undefined },
  }));
  const info = () => hostInfo(config, host, metricsServer.address);

  const client = createClient(AgentService, createGrpcTransport({ baseUrl: config.controllerUrl }));
  const register = async () => {
    const { reports } = await scan();
    registered = await client.registerAgent({ host: info(), pools: reports }, { timeoutMs: 10_000 });
    return registered;
  };
  const reg = await registerWhenReachable(register, config.controllerUrl, log);
  log.info({ consumer: reg.commandConsumer }, "registered with the controller");

  try {
    bus = await connectAgentBus(config);
  } catch (err) {
    await metricsServer.close();
    throw err;
  }

  let commands: CommandConsumer | undefined;
  const reporter = createReporter({
    bus,
    registration: reg,
    bootId: randomUUID(),
    host: info,
    scan,
    runningOperations: () => commands?.running() ?? 0,
    log,
  });
  reporter.publishHeartbeat();
  await reporter.refresh();
  commands = await startCommandConsumer({
    bus,
    registration: reg,
    pools,
    metrics,
    log,
    afterOperation: () => void reporter.refresh(),
  });

  const running: RunningAgent = {
    log,
    stopTimers: [
      startReporting(reporter, reg.heartbeatIntervalMs || 3000, config.inventoryIntervalMs),
      keepRegistered(register),
    ],
    commands,
    bus,
    metricsServer,
  };
  return {
    hostId: reg.hostId,
    metricsPort: metricsServer.port,
    publishInventory: () => reporter.publishInventory(),
    stop: () => stopAgent(running),
  };
}
