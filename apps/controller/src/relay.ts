import { commandSubject } from "@stowage/bus";
import { markOperationsSent, type OperationRow, operationsToPublish } from "@stowage/store";
import type { ControllerContext } from "./context.js";
import { type Loop, startLoop } from "./loop.js";

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

/** The relay's loop (loop.ts): a round at once for a lone create, kicks during a round coalesced into one more. */
export type RelayLoop = Loop;

export function startRelay(ctx: ControllerContext, intervalMs = ctx.config.relayIntervalMs): RelayLoop {
  return startLoop("relay", intervalMs, () => relayOnce(ctx), ctx.log);
}
