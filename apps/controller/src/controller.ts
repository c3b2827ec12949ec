import { EventEmitter } from "node:events";
import http2 from "node:http2";
import type { TLSSocket } from "node:tls";
import { ConnectError, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { type Bus, connectBus, ensureStreams, pendingCommands } from "@stowage/bus";
import { CAPABILITIES } from "@stowage/core";
import { type Database, migrate, openDatabase } from "@stowage/store";
import { createLogger, startOpsServer } from "@stowage/telemetry";
import { subscribeAgentTraffic } from "./agents.js";
import { createAuditInterceptor } from "./audit.js";
import { createAuthInterceptor, parseTokens, peerContext, storedCertificates, storedTokens } from "./auth.js";
import { type ControllerConfig, splitHostPort, tlsEnabled } from "./config.js";
import type { ControllerContext } from "./context.js";
import { createErrorInterceptor } from "./errors.js";
import { withMinimalGrpcMessage } from "./grpc-message.js";
import { attachPki } from "./join.js";
import { type LeaseTiming, postgresLeaseLock, singleProcessLock, startLease } from "./lease.js";
import { LiveView } from "./live-view.js";
import { type Loop, startLoop } from "./loop.js";
import { createControllerMetrics } from "./metrics.js";
import {
  type ControllerNatsAccess,
  controllerNatsAccess,
  createNatsAuthority,
  keepRevocationsPushed,
} from "./nats-auth.js";
import { loadPki } from "./pki.js";
import { reconcileOnce } from "./reconciler.js";
import { Dispatcher, startRelay } from "./relay.js";
import { runResultConsumer } from "./results.js";
import { readiness } from "./routes/health.js";
import { createRoutes } from "./routes/index.js";
import { createNulStringInterceptor } from "./validate.js";

export interface ControllerHandle {
  grpcPort: number;
  metricsPort: number;
  context: ControllerContext;
  /** Whether this controller holds the lease and runs the relay and the reconciler now. */
  readonly leading: boolean;
  /** Rounds of the relay and the reconciler this controller has run (tests). */
  readonly singletonRounds: { relay: number; reconciler: number };
  stop(): Promise<void>;
}

export interface ControllerOptions {
  /** The lease's timing (lease.ts, DEFAULT_LEASE_TIMING); tests shorten it. */
  leaseTiming?: Partial<LeaseTiming>;
}

export async function startController(
  config: ControllerConfig,
  options: ControllerOptions = {},
): Promise<ControllerHandle> {
  const log = createLogger("stowage-controller", config.logLevel);
  // With TLS, the CA and the listeners' certificate come first (docs/security.md).
  const pki = tlsEnabled(config) ? await loadPki(config, log) : undefined;
  let db: Database | undefined;
  // The bus is connected below, before /metrics can be scraped; the lookup only runs on a scrape.
  const metrics = createControllerMetrics(() => db?.sql, {
    pendingCommands: (hostId) => pendingCommands(bus.jsm, hostId),
  });
  db = await openDatabase(config.databaseUrl ? { url: config.databaseUrl } : { dataDir: config.dataDir });
  const { applied } = await migrate(db.sql);
  log.info({ database: db.kind, applied }, "database ready");

  let bus: Bus;
  // With STOWAGE_NATS_AUTH=jwt the controller connects as a user it signs itself (nats-auth.ts).
  let nats: ControllerNatsAccess;
  try {
    nats = await controllerNatsAccess(config);
    bus = await connectBus({
      servers: config.natsUrl,
      name: "stowage-controller",
      ...(nats.credentials
        ? { credentials: nats.credentials }
        : { user: config.natsUser, pass: config.natsPass }),
      ...(nats.tlsCa ? { tlsCa: nats.tlsCa } : {}),
    });
  } catch (err) {
    await db.close();
    throw new Error(
      `cannot connect to NATS at ${config.natsUrl}: ${(err as Error).message}. Is nats-server running with JetStream (-js)${config.natsAuth === "jwt" ? ", on the config `stowage-controller nats-config` wrote" : ""}?`,
    );
  }
  await ensureStreams(bus.jsm);

  const changes = new EventEmitter();
  changes.setMaxListeners(0);
  const ctx: ControllerContext = {
    config,
    db,
    sql: db.sql,
    bus,
    log,
    metrics,
    capabilities: CAPABILITIES,
    // A follower runs no relay: its kick is a no-op (the leader's relay finds the row on its next round).
    kickRelay: () => relay?.kick(),
    // Every controller publishes the operations it has just written itself; the leader's relay is the fallback.
    dispatch: (ops) => dispatcher.send(ops),
    notifyChange: () => changes.emit("change"),
    waitForChange: (ms, signal) =>
      new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          changes.off("change", done);
          signal?.removeEventListener("abort", done);
          resolve();
        };
        const t = setTimeout(done, ms);
        changes.once("change", done);
        signal?.addEventListener("abort", done, { once: true });
      }),
  };
  if (pki) attachPki(ctx, pki);
  // The scheduler's live view follows the change feed from now on (live-view.ts); loaded before serving.
  const placement = new LiveView(db, { weights: config.schedulerWeights, log });
  ctx.placement = placement;
  await placement.start();
  if (nats.keys) {
    ctx.natsAuthority = createNatsAuthority({
      keys: nats.keys,
      sql: db.sql,
      nats: { servers: config.natsUrl, ...(nats.tlsCa ? { tlsCa: nats.tlsCa } : {}) },
      log,
    });
  }
  // A NATS server that missed a revocation (it was down, restarted or restored) learns it now, and again after
  // each reconnect.
  const revocations = ctx.natsAuthority ? keepRevocationsPushed(ctx.natsAuthority, bus, log) : undefined;
  await revocations?.first;
  const dispatcher = new Dispatcher(ctx);
  // The relay and the reconciler run in one controller at a time: the holder of the lease (lease.ts).
  let relay: Loop | undefined;
  let reconciler: Loop | undefined;
  let relayRounds = 0;
  let reconcilerRounds = 0;
  const lease = startLease({
    lock: db.kind === "postgres" ? postgresLeaseLock(config.databaseUrl) : singleProcessLock(),
    log,
    gauge: metrics.leader,
    ...(options.leaseTiming ? { timing: options.leaseTiming } : {}),
    lead: () => {
      relay = startRelay(ctx, config.relayIntervalMs, dispatcher);
      reconciler = startLoop("reconciler", config.reconcileIntervalMs, () => reconcileOnce(ctx), log);
    },
    follow: async () => {
      const loops = [relay, reconciler];
      relayRounds += relay?.rounds ?? 0;
      reconcilerRounds += reconciler?.rounds ?? 0;
      relay = reconciler = undefined;
      await Promise.all(loops.map((l) => l?.stop()));
    },
  });
  const abort = new AbortController();
  const resultsDone = runResultConsumer(ctx, bus, abort.signal).catch((err) =>
    log.error({ err }, "result consumer stopped"),
  );
  const unsubscribe = subscribeAgentTraffic(ctx, bus);

  const observe: Interceptor = (next) => async (req) => {
    const t0 = performance.now();
    const method = req.method.name;
    try {
      const res = await next(req);
      metrics.apiRequests.inc({ method, code: "ok" });
      return res;
    } catch (err) {
      metrics.apiRequests.inc({
        method,
        code: err instanceof ConnectError ? codeName(err.code) : "internal",
      });
      throw err;
    } finally {
      metrics.apiDuration.observe({ method }, (performance.now() - t0) / 1000);
    }
  };
  const handler = connectNodeAdapter({
    routes: createRoutes(ctx),
    interceptors: [
      observe,
      // Outside the auth interceptor, to audit its refusals too (audit.ts).
      createAuditInterceptor(ctx.sql, ctx.log),
      createErrorInterceptor(ctx.log),
      createAuthInterceptor(parseTokens(config.apiTokens), storedTokens(db), Date.now, {
        tls: pki !== undefined,
        certificates: storedCertificates(db),
      }),
      createNulStringInterceptor(),
    ],
    grpc: true,
    grpcWeb: false,
    connect: true,
    contextValues: peerContext,
  });
  const onRequest = withMinimalGrpcMessage(handler);
  // With TLS, plaintext h2c is not served at all; client certificates are asked for but optional (users send
  // bearer tokens, a joining agent has none yet), and a connection with one the CA did not verify is closed.
  const server: http2.Http2Server | http2.Http2SecureServer = pki
    ? http2.createSecureServer(
        {
          cert: pki.serverCert.certPem,
          key: pki.serverCert.keyPem,
          ca: [pki.caPem],
          requestCert: true,
          rejectUnauthorized: false,
          minVersion: "TLSv1.2",
        },
        onRequest,
      )
    : http2.createServer(onRequest);
  if (pki) {
    server.prependListener("secureConnection", (socket: TLSSocket) => {
      const cert = socket.getPeerCertificate();
      if (!socket.authorized && cert && Object.keys(cert).length > 0) {
        log.debug(
          { peer: socket.remoteAddress, reason: String(socket.authorizationError) },
          "refused a client certificate the CA did not verify",
        );
        socket.destroy();
      }
    });
  }
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  const { host, port } = splitHostPort(config.grpcListen);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const grpcPort = (server.address() as { port: number }).port;
  const mAddr = splitHostPort(config.metricsListen);
  const ops = await startOpsServer({
    host: mAddr.host,
    port: mAddr.port,
    registry: metrics.registry,
    ready: () => readiness(ctx),
    ...(pki ? { tls: { cert: pki.serverCert.certPem, key: pki.serverCert.keyPem } } : {}),
  });
  // The issued listeners' certificate is checked again twice a day while running (pki.ts re-issues it a third of
  // its life before it expires); a new one is swapped in for new connections on both listeners.
  const stopCertRenewal =
    pki && !config.tlsCert
      ? keepServerCertFresh(
          pki.serverCert.certPem,
          async () => (await loadPki(config, log)).serverCert,
          (c) => {
            const context = { cert: c.certPem, key: c.keyPem, ca: [pki.caPem] };
            (server as http2.Http2SecureServer).setSecureContext(context);
            (ops.server as unknown as { setSecureContext?: (o: typeof context) => void }).setSecureContext?.(
              context,
            );
            log.info("the listeners' certificate was renewed");
          },
          log,
        )
      : () => {};
  log.info(
    {
      grpc: `${host}:${grpcPort}`,
      metrics: `${mAddr.host}:${ops.port}`,
      database: db.kind,
      tls: Boolean(pki),
    },
    "controller listening",
  );
  if (!pki && parseTokens(config.apiTokens).size === 0 && !(await storedTokens(db).any()))
    log.warn("authentication is off: every caller is admin (loopback only)");

  return {
    grpcPort,
    metricsPort: ops.port,
    context: ctx,
    get leading() {
      return lease.leading;
    },
    get singletonRounds() {
      return {
        relay: relayRounds + (relay?.rounds ?? 0),
        reconciler: reconcilerRounds + (reconciler?.rounds ?? 0),
      };
    },
    async stop() {
      abort.abort();
      revocations?.stop();
      stopCertRenewal();
      unsubscribe();
      for (const s of sessions) s.close();
      await new Promise<void>((r) => server.close(() => r()));
      await ops.close();
      await dispatcher.stop();
      await lease.stop();
      await resultsDone;
      await placement.stop();
      await bus.close();
      await db!.close();
      log.info("controller stopped");
    },
  };
}

function codeName(code: number): string {
  return (
    [
      "ok",
      "canceled",
      "unknown",
      "invalid_argument",
      "deadline_exceeded",
      "not_found",
      "already_exists",
      "permission_denied",
      "resource_exhausted",
      "failed_precondition",
      "aborted",
      "out_of_range",
      "unimplemented",
      "internal",
      "unavailable",
      "data_loss",
      "unauthenticated",
    ][code] ?? "unknown"
  );
}

/** How often a running controller checks whether its issued listeners' certificate is due (docs/security.md). */
export const SERVER_CERT_CHECK_MS = 12 * 3600_000;

/**
 * Every `intervalMs`, loads the listeners' certificate (which re-issues it when due) and hands a changed one to
 * `swap`. A failure is logged and tried again at the next round. Returns what stops it.
 */
export function keepServerCertFresh(
  current: string,
  load: () => Promise<{ certPem: string; keyPem: string }>,
  swap: (c: { certPem: string; keyPem: string }) => void,
  log: { warn(o: object, m: string): void },
  intervalMs = SERVER_CERT_CHECK_MS,
): () => void {
  let pem = current;
  let running = false;
  const timer = setInterval(() => {
    if (running) return;
    running = true;
    void load()
      .then((c) => {
        if (c.certPem !== pem) {
          pem = c.certPem;
          swap(c);
        }
      })
      .catch((err) => log.warn({ err }, "cannot check the listeners' certificate; trying again later"))
      .finally(() => {
        running = false;
      });
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
