import { setTimeout as delay } from "node:timers/promises";
import { AckPolicy, type JsMsg, RetentionPolicy } from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import { type NatsServer, natsAvailable, startNats } from "@stowage/testkit";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { type BatchHandlers, consumeBatches } from "./batch.js";
import { type Bus, connectBus, ensureStreams } from "./connection.js";
import { DEAD_LETTER_STREAM, PoisonMessageError, type PoisonReason } from "./poison.js";

describe.skipIf(!natsAvailable())("consumeBatches (on a real nats-server)", () => {
  let nats: NatsServer;
  let bus: Bus;
  let durable = 0;
  let name = "";

  /** Runs the batch consumer on the current durable until the returned function stops it. */
  async function run(handlers: BatchHandlers, b: Bus = bus) {
    const abort = new AbortController();
    const consumer = await b.js.consumers.get("BT", name);
    const done = consumeBatches(consumer, handlers, { signal: abort.signal, retryDelayMs: 100 });
    return async () => {
      abort.abort();
      await done;
    };
  }
  const publish = (n: number, tag = "m") =>
    Promise.all(Array.from({ length: n }, (_, i) => bus.js.publish(`bt.${tag}`, `${tag}${i}`)));
  const text = (m: JsMsg) => m.string();
  const info = () => bus.jsm.consumers.info("BT", name);

  beforeAll(async () => {
    nats = await startNats();
    bus = await connectBus({ servers: nats.url, name: "batch-test" });
    await bus.jsm.streams.add({ name: "BT", subjects: ["bt.>"], retention: RetentionPolicy.Workqueue });
  });
  afterAll(async () => {
    await bus?.close();
    await nats?.stop();
  });
  beforeEach(async () => {
    if (name) await bus.jsm.consumers.delete("BT", name);
    await bus.jsm.streams.purge("BT");
    name = `c${++durable}`;
    await bus.jsm.consumers.add("BT", {
      durable_name: name,
      ack_policy: AckPolicy.Explicit,
      ack_wait: nanos(1_000),
      max_ack_pending: 64,
    });
  });

  it("hands over a lone message at once, and a burst that arrived meanwhile in a few batches of at most 64", async () => {
    const batches: string[][] = [];
    let release = () => {};
    const held = new Promise<void>((r) => {
      release = r;
    });
    const handlers: BatchHandlers = {
      batch: async (msgs) => {
        batches.push(msgs.map(text));
      },
      one: async (msg) => {
        batches.push([text(msg)]);
        if (text(msg) === "lone0") await held;
      },
    };
    const stop = await run(handlers);
    try {
      const t0 = performance.now();
      await publish(1, "lone");
      await expect.poll(() => batches.length, { interval: 5 }).toBe(1);
      expect(performance.now() - t0).toBeLessThan(500);
      // While the lone message is held, a burst arrives.
      await publish(150);
      await delay(200);
      release();
      await expect.poll(() => batches.flat().length, { timeout: 5_000 }).toBe(151);
      expect(new Set(batches.flat()).size).toBe(151);
      expect(Math.max(...batches.map((b) => b.length))).toBeLessThanOrEqual(64);
      expect(batches.length).toBeLessThanOrEqual(8);
      await expect.poll(async () => (await info()).num_ack_pending, { timeout: 3_000 }).toBe(0);
      expect((await info()).num_pending).toBe(0);
    } finally {
      await stop();
    }
  });

  it("retries a failed batch one message at a time, so a poisoned message delays only itself", async () => {
    const applied: string[] = [];
    let poisonTries = 0;
    let first = true;
    const handlers: BatchHandlers = {
      batch: async (msgs) => {
        if (msgs.some((m) => text(m) === "poison0")) throw new Error("the batch failed");
        applied.push(...msgs.map(text));
      },
      one: async (msg) => {
        if (first) {
          // Hold the first message so that the rest arrive together, in one batch with the poisoned one.
          first = false;
          await delay(200);
        }
        if (text(msg) === "poison0" && ++poisonTries < 3) throw new Error("poisoned");
        applied.push(text(msg));
      },
    };
    const stop = await run(handlers);
    try {
      await publish(1, "first");
      await delay(50);
      await publish(20);
      await publish(1, "poison");
      await expect.poll(() => applied.length, { timeout: 5_000 }).toBe(22);
      expect(applied.filter((m) => m.startsWith("m"))).toHaveLength(20);
      expect(applied.indexOf("poison0")).toBeGreaterThan(applied.indexOf("m19"));
      expect(poisonTries).toBe(3);
      await expect.poll(async () => (await info()).num_ack_pending, { timeout: 3_000 }).toBe(0);
    } finally {
      await stop();
    }
  });

  it("acks only after the handler resolves: messages applied before a crash are redelivered", async () => {
    const crashing = await connectBus({ servers: nats.url, name: "batch-test-crash" });
    const seen: string[] = [];
    let crashed!: () => void;
    const crash = new Promise<void>((r) => {
      crashed = r;
    });
    const stopCrashing = await run(
      {
        batch: async (msgs) => {
          seen.push(...msgs.map(text));
          await crashing.nc.close();
          crashed();
        },
        one: async (msg) => {
          seen.push(text(msg));
          await crashing.nc.close();
          crashed();
        },
      },
      crashing,
    );
    await publish(5);
    await crash;
    await stopCrashing();
    expect(seen.length).toBeGreaterThan(0);

    const redelivered: { text: string; redelivered: boolean }[] = [];
    const stop = await run({
      batch: async (msgs) => {
        redelivered.push(...msgs.map((m) => ({ text: text(m), redelivered: m.redelivered })));
      },
      one: async (m) => {
        redelivered.push({ text: text(m), redelivered: m.redelivered });
      },
    });
    try {
      await expect.poll(() => redelivered.length, { timeout: 5_000 }).toBe(5);
      for (const s of seen) expect(redelivered).toContainEqual({ text: s, redelivered: true });
      await expect.poll(async () => (await info()).num_ack_pending, { timeout: 3_000 }).toBe(0);
    } finally {
      await stop();
    }
  });
  it("parks a message that fails on every delivery after maxDeliveries, and one that is poison at once, with a dead-letter copy; the others go through (issue 10)", async () => {
    await ensureStreams(bus.jsm);
    const parked: { text: string; reason: PoisonReason; deliveries: number }[] = [];
    let failures = 0;
    const handlers: BatchHandlers = {
      batch: async (msgs) => {
        if (msgs.some((m) => text(m).startsWith("bad"))) throw new Error("one of them is bad");
      },
      one: async (msg) => {
        if (text(msg) === "bad-always") {
          failures++;
          throw new Error("fails every time");
        }
        if (text(msg) === "bad-undecodable") throw new PoisonMessageError("does not decode");
      },
    };
    const abort = new AbortController();
    const consumer = await bus.js.consumers.get("BT", name);
    const done = consumeBatches(consumer, handlers, {
      signal: abort.signal,
      retryDelayMs: 50,
      poison: {
        consumer: "bt",
        maxDeliveries: 3,
        js: bus.js,
        onParked: ({ msg, reason }) =>
          parked.push({ text: text(msg), reason, deliveries: msg.info.deliveryCount }),
      },
    });
    try {
      await Promise.all([
        bus.js.publish("bt.x", "bad-always"),
        bus.js.publish("bt.x", "bad-undecodable"),
        publish(5, "ok"),
      ]);
      await expect.poll(() => parked.length, { timeout: 5_000 }).toBe(2);
      expect(parked.sort((a, b) => a.text.localeCompare(b.text))).toEqual([
        { text: "bad-always", reason: "failed", deliveries: 3 },
        { text: "bad-undecodable", reason: "undecodable", deliveries: 1 },
      ]);
      expect(failures).toBe(3);
      // Gone from the work queue, nothing pending, and the copies are in the dead-letter stream.
      await expect
        .poll(async () => (await bus.jsm.streams.info("BT")).state.messages, { timeout: 3_000 })
        .toBe(0);
      expect((await info()).num_ack_pending).toBe(0);
      await expect
        .poll(async () => (await bus.jsm.streams.info(DEAD_LETTER_STREAM)).state.messages, { timeout: 3_000 })
        .toBe(2);
      const copy = await bus.jsm.streams.getMessage(DEAD_LETTER_STREAM, { last_by_subj: "stowage.dead.bt" });
      expect(copy?.header.get("Stowage-Original-Subject")).toBe("bt.x");
      expect(["failed", "undecodable"]).toContain(copy?.header.get("Stowage-Reason"));
    } finally {
      abort.abort();
      await done;
    }
  });
});
