import { setTimeout as delay } from "node:timers/promises";
import { type Bus, COMMAND_STREAM, commandSubject, connectBus, ensureStreams } from "@stowage/bus";
import { newId } from "@stowage/core";
import {
  applyPoolReports,
  getOperation,
  type OperationRow,
  type Queryable,
  type Sql,
  upsertHost,
} from "@stowage/store";
import { hostRegistration, poolReport } from "@stowage/store/testing";
import { type NatsServer, natsAvailable, startNats } from "@stowage/testkit";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { ControllerContext } from "./context.js";
import { enqueueOperation } from "./outbox.js";
import { Dispatcher, RELAY_PAGE, relayOnce, startRelay } from "./relay.js";
import { GiB, openServiceFixture, type ServiceFixture } from "./testing/service-fixture.js";
import { mutate } from "./transaction.js";

describe.skipIf(!natsAvailable())("outbox relay (on PGlite and a real nats-server)", () => {
  let f: ServiceFixture;
  let nats: NatsServer;
  let bus: Bus;
  /** Hosts whose publishes fail, and how long each publish is held before it goes out (fault injection). */
  const broken = new Set<string>();
  let publishDelayMs = 0;
  let updates = 0;

  /** The fixture's context with the real bus behind a js that can fail or slow publishes, and a counting sql. */
  const relayCtx = (): ControllerContext => {
    const js = new Proxy(bus.js, {
      get(target, prop, receiver) {
        if (prop !== "publish") return Reflect.get(target, prop, receiver);
        return (...args: Parameters<Bus["js"]["publish"]>) => {
          for (const h of broken) if (args[0] === commandSubject(h)) throw new Error(`no route to ${h}`);
          // Written to the connection at once; with a delay, acked late (a slow broker).
          const ack = target.publish(...args);
          return publishDelayMs === 0 ? ack : delay(publishDelayMs).then(() => ack);
        };
      },
    });
    const sql = new Proxy(f.sql, {
      apply(target, self, args) {
        if (
          Array.isArray(args[0]) &&
          String(args[0].join("?")).includes("update operations set state = 'sent'")
        )
          updates++;
        return Reflect.apply(target, self, args);
      },
    }) as Sql;
    return { ...f.ctx, sql, bus: { ...bus, js } };
  };

  const enqueue = (sql: Queryable, hostId: string) =>
    enqueueOperation(sql, {
      kind: "delete_volume",
      volume: { id: newId("vol"), hostId, poolId: `${hostId}/files` },
      payload: { case: "deleteVolume", value: { volumeId: "v" } },
      actor: "test",
    });
  const states = async (ops: OperationRow[]) =>
    Promise.all(ops.map(async (o) => (await getOperation(f.sql, o.id))?.state));
  /** Message ids in the command stream for a host, in stream order. */
  async function streamed(hostId: string): Promise<string[]> {
    const ids: string[] = [];
    const info = await bus.jsm.streams.info(COMMAND_STREAM);
    for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
      const m = await bus.jsm.streams.getMessage(COMMAND_STREAM, { seq }).catch(() => null);
      if (m && m.subject === commandSubject(hostId)) ids.push(m.header.get("Nats-Msg-Id"));
    }
    return ids;
  }
  const purge = () => bus.jsm.streams.purge(COMMAND_STREAM);

  beforeAll(async () => {
    nats = await startNats();
    bus = await connectBus({ servers: nats.url, name: "relay-test" });
    await ensureStreams(bus.jsm);
    f = await openServiceFixture();
    await f.addPool("files", "dir", ["raw"]);
    for (const h of ["h2", "h3"]) {
      await upsertHost(f.sql, hostRegistration(h));
      await applyPoolReports(f.sql, h, [poolReport("files", 100n * GiB)]);
    }
  });
  afterAll(async () => {
    await bus?.close();
    await f?.close();
    await nats?.stop();
  });
  beforeEach(async () => {
    broken.clear();
    publishDelayMs = 0;
    updates = 0;
    await f.sql`update operations set state = 'succeeded' where state in ('pending', 'sent')`;
    await purge();
  });

  it("publishes every pending operation in one round, in outbox order, and marks them sent in one statement per page", async () => {
    const ops: OperationRow[] = [];
    for (let i = 0; i < 300; i++) ops.push(await enqueue(f.sql, ["h1", "h2", "h3"][i % 3]!));
    expect(await relayOnce(relayCtx())).toBe(300);
    expect(updates).toBe(Math.ceil(300 / RELAY_PAGE));
    expect(new Set(await states(ops))).toEqual(new Set(["sent"]));
    for (const h of ["h1", "h2", "h3"])
      expect(await streamed(h)).toEqual(ops.filter((o) => o.hostId === h).map((o) => o.id));
    // Nothing is left to send until the resend delay passes.
    expect(await relayOnce(relayCtx())).toBe(0);
  });

  it("keeps the operation id as the message id, so a re-send within the duplicate window is dropped", async () => {
    const op = await enqueue(f.sql, "h1");
    expect(await relayOnce(relayCtx())).toBe(1);
    await f.sql`update operations set state = 'pending' where id = ${op.id}`;
    expect(await relayOnce(relayCtx())).toBe(1);
    expect(await streamed("h1")).toEqual([op.id]);
  });

  it("lets a host whose publishes fail hold back only its own operations, which go out in a later round", async () => {
    const ops: OperationRow[] = [];
    for (let i = 0; i < 30; i++) ops.push(await enqueue(f.sql, ["h1", "h2", "h3"][i % 3]!));
    broken.add("h2");
    expect(await relayOnce(relayCtx())).toBe(20);
    const after = await states(ops);
    expect(after.filter((s, i) => ops[i]!.hostId === "h2" && s === "pending")).toHaveLength(10);
    expect(after.filter((s, i) => ops[i]!.hostId !== "h2" && s === "sent")).toHaveLength(20);
    expect(await streamed("h2")).toEqual([]);
    broken.clear();
    expect(await relayOnce(relayCtx())).toBe(10);
    expect(new Set(await states(ops))).toEqual(new Set(["sent"]));
  });

  it("ends a round when nothing of a page goes out (the broker is away), trying each operation once", async () => {
    for (let i = 0; i < RELAY_PAGE + 10; i++) await enqueue(f.sql, "h3");
    broken.add("h3");
    const t0 = performance.now();
    expect(await relayOnce(relayCtx())).toBe(0);
    expect(performance.now() - t0).toBeLessThan(5_000);
  });

  it("starts a round at once for a lone create, and coalesces a burst of creates into a few rounds", async () => {
    const ctx = relayCtx();
    // A long interval: only kicks can explain a prompt publish.
    const relay = startRelay(ctx, 60_000);
    ctx.kickRelay = () => relay.kick();
    try {
      await delay(50);
      const idle = relay.rounds;
      const t0 = performance.now();
      // A write and a kick, as after a host came back (a mutation publishes its own operations: the fast path).
      const write = async (h: string) => {
        const op = await enqueue(f.sql, h);
        ctx.kickRelay();
        return op;
      };
      const lone = await write("h1");
      await expect.poll(async () => (await states([lone]))[0], { interval: 5 }).toBe("sent");
      expect(performance.now() - t0).toBeLessThan(1_000);
      expect(relay.rounds).toBe(idle + 1);

      // A slow broker: each round takes 30 ms, so the burst's kicks arrive while a round runs.
      publishDelayMs = 30;
      const before = relay.rounds;
      const burst = await Promise.all(Array.from({ length: 40 }, (_, i) => write(`h${(i % 3) + 1}`)));
      await expect
        .poll(async () => new Set(await states(burst)), { timeout: 10_000 })
        .toEqual(new Set(["sent"]));
      await delay(100);
      expect(relay.rounds - before).toBeLessThanOrEqual(10);
      expect(relay.rounds - before).toBeGreaterThanOrEqual(1);
    } finally {
      await relay.stop();
    }
  });

  it("runs one more round, not one per kick, for the kicks that arrive while a round runs", async () => {
    publishDelayMs = 100;
    const ctx = relayCtx();
    const relay = startRelay(ctx, 60_000);
    try {
      await delay(150);
      const before = relay.rounds;
      await enqueue(f.sql, "h1");
      relay.kick();
      for (let i = 0; i < 20; i++) relay.kick();
      await expect.poll(() => relay.rounds - before, { timeout: 5_000 }).toBe(2);
      await delay(300);
      expect(relay.rounds - before).toBe(2);
    } finally {
      await relay.stop();
    }
  });

  describe("the fast path (Dispatcher)", () => {
    it("publishes committed operations at once, without a relay round, and marks a burst sent in a few statements", async () => {
      const ctx = relayCtx();
      let kicks = 0;
      ctx.kickRelay = () => kicks++;
      const d = new Dispatcher(ctx);
      try {
        const ops: OperationRow[] = [];
        for (let i = 0; i < 40; i++) ops.push(await enqueue(f.sql, ["h1", "h2", "h3"][i % 3]!));
        updates = 0;
        d.send(ops);
        // In flight: a relay round started now leaves them alone.
        expect(new Set(d.inFlight())).toEqual(new Set(ops.map((o) => o.id)));
        expect(await relayOnce(ctx, d.inFlight())).toBe(0);
        await expect
          .poll(async () => new Set(await states(ops)), { timeout: 5_000 })
          .toEqual(new Set(["sent"]));
        expect(updates).toBeLessThanOrEqual(5);
        expect(kicks).toBe(0);
        await expect.poll(() => d.inFlight().length).toBe(0);
        for (const h of ["h1", "h2", "h3"])
          expect(await streamed(h)).toEqual(ops.filter((o) => o.hostId === h).map((o) => o.id));
      } finally {
        await d.stop();
      }
    });

    it("leaves an operation it cannot publish pending, wakes the relay, and the relay sends it later", async () => {
      const ctx = relayCtx();
      let kicks = 0;
      ctx.kickRelay = () => kicks++;
      const d = new Dispatcher(ctx);
      try {
        broken.add("h2");
        const ok = await enqueue(f.sql, "h1");
        const bad = await enqueue(f.sql, "h2");
        d.send([ok, bad]);
        await expect.poll(async () => (await states([ok]))[0]).toBe("sent");
        await expect.poll(() => kicks).toBe(1);
        expect((await states([bad]))[0]).toBe("pending");
        expect(d.inFlight()).toEqual([]);
        broken.clear();
        expect(await relayOnce(ctx, d.inFlight())).toBe(1);
        expect(await streamed("h2")).toEqual([bad.id]);
      } finally {
        await d.stop();
      }
    });

    it("marks at stop what was acked, so a clean shutdown leaves nothing for the relay to send again", async () => {
      const ctx = relayCtx();
      const d = new Dispatcher(ctx);
      const op = await enqueue(f.sql, "h3");
      d.send([op]);
      await expect.poll(async () => (await streamed("h3")).length).toBe(1);
      await d.stop();
      expect((await states([op]))[0]).toBe("sent");
    });
  });

  it("leaves a pending operation younger than the grace to its writer, and takes it once the grace has passed", async () => {
    const op = await enqueue(f.sql, "h1");
    expect(await relayOnce(relayCtx(), [], 60_000)).toBe(0);
    expect((await states([op]))[0]).toBe("pending");
    await f.sql`update operations set created_at = now() - interval '2 minutes' where id = ${op.id}`;
    expect(await relayOnce(relayCtx(), [], 60_000)).toBe(1);
  });

  it("has a mutation hand the operations it wrote to the fast path once it commits, and none when it rolls back", async () => {
    const ctx = relayCtx();
    const dispatched: string[][] = [];
    ctx.dispatch = (ops) => dispatched.push(ops.map((o) => o.id));
    const [a, b] = await mutate(ctx, async (tx) => [await enqueue(tx, "h1"), await enqueue(tx, "h2")]);
    expect(dispatched).toEqual([[a!.id, b!.id]]);
    await expect(
      mutate(ctx, async (tx) => {
        await enqueue(tx, "h3");
        throw new Error("no");
      }),
    ).rejects.toThrow("no");
    expect(dispatched).toHaveLength(1);
  });
});
