import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { SnapshotService, VolumeFormat, VolumeService } from "@stowage/proto";
import { type Database, openDatabase } from "@stowage/store";
import { natsAvailable, postgresAvailable } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, startCluster } from "./support/cluster.js";
import { rng } from "./support/fuzz.js";
import { artefactProblems, ledgerProblems, waitQuiet } from "./support/invariants.js";

/**
 * The property test of issue 10 (docs/testkit.md, "The property test"): random sequences of operations (create,
 * resize, snapshot, clone, revert, delete of snapshots and volumes, with random sizes and formats on two hosts),
 * several in flight at once, interleaved with random kill -9 of an agent or of the controller and their
 * restarts, against a real controller on PostgreSQL and two real agents with dir pools. At every quiet point
 * (nothing in flight, every volume settled) the invariants hold:
 *   - no operation is stuck, every volume and snapshot is in a final state;
 *   - the ledger equals what the volumes hold: every pool's reserved and allocated bytes are the sums of its
 *     reservations (`ledgerDiscrepancies`), every live volume holds exactly its size, a deleted one nothing;
 *   - no artefact lacks a row and no row lacks an artefact: the image files in each pool are exactly the
 *     volumes the database has there, less those deleted (a volume in error may or may not have one).
 * STOWAGE_PROPERTY_OPS sets the number of operations (CI: 2,000; `npm run test:property` runs 10,000) and
 * STOWAGE_PROPERTY_SEED replays a run: the seed is printed at the start and in any failure.
 */
const OPS = Number(process.env.STOWAGE_PROPERTY_OPS ?? 2000);
const SEED = Number(process.env.STOWAGE_PROPERTY_SEED ?? Math.floor(Math.random() * 2 ** 31));
const IN_FLIGHT = 6;
const CRASH_EVERY = Math.max(200, Math.floor(OPS / 6));
const MiB = 1024n * 1024n;

const why = !postgresAvailable()
  ? "no PostgreSQL: set STOWAGE_TEST_PG_URL (or install postgresql-15)"
  : !natsAvailable()
    ? "no nats-server on PATH (or STOWAGE_NATS_SERVER)"
    : "";

/** The refusals a random sequence runs into by design (busy volume, snapshot in use, ...): not failures. */
const EXPECTED = new Set([
  Code.FailedPrecondition,
  Code.NotFound,
  Code.AlreadyExists,
  Code.ResourceExhausted,
  Code.InvalidArgument,
  Code.Aborted,
  Code.Unavailable,
]);

describe.skipIf(why !== "")(`the property test${why ? ` - skipped: ${why}` : ""}`, () => {
  let c: Cluster;
  let db: Database;
  const rand = rng(SEED);
  const tally: Record<string, number> = {};
  /** While a crash is under way, calls cut by it are what a crash does to a client, not failures. */
  let crashing = false;
  const count = (k: string) => {
    tally[k] = (tally[k] ?? 0) + 1;
  };

  beforeAll(async () => {
    c = await startCluster({
      database: "postgres",
      agents: ["p1", "p2"],
      env: { STOWAGE_RELAY_GRACE_MS: "500", STOWAGE_RESEND_AFTER_MS: "5000" },
    });
    db = await openDatabase({ url: c.databaseUrl, max: 2 });
  }, 180_000);
  afterAll(async () => {
    await db?.close();
    await c?.stop();
  });

  const client = () => {
    const t = createGrpcTransport({ baseUrl: c.url });
    return { volumes: createClient(VolumeService, t), snapshots: createClient(SnapshotService, t) };
  };

  /** Volumes and snapshots as the database has them now. */
  const live = async () => {
    const volumes = await db.sql<{ id: string; state: string; format: string; sizeBytes: bigint }[]>`
      select id, state, format, size_bytes from volumes where state <> 'deleted' order by id`;
    const snapshots = await db.sql<{ id: string; volumeId: string; state: string }[]>`
      select id, volume_id, state from snapshots where state <> 'deleted' order by id`;
    return { volumes, snapshots };
  };

  /** One random operation on what exists now; answers what it tried and how it ended. */
  async function step(api: ReturnType<typeof client>, n: number): Promise<void> {
    const { volumes, snapshots } = await live();
    const available = volumes.filter((v) => v.state === "available");
    const qcow2 = available.filter((v) => v.format === "qcow2");
    const snaps = snapshots.filter((s) => s.state === "available");
    const roll = rand.next();
    let kind = "create";
    if (available.length > 0 && roll > 0.45) {
      kind = rand.pick(["resize", "snapshot", "clone", "revert", "delete-snapshot", "delete", "delete"]);
    }
    if (volumes.length > 60) kind = "delete";
    try {
      switch (kind) {
        case "create":
          await api.volumes.createVolume({
            name: `prop-${SEED}-${n}`,
            sizeBytes: BigInt(rand.int(1, 32)) * MiB,
            format: rand.next() < 0.7 ? VolumeFormat.QCOW2 : VolumeFormat.RAW,
          });
          break;
        case "resize": {
          const v = rand.pick(available);
          await api.volumes.resizeVolume({
            volume: v.id,
            newSizeBytes: v.sizeBytes + BigInt(rand.int(1, 8)) * MiB,
          });
          break;
        }
        case "snapshot": {
          if (qcow2.length === 0) return;
          await api.snapshots.createSnapshot({ volume: rand.pick(qcow2).id, name: `s${n}` });
          break;
        }
        case "clone": {
          if (snaps.length === 0) return;
          const s = rand.pick(snaps);
          await api.volumes.cloneVolume({
            sourceVolume: s.volumeId,
            sourceSnapshot: s.id,
            name: `prop-${SEED}-${n}-clone`,
          });
          break;
        }
        case "revert": {
          if (snaps.length === 0) return;
          const s = rand.pick(snaps);
          await api.snapshots.revertSnapshot({ volume: s.volumeId, snapshot: s.id });
          break;
        }
        case "delete-snapshot": {
          if (snaps.length === 0) return;
          const s = rand.pick(snaps);
          await api.snapshots.deleteSnapshot({ volume: s.volumeId, snapshot: s.id });
          break;
        }
        case "delete":
          if (available.length === 0) return;
          await api.volumes.deleteVolume({ volume: rand.pick(available).id });
          break;
      }
      count(`${kind} ok`);
    } catch (err) {
      const e = ConnectError.from(err);
      if (EXPECTED.has(e.code)) count(`${kind} ${Code[e.code]}`);
      else if (crashing) count("cut by a crash");
      else throw new Error(`seed ${SEED}: ${kind} failed with ${Code[e.code]}: ${e.message}`);
    }
  }

  /** Waits until nothing is in flight, then checks the invariants (test/support/invariants.ts). */
  async function quietAndCheck(label: string): Promise<void> {
    await waitQuiet(db).catch((err) => {
      throw new Error(`seed ${SEED}, ${label}: ${(err as Error).message}`);
    });
    expect(await ledgerProblems(db), `seed ${SEED}, ${label}: ledger`).toEqual([]);
    expect(await artefactProblems(db, c.agents), `seed ${SEED}, ${label}: artefacts`).toEqual([]);
  }

  /** kill -9 of one agent or of the controller, and its restart. */
  async function crash(): Promise<string> {
    const who = rand.pick(["controller", "p1", "p2"]);
    crashing = true;
    try {
      if (who === "controller") {
        await c.controller.kill();
        await c.startController();
      } else {
        const a = c.agents.find((x) => x.name === who)!;
        await a.service.kill();
        await c.startAgent(who);
      }
      // Calls already on their way to the dead controller come back over the next moment.
      await new Promise((r) => setTimeout(r, 500));
    } finally {
      crashing = false;
    }
    return who;
  }

  it(
    `keeps every invariant over ${OPS} random operations with crashes (seed ${SEED})`,
    async () => {
      console.log(
        `property test: seed ${SEED} (replay with STOWAGE_PROPERTY_SEED=${SEED}), ${OPS} operations`,
      );
      const t0 = performance.now();
      let done = 0;
      let crashes = 0;
      let api = client();
      while (done < OPS) {
        const round = Math.min(CRASH_EVERY, OPS - done);
        let next = 0;
        const base = done;
        // A crash in the middle of the round, while operations are in flight.
        const crashAt = rand.int(Math.floor(round / 4), Math.floor((3 * round) / 4));
        let crashed: Promise<string> | undefined;
        const worker = async () => {
          while (next < round) {
            const i = next++;
            if (i === crashAt) {
              crashed = crash();
              const who = await crashed;
              crashes++;
              count(`crash ${who}`);
              api = client();
              continue;
            }
            if (crashed) await crashed;
            await step(api, base + i);
          }
        };
        await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
        done += round;
        await quietAndCheck(`after ${done} operations`);
      }
      const seconds = (performance.now() - t0) / 1000;
      console.log(
        `property test: ${OPS} operations, ${crashes} crashes, ${seconds.toFixed(0)} s; ${JSON.stringify(tally)}`,
      );
      expect(crashes).toBeGreaterThan(0);
      expect(tally["create ok"] ?? 0).toBeGreaterThan(0);
    },
    30 * 60_000,
  );
});
