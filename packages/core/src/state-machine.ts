import { failedPrecondition } from "./errors.js";

/**
 * A state machine over string states: which state may follow which. Every state change of a volume, snapshot
 * or operation is checked against one of these before it is written.
 */
export interface StateMachine<S extends string> {
  readonly states: readonly S[];
  canTransition(from: S, to: S): boolean;
  /** Throws FAILED_PRECONDITION naming `subject` when `from` may not become `to`. */
  assertTransition(from: S, to: S, subject: string): void;
  /** The states that may become `to`: the guard of a conditional UPDATE. */
  sourcesOf(to: S): S[];
}

/**
 * Builds a state machine from its edges. With `stay`, remaining in a state is always allowed, so that a
 * redelivered result converges instead of failing.
 */
export function defineStateMachine<S extends string>(
  edges: Readonly<Record<S, readonly S[]>>,
  { stay }: { stay: boolean },
): StateMachine<S> {
  const states = Object.keys(edges) as S[];
  const canTransition = (from: S, to: S) => (stay && from === to) || edges[from].includes(to);
  return {
    states,
    canTransition,
    assertTransition(from, to, subject) {
      if (!canTransition(from, to))
        throw failedPrecondition(`${subject} is ${from} and cannot become ${to}`, { from, to });
    },
    sourcesOf: (to) => states.filter((from) => canTransition(from, to)),
  };
}
