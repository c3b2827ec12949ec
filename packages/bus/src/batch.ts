import { setTimeout as delay } from "node:timers/promises";
import type { Consumer, ConsumerMessages, JsMsg } from "@nats-io/jetstream";
import { type PoisonPolicy, parkMessage, shouldPark } from "./poison.js";

/** For handlers outside this package, which do not depend on the client themselves. */
export type { Consumer, JsMsg };

/** How a batch consumer applies what it reads. */
export interface BatchHandlers {
  /** Applies the messages together (one transaction); all are acked once it resolves. */
  batch(msgs: JsMsg[]): Promise<void>;
  /**
   * Applies one message alone: a batch of one, and each message of a batch whose `batch` threw (so one poisoned
   * message cannot hold back the others). Acked once it resolves; nak'ed with a delay when it throws.
   */
  one(msg: JsMsg): Promise<void>;
}

export interface ConsumeBatchesOptions {
  /** Stops the consumer (the batch in progress is finished first; messages read but not started are nak'ed). */
  signal: AbortSignal;
  /** The most messages handed over at once. Default 64. */
  maxBatch?: number;
  /** Called when a batch or a message fails (a batch is then retried one by one). */
  onError?: (err: unknown, msgs: JsMsg[]) => void;
  /** How long to wait before a message that failed alone is redelivered. Default 1 s. */
  retryDelayMs?: number;
  /** How often "working" is sent to JetStream for the messages held, so none is redelivered while it waits. */
  progressIntervalMs?: number;
  /**
   * Poison messages: a message whose `one` threw a PoisonMessageError, or failed on its `maxDeliveries`-th
   * delivery, is parked (poison.ts) instead of nak'ed. Without a policy a failing message is retried for ever.
   */
  poison?: PoisonPolicy;
}

/**
 * Reads a durable pull consumer and hands over what has arrived, up to `maxBatch` messages at once: a lone message
 * goes at once, without waiting for others to fill a batch. Messages are acked only after their handler resolves,
 * so a crash between the two means a redelivery (handlers are idempotent).
 */
export async function consumeBatches(
  consumer: Consumer,
  handlers: BatchHandlers,
  opts: ConsumeBatchesOptions,
): Promise<void> {
  const maxBatch = opts.maxBatch ?? 64;
  while (!opts.signal.aborted) {
    const queue: JsMsg[] = [];
    let wake = () => {};
    let messages: ConsumerMessages;
    try {
      messages = await consumer.consume({
        max_messages: maxBatch,
        expires: 2000,
        callback: (msg) => {
          queue.push(msg);
          wake();
        },
      });
    } catch (err) {
      opts.onError?.(err, []);
      await sleep(1000, opts.signal);
      continue;
    }
    let closed = false;
    const done = messages.closed().then(
      (err) => {
        closed = true;
        if (err && !opts.signal.aborted) opts.onError?.(err, []);
        wake();
      },
      () => {},
    );
    const stop = () => void messages.close();
    opts.signal.addEventListener("abort", stop, { once: true });
    try {
      while (!opts.signal.aborted && !closed) {
        if (queue.length === 0) {
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
          wake = () => {};
          continue;
        }
        await handleBatch(queue.splice(0, maxBatch), queue, handlers, opts);
      }
    } finally {
      opts.signal.removeEventListener("abort", stop);
      await messages.close()?.catch(() => {});
      await done;
      // Read but not started: back to JetStream now rather than after the ack wait.
      for (const msg of queue.splice(0)) settle(() => msg.nak());
    }
    if (!opts.signal.aborted) await sleep(250, opts.signal);
  }
}

async function handleBatch(
  batch: JsMsg[],
  waiting: JsMsg[],
  handlers: BatchHandlers,
  opts: ConsumeBatchesOptions,
): Promise<void> {
  const timer = setInterval(() => {
    for (const msg of batch) settle(() => msg.working());
    for (const msg of waiting) settle(() => msg.working());
  }, opts.progressIntervalMs ?? 2_000);
  try {
    if (batch.length > 1) {
      try {
        await handlers.batch(batch);
        for (const msg of batch) settle(() => msg.ack());
        return;
      } catch (err) {
        opts.onError?.(err, batch);
      }
    }
    for (const msg of batch) {
      try {
        await handlers.one(msg);
        settle(() => msg.ack());
      } catch (err) {
        const park = shouldPark(msg, err, opts.poison);
        if (park && opts.poison) {
          await parkMessage(msg, opts.poison, park, err);
          continue;
        }
        opts.onError?.(err, [msg]);
        settle(() => msg.nak(opts.retryDelayMs ?? 1000));
      }
    }
  } finally {
    clearInterval(timer);
  }
}

/** Acks, naks and progress are best effort: on a closed connection JetStream redelivers after the ack wait. */
function settle(fn: () => void): void {
  try {
    fn();
  } catch {}
}

/** Waits `ms`, or less when the consumer is stopped. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return delay(ms, undefined, { signal }).catch(() => {});
}
