import { writeFileSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { freePort, makeFakeSysfs, spawnService } from "@stowage/testkit";
import { type AgentProcess, type Cluster, ROOT, startCluster } from "../support/cluster.js";
import { type SimulatedThinHost, startSimulatedThinHost } from "./thin-host.js";

const AGENT = join(ROOT, "apps/agent/dist/main.js");

export interface ObservedCluster {
  cluster: Cluster;
  /** host:port of the controller's /metrics. */
  controllerTarget: string;
  /** host:port of each real agent's /metrics. */
  agentTargets: string[];
  thin: SimulatedThinHost;
  stop(): Promise<void>;
}

/**
 * A cluster whose every /metrics address is known, to be scraped: the support cluster (nats-server, controller
 * on PGlite) with real agents on fixed metrics ports (the support helper gives them port 0), each with a dir
 * pool, plus one simulated host with a growing lvmthin pool.
 */
export async function startObservedCluster(opts: { agents: string[] }): Promise<ObservedCluster> {
  const cluster = await startCluster({ database: "pglite", agents: [] });
  const agentTargets: string[] = [];
  let thin: SimulatedThinHost | undefined;
  try {
    thin = await startSimulatedThinHost({
      controllerUrl: cluster.url,
      natsUrl: cluster.nats.url,
      name: "thin1",
      capacityBytes: 100 * 2 ** 30,
      startUsedBytes: 20 * 2 ** 30,
      growthBytesPerSecond: 64 * 2 ** 20,
      intervalMs: 500,
    });
    for (const [i, name] of opts.agents.entries()) {
      const base = join(cluster.dir, "hosts", name);
      const sys = await makeFakeSysfs(join(base, "sysroot"), { nodes: 2, cpusPerNode: 2 });
      const poolDir = join(cluster.dir, "pools", name, "default");
      await mkdir(poolDir, { recursive: true });
      const target = `127.0.0.1:${await freePort()}`;
      const configFile = join(base, "agent.json");
      writeFileSync(
        configFile,
        JSON.stringify({
          hostName: name,
          controllerUrl: cluster.url,
          natsUrl: cluster.nats.url,
          sysfsRoot: sys.sysfsRoot,
          procRoot: sys.procRoot,
          metricsListen: target,
          inventoryIntervalMs: 1000,
          pools: [{ name: "default", kind: "dir", path: poolDir, numaNode: i % 2 }],
        }),
      );
      const service = await spawnService({
        name: `agent-${name}`,
        command: process.execPath,
        args: [AGENT, "--config", configFile],
        readyWhen: (line) => line.includes("registered with the controller"),
        readyTimeoutMs: 60_000,
        logFile: join(base, "agent.log"),
      });
      // The support cluster stops the agents it lists.
      const agent: AgentProcess = { name, poolDir, configFile, service };
      cluster.agents.push(agent);
      agentTargets.push(target);
    }
  } catch (err) {
    await thin?.stop();
    await cluster.stop();
    throw err;
  }
  const started = thin;
  return {
    cluster,
    controllerTarget: `127.0.0.1:${cluster.metricsPort}`,
    agentTargets,
    thin: started,
    async stop() {
      await started.stop();
      await cluster.stop();
    },
  };
}
