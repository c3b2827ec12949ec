/**
 * Command deadlines. Every command an agent receives carries one (`AgentCommand.deadline`): the agent does not
 * start it after that instant and answers `deadline_exceeded` instead. The controller gives up on an operation
 * without a result at its time to live (STOWAGE_RESERVATION_TTL_MS after it was written): it fails it and
 * releases what it holds (the reconciler). The deadline comes a margin before that, for clock skew between the
 * controller and its hosts and for a command that started just before it: a refusal, or a success that started
 * in time, usually arrives before the controller gives up; one that arrives later is a late result
 * (results.ts), which is applied or reported, never dropped silently.
 */

/** STOWAGE_RESERVATION_TTL_MS's default, for commands written outside a controller's transaction (tests). */
export const DEFAULT_OPERATION_TTL_MS = 15 * 60_000;

/** The margin between a command's deadline and its operation's time to live: a fifth of it, at most a minute. */
export function deadlineMarginMs(ttlMs: number): number {
  return Math.min(60_000, Math.floor(ttlMs / 5));
}

/** How long after it is written a command may still be started. */
export function commandDeadlineMs(ttlMs: number): number {
  return ttlMs - deadlineMarginMs(ttlMs);
}
