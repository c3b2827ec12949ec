import type { StateMachine } from "@stowage/core";
import { failedPrecondition } from "@stowage/core";
import type { Queryable } from "./db.js";

/** A state change being written: the state the row was read in, and the one it moves to. */
export interface StateChange<S extends string> {
  from: S;
  to: S;
}

/**
 * Checks a state change against its machine, then writes it with `write` (which guards on `from` and returns
 * no row when the row has moved on since it was read).
 */
export async function transitionRow<S extends string, R>(
  machine: StateMachine<S>,
  subject: string,
  row: { state: S },
  to: S,
  write: (change: StateChange<S>) => Promise<R[]>,
): Promise<R> {
  machine.assertTransition(row.state, to, subject);
  const [written] = await write({ from: row.state, to });
  if (!written) throw failedPrecondition(`${subject} is no longer ${row.state}: read it again and retry`);
  return written;
}

/** The SET part of a state change (with deleted_at stamped on `deleted`); empty without one. */
export function setState<S extends string>(sql: Queryable, change?: StateChange<S>) {
  return change
    ? sql`state = ${change.to}, deleted_at = case when ${change.to} = 'deleted' then now() else deleted_at end,`
    : sql``;
}

/** The WHERE guard of a state change: the row must still be in the state it was read in. */
export function inState<S extends string>(sql: Queryable, change?: StateChange<S>) {
  return change ? sql`and state = ${change.from}` : sql``;
}
