import { notFound, type PoolKind } from "@stowage/core";
import {
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

export interface PoolInZone {
  pool: PoolRow;
  /** The zone of the pool's host ("" when the host has none). */
  zone: string;
}

/** One page of pools, each with its host's zone (looked up for that page's hosts only). */
export async function listPoolsPage(
  ctx: ControllerContext,
  f: { hostId: string; kind?: PoolKind; after: string; limit: number },
): Promise<PoolInZone[]> {
  const rows = await listPools(ctx.sql, f);
  const zones = await zonesOfHosts(
    ctx.sql,
    rows.map((p) => p.hostId),
  );
  return rows.map((pool) => ({ pool, zone: zones.get(pool.hostId) ?? "" }));
}

export async function describePool(ctx: ControllerContext, ref: string): Promise<PoolInZone> {
  const pool = await getPool(ctx.sql, validatePoolRef(ref));
  if (!pool) throw notFound(`pool ${ref} not found: list pools with \`stowctl pool list\``);
  return { pool, zone: (await getHost(ctx.sql, pool.hostId))?.zone ?? "" };
}

/** Drains a pool (no new volumes are placed in it) or opens it again, with the audit entry in the same transaction. */
export async function setPoolDraining(
  ctx: ControllerContext,
  req: { poolId: string; draining: boolean; reason: string },
  actor: string,
): Promise<PoolRow> {
  const id = validatePoolRef(req.poolId);
  const request = { draining: req.draining, reason: req.reason };
  return mutateAudited(ctx, { actor, action: "SetPoolDraining", request }, async (tx) => {
    const pool = await writeDraining(tx, id, req.draining);
    if (!pool) throw notFound(`pool ${req.poolId} not found`);
    return pool;
  });
}
