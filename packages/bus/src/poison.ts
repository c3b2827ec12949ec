import type { JetStreamClient, JsMsg } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { hostToken } from "./subjects.js";

/**
 * Poison messages: one that can never be handled (it does not decode) or that failed on each of its first
 * `maxDeliveries` deliveries is parked instead of being retried for ever. Parking terminates it in JetStream
 * (a work-queue stream then drops it), copies it, best effort, to the dead-letter stream with why, and counts it.
 */

/**
 * Why a message was parked or dropped, `stowage_bus_poison_messages_total{consumer, reason}`: it does not decode;
 * it decodes but is malformed (core NATS messages, which are never redelivered, are then dropped); its handling
 * failed on each of its first `maxDeliveries` deliveries.
 */
export const POISON_REASONS = ["undecodable", "invalid", "failed"] as const;
export type PoisonReason = (typeof POISON_REASONS)[number];

/** A message whose handling failed on this many deliveries is parked. */
export const DEFAULT_MAX_DELIVERIES = 5;

/** Where parked messages are copied: a limits stream, kept a week, the oldest dropped past its bounds. */
export const DEAD_LETTER_STREAM = "STOWAGE_DEAD_LETTERS";
export const DEAD_LETTER_SUBJECTS = "stowage.dead.>";
export const deadLetterSubject = (consumer: string) => `stowage.dead.${consumer}`;
/**
 * Where a host's agent parks a poison command: a subject of its own under `stowage.dead.commands`, so that its
 * NATS credentials allow that one and no other host's (nats-auth.ts in the controller).
 */
export const agentDeadLetterSubject = (hostId: string) =>
  `${deadLetterSubject("commands")}.${hostToken(hostId)}`;

export interface PoisonPolicy {
  /** The consumer's name: the metric's label, and the dead-letter subject unless `subject` says otherwise. */
  consumer: string;
  /** The dead-letter subject (default `deadLetterSubject(consumer)`). */
  subject?: string;
  /** Parked once handling has failed on this delivery or a later one (default DEFAULT_MAX_DELIVERIES). */
  maxDeliveries?: number;
  /** Where the dead-letter copy is published; without it the message is only terminated and counted. */
  js?: JetStreamClient;
  /** Counts a parked message (the poison metric) and logs it. */
  onParked?: (p: { msg: JsMsg; reason: PoisonReason; error: string }) => void;
}

/** Thrown by a handler for a message that can never succeed (it does not decode): parked at once. */
export class PoisonMessageError extends Error {
  constructor(
    message: string,
    readonly reason: PoisonReason = "undecodable",
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "PoisonMessageError";
  }
}

/**
 * Whether a message that just failed with `err` is to be parked rather than retried. JetStream's delivery count
 * includes hand-backs (a nak on a clean stop), so a message handed back often is parked at its first failure
 * past the limit; the controller's reconciler re-sends an operation that never got a result.
 */
export function shouldPark(
  msg: JsMsg,
  err: unknown,
  policy: PoisonPolicy | undefined,
): PoisonReason | undefined {
  if (!policy) return undefined;
  if (err instanceof PoisonMessageError) return err.reason;
  const max = policy.maxDeliveries ?? DEFAULT_MAX_DELIVERIES;
  return deliveryCount(msg) >= max ? "failed" : undefined;
}

function deliveryCount(msg: JsMsg): number {
  try {
    return msg.info.deliveryCount;
  } catch {
    return 1;
  }
}

const MAX_ERROR_HEADER = 512;
const parked = new WeakSet<JsMsg>();

/**
 * Parks a message: a copy on the dead-letter subject, with its subject, consumer, deliveries, reason and error in
 * headers, then an ack, which removes it from its work queue; when no copy could be made it is terminated instead
 * (never redelivered; nats-server 2.9 keeps a terminated message in a work-queue stream until its max age). Then
 * `onParked`. Never throws; a message is parked once however often this is called.
 */
export async function parkMessage(
  msg: JsMsg,
  policy: PoisonPolicy,
  reason: PoisonReason,
  err: unknown,
): Promise<void> {
  // A batch that failed is retried one by one: a message it parked is not parked (or counted) twice.
  if (parked.has(msg)) return;
  parked.add(msg);
  const error = (err instanceof Error ? err.message : String(err))
    .replace(/[\r\n]+/g, " ")
    .slice(0, MAX_ERROR_HEADER);
  let copied = false;
  if (policy.js) {
    try {
      const h = natsHeaders();
      h.set("Stowage-Original-Subject", msg.subject);
      h.set("Stowage-Consumer", policy.consumer);
      h.set("Stowage-Deliveries", String(deliveryCount(msg)));
      h.set("Stowage-Reason", reason);
      h.set("Stowage-Error", error);
      await policy.js.publish(policy.subject ?? deadLetterSubject(policy.consumer), msg.data, {
        headers: h,
        timeout: 5_000,
      });
      copied = true;
    } catch {}
  }
  try {
    if (copied) msg.ack();
    else msg.term(`${reason}: ${error}`.slice(0, MAX_ERROR_HEADER));
  } catch {}
  try {
    policy.onParked?.({ msg, reason, error });
  } catch {}
}
