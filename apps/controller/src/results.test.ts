import { create, toBinary } from "@bufbuild/protobuf";
import { AckPolicy } from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import { ALL_RESULTS, type Bus, connectBus, ensureStreams, RESULT_STREAM, resultSubject } from "@stowage/bus";
import {
  CreateSnapshotRequestSchema,
  CreateVolumeRequestSchema,
  DeleteSnapshotRequestSchema,
  DeleteVolumeRequestSchema,
  type OperationResult,
  OperationResultSchema,
  RevertSnapshotRequestSchema,
  VolumeFormat,
} from "@stowage/proto";
import {
  getOperation,
  getSnapshotById,
  getVolumeById,
  insertSnapshot,
  ledgerDiscrepancies,
  type OperationRow,
  type Tx,
  transitionSnapshot,
  type VolumeRow,
} from "@stowage/store";
import { type NatsServer, natsAvailable, startNats } from "@stowage/testkit";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { ControllerContext } from "./context.js";
import { createSnapshot, deleteSnapshot, revertSnapshot } from "./lifecycle-service.js";
import { applyResult, applyResults, consumeResults } from "./results.js";
import { addVolume, GiB, openServiceFixture, type ServiceFixture } from "./testing/service-fixture.js";
import { createVolume, deleteVolume } from "./volume-service.js";

describe("applying operation results (on PGlite)", () => {
  let f: ServiceFixture;
  let pool: string;

  const succeed = (op: OperationRow | undefined, artifact?: { sizeBytes: bigint; path?: string }) =>
    applyResult(
      f.ctx,
      create(OperationResultSchema, {
        operationId: op!.id,
        hostId: "h1",
        success: true,
        ...(artifact ? { artifact: { ...artifact, allocatedBytes: 4096n } } : {}),
      }),
    );
  const fail = (op: OperationRow | undefined, message: string) =>
    applyResult(
      f.ctx,
      create(OperationResultSchema, {
        operationId: op!.id,
        hostId: "h1",
        success: false,
        error: { code: "tool_failed", message },
      }),
    );
  const volume = async (v: VolumeRow) => (await getVolumeById(f.sql, v.id))!;

  /** A qcow2 volume with an available snapshot `v1`, and a revert to it in flight. */
  async function reverting(name: string) {
    const v = await addVolume(f.sql, { name, poolId: pool, format: "qcow2" });
    await f.sql.begin(async (tx) => {
      const s = await insertSnapshot(tx, {
        id: `snap-${name.padEnd(32, "0")}`,
        name: "v1",
        volumeId: v.id,
        sizeBytes: v.sizeBytes,
        operationId: "op-setup",
      });
      await transitionSnapshot(tx, s, "available");
    });
    const out = await revertSnapshot(
      f.ctx,
      create(RevertSnapshotRequestSchema, { volume: name, snapshot: "v1" }),
      "test",
    );
    expect((await volume(v)).state).toBe("reverting");
    return { v, ...out };
  }

  beforeAll(async () => {
    f = await openServiceFixture();
    pool = await f.addPool("files", "dir", ["qcow2", "raw"]);
  });
  afterAll(async () => {
    await f?.close();
  });

  it("makes a created volume available with its artefact, once", async () => {
    const out = await createVolume(
      f.ctx,
      create(CreateVolumeRequestSchema, { name: "fresh", sizeBytes: GiB, format: VolumeFormat.RAW }),
      "test",
    );
    await succeed(out.operation, { sizeBytes: GiB, path: "/pool/fresh" });
    const v = await volume(out.volume!);
    expect(v).toMatchObject({ state: "available", hostPath: "/pool/fresh", allocatedBytes: 4096n });
    expect((await getOperation(f.sql, out.operation!.id))?.state).toBe("succeeded");
    // The same result delivered again changes nothing.
    await fail(out.operation, "late duplicate");
    expect(await volume(out.volume!)).toEqual(v);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("moves a reverted volume from reverting back to available", async () => {
    const { v, operation } = await reverting("rolled-back");
    await succeed(operation, { sizeBytes: v.sizeBytes });
    expect(await volume(v)).toMatchObject({ state: "available", error: null });
  });

  it("leaves a volume whose revert failed available as it was, with the error on it and on the snapshot", async () => {
    const { v, snapshot, operation } = await reverting("revert-fails");
    await fail(operation, "qemu-img snapshot -a failed");
    expect(await volume(v)).toMatchObject({
      state: "available",
      error: { message: "qemu-img snapshot -a failed" },
    });
    expect((await getSnapshotById(f.sql, snapshot.id))?.error?.message).toBe("qemu-img snapshot -a failed");
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("moves a deleted volume to deleted and releases its capacity", async () => {
    const v = await addVolume(f.sql, { name: "gone", poolId: pool, format: "raw" });
    const out = await deleteVolume(f.ctx, create(DeleteVolumeRequestSchema, { volume: "gone" }), "test");
    await succeed(out.operation);
    expect((await volume(v)).state).toBe("deleted");
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("leaves a snapshot deleted while it was being created as deleting, then deletes it", async () => {
    await addVolume(f.sql, { name: "snappy", poolId: pool, format: "qcow2" });
    const made = await createSnapshot(
      f.ctx,
      create(CreateSnapshotRequestSchema, { volume: "snappy", name: "s1" }),
      "test",
    );
    const deleting = await deleteSnapshot(
      f.ctx,
      create(DeleteSnapshotRequestSchema, { volume: "snappy", snapshot: "s1" }),
      "test",
    );
    expect(deleting.snapshot.state).toBe("deleting");
    // deleting -> available is not a transition: the late create result leaves it as it is.
    await succeed(made.operation);
    expect((await getSnapshotById(f.sql, made.snapshot.id))?.state).toBe("deleting");
    await succeed(deleting.operation);
    expect((await getSnapshotById(f.sql, made.snapshot.id))?.state).toBe("deleted");
  });
});

describe("applying operation results in batches (on PGlite)", () => {
  let f: ServiceFixture;
  let begins = 0;
  let notified = 0;

  /** The fixture's context, counting transactions and change notifications. */
  const counting = (): ControllerContext => ({
    ...f.ctx,
    sql: new Proxy(f.sql, {
      get(target, prop, receiver) {
        if (prop === "begin") begins++;
        return Reflect.get(target, prop, receiver);
      },
    }),
    notifyChange: () => notified++,
  });
  const result = (op: OperationRow, success: boolean, message = "") =>
    create(OperationResultSchema, {
      operationId: op.id,
      hostId: "h1",
      success,
      ...(success
        ? { artifact: { sizeBytes: GiB, path: `/pool/${op.volumeId}`, allocatedBytes: 4096n } }
        : { error: { code: "tool_failed", message } }),
    });
  async function creates(n: number, prefix: string) {
    const out = [];
    for (let i = 0; i < n; i++)
      out.push(
        await createVolume(
          f.ctx,
          create(CreateVolumeRequestSchema, {
            name: `${prefix}${i}`,
            sizeBytes: GiB,
            format: VolumeFormat.RAW,
          }),
          "test",
        ),
      );
    return out;
  }

  beforeAll(async () => {
    f = await openServiceFixture();
    await f.addPool("files", "dir", ["raw"]);
  });
  afterAll(async () => {
    await f?.close();
  });
  beforeEach(() => {
    begins = 0;
    notified = 0;
  });

  it("applies a batch of results in one transaction and notifies watchers once", async () => {
    const made = await creates(20, "batch");
    await applyResults(
      counting(),
      made.map((m) => result(m.operation!, true)),
    );
    expect(begins).toBe(1);
    expect(notified).toBe(1);
    for (const m of made) {
      expect((await getVolumeById(f.sql, m.volume!.id))?.state).toBe("available");
      expect((await getOperation(f.sql, m.operation!.id))?.state).toBe("succeeded");
    }
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("applies two results for one operation in a batch in order, the same as two batches would", async () => {
    const [a, b] = await creates(2, "twice");
    await applyResults(counting(), [
      result(a!.operation!, true),
      result(a!.operation!, false, "late duplicate"),
      result(b!.operation!, false, "disk full"),
      result(b!.operation!, true),
      result(a!.operation!, true),
    ]);
    expect(await getVolumeById(f.sql, a!.volume!.id)).toMatchObject({ state: "available", error: null });
    // b's failure finished it; its success after that is a late result: the host made the disk, so the volume
    // is held again and available (late-results.ts), the operation staying failed.
    expect(await getVolumeById(f.sql, b!.volume!.id)).toMatchObject({ state: "available", error: null });
    expect((await getOperation(f.sql, a!.operation!.id))?.state).toBe("succeeded");
    expect((await getOperation(f.sql, b!.operation!.id))?.state).toBe("failed");
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
    // Nothing left to apply: a redelivered batch changes nothing and notifies nobody.
    notified = 0;
    await applyResults(counting(), [result(a!.operation!, false, "again")]);
    expect(notified).toBe(0);
  });

  it("rolls back the whole batch when one result cannot be applied", async () => {
    const [a] = await creates(1, "rolled");
    const poisoned = create(OperationResultSchema, { operationId: "op-\u0000", hostId: "h1", success: true });
    await expect(applyResults(counting(), [result(a!.operation!, true), poisoned])).rejects.toThrow();
    expect((await getOperation(f.sql, a!.operation!.id))?.state).toBe("pending");
    expect(notified).toBe(0);
  });
});

describe.skipIf(!natsAvailable())("the result consumer (on PGlite and a real nats-server)", () => {
  let f: ServiceFixture;
  let nats: NatsServer;
  let bus: Bus;
  let durable = "";
  let n = 0;

  const publishResults = (results: OperationResult[]) =>
    Promise.all(
      results.map((r) => bus.js.publish(resultSubject(r.hostId), toBinary(OperationResultSchema, r))),
    );
  const success = (op: OperationRow) =>
    create(OperationResultSchema, {
      operationId: op.id,
      hostId: "h1",
      success: true,
      artifact: { sizeBytes: GiB, path: `/pool/${op.volumeId}`, allocatedBytes: 4096n },
    });
  async function creates(count: number, prefix: string) {
    const out = [];
    for (let i = 0; i < count; i++)
      out.push(
        await createVolume(
          f.ctx,
          create(CreateVolumeRequestSchema, {
            name: `${prefix}${i}`,
            sizeBytes: GiB,
            format: VolumeFormat.RAW,
          }),
          "test",
        ),
      );
    return out;
  }
  /** Runs the result consumer on the test's durable until the returned function stops it. */
  async function consume(ctx: ControllerContext, b: Bus = bus) {
    const abort = new AbortController();
    const done = consumeResults(ctx, await b.js.consumers.get(RESULT_STREAM, durable), abort.signal);
    return async () => {
      abort.abort();
      await done;
    };
  }
  const info = () => bus.jsm.consumers.info(RESULT_STREAM, durable);

  beforeAll(async () => {
    nats = await startNats();
    bus = await connectBus({ servers: nats.url, name: "results-test" });
    await ensureStreams(bus.jsm);
    f = await openServiceFixture();
    await f.addPool("files", "dir", ["raw"]);
  });
  afterAll(async () => {
    await bus?.close();
    await f?.close();
    await nats?.stop();
  });
  beforeEach(async () => {
    if (durable) await bus.jsm.consumers.delete(RESULT_STREAM, durable);
    await bus.jsm.streams.purge(RESULT_STREAM);
    durable = `test-results-${++n}`;
    // As the controller's, with a short ack wait so that a redelivery comes within the test.
    await bus.jsm.consumers.add(RESULT_STREAM, {
      durable_name: durable,
      ack_policy: AckPolicy.Explicit,
      filter_subject: ALL_RESULTS,
      ack_wait: nanos(1_000),
      max_ack_pending: 64,
    });
  });

  it("applies the others of a batch when one result is poisoned, and keeps retrying that one alone", async () => {
    const made = await creates(10, "poison");
    const poisoned = create(OperationResultSchema, { operationId: "op-\u0000", hostId: "h1", success: true });
    await publishResults([...made.slice(0, 5).map((m) => success(m.operation!)), poisoned]);
    await publishResults(made.slice(5).map((m) => success(m.operation!)));
    const stop = await consume(f.ctx);
    try {
      await expect
        .poll(
          async () => Promise.all(made.map(async (m) => (await getVolumeById(f.sql, m.volume!.id))?.state)),
          {
            timeout: 5_000,
          },
        )
        .toEqual(made.map(() => "available"));
      // The poisoned one stays unacked and comes back, alone.
      await expect.poll(async () => (await info()).num_redelivered, { timeout: 5_000 }).toBeGreaterThan(0);
      expect((await info()).num_ack_pending + (await info()).num_pending).toBe(1);
    } finally {
      await stop();
    }
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("drops a result for another host's operation, or naming another host than its subject's: acked, counted as forged, nothing applied", async () => {
    const forged = async () =>
      (await f.ctx.metrics.busForged.get()).values.find((v) => v.labels.kind === "result")?.value ?? 0;
    const before = await forged();
    const made = await creates(3, "forged");
    const [victim, other, genuine] = made.map((m) => m.operation!);
    // h2 reports h1's operation as done, on its own subject; then on h1's subject, naming itself.
    await publishResults([{ ...success(victim!), hostId: "h2" }]);
    await bus.js.publish(
      resultSubject("h1"),
      toBinary(OperationResultSchema, { ...success(other!), hostId: "h2" }),
    );
    await publishResults([success(genuine!)]);
    const stop = await consume(f.ctx);
    try {
      await expect
        .poll(async () => (await getVolumeById(f.sql, made[2]!.volume!.id))?.state, { timeout: 5_000 })
        .toBe("available");
      await expect.poll(forged, { timeout: 5_000 }).toBe(before + 2);
      // Acked, so never redelivered.
      await expect
        .poll(async () => (await info()).num_ack_pending + (await info()).num_pending, { timeout: 5_000 })
        .toBe(0);
    } finally {
      await stop();
    }
    for (const op of [victim!, other!])
      expect((await getOperation(f.sql, op.id))?.state).toMatch(/pending|sent/);
    expect((await getVolumeById(f.sql, made[0]!.volume!.id))?.state).toBe("creating");
    expect((await info()).num_redelivered).toBe(0);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("acks only after commit: results applied by a controller that dies before acking are redelivered and change nothing more", async () => {
    const made = await creates(8, "crash");
    await publishResults(made.map((m) => success(m.operation!)));
    const dying = await connectBus({ servers: nats.url, name: "results-test-dying" });
    let committed!: () => void;
    const died = new Promise<void>((r) => {
      committed = r;
    });
    // Commits, then loses its connection before it can ack.
    const stopDying = await consume(
      {
        ...f.ctx,
        sql: new Proxy(f.sql, {
          get(target, prop, receiver) {
            if (prop !== "begin") return Reflect.get(target, prop, receiver);
            return async (fn: (tx: Tx) => Promise<unknown>) => {
              const out = await target.begin(fn);
              await dying.nc.close();
              committed();
              return out;
            };
          },
        }),
      },
      dying,
    );
    await died;
    await stopDying();
    const applied = await Promise.all(
      made.map(async (m) => (await getOperation(f.sql, m.operation!.id))?.state),
    );
    expect(applied).toContain("succeeded");
    expect((await info()).num_ack_pending).toBeGreaterThan(0);
    const before = await Promise.all(made.map((m) => getVolumeById(f.sql, m.volume!.id)));

    let notified = 0;
    const stop = await consume({ ...f.ctx, notifyChange: () => notified++ });
    try {
      await expect
        .poll(async () => (await info()).num_ack_pending + (await info()).num_pending, { timeout: 5_000 })
        .toBe(0);
    } finally {
      await stop();
    }
    const after = await Promise.all(made.map((m) => getVolumeById(f.sql, m.volume!.id)));
    // The volumes the first controller finished are as it left them; the others are finished now.
    for (let i = 0; i < made.length; i++) {
      if (before[i]?.state === "available") expect(after[i]).toEqual(before[i]);
      expect(after[i]?.state).toBe("available");
    }
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });
});
