import { formatSize, THIN_KINDS } from "@stowage/core";
import type { PoolCandidate } from "./types.js";

export function isThin(pool: Pick<PoolCandidate, "kind">): boolean {
  return THIN_KINDS.has(pool.kind);
}

/** Provisioning ceiling: total x overcommit ratio (1 for thick pools unless configured). */
export function provisionLimit(pool: PoolCandidate): bigint {
  // Ratios are small decimals; scale to avoid float error on byte counts.
  return (pool.totalBytes * BigInt(Math.round(pool.overcommitRatio * 1_000_000))) / 1_000_000n;
}

/** Bytes that can still be provisioned in the pool. */
export function headroom(pool: PoolCandidate): bigint {
  const byRatio = provisionLimit(pool) - pool.allocatedBytes - pool.reservedBytes;
  if (isThin(pool)) return byRatio;
  const byFree = pool.freeBytes - pool.reservedBytes;
  return byRatio < byFree ? byRatio : byFree;
}

/**
 * Whether `bytes` fit, with a reason when not. The same rule as the ledger's conditional UPDATE in
 * packages/store (ledger.ts): the in-memory answer may be stale, the ledger decides.
 */
export function capacityRefusal(pool: PoolCandidate, bytes: bigint): string | null {
  if (
    isThin(pool) &&
    pool.totalBytes > 0n &&
    Number((pool.usedBytes * 10000n) / pool.totalBytes) / 100 > pool.maxUsedPercent
  ) {
    return `physical use ${Number((pool.usedBytes * 1000n) / pool.totalBytes) / 10}% is over the pool's ${pool.maxUsedPercent}% floor`;
  }
  const room = headroom(pool);
  if (room < bytes) {
    return `needs ${formatSize(bytes)}, ${formatSize(room < 0n ? 0n : room)} left (${formatSize(pool.allocatedBytes)} allocated + ${formatSize(pool.reservedBytes)} reserved of ${formatSize(provisionLimit(pool))})`;
  }
  return null;
}
