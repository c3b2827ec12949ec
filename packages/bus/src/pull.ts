import { setTimeout as delay } from "node:timers/promises";
import type { Consumer, ConsumerMessages, JsMsg } from "@nats-io/jetstream";

export type { Consumer, JsMsg };

export interface PullLoopOptions {
  /** Stops pulling; the pull request under way is closed at once. */
  signal: AbortSignal;
  /** How many more messages the caller can take now; the loop asks the server for no more than this. */
  freeSlots: () => number;
  /** Resolves when a slot may have become free (the loop then asks `freeSlots` again). */
  slotFreed: () => Promise<void>;
  /** Takes one message; it must not block (the caller acks, naks or signals progress on its own). */
  deliver: (msg: JsMsg) => void;
  onError?: (err: unknown) => void;
  /**
   * How long one pull request waits for messages (at least 1000, the client's minimum). Default 15 s: an idle
   * agent asks the server four times a minute, and a stop closes the request at once.
   */
  expiresMs?: number;
}

/**
 * Pulls from a durable consumer no more messages than the caller has free slots for: each pull request asks for
 * `freeSlots()` messages, and none is made while there are none free. Messages are handed over as they arrive;
 * the caller owns each one from then on. Resolves once stopped.
 */
export async function pullLoop(consumer: Consumer, opts: PullLoopOptions): Promise<void> {
  const { signal } = opts;
  const aborted = new Promise<void>((resolve) =>
    signal.addEventListener("abort", () => resolve(), { once: true }),
  );
  let batch: ConsumerMessages | undefined;
  const closeBatch = () => void batch?.close().catch(() => {});
  signal.addEventListener("abort", closeBatch, { once: true });
  try {
    while (!signal.aborted) {
      const free = opts.freeSlots();
      if (free <= 0) {
        await Promise.race([opts.slotFreed(), aborted]);
        continue;
      }
      try {
        batch = await consumer.fetch({
          max_messages: free,
          expires: Math.max(opts.expiresMs ?? 15_000, 1000),
        });
        if (signal.aborted) closeBatch();
        for await (const msg of batch) opts.deliver(msg);
      } catch (err) {
        if (signal.aborted) break;
        opts.onError?.(err);
        await delay(1000, undefined, { signal }).catch(() => {});
      } finally {
        batch = undefined;
      }
    }
  } finally {
    signal.removeEventListener("abort", closeBatch);
  }
}
