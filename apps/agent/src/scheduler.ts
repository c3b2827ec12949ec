/**
 * Which held operation runs next: operations on different volumes run in parallel, at most `poolConcurrency` per
 * pool and `maxConcurrency` held in all (running or waiting); operations on one volume run one at a time, in
 * the order they arrived (docs/architecture.md, the agent).
 */
export interface OperationJob {
  /** One at a time per key: the command's volume id (snapshot operations key by their volume too). */
  key: string;
  pool: string;
  run: () => Promise<void>;
  /** Hands the job back without running it (a shutdown before its turn). */
  cancel: () => void;
}

export interface OperationSchedulerOptions {
  poolConcurrency: number;
  maxConcurrency: number;
}

export interface OperationScheduler {
  /** Takes a job; it runs when its volume and its pool have room. */
  submit(job: OperationJob): void;
  /** Slots free for new jobs: `maxConcurrency` minus the jobs held (running or waiting). */
  free(): number;
  held(): number;
  running(): number;
  /** Resolves the next time a job finishes (or is handed back). */
  slotFreed(): Promise<void>;
  /**
   * Takes no more jobs, hands back every job not started (`cancel`), and waits up to `graceMs` for the running
   * ones; resolves with how many were still running then.
   */
  drain(graceMs: number): Promise<number>;
}

export function createOperationScheduler(o: OperationSchedulerOptions): OperationScheduler {
  const waiting: OperationJob[] = [];
  const busyKeys = new Set<string>();
  const runningPerPool = new Map<string, number>();
  const runningJobs = new Set<Promise<void>>();
  let freed: { promise: Promise<void>; resolve: () => void } | undefined;
  let draining = false;

  const notifyFreed = () => {
    freed?.resolve();
    freed = undefined;
  };

  const canStart = (j: OperationJob) =>
    !busyKeys.has(j.key) && (runningPerPool.get(j.pool) ?? 0) < o.poolConcurrency;

  const start = (j: OperationJob) => {
    busyKeys.add(j.key);
    runningPerPool.set(j.pool, (runningPerPool.get(j.pool) ?? 0) + 1);
    const p: Promise<void> = j
      .run()
      .catch(() => {})
      .finally(() => {
        busyKeys.delete(j.key);
        runningPerPool.set(j.pool, (runningPerPool.get(j.pool) ?? 1) - 1);
        runningJobs.delete(p);
        if (!draining) pump();
        notifyFreed();
      });
    runningJobs.add(p);
  };

  /** Starts, in arrival order, every waiting job that has room; a job behind a busy volume keeps its place. */
  const pump = () => {
    for (let i = 0; i < waiting.length; ) {
      const j = waiting[i]!;
      if (canStart(j)) {
        waiting.splice(i, 1);
        start(j);
      } else i++;
    }
  };

  return {
    submit(job) {
      if (draining) {
        job.cancel();
        return;
      }
      waiting.push(job);
      pump();
    },
    free: () => (draining ? 0 : Math.max(o.maxConcurrency - waiting.length - runningJobs.size, 0)),
    held: () => waiting.length + runningJobs.size,
    running: () => runningJobs.size,
    slotFreed() {
      freed ??= (() => {
        let resolve!: () => void;
        const promise = new Promise<void>((r) => {
          resolve = r;
        });
        return { promise, resolve };
      })();
      return freed.promise;
    },
    async drain(graceMs) {
      draining = true;
      for (const j of waiting.splice(0)) j.cancel();
      notifyFreed();
      if (runningJobs.size === 0) return 0;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all(runningJobs),
        new Promise<void>((r) => {
          timer = setTimeout(r, graceMs);
        }),
      ]);
      clearTimeout(timer);
      return runningJobs.size;
    },
  };
}
