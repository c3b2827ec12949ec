import { fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  agentDeadLetterSubject,
  type Bus,
  COMMAND_STREAM,
  type Consumer,
  type JsMsg,
  type PoisonPolicy,
  parkMessage,
  pullLoop,
  shouldPark,
} from "@stowage/bus";
import type { PoolDriver } from "@stowage/drivers";
import {
  type AgentCommand,
  AgentCommandSchema,
  type OperationResult,
  OperationResultSchema,
  type RegisterAgentResponse,
} from "@stowage/proto";
import { faultPoint, type Logger } from "@stowage/telemetry";
import { operationKinds } from "@stowage/wire";
import { executeCommand } from "./executor.js";
import type { ExportManager } from "./exports.js";
import type { AgentMetrics } from "./metrics.js";
import type { AgentPool } from "./pools.js";
import { createOperationScheduler } from "./scheduler.js";

export interface CommandConsumerOptions {
  bus: Bus;
  registration: RegisterAgentResponse;
  pools: ReadonlyMap<string, AgentPool>;
  metrics: AgentMetrics;
  log: Logger;
  /** Operations running at once in one pool. */
  poolConcurrency: number;
  /** Commands held at once (running or waiting for their volume's or pool's turn); also what one pull asks for. */
  maxConcurrency: number;
  /** How often a held command tells JetStream it is still being worked on (well under the consumer's ack wait). */
  progressIntervalMs?: number;
  /** Runs export commands (exports.ts); without it they fail with a clear error. */
  exports?: ExportManager;
  /** The consumer to read (tests); default the registration's durable consumer. */
  consumer?: Consumer;
  /** The clock that commands' deadlines are judged by (tests); default `Date.now`. */
  now?: () => number;
  /**
   * A command whose handling failed (its result could not be published) on this many deliveries is parked
   * (default DEFAULT_MAX_DELIVERIES of @stowage/bus).
   */
  maxDeliveries?: number;
  /** After each operation (its pool changed): the agent reports a delta of its inventory. */
  afterOperation: (cmd: AgentCommand, result: OperationResult) => void;
}

export interface CommandConsumer {
  /** Operations running now, for heartbeats. */
  running(): number;
  /** Commands held now (running or waiting). */
  held(): number;
  /**
   * Stops pulling, hands back (nak, no delay) the commands not started, and waits up to `graceMs` for the
   * running ones; a command still running then is redelivered after the ack wait, and converges (drivers are
   * idempotent).
   */
  stop(graceMs: number): Promise<void>;
}

/** The volume a command acts on, which orders commands: one at a time per volume. */
function commandKey(cmd: AgentCommand): string {
  const v = cmd.payload.value;
  return v && "volumeId" in v && v.volumeId ? v.volumeId : cmd.operationId;
}

/**
 * Takes this host's commands from its durable JetStream consumer, no more than it has slots for, runs them in
 * parallel across volumes (scheduler.ts), and publishes each result before acking its command.
 */
export async function startCommandConsumer(o: CommandConsumerOptions): Promise<CommandConsumer> {
  const reg = o.registration;
  const drivers = new Map<string, PoolDriver>([...o.pools].map(([name, p]) => [name, p.driver]));
  const scheduler = createOperationScheduler({
    poolConcurrency: o.poolConcurrency,
    maxConcurrency: o.maxConcurrency,
  });

  const execute = async (msg: JsMsg, cmd: AgentCommand) => {
    const kind = operationKinds.domain(cmd.kind) ?? "unknown";
    const oplog = o.log.child({ operationId: cmd.operationId, kind, pool: cmd.poolName });
    oplog.info({ delivery: msg.info.deliveryCount }, "operation started");
    const backend = o.pools.get(cmd.poolName)?.config.kind ?? "unknown";
    const end = o.metrics.operationDuration.startTimer({ kind, backend });
    // A command whose deadline passed while it waited (the host was down, or busy) is refused, not run.
    const result = await executeCommand(drivers, reg.hostId, cmd, o.now, o.exports).finally(end);
    o.metrics.operations.inc({ kind, backend, result: result.success ? "succeeded" : "failed" });
    faultPoint("after-tool", kind);
    // The result is durable in JetStream before the command is acked; a crash in between means a redelivery,
    // which the idempotent driver adopts.
    await o.bus.js.publish(reg.resultSubject, toBinary(OperationResultSchema, result), {
      msgID: `result-${cmd.operationId}`,
      timeout: 10_000,
    });
    faultPoint("after-result", kind);
    msg.ack();
    if (result.error?.code === "deadline_exceeded") {
      // Refused before it started: nothing changed, so no delta either.
      oplog.warn({ error: result.error.message }, "operation refused: its deadline has passed");
      return;
    }
    oplog.info(
      {
        success: result.success,
        adopted: result.adopted,
        error: result.error?.message,
        ms: Number(result.durationMs),
      },
      "operation finished",
    );
    o.afterOperation(cmd, result);
  };

  // Poison commands are parked, counted and logged instead of being retried for ever (@stowage/bus poison.ts).
  const poison: PoisonPolicy = {
    consumer: "commands",
    subject: agentDeadLetterSubject(reg.hostId),
    ...(o.maxDeliveries === undefined ? {} : { maxDeliveries: o.maxDeliveries }),
    js: o.bus.js,
    onParked: ({ msg, reason, error }) => {
      o.metrics.busPoison.inc({ consumer: "commands", reason });
      o.log.error(
        { seq: msg.seq, reason, error, deliveries: msg.info.deliveryCount },
        "poison command parked in the dead-letter stream",
      );
    },
  };
  const abort = new AbortController();
  const hold = (msg: JsMsg) => {
    // A message that arrives while the pull is being closed is handed straight back.
    if (abort.signal.aborted) {
      msg.nak();
      return;
    }
    let cmd: AgentCommand;
    try {
      cmd = fromBinary(AgentCommandSchema, msg.data);
    } catch (err) {
      void parkMessage(msg, poison, "undecodable", err);
      return;
    }
    // A command for another host must not run on this one's pools (a misrouted or forged message).
    if (cmd.hostId !== reg.hostId) {
      void parkMessage(
        msg,
        poison,
        "invalid",
        new Error(
          `command for host ${JSON.stringify(cmd.hostId.slice(0, 80))} on host ${reg.hostId}'s subject`,
        ),
      );
      return;
    }
    if (msg.info.deliveryCount > 1) o.metrics.redeliveries.inc();
    // Held means being worked on, waiting or running: JetStream must not give it to anyone else meanwhile.
    const progress = setInterval(() => msg.working(), o.progressIntervalMs ?? 10_000);
    scheduler.submit({
      key: commandKey(cmd),
      pool: cmd.poolName,
      run: () =>
        execute(msg, cmd)
          .catch((err) => {
            const park = shouldPark(msg, err, poison);
            if (park) return parkMessage(msg, poison, park, err);
            o.log.warn(
              { err, operationId: cmd.operationId },
              "command handling failed; it will be redelivered",
            );
            msg.nak(1000);
          })
          .finally(() => clearInterval(progress)),
      cancel: () => {
        clearInterval(progress);
        msg.nak();
      },
    });
  };

  const consumer =
    o.consumer ?? (await o.bus.js.consumers.get(reg.commandStream || COMMAND_STREAM, reg.commandConsumer));
  const pulling = pullLoop(consumer, {
    signal: abort.signal,
    freeSlots: () => scheduler.free(),
    slotFreed: () => scheduler.slotFreed(),
    deliver: hold,
    onError: (err) => o.log.warn({ err }, "pulling commands failed; retrying"),
  });
  return {
    running: () => scheduler.running(),
    held: () => scheduler.held(),
    async stop(graceMs) {
      abort.abort();
      await pulling;
      const left = await scheduler.drain(graceMs);
      if (left > 0)
        o.log.warn({ running: left }, "stopping with operations still running; they will be redelivered");
    },
  };
}
