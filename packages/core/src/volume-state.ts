import { failedPrecondition } from "./errors.js";

export const VOLUME_STATES = ["creating", "available", "resizing", "deleting", "deleted", "error"] as const;
export type VolumeState = (typeof VOLUME_STATES)[number];

/**
 * The volume state machine. `error` may be retried by deleting; `deleted` is final. Staying in a state is always
 * allowed, so that redelivered results converge instead of failing.
 */
const TRANSITIONS: Record<VolumeState, readonly VolumeState[]> = {
  creating: ["available", "error", "deleting"],
  available: ["resizing", "deleting"],
  resizing: ["available", "error"],
  deleting: ["deleted", "error"],
  deleted: [],
  error: ["deleting", "available"],
};

export function canTransition(from: VolumeState, to: VolumeState): boolean {
  return from === to || TRANSITIONS[from].includes(to);
}

export function assertTransition(from: VolumeState, to: VolumeState, volume = "volume"): void {
  if (!canTransition(from, to)) {
    throw failedPrecondition(`${volume} is ${from} and cannot become ${to}`, { from, to });
  }
}

/** States in which a volume holds capacity in the ledger. */
export function holdsCapacity(state: VolumeState): boolean {
  return state !== "deleted";
}
