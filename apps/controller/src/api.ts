import {
  Code,
  ConnectError,
  type ConnectRouter,
  createContextKey,
  type HandlerContext,
} from "@connectrpc/connect";
import { invalidArgument, notFound, validateName } from "@stowage/core";
import {
  AgentService,
  ExportService,
  HostService,
  HostState,
  MigrationService,
  OperationService,
  PlacementService,
  PoolService,
  SnapshotService,
  VolumeEventType,
  VolumeService,
} from "@stowage/proto";
import {
  countsByHost,
  decodePageToken,
  encodePageToken,
  getHost,
  getOperation,
  getPool,
  listHosts,
  listOperations,
  listPools,
  listSnapshots,
  listVolumes,
  type OperationRow,
  operationsChangedSince,
  pageSize,
  type SnapshotRow,
  setHostSchedulable,
  setPoolDraining,
  volumesChangedSince,
  writeAudit,
} from "@stowage/store";
import { registerAgent } from "./agents.js";
import type { ControllerContext } from "./context.js";
import {
  hostToWire,
  operationStates,
  operationToWire,
  placementToWire,
  poolKinds,
  poolToWire,
  snapshotToWire,
  volumeStates,
  volumeToWire,
} from "./convert.js";
import { toConnectError } from "./errors.js";
import {
  cloneVolume,
  createSnapshot,
  deleteSnapshot,
  resizeVolume,
  resolveSnapshot,
  revertSnapshot,
} from "./lifecycle-service.js";
import { checkConstraintTargets, decide, decideGroup } from "./scheduling.js";
import { placementRequestFromWire, validatePoolRef } from "./validate.js";
import { createVolume, createVolumeGroup, deleteVolume, resolveVolume } from "./volume-service.js";

/** Who is calling: set by the auth interceptor. */
export const principalKey = createContextKey<{ name: string; role: "viewer" | "operator" | "admin" }>({
  name: "anonymous",
  role: "admin",
});

const actorOf = (hc: HandlerContext) => hc.values.get(principalKey).name;

function page<T extends { id: string }>(rows: T[], limit: number): { rows: T[]; next: string } {
  return { rows, next: rows.length === limit ? encodePageToken(rows[rows.length - 1]!.id) : "" };
}

function after(token: string): string {
  try {
    return decodePageToken(token);
  } catch {
    throw invalidArgument("page_token is not valid: pass the next_page_token of the previous response");
  }
}

const notYet = (what: string, _issue: number) => () => {
  throw new ConnectError(
    `${what} is part of the contract but not implemented by this controller yet`,
    Code.Unimplemented,
  );
};

/** Streams rows changed since the watch began, polling the database so any controller replica sees every change. */
async function* watchChanges<R extends { id: string; updatedAt: Date }, O>(
  ctx: ControllerContext,
  signal: AbortSignal,
  initial: R[],
  changedSince: (since: Date) => Promise<R[]>,
  toMessage: (row: R, first: boolean) => O,
): AsyncGenerator<O> {
  const seen = new Map<string, number>();
  let since = new Date(Date.now() - 1000);
  for (const r of initial) {
    seen.set(r.id, r.updatedAt.getTime());
    yield toMessage(r, true);
  }
  while (!signal.aborted) {
    await ctx.waitForChange(500, signal);
    if (signal.aborted) break;
    const rows = await changedSince(new Date(since.getTime() - 2000));
    for (const r of rows) {
      const t = r.updatedAt.getTime();
      if ((seen.get(r.id) ?? -1) >= t) continue;
      seen.set(r.id, t);
      if (t > since.getTime()) since = r.updatedAt;
      yield toMessage(r, false);
    }
  }
}

export function createRoutes(ctx: ControllerContext) {
  return (router: ConnectRouter) => {
    router.service(VolumeService, {
      async createVolume(req, hc) {
        const out = await createVolume(ctx, req, actorOf(hc));
        return {
          volume: out.volume ? volumeToWire(out.volume) : undefined,
          operation: out.operation ? operationToWire(out.operation) : undefined,
          placement: placementToWire(out.placement),
        };
      },
      async createVolumeGroup(req, hc) {
        const out = await createVolumeGroup(ctx, req, actorOf(hc));
        return {
          volumes: out.map((o) => ({
            volume: o.volume ? volumeToWire(o.volume) : undefined,
            operation: o.operation ? operationToWire(o.operation) : undefined,
            placement: placementToWire(o.placement),
          })),
        };
      },
      async getVolume(req) {
        return { volume: volumeToWire(await resolveVolume(ctx.sql, req.volume)) };
      },
      async listVolumes(req) {
        const limit = pageSize(req.pageSize);
        const state = req.state ? volumeStates.domain(req.state) : undefined;
        const rows = await listVolumes(ctx.sql, {
          ...(req.poolId ? { poolId: req.poolId } : {}),
          ...(req.hostId ? { hostId: req.hostId } : {}),
          ...(state ? { state } : {}),
          namePrefix: req.namePrefix,
          labels: req.labels,
          showDeleted: req.showDeleted,
          after: after(req.pageToken),
          limit,
        });
        const p = page(rows, limit);
        return { volumes: p.rows.map(volumeToWire), nextPageToken: p.next };
      },
      async deleteVolume(req, hc) {
        const out = await deleteVolume(ctx, req, actorOf(hc));
        return {
          volume: volumeToWire(out.volume),
          operation: out.operation ? operationToWire(out.operation) : undefined,
        };
      },
      async resizeVolume(req, hc) {
        const out = await resizeVolume(ctx, req, actorOf(hc));
        return {
          volume: volumeToWire(out.volume),
          operation: out.operation ? operationToWire(out.operation) : undefined,
        };
      },
      async cloneVolume(req, hc) {
        const out = await cloneVolume(ctx, req, actorOf(hc));
        return {
          volume: volumeToWire(out.volume),
          operation: out.operation ? operationToWire(out.operation) : undefined,
        };
      },
      async *watchVolumes(req, hc) {
        try {
          const filter: { id?: string; poolId?: string } = {};
          if (req.volume) filter.id = (await resolveVolume(ctx.sql, req.volume)).id;
          if (req.poolId) filter.poolId = req.poolId;
          const initial = filter.id
            ? [await resolveVolume(ctx.sql, filter.id)]
            : await listVolumes(ctx.sql, {
                ...(filter.poolId ? { poolId: filter.poolId } : {}),
                limit: 10_000,
              });
          yield* watchChanges(
            ctx,
            hc.signal,
            initial,
            (since) => volumesChangedSince(ctx.sql, since, filter),
            (v, first) => ({
              type: first ? VolumeEventType.SNAPSHOT : VolumeEventType.CHANGED,
              volume: volumeToWire(v),
            }),
          );
        } catch (err) {
          if (hc.signal.aborted) return;
          throw toConnectError(err);
        }
      },
    });

    router.service(HostService, {
      async listHosts(req) {
        const limit = pageSize(req.pageSize);
        const state = req.state === HostState.UP ? "up" : req.state === HostState.DOWN ? "down" : undefined;
        const rows = await listHosts(ctx.sql, {
          ...(state ? { state } : {}),
          zone: req.zone,
          after: after(req.pageToken),
          limit,
        });
        const counts = await countsByHost(ctx.sql);
        const p = page(rows, limit);
        return { hosts: p.rows.map((h) => hostToWire(h, counts.get(h.id))), nextPageToken: p.next };
      },
      async getHost(req) {
        const h = await getHost(ctx.sql, validateName("host", req.hostId));
        if (!h) throw notFound(`host ${req.hostId} not found: list hosts with \`stowctl host list\``);
        return { host: hostToWire(h, (await countsByHost(ctx.sql)).get(h.id)) };
      },
      async setHostSchedulable(req, hc) {
        const h = await ctx.sql.begin(async (tx) => {
          const row = await setHostSchedulable(
            tx,
            validateName("host", req.hostId),
            req.schedulable,
            req.reason,
          );
          if (!row) throw notFound(`host ${req.hostId} not found`);
          await writeAudit(tx, {
            actor: actorOf(hc),
            action: "SetHostSchedulable",
            target: row.id,
            request: { schedulable: req.schedulable, reason: req.reason },
            outcome: "ok",
          });
          return row;
        });
        return { host: hostToWire(h) };
      },
    });

    router.service(PoolService, {
      async listPools(req) {
        const limit = pageSize(req.pageSize);
        const kind = req.kind ? poolKinds.domain(req.kind) : undefined;
        const rows = await listPools(ctx.sql, {
          hostId: req.hostId,
          ...(kind ? { kind } : {}),
          after: after(req.pageToken),
          limit,
        });
        const zones = new Map((await listHosts(ctx.sql, { limit: 100_000 })).map((h) => [h.id, h.zone]));
        const p = page(rows, limit);
        return { pools: p.rows.map((r) => poolToWire(r, zones.get(r.hostId))), nextPageToken: p.next };
      },
      async getPool(req) {
        const p = await getPool(ctx.sql, validatePoolRef(req.poolId));
        if (!p) throw notFound(`pool ${req.poolId} not found: list pools with \`stowctl pool list\``);
        return { pool: poolToWire(p, (await getHost(ctx.sql, p.hostId))?.zone) };
      },
      async setPoolDraining(req, hc) {
        const p = await ctx.sql.begin(async (tx) => {
          const row = await setPoolDraining(tx, validatePoolRef(req.poolId), req.draining);
          if (!row) throw notFound(`pool ${req.poolId} not found`);
          await writeAudit(tx, {
            actor: actorOf(hc),
            action: "SetPoolDraining",
            target: row.id,
            request: { draining: req.draining, reason: req.reason },
            outcome: "ok",
          });
          return row;
        });
        return { pool: poolToWire(p) };
      },
    });

    router.service(PlacementService, {
      async explainPlacement(req) {
        const r = placementRequestFromWire(req.volume);
        await checkConstraintTargets(ctx.sql, r);
        const d = await decide(ctx, r);
        return { feasible: d.feasible, placement: placementToWire(d) };
      },
      async explainGroupPlacement(req) {
        if (req.volumes.length === 0)
          throw invalidArgument("volumes is empty: a group needs at least one volume");
        const reqs = req.volumes.map((v) => placementRequestFromWire(v));
        for (const r of reqs) await checkConstraintTargets(ctx.sql, r);
        const g = await decideGroup(ctx, reqs);
        return { feasible: g.feasible, placements: g.decisions.map(placementToWire), summary: g.summary };
      },
    });

    router.service(OperationService, {
      async getOperation(req) {
        const o = await getOperation(ctx.sql, req.operationId);
        if (!o) throw notFound(`operation ${req.operationId} not found`);
        return { operation: operationToWire(o) };
      },
      async listOperations(req) {
        const limit = pageSize(req.pageSize);
        const state = req.state ? operationStates.domain(req.state) : undefined;
        const volumeId = req.volumeId ? (await resolveVolume(ctx.sql, req.volumeId)).id : "";
        const rows = await listOperations(ctx.sql, {
          volumeId,
          hostId: req.hostId,
          ...(state ? { state } : {}),
          after: after(req.pageToken),
          limit,
        });
        const p = page(rows, limit);
        return { operations: p.rows.map(operationToWire), nextPageToken: p.next };
      },
      async *watchOperations(req, hc) {
        try {
          const filter: { id?: string; volumeId?: string } = {};
          if (req.operationId) filter.id = req.operationId;
          if (req.volumeId) filter.volumeId = (await resolveVolume(ctx.sql, req.volumeId)).id;
          const initial = await listOperations(ctx.sql, {
            ...(filter.volumeId ? { volumeId: filter.volumeId } : {}),
            limit: 1000,
          });
          const first = filter.id ? initial.filter((o) => o.id === filter.id) : initial;
          if (filter.id && first.length === 0) {
            const o = await getOperation(ctx.sql, filter.id);
            if (!o) throw notFound(`operation ${filter.id} not found`);
            first.push(o);
          }
          yield* watchChanges(
            ctx,
            hc.signal,
            first,
            (since) => operationsChangedSince(ctx.sql, since, filter),
            (o) => ({ operation: operationToWire(o) }),
          );
        } catch (err) {
          if (hc.signal.aborted) return;
          throw toConnectError(err);
        }
      },
    });

    router.service(AgentService, {
      registerAgent: (req) => registerAgent(ctx, req),
    });

    const snapshotReply = (out: { snapshot: SnapshotRow; operation?: OperationRow }) => ({
      snapshot: snapshotToWire(out.snapshot),
      operation: out.operation ? operationToWire(out.operation) : undefined,
    });
    router.service(SnapshotService, {
      createSnapshot: async (req, hc) => snapshotReply(await createSnapshot(ctx, req, actorOf(hc))),
      async getSnapshot(req) {
        const v = await resolveVolume(ctx.sql, req.volume);
        return { snapshot: snapshotToWire(await resolveSnapshot(ctx.sql, v, req.snapshot)) };
      },
      async listSnapshots(req) {
        const v = await resolveVolume(ctx.sql, req.volume);
        const limit = pageSize(req.pageSize);
        const rows = await listSnapshots(ctx.sql, v.id, { after: after(req.pageToken), limit });
        const clones = await ctx.sql<{ sourceSnapshotId: string; n: number }[]>`
          select source_snapshot_id, count(*)::int as n from volumes
          where source_volume_id = ${v.id} and source_snapshot_id <> '' and state <> 'deleted' group by source_snapshot_id`;
        const count = new Map(clones.map((c) => [c.sourceSnapshotId, c.n]));
        const p = page(rows, limit);
        return {
          snapshots: p.rows.map((s) => snapshotToWire(s, count.get(s.id) ?? 0)),
          nextPageToken: p.next,
        };
      },
      deleteSnapshot: async (req, hc) => snapshotReply(await deleteSnapshot(ctx, req, actorOf(hc))),
      revertSnapshot: async (req, hc) => snapshotReply(await revertSnapshot(ctx, req, actorOf(hc))),
    });
    router.service(ExportService, {
      createExport: notYet("CreateExport", 4),
      getExport: notYet("GetExport", 4),
      listExports: notYet("ListExports", 4),
      deleteExport: notYet("DeleteExport", 4),
    });
    router.service(MigrationService, {
      planMigration: notYet("PlanMigration", 6),
      prepareMigration: notYet("PrepareMigration", 6),
      commitMigration: notYet("CommitMigration", 6),
      abortMigration: notYet("AbortMigration", 6),
      getMigration: notYet("GetMigration", 6),
      listMigrations: notYet("ListMigrations", 6),
    });
  };
}
