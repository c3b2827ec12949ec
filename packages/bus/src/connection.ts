import {
  AckPolicy,
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
} from "@nats-io/jetstream";
import { connect, jwtAuthenticator, type NatsConnection, nanos } from "@nats-io/transport-node";
import { DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECTS } from "./poison.js";
import {
  ALL_RESULTS,
  agentConsumerName,
  COMMAND_STREAM,
  commandSubject,
  RESULT_CONSUMER,
  RESULT_STREAM,
} from "./subjects.js";

export interface BusOptions {
  servers: string | string[];
  /** Connection name shown by the server (`nats-server` monitoring). */
  name: string;
  user?: string;
  pass?: string;
  token?: string;
  /**
   * A NATS user JWT and the seed of the user key it names (decentralised JWT auth); the seed never leaves here.
   * The JWT may be a function, read at each (re)connect: a renewed JWT is used from the next reconnect on (the
   * server closes a connection when the JWT it authenticated with expires). So may the seed: an agent makes a
   * new user key at each renewal.
   */
  credentials?: { jwt: string | (() => string); seed: string | (() => string) };
  /** TLS to the server, trusting this CA (PEM). */
  tlsCa?: string;
  /** Prefix of this connection's reply subjects (an agent may subscribe to its own only: agentInboxPrefix). */
  inboxPrefix?: string;
}

export interface Bus {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  close(): Promise<void>;
}

export async function connectBus(opts: BusOptions): Promise<Bus> {
  const nc = await connect({
    servers: opts.servers,
    name: opts.name,
    user: opts.user,
    pass: opts.pass,
    token: opts.token,
    ...(opts.credentials
      ? {
          authenticator: jwtAuthenticator(opts.credentials.jwt, seedBytes(opts.credentials.seed)),
        }
      : {}),
    ...(opts.tlsCa ? { tls: { ca: opts.tlsCa } } : {}),
    ...(opts.inboxPrefix ? { inboxPrefix: opts.inboxPrefix } : {}),
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    // Every request (each JetStream publish is one) would otherwise build an Error up front for the caller's
    // stack, a few percent of a busy controller's CPU; a failure still says what failed.
    noAsyncTraces: true,
  });
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  return {
    nc,
    js,
    jsm,
    // Drains what is in flight, but never for long: a shutdown must not wait on the server.
    close: async () => {
      if (nc.isClosed()) return;
      let timer: NodeJS.Timeout | undefined;
      const drained = nc.drain().catch(() => {});
      const late = new Promise<"late">((r) => {
        timer = setTimeout(() => r("late"), 2000);
      });
      if ((await Promise.race([drained, late])) === "late") await nc.close().catch(() => {});
      clearTimeout(timer);
    },
  };
}

function seedBytes(seed: string | (() => string)): Uint8Array | (() => Uint8Array) {
  return typeof seed === "function" ? () => new TextEncoder().encode(seed()) : new TextEncoder().encode(seed);
}

/** How long JetStream remembers a message id to drop duplicates of it. */
export const DUPLICATE_WINDOW_MS = 120_000;
/** How long an agent may hold a command without acking before it is redelivered (agents signal progress). */
export const COMMAND_ACK_WAIT_MS = 60_000;
/**
 * The most commands an agent may hold unacked (running, or waiting for its volume's or pool's turn). An agent
 * fetches no more than its free slots (`maxConcurrency`, at most this), so this is only the server's ceiling.
 */
export const AGENT_MAX_ACK_PENDING = 64;

async function ensureStream(
  jsm: JetStreamManager,
  name: string,
  subjects: string[],
  limits?: { maxMsgs: number; maxBytes: number },
): Promise<void> {
  const config = {
    name,
    subjects,
    // Work queues, but the dead letters: those stay (up to their bounds, the oldest dropped first) to be read.
    retention: limits ? RetentionPolicy.Limits : RetentionPolicy.Workqueue,
    storage: StorageType.File,
    duplicate_window: nanos(DUPLICATE_WINDOW_MS),
    max_age: nanos(7 * 24 * 3600_000),
    ...(limits ? { max_msgs: limits.maxMsgs, max_bytes: limits.maxBytes } : {}),
  };
  try {
    await jsm.streams.info(name);
    await jsm.streams.update(name, config);
  } catch (err) {
    if (!/stream not found/i.test(String(err))) throw err;
    try {
      await jsm.streams.add(config);
    } catch (addErr) {
      // Another process created it in between.
      if (!/already in use|already exists/i.test(String(addErr))) throw addErr;
    }
  }
}

/**
 * Creates (or updates) the command and result work-queue streams, and the dead-letter stream where poison
 * messages are parked (poison.ts). Idempotent; any process may call it.
 */
export async function ensureStreams(jsm: JetStreamManager): Promise<void> {
  await ensureStream(jsm, COMMAND_STREAM, ["stowage.cmd.*"]);
  await ensureStream(jsm, RESULT_STREAM, ["stowage.result.*"]);
  await ensureStream(jsm, DEAD_LETTER_STREAM, [DEAD_LETTER_SUBJECTS], {
    maxMsgs: DEAD_LETTER_MAX_MSGS,
    maxBytes: DEAD_LETTER_MAX_BYTES,
  });
}

/** Bounds of the dead-letter stream: enough to see what went wrong, never enough to fill the disk. */
export const DEAD_LETTER_MAX_MSGS = 10_000;
export const DEAD_LETTER_MAX_BYTES = 64 * 1024 * 1024;

async function ensureConsumer(
  jsm: JetStreamManager,
  stream: string,
  durable: string,
  filter: string,
  ackWaitMs: number,
  maxAckPending: number,
) {
  const config = {
    durable_name: durable,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    filter_subject: filter,
    ack_wait: nanos(ackWaitMs),
    max_deliver: -1,
    max_ack_pending: maxAckPending,
  };
  let exists = true;
  try {
    await jsm.consumers.info(stream, durable);
  } catch {
    exists = false;
  }
  if (exists) {
    // Keep an existing consumer's settings current (its filter subject cannot change, so it is left out).
    const { durable_name: _d, filter_subject: _f, deliver_policy: _p, ...update } = config;
    await jsm.consumers.update(stream, durable, update);
    return;
  }
  try {
    await jsm.consumers.add(stream, config);
  } catch (err) {
    if (!/already in use|already exists/i.test(String(err))) throw err;
  }
}

/** The durable consumer an agent reads its commands from (one per host; Debian's 2.9 server: one filter subject). */
export async function ensureAgentConsumer(jsm: JetStreamManager, hostId: string): Promise<string> {
  const durable = agentConsumerName(hostId);
  await ensureConsumer(
    jsm,
    COMMAND_STREAM,
    durable,
    commandSubject(hostId),
    COMMAND_ACK_WAIT_MS,
    AGENT_MAX_ACK_PENDING,
  );
  return durable;
}

/**
 * Hands out again, at once, the commands a host's consumer has delivered and not seen acked: called when a new
 * agent process of the host registers, before it pulls, so what its killed predecessor held is not left waiting
 * for the ack wait. The consumer is made anew; the work-queue stream still holds exactly the unacked commands,
 * which a new consumer delivers from the start. Returns how many were pending (0: nothing was changed).
 */
export async function redeliverAgentCommands(jsm: JetStreamManager, hostId: string): Promise<number> {
  const durable = agentConsumerName(hostId);
  let pending = 0;
  try {
    pending = (await jsm.consumers.info(COMMAND_STREAM, durable)).num_ack_pending;
  } catch {
    return 0;
  }
  if (pending === 0) return 0;
  try {
    await jsm.consumers.delete(COMMAND_STREAM, durable);
  } catch (err) {
    if (!/consumer not found/i.test(String(err))) throw err;
  }
  await ensureAgentConsumer(jsm, hostId);
  return pending;
}

/**
 * How long a controller may hold a result before JetStream gives it to another (or, after a crash, to the same
 * controller restarted). Applying a result is one short transaction, and the consume loop signals progress.
 */
export const RESULT_ACK_WAIT_MS = 5_000;

/** The durable consumer controllers share to read operation results. */
export async function ensureResultConsumer(jsm: JetStreamManager): Promise<string> {
  await ensureConsumer(jsm, RESULT_STREAM, RESULT_CONSUMER, ALL_RESULTS, RESULT_ACK_WAIT_MS, 64);
  return RESULT_CONSUMER;
}

/** Messages still waiting in a host's command subject (operations pending per host). */
export async function pendingCommands(jsm: JetStreamManager, hostId: string): Promise<number> {
  try {
    const info = await jsm.consumers.info(COMMAND_STREAM, agentConsumerName(hostId));
    return info.num_pending + info.num_ack_pending;
  } catch {
    return 0;
  }
}
