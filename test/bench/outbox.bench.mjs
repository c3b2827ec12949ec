// The controller's outbox relay and result consumer, before and after batching, on embedded PGlite and a private
// nats-server: N create_volume operations (BENCH_OPERATIONS, default 1,500) published by the relay, then N results
// applied through JetStream. "before" is the old code path, kept here to compare: the relay publishing one
// operation at a time with one UPDATE each, and results applied one transaction each (consumeLoop). One JSON line
// per measure.
// Run from the repository root (under a minute): npm run bench:outbox (it runs the sources through tsx, no build).
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { AckPolicy } from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import {
  ALL_RESULTS,
  COMMAND_STREAM,
  commandSubject,
  connectBus,
  consumeLoop,
  ensureStreams,
  RESULT_STREAM,
  resultSubject,
} from "@stowage/bus";
import { newId } from "@stowage/core";
import { OperationResultSchema } from "@stowage/proto";
import {
  applyPoolReports,
  insertVolume,
  markOperationSent,
  operationsToPublish,
  reserveCapacity,
  upsertHost,
} from "@stowage/store";
import { hostRegistration, newVolume, poolReport } from "@stowage/store/testing";
import { startNats } from "@stowage/testkit";
import { enqueueOperation } from "../../apps/controller/src/outbox.ts";
import { relayOnce } from "../../apps/controller/src/relay.ts";
import { applyResult, consumeResults } from "../../apps/controller/src/results.ts";
import { openServiceFixture } from "../../apps/controller/src/testing/service-fixture.ts";

const N = Number(process.env.BENCH_OPERATIONS ?? 1500);
const MiB = 1024n * 1024n;
const hosts = ["h1", "h2", "h3", "h4"];

const nats = await startNats();
const bus = await connectBus({ servers: nats.url, name: "outbox-bench" });
await ensureStreams(bus.jsm);
const f = await openServiceFixture();
const ctx = { ...f.ctx, bus };
for (const h of hosts) {
  await upsertHost(f.sql, hostRegistration(h));
  await applyPoolReports(f.sql, h, [poolReport("files", 1024n * 1024n * MiB)]);
}

/** The relay as it was: one publish awaited, then one UPDATE, per operation; stops at the first failure. */
async function relayOneByOne() {
  const ops = await operationsToPublish(ctx.sql, ctx.config.resendAfterMs);
  let sent = 0;
  for (const op of ops) {
    try {
      await bus.js.publish(commandSubject(op.hostId), op.command, { msgID: op.id, timeout: 5000 });
      await markOperationSent(ctx.sql, op.id);
      sent++;
    } catch {
      break;
    }
  }
  return sent;
}

/** N create_volume operations, their volumes creating with capacity reserved, in transactions of 500. */
async function seed() {
  const ids = [];
  for (let b = 0; b < N; b += 500) {
    await f.sql.begin(async (tx) => {
      for (let i = b; i < Math.min(N, b + 500); i++) {
        const poolId = `${hosts[i % hosts.length]}/files`;
        const id = newId("vol");
        const operationId = newId("op");
        const v = await insertVolume(
          tx,
          newVolume(id, poolId, MiB, { name: `b${id.slice(-16)}`, operationId }),
        );
        await reserveCapacity(tx, { poolId, volumeId: id, bytes: MiB, ttlMs: 600_000 });
        await enqueueOperation(tx, {
          kind: "create_volume",
          volume: v,
          payload: { case: "createVolume", value: { volumeId: id } },
          actor: "bench",
          operationId,
        });
        ids.push(operationId);
      }
    });
  }
  return ids;
}

async function relay(variant, round) {
  await bus.jsm.streams.purge(COMMAND_STREAM);
  const ops = await seed();
  const t0 = performance.now();
  let total = 0;
  for (let n = await round(); n > 0; n = await round()) total += n;
  const seconds = (performance.now() - t0) / 1000;
  console.log(
    JSON.stringify({
      measure: "relay",
      variant,
      operations: total,
      seconds,
      perSecond: Math.round(total / seconds),
    }),
  );
  return ops;
}

let durables = 0;
async function results(variant, ids, run) {
  await f.sql`vacuum`;
  await bus.jsm.streams.purge(RESULT_STREAM);
  const durable = `bench-${++durables}`;
  await bus.jsm.consumers.add(RESULT_STREAM, {
    durable_name: durable,
    ack_policy: AckPolicy.Explicit,
    filter_subject: ALL_RESULTS,
    ack_wait: nanos(5000),
    max_ack_pending: 64,
  });
  for (let i = 0; i < ids.length; i += 200) {
    await Promise.all(
      ids.slice(i, i + 200).map((operationId, j) => {
        const hostId = hosts[(i + j) % hosts.length];
        const r = create(OperationResultSchema, {
          operationId,
          hostId,
          success: true,
          artifact: { sizeBytes: MiB, allocatedBytes: 4096n, path: `/pool/${operationId}` },
        });
        return bus.js.publish(resultSubject(hostId), toBinary(OperationResultSchema, r));
      }),
    );
  }
  const consumer = await bus.js.consumers.get(RESULT_STREAM, durable);
  const abort = new AbortController();
  const t0 = performance.now();
  const done = run(consumer, abort.signal);
  for (;;) {
    const info = await bus.jsm.consumers.info(RESULT_STREAM, durable);
    if (info.num_pending + info.num_ack_pending === 0) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const seconds = (performance.now() - t0) / 1000;
  abort.abort();
  await done;
  const [{ n }] =
    await f.sql`select count(*)::int as n from operations where id = any(${ids}) and state = 'succeeded'`;
  console.log(
    JSON.stringify({
      measure: "results",
      variant,
      applied: n,
      seconds,
      perSecond: Math.round(ids.length / seconds),
    }),
  );
  await bus.jsm.consumers.delete(RESULT_STREAM, durable);
}

try {
  const a = await relay("before: one by one", relayOneByOne);
  const b = await relay("after: batched", () => relayOnce(ctx));
  await results("before: one transaction each", a, (c, signal) =>
    consumeLoop(c, (msg) => applyResult(ctx, fromBinary(OperationResultSchema, msg.data)), { signal }),
  );
  await results("after: batches", b, (c, signal) => consumeResults(ctx, c, signal));
} finally {
  await bus.close();
  await f.close();
  await nats.stop();
}
