import { type Capability, notFound, requireCapability, requireWipe, type WipeMode } from "@stowage/core";
import { getPool, type Queryable, type VolumeRow } from "@stowage/store";
import type { ControllerContext } from "./context.js";

async function poolKindOf(tx: Queryable, volume: Pick<VolumeRow, "poolId">) {
  const pool = await getPool(tx, volume.poolId);
  if (!pool) throw notFound(`pool ${volume.poolId} not found`);
  return pool.kind;
}

/**
 * Refuses with FAILED_PRECONDITION what volumes of this volume's pool kind and format cannot do, from the
 * context's capability table (docs/architecture.md, "Capabilities"). Called before anything is written.
 */
export async function requireVolumeCapability(
  ctx: ControllerContext,
  tx: Queryable,
  volume: Pick<VolumeRow, "poolId" | "format">,
  capability: Capability,
): Promise<void> {
  requireCapability(await poolKindOf(tx, volume), volume.format, capability, ctx.capabilities);
}

/** Refuses a wipe mode this volume's pool kind and format does not offer (before anything is written). */
export async function requireVolumeWipe(
  ctx: ControllerContext,
  tx: Queryable,
  volume: Pick<VolumeRow, "poolId" | "format">,
  mode: WipeMode,
): Promise<void> {
  requireWipe(await poolKindOf(tx, volume), volume.format, mode, ctx.capabilities);
}
