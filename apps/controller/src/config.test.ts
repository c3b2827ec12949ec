import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  ALLOW_PLAINTEXT_ENV,
  controllerHelp,
  controllerSettings,
  loadControllerConfig,
  pkiDirOf,
  tlsEnabled,
} from "./config.js";

/** Every controller setting and its default as an operator writes it in the environment. */
const SETTINGS: Record<string, string | undefined> = {
  STOWAGE_GRPC_LISTEN: "127.0.0.1:7480",
  STOWAGE_METRICS_LISTEN: "127.0.0.1:7481",
  STOWAGE_DATABASE_URL: "",
  STOWAGE_DATA_DIR: "/var/lib/stowage/controller",
  STOWAGE_NATS_URL: "nats://127.0.0.1:4222",
  STOWAGE_NATS_USER: undefined,
  STOWAGE_NATS_PASS: undefined,
  STOWAGE_HEARTBEAT_INTERVAL_MS: "3000",
  STOWAGE_HOST_DOWN_AFTER_MS: "15000",
  STOWAGE_RESERVATION_TTL_MS: "900000",
  STOWAGE_RESEND_AFTER_MS: "300000",
  STOWAGE_RESEND_MAX_ATTEMPTS: "5",
  STOWAGE_RECONCILE_INTERVAL_MS: "2000",
  STOWAGE_RELAY_GRACE_MS: "2000",
  STOWAGE_RELAY_INTERVAL_MS: "500",
  STOWAGE_THIN_OVERCOMMIT_RATIO: "20",
  STOWAGE_SCHEDULER_WEIGHTS: "",
  STOWAGE_API_TOKENS: "",
  STOWAGE_TLS: "auto",
  STOWAGE_PKI_DIR: "",
  STOWAGE_TLS_CA_CERT: "",
  STOWAGE_TLS_CA_KEY: "",
  STOWAGE_TLS_CERT: "",
  STOWAGE_TLS_KEY: "",
  STOWAGE_TLS_SANS: "",
  STOWAGE_AGENT_CERT_TTL_MS: "2592000000",
  STOWAGE_NATS_AUTH: "none",
  STOWAGE_NATS_TLS: "auto",
  STOWAGE_NATS_CA_FILE: "",
  STOWAGE_LOG_LEVEL: "info",
};

describe("controller settings", () => {
  it("are the thirty STOWAGE_* variables, each declared with its default", () => {
    const declared = Object.fromEntries(controllerSettings().map((s) => [s.env, s.default]));
    expect(declared).toEqual(SETTINGS);
  });

  it("each have a description", () => {
    for (const s of controllerSettings()) expect(s.description.length, s.env).toBeGreaterThan(10);
  });
});

describe("controller --help", () => {
  const help = controllerHelp();

  it("names every setting with its default", () => {
    for (const [env, fallback] of Object.entries(SETTINGS)) {
      const shown = fallback === undefined ? "unset" : fallback === "" ? '""' : fallback;
      expect(help, env).toMatch(new RegExp(`\\n  ${env} +[^\\n]+\\n +default: ${regexLiteral(shown)}\\n`));
    }
  });

  it("names the plaintext escape hatch", () => {
    expect(help).toContain(ALLOW_PLAINTEXT_ENV);
  });

  it("gives the scheduler's default weights", () => {
    expect(help).toContain("free-space=1,numa-locality=2,fewest-volumes=0.25,pool-load=0.25");
  });
});

describe("docs/operating.md", () => {
  it("lists every controller setting with its default", () => {
    const doc = readFileSync(new URL("../../../docs/operating.md", import.meta.url), "utf8");
    for (const [env, fallback] of Object.entries({ ...SETTINGS, [ALLOW_PLAINTEXT_ENV]: undefined })) {
      const shown = fallback === undefined ? "unset" : `\`${fallback === "" ? '""' : fallback}\``;
      expect(doc, env).toContain(`| \`${env}\` | ${shown} |`);
    }
  });
});

const TLS_DEFAULTS = {
  tls: "auto",
  pkiDir: "",
  tlsCaCert: "",
  tlsCaKey: "",
  tlsCert: "",
  tlsKey: "",
  tlsSans: "",
  agentCertTtlMs: 2592000000,
  natsAuth: "none",
  natsTls: "auto",
  natsCaFile: "",
};

describe("loadControllerConfig", () => {
  it("gives the defaults for an empty environment", () => {
    expect(loadControllerConfig({})).toEqual({
      grpcListen: "127.0.0.1:7480",
      metricsListen: "127.0.0.1:7481",
      databaseUrl: "",
      dataDir: "/var/lib/stowage/controller",
      natsUrl: "nats://127.0.0.1:4222",
      heartbeatIntervalMs: 3000,
      hostDownAfterMs: 15000,
      reservationTtlMs: 900000,
      resendAfterMs: 300000,
      resendMaxAttempts: 5,
      reconcileIntervalMs: 2000,
      relayGraceMs: 2000,
      relayIntervalMs: 500,
      thinOvercommitRatio: 20,
      schedulerWeights: {},
      apiTokens: "",
      ...TLS_DEFAULTS,
      logLevel: "info",
    });
  });

  it("reads every variable, coercing numbers and parsing the weights", () => {
    const c = loadControllerConfig({
      STOWAGE_GRPC_LISTEN: "127.0.0.2:9000",
      STOWAGE_METRICS_LISTEN: "[::1]:9001",
      STOWAGE_DATABASE_URL: "postgresql://stowage@db/stowage",
      STOWAGE_DATA_DIR: "/srv/stowage",
      STOWAGE_NATS_URL: "nats://10.0.0.1:4222",
      STOWAGE_NATS_USER: "ctl",
      STOWAGE_NATS_PASS: "secret",
      STOWAGE_HEARTBEAT_INTERVAL_MS: "1000",
      STOWAGE_HOST_DOWN_AFTER_MS: "5000",
      STOWAGE_RESERVATION_TTL_MS: "60000",
      STOWAGE_RESEND_AFTER_MS: "30000",
      STOWAGE_RESEND_MAX_ATTEMPTS: "3",
      STOWAGE_RECONCILE_INTERVAL_MS: "100",
      STOWAGE_RELAY_GRACE_MS: "0",
      STOWAGE_RELAY_INTERVAL_MS: "50",
      STOWAGE_THIN_OVERCOMMIT_RATIO: "4.5",
      STOWAGE_SCHEDULER_WEIGHTS: "free-space=0, pool-load=3",
      STOWAGE_API_TOKENS: "ops:admin:t0ken",
      STOWAGE_TLS: "on",
      STOWAGE_PKI_DIR: "/etc/stowage/pki",
      STOWAGE_TLS_CA_CERT: "/etc/stowage/ca.crt",
      STOWAGE_TLS_CA_KEY: "/etc/stowage/ca.key",
      STOWAGE_TLS_CERT: "/etc/stowage/tls.crt",
      STOWAGE_TLS_KEY: "/etc/stowage/tls.key",
      STOWAGE_TLS_SANS: "ctl.example.net,10.0.0.2",
      STOWAGE_AGENT_CERT_TTL_MS: "3600000",
      STOWAGE_NATS_AUTH: "jwt",
      STOWAGE_NATS_TLS: "on",
      STOWAGE_NATS_CA_FILE: "/etc/stowage/nats-ca.crt",
      STOWAGE_LOG_LEVEL: "debug",
    });
    expect(c).toEqual({
      grpcListen: "127.0.0.2:9000",
      metricsListen: "[::1]:9001",
      databaseUrl: "postgresql://stowage@db/stowage",
      dataDir: "/srv/stowage",
      natsUrl: "nats://10.0.0.1:4222",
      natsUser: "ctl",
      natsPass: "secret",
      heartbeatIntervalMs: 1000,
      hostDownAfterMs: 5000,
      reservationTtlMs: 60000,
      resendAfterMs: 30000,
      resendMaxAttempts: 3,
      reconcileIntervalMs: 100,
      relayGraceMs: 0,
      relayIntervalMs: 50,
      thinOvercommitRatio: 4.5,
      schedulerWeights: { "free-space": 0, "pool-load": 3 },
      apiTokens: "ops:admin:t0ken",
      tls: "on",
      pkiDir: "/etc/stowage/pki",
      tlsCaCert: "/etc/stowage/ca.crt",
      tlsCaKey: "/etc/stowage/ca.key",
      tlsCert: "/etc/stowage/tls.crt",
      tlsKey: "/etc/stowage/tls.key",
      tlsSans: "ctl.example.net,10.0.0.2",
      agentCertTtlMs: 3600000,
      natsAuth: "jwt",
      natsTls: "on",
      natsCaFile: "/etc/stowage/nats-ca.crt",
      logLevel: "debug",
    });
  });

  it("treats an empty variable as unset", () => {
    expect(loadControllerConfig({ STOWAGE_HEARTBEAT_INTERVAL_MS: "" }).heartbeatIntervalMs).toBe(3000);
  });

  it("lets overrides win over the environment", () => {
    const c = loadControllerConfig({ STOWAGE_HOST_DOWN_AFTER_MS: "9000" }, { hostDownAfterMs: 1000 });
    expect(c.hostDownAfterMs).toBe(1000);
  });

  it("names the variable of every invalid value", () => {
    expect(() =>
      loadControllerConfig({
        STOWAGE_GRPC_LISTEN: "7480",
        STOWAGE_HEARTBEAT_INTERVAL_MS: "10",
        STOWAGE_SCHEDULER_WEIGHTS: "speed=2",
      }),
    ).toThrow(
      /invalid controller configuration:\n {2}STOWAGE_GRPC_LISTEN: .*\n {2}STOWAGE_HEARTBEAT_INTERVAL_MS: .*\n {2}STOWAGE_SCHEDULER_WEIGHTS: "speed=2" is not scorer=weight/,
    );
  });

  it("refuses plaintext listeners off loopback unless told to allow them", () => {
    const off = { STOWAGE_TLS: "off" };
    expect(() => loadControllerConfig({ ...off, STOWAGE_GRPC_LISTEN: "0.0.0.0:7480" })).toThrow(
      /STOWAGE_GRPC_LISTEN=0.0.0.0:7480 is not a loopback address and STOWAGE_TLS=off/,
    );
    expect(() => loadControllerConfig({ ...off, STOWAGE_METRICS_LISTEN: "10.1.2.3:7481" })).toThrow(
      /STOWAGE_METRICS_LISTEN=10.1.2.3:7481 is not a loopback address/,
    );
    const c = loadControllerConfig({
      ...off,
      STOWAGE_GRPC_LISTEN: "0.0.0.0:7480",
      [ALLOW_PLAINTEXT_ENV]: "1",
    });
    expect(c.grpcListen).toBe("0.0.0.0:7480");
    expect(loadControllerConfig({ STOWAGE_GRPC_LISTEN: "localhost:7480" }).grpcListen).toBe("localhost:7480");
  });

  it("turns TLS on by itself off loopback, and off on loopback (STOWAGE_TLS=auto)", () => {
    expect(tlsEnabled(loadControllerConfig({ STOWAGE_GRPC_LISTEN: "0.0.0.0:7480" }))).toBe(true);
    expect(tlsEnabled(loadControllerConfig({ STOWAGE_METRICS_LISTEN: "10.1.2.3:7481" }))).toBe(true);
    expect(tlsEnabled(loadControllerConfig({}))).toBe(false);
    expect(tlsEnabled(loadControllerConfig({ STOWAGE_TLS: "on" }))).toBe(true);
    expect(() => loadControllerConfig({ STOWAGE_TLS: "yes" })).toThrow(/STOWAGE_TLS/);
  });

  it("keeps the PKI in the data directory unless told otherwise", () => {
    expect(pkiDirOf(loadControllerConfig({ STOWAGE_DATA_DIR: "/srv/stowage/" }))).toBe("/srv/stowage/pki");
    expect(pkiDirOf(loadControllerConfig({ STOWAGE_PKI_DIR: "/etc/stowage/pki" }))).toBe("/etc/stowage/pki");
  });
});

function regexLiteral(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
