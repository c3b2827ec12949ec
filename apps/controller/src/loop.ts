import type { Logger } from "@stowage/telemetry";

export interface Loop {
  /** Starts a round at once when none runs; during a round, queues one more (any number of kicks coalesce). */
  kick(): void;
  /** Waits for the round in progress and runs no more. */
  stop(): Promise<void>;
  /** Rounds run so far. */
  readonly rounds: number;
}

/**
 * Runs `fn` at once, then every `ms` and whenever kicked, until stopped: one round at a time, kicks during a round
 * coalesce into one more round right after it, errors are logged, not fatal. The relay and the reconciler run on it.
 */
export function startLoop(name: string, ms: number, fn: () => Promise<unknown>, log: Logger): Loop {
  let timer: NodeJS.Timeout | undefined;
  let running = false;
  let again = false;
  let stopped = false;
  let rounds = 0;
  let current: Promise<void> = Promise.resolve();
  const run = () => {
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    clearTimeout(timer);
    rounds++;
    current = fn()
      .then(() => {})
      .catch((err) => log.warn({ err, loop: name }, `${name} round failed`))
      .finally(() => {
        running = false;
        if (stopped) return;
        if (again) {
          again = false;
          setImmediate(run);
        } else timer = setTimeout(run, ms);
      });
  };
  timer = setTimeout(run, 0);
  return {
    kick: run,
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await current;
    },
    get rounds() {
      return rounds;
    },
  };
}
