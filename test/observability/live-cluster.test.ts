import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { makeTempDir, natsAvailable } from "@stowage/testkit";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitFor } from "../support/cluster.js";
import {
  configuredJobs,
  labelValuesQuery,
  loadDashboards,
  PROMETHEUS_DIR,
  panelQueries,
  substituteVariables,
  variableQueries,
} from "./dashboards.js";
import { exportedMetricNames, namesInExposition } from "./exported-metrics.js";
import { type ObservedCluster, startObservedCluster } from "./observed-cluster.js";
import { type Prometheus, type PromRule, startPrometheus } from "./prometheus.js";
import { metricNames, withoutThresholds } from "./promql.js";

const onPath = (tool: string) => {
  try {
    execFileSync("which", [tool], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
};
const available = natsAvailable() && onPath("prometheus") && onPath("promtool");
const ALERTS = join(PROMETHEUS_DIR, "alerts.yml");
const GiB = 2 ** 30;

async function promtoolCheckMetrics(url: string): Promise<string> {
  const body = await (await fetch(url)).text();
  expect(body).toContain("# TYPE stowage_");
  const r = await execa("promtool", ["check", "metrics"], { input: body, reject: false });
  return `${r.stdout}${r.stderr}`.trim() || (r.exitCode === 0 ? "" : `exit ${r.exitCode}`);
}

/**
 * Evaluates `queries` until every one returns at least one sample, or `timeoutMs` passes (series appear as the
 * cluster reports and Prometheus scrapes). Returns those still empty and those Prometheus rejected.
 */
async function untilAllReturnData(
  prom: Prometheus,
  queries: { what: string; expr: string }[],
  timeoutMs: number,
): Promise<{ empty: string[]; failed: string[] }> {
  const end = Date.now() + timeoutMs;
  let pending = queries;
  const failed: string[] = [];
  for (;;) {
    const still: typeof queries = [];
    for (const q of pending) {
      try {
        if ((await prom.query(q.expr)).length === 0) still.push(q);
      } catch (err) {
        failed.push(`${q.what}: ${(err as Error).message}\n    ${q.expr}`);
      }
    }
    pending = still;
    if (pending.length === 0 || Date.now() > end)
      return { empty: pending.map((q) => `${q.what}\n    ${q.expr}`), failed };
    await new Promise((r) => setTimeout(r, 2000));
  }
}

describe.skipIf(!available)("a real Prometheus scraping a running cluster", () => {
  let oc: ObservedCluster;
  let prom: Prometheus;
  let tmp: Awaited<ReturnType<typeof makeTempDir>>;

  beforeAll(async () => {
    oc = await startObservedCluster({ agents: ["node1", "node2", "node3"] });
    tmp = await makeTempDir("stowage-prometheus-");
    const jobs = configuredJobs();
    expect(jobs).toEqual(["stowage-controller", "stowage-agent"]);
    // Scraping starts before the cluster is put to work, so rates see the work, and the controller's time-to-full
    // forecast (fed by scrapes) gathers its history meanwhile.
    prom = await startPrometheus({
      dir: tmp.path,
      jobs: [
        { name: "stowage-controller", targets: [oc.controllerTarget] },
        { name: "stowage-agent", targets: [...oc.agentTargets, oc.thin.metricsTarget] },
      ],
      ruleFiles: [ALERTS],
      scrapeIntervalS: 1,
    });
    await waitFor(
      "Prometheus to scrape every target",
      async () => {
        const t = await prom.targets();
        return t.length === 2 + oc.agentTargets.length && t.every((x) => x.health === "up");
      },
      30_000,
    );

    const c = oc.cluster;
    // Operations of both kinds, API errors, scheduler refusals (the thin pool holds raw volumes only, so it
    // refuses every qcow2 one), and a command that waits in JetStream (the simulated host runs nothing).
    for (const name of ["obs-a", "obs-b", "obs-c"])
      await c.stowctl(["volume", "create", name, "--size", "1G", "--format", "qcow2", "--wait"], {
        reject: true,
      });
    await c.stowctl(["volume", "delete", "obs-c", "--wait"], { reject: true });
    await c.stowctl(
      ["volume", "create", "stuck-1", "--size", "1G", "--format", "raw", "--pool", "thin1/thin"],
      {
        reject: true,
      },
    );
    expect((await c.stowctl(["volume", "get", "no-such-volume"])).exitCode).toBe(3);
    expect((await c.stowctl(["volume", "create", "huge", "--size", "1000T", "--dry-run"])).exitCode).toBe(5);
  }, 240_000);

  afterAll(async () => {
    await prom?.stop();
    await oc?.stop();
    await tmp?.cleanup();
  });

  describe("promtool check metrics", () => {
    it("is clean on the controller's /metrics", async () => {
      expect(await promtoolCheckMetrics(`http://${oc.controllerTarget}/metrics`)).toBe("");
    });

    it("is clean on every agent's /metrics (a simulated thin host's included)", async () => {
      for (const target of [...oc.agentTargets, oc.thin.metricsTarget])
        expect(await promtoolCheckMetrics(`http://${target}/metrics`), target).toBe("");
    });

    it("accepts the test Prometheus's configuration (the repository's rules, this cluster's targets)", async () => {
      const r = await execa("promtool", ["check", "config", prom.configFile], { reject: false });
      expect(r.exitCode, `${r.stdout}${r.stderr}`).toBe(0);
    });
  });

  it("scrapes only metrics that the registries declare", async () => {
    const declared = exportedMetricNames();
    const scraped = new Set<string>();
    for (const target of [oc.controllerTarget, ...oc.agentTargets, oc.thin.metricsTarget])
      for (const n of namesInExposition(await (await fetch(`http://${target}/metrics`)).text()))
        scraped.add(n);
    expect([...scraped].filter((n) => !declared.has(n))).toEqual([]);
  });

  it("counts what the cluster did: volumes, operations, queued commands, API errors, refusals, tools", async () => {
    const one = async (expr: string) => {
      const r = await prom.query(expr);
      return r.length ? Number(r[0]!.value![1]) : undefined;
    };
    // Prometheus sees the work a scrape later: wait for the last of it (the refused dry run).
    await waitFor(
      "the work to be scraped",
      async () => ((await one("sum(stowage_scheduler_decisions_total{result='refused'})")) ?? 0) > 0,
      10_000,
    );
    expect(await one("stowage_volumes{state='deleted'}")).toBe(1);
    expect(await one("stowage_volumes{state='available'}")).toBe(2);
    expect(await one("stowage_volumes{state='creating'}")).toBe(1);
    expect(await one("sum(stowage_operations_total{kind='create_volume', result='succeeded'})")).toBe(3);
    expect(await one("sum(stowage_operations_total{kind='delete_volume', result='succeeded'})")).toBe(1);
    expect(await one("sum(stowage_operations_total{result='failed'})")).toBe(0);
    expect(await one("sum(stowage_agent_operations_total{kind='create_volume', result='succeeded'})")).toBe(
      3,
    );
    expect(await one("sum(stowage_tool_invocations_total{tool='qemu-img', result='ok'})")).toBeGreaterThan(0);
    // stuck-1 waits for the simulated host, which runs nothing: sent in the outbox, queued in JetStream.
    expect(await one("stowage_operations_pending{host='thin1', state='sent'}")).toBe(1);
    expect(await one("stowage_operations_pending{host='node1', state='sent'}")).toBe(0);
    expect(
      await one("stowage_jetstream_commands_pending{host='thin1'}"),
      "stowage_jetstream_commands_pending is exported once createControllerMetrics gets its pendingCommands provider",
    ).toBe(1);
    expect(await one("stowage_jetstream_commands_pending{host='node1'}")).toBe(0);
    expect(
      await one("sum(stowage_api_requests_total{method='GetVolume', code='not_found'})"),
    ).toBeGreaterThan(0);
    expect(await one("sum(stowage_scheduler_decisions_total{result='refused'})")).toBeGreaterThan(0);
    expect(await one("sum(stowage_scheduler_refusals_total)")).toBeGreaterThan(0);
    const data = await one("stowage_pool_data_percent{pool='thin1/thin'}");
    expect(data).toBeGreaterThan(20);
    expect(data).toBeLessThan(100);
  });

  it("gets data for every dashboard panel expression, its variables substituted", async () => {
    const queries = loadDashboards().flatMap((d) =>
      panelQueries(d).map((q) => ({
        what: `${q.dashboard} / ${q.panel} / ${q.refId}`,
        expr: substituteVariables(q.expr),
      })),
    );
    expect(queries.length).toBeGreaterThan(50);
    const { empty, failed } = await untilAllReturnData(prom, queries, 90_000);
    expect(failed).toEqual([]);
    expect(empty).toEqual([]);
  }, 150_000);

  it("gets values for every dashboard variable", async () => {
    const queries = loadDashboards().flatMap((d) =>
      variableQueries(d).map((v) => ({ what: `${v.dashboard} $${v.name}`, expr: labelValuesQuery(v.query) })),
    );
    const { empty, failed } = await untilAllReturnData(prom, queries, 30_000);
    expect(failed).toEqual([]);
    expect(empty).toEqual([]);
    const hosts = (await prom.query("count by (host) (stowage_host_up)")).map((s) => s.metric.host).sort();
    expect(hosts).toEqual(["node1", "node2", "node3", "thin1"]);
  });

  describe("alert rules", () => {
    let rules: PromRule[];

    beforeAll(async () => {
      const defined = [...readFileSync(ALERTS, "utf8").matchAll(/^\s*- alert: (\w+)/gm)].map((m) => m[1]);
      rules = await waitFor(
        "every rule to be evaluated",
        async () => {
          const r = await prom.rules();
          return r.length === defined.length && r.every((x) => x.health !== "unknown") && r;
        },
        30_000,
      );
      expect(rules.map((r) => r.name).sort()).toEqual([...defined].sort());
    });

    it("are all loaded and evaluate without error", () => {
      expect(rules.filter((r) => r.health !== "ok").map((r) => `${r.name}: ${r.lastError}`)).toEqual([]);
    });

    it("have a for duration, a severity and a summary and description", () => {
      for (const r of rules) {
        expect(r.type, r.name).toBe("alerting");
        expect(r.duration, r.name).toBeGreaterThan(0);
        expect(["critical", "warning", "info"], r.name).toContain(r.labels?.severity);
        expect(r.annotations?.summary, r.name).toBeTruthy();
        expect(r.annotations?.description, r.name).toBeTruthy();
      }
    });

    it("name only metrics that the code exports (and Prometheus's own up)", () => {
      const known = exportedMetricNames().add("up");
      const unknown = rules.flatMap((r) =>
        metricNames(r.query)
          .filter((n) => !known.has(n))
          .map((n) => `${r.name}: ${n}`),
      );
      expect(unknown).toEqual([]);
    });

    // A rule's expression returns data only while it fires. Each one is run as written (it must be valid and
    // executable), and without its threshold comparisons (`withoutThresholds`), where it must return the series
    // it watches: a rule over a metric nobody exports, or over labels that never match, would stay silent forever.
    it("run as written, and return data without their thresholds", async () => {
      for (const r of rules) await prom.query(r.query);
      const { empty, failed } = await untilAllReturnData(
        prom,
        rules.map((r) => ({ what: r.name, expr: withoutThresholds(r.query) })),
        60_000,
      );
      expect(failed).toEqual([]);
      expect(empty).toEqual([]);
    }, 90_000);

    it("forecast the growing thin pool full within a day, at about its real growth rate", async () => {
      const [sample] = await waitFor(
        "a time-to-full forecast for thin1/thin",
        async () => {
          const r = await prom.query('stowage_pool_time_to_full_seconds{pool="thin1/thin"}');
          return r.length > 0 && r;
        },
        60_000,
      );
      const forecast = Number(sample!.value![1]);
      // 64 MiB/s into a 100 GiB pool: the remaining bytes over the growth rate, give or take a report interval.
      const expected = (100 * GiB - oc.thin.usedBytes()) / (64 * 2 ** 20);
      expect(forecast).toBeGreaterThan(expected * 0.8);
      expect(forecast).toBeLessThan(expected * 1.25 + 10);
      await waitFor(
        "StowagePoolFullWithinADay to be pending for thin1/thin",
        async () => {
          const r = await prom.query('ALERTS{alertname="StowagePoolFullWithinADay", pool="thin1/thin"}');
          return r.length > 0;
        },
        15_000,
      );
    }, 90_000);

    it("see every host up and none of them down", async () => {
      expect(await prom.query("stowage_host_up == 0")).toEqual([]);
      expect(await prom.query('ALERTS{alertname="StowageHostDown"}')).toEqual([]);
    });
  });
});
