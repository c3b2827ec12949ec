import { type Capability, notFound, requireCapability, requireWipe, type WipeMode } from "@stowage/core";
import { getPool, type Queryable, type VolumeRow } from "@stowage/store";
import type { ControllerContext } from "./context.js";

/**
 * Refuses with FAILED_PRECONDITION what volumes of this volume's pool kind and format cannot do (a capability,
 * or a wipe mode), from the context's capability table (docs/architecture.md, "Capabilities"). Services call it
 * before they write anything.
 */
export async function requireVolumeCapability(
  ctx: ControllerContext,
  tx: Queryable,
  volume: Pick<VolumeRow, "poolId" | "format">,
  need: Capability | { wipe: WipeMode },
): Promise<void> {
  const pool = await getPool(tx, volume.poolId);
  if (!pool) throw notFound(`pool ${volume.poolId} not found`);
  if (typeof need === "string") requireCapability(pool.kind, volume.format, need, ctx.capabilities);
  else requireWipe(pool.kind, volume.format, need.wipe, ctx.capabilities);
}
