import { create, fromBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { AckPolicy, DeliverPolicy } from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import {
  agentConsumerName,
  COMMAND_STREAM,
  commandSubject,
  RESULT_STREAM,
  resultSubject,
} from "@stowage/bus";
import type { PoolDriver } from "@stowage/drivers";
import { OperationResultSchema, RegisterAgentResponseSchema } from "@stowage/proto";
import { createLogger } from "@stowage/telemetry";
import { natsAvailable } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CommandConsumer, startCommandConsumer } from "./commands.js";
import { executeCommand } from "./executor.js";
import { createAgentMetrics } from "./metrics.js";
import {
  type BusFixture,
  createCommand,
  dirPool,
  newDriverLog,
  openBusFixture,
  resizeCommand,
  slowDriver,
  waitUntil,
} from "./testing/fixture.js";

const overlaps = (a: { start: number; end: number }, b: { start: number; end: number }) =>
  a.start < b.end && b.start < a.end;

describe.skipIf(!natsAvailable())("command consumer (real nats-server, real qemu-img dir pools)", () => {
  let f: BusFixture;
  let hosts = 0;
  const consumers: CommandConsumer[] = [];

  beforeAll(async () => {
    f = await openBusFixture();
  });
  afterAll(async () => {
    for (const c of consumers) await c.stop(0);
    await f?.close();
  });

  /** A host with its own consumer (ack wait `ackWaitMs`) and `pools` slowed dir pools, each op taking `delayMs`. */
  async function host(o: {
    pools?: string[];
    delayMs: number;
    poolConcurrency: number;
    maxConcurrency: number;
    ackWaitMs?: number;
    progressIntervalMs?: number;
  }) {
    const hostId = `h${++hosts}`;
    await f.bus.jsm.consumers.add(COMMAND_STREAM, {
      durable_name: agentConsumerName(hostId),
      filter_subject: commandSubject(hostId),
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: nanos(o.ackWaitMs ?? 30_000),
      max_deliver: -1,
      max_ack_pending: 64,
    });
    const log = newDriverLog();
    const pools = new Map();
    for (const name of o.pools ?? ["p"]) {
      const p = await dirPool(name, `${f.tmp}/${hostId}-${name}`);
      pools.set(name, { ...p, driver: slowDriver(p.driver, () => o.delayMs, log) });
    }
    const metrics = createAgentMetrics(hostId, () => []);
    const finished: string[] = [];
    const consumer = await startCommandConsumer({
      bus: f.bus,
      registration: create(RegisterAgentResponseSchema, {
        hostId,
        commandStream: COMMAND_STREAM,
        commandConsumer: agentConsumerName(hostId),
        resultSubject: resultSubject(hostId),
      }),
      pools,
      metrics,
      log: createLogger("test", "silent"),
      poolConcurrency: o.poolConcurrency,
      maxConcurrency: o.maxConcurrency,
      ...(o.progressIntervalMs ? { progressIntervalMs: o.progressIntervalMs } : {}),
      afterOperation: (cmd, r) => {
        if (!r.success) throw new Error(`operation failed: ${r.error?.message}`);
        finished.push(cmd.operationId);
      },
    });
    consumers.push(consumer);
    const ackPending = async () =>
      (await f.bus.jsm.consumers.info(COMMAND_STREAM, agentConsumerName(hostId))).num_ack_pending;
    return { hostId, log, consumer, finished, metrics, ackPending };
  }

  it("runs operations on different volumes at once, up to the pool's bound", async () => {
    const h = await host({ delayMs: 600, poolConcurrency: 3, maxConcurrency: 8 });
    const t0 = Date.now();
    for (let i = 0; i < 6; i++) await f.publish(createCommand(h.hostId, "p"));
    await waitUntil("six creates", () => h.finished.length === 6);
    expect(h.log.maxRunning).toBe(3);
    // Two rounds of three, not six one after another.
    expect(Date.now() - t0).toBeLessThan(6 * 600);
    expect(overlaps(h.log.calls[0]!, h.log.calls[1]!)).toBe(true);
  });

  it("bounds each pool on its own: two pools run side by side", async () => {
    const h = await host({ pools: ["a", "b"], delayMs: 500, poolConcurrency: 1, maxConcurrency: 8 });
    await f.publish(createCommand(h.hostId, "a"));
    await f.publish(createCommand(h.hostId, "b"));
    await f.publish(createCommand(h.hostId, "a"));
    await waitUntil("three creates", () => h.finished.length === 3);
    expect(h.log.maxRunning).toBe(2);
  });

  it("runs two operations on one volume one after the other, in order", async () => {
    const h = await host({ delayMs: 400, poolConcurrency: 4, maxConcurrency: 8 });
    const create1 = createCommand(h.hostId, "p");
    const volumeId = (create1.payload.value as { volumeId: string }).volumeId;
    await f.publish(create1);
    await f.publish(resizeCommand(h.hostId, "p", volumeId, 4n * 1024n * 1024n));
    await f.publish(createCommand(h.hostId, "p"));
    await waitUntil("three operations", () => h.finished.length === 3);
    const onVolume = h.log.calls.filter((c) => c.volumeId === volumeId);
    expect(onVolume.map((c) => c.method)).toEqual(["createVolume", "resizeVolume"]);
    expect(overlaps(onVolume[0]!, onVolume[1]!)).toBe(false);
    // The other volume did not wait for them.
    const other = h.log.calls.find((c) => c.volumeId !== volumeId)!;
    expect(overlaps(other, onVolume[0]!)).toBe(true);
  });

  it("never holds more commands than its slots, however many are waiting", async () => {
    const h = await host({ delayMs: 300, poolConcurrency: 1, maxConcurrency: 2 });
    for (let i = 0; i < 6; i++) await f.publish(createCommand(h.hostId, "p"));
    let maxHeld = 0;
    let maxAckPending = 0;
    while (h.finished.length < 6) {
      maxHeld = Math.max(maxHeld, h.consumer.held());
      maxAckPending = Math.max(maxAckPending, await h.ackPending());
      await new Promise((r) => setTimeout(r, 30));
    }
    expect(maxHeld).toBe(2);
    expect(maxAckPending).toBeLessThanOrEqual(2);
    expect(maxAckPending).toBeGreaterThan(0);
  });

  it("keeps a long operation, and the ones waiting behind it, from being redelivered (in-progress acks)", async () => {
    const h = await host({
      delayMs: 2500,
      poolConcurrency: 1,
      maxConcurrency: 4,
      ackWaitMs: 1000,
      progressIntervalMs: 250,
    });
    for (let i = 0; i < 2; i++) await f.publish(createCommand(h.hostId, "p"));
    await waitUntil("two creates", () => h.finished.length === 2, 30_000);
    // Each ran once, the second after waiting 2.5 s, more than twice the ack wait.
    expect(h.log.calls.length).toBe(2);
    expect(new Set(h.log.calls.map((c) => c.volumeId)).size).toBe(2);
    const redeliveries = await h.metrics.registry.getSingleMetricAsString(
      "stowage_agent_commands_redelivered_total",
    );
    expect(redeliveries).toMatch(/stowage_agent_commands_redelivered_total(\{[^}]*\})? 0$/m);
  });

  it("on stop hands back at once what it has not started, and waits for what runs up to the grace", async () => {
    const h = await host({ delayMs: 3000, poolConcurrency: 1, maxConcurrency: 4 });
    for (let i = 0; i < 3; i++) await f.publish(createCommand(h.hostId, "p"));
    await waitUntil("one running and two held", () => h.consumer.held() === 3 && h.log.running === 1);
    const t0 = Date.now();
    await h.consumer.stop(500);
    const ms = Date.now() - t0;
    expect(ms).toBeLessThan(2000);
    expect(ms).toBeGreaterThanOrEqual(450);
    expect(h.log.calls.length).toBe(1);
    // The two not started are back for the next agent at once (no ack wait of 30 s to sit out).
    const next = await f.bus.js.consumers.get(COMMAND_STREAM, agentConsumerName(h.hostId));
    // Asks for three: the running one must not come back (acked here, so none is counted twice).
    const batch = await next.fetch({ max_messages: 3, expires: 2000 });
    let handedBack = 0;
    for await (const m of batch) {
      handedBack++;
      m.ack();
    }
    expect(handedBack).toBe(2);
  });

  it("refuses a command whose deadline has passed, without running the tool, and acks it", async () => {
    const h = await host({ delayMs: 0, poolConcurrency: 2, maxConcurrency: 4 });
    const late = createCommand(h.hostId, "p");
    late.deadline = timestampFromMs(Date.now() - 5_000);
    const inTime = createCommand(h.hostId, "p");
    inTime.deadline = timestampFromMs(Date.now() + 60_000);
    const results = await f.bus.js.consumers.get(
      RESULT_STREAM,
      (
        await f.bus.jsm.consumers.add(RESULT_STREAM, {
          filter_subject: resultSubject(h.hostId),
          ack_policy: AckPolicy.Explicit,
          deliver_policy: DeliverPolicy.All,
        })
      ).name,
    );
    await f.publish(late);
    await f.publish(inTime);
    const got = new Map<string, { success: boolean; code: string; message: string }>();
    const batch = await results.fetch({ max_messages: 2, expires: 10_000 });
    for await (const m of batch) {
      const r = fromBinary(OperationResultSchema, m.data);
      got.set(r.operationId, {
        success: r.success,
        code: r.error?.code ?? "",
        message: r.error?.message ?? "",
      });
      if (got.size === 2) break;
    }
    expect(got.get(late.operationId)).toMatchObject({ success: false, code: "deadline_exceeded" });
    expect(got.get(late.operationId)?.message).toMatch(/after its deadline .* not started/);
    expect(got.get(inTime.operationId)).toMatchObject({ success: true });
    // The driver ran once: the command in time; the late one never reached it.
    expect(h.log.calls.map((c) => c.volumeId)).toEqual([
      (inTime.payload.value as { volumeId: string }).volumeId,
    ]);
    // Both acked: nothing is redelivered.
    await waitUntil("nothing pending", async () => (await h.ackPending()) === 0);
    const info = await f.bus.jsm.consumers.info(COMMAND_STREAM, agentConsumerName(h.hostId));
    expect(info.num_pending + info.num_redelivered).toBe(0);
  });
});

describe("executeCommand and deadlines", () => {
  /** A driver none of whose methods may be called: every call is counted. */
  const countingDriver = () => {
    const calls: string[] = [];
    const driver = new Proxy({} as PoolDriver, {
      get: (_t, prop) => () => {
        calls.push(String(prop));
        return Promise.resolve({ artifact: undefined, adopted: false });
      },
    });
    return { calls, driver };
  };

  it("answers deadline_exceeded and never calls the driver once the deadline has passed", async () => {
    const { calls, driver } = countingDriver();
    const cmd = createCommand("h", "p");
    cmd.deadline = timestampFromMs(1_000_000);
    const r = await executeCommand(new Map([["p", driver]]), "h", cmd, () => 1_000_001);
    expect(r).toMatchObject({ success: false, operationId: cmd.operationId });
    expect(r.error?.code).toBe("deadline_exceeded");
    expect(calls).toEqual([]);
  });

  it("runs a command at its deadline, and one without a deadline at any time", async () => {
    const { calls, driver } = countingDriver();
    const atDeadline = createCommand("h", "p");
    atDeadline.deadline = timestampFromMs(1_000_000);
    await executeCommand(new Map([["p", driver]]), "h", atDeadline, () => 1_000_000);
    await executeCommand(new Map([["p", driver]]), "h", createCommand("h", "p"), () => 9e15);
    expect(calls).toEqual(["createVolume", "createVolume"]);
  });
});
