import { THIN_KINDS } from "@stowage/core";
import type { PoolCandidate } from "./types.js";

/**
 * The capacity rule, the same as `fits()` in packages/store/src/ledger.ts (whose conditional UPDATE decides;
 * this is the scheduler's reading of it on its in-memory view):
 *
 *   allocated + reserved + request <= floor(total x overcommit_ratio) - total x reserved_percent
 *   thick pools also:  reserved + request <= free physical bytes - total x reserved_percent
 *   thin pools also:   used physical bytes stay at or under max_used_percent of total (the physical floor)
 *
 * (The ledger's `max_volumes` condition is the scheduler's max-volumes filter, in filters.ts.)
 * Thin follows from the pool's kind (core's THIN_KINDS). Only `reserved` moves while the scheduler places, so
 * everything else is folded into one headroom per pool when the columns are built, and the room left for a
 * request is `headroom - reserved`.
 */

/** Bytes of the pool's size kept out of reach of new volumes (Cinder's reserved_percentage). */
function reservedShare(p: PoolCandidate): number {
  return (Number(p.totalBytes) * (p.reservedPercent ?? 0)) / 100;
}

/** What the pool may provision: its size times the overcommit ratio (thin pools promise more than they hold). */
export function provisionLimit(p: PoolCandidate): number {
  return Math.floor(Number(p.totalBytes) * p.overcommitRatio);
}

/**
 * The bytes the pool could take with nothing reserved: the provisioning limit net of the reserved share and of
 * what its volumes hold; thick pools also no more than their free physical bytes net of the reserved share.
 */
export function headroom(p: PoolCandidate): number {
  const share = reservedShare(p);
  const provision = provisionLimit(p) - share - Number(p.allocatedBytes);
  if (THIN_KINDS.has(p.kind)) return provision;
  const physical = Number(p.freeBytes) - share;
  return physical < provision ? physical : provision;
}

/** Thin pools only: physical use is over the pool's floor, so nothing more is placed there. */
export function overPhysicalFloor(p: PoolCandidate): boolean {
  return THIN_KINDS.has(p.kind) && Number(p.usedBytes) * 100 > Number(p.totalBytes) * p.maxUsedPercent;
}

/** The bytes a request may take from a pool: its headroom less what is reserved on it now. */
export function room(headroomBytes: number, reservedBytes: number): number {
  return headroomBytes - reservedBytes;
}

/** The provisioning limit a capacity refusal quotes: the limit net of the reserved share. */
export function quotedLimit(p: PoolCandidate): number {
  return provisionLimit(p) - reservedShare(p);
}
