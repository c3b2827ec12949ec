import { EXPORT_KINDS, SNAPSHOT_STATES, VOLUME_STATES } from "@stowage/core";
import {
  EXPORT_STATES,
  exportCounts,
  findingCountsByHost,
  migrationPlanCountsByPhase,
  snapshotCountsByState,
  volumeCountsByState,
} from "@stowage/store";
import type { Registry } from "@stowage/telemetry";
import { countGauge, rowGauge, type ScrapeRead } from "./metrics-scrape.js";

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

/** The states of a snapshot (table snapshots). */

/** Volumes, snapshots and migration plans by state, read from the database at scrape time. */
export function resourceStateGauges(registry: Registry, read: ScrapeRead) {
  return {
    volumes: countGauge(
      registry,
      { name: "stowage_volumes", help: "Volumes by state.", label: "state", values: VOLUME_STATES },
      () => read(volumeCountsByState),
    ),
    snapshots: countGauge(
      registry,
      { name: "stowage_snapshots", help: "Snapshots by state.", label: "state", values: SNAPSHOT_STATES },
      () => read(snapshotCountsByState),
    ),
    // Every kind and live state, so that dashboards see each series from the start.
    exports: rowGauge(registry, {
      name: "stowage_exports",
      help: "Live exports (volumes reachable from other hosts: iSCSI targets, RBD grants) by kind and state.",
      labelNames: ["kind", "state"],
      rows: async () => {
        const found = await read(exportCounts);
        if (!found) return undefined;
        const n = new Map(found.map((r) => [`${r.kind}/${r.state}`, r.count]));
        return EXPORT_KINDS.flatMap((kind) =>
          EXPORT_STATES.filter((s) => s !== "deleted").map((state) => ({
            kind,
            state,
            count: n.get(`${kind}/${state}`) ?? 0,
          })),
        );
      },
      labels: (r) => ({ kind: r.kind, state: r.state }),
      value: (r) => r.count,
    }),
    migrationPlans: countGauge(
      registry,
      {
        name: "stowage_migration_plans",
        help: "Migration plans by phase. Every phase is exported; all are 0 until migration plans are stored (table migration_plans).",
        label: "phase",
        values: MIGRATION_PHASES,
      },
      () => read(migrationPlanCountsByPhase),
    ),
  };
}

/** The reconciler's findings by host and kind. */
export function findingGauges(registry: Registry, read: ScrapeRead) {
  return {
    reconcilerFindings: rowGauge(registry, {
      name: "stowage_reconciler_findings",
      help: "What the reconciler found comparing each host's inventory with the database, by host and kind (orphan: on the host, not in the database; missing: in the database, not on the host; foreign: not Stowage's).",
      labelNames: ["host", "kind"],
      rows: () => read((sql) => findingCountsByHost(sql, FINDING_KINDS)),
      labels: (r) => ({ host: r.hostId, kind: r.kind }),
      value: (r) => r.n,
    }),
  };
}
