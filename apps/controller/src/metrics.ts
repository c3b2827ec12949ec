import { OPERATION_KINDS, VOLUME_STATES } from "@stowage/core";
import type { Sql } from "@stowage/store";
import {
  counter,
  createGrowthForecast,
  createRegistry,
  type GrowthForecastOptions,
  gauge,
  histogram,
  type Registry,
  withOutcomes,
} from "@stowage/telemetry";

export type ControllerMetrics = ReturnType<typeof createControllerMetrics>;

/** The phases of a migration plan (proto MigrationPhase), each exported even while it counts nothing. */
export const MIGRATION_PHASES = [
  "planned",
  "preparing",
  "prepared",
  "committing",
  "committed",
  "aborting",
  "aborted",
  "failed",
] as const;

/** What the reconciler records when an inventory and the database disagree (table findings). */
export const FINDING_KINDS = ["orphan", "missing", "foreign"] as const;

export const OPERATION_RESULTS = ["succeeded", "failed"] as const;

/** The states of a snapshot (table snapshots). */
export const SNAPSHOT_STATES = ["creating", "available", "deleting", "deleted", "error"] as const;

export interface ControllerMetricsOptions {
  /**
   * Commands waiting in a host's JetStream consumer, not yet delivered or not yet acknowledged
   * (`pendingCommands(bus.jsm, hostId)` from @stowage/bus). Without it stowage_jetstream_commands_pending is not
   * exported.
   */
  pendingCommands?: (hostId: string) => Promise<number>;
  /** Tuning of the time-to-full forecast (window, minimum history). */
  forecast?: GrowthForecastOptions;
}

/** A scrape asks several gauges for the same rows: one query serves them all for `ms`. */
function shared<T>(ms: number, load: () => Promise<T>): () => Promise<T> {
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
async function inBatches<T, R>(
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

/**
 * The controller's metrics. Gauges of state are read from the database at scrape time (the truth); a gauge whose
 * query fails is left out of that scrape rather than reported as zero.
 */
export function createControllerMetrics(getSql: () => Sql | undefined, opts: ControllerMetricsOptions = {}) {
  const registry: Registry = createRegistry();
  const q = async <T>(f: (sql: Sql) => Promise<T>): Promise<T | undefined> => {
    const sql = getSql();
    if (!sql) return undefined;
    try {
      return await f(sql);
    } catch {
      return undefined;
    }
  };

  const operations = withOutcomes(
    counter(
      registry,
      "stowage_operations_total",
      "Operations finished (their result applied), by kind and result (succeeded, failed).",
      ["kind", "result"],
    ),
    "result",
    OPERATION_RESULTS,
  );
  const operationDuration = histogram(
    registry,
    "stowage_operation_duration_seconds",
    "Time from an operation's creation to its result being applied, by kind.",
    ["kind"],
  );
  const published = counter(
    registry,
    "stowage_operations_published_total",
    "Operations published to JetStream by the relay (re-sends included).",
    ["kind"],
  );
  for (const kind of OPERATION_KINDS) {
    operations.inc({ kind, result: "succeeded" }, 0);
    operationDuration.zero({ kind });
    published.inc({ kind }, 0);
  }
  const schedulerDecisions = counter(
    registry,
    "stowage_scheduler_decisions_total",
    "Placement decisions by result (placed, refused: no pool fits, conflict: the ledger refused the chosen pool).",
    ["result"],
  );
  for (const result of ["placed", "refused", "conflict"]) schedulerDecisions.inc({ result }, 0);

  const hostRows = shared(500, () =>
    q(
      (sql) => sql<{ id: string; state: string; age: number }[]>`
      select id, state, extract(epoch from now() - last_heartbeat_at)::float8 as age from hosts order by id`,
    ),
  );
  const outboxRows = shared(500, () =>
    q(
      (sql) => sql<{ hostId: string; state: string; n: number; oldest: number }[]>`
        select h.id as host_id, s.state, count(o.id)::int as n,
          coalesce(extract(epoch from now() - min(o.created_at)), 0)::float8 as oldest
        from hosts h cross join (values ('pending'), ('sent')) s(state)
        left join operations o on o.host_id = h.id and o.state = s.state
        group by h.id, s.state`,
    ),
  );

  const m = {
    registry,
    apiRequests: counter(
      registry,
      "stowage_api_requests_total",
      'gRPC API requests by method and status code ("ok", or the gRPC code of the error: errors are code!="ok").',
      ["method", "code"],
    ),
    apiDuration: histogram(
      registry,
      "stowage_api_request_duration_seconds",
      "gRPC API request latency by method.",
      ["method"],
    ),
    operations,
    operationDuration,
    published,
    schedulerDecisions,
    schedulerRefusals: counter(
      registry,
      "stowage_scheduler_refusals_total",
      "Candidate pools refused, by the filter that refused them (the reason).",
      ["filter"],
    ),
    schedulerDuration: histogram(
      registry,
      "stowage_scheduler_decision_duration_seconds",
      "Time to make one placement decision (in memory).",
      [],
      [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1],
    ),
    reservationConflicts: counter(
      registry,
      "stowage_ledger_reservation_conflicts_total",
      "Reservations refused by the ledger after the scheduler chose a pool (placed again).",
    ),
    reconcilerFindings: gauge(
      registry,
      "stowage_reconciler_findings",
      "What the reconciler found comparing each host's inventory with the database, by host and kind (orphan: on the host, not in the database; missing: in the database, not on the host; foreign: not Stowage's).",
      ["host", "kind"],
      async function () {
        const rows = await q(
          (sql) => sql<{ hostId: string; kind: string; n: number }[]>`
            select h.id as host_id, k.kind, count(f.subject)::int as n
            from hosts h cross join unnest(${[...FINDING_KINDS]}::text[]) k(kind)
            left join findings f on f.host_id = h.id and f.kind = k.kind
            group by h.id, k.kind`,
        );
        this.reset();
        for (const r of rows ?? []) this.set({ host: r.hostId, kind: r.kind }, r.n);
      },
    ),
    volumes: gauge(registry, "stowage_volumes", "Volumes by state.", ["state"], async function () {
      const rows = await q(
        (sql) =>
          sql<{ state: string; n: number }[]>`select state, count(*)::int as n from volumes group by state`,
      );
      this.reset();
      if (!rows) return;
      for (const s of VOLUME_STATES) this.set({ state: s }, rows.find((r) => r.state === s)?.n ?? 0);
    }),
    snapshots: gauge(registry, "stowage_snapshots", "Snapshots by state.", ["state"], async function () {
      const rows = await q(
        (sql) =>
          sql<{ state: string; n: number }[]>`select state, count(*)::int as n from snapshots group by state`,
      );
      this.reset();
      if (!rows) return;
      for (const s of SNAPSHOT_STATES) this.set({ state: s }, rows.find((r) => r.state === s)?.n ?? 0);
    }),
    migrationPlans: gauge(
      registry,
      "stowage_migration_plans",
      "Migration plans by phase. Every phase is exported; all are 0 until migration plans are stored (table migration_plans).",
      ["phase"],
      async function () {
        const rows = await q(async (sql) => {
          const [t] = await sql<{ exists: boolean }[]>`
            select to_regclass('migration_plans') is not null as exists`;
          if (!t?.exists) return [];
          return sql<{ phase: string; n: number }[]>`
            select phase, count(*)::int as n from migration_plans group by phase`;
        });
        this.reset();
        if (!rows) return;
        for (const p of MIGRATION_PHASES) this.set({ phase: p }, rows.find((r) => r.phase === p)?.n ?? 0);
      },
    ),
    hostUp: gauge(
      registry,
      "stowage_host_up",
      "1 when the host is up (heartbeating), 0 when down.",
      ["host"],
      async function () {
        this.reset();
        for (const r of (await hostRows()) ?? []) this.set({ host: r.id }, r.state === "up" ? 1 : 0);
      },
    ),
    heartbeatAge: gauge(
      registry,
      "stowage_host_heartbeat_age_seconds",
      "Seconds since the host's last heartbeat.",
      ["host"],
      async function () {
        this.reset();
        for (const r of (await hostRows()) ?? []) this.set({ host: r.id }, r.age);
      },
    ),
    operationsPending: gauge(
      registry,
      "stowage_operations_pending",
      "Operations not yet finished, by host and state (pending: in the outbox; sent: published, no result yet).",
      ["host", "state"],
      async function () {
        this.reset();
        for (const r of (await outboxRows()) ?? []) this.set({ host: r.hostId, state: r.state }, r.n);
      },
    ),
    operationsOldestAge: gauge(
      registry,
      "stowage_operations_oldest_age_seconds",
      "Age of the oldest unfinished operation, by host and state (pending, sent); 0 when there is none.",
      ["host", "state"],
      async function () {
        this.reset();
        for (const r of (await outboxRows()) ?? []) this.set({ host: r.hostId, state: r.state }, r.oldest);
      },
    ),
  };

  const pendingCommands = opts.pendingCommands;
  if (pendingCommands) {
    gauge(
      registry,
      "stowage_jetstream_commands_pending",
      "Commands in the host's JetStream consumer not yet delivered or not yet acknowledged by its agent.",
      ["host"],
      async function () {
        const hosts = (await hostRows()) ?? [];
        const counts = await inBatches(hosts, 16, 2000, (h) => pendingCommands(h.id));
        this.reset();
        hosts.forEach((h, i) => {
          const n = counts[i];
          if (n !== undefined) this.set({ host: h.id }, n);
        });
      },
    );
  }

  type PoolNumbers = {
    id: string;
    hostId: string;
    kind: string;
    healthy: boolean;
    totalBytes: bigint;
    usedBytes: bigint;
    freeBytes: bigint;
    reportedProvisionedBytes: bigint;
    allocatedBytes: bigint;
    reservedBytes: bigint;
    dataPercent: number | null;
    metadataPercent: number | null;
    overcommitRatio: number;
    volumeCount: number;
    updatedAt: Date;
  };
  const forecast = createGrowthForecast(opts.forecast);
  const pools = shared(500, async () => {
    const rows = await q(
      (sql) => sql<PoolNumbers[]>`
        select id, host_id, kind, healthy, total_bytes, used_bytes, free_bytes, reported_provisioned_bytes,
          allocated_bytes, reserved_bytes, data_percent, metadata_percent, overcommit_ratio, volume_count, updated_at
        from pools where present order by id`,
    );
    if (rows) {
      // One sample per report: updated_at changes with every inventory the controller applies.
      for (const p of rows)
        forecast.record(p.id, p.updatedAt.getTime(), Number(p.usedBytes), Number(p.totalBytes));
      forecast.retain(rows.map((p) => p.id));
    }
    return rows ?? [];
  });
  const poolGauge = (name: string, help: string, pick: (p: PoolNumbers) => number | null | undefined) =>
    gauge(registry, name, help, ["pool", "host", "kind"], async function () {
      const rows = await pools();
      this.reset();
      for (const p of rows) {
        const v = pick(p);
        if (v !== null && v !== undefined) this.set({ pool: p.id, host: p.hostId, kind: p.kind }, v);
      }
    });
  poolGauge("stowage_pool_capacity_bytes", "Usable size of the pool's backing store.", (p) =>
    Number(p.totalBytes),
  );
  poolGauge("stowage_pool_used_bytes", "Physically used bytes, as the agent reports them.", (p) =>
    Number(p.usedBytes),
  );
  poolGauge("stowage_pool_free_bytes", "Physically free bytes, as the agent reports them.", (p) =>
    Number(p.freeBytes),
  );
  poolGauge(
    "stowage_pool_provisioned_bytes",
    "Virtual size of the volumes allocated in the pool (the ledger).",
    (p) => Number(p.allocatedBytes),
  );
  poolGauge("stowage_pool_reserved_bytes", "Bytes reserved for volumes being created (the ledger).", (p) =>
    Number(p.reservedBytes),
  );
  poolGauge(
    "stowage_pool_reported_provisioned_bytes",
    "Virtual size of the volumes the agent found in the pool; its difference from the ledger's provisioned bytes is drift.",
    (p) => Number(p.reportedProvisionedBytes),
  );
  poolGauge(
    "stowage_pool_overcommit_ratio",
    "How far the ledger may provision the pool beyond its capacity (1 for thick pools).",
    (p) => p.overcommitRatio,
  );
  poolGauge("stowage_pool_data_percent", "Thin pools: data space used, in percent.", (p) => p.dataPercent);
  poolGauge(
    "stowage_pool_metadata_percent",
    "Thin pools: metadata space used, in percent.",
    (p) => p.metadataPercent,
  );
  poolGauge("stowage_pool_healthy", "1 when the pool passes its agent's health check, 0 when not.", (p) =>
    p.healthy ? 1 : 0,
  );
  poolGauge("stowage_pool_volumes", "Volumes holding capacity in the pool.", (p) => p.volumeCount);
  poolGauge(
    "stowage_pool_time_to_full_seconds",
    "Forecast seconds until the pool is physically full, from a least-squares fit of its used bytes over the last hours (+Inf when not growing; absent until about 30 s of history).",
    (p) => forecast.timeToFull(p.id),
  );
  return m;
}
