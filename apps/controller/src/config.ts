import { SCORERS } from "@stowage/scheduler";
import { z } from "zod";

const SCORER_NAMES: readonly string[] = SCORERS;

const listen = z
  .string()
  .regex(/^[^:]+:\d+$|^\[[0-9a-f:]+\]:\d+$/i, "use host:port, for example 127.0.0.1:7480");

/** Every controller setting, from the environment (STOWAGE_*), with defaults that run a local cluster. */
export const ControllerConfigSchema = z.object({
  /** gRPC (h2c) address of the public API and the agent protocol. */
  grpcListen: listen.default("127.0.0.1:7480"),
  /** /metrics, /healthz and /readyz. */
  metricsListen: listen.default("127.0.0.1:7481"),
  /** PostgreSQL URL; when empty the controller runs PGlite embedded in dataDir. */
  databaseUrl: z.string().default(""),
  /** Where the embedded database (and nothing else) lives. */
  dataDir: z.string().default("/var/lib/stowage/controller"),
  natsUrl: z.string().default("nats://127.0.0.1:4222"),
  natsUser: z.string().optional(),
  natsPass: z.string().optional(),
  /** Agents send heartbeats this often; a host is down after missing them for hostDownAfterMs. */
  heartbeatIntervalMs: z.coerce.number().int().min(100).default(3000),
  hostDownAfterMs: z.coerce.number().int().min(500).default(15000),
  /** A reservation not confirmed within this time is released and its volume marked error. */
  reservationTtlMs: z.coerce
    .number()
    .int()
    .min(1000)
    .default(15 * 60_000),
  /** Sent operations without a result are published again after this long. */
  resendAfterMs: z.coerce
    .number()
    .int()
    .min(1000)
    .default(5 * 60_000),
  reconcileIntervalMs: z.coerce.number().int().min(50).default(2000),
  relayIntervalMs: z.coerce.number().int().min(10).default(500),
  /** Default overcommit ratio of thin pools whose agent sets none. */
  thinOvercommitRatio: z.coerce.number().positive().default(20),
  /** Scorer weights, "free-space=1,numa-locality=2,fewest-volumes=0.25,pool-load=0.25" (unnamed ones keep their default). */
  schedulerWeights: z
    .string()
    .default("")
    .transform((s, ctx) => {
      const out: Record<string, number> = {};
      for (const part of s
        .split(",")
        .map((x) => x.trim())
        .filter(Boolean)) {
        const [k, v] = part.split("=");
        const n = Number(v);
        if (!k || !SCORER_NAMES.includes(k) || !Number.isFinite(n) || n < 0) {
          ctx.addIssue({
            code: "custom",
            message: `${JSON.stringify(part)} is not scorer=weight with a scorer of ${SCORER_NAMES.join(", ")}`,
          });
          return z.NEVER;
        }
        out[k] = n;
      }
      return out;
    }),
  /** "name:role:token" entries, comma-separated; empty means no authentication (loopback only). */
  apiTokens: z.string().default(""),
  logLevel: z.string().default("info"),
});

export type ControllerConfig = z.infer<typeof ControllerConfigSchema>;

const ENV: Record<keyof ControllerConfig, string> = {
  grpcListen: "STOWAGE_GRPC_LISTEN",
  metricsListen: "STOWAGE_METRICS_LISTEN",
  databaseUrl: "STOWAGE_DATABASE_URL",
  dataDir: "STOWAGE_DATA_DIR",
  natsUrl: "STOWAGE_NATS_URL",
  natsUser: "STOWAGE_NATS_USER",
  natsPass: "STOWAGE_NATS_PASS",
  heartbeatIntervalMs: "STOWAGE_HEARTBEAT_INTERVAL_MS",
  hostDownAfterMs: "STOWAGE_HOST_DOWN_AFTER_MS",
  reservationTtlMs: "STOWAGE_RESERVATION_TTL_MS",
  resendAfterMs: "STOWAGE_RESEND_AFTER_MS",
  reconcileIntervalMs: "STOWAGE_RECONCILE_INTERVAL_MS",
  relayIntervalMs: "STOWAGE_RELAY_INTERVAL_MS",
  thinOvercommitRatio: "STOWAGE_THIN_OVERCOMMIT_RATIO",
  schedulerWeights: "STOWAGE_SCHEDULER_WEIGHTS",
  apiTokens: "STOWAGE_API_TOKENS",
  logLevel: "STOWAGE_LOG_LEVEL",
};

export function loadControllerConfig(
  env: NodeJS.ProcessEnv = process.env,
  overrides: Partial<ControllerConfig> = {},
): ControllerConfig {
  const raw: Record<string, unknown> = {};
  for (const [key, name] of Object.entries(ENV))
    if (env[name] !== undefined && env[name] !== "") raw[key] = env[name];
  const parsed = ControllerConfigSchema.safeParse({ ...raw, ...overrides });
  if (!parsed.success) {
    const lines = parsed.error.issues.map(
      (i) => `  ${ENV[i.path[0] as keyof ControllerConfig] ?? i.path.join(".")}: ${i.message}`,
    );
    throw new Error(`invalid controller configuration:\n${lines.join("\n")}`);
  }
  const c = parsed.data;
  // Until TLS lands, plaintext listeners are allowed on loopback only (DESIGN.md, Security).
  for (const [name, addr] of [
    ["STOWAGE_GRPC_LISTEN", c.grpcListen],
    ["STOWAGE_METRICS_LISTEN", c.metricsListen],
  ] as const) {
    if (!isLoopback(splitHostPort(addr).host) && env.STOWAGE_ALLOW_PLAINTEXT_NON_LOOPBACK !== "1") {
      throw new Error(
        `${name}=${addr} is not a loopback address, and TLS is not configured: refusing to serve plaintext off loopback`,
      );
    }
  }
  return c;
}

export function splitHostPort(addr: string): { host: string; port: number } {
  const i = addr.lastIndexOf(":");
  return { host: addr.slice(0, i).replace(/^\[|\]$/g, ""), port: Number(addr.slice(i + 1)) };
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host.startsWith("127.");
}
