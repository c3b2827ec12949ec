import { create, type DescMessage, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  type Bus,
  COMMAND_STREAM,
  commandSubject,
  connectBus,
  DEAD_LETTER_STREAM,
  heartbeatSubject,
  inventorySubject,
  RESULT_CONSUMER,
  RESULT_STREAM,
  resultSubject,
} from "@stowage/bus";
import { validateName } from "@stowage/core";
import {
  AgentCommandSchema,
  HeartbeatSchema,
  InventorySchema,
  OperationKind,
  OperationResultSchema,
  PoolKind,
  VolumeFormat,
} from "@stowage/proto";
import { natsAvailable } from "@stowage/testkit";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, startCluster, waitFor } from "./support/cluster.js";
import { fuzzCases, fuzzSeed, type Rng, rng } from "./support/fuzz.js";

/**
 * Issue 10's bus fuzzing, against real processes (a controller on PGlite and an agent, from dist/): malformed
 * commands, results, inventories and heartbeats never crash a consumer or stop it consuming (a valid volume is
 * still made afterwards, the host stays up), and a poison message, one that fails on every delivery, is parked
 * after 5 deliveries and counted in stowage_bus_poison_messages_total on the consumer's /metrics. A message
 * naming another (valid) host than its subject's is forged: the controller counts it in
 * stowage_bus_forged_messages_total instead.
 */

const SEED = fuzzSeed();
/** Malformed messages of each kind per subject; STOWAGE_FUZZ_CASES for more. */
const CASES = fuzzCases(40);
const HOST = "bnode1";

/** Random bytes, truncated encodings, valid encodings with absurd fields, and messages for another host. */
function malformed(r: Rng, absurd: () => Uint8Array, n: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    const k = i % 4;
    if (k === 0) out.push(r.bytes(r.int(0, r.chance(0.2) ? 64 * 1024 : 200)));
    else if (k === 1) {
      const b = absurd();
      out.push(b.subarray(0, Math.max(1, r.int(1, b.length - 1))));
    } else out.push(absurd());
  }
  return out;
}

/** What a consumer should make of a message: it does not decode, or it does (and is then judged further). */
function decodes(desc: DescMessage, b: Uint8Array): boolean {
  try {
    fromBinary(desc, b);
    return true;
  } catch {
    return false;
  }
}

/** A scrape; tried again once, as fetch may reuse a keep-alive socket the server has just closed (ECONNRESET). */
async function scrape(url: string): Promise<string> {
  try {
    return await (await fetch(url)).text();
  } catch {
    return (await fetch(url)).text();
  }
}

/** The value of stowage_bus_poison_messages_total for a consumer and reason (0 when absent). */
function poison(text: string, consumer: string, reason: string): number {
  for (const line of text.split("\n")) {
    if (!line.startsWith("stowage_bus_poison_messages_total{")) continue;
    if (line.includes(`consumer="${consumer}"`) && line.includes(`reason="${reason}"`))
      return Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return 0;
}

/** The value of stowage_bus_forged_messages_total for a kind (0 when absent). */
function forged(text: string, kind: string): number {
  for (const line of text.split("\n")) {
    if (line.startsWith(`stowage_bus_forged_messages_total{kind="${kind}"}`))
      return Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return 0;
}

/** Whether a host id is a valid name: a message naming another valid host is forged, one naming none malformed. */
function isName(id: string): boolean {
  try {
    validateName("host name", id);
    return true;
  } catch {
    return false;
  }
}

/** The port a process listens on (the agent's /metrics, on a port it picked itself). */
async function listeningPort(pid: number): Promise<number> {
  const r = await execa("ss", ["-ltnpH"]);
  const line = r.stdout.split("\n").find((l) => l.includes(`pid=${pid},`));
  if (!line) throw new Error(`process ${pid} listens on no TCP port`);
  return Number(/127\.0\.0\.1:(\d+)/.exec(line)![1]);
}

const why = natsAvailable() ? "" : " - skipped: no nats-server on PATH (or STOWAGE_NATS_SERVER)";

describe.skipIf(why !== "")(`bus fuzzing, seed ${SEED} (STOWAGE_FUZZ_SEED=${SEED} replays it)${why}`, () => {
  let c: Cluster;
  let bus: Bus;
  let agentMetrics = "";
  let controllerMetrics = "";
  const r = rng(SEED);

  beforeAll(async () => {
    c = await startCluster({ database: "pglite", agents: [HOST] });
    bus = await connectBus({ servers: c.nats.url, name: "fuzz-bus" });
    agentMetrics = `http://127.0.0.1:${await listeningPort(c.agents[0]!.service.pid)}/metrics`;
    controllerMetrics = `http://127.0.0.1:${c.metricsPort}/metrics`;
  }, 180_000);
  afterAll(async () => {
    await bus?.close();
    await c?.stop();
  });

  const stillServing = async (name: string) => {
    expect(c.controller.running, "the controller is running").toBe(true);
    expect(c.agents[0]!.service.running, "the agent is running").toBe(true);
    await c.stowctl(["volume", "create", name, "--size", "16M", "--format", "raw", "--wait"], {
      reject: true,
    });
    const v = await c.stowctlJson<{ state: string }>(["volume", "get", name]);
    expect(v.state).toMatch(/available/i);
  };

  it("the agent's command consumer: malformed commands are parked and counted, a poison one after 5 deliveries, and the agent keeps making volumes", async () => {
    const absurd = () =>
      toBinary(
        AgentCommandSchema,
        create(AgentCommandSchema, {
          operationId: r.pick(["", "op-x", "../../etc", "op-\u00e9".repeat(50)]),
          kind: r.pick([99, -1, OperationKind.CREATE_VOLUME, OperationKind.DELETE_VOLUME]),
          hostId: r.pick([HOST, HOST, "evil", ""]),
          poolName: r.pick(["default", "nope", "../x", ""]),
          attempt: 4294967295,
          payload: r.pick([
            {
              case: "createVolume" as const,
              value: {
                volumeId: r.pick(["vol-x", "", "../../x"]),
                sizeBytes: 18446744073709551615n,
                format: 99,
              },
            },
            {
              case: "deleteVolume" as const,
              value: { volumeId: "vol-00000000000000000000000000000000", wipe: 7 },
            },
            { case: "resizeVolume" as const, value: { volumeId: "", newSizeBytes: 0n } },
            { case: undefined },
          ]),
        }),
      );
    const msgs = malformed(r, absurd, CASES);
    const before = await scrape(agentMetrics);
    let undecodable = 0;
    let otherHost = 0;
    for (const m of msgs) {
      if (!decodes(AgentCommandSchema, m)) undecodable++;
      else if (fromBinary(AgentCommandSchema, m).hostId !== HOST) otherHost++;
      await bus.js.publish(commandSubject(HOST), m);
    }
    // A poison command: its result (an operation id of 600,000 characters, twice: in the body and as the
    // message id) is over the server's 1 MiB payload limit, so publishing it fails on every delivery.
    await bus.js.publish(
      commandSubject(HOST),
      toBinary(
        AgentCommandSchema,
        create(AgentCommandSchema, {
          operationId: `op-${"p".repeat(600_000)}`,
          kind: OperationKind.DELETE_VOLUME,
          hostId: HOST,
          poolName: "default",
          payload: { case: "deleteVolume", value: { volumeId: "vol-00000000000000000000000000000001" } },
        }),
      ),
    );
    await stillServing("fz-after-commands");
    await waitFor(
      "the poison command parked",
      async () => poison(await scrape(agentMetrics), "commands", "failed") >= 1,
      30_000,
    );
    const after = await scrape(agentMetrics);
    const delta = (reason: string) => poison(after, "commands", reason) - poison(before, "commands", reason);
    expect({ undecodable: delta("undecodable"), invalid: delta("invalid"), failed: delta("failed") }).toEqual(
      {
        undecodable,
        invalid: otherHost,
        failed: 1,
      },
    );
    // Nothing left in the host's work queue: every malformed command was acked, run or parked.
    await waitFor(
      "the command queue drained",
      async () => {
        const info = await bus.jsm.consumers.info(COMMAND_STREAM, `agent-${HOST}`);
        return info.num_pending + info.num_ack_pending === 0;
      },
      15_000,
    );
    const parked = await bus.jsm.streams.getMessage(DEAD_LETTER_STREAM, {
      last_by_subj: `stowage.dead.commands.${HOST}`,
    });
    expect(parked?.header.get("Stowage-Original-Subject")).toBe(commandSubject(HOST));
  }, 120_000);

  it("the controller's result consumer: malformed results are parked and counted, a poison one after 5 deliveries, and results still apply", async () => {
    const absurd = () =>
      toBinary(
        OperationResultSchema,
        create(OperationResultSchema, {
          operationId: r.pick(["", "op-00000000000000000000000000000000", "op-x", "../x"]),
          hostId: r.pick([HOST, HOST, "evil", ""]),
          kind: r.pick([99, -5, OperationKind.CREATE_VOLUME]),
          success: r.chance(0.5),
          error: r.chance(0.3) ? { code: "no-such-code", message: "x".repeat(10_000) } : undefined,
          artifact: {
            volumeId: "vol-x",
            sizeBytes: 18446744073709551615n,
            allocatedBytes: 18446744073709551615n,
            format: 42 as VolumeFormat,
            path: "\u00e9".repeat(1000),
          },
          durationMs: 18446744073709551615n,
        }),
      );
    const msgs = malformed(r, absurd, CASES);
    const before = await scrape(controllerMetrics);
    let undecodable = 0;
    let noHost = 0;
    let otherHost = 0;
    for (const m of msgs) {
      if (!decodes(OperationResultSchema, m)) undecodable++;
      else {
        const id = fromBinary(OperationResultSchema, m).hostId;
        if (id !== HOST && isName(id)) otherHost++;
        else if (id !== HOST) noHost++;
      }
      await bus.js.publish(resultSubject(HOST), m);
    }
    // Right host id, wrong subject: a host publishing for another.
    await bus.js.publish(
      resultSubject("evil"),
      toBinary(OperationResultSchema, create(OperationResultSchema, { operationId: "op-y", hostId: HOST })),
    );
    otherHost++;
    // A poison result: PostgreSQL refuses its operation id (a NUL character) every time it is applied.
    await bus.js.publish(
      resultSubject(HOST),
      toBinary(
        OperationResultSchema,
        create(OperationResultSchema, { operationId: "op-\u0000", hostId: HOST, success: true }),
      ),
    );
    await stillServing("fz-after-results");
    await waitFor(
      "the poison result parked",
      async () => poison(await scrape(controllerMetrics), "results", "failed") >= 1,
      40_000,
    );
    const after = await scrape(controllerMetrics);
    const delta = (reason: string) => poison(after, "results", reason) - poison(before, "results", reason);
    expect({ undecodable: delta("undecodable"), invalid: delta("invalid"), failed: delta("failed") }).toEqual(
      {
        undecodable,
        invalid: noHost,
        failed: 1,
      },
    );
    expect(forged(after, "result") - forged(before, "result")).toBe(otherHost);
    await waitFor(
      "the result queue drained",
      async () => {
        const info = await bus.jsm.consumers.info(RESULT_STREAM, RESULT_CONSUMER);
        return info.num_pending + info.num_ack_pending === 0;
      },
      15_000,
    );
  }, 120_000);

  it("the controller's heartbeat and inventory subscribers: malformed messages are dropped and counted, the host stays up and its inventories still apply", async () => {
    const before = await scrape(controllerMetrics);
    const pools = (n: number) =>
      Array.from({ length: n }, (_, i) => ({
        name: r.pick([`p${i}`, "../x", "", "default"]),
        kind: r.pick([99, PoolKind.DIR, 0]),
        totalBytes: 18446744073709551615n,
        formats: [VolumeFormat.RAW, 77],
        overcommitRatio: Number.NaN,
        reservedPercent: -5,
      }));
    const absurdInventory = () =>
      toBinary(
        InventorySchema,
        create(InventorySchema, {
          hostId: r.pick(["evil", "", "x\u0000y", "../x"]),
          sequence: 18446744073709551615n,
          delta: r.chance(0.5),
          host: { name: r.pick(["evil", HOST]), cpuCount: 4294967295, labels: { "": "x".repeat(5000) } },
          pools: pools(r.chance(0.2) ? 10_000 : 3),
          foreignArtifacts: Array.from({ length: 100 }, () => "f".repeat(300)),
          removedVolumeIds: ["vol-x", ""],
        }),
      );
    const absurdHeartbeat = () =>
      toBinary(
        HeartbeatSchema,
        create(HeartbeatSchema, {
          hostId: r.pick(["evil", "", "x\u0000y", "nope"]),
          sequence: 18446744073709551615n,
          runningOperations: 4294967295,
          bootId: "b".repeat(10_000),
        }),
      );
    const inventories = malformed(r, absurdInventory, CASES);
    const heartbeats = malformed(r, absurdHeartbeat, CASES);
    const undecodable = {
      inventories: inventories.filter((m) => !decodes(InventorySchema, m)).length,
      heartbeats: heartbeats.filter((m) => !decodes(HeartbeatSchema, m)).length,
    };
    // Every one that decodes names another host than the subject's (none is HOST): forged when it names a valid
    // host, refused as invalid when it names none.
    const hostIds = (schema: typeof InventorySchema | typeof HeartbeatSchema, ms: Uint8Array[]) =>
      ms.filter((m) => decodes(schema, m)).map((m) => fromBinary(schema, m).hostId);
    const named = {
      inventories: hostIds(InventorySchema, inventories),
      heartbeats: hostIds(HeartbeatSchema, heartbeats),
    };
    const decoded = {
      inventories: named.inventories.filter((id) => !isName(id)).length,
      heartbeats: named.heartbeats.filter((id) => !isName(id)).length,
    };
    const forgedOnes = {
      inventory: named.inventories.filter(isName).length,
      heartbeat: named.heartbeats.filter(isName).length,
    };
    for (const m of inventories) bus.nc.publish(inventorySubject(HOST), m);
    for (const m of heartbeats) bus.nc.publish(heartbeatSubject(HOST), m);
    await bus.nc.flush();
    await waitFor(
      "every malformed message counted",
      async () => {
        const t = await scrape(controllerMetrics);
        const d = (consumer: string, reason: string) =>
          poison(t, consumer, reason) - poison(before, consumer, reason);
        const f = (kind: string) => forged(t, kind) - forged(before, kind);
        return (
          d("inventories", "undecodable") + d("inventories", "invalid") + f("inventory") ===
            inventories.length &&
          d("heartbeats", "undecodable") + d("heartbeats", "invalid") + f("heartbeat") === heartbeats.length
        );
      },
      20_000,
    );
    const after = await scrape(controllerMetrics);
    const d = (consumer: string, reason: string) =>
      poison(after, consumer, reason) - poison(before, consumer, reason);
    expect({
      inventories: { undecodable: d("inventories", "undecodable"), invalid: d("inventories", "invalid") },
      heartbeats: { undecodable: d("heartbeats", "undecodable"), invalid: d("heartbeats", "invalid") },
    }).toEqual({
      inventories: { undecodable: undecodable.inventories, invalid: decoded.inventories },
      heartbeats: { undecodable: undecodable.heartbeats, invalid: decoded.heartbeats },
    });
    expect({
      inventory: forged(after, "inventory") - forged(before, "inventory"),
      heartbeat: forged(after, "heartbeat") - forged(before, "heartbeat"),
    }).toEqual(forgedOnes);
    // No host "evil" appeared, the agent's host is still up and its pool as it reported it.
    const hosts = await c.stowctlJson<{ id: string; state: string }[]>(["host", "list"]);
    expect(hosts.map((h) => [h.id, h.state])).toEqual([[HOST, expect.stringMatching(/up/i)]]);
    const pools_ = await c.stowctlJson<{ id: string }[]>(["pool", "list"]);
    expect(pools_.map((p) => p.id)).toEqual([`${HOST}/default`]);
    await stillServing("fz-after-traffic");
  }, 120_000);
});
