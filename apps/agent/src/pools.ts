import { mkdir } from "node:fs/promises";
import {
  createDirDriver,
  createLvmDriver,
  createNetfsDriver,
  createRbdDriver,
  createToolRunner,
  LVM_NO_UDEV_CONFIG,
  lvmPhysicalDevices,
  lvmToolEnv,
  type PoolDriver,
  type ToolRunner,
} from "@stowage/drivers";
import type { Logger } from "@stowage/telemetry";
import type { AgentConfig, PoolConfig } from "./config.js";
import { devicesNumaNode, poolNumaNode } from "./discovery.js";
import type { AgentMetrics } from "./metrics.js";

/** A configured pool with its driver and its NUMA node. */
export interface AgentPool {
  config: PoolConfig;
  driver: PoolDriver;
  numaNode: number | undefined;
}

export type ToolRunnerFactory = (env?: Record<string, string>) => ToolRunner;

/** The single tool runner, each invocation counted and timed, each failure logged with its argv. */
export function createMeteredToolRunner(
  config: AgentConfig,
  metrics: AgentMetrics,
  log: Logger,
): ToolRunnerFactory {
  return (env) =>
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
}

/** One driver per configured pool, each with the single tool runner (LVM's with its quiet environment). */
async function createPoolDriver(p: PoolConfig, runner: ToolRunnerFactory): Promise<PoolDriver> {
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
    case "netfs":
      return createNetfsDriver({
        poolName: p.name,
        url: p.url,
        runner: runner(),
        qcow2Defaults: p.qcow2,
        ...(p.maxChainDepth ? { maxChainDepth: p.maxChainDepth } : {}),
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

/**
 * The configured pools by name; a pool's NUMA node is configured, or found in sysfs: a dir pool's from the
 * device of its directory, an LVM pool's from its volume group's physical volumes (when they all agree).
 */
export async function openPools(
  config: AgentConfig,
  runner: ToolRunnerFactory,
): Promise<Map<string, AgentPool>> {
  const pools = new Map<string, AgentPool>();
  for (const p of config.pools) {
    const driver = await createPoolDriver(p, runner);
    const numaNode = p.numaNode ?? (await discoveredNumaNode(p, config.sysfsRoot, runner));
    pools.set(p.name, { config: p, driver, numaNode });
  }
  return pools;
}

async function discoveredNumaNode(
  p: PoolConfig,
  sysfsRoot: string | undefined,
  runner: ToolRunnerFactory,
): Promise<number | undefined> {
  if (p.kind === "dir") return poolNumaNode(p.path, sysfsRoot);
  if (p.kind !== "lvm" && p.kind !== "lvmthin") return undefined;
  try {
    const devices = await lvmPhysicalDevices(
      runner(lvmToolEnv()),
      p.vg,
      p.udev ? undefined : LVM_NO_UDEV_CONFIG,
    );
    return await devicesNumaNode(devices, sysfsRoot);
  } catch {
    // A VG that is missing or unreadable is the pool's health check's to report, not a reason not to start.
    return undefined;
  }
}
