import { loadControllerConfig } from "./config.js";
import { startController } from "./controller.js";

const HELP = `stowage-controller: the Stowage control plane.

Settings come from the environment:
  STOWAGE_GRPC_LISTEN      gRPC API address (default 127.0.0.1:7480)
  STOWAGE_METRICS_LISTEN   /metrics, /healthz, /readyz (default 127.0.0.1:7481)
  STOWAGE_DATABASE_URL     PostgreSQL URL; empty = embedded PGlite in STOWAGE_DATA_DIR
  STOWAGE_DATA_DIR         data directory (default /var/lib/stowage/controller)
  STOWAGE_NATS_URL         NATS with JetStream (default nats://127.0.0.1:4222)
  STOWAGE_API_TOKENS       name:role:token,... (roles viewer, operator, admin); empty = no auth, loopback only
  STOWAGE_LOG_LEVEL        debug, info, warn, error (default info)
`;

if (process.argv.includes("--help") || process.argv.includes("-h")) {
  process.stdout.write(HELP);
  process.exit(0);
}

try {
  const controller = await startController(loadControllerConfig());
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`stowage-controller: ${signal}, stopping\n`);
    const force = setTimeout(() => process.exit(1), 10_000);
    force.unref();
    await controller.stop();
    process.exit(0);
  };
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
} catch (err) {
  process.stderr.write(`stowage-controller: ${(err as Error).message}\n`);
  process.exit(1);
}
