import type { PoolKind, VolumeFormat } from "@stowage/core";

/** One pool as the scheduler sees it: the agent's report, the ledger's numbers and its host's state. */
export interface PoolCandidate {
  id: string;
  hostId: string;
  kind: PoolKind;
  zone: string;
  numaNode: number | null;
  labels: Record<string, string>;
  formats: readonly VolumeFormat[];
  healthy: boolean;
  draining: boolean;
  hostUp: boolean;
  hostSchedulable: boolean;
  totalBytes: bigint;
  usedBytes: bigint;
  freeBytes: bigint;
  allocatedBytes: bigint;
  reservedBytes: bigint;
  overcommitRatio: number;
  /** Thin pools: physical use must stay at or under this percentage of total. */
  maxUsedPercent: number;
  /** Percentage of the pool's size kept out of reach of new volumes (Cinder's reserved_percentage). */
  reservedPercent?: number;
  volumeCount: number;
  /** At most this many volumes in the pool; 0 or absent: no limit. */
  maxVolumes?: number;
  /** Operations in flight on the pool (pending or sent), for the pool-load scorer. */
  load?: number;
  /**
   * A shared pool's other hosts (netfs: the hosts attached to the same share), each with its own state: a
   * request pinned to one of them may land here, through that host; an unpinned one goes through the owner, or
   * through an attached host that is up when the owner is not.
   */
  attached?: readonly AttachedHost[];
}

/** A host that reaches a shared pool besides its owner, as placement judges it. */
export interface AttachedHost {
  hostId: string;
  hostUp: boolean;
  hostSchedulable: boolean;
  /** The host's own health check of the pool. */
  healthy: boolean;
  /** The pool's name in that host's config (what its commands name); the scheduler does not read it. */
  name?: string;
}

export interface NumaNodeInfo {
  id: number;
  cpuList: string;
}

/** The cluster at one instant: the scheduler's in-memory view. The ledger in PostgreSQL remains the truth. */
export interface ClusterView {
  pools: readonly PoolCandidate[];
  /** NUMA nodes per host, for the CPU set of the answer. */
  numa: ReadonlyMap<string, readonly NumaNodeInfo[]>;
  /** Where the live volumes of each anti-affinity group are: host ids and zones. */
  groups: ReadonlyMap<string, readonly { hostId: string; zone: string }[]>;
}

export type AntiAffinityScope = "host" | "zone";
export type Strategy = "spread" | "binpack";

export interface PlacementConstraints {
  poolKinds?: readonly PoolKind[];
  hostId?: string;
  poolId?: string;
  zone?: string;
  poolLabels?: Record<string, string>;
  numa?: { hostId: string; node?: number; required: boolean };
  antiAffinityGroup?: string;
  antiAffinityScope?: AntiAffinityScope;
  strategy?: Strategy;
}

export interface PlacementRequest {
  name: string;
  sizeBytes: bigint;
  format: VolumeFormat;
  constraints: PlacementConstraints;
}

/** The disks of one VM, placed all or nothing. */
export interface GroupPlacementDecision {
  feasible: boolean;
  /** In the order of the requests. */
  decisions: PlacementDecision[];
  summary: string;
}

export interface ScoreComponent {
  scorer: string;
  value: number;
  weight: number;
}

export interface CandidateVerdict {
  poolId: string;
  hostId: string;
  feasible: boolean;
  refusedBy: string;
  reason: string;
  score: number;
  scores: ScoreComponent[];
}

export interface PlacementDecision {
  feasible: boolean;
  poolId: string;
  hostId: string;
  numaNode: number | null;
  cpuSet: string;
  /**
   * Explained: every pool, feasible candidates best first, then the refused ones. Not explained: the best few
   * feasible pools (scheduler.ts TOP_CANDIDATES), best first.
   */
  candidates: CandidateVerdict[];
  summary: string;
  /** How many pools each filter refused (always counted, also without an explanation). */
  refusals?: Map<string, number>;
  /** How many pools were judged (the view's size). */
  poolsConsidered?: number;
}
