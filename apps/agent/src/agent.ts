import { randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { agentInboxPrefix, type Bus, connectBus } from "@stowage/bus";
import { StowageError } from "@stowage/core";
import { createTgtExporter } from "@stowage/drivers";
import { AgentService, type RegisterAgentResponse } from "@stowage/proto";
import { createLogger, type Logger } from "@stowage/telemetry";
import { type CommandConsumer, startCommandConsumer } from "./commands.js";
import { type AgentConfig, natsTlsEnabled, secureMode } from "./config.js";
import { discoverHost } from "./discovery.js";
import { openExportManager, type RbdExportPool } from "./exports.js";
import {
  type HostIdentity,
  isRefusal,
  JOIN_TOKEN_ENV,
  joinWhenReachable,
  keepRenewed,
  loadOrJoin,
  readJoinToken,
  type TlsMaterial,
  tlsOf,
} from "./identity.js";
import { startIdleCollector } from "./idle-gc.js";
import {
  createInventory,
  hostInfo,
  type Inventory,
  type PoolScan,
  poolReports,
  scanPools,
  startReporting,
} from "./inventory.js";
import { createAgentMetrics, listensOnLoopback, serveMetrics } from "./metrics.js";
import { type AgentPool, createMeteredToolRunner, openPools } from "./pools.js";
import { keepRegistered, registerWhenReachable } from "./registration.js";

export { AGENT_VERSION } from "./inventory.js";

export interface AgentHandle {
  hostId: string;
  metricsPort: number;
  /** Publishes a full inventory now (sharing a scan under way or the next one). */
  publishInventory(): Promise<void>;
  /** Commands held now (running or waiting). */
  heldCommands(): number;
  /** Hands back what it has not started and waits `shutdownGraceMs` at most for what runs, then closes. */
  stop(): Promise<void>;
  /**
   * Settles with why the agent can no longer work when its NATS connection closes for good while it runs (the
   * server refused its credentials: a revoked host, or an expired NATS JWT); main.ts exits 1 then. Never
   * settles after stop().
   */
  lost: Promise<string>;
}

/** What tests change in an agent: its drivers (fault injection, counting) and its full scan. */
export interface AgentHooks {
  wrapPool?: (pool: AgentPool) => AgentPool;
  /** Counts or replaces the full scan (default: every pool's check, capacity and list). */
  wrapScan?: (scan: () => Promise<PoolScan>) => () => Promise<PoolScan>;
  /** Milliseconds between progress acks of a held command (default 10 s). */
  progressIntervalMs?: number;
  /** The agent's logger (default: pino on stderr at `logLevel`); tests capture what it logs. */
  log?: Logger;
}

/**
 * Connects to NATS. In secure mode with the host's NATS credentials (asked at every reconnect, so a renewed JWT
 * is used from the next one) and reply subjects under the host's own inbox prefix, the only one its credentials
 * may subscribe to; TLS trusting the cluster CA when natsTls is on.
 */
async function connectAgentBus(config: AgentConfig, identity: () => HostIdentity | undefined): Promise<Bus> {
  const held = identity();
  let tlsCa: string | undefined;
  if (natsTlsEnabled(config)) {
    if (held) tlsCa = held.caPem;
    else if (config.caFile) tlsCa = await readFile(config.caFile, "utf8");
    else throw new Error("natsTls is on: set caFile to the CA that signed the NATS server's certificate");
  }
  try {
    return await connectBus({
      servers: config.natsUrl,
      name: `stowage-agent-${config.hostName}`,
      user: config.natsUser,
      pass: config.natsPass,
      ...(held?.natsJwt
        ? {
            credentials: {
              jwt: () => (identity() ?? held).natsJwt,
              seed: () => (identity() ?? held).natsSeed,
            },
          }
        : {}),
      ...(tlsCa ? { tlsCa } : {}),
      ...(held ? { inboxPrefix: agentInboxPrefix(config.hostName) } : {}),
    });
  } catch (err) {
    throw new Error(`cannot connect to NATS at ${config.natsUrl}: ${(err as Error).message}`);
  }
}

/** The AgentService client: plain h2c, or TLS trusting `tls.ca` (and mutual TLS with the host's certificate). */
function agentClient(config: AgentConfig, tls?: TlsMaterial) {
  return createClient(
    AgentService,
    createGrpcTransport({ baseUrl: config.controllerUrl, ...(tls ? { nodeOptions: tls } : {}) }),
  );
}

/** What the agent says, once per retry, when the controller refuses its certificate. */
function refusedMessage(config: AgentConfig): string {
  return `the controller refused this host's certificate (revoked, or unknown to it): the host must join again: create a token with \`stowctl token create --host ${config.hostName}\`, set ${JOIN_TOKEN_ENV} (or joinTokenFile) and restart the agent`;
}

interface RunningAgent {
  log: Logger;
  config: AgentConfig;
  stopTimers: (() => void)[];
  commands: CommandConsumer;
  inventory: Inventory;
  bus: Bus;
  metricsServer: { close(): Promise<void> };
}

/**
 * Stops in the order that loses nothing, within about `shutdownGraceMs` plus a second or two: timers and
 * subscriptions first, then the consumer (it stops pulling, hands back what it has not started and waits for
 * what runs), the last delta, and the connections (the bus drain is bounded too).
 */
async function stopAgent(a: RunningAgent): Promise<void> {
  const t0 = Date.now();
  for (const stop of a.stopTimers) stop();
  await a.commands.stop(a.config.shutdownGraceMs);
  await a.inventory.stop(1000);
  await a.bus.close();
  await a.metricsServer.close();
  a.log.info({ ms: Date.now() - t0 }, "agent stopped");
}

/** Publishes a full inventory after every NATS reconnect (core NATS may have dropped deltas meanwhile). */
function fullInventoryOnReconnect(bus: Bus, inventory: Inventory): () => void {
  let stopped = false;
  void (async () => {
    for await (const s of bus.nc.status()) {
      if (stopped) return;
      if (s.type === "reconnect") void inventory.refresh();
    }
  })().catch(() => {});
  return () => {
    stopped = true;
  };
}

/**
 * Starts the agent: opens its pools, serves its metrics, registers with the controller (waiting for it) with
 * its pools' capacity only, heartbeats at once, runs the commands JetStream delivers for this host, and then
 * publishes its first full inventory (docs/architecture.md, join).
 */
/** How long the agent is idle before it gives memory back (idle-gc.ts). */
const IDLE_COLLECT_MS = 10_000;

export async function startAgent(config: AgentConfig, hooks: AgentHooks = {}): Promise<AgentHandle> {
  const log = (hooks.log ?? createLogger(`stowage-agent`, config.logLevel)).child({ host: config.hostName });
  const secure = secureMode(config);
  // The join token is read once, before any tool runs, and kept out of the environment the tools inherit.
  let joinToken = secure ? await readJoinToken(config) : undefined;
  delete process.env[JOIN_TOKEN_ENV];
  let inventory: Inventory | undefined;
  const metrics = createAgentMetrics(config.hostName, () => inventory?.samples() ?? []);
  const runner = createMeteredToolRunner(config, metrics, log);
  const opened = await openPools(config, runner);
  const pools = new Map([...opened].map(([name, p]) => [name, hooks.wrapPool ? hooks.wrapPool(p) : p]));
  const host = await discoverHost({ sysfsRoot: config.sysfsRoot, procRoot: config.procRoot });
  // Exports (exports.ts): iSCSI targets on tgtd (with iscsiPortal) and cephx grants on the host's rbd pools, kept
  // as desired state in stateDir and put back whenever tgtd or Ceph loses them.
  const rbdExportPools = new Map<string, RbdExportPool>();
  for (const p of config.pools) {
    if (p.kind !== "rbd") continue;
    rbdExportPools.set(p.name, {
      admin: {
        runner: runner(),
        conn: {
          ...(p.cephConf ? { cephConf: p.cephConf } : {}),
          ...(p.cephUser ? { cephUser: p.cephUser } : {}),
          ...(p.keyring ? { keyring: p.keyring } : {}),
        },
      },
      cephPool: p.cephPool,
      ...(p.namespace ? { namespace: p.namespace } : {}),
    });
  }
  const exports =
    config.iscsiPortal || rbdExportPools.size > 0
      ? await openExportManager({
          stateDir: config.stateDir,
          ...(config.iscsiPortal
            ? {
                exporter: createTgtExporter({ runner: runner(), controlPort: config.tgtControlPort }),
                portal: config.iscsiPortal,
                backing: async (poolName: string, volumeId: string) => {
                  const pool = pools.get(poolName);
                  // tgt serves a local file or device; a netfs volume is on a share other hosts reach already.
                  if (pool?.config.kind === "netfs")
                    throw new StowageError(
                      "failed_precondition",
                      `volume ${volumeId} is on netfs pool ${poolName}: every host attached to the share reaches it without an export`,
                    );
                  const v = await pool?.driver.info(volumeId);
                  if (!pool || !v)
                    throw new StowageError(
                      "not_found",
                      `volume ${volumeId} is not in pool ${poolName} on this host`,
                    );
                  return {
                    type:
                      pool.config.kind === "dir"
                        ? ("file" as const)
                        : pool.config.kind === "rbd"
                          ? ("rbd" as const)
                          : ("block" as const),
                    path: v.path,
                  };
                },
              }
            : {}),
          rbdPool: (name) => rbdExportPools.get(name),
          log,
        })
      : undefined;

  // Secure mode (an https controllerUrl): the host's identity first, joining with the token if it has none.
  let identity: HostIdentity | undefined;
  const identityClients = (tls: TlsMaterial) => agentClient(config, tls);
  if (secure) {
    const loaded = await loadOrJoin(config, identityClients, log, joinToken);
    identity = loaded.identity;
    // A token that joined is used up; one given to a host that still had its certificate is kept for a re-join.
    if (loaded.joined) joinToken = undefined;
  }

  let registered: RegisterAgentResponse | undefined;
  let bus: Bus | undefined;
  // The metrics listener serves HTTPS with the host certificate once it is reachable from elsewhere.
  const metricsTls = identity !== undefined && !listensOnLoopback(config.metricsListen);
  const metricsServer = await serveMetrics(
    config.metricsListen,
    metrics.registry,
    async () => ({
      ok: registered !== undefined && bus !== undefined && !bus.nc.isClosed(),
      detail: { registered: registered !== undefined },
    }),
    metricsTls && identity ? { cert: identity.certPem, key: identity.keyPem } : undefined,
  );
  const info = () => hostInfo(config, host, metricsServer.address);

  let client = agentClient(config, identity ? tlsOf(identity) : undefined);
  let stopRenewal = () => {};
  /** A new identity (renewed, or joined again): new connections use it; NATS from its next reconnect. */
  const useIdentity = (next: HostIdentity) => {
    identity = next;
    client = agentClient(config, tlsOf(next));
    if (metricsServer.secure) metricsServer.useTls({ cert: next.certPem, key: next.keyPem });
  };
  const renewFrom = (from: HostIdentity) => {
    stopRenewal();
    stopRenewal = keepRenewed({
      config,
      clients: identityClients,
      log,
      identity: from,
      onRenewed: useIdentity,
    });
  };
  if (identity) renewFrom(identity);

  // Registration carries each pool's health and capacity, not its volumes: it stays cheap at any pool size.
  const registerOnce = async () => {
    registered = await client.registerAgent(
      { host: info(), pools: await poolReports(pools.values()), processStart: registered === undefined },
      { timeoutMs: 10_000 },
    );
    return registered;
  };
  const register = async () => {
    try {
      return await registerOnce();
    } catch (err) {
      // Refused with a join token at hand (given to a host whose certificate was revoked): join again, once.
      if (!secure || !isRefusal(err) || !joinToken) throw err;
      const token = joinToken;
      joinToken = undefined;
      log.warn("the controller refused this host's certificate: joining again with the join token");
      const joined = await joinWhenReachable(config, identityClients, token, log);
      useIdentity(joined);
      renewFrom(joined);
      return registerOnce();
    }
  };
  const refusal = (err: unknown) => (secure && isRefusal(err) ? refusedMessage(config) : undefined);
  const reg = await registerWhenReachable(register, config.controllerUrl, log, refusal);
  log.info({ consumer: reg.commandConsumer }, "registered with the controller");

  try {
    bus = await connectAgentBus(config, () => identity);
  } catch (err) {
    stopRenewal();
    await metricsServer.close();
    throw err;
  }

  let commands: CommandConsumer | undefined;
  const idle = startIdleCollector({ idleMs: IDLE_COLLECT_MS, busy: () => commands?.running() ?? 0 });
  const scan = async (): Promise<PoolScan> => {
    try {
      return await scanPools(pools.values());
    } finally {
      idle.note();
    }
  };
  const inv = createInventory({
    bus,
    registration: reg,
    ...(exports ? { exports: () => exports.artifacts() } : {}),
    bootId: randomUUID(),
    host: info,
    pools,
    scan: hooks.wrapScan ? hooks.wrapScan(scan) : scan,
    runningOperations: () => commands?.running() ?? 0,
    log,
  });
  inventory = inv;
  inv.publishHeartbeat();
  const stopReporting = startReporting(inv, reg.heartbeatIntervalMs || 3000, config.inventoryIntervalMs);
  const stopServing = inv.serveRequests();
  commands = await startCommandConsumer({
    bus,
    registration: reg,
    ...(exports ? { exports } : {}),
    pools,
    metrics,
    log,
    poolConcurrency: config.poolConcurrency,
    maxConcurrency: config.maxConcurrency,
    ...(hooks.progressIntervalMs ? { progressIntervalMs: hooks.progressIntervalMs } : {}),
    afterOperation: (cmd, result) => {
      idle.note();
      inv.noteOperation(cmd, result);
    },
  });
  void inv.refresh();

  const running: RunningAgent = {
    log,
    config,
    stopTimers: [
      stopReporting,
      stopServing,
      fullInventoryOnReconnect(bus, inv),
      keepRegistered(register, log, refusal),
      () => stopRenewal(),
      () => idle.stop(),
      () => void exports?.stop(),
    ],
    commands,
    inventory: inv,
    bus,
    metricsServer,
  };
  let stopping: Promise<void> | undefined;
  const lost = new Promise<string>((resolve) => {
    void bus.nc.closed().then((err) => {
      if (stopping) return;
      const why = `the NATS connection closed for good${err ? `: ${err.message}` : ""}; the agent cannot receive commands (${secure ? "if this host was revoked, it must join again with a new token" : "check the NATS server and credentials"})`;
      log.error({ nats: config.natsUrl }, why);
      resolve(why);
    });
  });
  return {
    hostId: reg.hostId,
    lost,
    metricsPort: metricsServer.port,
    publishInventory: () => inv.publishFull(),
    heldCommands: () => commands.held(),
    stop: () => {
      stopping ??= stopAgent(running);
      return stopping;
    },
  };
}
