import type { OperationState } from "./domain.js";
import { defineStateMachine } from "./state-machine.js";

/**
 * The operation state machine: the relay sends a pending operation (and sends a sent one again when no result
 * came); a result finishes it once. A finished operation never changes again, so no state may stay put
 * implicitly: a second result for it is ignored.
 */
export const OPERATION_STATE_MACHINE = defineStateMachine<OperationState>(
  {
    pending: ["sent", "succeeded", "failed"],
    sent: ["sent", "succeeded", "failed"],
    succeeded: [],
    failed: [],
  },
  { stay: false },
);
