import { notFound, validateName } from "@stowage/core";
import {
  countsByHost,
  getHost,
  type HostRow,
  listHosts,
  setHostSchedulable as writeSchedulable,
} from "@stowage/store";
import type { ControllerContext } from "./context.js";
import { mutateAudited } from "./transaction.js";

export interface HostWithCounts {
  host: HostRow;
  counts?: { pools: number; volumes: number };
}

/** One page of hosts, each with its pool and volume counts. */
export async function listHostsPage(
  ctx: ControllerContext,
  f: { state?: "up" | "down"; zone: string; after: string; limit: number },
): Promise<HostWithCounts[]> {
  const rows = await listHosts(ctx.sql, f);
  const counts = await countsByHost(
    ctx.sql,
    rows.map((h) => h.id),
  );
  return rows.map((host) => ({ host, counts: counts.get(host.id) }));
}

export async function describeHost(ctx: ControllerContext, ref: string): Promise<HostWithCounts> {
  const host = await getHost(ctx.sql, validateName("host", ref));
  if (!host) throw notFound(`host ${ref} not found: list hosts with \`stowctl host list\``);
  return { host, counts: (await countsByHost(ctx.sql, [host.id])).get(host.id) };
}

/**
 * Cordons a host (no new volumes are placed on it) or makes it schedulable again, with the audit entry in the
 * same transaction.
 */
export async function setHostSchedulable(
  ctx: ControllerContext,
  req: { hostId: string; schedulable: boolean; reason: string },
  actor: string,
): Promise<HostRow> {
  const id = validateName("host", req.hostId);
  const request = { schedulable: req.schedulable, reason: req.reason };
  return mutateAudited(ctx, { actor, action: "SetHostSchedulable", request }, async (tx) => {
    const host = await writeSchedulable(tx, id, req.schedulable, req.reason);
    if (!host) throw notFound(`host ${req.hostId} not found`);
    return host;
  });
}
