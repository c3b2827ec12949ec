import { readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";

export const ROOT = resolve(import.meta.dirname, "../..");
export const GRAFANA_DIR = join(ROOT, "deploy/grafana");
export const DASHBOARD_DIR = join(GRAFANA_DIR, "dashboards");
export const PROMETHEUS_DIR = join(ROOT, "deploy/prometheus");

export interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type?: string; uid?: string };
  gridPos?: { x: number; y: number; w: number; h: number };
  targets?: { refId: string; expr?: string; datasource?: { type?: string; uid?: string } }[];
  panels?: Panel[];
}

export interface Variable {
  name: string;
  type: string;
  query?: string | { query?: string };
  datasource?: { type?: string; uid?: string };
}

export interface Dashboard {
  file: string;
  uid: string;
  title: string;
  tags: string[];
  templating: { list: Variable[] };
  panels: Panel[];
}

export interface PanelQuery {
  dashboard: string;
  panel: string;
  refId: string;
  expr: string;
}

export function loadDashboards(): Dashboard[] {
  return readdirSync(DASHBOARD_DIR)
    .filter((f) => f.endsWith(".json"))
    .sort()
    .map((file) => ({ ...JSON.parse(readFileSync(join(DASHBOARD_DIR, file), "utf8")), file }));
}

/** Every panel, those inside collapsed rows included. */
export function allPanels(d: Dashboard): Panel[] {
  return d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

export function panelQueries(d: Dashboard): PanelQuery[] {
  return allPanels(d).flatMap((p) =>
    (p.targets ?? [])
      .filter((t) => t.expr !== undefined)
      .map((t) => ({ dashboard: d.uid, panel: p.title, refId: t.refId, expr: t.expr! })),
  );
}

/** The query variables' queries, like `label_values(stowage_host_up, host)`. */
export function variableQueries(d: Dashboard): { dashboard: string; name: string; query: string }[] {
  return d.templating.list
    .filter((v) => v.type === "query")
    .map((v) => ({
      dashboard: d.uid,
      name: v.name,
      query: typeof v.query === "string" ? v.query : (v.query?.query ?? ""),
    }));
}

/**
 * What Grafana does before it sends a query, for a dashboard showing every value of every variable over the last
 * few minutes: the interval variables get fixed durations and each template variable its "All" value, `.*` (the
 * dashboards use variables in regex matchers only).
 */
export function substituteVariables(expr: string): string {
  return expr
    .replaceAll("$__rate_interval", "1m")
    .replaceAll("$__interval", "15s")
    .replaceAll("$__range", "5m")
    .replace(/\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)/g, ".*");
}

/** `label_values(metric{...}, label)` as PromQL returning one series per value. */
export function labelValuesQuery(query: string): string {
  const m = /^label_values\((.*),\s*(\w+)\s*\)$/s.exec(query.trim());
  if (!m) throw new Error(`not a label_values(metric, label) query: ${query}`);
  return `count by (${m[2]}) (${m[1]})`;
}

/** The job names of deploy/prometheus/prometheus.yml, which the alert rules may select on. */
export function configuredJobs(): string[] {
  const text = readFileSync(join(PROMETHEUS_DIR, "prometheus.yml"), "utf8");
  return [...text.matchAll(/^\s*-\s*job_name:\s*["']?([\w-]+)["']?\s*$/gm)].map((m) => m[1]!);
}
