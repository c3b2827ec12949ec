import { createLogger } from "@stowage/telemetry";
import { postgresAvailable, type TestPostgres, testPostgres } from "@stowage/testkit";
import postgres from "postgres";
import { afterEach, describe, expect, it } from "vitest";
import {
  LEASE_APPLICATION_NAME,
  LEASE_LOCK_KEY,
  type Lease,
  type LeaseLock,
  type LeaseTiming,
  postgresLeaseLock,
  singleProcessLock,
  startLease,
} from "./lease.js";

const log = createLogger("lease-test", "silent");
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
const FAST: LeaseTiming = { retryMs: 50, checkMs: 30, ttlMs: 150 };

/** What a lease's callbacks saw: whether its loops run, and when they started and stopped. */
interface Seen {
  running: boolean;
  gauge: number;
  starts: number[];
  stops: number[];
}

/** Leases started in a test, stopped after it. */
const started: Lease[] = [];
afterEach(async () => {
  await Promise.all(started.splice(0).map((l) => l.stop()));
});

function lease(lock: LeaseLock, timing: Partial<LeaseTiming> = FAST): { lease: Lease; seen: Seen } {
  const seen: Seen = { running: false, gauge: -1, starts: [], stops: [] };
  const l = startLease({
    lock,
    log,
    timing,
    gauge: { set: (v) => (seen.gauge = v) },
    lead: () => {
      expect(seen.running).toBe(false);
      seen.running = true;
      seen.starts.push(performance.now());
    },
    follow: async () => {
      expect(seen.running).toBe(true);
      seen.running = false;
      seen.stops.push(performance.now());
      await pause(5); // the round in progress
    },
  });
  started.push(l);
  return { lease: l, seen };
}

async function until(what: string, fn: () => boolean, ms = 10_000): Promise<number> {
  const t0 = performance.now();
  while (!fn()) {
    if (performance.now() - t0 > ms) throw new Error(`not within ${ms} ms: ${what}`);
    await pause(5);
  }
  return performance.now() - t0;
}

/** A lock in memory shared by several "processes": `kill` drops its holder's session as a broken connection would. */
interface MemoryLock {
  lock: LeaseLock;
  /** held() never answers while set. */
  hang: boolean;
  /** Takes the lock away from whoever holds it, without telling them (an unlock on the server, say). */
  seize(): void;
  /** Drops the holder's session as a broken connection would, and tells it. */
  kill(): void;
}

function memoryLocks() {
  let owner: object | undefined;
  const make = () => {
    const me = {};
    const listeners = new Set<(why: string) => void>();
    const handle: MemoryLock = {
      hang: false,
      seize() {
        owner = me;
      },
      kill() {
        if (owner === me) owner = undefined;
        for (const fn of listeners) fn("connection closed (test)");
      },
      lock: {
        tryAcquire: async () => {
          owner ??= me;
          return owner === me;
        },
        held: () => (handle.hang ? new Promise<boolean>(() => {}) : Promise.resolve(owner === me)),
        release: async () => {
          if (owner === me) owner = undefined;
        },
        onLost: (fn: (why: string) => void) => {
          listeners.add(fn);
          return () => listeners.delete(fn);
        },
        close: async () => {},
      } satisfies LeaseLock,
    };
    return handle;
  };
  return { make, owner: () => owner };
}

describe("lease (in memory)", () => {
  it("leads at once on a single-process lock (PGlite), and stops its loops when stopped", async () => {
    const { lease: l, seen } = lease(singleProcessLock(), { ...FAST, ttlMs: 0 });
    await until("leading", () => seen.running);
    expect(l.leading).toBe(true);
    expect(seen.gauge).toBe(1);
    await l.stop();
    expect(seen.running).toBe(false);
    expect(seen.gauge).toBe(0);
    expect(l.leading).toBe(false);
  });

  it("lets exactly one of three lead, and another takes over only after the holder stopped", async () => {
    const locks = memoryLocks();
    const handles = [locks.make(), locks.make(), locks.make()];
    const leases = handles.map((h) => lease(h.lock));
    await until("one leads", () => leases.some((l) => l.seen.running));
    // Over a few checks, never two at once.
    for (let i = 0; i < 20; i++) {
      expect(leases.filter((l) => l.seen.running)).toHaveLength(1);
      await pause(10);
    }
    const k = leases.findIndex((l) => l.seen.running);
    const gaugeOf = leases.map((l) => l.seen.gauge);
    expect(gaugeOf.filter((g) => g === 1)).toHaveLength(1);

    // The holder's connection breaks: its loops stop in that very moment, before anyone could take the lock.
    const t0 = performance.now();
    handles[k]!.kill();
    expect(leases[k]!.seen.running).toBe(false);
    expect(leases[k]!.seen.gauge).toBe(0);
    await until("another leads", () => leases.some((l, i) => i !== k && l.seen.running));
    const next = leases.find((l) => l.seen.running)!;
    // It waited ttlMs after taking the lock.
    expect(next.seen.starts.at(-1)! - t0).toBeGreaterThanOrEqual(FAST.ttlMs);
    expect(next.seen.starts.at(-1)!).toBeGreaterThan(leases[k]!.seen.stops.at(-1)!);
    for (let i = 0; i < 10; i++) {
      expect(leases.filter((l) => l.seen.running)).toHaveLength(1);
      await pause(10);
    }
  });

  it("stops leading when a check does not answer within ttlMs, and gives up the lock", async () => {
    const locks = memoryLocks();
    const a = locks.make();
    const { seen } = lease(a.lock);
    await until("leading", () => seen.running);
    const t0 = performance.now();
    a.hang = true;
    const took = await until("stopped", () => !seen.running, 2000);
    expect(took).toBeLessThanOrEqual(FAST.ttlMs + 50);
    expect(performance.now() - t0).toBeGreaterThan(FAST.ttlMs - FAST.checkMs - 5);
    // It released the lock and, the checks answering again, leads again.
    a.hang = false;
    await until("leads again", () => seen.running);
    expect(seen.starts).toHaveLength(2);
  });

  it("stops its loops when the database says the lock is gone", async () => {
    const locks = memoryLocks();
    const a = locks.make();
    const b = locks.make();
    const la = lease(a.lock);
    await until("a leads", () => la.seen.running);
    // The lock moves to b without a's connection telling a; then b's lease starts and finds it its own.
    b.seize();
    const lb = lease(b.lock);
    // a's next check finds it gone within checkMs; b starts ttlMs after taking it, after a stopped.
    await until("a stops", () => !la.seen.running, 1000);
    await until("b leads", () => lb.seen.running);
    expect(lb.seen.starts[0]!).toBeGreaterThan(la.seen.stops[0]!);
  });
});

const noPostgres = postgresAvailable()
  ? ""
  : "no PostgreSQL: set STOWAGE_TEST_PG_URL (or install postgresql-15)";
describe.skipIf(noPostgres !== "")(
  `lease on PostgreSQL (advisory lock on a connection of its own)${noPostgres ? ` - skipped: ${noPostgres}` : ""}`,
  () => {
    let pg: TestPostgres;
    let admin: postgres.Sql;
    const open = async () => {
      pg = await testPostgres();
      admin = postgres(pg.url, { max: 1, onnotice: () => {} });
    };
    afterEach(async () => {
      await Promise.all(started.splice(0).map((l) => l.stop()));
      await admin?.end();
      await pg?.release();
    });
    const holders = () =>
      admin<{ pid: number; application_name: string }[]>`
        select l.pid, a.application_name from pg_locks l join pg_stat_activity a using (pid)
        where l.locktype = 'advisory' and l.objid = ${LEASE_LOCK_KEY} and l.objsubid = 1 and l.granted
          and a.datname = current_database()`;

    it("one of two leads; when its session is killed it stops at once and the other takes over", async () => {
      await open();
      const timing = { retryMs: 200, checkMs: 100, ttlMs: 500 };
      const a = lease(postgresLeaseLock(pg.url), timing);
      const b = lease(postgresLeaseLock(pg.url), timing);
      await until("one leads", () => a.seen.running || b.seen.running);
      await pause(300);
      expect([a, b].filter((x) => x.seen.running)).toHaveLength(1);
      const [leader, follower] = a.seen.running ? [a, b] : [b, a];
      const [held] = await holders();
      expect(held?.application_name).toBe(LEASE_APPLICATION_NAME);

      // The holder's session ends (as when its controller dies, or the connection breaks).
      const t0 = performance.now();
      await admin`select pg_terminate_backend(${held!.pid})`;
      await until("the holder stops", () => !leader.seen.running, 2000);
      await until("the other leads", () => follower.seen.running);
      expect(follower.seen.starts[0]!).toBeGreaterThan(leader.seen.stops[0]!);
      // Stopped at once (the connection's close), well before the other could take over.
      expect(leader.seen.stops[0]! - t0).toBeLessThan(timing.checkMs + 100);
      expect(follower.seen.starts[0]! - t0).toBeLessThan(10_000);
      // The old holder follows now; one holder in pg_locks, and it is the new leader's.
      await pause(400);
      expect([a, b].filter((x) => x.seen.running)).toHaveLength(1);
      expect(await holders()).toHaveLength(1);
    });

    it("gives the lock back when stopped, and another takes it", async () => {
      await open();
      const timing = { retryMs: 100, checkMs: 50, ttlMs: 200 };
      const a = lease(postgresLeaseLock(pg.url), timing);
      await until("a leads", () => a.seen.running);
      const b = lease(postgresLeaseLock(pg.url), timing);
      await pause(300);
      expect(b.seen.running).toBe(false);
      await a.lease.stop();
      expect(a.seen.running).toBe(false);
      await until("b leads", () => b.seen.running, 5000);
      expect(await holders()).toHaveLength(1);
    });
  },
);
