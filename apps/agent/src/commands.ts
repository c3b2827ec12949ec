import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { type Bus, COMMAND_STREAM, consumeLoop } from "@stowage/bus";
import type { PoolDriver } from "@stowage/drivers";
import {
  type AgentCommand,
  AgentCommandSchema,
  OperationResultSchema,
  type RegisterAgentResponse,
} from "@stowage/proto";
import type { Logger } from "@stowage/telemetry";
import { operationKinds } from "@stowage/wire";
import { executeCommand } from "./executor.js";
import type { AgentMetrics } from "./metrics.js";
import type { AgentPool } from "./pools.js";

export interface CommandConsumerOptions {
  bus: Bus;
  registration: RegisterAgentResponse;
  pools: ReadonlyMap<string, AgentPool>;
  metrics: AgentMetrics;
  log: Logger;
  /** After each operation (the pool changed): the agent reports its inventory. */
  afterOperation: () => void;
}

export interface CommandConsumer {
  /** Operations running now, for heartbeats. */
  running(): number;
  /** Finishes the operation under way, then stops taking commands. */
  stop(): Promise<void>;
}

/** Takes this host's commands from its durable JetStream consumer, one at a time, and publishes each result. */
export async function startCommandConsumer(o: CommandConsumerOptions): Promise<CommandConsumer> {
  const reg = o.registration;
  const drivers = new Map<string, PoolDriver>([...o.pools].map(([name, p]) => [name, p.driver]));
  let running = 0;

  const handle: Parameters<typeof consumeLoop>[1] = async (msg) => {
    let cmd: AgentCommand;
    try {
      cmd = fromBinary(AgentCommandSchema, msg.data);
    } catch (err) {
      o.log.error({ err, seq: msg.seq }, "undecodable command dropped");
      return;
    }
    if (msg.info.deliveryCount > 1) o.metrics.redeliveries.inc();
    const kind = operationKinds.domain(cmd.kind) ?? "unknown";
    const oplog = o.log.child({ operationId: cmd.operationId, kind, pool: cmd.poolName });
    oplog.info({ delivery: msg.info.deliveryCount }, "operation started");
    running++;
    const backend = o.pools.get(cmd.poolName)?.config.kind ?? "unknown";
    const end = o.metrics.operationDuration.startTimer({ kind, backend });
    const result = await executeCommand(drivers, reg.hostId, cmd).finally(() => {
      running--;
      end();
    });
    o.metrics.operations.inc({ kind, backend, result: result.success ? "succeeded" : "failed" });
    // The result is durable in JetStream before the command is acked; a crash in between means a redelivery,
    // which the idempotent driver adopts.
    await o.bus.js.publish(reg.resultSubject, toBinary(OperationResultSchema, result), {
      msgID: `result-${cmd.operationId}`,
      timeout: 10_000,
    });
    oplog.info(
      {
        success: result.success,
        adopted: result.adopted,
        error: result.error?.message,
        ms: Number(result.durationMs),
      },
      "operation finished",
    );
    o.afterOperation();
  };

  const abort = new AbortController();
  const consumer = await o.bus.js.consumers.get(reg.commandStream || COMMAND_STREAM, reg.commandConsumer);
  const consuming = consumeLoop(consumer, handle, {
    signal: abort.signal,
    onError: (err) => o.log.warn({ err }, "command handling failed; it will be redelivered"),
  });
  return {
    running: () => running,
    async stop() {
      abort.abort();
      await consuming;
    },
  };
}
