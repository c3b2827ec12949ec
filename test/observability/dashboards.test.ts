import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  allPanels,
  type Dashboard,
  GRAFANA_DIR,
  labelValuesQuery,
  loadDashboards,
  panelQueries,
  substituteVariables,
  variableQueries,
} from "./dashboards.js";
import { exportedMetricNames } from "./exported-metrics.js";
import { metricNames } from "./promql.js";

// biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's variable syntax, not a JavaScript template.
const DATASOURCE = "${datasource}";
const dashboards = loadDashboards();
const exported = exportedMetricNames();

/** The metrics an expression names that neither the controller nor the agent exports. */
function unknownMetrics(expr: string): string[] {
  return metricNames(substituteVariables(expr)).filter((n) => !exported.has(n));
}

describe("Grafana dashboards", () => {
  it("cover capacity, hosts and pools, operations, the scheduler and migrations, with fixed uids", () => {
    expect(dashboards.map((d) => d.uid).sort()).toEqual([
      "stowage-capacity",
      "stowage-hosts",
      "stowage-migrations",
      "stowage-operations",
      "stowage-scheduler",
    ]);
    for (const d of dashboards) {
      expect(d.title, d.file).toMatch(/^Stowage \/ /);
      expect(d.tags, d.file).toContain("stowage");
    }
  });

  it.each(dashboards.map((d) => [d.file, d] as const))(
    "%s takes its data source from the datasource variable, in every panel and variable",
    (_file, d: Dashboard) => {
      const ds = d.templating.list.find((v) => v.name === "datasource");
      expect(ds).toMatchObject({ type: "datasource", query: "prometheus" });
      for (const v of d.templating.list.filter((x) => x.type === "query"))
        expect(v.datasource?.uid, `variable ${v.name}`).toBe(DATASOURCE);
      for (const p of allPanels(d).filter((x) => x.targets?.length)) {
        expect(p.datasource?.uid, `panel ${p.title}`).toBe(DATASOURCE);
        for (const t of p.targets ?? [])
          expect(t.datasource?.uid ?? DATASOURCE, `panel ${p.title} ${t.refId}`).toBe(DATASOURCE);
      }
    },
  );

  it.each(dashboards.map((d) => [d.file, d] as const))(
    "%s lays out its panels on the grid without overlaps, with unique ids",
    (_file, d: Dashboard) => {
      const panels = allPanels(d);
      expect(new Set(panels.map((p) => p.id)).size).toBe(panels.length);
      const cells = new Map<string, string>();
      for (const p of panels) {
        const g = p.gridPos;
        expect(g, p.title).toBeDefined();
        expect(g!.x + g!.w, p.title).toBeLessThanOrEqual(24);
        for (let x = g!.x; x < g!.x + g!.w; x++)
          for (let y = g!.y; y < g!.y + g!.h; y++) {
            const other = cells.get(`${x},${y}`);
            expect(other, `${p.title} overlaps ${other}`).toBeUndefined();
            cells.set(`${x},${y}`, p.title);
          }
      }
    },
  );

  it("use stat, time series and table panels where they fit", () => {
    const types = (uid: string) =>
      new Set(allPanels(dashboards.find((d) => d.uid === uid)!).map((p) => p.type));
    for (const d of dashboards) expect(types(d.uid), d.uid).toContain("stat");
    for (const d of dashboards) expect(types(d.uid), d.uid).toContain("timeseries");
    expect(types("stowage-capacity")).toContain("table");
    expect(types("stowage-hosts")).toContain("table");
  });

  it("have panel titles and queries in every data panel", () => {
    for (const d of dashboards)
      for (const p of allPanels(d).filter((x) => !["row", "text"].includes(x.type))) {
        expect(p.title, `${d.uid} panel ${p.id}`).toBeTruthy();
        expect(p.targets?.length, `${d.uid} ${p.title}`).toBeGreaterThan(0);
      }
  });
});

describe("dashboard expressions", () => {
  const queries = dashboards.flatMap(panelQueries);
  const variables = dashboards.flatMap(variableQueries);

  it("are many: every dashboard has queries to check", () => {
    for (const d of dashboards) expect(panelQueries(d).length, d.uid).toBeGreaterThanOrEqual(8);
  });

  it("parse as PromQL once Grafana's variables are substituted", () => {
    const broken = queries.flatMap((q) => {
      try {
        metricNames(substituteVariables(q.expr));
        return [];
      } catch (err) {
        return [`${q.dashboard} / ${q.panel} / ${q.refId}: ${(err as Error).message}`];
      }
    });
    expect(broken).toEqual([]);
  });

  it("name only metrics that the controller or the agents export", () => {
    const unknown = queries.flatMap((q) =>
      unknownMetrics(q.expr).map((n) => `${q.dashboard} / ${q.panel} / ${q.refId}: ${n}`),
    );
    expect(unknown).toEqual([]);
    // And the check does catch a metric nobody exports.
    expect(unknownMetrics('sum(rate(stowage_no_such_thing_total{host=~"$host"}[$__rate_interval]))')).toEqual(
      ["stowage_no_such_thing_total"],
    );
  });

  it("use only exported metrics in the variables' label_values queries", () => {
    expect(variables.length).toBeGreaterThan(0);
    const unknown = variables.flatMap((v) =>
      unknownMetrics(labelValuesQuery(v.query)).map((n) => `${v.dashboard} $${v.name}: ${n}`),
    );
    expect(unknown).toEqual([]);
  });

  it("are checked against histogram series names too", () => {
    expect(exported.has("stowage_operation_duration_seconds_bucket")).toBe(true);
    expect(exported.has("stowage_tool_duration_seconds_count")).toBe(true);
    expect(exported.has("stowage_pool_time_to_full_seconds")).toBe(true);
    expect(exported.has("stowage_jetstream_commands_pending")).toBe(true);
  });
});

describe("Grafana provisioning", () => {
  it("provides a Prometheus data source with a fixed uid", () => {
    const text = readFileSync(join(GRAFANA_DIR, "provisioning/datasources/stowage.yml"), "utf8");
    expect(text).toMatch(/^apiVersion: 1$/m);
    expect(text).toMatch(/^\s+type: prometheus$/m);
    expect(text).toMatch(/^\s+uid: stowage-prometheus$/m);
  });

  it("loads the dashboards from files into the Stowage folder", () => {
    const text = readFileSync(join(GRAFANA_DIR, "provisioning/dashboards/stowage.yml"), "utf8");
    expect(text).toMatch(/^apiVersion: 1$/m);
    expect(text).toMatch(/^\s+type: file$/m);
    expect(text).toMatch(/^\s+folder: Stowage$/m);
    expect(text).toMatch(/^\s+path: \S+$/m);
  });
});
