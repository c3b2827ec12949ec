import { commandSubject } from "@stowage/bus";
import { markOperationsSent, type OperationRow, operationsToPublish } from "@stowage/store";
import type { ControllerContext } from "./context.js";

/** How many operations a round reads from the outbox at a time. */
export const RELAY_PAGE = 256;
/** How many publishes wait for their JetStream ack at once. */
export const RELAY_IN_FLIGHT = 64;

/**
 * One round of the outbox relay: publishes pending operations to their host's command subject with the operation
 * id as the JetStream message id (so a second publish within the duplicate window is dropped), then marks those
 * that went out sent, one statement per page. A crash between publish and mark means one more publish: harmless,
 * because agents are idempotent. A publish that fails leaves only its own operation pending, for the next round.
 */
export async function relayOnce(ctx: ControllerContext): Promise<number> {
  const failed: string[] = [];
  let total = 0;
  for (;;) {
    const ops = await operationsToPublish(ctx.sql, ctx.config.resendAfterMs, RELAY_PAGE, failed);
    if (ops.length === 0) return total;
    const { sent, unsent } = await publishAll(ctx, ops);
    await markOperationsSent(
      ctx.sql,
      sent.map((op) => op.id),
    );
    for (const op of sent) ctx.metrics.published.inc({ kind: op.kind });
    for (const op of unsent) failed.push(op.id);
    total += sent.length;
    // A short page was the end of the outbox; a page of which nothing went out means the broker is away.
    if (ops.length < RELAY_PAGE || sent.length === 0) return total;
  }
}

/**
 * Publishes the operations with up to RELAY_IN_FLIGHT acks awaited together, and splits them into those JetStream stored and the others.
 * Each publish is written to the connection when it is called, so the stream holds them in outbox order.
 */
async function publishAll(
  ctx: ControllerContext,
  ops: OperationRow[],
): Promise<{ sent: OperationRow[]; unsent: OperationRow[] }> {
  const stored = new Array<boolean>(ops.length).fill(false);
  let next = 0;
  const worker = async () => {
    while (next < ops.length) {
      const i = next++;
      const op = ops[i]!;
      try {
        await ctx.bus.js.publish(commandSubject(op.hostId), op.command, { msgID: op.id, timeout: 5000 });
        stored[i] = true;
      } catch (err) {
        ctx.log.warn({ err, operationId: op.id, host: op.hostId }, "publish failed; will retry");
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(RELAY_IN_FLIGHT, ops.length) }, worker));
  return { sent: ops.filter((_, i) => stored[i]), unsent: ops.filter((_, i) => !stored[i]) };
}

export interface RelayLoop {
  /** Starts a round at once when none runs; during a round, queues one more (any number of kicks coalesce). */
  kick(): void;
  /** Waits for the round in progress and runs no more. */
  stop(): Promise<void>;
  /** Rounds run so far. */
  readonly rounds: number;
}

/**
 * Runs the relay every `intervalMs` and whenever kicked. A lone create is published without waiting (an idle
 * relay starts at once), and a burst of them shares a few rounds rather than one round each.
 */
export function startRelay(ctx: ControllerContext, intervalMs = ctx.config.relayIntervalMs): RelayLoop {
  let timer: NodeJS.Timeout | undefined;
  let running = false;
  let again = false;
  let stopped = false;
  let rounds = 0;
  let current: Promise<void> = Promise.resolve();
  const run = () => {
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    clearTimeout(timer);
    rounds++;
    current = relayOnce(ctx)
      .then(() => {})
      .catch((err) => ctx.log.warn({ err }, "relay round failed"))
      .finally(() => {
        running = false;
        if (stopped) return;
        if (again) {
          again = false;
          setImmediate(run);
        } else timer = setTimeout(run, intervalMs);
      });
  };
  timer = setTimeout(run, 0);
  return {
    kick: run,
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await current;
    },
    get rounds() {
      return rounds;
    },
  };
}
