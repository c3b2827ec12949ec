import type { Sql } from "@stowage/store";
import { gauge, type Registry } from "@stowage/telemetry";

/**
 * Runs one read of the database for a scrape: undefined when there is no database yet or the read fails, so the
 * gauge is left out of that scrape rather than reported as zero.
 */
export type ScrapeRead = <T>(read: (sql: Sql) => Promise<T>) => Promise<T | undefined>;

export function scrapeReader(getSql: () => Sql | undefined): ScrapeRead {
  return async (read) => {
    const sql = getSql();
    if (!sql) return undefined;
    try {
      return await read(sql);
    } catch {
      return undefined;
    }
  };
}

/** A scrape asks several gauges for the same rows: one query serves them all for `ms`. */
export function shared<T>(ms: number, load: () => Promise<T>): () => Promise<T> {
  let at = 0;
  let current: Promise<T> | undefined;
  return () => {
    if (!current || Date.now() - at >= ms) {
      at = Date.now();
      current = load();
    }
    return current;
  };
}

/** Runs `f` over `items`, `width` at a time, giving up on a batch after `timeoutMs`. */
export async function inBatches<T, R>(
  items: readonly T[],
  width: number,
  timeoutMs: number,
  f: (item: T) => Promise<R>,
): Promise<(R | undefined)[]> {
  const out: (R | undefined)[] = [];
  for (let i = 0; i < items.length; i += width) {
    const batch = items.slice(i, i + width).map((item) => f(item).catch(() => undefined));
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<undefined[]>((resolve) => {
      timer = setTimeout(() => resolve(batch.map(() => undefined)), timeoutMs);
    });
    out.push(...(await Promise.race([Promise.all(batch), late])));
    clearTimeout(timer);
  }
  return out;
}

/** A gauge with one series per row, replaced at every scrape. */
export interface RowGaugeSpec<R, L extends string> {
  name: string;
  help: string;
  labelNames: readonly L[];
  /** The rows of this scrape; undefined when the database could not answer (no series at all). */
  rows: () => Promise<readonly R[] | undefined>;
  labels: (row: R) => Partial<Record<L, string | number>>;
  /** The row's value; null or undefined leaves the row's series out (a dir pool has no thin percentages). */
  value: (row: R) => number | null | undefined;
}

export function rowGauge<R, L extends string>(registry: Registry, spec: RowGaugeSpec<R, L>) {
  return gauge(registry, spec.name, spec.help, spec.labelNames, async function () {
    const rows = await spec.rows();
    this.reset();
    for (const row of rows ?? []) {
      const v = spec.value(row);
      if (v !== null && v !== undefined) this.set(spec.labels(row), v);
    }
  });
}

/** Gauges that share their rows and labels (one read serves them all), each with its own name, help and value. */
export function rowGaugeFamily<R, L extends string>(
  registry: Registry,
  family: Pick<RowGaugeSpec<R, L>, "labelNames" | "rows" | "labels">,
) {
  return (name: string, help: string, value: RowGaugeSpec<R, L>["value"]) =>
    rowGauge(registry, { ...family, name, help, value });
}

/**
 * A gauge of counts by one label, with a series for each of `values` (0 for those nothing has), so dashboards and
 * alerts see every state from the start.
 */
export function countGauge<L extends string>(
  registry: Registry,
  spec: { name: string; help: string; label: L; values: readonly string[] },
  counts: () => Promise<ReadonlyMap<string, number> | undefined>,
) {
  return rowGauge(registry, {
    name: spec.name,
    help: spec.help,
    labelNames: [spec.label],
    rows: async () => {
      const found = await counts();
      return found && spec.values.map((v) => ({ v, n: found.get(v) ?? 0 }));
    },
    labels: (r) => ({ [spec.label]: r.v }) as Partial<Record<L, string>>,
    value: (r) => r.n,
  });
}
