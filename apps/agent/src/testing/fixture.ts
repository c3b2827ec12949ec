import { mkdir } from "node:fs/promises";
import { create, toBinary } from "@bufbuild/protobuf";
import { type Bus, commandSubject, connectBus, ensureStreams, type JsMsg } from "@stowage/bus";
import { newId } from "@stowage/core";
import { createDirDriver, createToolRunner, type PoolDriver } from "@stowage/drivers";
import { type AgentCommand, AgentCommandSchema } from "@stowage/proto";
import { makeTempDir, type NatsServer, startNats } from "@stowage/testkit";
import { formats, operationKinds } from "@stowage/wire";
import { parseAgentConfig } from "../config.js";
import type { AgentPool } from "../pools.js";

export const MiB = 1024n * 1024n;

/** What a slowed driver saw: each operation's volume with its start and end, and the most at once. */
export interface DriverLog {
  calls: { volumeId: string; method: string; start: number; end: number }[];
  running: number;
  maxRunning: number;
  lists: number;
}

const SLOWED = ["createVolume", "resizeVolume", "deleteVolume"] as const;

/**
 * Fault injection over a real driver: each create, resize and delete waits `delayMs` first (a slow disk), and
 * every call is recorded; `list()` calls are counted (each is a full scan of the pool).
 */
export function slowDriver(driver: PoolDriver, delayMs: () => number, log: DriverLog): PoolDriver {
  return new Proxy(driver, {
    get(target, prop, receiver) {
      const real = Reflect.get(target, prop, receiver);
      if (prop === "list")
        return () => {
          log.lists++;
          return target.list();
        };
      if (!SLOWED.includes(prop as (typeof SLOWED)[number]) || typeof real !== "function") return real;
      return async (...args: unknown[]) => {
        const a0 = args[0] as string | { volumeId: string };
        const volumeId = typeof a0 === "string" ? a0 : a0.volumeId;
        const call = { volumeId, method: String(prop), start: Date.now(), end: 0 };
        log.calls.push(call);
        log.running++;
        log.maxRunning = Math.max(log.maxRunning, log.running);
        try {
          await new Promise((r) => setTimeout(r, delayMs()));
          return await real.apply(target, args);
        } finally {
          log.running--;
          call.end = Date.now();
        }
      };
    },
  });
}

export const newDriverLog = (): DriverLog => ({ calls: [], running: 0, maxRunning: 0, lists: 0 });

/** A real dir pool (real qemu-img) in a temp directory. */
export async function dirPool(name: string, root: string): Promise<AgentPool> {
  await mkdir(root, { recursive: true });
  const config = parseAgentConfig({ hostName: "t", pools: [{ name, kind: "dir", path: root }] }).pools[0]!;
  const driver = createDirDriver({
    poolName: name,
    root,
    runner: createToolRunner({ defaultTimeoutMs: 30_000 }),
  });
  return { config, driver, numaNode: undefined };
}

export function createCommand(hostId: string, poolName: string, volumeId = newId("vol")): AgentCommand {
  return create(AgentCommandSchema, {
    operationId: newId("op"),
    kind: operationKinds.wire("create_volume"),
    hostId,
    poolName,
    attempt: 1,
    payload: { case: "createVolume", value: { volumeId, sizeBytes: MiB, format: formats.wire("raw") } },
  });
}

export function resizeCommand(
  hostId: string,
  poolName: string,
  volumeId: string,
  sizeBytes: bigint,
): AgentCommand {
  return create(AgentCommandSchema, {
    operationId: newId("op"),
    kind: operationKinds.wire("resize_volume"),
    hostId,
    poolName,
    attempt: 1,
    payload: { case: "resizeVolume", value: { volumeId, newSizeBytes: sizeBytes } },
  });
}

export function deleteCommand(hostId: string, poolName: string, volumeId: string): AgentCommand {
  return create(AgentCommandSchema, {
    operationId: newId("op"),
    kind: operationKinds.wire("delete_volume"),
    hostId,
    poolName,
    attempt: 1,
    payload: { case: "deleteVolume", value: { volumeId } },
  });
}

export interface BusFixture {
  nats: NatsServer;
  bus: Bus;
  tmp: string;
  publish(cmd: AgentCommand): Promise<void>;
  close(): Promise<void>;
}

/** A private nats-server with the command and result streams, and a connection to it. */
export async function openBusFixture(): Promise<BusFixture> {
  const tmp = await makeTempDir("stowage-agent-");
  const nats = await startNats();
  const bus = await connectBus({ servers: nats.url, name: "agent-test" });
  await ensureStreams(bus.jsm);
  return {
    nats,
    bus,
    tmp: tmp.path,
    async publish(cmd) {
      await bus.js.publish(commandSubject(cmd.hostId), toBinary(AgentCommandSchema, cmd), {
        msgID: `cmd-${cmd.operationId}`,
      });
    },
    async close() {
      await bus.close();
      await nats.stop();
      await tmp.cleanup();
    },
  };
}

export async function waitUntil(what: string, ok: () => boolean | Promise<boolean>, timeoutMs = 20_000) {
  const end = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export type { JsMsg };
