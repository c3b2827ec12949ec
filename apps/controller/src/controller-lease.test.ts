import { join } from "node:path";
import {
  makeTempDir,
  type NatsServer,
  natsAvailable,
  postgresAvailable,
  startNats,
  type TestPostgres,
  testPostgres,
} from "@stowage/testkit";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadControllerConfig } from "./config.js";
import { type ControllerHandle, startController } from "./controller.js";
import { LEASE_APPLICATION_NAME } from "./lease.js";

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
const why = !postgresAvailable()
  ? "no PostgreSQL: set STOWAGE_TEST_PG_URL (or install postgresql-15)"
  : !natsAvailable()
    ? "no nats-server on PATH (or STOWAGE_NATS_SERVER)"
    : "";

/** Two controllers in this process on one PostgreSQL database: which of them runs the relay and the reconciler. */
describe.skipIf(why !== "")(`controllers and the lease${why ? ` - skipped: ${why}` : ""}`, () => {
  let pg: TestPostgres;
  let nats: NatsServer;
  let admin: postgres.Sql;
  let tmp: Awaited<ReturnType<typeof makeTempDir>>;
  const handles: ControllerHandle[] = [];
  const timing = { retryMs: 200, checkMs: 100, ttlMs: 500 };

  beforeAll(async () => {
    tmp = await makeTempDir("stowage-ctl-lease-");
    pg = await testPostgres();
    nats = await startNats({ dir: join(tmp.path, "nats") });
    admin = postgres(pg.url, { max: 1, onnotice: () => {} });
    const config = loadControllerConfig(
      {},
      {
        databaseUrl: pg.url,
        natsUrl: nats.url,
        grpcListen: "127.0.0.1:0",
        metricsListen: "127.0.0.1:0",
        reconcileIntervalMs: 50,
        relayIntervalMs: 50,
        logLevel: "error",
      },
    );
    for (let k = 0; k < 2; k++) handles.push(await startController(config, { leaseTiming: timing }));
  }, 120_000);

  afterAll(async () => {
    await Promise.all(handles.map((h) => h.stop()));
    await admin?.end();
    await nats?.stop();
    await pg?.release();
    await tmp?.cleanup();
  });

  const rounds = () => handles.map((h) => h.singletonRounds);

  it("exactly one runs the relay and the reconciler, and the other takes over when the leader's lease connection is cut", async () => {
    await expect.poll(() => handles.filter((h) => h.leading).length, { timeout: 5000 }).toBe(1);
    const leader = handles.findIndex((h) => h.leading);
    const follower = 1 - leader;
    const before = rounds();
    await pause(500);
    const after = rounds();
    expect(after[leader]!.reconciler).toBeGreaterThan(before[leader]!.reconciler);
    expect(after[leader]!.relay).toBeGreaterThan(before[leader]!.relay);
    expect(after[follower]).toEqual({ relay: 0, reconciler: 0 });
    // A follower's kick (after each write) runs no relay round.
    for (let i = 0; i < 5; i++) handles[follower]!.context.kickRelay();
    await pause(50);
    expect(rounds()[follower]).toEqual({ relay: 0, reconciler: 0 });

    // Cut the leader's lease connection from the server side: it stops at once, the other leads after its wait.
    const [row] = await admin<{ pid: number }[]>`
      select pid from pg_stat_activity where application_name = ${LEASE_APPLICATION_NAME}
        and datname = current_database()
        and pid in (select pid from pg_locks where locktype = 'advisory' and granted)`;
    const t0 = performance.now();
    await admin`select pg_terminate_backend(${row!.pid})`;
    await expect.poll(() => handles[leader]!.leading, { timeout: 1000, interval: 10 }).toBe(false);
    const stoppedMs = performance.now() - t0;
    const frozen = rounds()[leader]!;
    await expect.poll(() => handles[follower]!.leading, { timeout: 10_000, interval: 20 }).toBe(true);
    const takeoverMs = performance.now() - t0;
    console.log(
      `lease: the cut leader stopped after ${Math.round(stoppedMs)} ms, the other led after ${Math.round(takeoverMs)} ms`,
    );
    expect(stoppedMs).toBeLessThan(timing.ttlMs);
    await pause(400);
    expect(rounds()[follower]!.reconciler).toBeGreaterThan(0);
    // The old leader ran nothing more and follows now (its lease reconnected, finding the lock taken).
    expect(rounds()[leader]).toEqual(frozen);
    expect(handles.filter((h) => h.leading)).toHaveLength(1);
  });

  it("hands over when the leader stops cleanly", async () => {
    const leader = handles.findIndex((h) => h.leading);
    const other = handles[1 - leader]!;
    const [gone] = handles.splice(leader, 1);
    await gone!.stop();
    await expect.poll(() => other.leading, { timeout: 10_000 }).toBe(true);
  });
});
