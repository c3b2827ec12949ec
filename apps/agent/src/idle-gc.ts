/**
 * Gives memory back once the agent falls idle (docs/operating.md, "The agent's memory"). A burst of operations
 * grows V8's old generation, and V8 collects it only when it needs the room, so an agent that worked for a while
 * and then sat idle kept several MiB of garbage resident for as long as it stayed idle. With `--expose-gc` (in
 * the agent's node flags), one full collection after `idleMs` without work returns it; nothing runs while the
 * agent works, and nothing runs twice for one idle spell. Without the flag it does nothing.
 */
export interface IdleCollector {
  /** Work happened (an operation finished, a full inventory was built). */
  note(): void;
  stop(): void;
}

export function startIdleCollector(o: {
  idleMs: number;
  /** What is running now (operations); a collection waits until it is 0. */
  busy: () => number;
  collect?: (() => void) | undefined;
  now?: () => number;
}): IdleCollector {
  const collect = o.collect ?? (globalThis as { gc?: () => void }).gc;
  if (!collect) return { note() {}, stop() {} };
  const now = o.now ?? Date.now;
  let dirty = false;
  let last = 0;
  const timer = setInterval(
    () => {
      if (!dirty || o.busy() > 0 || now() - last < o.idleMs) return;
      dirty = false;
      collect();
    },
    Math.max(100, Math.floor(o.idleMs / 2)),
  );
  timer.unref();
  return {
    note() {
      dirty = true;
      last = now();
    },
    stop() {
      clearInterval(timer);
    },
  };
}
