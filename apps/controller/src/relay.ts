import { commandSubject } from "@stowage/bus";
import { markOperationsSent, type OperationRow, operationsToPublish } from "@stowage/store";
import { faultPoint } from "@stowage/telemetry";
import type { ControllerContext } from "./context.js";
import { commandDeadlineMs } from "./deadline.js";
import { publishableCommand } from "./export-commands.js";
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
 *
 * Sent operations without a result are published again with back-off: after STOWAGE_RESEND_AFTER_MS, then twice
 * that, four times…, at most STOWAGE_RESEND_MAX_ATTEMPTS publications in all, and never once the command's
 * deadline has passed (the agent would refuse it; the reconciler fails the operation at its time to live). A
 * re-send keeps the operation id as message id: within JetStream's duplicate window (2 min) of the last
 * publication it is dropped as a duplicate, which is harmless (the stream stored that publication); after it, a
 * host that was away may find two copies, which its idempotent driver converges.
 */
export async function relayOnce(
  ctx: ControllerContext,
  skip: Iterable<string> = [],
  /** Pending operations younger than this are their writer's to publish (the Dispatcher); 0 takes them all. */
  graceMs = 0,
): Promise<number> {
  // Operations the fast path (Dispatcher) is publishing or marking are its own; the rest count as failed here.
  const failed: string[] = [...skip];
  let total = 0;
  for (;;) {
    const ops = await operationsToPublish(ctx.sql, resendPolicy(ctx), RELAY_PAGE, failed, graceMs);
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

/** The relay's re-send policy from the controller's settings. */
export function resendPolicy(ctx: ControllerContext) {
  return {
    resendAfterMs: ctx.config.resendAfterMs,
    maxAttempts: ctx.config.resendMaxAttempts,
    deadlineMs: commandDeadlineMs(ctx.config.reservationTtlMs),
  };
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
        const command = await publishableCommand(ctx, op);
        await ctx.bus.js.publish(commandSubject(op.hostId), command, { msgID: op.id, timeout: 5000 });
        faultPoint("after-publish", op.kind);
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

export function startRelay(
  ctx: ControllerContext,
  intervalMs = ctx.config.relayIntervalMs,
  dispatcher?: Dispatcher,
): RelayLoop {
  // With a fast path, what any controller has just written is its writer's for a moment (STOWAGE_RELAY_GRACE_MS),
  // so the leader's relay does not publish it a second time; after that the relay takes it (a failed publish, a
  // writer that died before publishing).
  const grace = dispatcher ? ctx.config.relayGraceMs : 0;
  return startLoop("relay", intervalMs, () => relayOnce(ctx, dispatcher?.inFlight() ?? [], grace), ctx.log);
}

/**
 * The outbox's fast path: operations published as soon as their transaction committed, without a relay round
 * reading them back first, and marked sent together (one UPDATE for what was acked meanwhile). The relay
 * stays the guarantee: an operation whose publish fails, or whose controller dies before the mark, is still
 * pending and the relay sends it, with the same message id (JetStream drops a copy it stored within its
 * duplicate window). While an operation is here the relay leaves it alone, so it is not published twice.
 */
export class Dispatcher {
  private readonly publishing = new Set<string>();
  private readonly acked = new Set<string>();
  private readonly marking = new Set<string>();
  private readonly marker: Loop;

  constructor(private readonly ctx: ControllerContext) {
    this.marker = startLoop("relay-mark", 1000, () => this.mark(), ctx.log);
  }

  /** Publishes freshly committed operations now; any that fail are left pending for the relay. */
  send(ops: readonly OperationRow[]): void {
    for (const op of ops) {
      this.publishing.add(op.id);
      // Through a promise: a publish that throws at once (a closed connection) fails like one that is refused.
      Promise.resolve()
        .then(() => publishableCommand(this.ctx, op))
        .then((command) =>
          this.ctx.bus.js.publish(commandSubject(op.hostId), command, { msgID: op.id, timeout: 5000 }),
        )
        .then(
          () => {
            faultPoint("after-publish", op.kind);
            this.acked.add(op.id);
            this.ctx.metrics.published.inc({ kind: op.kind });
            this.marker.kick();
          },
          (err) => {
            this.ctx.log.warn(
              { err, operationId: op.id, host: op.hostId },
              "publish failed; the relay retries",
            );
            this.ctx.kickRelay();
          },
        )
        .finally(() => this.publishing.delete(op.id));
    }
  }

  /** The ids the relay must skip: being published, or published and not yet marked. */
  inFlight(): string[] {
    return [...this.publishing, ...this.acked, ...this.marking];
  }

  private async mark(): Promise<void> {
    if (this.acked.size === 0) return;
    const ids = [...this.acked];
    for (const id of ids) {
      this.acked.delete(id);
      this.marking.add(id);
    }
    try {
      await markOperationsSent(this.ctx.sql, ids);
    } catch (err) {
      // Left pending: the relay publishes them again (a duplicate JetStream drops) and marks them.
      this.ctx.log.warn(
        { err, operations: ids.length },
        "marking published operations failed; the relay retries",
      );
    } finally {
      for (const id of ids) this.marking.delete(id);
    }
  }

  /** Marks what was acked and stops (at shutdown). Publishes still under way are the relay's after a restart. */
  async stop(): Promise<void> {
    await this.marker.stop();
    await this.mark();
  }
}
