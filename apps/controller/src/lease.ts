import type { Logger } from "@stowage/telemetry";
import postgres from "postgres";

/**
 * The advisory lock key of the singleton loops' lease (the migrations take 0x5707a9e, transaction-level).
 * Taken as one int8, so pg_locks shows it as classid 0, objid LEASE_LOCK_KEY, objsubid 1.
 */
export const LEASE_LOCK_KEY = 0x5707a9f;
/** What the lease connection calls itself in pg_stat_activity (application_name). */
export const LEASE_APPLICATION_NAME = "stowage-controller-lease";

/** A lock that at most one process holds at a time, and that goes when its holder's connection does. */
export interface LeaseLock {
  /** Tries to take the lock once: true when this process holds it now. */
  tryAcquire(): Promise<boolean>;
  /** Whether this process still holds it (asked of the database, on the session that took it). */
  held(): Promise<boolean>;
  /** Gives it up (or makes sure it is gone); never throws. */
  release(): Promise<void>;
  /** Calls `fn` when the lock may have gone without being asked (its connection closed); returns what unsubscribes. */
  onLost(fn: (reason: string) => void): () => void;
  /** Frees what the lock holds open (its connection), after the last release. */
  close(): Promise<void>;
}

export interface LeaseTiming {
  /** How often a follower tries to take the lock. */
  retryMs: number;
  /** How often the holder asks the database whether it still holds it. */
  checkMs: number;
  /**
   * The holder stops its loops when it has not confirmed the lock for this long (a check that hangs counts as
   * lost), and a new holder waits this long after taking the lock before it starts them: the old holder's last
   * confirmation was before the lock went, so its loops are stopped by then. Must exceed checkMs.
   */
  ttlMs: number;
}

/** 2 s between tries, a check every second, 3 s: a takeover after the holder dies takes at most about 5 s. */
export const DEFAULT_LEASE_TIMING: LeaseTiming = { retryMs: 2000, checkMs: 1000, ttlMs: 3000 };

export interface LeaseOptions {
  lock: LeaseLock;
  log: Logger;
  timing?: Partial<LeaseTiming>;
  /** Starts what only the holder runs (the relay and the reconciler). Called once per leadership. */
  lead(): void;
  /**
   * Stops it: must stop starting new rounds before its first await (Loop.stop does), so leadership ends at the
   * moment this is called; the promise is for the round in progress.
   */
  follow(): Promise<void>;
  /** Set to 1 while leading, 0 otherwise (stowage_controller_leader). */
  gauge?: { set(value: number): void };
}

export interface Lease {
  /** Whether this process runs the singleton loops now. */
  readonly leading: boolean;
  /** Stops the loops (if leading), gives up the lock and tries no more. */
  stop(): Promise<void>;
}

/**
 * A leader lease for the controller's singleton loops. One async loop per process: as a follower it tries the
 * lock every retryMs; once it has it, it confirms it every checkMs, starts the loops after ttlMs, and stops them
 * the moment the lock may be gone (the connection closed, a check said no, failed, or did not answer within ttlMs),
 * before giving up the lock and going back to trying. Stopping the loops comes first: when the connection closed,
 * the lock is gone already, and another controller may take it, but it waits ttlMs before it runs anything.
 */
export function startLease(opts: LeaseOptions): Lease {
  const t = { ...DEFAULT_LEASE_TIMING, ...opts.timing };
  if (t.ttlMs > 0 && t.ttlMs <= t.checkMs) throw new Error("lease ttlMs must exceed checkMs");
  const { lock, log } = opts;
  let stopped = false;
  let leading = false;
  /** Set while the lock is held: ends the hold (synchronously stops the loops) and says why. */
  let drop: ((reason: string) => void) | undefined;
  let wake: (() => void) | undefined;
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        if (wake === done) wake = undefined;
        resolve();
      }
      wake = done;
    });
  opts.gauge?.set(0);

  /** Holds the lock until it is lost or the lease stopped; the loops are stopped when this returns. */
  const hold = async (acquiredAt: number): Promise<string> => {
    let following: Promise<void> = Promise.resolve();
    let reason: string | undefined;
    /** Cuts a check in progress short (a fresh promise per check: nothing piles up on one that never settles). */
    let interrupt: (() => void) | undefined;
    let watchdog: NodeJS.Timeout | undefined;
    const end = (why: string) => {
      if (reason !== undefined) return;
      reason = why;
      clearTimeout(watchdog);
      if (leading) {
        leading = false;
        opts.gauge?.set(0);
        following = opts.follow();
        log.warn({ reason: why }, "lease lost: stopped the outbox relay and the reconciler");
      }
      interrupt?.();
      wake?.();
    };
    drop = end;
    const confirmed = (at: number) => {
      clearTimeout(watchdog);
      watchdog = setTimeout(
        () => end(`the lock was not confirmed within ${t.ttlMs} ms`),
        Math.max(0, at + t.ttlMs - performance.now()),
      );
    };
    const unsubscribe = lock.onLost((why) => end(why));
    if (t.ttlMs > 0) confirmed(acquiredAt);
    try {
      for (;;) {
        if (reason !== undefined) break;
        if (!leading && performance.now() >= acquiredAt + t.ttlMs) {
          leading = true;
          opts.gauge?.set(1);
          log.info("lease acquired: this controller runs the outbox relay and the reconciler");
          opts.lead();
        }
        const untilLead = acquiredAt + t.ttlMs - performance.now();
        await sleep(leading ? t.checkMs : Math.max(0, Math.min(t.checkMs, untilLead)));
        if (stopped) end("the controller is stopping");
        if (reason !== undefined) break;
        const at = performance.now();
        const ok = await new Promise<boolean | Error | undefined>((resolve) => {
          interrupt = () => resolve(undefined);
          lock
            .held()
            .then(resolve, (err: unknown) => resolve(err instanceof Error ? err : new Error(String(err))));
        });
        interrupt = undefined;
        if (ok === undefined || reason !== undefined) break;
        if (ok instanceof Error) end(`checking the lock failed: ${ok.message}`);
        else if (!ok) end("the database says the lock is no longer held");
        else if (t.ttlMs > 0) confirmed(at);
      }
    } finally {
      unsubscribe();
      drop = undefined;
    }
    await following;
    return reason ?? "unknown";
  };

  const run = async () => {
    let told = false;
    while (!stopped) {
      let got = false;
      let failed = false;
      try {
        got = await lock.tryAcquire();
      } catch (err) {
        log.warn({ err }, "lease: cannot try the lock; trying again");
        failed = true;
      }
      if (got && !stopped) {
        const acquiredAt = performance.now();
        if (t.ttlMs > 0) log.info({ waitMs: t.ttlMs }, "lease: took the lock; leading once the wait is over");
        const why = await hold(acquiredAt);
        log.debug({ reason: why }, "lease: giving up the lock");
        told = false;
      } else if (!got && !failed && !told) {
        log.info(
          { retryMs: t.retryMs },
          "lease held by another controller: following (serving the API, no relay or reconciler)",
        );
        told = true;
      }
      await lock.release();
      if (!stopped) await sleep(t.retryMs);
    }
  };
  const done = run().catch((err) => log.error({ err }, "lease loop failed"));

  return {
    get leading() {
      return leading;
    },
    async stop() {
      stopped = true;
      drop?.("the controller is stopping");
      wake?.();
      await done;
      await lock.close();
    },
  };
}

/** PGlite serves one controller process (its data-directory lock): that process always holds the lease. */
export function singleProcessLock(): LeaseLock {
  return {
    tryAcquire: async () => true,
    held: async () => true,
    release: async () => {},
    onLost: () => () => {},
    close: async () => {},
  };
}

/**
 * PostgreSQL: a session-level advisory lock (pg_try_advisory_lock) on a connection of its own, which the server
 * frees when that session ends (its controller died, or the connection broke). The connection is a one-connection
 * postgres.js client rather than a `sql.reserve()` of the pool: in postgres.js 3.4 a reserved connection that
 * closes cannot be queried again (the next query throws an uncaught TypeError and hangs), and nothing tells its
 * holder it closed, whereas a client of its own has `onclose` (the lease drops at once) and reconnects on the next
 * query as a new session (which the check then finds without the lock). No max_lifetime: postgres.js would
 * otherwise recycle it after 30 to 60 minutes, and the lease with it.
 */
export function postgresLeaseLock(url: string, key = LEASE_LOCK_KEY): LeaseLock {
  const listeners = new Set<(reason: string) => void>();
  let holding = false;
  const connect = () =>
    postgres(url, {
      max: 1,
      max_lifetime: 0, // 0: never recycled (postgres.js treats 0 as no timer)
      idle_timeout: 0,
      connect_timeout: 10,
      keep_alive: 5,
      onnotice: () => {},
      connection: { application_name: LEASE_APPLICATION_NAME },
      onclose: () => {
        if (!holding) return;
        holding = false;
        for (const fn of listeners) fn("the lease connection closed");
      },
    });
  let sql = connect();
  /** Ends the session for certain (the server then frees whatever it held) and starts afresh. */
  const reset = async () => {
    holding = false;
    const old = sql;
    sql = connect();
    await old.end({ timeout: 0 }).catch(() => {});
  };
  const bounded = <T>(p: Promise<T>, ms: number): Promise<T> =>
    Promise.race([
      p,
      new Promise<T>((_, reject) =>
        setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms).unref(),
      ),
    ]);
  return {
    async tryAcquire() {
      if (holding) return true;
      try {
        const [row] = await bounded(
          sql<{ ok: boolean }[]>`select pg_try_advisory_lock(${key}::int8) as ok`,
          10_000,
        );
        holding = row?.ok === true;
        return holding;
      } catch (err) {
        // The try may still land on the server after this: end the session so it cannot leave the lock held.
        await reset();
        throw err;
      }
    },
    async held() {
      if (!holding) return false;
      const [row] = await sql<{ held: boolean }[]>`
        select exists(select 1 from pg_locks where locktype = 'advisory' and pid = pg_backend_pid() and granted
          and classid = 0 and objid = ${key} and objsubid = 1) as held`;
      return row?.held === true;
    },
    async release() {
      if (!holding) return;
      holding = false;
      // A session that does not answer the unlock quickly is ended, which frees the lock for certain.
      try {
        await bounded(sql`select pg_advisory_unlock(${key}::int8)`, 2000);
      } catch {
        await reset();
      }
    },
    onLost(fn) {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
    async close() {
      holding = false;
      await sql.end({ timeout: 2 }).catch(() => {});
    },
  };
}
