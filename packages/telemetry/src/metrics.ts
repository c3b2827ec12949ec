import { Counter, collectDefaultMetrics, Gauge, Histogram, type LabelValues, Registry } from "prom-client";

const LINT_FAILING_DEFAULTS = [
  "nodejs_active_handles_total",
  "nodejs_active_requests_total",
  "nodejs_active_resources_total",
];

/** One registry per process; every metric is named stowage_<thing>_<unit> (the process_/nodejs_ defaults aside). */
export function createRegistry(opts: { defaults?: boolean; labels?: Record<string, string> } = {}): Registry {
  const registry = new Registry();
  if (opts.labels) registry.setDefaultLabels(opts.labels);
  if (opts.defaults ?? true) {
    collectDefaultMetrics({ register: registry });
    // Gauges named like counters, which `promtool check metrics` rejects; nodejs_active_handles and friends
    // (by type) say the same.
    for (const name of LINT_FAILING_DEFAULTS) registry.removeSingleMetric(name);
  }
  return registry;
}

export const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

export function counter<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly L[] = [],
  collect?: (this: Counter<L>) => void | Promise<void>,
) {
  return new Counter<L>({ name, help, labelNames, registers: [registry], ...(collect ? { collect } : {}) });
}

/**
 * Makes every value of an outcome label exist as soon as one does: when {tool="qemu-img", result="ok"} is first
 * counted, {tool="qemu-img", result="failed"} and {tool="qemu-img", result="timeout"} are exported at 0. A rate of
 * failures is then 0 before the first failure rather than absent, so dashboards and alert rules see data.
 */
export function withOutcomes<L extends string>(
  c: Counter<L>,
  label: NoInfer<L>,
  values: readonly string[],
): Counter<L> {
  const seen = new Set<string>();
  // prom-client assigns `inc` per instance (exemplars or not), so it is wrapped on the instance.
  const inc = c.inc.bind(c) as (labels?: LabelValues<L> | number, value?: number) => void;
  c.inc = ((labels?: LabelValues<L> | number, value?: number) => {
    if (labels !== undefined && typeof labels === "object") {
      const rest = Object.entries(labels)
        .filter(([k]) => k !== label)
        .sort(([a], [b]) => a.localeCompare(b));
      const key = JSON.stringify(rest);
      if (!seen.has(key)) {
        seen.add(key);
        for (const v of values) inc({ ...labels, [label]: v } as LabelValues<L>, 0);
      }
    }
    inc(labels, value);
  }) as Counter<L>["inc"];
  return c;
}

export function gauge<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly L[] = [],
  collect?: (this: Gauge<L>) => void | Promise<void>,
) {
  return new Gauge<L>({ name, help, labelNames, registers: [registry], ...(collect ? { collect } : {}) });
}

export function histogram<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly L[] = [],
  buckets = DURATION_BUCKETS,
  collect?: (this: Histogram<L>) => void | Promise<void>,
) {
  return new Histogram<L>({
    name,
    help,
    labelNames,
    buckets,
    registers: [registry],
    ...(collect ? { collect } : {}),
  });
}

export type { Registry } from "prom-client";
