import { defineStateMachine } from "./state-machine.js";

export const VOLUME_STATES = [
  "creating",
  "available",
  "resizing",
  "reverting",
  "deleting",
  "deleted",
  "error",
] as const;
export type VolumeState = (typeof VOLUME_STATES)[number];

/**
 * The volume state machine. A failed resize or revert leaves the volume `available` (as it was) with the error
 * kept; `error` may be retried by deleting; `deleted` is final. Staying in a state is always allowed, so that
 * redelivered results converge instead of failing.
 */
export const VOLUME_STATE_MACHINE = defineStateMachine<VolumeState>(
  {
    creating: ["available", "error", "deleting"],
    available: ["resizing", "reverting", "deleting"],
    resizing: ["available", "error"],
    reverting: ["available", "error"],
    deleting: ["deleted", "error"],
    deleted: [],
    error: ["deleting", "available"],
  },
  { stay: true },
);

export function canTransition(from: VolumeState, to: VolumeState): boolean {
  return VOLUME_STATE_MACHINE.canTransition(from, to);
}

/** Throws FAILED_PRECONDITION when the volume may not go from `from` to `to`. */
export function assertTransition(from: VolumeState, to: VolumeState, volume = "volume"): void {
  VOLUME_STATE_MACHINE.assertTransition(from, to, volume);
}

/** States in which a volume holds capacity in the ledger. */
export function holdsCapacity(state: VolumeState): boolean {
  return state !== "deleted";
}
