import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePort, type Service, spawnService } from "@stowage/testkit";

export interface PromSample {
  metric: Record<string, string>;
  value?: [number, string];
  values?: [number, string][];
}

export interface PromRule {
  name: string;
  query: string;
  type: "alerting" | "recording";
  health: "ok" | "err" | "unknown";
  lastError?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  duration?: number;
}

export interface Prometheus {
  url: string;
  service: Service;
  configFile: string;
  /** An instant query; rejects when Prometheus answers with an error (bad PromQL, execution error). */
  query(expr: string): Promise<PromSample[]>;
  rules(): Promise<PromRule[]>;
  targets(): Promise<{ job: string; instance: string; health: string; lastError: string }[]>;
  stop(): Promise<void>;
}

/**
 * The configuration of a test Prometheus: the given jobs scraped every `scrapeIntervalS` on loopback, the given
 * rule files evaluated as often. Written as JSON, which is YAML too.
 */
export function prometheusConfig(opts: {
  jobs: { name: string; targets: string[] }[];
  ruleFiles: string[];
  scrapeIntervalS: number;
}): string {
  const interval = `${opts.scrapeIntervalS}s`;
  return JSON.stringify(
    {
      global: { scrape_interval: interval, scrape_timeout: interval, evaluation_interval: interval },
      rule_files: opts.ruleFiles,
      scrape_configs: opts.jobs.map((j) => ({
        job_name: j.name,
        metrics_path: "/metrics",
        static_configs: [{ targets: j.targets }],
      })),
    },
    null,
    2,
  );
}

/** Starts Debian's `prometheus` on 127.0.0.1 with its configuration and TSDB in `dir`. */
export async function startPrometheus(opts: {
  dir: string;
  jobs: { name: string; targets: string[] }[];
  ruleFiles: string[];
  scrapeIntervalS?: number;
}): Promise<Prometheus> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const configFile = join(opts.dir, "prometheus.yml");
  writeFileSync(
    configFile,
    prometheusConfig({
      jobs: opts.jobs,
      ruleFiles: opts.ruleFiles,
      scrapeIntervalS: opts.scrapeIntervalS ?? 1,
    }),
  );
  const service = await spawnService({
    name: "prometheus",
    command: "prometheus",
    args: [
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${join(opts.dir, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--web.console.templates=/dev/null",
      "--web.console.libraries=/dev/null",
      "--storage.tsdb.retention.time=1h",
      "--log.level=warn",
    ],
    readyWhen: `${url}/-/ready`,
    readyTimeoutMs: 30_000,
    logFile: join(opts.dir, "prometheus.log"),
  });
  const api = async <T>(path: string, params?: Record<string, string>): Promise<T> => {
    const res = await fetch(`${url}${path}`, {
      method: params ? "POST" : "GET",
      headers: params ? { "content-type": "application/x-www-form-urlencoded" } : {},
      body: params ? new URLSearchParams(params) : undefined,
    });
    const body = (await res.json()) as { status: string; data: T; error?: string; errorType?: string };
    if (body.status !== "success") throw new Error(`${path}: ${body.errorType}: ${body.error}`);
    return body.data;
  };
  return {
    url,
    service,
    configFile,
    async query(expr) {
      const data = await api<{ resultType: string; result: PromSample[] | [number, string] }>(
        "/api/v1/query",
        {
          query: expr,
        },
      );
      // A scalar or string result is one value.
      if (data.resultType === "scalar" || data.resultType === "string")
        return [{ metric: {}, value: data.result as [number, string] }];
      return data.result as PromSample[];
    },
    async rules() {
      const data = await api<{ groups: { rules: PromRule[] }[] }>("/api/v1/rules");
      return data.groups.flatMap((g) => g.rules);
    },
    async targets() {
      const data = await api<{
        activeTargets: { labels: Record<string, string>; health: string; lastError: string }[];
      }>("/api/v1/targets");
      return data.activeTargets.map((t) => ({
        job: t.labels.job ?? "",
        instance: t.labels.instance ?? "",
        health: t.health,
        lastError: t.lastError,
      }));
    },
    stop: async () => {
      await service.stop();
    },
  };
}
