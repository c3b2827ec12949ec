import { DEFAULT_WEIGHTS, SCORERS } from "@stowage/scheduler";
import { z } from "zod";

const SCORER_NAMES: readonly string[] = SCORERS;

function defaultWeights(): string {
  return Object.entries(DEFAULT_WEIGHTS)
    .map(([name, weight]) => `${name}=${weight}`)
    .join(",");
}

const listen = z
  .string()
  .regex(/^[^:]+:\d+$|^\[[0-9a-f:]+\]:\d+$/i, "use host:port, for example 127.0.0.1:7480");

/** A duration in milliseconds, at least `min`. */
const milliseconds = (min: number, fallback: number) => z.coerce.number().int().min(min).default(fallback);

/** One setting's environment variable and what it is for; the default lives in the field's schema. */
interface SettingMeta {
  env: string;
  description: string;
}

function setting<T extends z.ZodType>(schema: T, env: string, description: string): T {
  return schema.meta({ env, description } satisfies SettingMeta);
}

/**
 * Every controller setting, declared once: its environment variable, its default (the schema's) and its
 * description. The parser and `--help` are both derived from this object (docs/operating.md#controller-settings).
 */
export const ControllerConfigSchema = z.object({
  grpcListen: setting(
    listen.default("127.0.0.1:7480"),
    "STOWAGE_GRPC_LISTEN",
    "gRPC (h2c) address of the public API and the agent protocol",
  ),
  metricsListen: setting(
    listen.default("127.0.0.1:7481"),
    "STOWAGE_METRICS_LISTEN",
    "address of /metrics, /healthz and /readyz",
  ),
  databaseUrl: setting(
    z.string().default(""),
    "STOWAGE_DATABASE_URL",
    "PostgreSQL URL; empty: embedded PGlite in STOWAGE_DATA_DIR",
  ),
  dataDir: setting(
    z.string().default("/var/lib/stowage/controller"),
    "STOWAGE_DATA_DIR",
    "where the embedded database (and nothing else) lives",
  ),
  natsUrl: setting(
    z.string().default("nats://127.0.0.1:4222"),
    "STOWAGE_NATS_URL",
    "NATS server with JetStream",
  ),
  natsUser: setting(z.string().optional(), "STOWAGE_NATS_USER", "NATS user name (none: no NATS auth)"),
  natsPass: setting(z.string().optional(), "STOWAGE_NATS_PASS", "NATS password"),
  heartbeatIntervalMs: setting(
    milliseconds(100, 3000),
    "STOWAGE_HEARTBEAT_INTERVAL_MS",
    "how often agents are told to send heartbeats (ms, at least 100)",
  ),
  hostDownAfterMs: setting(
    milliseconds(500, 15000),
    "STOWAGE_HOST_DOWN_AFTER_MS",
    "a host without a heartbeat for this long is marked down (ms, at least 500)",
  ),
  reservationTtlMs: setting(
    milliseconds(1000, 15 * 60_000),
    "STOWAGE_RESERVATION_TTL_MS",
    "a reservation not confirmed within this time is released and its volume marked error (ms)",
  ),
  resendAfterMs: setting(
    milliseconds(1000, 5 * 60_000),
    "STOWAGE_RESEND_AFTER_MS",
    "sent operations without a result are published again after this long, doubled after each re-send (ms)",
  ),
  resendMaxAttempts: setting(
    z.coerce.number().int().min(0).default(5),
    "STOWAGE_RESEND_MAX_ATTEMPTS",
    "an operation is published at most this many times in all (0: no bound); then it waits for its result or its deadline",
  ),
  reconcileIntervalMs: setting(
    milliseconds(50, 2000),
    "STOWAGE_RECONCILE_INTERVAL_MS",
    "period of the reconciler (host liveness, expired reservations, re-sends; ms)",
  ),
  relayGraceMs: setting(
    milliseconds(0, 2000),
    "STOWAGE_RELAY_GRACE_MS",
    "the relay leaves a pending operation this long to the controller that wrote it, which publishes it at once (ms)",
  ),
  relayIntervalMs: setting(
    milliseconds(10, 500),
    "STOWAGE_RELAY_INTERVAL_MS",
    "period of the outbox relay that publishes operations to JetStream (ms)",
  ),
  thinOvercommitRatio: setting(
    z.coerce.number().positive().default(20),
    "STOWAGE_THIN_OVERCOMMIT_RATIO",
    "overcommit ratio of thin pools whose agent config sets none",
  ),
  schedulerWeights: setting(
    z
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
    "STOWAGE_SCHEDULER_WEIGHTS",
    `scorer=weight,... (weights >= 0); a scorer not named keeps its default weight: ${defaultWeights()}`,
  ),
  apiTokens: setting(
    z.string().default(""),
    "STOWAGE_API_TOKENS",
    "name:role:token,... (roles viewer, operator, admin); empty: no authentication (loopback only)",
  ),
  tls: setting(
    z.enum(["auto", "on", "off"]).default("auto"),
    "STOWAGE_TLS",
    "TLS on the gRPC and metrics listeners: auto (on when either listens off loopback), on, off; with TLS every caller authenticates (agents by certificate, users by token)",
  ),
  pkiDir: setting(
    z.string().default(""),
    "STOWAGE_PKI_DIR",
    "where the controller's CA, its server certificate and its NATS signing keys live; empty: STOWAGE_DATA_DIR/pki",
  ),
  tlsCaCert: setting(
    z.string().default(""),
    "STOWAGE_TLS_CA_CERT",
    "PEM file of a CA the operator gives (with STOWAGE_TLS_CA_KEY); empty: the PKI directory's own CA, made on first start",
  ),
  tlsCaKey: setting(z.string().default(""), "STOWAGE_TLS_CA_KEY", "PEM file of that CA's private key"),
  tlsCert: setting(
    z.string().default(""),
    "STOWAGE_TLS_CERT",
    "PEM file of the listeners' certificate (with STOWAGE_TLS_KEY); empty: one issued by the CA for the listen addresses and STOWAGE_TLS_SANS",
  ),
  tlsKey: setting(z.string().default(""), "STOWAGE_TLS_KEY", "PEM file of that certificate's private key"),
  tlsSans: setting(
    z.string().default(""),
    "STOWAGE_TLS_SANS",
    "more names (DNS names or IP addresses, comma-separated) for the issued certificate, beside the listen addresses",
  ),
  agentCertTtlMs: setting(
    milliseconds(60_000, 30 * 24 * 3600_000),
    "STOWAGE_AGENT_CERT_TTL_MS",
    "lifetime of the certificates (and NATS credentials) issued to agents; they renew at two thirds of it (ms)",
  ),
  natsAuth: setting(
    z.enum(["none", "jwt"]).default("none"),
    "STOWAGE_NATS_AUTH",
    "none (STOWAGE_NATS_USER/PASS or nothing) or jwt: the controller signs each agent's NATS credentials (stowage-controller nats-config writes the server's part)",
  ),
  natsTls: setting(
    z.enum(["auto", "on", "off"]).default("auto"),
    "STOWAGE_NATS_TLS",
    "TLS to NATS: auto (on when the NATS URL is not on loopback), on, off",
  ),
  natsCaFile: setting(
    z.string().default(""),
    "STOWAGE_NATS_CA_FILE",
    "PEM file of the CA that signed the NATS server's certificate; empty: the controller's CA",
  ),
  logLevel: setting(z.string().default("info"), "STOWAGE_LOG_LEVEL", "debug, info, warn or error"),
});

export type ControllerConfig = z.infer<typeof ControllerConfigSchema>;

/** Not a setting of the running controller but a guard on the others: see loadControllerConfig. */
export const ALLOW_PLAINTEXT_ENV = "STOWAGE_ALLOW_PLAINTEXT_NON_LOOPBACK";

/** One row of `--help`: a setting's variable, its default as it would be written there, and its meaning. */
export interface ControllerSettingHelp {
  key: keyof ControllerConfig;
  env: string;
  default: string | undefined;
  description: string;
}

/** The settings as declared above, in declaration order (the defaults read back through JSON Schema). */
export function controllerSettings(): ControllerSettingHelp[] {
  const json = z.toJSONSchema(ControllerConfigSchema, { io: "input", unrepresentable: "any" });
  const props = (json.properties ?? {}) as Record<string, { default?: unknown }>;
  return (Object.keys(ControllerConfigSchema.shape) as (keyof ControllerConfig)[]).map((key) => {
    const meta = ControllerConfigSchema.shape[key].meta() as unknown as SettingMeta;
    const fallback = props[key]?.default;
    return {
      key,
      env: meta.env,
      default: fallback === undefined ? undefined : String(fallback),
      description: meta.description,
    };
  });
}

const ENV = Object.fromEntries(controllerSettings().map((s) => [s.key, s.env])) as Record<
  keyof ControllerConfig,
  string
>;

/** The text of `stowage-controller --help`: every setting with its default. */
export function controllerHelp(): string {
  const rows: [env: string, description: string, fallback: string][] = controllerSettings().map((r) => [
    r.env,
    r.description,
    r.default === undefined ? "unset" : r.default === "" ? '""' : r.default,
  ]);
  rows.push([
    ALLOW_PLAINTEXT_ENV,
    "1: allow plaintext listeners off loopback with STOWAGE_TLS=off",
    "unset: refused",
  ]);
  const width = Math.max(...rows.map(([env]) => env.length)) + 2;
  const lines = rows.map(
    ([env, description, fallback]) =>
      `  ${env.padEnd(width)}${description}\n  ${" ".repeat(width)}default: ${fallback}`,
  );
  return `stowage-controller: the Stowage control plane.

Usage: stowage-controller
Every setting comes from the environment; an empty value means the default.

${lines.join("\n")}

See docs/operating.md (controller settings) and deploy/examples/controller.env.
`;
}

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
  // Plaintext listeners are allowed on loopback only, unless the operator says otherwise (docs/security.md).
  if (!tlsEnabled(c)) {
    for (const [name, addr] of [
      ["STOWAGE_GRPC_LISTEN", c.grpcListen],
      ["STOWAGE_METRICS_LISTEN", c.metricsListen],
    ] as const) {
      if (!isLoopback(splitHostPort(addr).host) && env[ALLOW_PLAINTEXT_ENV] !== "1") {
        throw new Error(
          `${name}=${addr} is not a loopback address and STOWAGE_TLS=off: refusing to serve plaintext off loopback (set ${ALLOW_PLAINTEXT_ENV}=1 to allow it)`,
        );
      }
    }
  }
  return c;
}

/** The PKI directory: STOWAGE_PKI_DIR, or STOWAGE_DATA_DIR/pki. */
export function pkiDirOf(c: Pick<ControllerConfig, "pkiDir" | "dataDir">): string {
  return c.pkiDir || `${c.dataDir.replace(/\/+$/, "")}/pki`;
}

/** Whether the listeners serve TLS: STOWAGE_TLS, with auto meaning "when either listens off loopback". */
export function tlsEnabled(c: Pick<ControllerConfig, "tls" | "grpcListen" | "metricsListen">): boolean {
  if (c.tls !== "auto") return c.tls === "on";
  return [c.grpcListen, c.metricsListen].some((a) => !isLoopback(splitHostPort(a).host));
}

export function splitHostPort(addr: string): { host: string; port: number } {
  const i = addr.lastIndexOf(":");
  return { host: addr.slice(0, i).replace(/^\[|\]$/g, ""), port: Number(addr.slice(i + 1)) };
}

export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host.startsWith("127.");
}
