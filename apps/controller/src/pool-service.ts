import { notFound, type PoolKind } from "@stowage/core";
import {
  attachedHostsOf,
  getHost,
  getPool,
  listPools,
  type PoolRow,
  setPoolDraining as writeDraining,
  zonesOfHosts,
} from "@stowage/store";
import type { ControllerContext } from "./context.js";
import { mutateAudited } from "./transaction.js";
import { validatePoolRef } from "./validate.js";

/** A pool row with the hosts attached to it besides its owner (a shared pool; empty for the others). */
export type PoolWithHosts = PoolRow & { attachedHostIds: string[] };

/** The rows with their attached hosts, read for the shared ones only (one query, none without a share). */
async function withAttachedHosts(ctx: ControllerContext, rows: PoolRow[]): Promise<PoolWithHosts[]> {
  const shared = rows.filter((p) => p.share !== "").map((p) => p.id);
  const attached = await attachedHostsOf(ctx.sql, shared);
  return rows.map((p) => ({ ...p, attachedHostIds: attached.get(p.id) ?? [] }));
}

export interface PoolInZone {
  pool: PoolWithHosts;
  /** The zone of the pool's host ("" when the host has none). */
  zone: string;
}

/**
 * One page of pools, each with its host's zone (looked up for that page's hosts only) and its attached hosts;
 * filtered by host, the shared pools the host is attached to are on its page too.
 */
export async function listPoolsPage(
  ctx: ControllerContext,
  f: { hostId: string; kind?: PoolKind; after: string; limit: number },
): Promise<PoolInZone[]> {
  const rows = await withAttachedHosts(ctx, await listPools(ctx.sql, f));
  const zones = await zonesOfHosts(
    ctx.sql,
    rows.map((p) => p.hostId),
  );
  return rows.map((pool) => ({ pool, zone: zones.get(pool.hostId) ?? "" }));
}

export async function describePool(ctx: ControllerContext, ref: string): Promise<PoolInZone> {
  const pool = await getPool(ctx.sql, validatePoolRef(ref));
  if (!pool) throw notFound(`pool ${ref} not found: list pools with \`stowctl pool list\``);
  const [withHosts] = await withAttachedHosts(ctx, [pool]);
  return { pool: withHosts!, zone: (await getHost(ctx.sql, pool.hostId))?.zone ?? "" };
}

/** Drains a pool (no new volumes are placed in it) or opens it again, with the audit entry in the same transaction. */
export async function setPoolDraining(
  ctx: ControllerContext,
  req: { poolId: string; draining: boolean; reason: string },
  actor: string,
): Promise<PoolWithHosts> {
  const id = validatePoolRef(req.poolId);
  const request = { draining: req.draining, reason: req.reason };
  return mutateAudited(ctx, { actor, action: "SetPoolDraining", request }, async (tx) => {
    const pool = await writeDraining(tx, id, req.draining);
    if (!pool) throw notFound(`pool ${req.poolId} not found`);
    return pool;
  }).then(async (pool) => (await withAttachedHosts(ctx, [pool]))[0]!);
}
