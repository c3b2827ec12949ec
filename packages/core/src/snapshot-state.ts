import { defineStateMachine } from "./state-machine.js";

export const SNAPSHOT_STATES = ["creating", "available", "deleting", "deleted", "error"] as const;
export type SnapshotState = (typeof SNAPSHOT_STATES)[number];

/**
 * The snapshot state machine: a snapshot may be deleted in any live state (a failed or unfinished one too);
 * `deleted` is final. Staying in a state is allowed, as for volumes.
 */
export const SNAPSHOT_STATE_MACHINE = defineStateMachine<SnapshotState>(
  {
    creating: ["available", "error", "deleting"],
    available: ["deleting"],
    deleting: ["deleted", "error"],
    deleted: [],
    error: ["deleting"],
  },
  { stay: true },
);
