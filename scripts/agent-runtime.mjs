// How an agent's node runs: the flags and environment that keep it small on a hypervisor, whose memory belongs to
// the VMs. `npm run up` and `npm run bench:e2e` start agents with these; deploy/systemd/stowage-agent.service
// carries the same. Why each one: docs/operating.md, "The agent's memory".

/** V8 flags, before the script on node's command line. */
export const AGENT_NODE_ARGS = [
  // A 1 MiB young generation instead of up to 16 MiB per semi-space: the agent allocates little per operation.
  "--max-semi-space-size=1",
  // Grow the old generation in smaller steps and collect sooner.
  "--optimize-for-size",
  // Lets the agent run one full collection when it falls idle (apps/agent/src/idle-gc.ts).
  "--expose-gc",
];

/** Environment: one malloc arena, so the thread pool's file I/O does not grow a heap per thread. */
export const AGENT_ENV = { MALLOC_ARENA_MAX: "1" };
