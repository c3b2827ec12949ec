import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import {
  type Bus,
  connectBus,
  heartbeatSubject,
  inventoryRequestSubject,
  inventorySubject,
} from "@stowage/bus";
import {
  HeartbeatSchema,
  type Inventory,
  InventorySchema,
  PoolKind,
  PoolReportSchema,
  RegisterAgentRequestSchema,
  VolumeFormat,
} from "@stowage/proto";
import { getHost, getPool, listFindings, replaceFindings } from "@stowage/store";
import { type NatsServer, natsAvailable, startNats } from "@stowage/testkit";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { applyInventory, createSequenceTracker, registerAgent, subscribeAgentTraffic } from "./agents.js";
import { GiB, openServiceFixture, type ServiceFixture } from "./testing/service-fixture.js";

const report = (name: string, usedGiB: bigint) =>
  create(PoolReportSchema, {
    name,
    kind: PoolKind.DIR,
    healthy: true,
    totalBytes: 100n * GiB,
    usedBytes: usedGiB * GiB,
    freeBytes: (100n - usedGiB) * GiB,
    provisionedBytes: usedGiB * GiB,
    formats: [VolumeFormat.RAW],
  });

const delta = (sequence: bigint, over: MessageInitShape<typeof InventorySchema> = {}) =>
  create(InventorySchema, { hostId: "h1", sequence, delta: true, ...over });

describe("applying an inventory delta (on PGlite)", () => {
  let f: ServiceFixture;
  beforeAll(async () => {
    f = await openServiceFixture();
    await f.addPool("a", "dir", ["raw"]);
    await f.addPool("b", "dir", ["raw"]);
  });
  afterAll(() => f.close());

  it("updates the named pool only, and leaves the other present with its report", async () => {
    await applyInventory(f.ctx, delta(5n, { pools: [report("a", 30n)] }));
    const a = await getPool(f.sql, "h1/a");
    const b = await getPool(f.sql, "h1/b");
    expect([a?.usedBytes, a?.freeBytes, a?.present]).toEqual([30n * GiB, 70n * GiB, true]);
    expect([b?.usedBytes, b?.present, b?.healthy]).toEqual([0n, true, true]);
  });

  it("drops the findings of the touched volumes only, and keeps the others", async () => {
    await replaceFindings(f.sql, "h1", [
      { hostId: "h1", kind: "missing", subject: "vol-made", poolId: "h1/a", detail: "" },
      { hostId: "h1", kind: "orphan", subject: "vol-gone", poolId: "h1/a", detail: "" },
      { hostId: "h1", kind: "missing", subject: "vol-other", poolId: "h1/b", detail: "" },
    ]);
    await applyInventory(
      f.ctx,
      delta(6n, {
        pools: [report("a", 31n)],
        volumes: [{ volumeId: "vol-made", poolName: "a", sizeBytes: GiB, path: "/p/vol-made" }],
        removedVolumeIds: ["vol-gone"],
      }),
    );
    expect((await listFindings(f.sql, { hostId: "h1" })).map((x) => x.subject)).toEqual(["vol-other"]);
  });
});

describe("registering an agent (on PGlite)", () => {
  let f: ServiceFixture;
  beforeAll(async () => {
    f = await openServiceFixture();
  });
  afterAll(async () => {
    await f?.close();
  });

  it("refuses numbers the database cannot hold as INVALID_ARGUMENT before anything is written (issue 10's fuzzing: RegisterAgent answered INTERNAL)", async () => {
    const register = (init: MessageInitShape<typeof RegisterAgentRequestSchema>) =>
      registerAgent(f.ctx, create(RegisterAgentRequestSchema, init));
    await expect(register({ host: { name: "h9", cpuCount: 4294967295 } })).rejects.toMatchObject({
      code: "invalid_argument",
      message: expect.stringMatching(/cpu_count 4294967295 is out of range/),
    });
    await expect(register({ host: { name: "h9", numaNodes: [{ id: 2147483648 }] } })).rejects.toMatchObject({
      code: "invalid_argument",
    });
    await expect(
      register({
        host: { name: "h9" },
        pools: [{ name: "p", kind: PoolKind.DIR, totalBytes: 18446744073709551615n }],
      }),
    ).rejects.toMatchObject({ code: "invalid_argument", message: expect.stringMatching(/total_bytes/) });
    await expect(
      register({ host: { name: "h9" }, pools: [{ name: "p", kind: PoolKind.DIR, maxVolumes: 4294967295 }] }),
    ).rejects.toMatchObject({ code: "invalid_argument" });
  });
});

describe("a host's sequence", () => {
  it("is taken as it comes, asking for a full inventory when the host is new and nothing more", () => {
    const t = createSequenceTracker(30_000, () => 0);
    expect(t.observe("h", 1n, "heartbeat")).toEqual({ apply: true, requestFull: true });
    expect(t.observe("h", 2n, "full")).toEqual({ apply: true, requestFull: false });
    expect(t.observe("h", 3n, "delta")).toEqual({ apply: true, requestFull: false });
    expect(t.observe("h", 4n, "heartbeat")).toEqual({ apply: true, requestFull: false });
  });

  it("asks for a full inventory after a gap, once per interval until one arrives", () => {
    let now = 0;
    const t = createSequenceTracker(30_000, () => now);
    t.observe("h", 1n, "full");
    expect(t.observe("h", 3n, "delta")).toEqual({ apply: true, requestFull: true });
    now = 1000;
    expect(t.observe("h", 5n, "delta").requestFull).toBe(false);
    now = 31_000;
    expect(t.observe("h", 7n, "delta").requestFull).toBe(true);
    expect(t.observe("h", 8n, "full").requestFull).toBe(false);
    now = 32_000;
    expect(t.observe("h", 10n, "delta").requestFull).toBe(true);
  });

  it("takes a sequence that goes back as a restarted agent, and asks it for a full inventory", () => {
    const t = createSequenceTracker(30_000, () => 0);
    t.observe("h", 1n, "full");
    t.observe("h", 50n, "heartbeat");
    expect(t.observe("h", 1n, "heartbeat")).toEqual({ apply: true, requestFull: true });
    expect(t.observe("h", 2n, "full").requestFull).toBe(false);
    expect(t.observe("h", 3n, "delta")).toEqual({ apply: true, requestFull: false });
  });
});

describe.skipIf(!natsAvailable())("agent traffic over a real NATS (on PGlite)", () => {
  let nats: NatsServer;
  let bus: Bus;
  let f: ServiceFixture;
  let stop: () => void;
  let requests: number;

  beforeAll(async () => {
    nats = await startNats();
    bus = await connectBus({ servers: nats.url, name: "agents-test" });
    f = await openServiceFixture();
    await f.addPool("a", "dir", ["raw"]);
    await f.addPool("b", "dir", ["raw"]);
    bus.nc.subscribe(inventoryRequestSubject("h1"), { callback: () => void requests++ });
    stop = subscribeAgentTraffic(f.ctx, bus);
  });
  beforeEach(() => {
    requests = 0;
  });
  afterAll(async () => {
    stop();
    await bus.close();
    await f.close();
    await nats.stop();
  });

  const publishInventory = (inv: Inventory) =>
    bus.nc.publish(inventorySubject("h1"), toBinary(InventorySchema, inv));
  const publishHeartbeat = (sequence: bigint) =>
    bus.nc.publish(
      heartbeatSubject("h1"),
      toBinary(HeartbeatSchema, create(HeartbeatSchema, { hostId: "h1", sequence, bootId: "b1" })),
    );
  const usedOf = async (pool: string) => (await getPool(f.sql, pool))?.usedBytes;
  const settle = async (what: () => Promise<boolean>) => {
    for (let i = 0; i < 100 && !(await what()); i++) await new Promise((r) => setTimeout(r, 20));
  };

  it("applies a delta in sequence without asking for more, and asks for a full inventory after a lost one", async () => {
    publishInventory(
      create(InventorySchema, {
        hostId: "h1",
        sequence: 1n,
        host: { name: "h1" },
        pools: [report("a", 1n), report("b", 1n)],
      }),
    );
    publishInventory(delta(2n, { pools: [report("a", 2n)] }));
    await settle(async () => (await usedOf("h1/a")) === 2n * GiB);
    expect(await usedOf("h1/a")).toBe(2n * GiB);
    expect(requests).toBe(0);

    // Sequence 3 (a delta) is lost: the next message shows the gap.
    publishHeartbeat(4n);
    publishInventory(delta(5n, { pools: [report("b", 5n)] }));
    await settle(async () => requests > 0 && (await usedOf("h1/b")) === 5n * GiB);
    expect(requests).toBe(1);
    expect(await usedOf("h1/b")).toBe(5n * GiB);
    expect((await getPool(f.sql, "h1/a"))?.present).toBe(true);
  });

  const count = async (
    metric: { get(): Promise<{ values: { labels: object; value: number }[] }> },
    labels: object,
  ) =>
    (await metric.get()).values.find((v) => JSON.stringify(v.labels) === JSON.stringify(labels))?.value ?? 0;

  it("drops a heartbeat or inventory whose host is not its subject's, counts it as forged and applies nothing", async () => {
    const forged = (kind: string) => count(f.ctx.metrics.busForged, { kind });
    const poison = (consumer: string) => count(f.ctx.metrics.busPoison, { consumer, reason: "invalid" });
    const before = { heartbeat: await forged("heartbeat"), inventory: await forged("inventory") };
    const poisonBefore = (await poison("heartbeats")) + (await poison("inventories"));
    const h1 = await getHost(f.sql, "h1");
    const usedBefore = await usedOf("h1/a");

    // h1 keeping h2 up; h2 rewriting h1's pools; h1 rewriting h2's host record in its own full inventory.
    bus.nc.publish(
      heartbeatSubject("h1"),
      toBinary(HeartbeatSchema, create(HeartbeatSchema, { hostId: "h2", sequence: 1n, bootId: "b2" })),
    );
    bus.nc.publish(
      inventorySubject("h2"),
      toBinary(InventorySchema, delta(100n, { pools: [report("a", 50n)] })),
    );
    bus.nc.publish(
      inventorySubject("h1"),
      toBinary(
        InventorySchema,
        create(InventorySchema, {
          hostId: "h1",
          sequence: 101n,
          host: { name: "h2" },
          pools: [report("a", 60n)],
        }),
      ),
    );
    await expect.poll(() => forged("heartbeat"), { timeout: 5000 }).toBe(before.heartbeat + 1);
    await expect.poll(() => forged("inventory"), { timeout: 5000 }).toBe(before.inventory + 2);
    expect((await poison("heartbeats")) + (await poison("inventories"))).toBe(poisonBefore);
    expect(await getHost(f.sql, "h2")).toBeUndefined();
    expect(await getHost(f.sql, "h1")).toEqual(h1);
    expect(await usedOf("h1/a")).toBe(usedBefore);
  });
});
