import { describe, expect, it } from "vitest";
import { createOperationScheduler, type OperationJob } from "./scheduler.js";

/** A job that runs until released, recording when it started. */
function job(key: string, pool: string, log: string[]) {
  let release!: () => void;
  const done = new Promise<void>((r) => {
    release = r;
  });
  const j: OperationJob & { release: () => void; cancelled: boolean } = {
    key,
    pool,
    cancelled: false,
    release,
    run: async () => {
      log.push(`start ${key}`);
      await done;
      log.push(`end ${key}`);
    },
    cancel: () => {
      j.cancelled = true;
    },
  };
  return j;
}

const tick = () => new Promise((r) => setImmediate(r));

describe("operation scheduler", () => {
  it("runs jobs of different volumes at once, up to the pool's bound, and the next when one finishes", async () => {
    const log: string[] = [];
    const s = createOperationScheduler({ poolConcurrency: 2, maxConcurrency: 8 });
    const jobs = ["v1", "v2", "v3"].map((v) => job(v, "p", log));
    const other = job("w1", "q", log);
    for (const j of [...jobs, other]) s.submit(j);
    expect(log).toEqual(["start v1", "start v2", "start w1"]);
    expect([s.running(), s.held(), s.free()]).toEqual([3, 4, 4]);
    jobs[0]!.release();
    await tick();
    expect(log).toContain("start v3");
    expect(s.held()).toBe(3);
  });

  it("runs one job at a time per volume, in arrival order, without holding up other volumes", async () => {
    const log: string[] = [];
    const s = createOperationScheduler({ poolConcurrency: 4, maxConcurrency: 8 });
    const a1 = job("v1", "p", log);
    const a2 = job("v1", "p", log);
    const b = job("v2", "p", log);
    for (const j of [a1, a2, b]) s.submit(j);
    expect(log).toEqual(["start v1", "start v2"]);
    a1.release();
    await tick();
    expect(log).toEqual(["start v1", "start v2", "end v1", "start v1"]);
    a2.release();
    b.release();
  });

  it("counts waiting jobs as held, so free slots never let more in than maxConcurrency", async () => {
    const s = createOperationScheduler({ poolConcurrency: 1, maxConcurrency: 3 });
    const log: string[] = [];
    for (const v of ["v1", "v2", "v3"]) s.submit(job(v, "p", log));
    expect([s.running(), s.held(), s.free()]).toEqual([1, 3, 0]);
    const freed = s.slotFreed();
    let resolved = false;
    void freed.then(() => {
      resolved = true;
    });
    await tick();
    expect(resolved).toBe(false);
  });

  it("on drain hands back the jobs not started and waits for the running ones up to the grace", async () => {
    const log: string[] = [];
    const s = createOperationScheduler({ poolConcurrency: 1, maxConcurrency: 4 });
    const running = job("v1", "p", log);
    const waiting = job("v2", "p", log);
    s.submit(running);
    s.submit(waiting);
    const t0 = Date.now();
    expect(await s.drain(200)).toBe(1);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(150);
    expect(waiting.cancelled).toBe(true);
    expect(log).toEqual(["start v1"]);
    const late = job("v3", "p", log);
    s.submit(late);
    expect(late.cancelled).toBe(true);
    expect(s.free()).toBe(0);
    running.release();
    await tick();
    expect(await s.drain(200)).toBe(0);
  });
});
