import { commandSubject } from "@stowage/bus";
import { markOperationSent, operationsToPublish } from "@stowage/store";
import type { ControllerContext } from "./context.js";

/**
 * The outbox relay: publishes pending operations to their host's command subject with the operation id as the
 * JetStream message id (so a second publish within the duplicate window is dropped), then marks them sent. A
 * crash between publish and mark means one more publish: harmless, because agents are idempotent.
 */
export async function relayOnce(ctx: ControllerContext): Promise<number> {
  const ops = await operationsToPublish(ctx.sql, ctx.config.resendAfterMs);
  let sent = 0;
  for (const op of ops) {
    try {
      await ctx.bus.js.publish(commandSubject(op.hostId), op.command, { msgID: op.id, timeout: 5000 });
      await markOperationSent(ctx.sql, op.id);
      ctx.metrics.published.inc({ kind: op.kind });
      sent++;
    } catch (err) {
      ctx.log.warn({ err, operationId: op.id, host: op.hostId }, "publish failed; will retry");
      break;
    }
  }
  return sent;
}
