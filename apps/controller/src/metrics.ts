import type { Sql } from "@stowage/store";
import { counter, createRegistry, gauge, histogram, type Registry } from "@stowage/telemetry";

export type ControllerMetrics = ReturnType<typeof createControllerMetrics>;

/** The controller's metrics. Gauges of state are read from the database at scrape time (the truth). */
export function createControllerMetrics(getSql: () => Sql | undefined) {
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

  const m = {
    registry,
    apiRequests: counter(
      registry,
      "stowage_api_requests_total",
      "gRPC API requests by method and status code.",
      ["method", "code"],
    ),
    apiDuration: histogram(
      registry,
      "stowage_api_request_duration_seconds",
      "gRPC API request latency by method.",
      ["method"],
    ),
    operations: counter(
      registry,
      "stowage_operations_total",
      "Operations finished, by kind and result (succeeded, failed).",
      ["kind", "result"],
    ),
    operationDuration: histogram(
      registry,
      "stowage_operation_duration_seconds",
      "Time from an operation's creation to its result, by kind.",
      ["kind"],
    ),
    published: counter(
      registry,
      "stowage_operations_published_total",
      "Operations published to JetStream by the relay (re-sends included).",
      ["kind"],
    ),
    schedulerDecisions: counter(
      registry,
      "stowage_scheduler_decisions_total",
      "Placement decisions by result (placed, refused, conflict).",
      ["result"],
    ),
    schedulerRefusals: counter(
      registry,
      "stowage_scheduler_refusals_total",
      "Candidate pools refused, by the filter that refused them.",
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
      "What the reconciler found comparing inventories with the database, by kind (orphan, missing, foreign).",
      ["kind"],
      async function () {
        const rows = await q(
          (sql) =>
            sql<{ kind: string; n: number }[]>`select kind, count(*)::int as n from findings group by kind`,
        );
        this.reset();
        for (const k of ["orphan", "missing", "foreign"])
          this.set({ kind: k }, rows?.find((r) => r.kind === k)?.n ?? 0);
      },
    ),
    volumes: gauge(registry, "stowage_volumes", "Volumes by state.", ["state"], async function () {
      const rows = await q(
        (sql) =>
          sql<{ state: string; n: number }[]>`select state, count(*)::int as n from volumes group by state`,
      );
      this.reset();
      for (const s of ["creating", "available", "resizing", "deleting", "deleted", "error"])
        this.set({ state: s }, rows?.find((r) => r.state === s)?.n ?? 0);
    }),
    hostUp: gauge(
      registry,
      "stowage_host_up",
      "1 when the host is up (heartbeating), 0 when down.",
      ["host"],
      async function () {
        const rows = await q((sql) => sql<{ id: string; state: string }[]>`select id, state from hosts`);
        this.reset();
        for (const r of rows ?? []) this.set({ host: r.id }, r.state === "up" ? 1 : 0);
      },
    ),
    heartbeatAge: gauge(
      registry,
      "stowage_host_heartbeat_age_seconds",
      "Seconds since the host's last heartbeat.",
      ["host"],
      async function () {
        const rows = await q(
          (sql) =>
            sql<
              { id: string; age: number }[]
            >`select id, extract(epoch from now() - last_heartbeat_at)::float8 as age from hosts`,
        );
        this.reset();
        for (const r of rows ?? []) this.set({ host: r.id }, r.age);
      },
    ),
    operationsPending: gauge(
      registry,
      "stowage_operations_pending",
      "Operations not yet finished, by host and state (pending: in the outbox; sent: published, no result yet).",
      ["host", "state"],
      async function () {
        const rows = await q(
          (sql) => sql<{ hostId: string; state: string; n: number }[]>`
        select h.id as host_id, s.state, count(o.id)::int as n from hosts h cross join (values ('pending'), ('sent')) s(state)
        left join operations o on o.host_id = h.id and o.state = s.state group by h.id, s.state`,
        );
        this.reset();
        for (const r of rows ?? []) this.set({ host: r.hostId, state: r.state }, r.n);
      },
    ),
  };

  type PoolNumbers = {
    id: string;
    hostId: string;
    kind: string;
    totalBytes: bigint;
    usedBytes: bigint;
    freeBytes: bigint;
    allocatedBytes: bigint;
    reservedBytes: bigint;
    dataPercent: number | null;
    metadataPercent: number | null;
    volumeCount: number;
  };
  let poolCache: { at: number; rows: PoolNumbers[] } = { at: 0, rows: [] };
  const pools = async () => {
    if (Date.now() - poolCache.at < 500) return poolCache.rows;
    const rows =
      (await q(
        (sql) =>
          sql<
            PoolNumbers[]
          >`select id, host_id, kind, total_bytes, used_bytes, free_bytes, allocated_bytes, reserved_bytes, data_percent, metadata_percent, volume_count from pools where present`,
      )) ?? [];
    poolCache = { at: Date.now(), rows };
    return rows;
  };
  const poolGauge = (name: string, help: string, pick: (p: PoolNumbers) => number | null) =>
    gauge(registry, name, help, ["pool", "host", "kind"], async function () {
      this.reset();
      for (const p of await pools()) {
        const v = pick(p);
        if (v !== null) this.set({ pool: p.id, host: p.hostId, kind: p.kind }, v);
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
  poolGauge("stowage_pool_volumes", "Volumes holding capacity in the pool.", (p) => p.volumeCount);
  return m;
}
