/**
 * A real cluster on a test fleet (packages/testkit/src/netns.ts): nats-server and the controller in the
 * controller namespace listening on 203.0.113.1, the controller on embedded PGlite (its data directory), and
 * one agent per host namespace with its own dir pool and fake sysfs, connecting to 203.0.113.1. The same
 * shape as cluster.ts where it makes sense. Needs root; see docs/testkit.md, "The test fleet".
 *
 * Every port is fixed (each namespace has a port space of its own): NATS 4222 (monitoring 8222), the
 * controller 7480 (gRPC) and 7481 (metrics, /readyz). The controller refuses plaintext listeners off
 * loopback unless STOWAGE_ALLOW_PLAINTEXT_NON_LOOPBACK=1 (ALLOW_PLAINTEXT_ENV in
 * apps/controller/src/config.ts, documented in docs/operating.md); the fleet sets it, as the network is a
 * private bridge that nothing outside this machine can reach.
 */
import { existsSync, writeFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  type ExecResult,
  type Fleet,
  type FleetNode,
  makeFakeSysfs,
  makeTempDir,
  natsServerPath,
  type Service,
  startFleet,
} from "@stowage/testkit";
import { ROOT } from "./cluster.js";

const CONTROLLER = join(ROOT, "apps/controller/dist/main.js");
const AGENT = join(ROOT, "apps/agent/dist/main.js");
const STOWCTL = join(ROOT, "apps/cli/bin/stowctl.js");

/** The controller's guard against plaintext off loopback, and the documented way to lift it. */
const ALLOW_PLAINTEXT_ENV = "STOWAGE_ALLOW_PLAINTEXT_NON_LOOPBACK";

export const FLEET_NATS_PORT = 4222;
export const FLEET_NATS_MONITOR_PORT = 8222;
export const FLEET_GRPC_PORT = 7480;
export const FLEET_METRICS_PORT = 7481;

export interface FleetAgent {
  /** The host's name, as the controller knows it: the fleet node's name (h1, h2, ...). */
  name: string;
  host: FleetNode;
  poolDir: string;
  configFile: string;
  service: Service;
}

export interface FleetCluster {
  fleet: Fleet;
  dir: string;
  /** http://203.0.113.1:7480: reachable from the fleet's namespaces only. */
  url: string;
  natsUrl: string;
  grpcPort: number;
  metricsPort: number;
  nats: Service;
  controller: Service;
  agents: FleetAgent[];
  startController(): Promise<Service>;
  /** Starts (or starts again) the agent of host `name` (h1, ...) in its namespace. */
  startAgent(name: string, opts?: { env?: Record<string, string> }): Promise<FleetAgent>;
  /**
   * Runs stowctl against the controller from inside a namespace: the controller's (default) or a host's
   * (`on: "h2"`). Never from the root namespace, where 203.0.113.0/24 is blackholed.
   */
  stowctl(args: string[], opts?: { reject?: boolean; on?: string }): Promise<ExecResult>;
  stowctlJson<T = unknown>(args: string[], opts?: { on?: string }): Promise<T>;
  /** Stops the agents, the controller and NATS, tears the fleet down, removes the directory. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Brings up a fleet of `hosts` host namespaces with a cluster on it. A failure on the way tears down what
 * was made. `env` is added to the controller's environment.
 */
export async function startFleetCluster(opts: {
  prefix: string;
  hosts: number;
  env?: Record<string, string>;
}): Promise<FleetCluster> {
  const natsBin = natsServerPath();
  if (!natsBin) throw new Error("nats-server not found: apt-get install -y nats-server");
  const tmp = await makeTempDir("stowage-fleet-");
  const fleet = await startFleet({ prefix: opts.prefix, hosts: opts.hosts });
  const ctl = fleet.controller;
  const url = `http://${ctl.address}:${FLEET_GRPC_PORT}`;
  const natsUrl = `nats://${ctl.address}:${FLEET_NATS_PORT}`;
  const agents: FleetAgent[] = [];
  const started: Service[] = [];

  const stopAll = async () => {
    await Promise.all(agents.map((a) => a.service.stop()));
    for (const s of started.reverse()) await s.stop();
    await fleet.teardown();
    await tmp.cleanup();
  };

  try {
    const natsDir = join(tmp.path, "nats");
    await mkdir(join(natsDir, "js"), { recursive: true });
    const natsConf = join(natsDir, "nats.conf");
    await writeFile(
      natsConf,
      [
        "# written by test/support/fleet.ts",
        "jetstream {",
        `  store_dir: ${JSON.stringify(join(natsDir, "js"))}`,
        `  max_memory_store: ${256 * 1024 * 1024}`,
        `  max_file_store: ${1024 * 1024 * 1024}`,
        "}",
        "",
      ].join("\n"),
    );
    const nats = await fleet.spawn(ctl, {
      name: "nats-server",
      command: natsBin,
      args: [
        "-c",
        natsConf,
        "-a",
        ctl.address,
        "-p",
        String(FLEET_NATS_PORT),
        "-m",
        String(FLEET_NATS_MONITOR_PORT),
      ],
      readyWhen: `http://${ctl.address}:${FLEET_NATS_MONITOR_PORT}/healthz?js-enabled-only=true`,
      readyTimeoutMs: 20_000,
      logFile: join(natsDir, "nats.log"),
    });
    started.push(nats);

    const controllerEnv = {
      STOWAGE_GRPC_LISTEN: `${ctl.address}:${FLEET_GRPC_PORT}`,
      STOWAGE_METRICS_LISTEN: `${ctl.address}:${FLEET_METRICS_PORT}`,
      [ALLOW_PLAINTEXT_ENV]: "1",
      STOWAGE_TLS: "off",
      STOWAGE_DATA_DIR: join(tmp.path, "controller"),
      STOWAGE_DATABASE_URL: "", // embedded PGlite in the data directory
      STOWAGE_NATS_URL: natsUrl,
      STOWAGE_HEARTBEAT_INTERVAL_MS: "500",
      STOWAGE_HOST_DOWN_AFTER_MS: "3000",
      STOWAGE_RECONCILE_INTERVAL_MS: "250",
      STOWAGE_RELAY_INTERVAL_MS: "100",
      ...opts.env,
    };
    const startController = () =>
      fleet.spawn(ctl, {
        name: "controller",
        command: process.execPath,
        args: [CONTROLLER],
        env: controllerEnv,
        readyWhen: `http://${ctl.address}:${FLEET_METRICS_PORT}/readyz`,
        readyTimeoutMs: 60_000,
        logFile: join(tmp.path, "controller.log"),
      });

    const startAgent = async (
      name: string,
      o: { env?: Record<string, string> } = {},
    ): Promise<FleetAgent> => {
      const host = fleet.hosts.find((h) => h.name === name);
      if (!host) throw new Error(`no host ${name} in fleet ${fleet.prefix}`);
      const base = join(tmp.path, "hosts", name);
      const sysroot = join(base, "sysroot");
      const sys = existsSync(join(sysroot, "sys"))
        ? { sysfsRoot: join(sysroot, "sys"), procRoot: join(sysroot, "proc") }
        : await makeFakeSysfs(sysroot, { nodes: 2, cpusPerNode: 2 });
      const poolDir = join(tmp.path, "pools", name, "default");
      await mkdir(poolDir, { recursive: true });
      const configFile = join(base, "agent.json");
      const index = fleet.hosts.indexOf(host);
      writeFileSync(
        configFile,
        JSON.stringify({
          hostName: name,
          controllerUrl: url,
          natsUrl,
          sysfsRoot: sys.sysfsRoot,
          procRoot: sys.procRoot,
          metricsListen: "127.0.0.1:0", // the host namespace's own loopback
          inventoryIntervalMs: 1000,
          pools: [{ name: "default", kind: "dir", path: poolDir, numaNode: index % 2 }],
        }),
      );
      const service = await fleet.spawn(host, {
        name: `agent-${name}`,
        command: process.execPath,
        args: [AGENT, "--config", configFile],
        ...(o.env ? { env: o.env } : {}),
        readyWhen: (line) => line.includes("registered with the controller"),
        readyTimeoutMs: 60_000,
        logFile: join(base, "agent.log"),
      });
      const a = { name, host, poolDir, configFile, service };
      const i = agents.findIndex((x) => x.name === name);
      if (i >= 0) agents[i] = a;
      else agents.push(a);
      return a;
    };

    const controller = await startController();
    started.push(controller);
    await Promise.all(fleet.hosts.map((h) => startAgent(h.name)));
    agents.sort((a, b) => a.name.localeCompare(b.name, "en", { numeric: true }));

    let stopped: Promise<void> | undefined;
    const cluster: FleetCluster = {
      fleet,
      dir: tmp.path,
      url,
      natsUrl,
      grpcPort: FLEET_GRPC_PORT,
      metricsPort: FLEET_METRICS_PORT,
      nats,
      controller,
      agents,
      async startController() {
        const s = await startController();
        started.push(s);
        cluster.controller = s;
        return s;
      },
      startAgent,
      async stowctl(args, o = {}) {
        const r = await fleet.exec(o.on ?? ctl.name, process.execPath, [STOWCTL, "--server", url, ...args], {
          env: { ...process.env, STOWAGE_SERVER: "" },
          timeoutMs: 120_000,
        });
        if (o.reject && r.exitCode !== 0)
          throw new Error(
            `stowctl ${args.join(" ")} (on ${o.on ?? ctl.name}) exited ${r.exitCode}: ${r.stderr}`,
          );
        return r;
      },
      async stowctlJson(args, o = {}) {
        const r = await cluster.stowctl([...args, "-o", "json"], { reject: true, ...o });
        return JSON.parse(r.stdout);
      },
      stop() {
        stopped ??= stopAll();
        return stopped;
      },
    };
    return cluster;
  } catch (err) {
    await stopAll().catch(() => {});
    throw err;
  }
}
