/**
 * A real cluster on a test fleet (packages/testkit/src/netns.ts): nats-server and the controller in the
 * controller namespace listening on 203.0.113.1, the controller on embedded PGlite (its data directory), and
 * one agent per host namespace with its own dir pool and fake sysfs, connecting to 203.0.113.1. The same
 * shape as cluster.ts where it makes sense. Needs root; see docs/testkit.md, "The test fleet".
 *
 * Every port is fixed (each namespace has a port space of its own): NATS 4222 (monitoring 8222, on the
 * controller namespace's loopback), the controller 7480 (gRPC) and 7481 (metrics, /readyz).
 *
 * Two modes:
 * - `secure: true` (docs/security.md): the controller serves TLS (its own CA in its data directory), every
 *   user call carries a bearer token, nats-server runs with TLS and decentralised JWT auth from the config
 *   `stowage-controller nats-config` writes, and each agent joins with a one-time join token (made with
 *   `stowctl token create --host`), keeps its certificate and NATS credentials in its state directory and
 *   talks mTLS to the controller.
 * - plaintext (the default): STOWAGE_TLS=off and STOWAGE_ALLOW_PLAINTEXT_NON_LOOPBACK=1, as the network is a
 *   private bridge that nothing outside this machine can reach.
 */
import { randomBytes } from "node:crypto";
import { existsSync, writeFileSync } from "node:fs";
import { appendFile, mkdir, writeFile } from "node:fs/promises";
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
const PROBE = join(ROOT, "test/support/fleet-probe.mjs");

/** The controller's guard against plaintext off loopback, and the documented way to lift it. */
const ALLOW_PLAINTEXT_ENV = "STOWAGE_ALLOW_PLAINTEXT_NON_LOOPBACK";

export const FLEET_NATS_PORT = 4222;
export const FLEET_NATS_MONITOR_PORT = 8222;
export const FLEET_GRPC_PORT = 7480;
export const FLEET_METRICS_PORT = 7481;

/** What fleet-probe.mjs prints. */
export interface ProbeResult {
  ok: boolean;
  code?: string;
  error?: string;
  errors?: string[];
  [key: string]: unknown;
}

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
  /** Whether the cluster runs TLS, tokens, join tokens and NATS JWT auth. */
  secure: boolean;
  /** http(s)://203.0.113.1:7480: reachable from the fleet's namespaces only. */
  url: string;
  /** The controller's CA (secure mode): what stowctl and the agents trust. */
  caFile: string;
  /** The bootstrap admin token's secret (secure mode; STOWAGE_API_TOKENS of the controller). */
  adminToken: string;
  /** The controller's data directory (its PKI lives in pki/ under it). */
  controllerDir: string;
  natsUrl: string;
  grpcPort: number;
  metricsPort: number;
  nats: Service;
  controller: Service;
  agents: FleetAgent[];
  startController(): Promise<Service>;
  /** Starts (or starts again) the agent of host `name` (h1, ...) in its namespace. */
  startAgent(name: string, opts?: { env?: Record<string, string>; joinToken?: string }): Promise<FleetAgent>;
  /** A new one-time join token for host `name` (secure mode), made by the admin with stowctl. */
  joinToken(name: string, ttl?: string): Promise<string>;
  /** Every join token's secret made so far (for the tests' secret scans). */
  readonly issuedJoinTokens: readonly string[];
  /**
   * Runs stowctl against the controller from inside a namespace: the controller's (default) or a host's
   * (`on: "h2"`). Never from the root namespace, where 203.0.113.0/24 is blackholed. In secure mode it trusts
   * the controller's CA and carries the admin token unless `token` says otherwise ("" for none).
   */
  stowctl(args: string[], opts?: { reject?: boolean; on?: string; token?: string }): Promise<ExecResult>;
  stowctlJson<T = unknown>(args: string[], opts?: { on?: string; token?: string }): Promise<T>;
  /** Runs test/support/fleet-probe.mjs with `arg` in namespace `on` ("ctl", "h1", ...); its one JSON line. */
  probe<T = ProbeResult>(on: string, arg: Record<string, unknown>): Promise<T>;
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
  /** TLS, tokens, join tokens and NATS JWT auth (see the file's comment). */
  secure?: boolean;
  /** Agents' certificate lifetime (secure mode; STOWAGE_AGENT_CERT_TTL_MS). */
  agentCertTtlMs?: number;
  /**
   * The hosts that run an agent (default: every host). The others are free for servers a test runs in a
   * namespace of their own (an NFS server with its rpcbind, a Ceph monitor) on fleetHostAddress(i).
   */
  agentHosts?: readonly string[];
  /**
   * Runs after the fleet and before the controller and agents start: the servers the agents' config points at
   * (a tgtd per host, Ganesha, Ceph). What it returns is stopped with the cluster, after the agents.
   */
  beforeAgents?: (fleet: Fleet, dir: string) => Promise<readonly Service[] | undefined>;
  /**
   * More of each agent's config file, merged over the defaults (`pools` replaces the default dir pool, so
   * include it to keep it: `ctx.defaultPool`).
   */
  agentConfig?: (
    name: string,
    ctx: { index: number; base: string; defaultPool: Record<string, unknown> },
  ) => Record<string, unknown>;
}): Promise<FleetCluster> {
  const secure = opts.secure === true;
  const natsBin = natsServerPath();
  if (!natsBin) throw new Error("nats-server not found: apt-get install -y nats-server");
  const tmp = await makeTempDir("stowage-fleet-");
  const fleet = await startFleet({ prefix: opts.prefix, hosts: opts.hosts });
  const ctl = fleet.controller;
  const url = `${secure ? "https" : "http"}://${ctl.address}:${FLEET_GRPC_PORT}`;
  const natsUrl = `nats://${ctl.address}:${FLEET_NATS_PORT}`;
  const controllerDir = join(tmp.path, "controller");
  const caFile = join(controllerDir, "pki", "ca.crt");
  const adminToken = secure ? `stw_${randomBytes(32).toString("hex")}` : "";
  /** `stowage-controller SUBCOMMAND ...` on the controller's data directory (it only writes files there). */
  const controllerTool = async (args: string[]) => {
    const r = await fleet.exec(ctl, process.execPath, [CONTROLLER, ...args], {
      env: { ...process.env, STOWAGE_DATA_DIR: controllerDir, STOWAGE_DATABASE_URL: "" },
      timeoutMs: 60_000,
    });
    if (r.exitCode !== 0)
      throw new Error(`stowage-controller ${args.join(" ")} exited ${r.exitCode}: ${r.stderr}`);
    return r;
  };
  const agents: FleetAgent[] = [];
  const started: Service[] = [];

  const stopAll = async () => {
    await Promise.all(agents.map((a) => a.service.stop()));
    for (const s of started.reverse()) await s.stop();
    await fleet.teardown();
    await tmp.cleanup();
  };

  try {
    const servers = opts.beforeAgents ? await opts.beforeAgents(fleet, tmp.path) : undefined;
    if (servers) started.push(...servers);
    const natsDir = join(tmp.path, "nats");
    await mkdir(join(natsDir, "js"), { recursive: true });
    const natsConf = join(natsDir, "nats.conf");
    if (secure) {
      // The NATS server's certificate from the controller's CA, then the server's config with the operator,
      // the accounts and the resolver (nats-config.ts): agents get their NATS credentials when they join.
      await mkdir(controllerDir, { recursive: true });
      const tlsDir = join(natsDir, "tls");
      await controllerTool(["issue-cert", "--name", "nats", "--san", ctl.address, "--out-dir", tlsDir]);
      await controllerTool([
        "nats-config",
        "--out",
        natsConf,
        "--listen",
        `${ctl.address}:${FLEET_NATS_PORT}`,
        "--tls-cert",
        join(tlsDir, "nats.crt"),
        "--tls-key",
        join(tlsDir, "nats.key"),
        "--tls-ca",
        join(tlsDir, "ca.crt"),
        "--jetstream-dir",
        join(natsDir, "js"),
        "--resolver-dir",
        join(natsDir, "accounts"),
      ]);
    } else {
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
    }
    // Monitoring on the namespace's loopback only: it is plain HTTP.
    await appendFile(natsConf, `\nhttp: "127.0.0.1:${FLEET_NATS_MONITOR_PORT}"\n`);
    const nats = await fleet.spawn(ctl, {
      name: "nats-server",
      command: natsBin,
      args: ["-c", natsConf, "-a", ctl.address, "-p", String(FLEET_NATS_PORT)],
      readyWhen: `http://127.0.0.1:${FLEET_NATS_MONITOR_PORT}/healthz?js-enabled-only=true`,
      readyTimeoutMs: 20_000,
      logFile: join(natsDir, "nats.log"),
    });
    started.push(nats);

    const controllerEnv = {
      STOWAGE_GRPC_LISTEN: `${ctl.address}:${FLEET_GRPC_PORT}`,
      STOWAGE_METRICS_LISTEN: `${ctl.address}:${FLEET_METRICS_PORT}`,
      ...(secure
        ? {
            STOWAGE_TLS: "on",
            STOWAGE_NATS_AUTH: "jwt",
            STOWAGE_API_TOKENS: `fleet-admin:admin:${adminToken}`,
            ...(opts.agentCertTtlMs ? { STOWAGE_AGENT_CERT_TTL_MS: String(opts.agentCertTtlMs) } : {}),
          }
        : { [ALLOW_PLAINTEXT_ENV]: "1", STOWAGE_TLS: "off", STOWAGE_NATS_TLS: "off" }),
      STOWAGE_DATA_DIR: controllerDir,
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
        // Over TLS the readiness URL needs the CA; the controller logs this line once it serves.
        readyWhen: secure
          ? (line: string) => line.includes('"controller listening"')
          : `http://${ctl.address}:${FLEET_METRICS_PORT}/readyz`,
        readyTimeoutMs: 60_000,
        logFile: join(tmp.path, "controller.log"),
      });

    const runStowctl = async (
      args: string[],
      o: { reject?: boolean; on?: string; token?: string } = {},
    ): Promise<ExecResult> => {
      const token = o.token ?? adminToken;
      const auth = secure ? ["--ca-file", caFile, ...(token ? ["--token", token] : [])] : [];
      const r = await fleet.exec(
        o.on ?? ctl.name,
        process.execPath,
        [STOWCTL, "--server", url, ...auth, ...args],
        {
          env: { ...process.env, STOWAGE_SERVER: "", STOWAGE_TOKEN: "", STOWAGE_CA_FILE: "" },
          timeoutMs: 120_000,
        },
      );
      if (o.reject && r.exitCode !== 0)
        throw new Error(
          `stowctl ${args.join(" ")} (on ${o.on ?? ctl.name}) exited ${r.exitCode}: ${r.stderr}`,
        );
      return r;
    };
    const issuedJoinTokens: string[] = [];
    const joinToken = async (name: string, ttl = "1h") => {
      const r = await runStowctl(["token", "create", "--host", name, "--ttl", ttl, "-o", "json"], {
        reject: true,
      });
      const secret = (JSON.parse(r.stdout) as { secret?: string }).secret;
      if (!secret) throw new Error(`stowctl token create --host ${name} printed no secret: ${r.stdout}`);
      issuedJoinTokens.push(secret);
      return secret;
    };

    const startAgent = async (
      name: string,
      o: { env?: Record<string, string>; joinToken?: string } = {},
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
      const stateDir = join(base, "state");
      // A first start joins with a token; later starts use the certificate in the state directory.
      const needsJoin = secure && !existsSync(join(stateDir, "host.crt"));
      const token = o.joinToken ?? (needsJoin ? await joinToken(name) : undefined);
      const defaultPool = { name: "default", kind: "dir", path: poolDir, numaNode: index % 2 };
      writeFileSync(
        configFile,
        JSON.stringify({
          hostName: name,
          controllerUrl: url,
          natsUrl,
          ...(secure ? { caFile, stateDir } : {}),
          sysfsRoot: sys.sysfsRoot,
          procRoot: sys.procRoot,
          metricsListen: "127.0.0.1:0", // the host namespace's own loopback
          inventoryIntervalMs: 1000,
          pools: [defaultPool],
          ...opts.agentConfig?.(name, { index, base, defaultPool }),
        }),
      );
      const service = await fleet.spawn(host, {
        name: `agent-${name}`,
        command: process.execPath,
        args: [AGENT, "--config", configFile],
        ...(o.env || token ? { env: { ...o.env, ...(token ? { STOWAGE_JOIN_TOKEN: token } : {}) } } : {}),
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
    await Promise.all(
      fleet.hosts
        .filter((h) => !opts.agentHosts || opts.agentHosts.includes(h.name))
        .map((h) => startAgent(h.name)),
    );
    agents.sort((a, b) => a.name.localeCompare(b.name, "en", { numeric: true }));

    let stopped: Promise<void> | undefined;
    const cluster: FleetCluster = {
      fleet,
      dir: tmp.path,
      secure,
      url,
      caFile,
      adminToken,
      controllerDir,
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
      joinToken,
      issuedJoinTokens,
      stowctl: runStowctl,
      async probe(on, arg) {
        const r = await fleet.exec(on, process.execPath, [PROBE, JSON.stringify(arg)], { timeoutMs: 60_000 });
        const line = r.stdout.trim().split("\n").pop() ?? "";
        try {
          return JSON.parse(line);
        } catch {
          throw new Error(
            `fleet-probe ${String(arg.op)} on ${on} exited ${r.exitCode}: ${r.stderr || r.stdout}`,
          );
        }
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
