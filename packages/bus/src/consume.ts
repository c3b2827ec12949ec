import { setTimeout as delay } from "node:timers/promises";
import type { Consumer, JsMsg } from "@nats-io/jetstream";
import { type PoisonPolicy, parkMessage, shouldPark } from "./poison.js";

export interface ConsumeLoopOptions {
  /** Stops the loop (the current message is finished first). */
  signal: AbortSignal;
  /** Called when the handler throws; the message is then nak'ed with a delay and redelivered. */
  onError?: (err: unknown, msg: JsMsg) => void;
  /** How long to wait before a failed message is redelivered. */
  retryDelayMs?: number;
  /** Sends "working" to JetStream while the handler runs, so long operations are not redelivered mid-way. */
  progressIntervalMs?: number;
  /** Poison messages are parked rather than retried for ever (poison.ts; as consumeBatches does). */
  poison?: PoisonPolicy;
}

/**
 * Handles a durable consumer's messages one at a time, acking after the handler returns. A message is never
 * acked before its effect is durable; a handler that throws gets the message redelivered.
 */
export async function consumeLoop(
  consumer: Consumer,
  handle: (msg: JsMsg) => Promise<void>,
  opts: ConsumeLoopOptions,
): Promise<void> {
  while (!opts.signal.aborted) {
    let messages: Awaited<ReturnType<Consumer["consume"]>>;
    try {
      messages = await consumer.consume({ max_messages: 16, expires: 2000 });
    } catch (err) {
      opts.onError?.(err, undefined as never);
      await sleep(1000, opts.signal);
      continue;
    }
    const stop = () => void messages.close();
    opts.signal.addEventListener("abort", stop, { once: true });
    try {
      for await (const msg of messages) {
        const timer = setInterval(() => msg.working(), opts.progressIntervalMs ?? 2_000);
        try {
          await handle(msg);
          msg.ack();
        } catch (err) {
          const park = shouldPark(msg, err, opts.poison);
          if (park && opts.poison) await parkMessage(msg, opts.poison, park, err);
          else {
            opts.onError?.(err, msg);
            msg.nak(opts.retryDelayMs ?? 1000);
          }
        } finally {
          clearInterval(timer);
        }
        if (opts.signal.aborted) break;
      }
    } catch (err) {
      if (!opts.signal.aborted) opts.onError?.(err, undefined as never);
    } finally {
      opts.signal.removeEventListener("abort", stop);
      await messages.close()?.catch(() => {});
    }
    if (!opts.signal.aborted) await sleep(250, opts.signal);
  }
}

/** Waits `ms`, or less when the consumer is stopped. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return delay(ms, undefined, { signal }).catch(() => {});
}
