import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { create, fromBinary } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  agentSubjects,
  COMMAND_STREAM,
  ensureAgentConsumer,
  heartbeatSubject,
  inventoryRequestSubject,
  inventorySubject,
} from "@stowage/bus";
import { AgentService, type Inventory, InventorySchema, RegisterAgentResponseSchema } from "@stowage/proto";
import { makeFakeSysfs, natsAvailable } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AgentHandle, startAgent } from "./agent.js";
import { parseAgentConfig } from "./config.js";
import {
  type BusFixture,
  createCommand,
  type DriverLog,
  deleteCommand,
  newDriverLog,
  openBusFixture,
  slowDriver,
  waitUntil,
} from "./testing/fixture.js";

/**
 * A real agent (its own process code, real dir pools and qemu-img, a real nats-server) against a stand-in for the
 * controller's RegisterAgent, which answers as the controller does (docs/architecture.md, join) and notes what
 * the agent had done by then.
 */
describe.skipIf(!natsAvailable())("agent (real nats-server, real qemu-img dir pool)", () => {
  let f: BusFixture;
  let server: http2.Http2Server;
  let controllerUrl: string;
  const agents: AgentHandle[] = [];
  const logs = new Map<string, DriverLog>();
  const scans = new Map<string, number>();
  /** Per host: what the agent published, in arrival order. */
  const traffic = new Map<string, string[]>();
  const inventories = new Map<string, Inventory[]>();
  const listsAtRegistration = new Map<string, number>();
  const sessions = new Set<http2.ServerHttp2Session>();

  beforeAll(async () => {
    f = await openBusFixture();
    const handler = connectNodeAdapter({
      routes: (router) =>
        router.service(AgentService, {
          async registerAgent(req) {
            const hostId = req.host!.name;
            listsAtRegistration.set(hostId, (logs.get(hostId)?.lists ?? 0) + (scans.get(hostId) ?? 0));
            const durable = await ensureAgentConsumer(f.bus.jsm, hostId);
            return create(RegisterAgentResponseSchema, {
              hostId,
              ...agentSubjects(hostId),
              commandConsumer: durable,
              heartbeatIntervalMs: 200,
            });
          },
        }),
    });
    server = http2.createServer(handler);
    server.on("session", (session) => {
      sessions.add(session);
      session.on("close", () => sessions.delete(session));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    controllerUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    for (const a of agents) await a.stop();
    // The agents' gRPC sessions stay open (their process would exit); the stand-in closes them.
    for (const session of sessions) session.destroy();
    await new Promise((r) => server.close(r));
    await f?.close();
  });

  async function agent(
    hostName: string,
    o: { delayMs: number; poolConcurrency?: number; scanDelayMs?: number },
  ) {
    const sys = await makeFakeSysfs(`${f.tmp}/${hostName}-sys`, { nodes: 1, cpusPerNode: 2 });
    const seen: string[] = [];
    const invs: Inventory[] = [];
    traffic.set(hostName, seen);
    inventories.set(hostName, invs);
    f.bus.nc.subscribe(heartbeatSubject(hostName), { callback: () => void seen.push("heartbeat") });
    f.bus.nc.subscribe(inventorySubject(hostName), {
      callback: (_e, m) => {
        const inv = fromBinary(InventorySchema, m.data);
        invs.push(inv);
        seen.push(inv.delta ? "delta" : "full");
      },
    });
    const log = newDriverLog();
    logs.set(hostName, log);
    scans.set(hostName, 0);
    const config = parseAgentConfig({
      hostName,
      controllerUrl,
      natsUrl: f.nats.url,
      sysfsRoot: sys.sysfsRoot,
      procRoot: sys.procRoot,
      metricsListen: "127.0.0.1:0",
      inventoryIntervalMs: 600_000,
      poolConcurrency: o.poolConcurrency ?? 4,
      shutdownGraceMs: 1000,
      logLevel: "silent",
      pools: [{ name: "p", kind: "dir", path: `${f.tmp}/${hostName}-pool` }],
    });
    const a = await startAgent(config, {
      wrapPool: (p) => ({ ...p, driver: slowDriver(p.driver, () => o.delayMs, log) }),
      wrapScan: (scan) => async () => {
        scans.set(hostName, (scans.get(hostName) ?? 0) + 1);
        await new Promise((r) => setTimeout(r, o.scanDelayMs ?? 0));
        return scan();
      },
    });
    agents.push(a);
    return { a, log, seen, invs };
  }

  it("registers without scanning its volumes and heartbeats before its first full scan is published", async () => {
    const { seen } = await agent("first", { delayMs: 0, scanDelayMs: 800 });
    expect(listsAtRegistration.get("first")).toBe(0);
    await waitUntil("the first full inventory", () => seen.includes("full"));
    expect(seen[0]).toBe("heartbeat");
    expect(seen.indexOf("heartbeat")).toBeLessThan(seen.indexOf("full"));
    expect(scans.get("first")).toBe(1);
  });

  it("publishes deltas after operations (the touched volumes and pool), and no full scan per operation", async () => {
    const { a, log, invs } = await agent("deltas", { delayMs: 50 });
    await waitUntil("the first full inventory", () => invs.some((i) => !i.delta));
    const listsBefore = log.lists;
    const scansBefore = scans.get("deltas");
    const creates = Array.from({ length: 6 }, () => createCommand(a.hostId, "p"));
    for (const c of creates) await f.publish(c);
    const ids = creates.map((c) => (c.payload.value as { volumeId: string }).volumeId);
    const inDeltas = () =>
      new Set(invs.filter((i) => i.delta).flatMap((i) => i.volumes.map((v) => v.volumeId)));
    await waitUntil("deltas of the six volumes", () => ids.every((id) => inDeltas().has(id)));
    await f.publish(deleteCommand(a.hostId, "p", ids[0]!));
    await waitUntil("a delta removing the first", () =>
      invs.some((i) => i.delta && i.removedVolumeIds.includes(ids[0]!)),
    );
    const deltas = invs.filter((i) => i.delta);
    // Coalesced: fewer deltas than operations, each naming the pool with its capacity.
    expect(deltas.length).toBeLessThan(7);
    for (const d of deltas) expect(d.pools.map((p) => p.name)).toEqual(["p"]);
    expect(deltas.at(-1)!.pools[0]!.provisionedBytes).toBeGreaterThan(0n);
    expect(log.lists).toBe(listsBefore);
    expect(scans.get("deltas")).toBe(scansBefore);
    // Sequences rise through heartbeats, fulls and deltas alike.
    const seqs = invs.map((i) => i.sequence);
    expect([...seqs].sort((x, y) => (x < y ? -1 : 1))).toEqual(seqs);
  });

  it("answers a request with a full inventory, and requests during a scan share the next one", async () => {
    const { invs } = await agent("asked", { delayMs: 0, scanDelayMs: 300 });
    await waitUntil("the first full inventory", () => invs.some((i) => !i.delta));
    const before = scans.get("asked")!;
    await Promise.all(
      Array.from({ length: 5 }, () =>
        f.bus.nc.request(inventoryRequestSubject("asked"), undefined, { timeout: 2000 }),
      ),
    );
    await waitUntil("a full inventory on request", () => invs.filter((i) => !i.delta).length >= 2);
    await new Promise((r) => setTimeout(r, 800));
    expect(scans.get("asked")! - before).toBeGreaterThanOrEqual(1);
    expect(scans.get("asked")! - before).toBeLessThanOrEqual(2);
  });

  it("stops within a few seconds while operations are running and queued, handing back the queued ones", async () => {
    const { a, log } = await agent("stopper", { delayMs: 10_000, poolConcurrency: 1 });
    for (let i = 0; i < 3; i++) await f.publish(createCommand(a.hostId, "p"));
    await waitUntil("one running, two queued", () => a.heldCommands() === 3 && log.running === 1);
    const t0 = Date.now();
    await a.stop();
    const ms = Date.now() - t0;
    expect(ms).toBeLessThan(3000);
    expect(log.calls.length).toBe(1);
    // The two queued are back at once for the next agent; the running one is redelivered after the ack wait.
    const next = await f.bus.js.consumers.get(COMMAND_STREAM, "agent-stopper");
    // Asks for three: the running one must not come back (acked here, so none is counted twice).
    const batch = await next.fetch({ max_messages: 3, expires: 2000 });
    let handedBack = 0;
    for await (const m of batch) {
      handedBack++;
      m.ack();
    }
    expect(handedBack).toBe(2);
  });
});
