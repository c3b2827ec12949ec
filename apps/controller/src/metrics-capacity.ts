import { type PoolCapacity, poolCapacities } from "@stowage/store";
import { createGrowthForecast, type GrowthForecastOptions, type Registry } from "@stowage/telemetry";
import { rowGaugeFamily, type ScrapeRead, shared } from "./metrics-scrape.js";

type PoolValue = (p: PoolCapacity) => number | null;

/** Each pool gauge: its name, help text and value; null leaves the pool out (a dir pool has no thin percentages). */
const POOL_GAUGES: readonly (readonly [name: string, help: string, value: PoolValue])[] = [
  ["stowage_pool_capacity_bytes", "Usable size of the pool's backing store.", (p) => Number(p.totalBytes)],
  [
    "stowage_pool_used_bytes",
    "Physically used bytes, as the agent reports them.",
    (p) => Number(p.usedBytes),
  ],
  [
    "stowage_pool_free_bytes",
    "Physically free bytes, as the agent reports them.",
    (p) => Number(p.freeBytes),
  ],
  [
    "stowage_pool_provisioned_bytes",
    "Virtual size of the volumes allocated in the pool (the ledger).",
    (p) => Number(p.allocatedBytes),
  ],
  [
    "stowage_pool_reserved_bytes",
    "Bytes reserved for volumes being created (the ledger).",
    (p) => Number(p.reservedBytes),
  ],
  [
    "stowage_pool_reported_provisioned_bytes",
    "Virtual size of the volumes the agent found in the pool; its difference from the ledger's provisioned bytes is drift.",
    (p) => Number(p.reportedProvisionedBytes),
  ],
  [
    "stowage_pool_overcommit_ratio",
    "How far the ledger may provision the pool beyond its capacity (1 for thick pools).",
    (p) => p.overcommitRatio,
  ],
  ["stowage_pool_data_percent", "Thin pools: data space used, in percent.", (p) => p.dataPercent],
  ["stowage_pool_metadata_percent", "Thin pools: metadata space used, in percent.", (p) => p.metadataPercent],
  [
    "stowage_pool_healthy",
    "1 when the pool passes its agent's health check, 0 when not.",
    (p) => (p.healthy ? 1 : 0),
  ],
  ["stowage_pool_volumes", "Volumes holding capacity in the pool.", (p) => p.volumeCount],
];

/**
 * Every present pool's capacity, use, ledger numbers and health, by pool, host and kind, and its forecast time to
 * full: each scrape's read of the pools is also a sample of their growth.
 */
export function poolCapacityGauges(registry: Registry, read: ScrapeRead, opts?: GrowthForecastOptions) {
  const forecast = createGrowthForecast(opts);
  const pools = shared(500, async () => {
    const rows = await read(poolCapacities);
    if (rows) {
      // One sample per report: updated_at changes with every inventory the controller applies.
      for (const p of rows)
        forecast.record(p.id, p.updatedAt.getTime(), Number(p.usedBytes), Number(p.totalBytes));
      forecast.retain(rows.map((p) => p.id));
    }
    return rows ?? [];
  });
  const poolGauge = rowGaugeFamily(registry, {
    labelNames: ["pool", "host", "kind"],
    rows: pools,
    labels: (p) => ({ pool: p.id, host: p.hostId, kind: p.kind }),
  });
  for (const [name, help, value] of POOL_GAUGES) poolGauge(name, help, value);
  poolGauge(
    "stowage_pool_time_to_full_seconds",
    "Forecast seconds until the pool is physically full, from a least-squares fit of its used bytes over the last hours (+Inf when not growing; absent until about 30 s of history).",
    (p) => forecast.timeToFull(p.id),
  );
}
