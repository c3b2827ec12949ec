import { existsSync, writeFileSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import {
  freePort,
  makeFakeSysfs,
  makeTempDir,
  type NatsServer,
  type Service,
  spawnService,
  startNats,
  type TestPostgres,
  testPostgres,
} from "@stowage/testkit";
import { execa } from "execa";

export const ROOT = resolve(import.meta.dirname, "../..");
const CONTROLLER = join(ROOT, "apps/controller/dist/main.js");
const AGENT = join(ROOT, "apps/agent/dist/main.js");
const STOWCTL = join(ROOT, "apps/cli/bin/stowctl.js");

export type DatabaseKind = "pglite" | "postgres";

export interface AgentProcess {
  name: string;
  poolDir: string;
  configFile: string;
  service: Service;
}

export interface Cluster {
  dir: string;
  url: string;
  grpcPort: number;
  metricsPort: number;
  nats: NatsServer;
  controller: Service;
  agents: AgentProcess[];
  databaseUrl: string;
  startController(): Promise<Service>;
  /** Starts (or starts again) an agent; `env` is added to its environment (a PATH with fake tools first, say). */
  startAgent(name: string, opts?: { env?: Record<string, string> }): Promise<AgentProcess>;
  stowctl(
    args: string[],
    opts?: { reject?: boolean },
  ): Promise<{ exitCode: number; stdout: string; stderr: string }>;
  stowctlJson<T = unknown>(args: string[]): Promise<T>;
  stop(): Promise<void>;
}

/**
 * Starts a real cluster: a nats-server with JetStream, a controller process on embedded PGlite or a real
 * PostgreSQL database, and agents with a dir pool each under one data directory and a fake 2-node NUMA layout.
 */
export async function startCluster(opts: {
  database: DatabaseKind;
  agents: string[];
  env?: Record<string, string>;
}): Promise<Cluster> {
  const tmp = await makeTempDir("stowage-e2e-");
  const nats = await startNats({ dir: join(tmp.path, "nats") });
  const pg: TestPostgres | undefined = opts.database === "postgres" ? await testPostgres() : undefined;
  const databaseUrl = pg?.url ?? "";
  const grpcPort = await freePort();
  const metricsPort = await freePort();
  const url = `http://127.0.0.1:${grpcPort}`;
  const agents: AgentProcess[] = [];

  const controllerEnv = {
    STOWAGE_GRPC_LISTEN: `127.0.0.1:${grpcPort}`,
    STOWAGE_METRICS_LISTEN: `127.0.0.1:${metricsPort}`,
    STOWAGE_DATA_DIR: join(tmp.path, "controller"),
    STOWAGE_DATABASE_URL: databaseUrl,
    STOWAGE_NATS_URL: nats.url,
    STOWAGE_HEARTBEAT_INTERVAL_MS: "500",
    STOWAGE_HOST_DOWN_AFTER_MS: "3000",
    STOWAGE_RECONCILE_INTERVAL_MS: "250",
    STOWAGE_RELAY_INTERVAL_MS: "100",
    ...opts.env,
  };
  const startController = () =>
    spawnService({
      name: "controller",
      command: process.execPath,
      args: [CONTROLLER],
      env: controllerEnv,
      readyWhen: `http://127.0.0.1:${metricsPort}/readyz`,
      readyTimeoutMs: 60_000,
      logFile: join(tmp.path, "controller.log"),
    });

  const startAgent = async (
    name: string,
    o: { env?: Record<string, string> } = {},
  ): Promise<AgentProcess> => {
    const base = join(tmp.path, "hosts", name);
    const sysroot = join(base, "sysroot");
    // Made once: an agent started again finds the same host.
    const sys = existsSync(join(sysroot, "sys"))
      ? { sysfsRoot: join(sysroot, "sys"), procRoot: join(sysroot, "proc") }
      : await makeFakeSysfs(sysroot, { nodes: 2, cpusPerNode: 2 });
    const poolDir = join(tmp.path, "pools", name, "default");
    await mkdir(poolDir, { recursive: true });
    const configFile = join(base, "agent.json");
    writeFileSync(
      configFile,
      JSON.stringify({
        hostName: name,
        controllerUrl: url,
        natsUrl: nats.url,
        sysfsRoot: sys.sysfsRoot,
        procRoot: sys.procRoot,
        metricsListen: "127.0.0.1:0",
        inventoryIntervalMs: 1000,
        pools: [{ name: "default", kind: "dir", path: poolDir, numaNode: agents.length % 2 }],
      }),
    );
    const service = await spawnService({
      name: `agent-${name}`,
      command: process.execPath,
      args: [AGENT, "--config", configFile],
      ...(o.env ? { env: o.env } : {}),
      readyWhen: (line) => line.includes("registered with the controller"),
      readyTimeoutMs: 60_000,
      logFile: join(base, "agent.log"),
    });
    const a = { name, poolDir, configFile, service };
    const i = agents.findIndex((x) => x.name === name);
    if (i >= 0) agents[i] = a;
    else agents.push(a);
    return a;
  };

  const cluster: Cluster = {
    dir: tmp.path,
    url,
    grpcPort,
    metricsPort,
    nats,
    controller: await startController(),
    agents,
    databaseUrl,
    async startController() {
      cluster.controller = await startController();
      return cluster.controller;
    },
    startAgent,
    async stowctl(args, o = {}) {
      const r = await execa(process.execPath, [STOWCTL, "--server", url, ...args], {
        reject: false,
        env: { STOWAGE_SERVER: "" },
        timeout: 120_000,
      });
      if (o.reject && r.exitCode !== 0)
        throw new Error(`stowctl ${args.join(" ")} exited ${r.exitCode}: ${r.stderr}`);
      return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
    },
    async stowctlJson(args) {
      const r = await cluster.stowctl([...args, "-o", "json"], { reject: true });
      return JSON.parse(r.stdout);
    },
    async stop() {
      await Promise.all(agents.map((a) => a.service.stop()));
      await cluster.controller.stop();
      await nats.stop();
      await pg?.release();
      await tmp.cleanup();
    },
  };
  for (const name of opts.agents) await startAgent(name);
  return cluster;
}

export async function qemuImgInfo(
  path: string,
): Promise<{ "virtual-size": number; format: string; "cluster-size"?: number }> {
  const r = await execa("qemu-img", ["info", "-U", "--output=json", path]);
  return JSON.parse(r.stdout);
}

export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined | false>,
  timeoutMs = 30_000,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
