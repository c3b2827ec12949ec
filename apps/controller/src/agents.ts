import { isIP } from "node:net";
import { create, fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ALL_HEARTBEATS,
  ALL_INVENTORIES,
  agentSubjects,
  type Bus,
  CONTROLLER_QUEUE,
  ensureAgentConsumer,
  inventoryRequestSubject,
  PoisonMessageError,
  redeliverAgentCommands,
  tokenToHost,
} from "@stowage/bus";
import { invalidArgument, isId, StowageError, THIN_KINDS, validateLabels, validateName } from "@stowage/core";
import {
  HeartbeatSchema,
  type HostInfo,
  type Inventory,
  InventorySchema,
  type PoolReport,
  type RegisterAgentRequest,
  type RegisterAgentResponse,
  RegisterAgentResponseSchema,
} from "@stowage/proto";
import {
  applyPoolReportDeltas,
  applyPoolReports,
  dropVolumeFindings,
  type Finding,
  type InventoryVolume,
  inventoryVolumesById,
  inventoryVolumesOnHost,
  markInventoryReceived,
  type PoolReportRecord,
  poolId,
  type Queryable,
  type ReportedPool,
  recordHeartbeat,
  replaceFindings,
  sharedPoolVolumesOfOwner,
  upsertFindings,
  upsertHost,
  volumesInFluxOnHost,
} from "@stowage/store";
import { formats, poolKinds } from "@stowage/wire";
import type { Peer } from "./auth.js";
import { tlsEnabled } from "./config.js";
import type { ControllerContext } from "./context.js";

const INT32_MAX = 2_147_483_647;
const INT64_MAX = 9_223_372_036_854_775_807n;

/** A uint32 of the wire that PostgreSQL keeps in an integer column: at most 2^31-1. */
function int32(field: string, v: number): number {
  if (v > INT32_MAX) throw invalidArgument(`${field} ${v} is out of range: at most ${INT32_MAX}`, { field });
  return v;
}

/** A uint64 of the wire that PostgreSQL keeps in an int8 column: at most 2^63-1. */
function int64(field: string, v: bigint): bigint {
  if (v > INT64_MAX) throw invalidArgument(`${field} ${v} is out of range: at most ${INT64_MAX}`, { field });
  return v;
}

function poolReportFromWire(ctx: ControllerContext, p: PoolReport): PoolReportRecord {
  const kind = poolKinds.domain(p.kind);
  if (!kind) throw invalidArgument(`pool ${p.name} has no kind`);
  const thin = THIN_KINDS.has(kind);
  return {
    name: validateName("pool name", p.name),
    kind,
    numaNode: p.numaNode === undefined ? null : int32("pool numa_node", p.numaNode),
    healthy: p.healthy,
    healthMessage: p.healthMessage,
    totalBytes: int64("pool total_bytes", p.totalBytes),
    usedBytes: int64("pool used_bytes", p.usedBytes),
    freeBytes: int64("pool free_bytes", p.freeBytes),
    provisionedBytes: int64("pool provisioned_bytes", p.provisionedBytes),
    dataPercent: p.dataPercent ?? null,
    metadataPercent: p.metadataPercent ?? null,
    overcommitRatio: p.overcommitRatio > 0 ? p.overcommitRatio : thin ? ctx.config.thinOvercommitRatio : 1,
    maxUsedPercent: p.maxUsedPercent > 0 ? Math.min(p.maxUsedPercent, 100) : 90,
    reservedPercent: Math.min(Math.max(p.reservedPercent, 0), 99),
    maxVolumes: int32("pool max_volumes", p.maxVolumes),
    labels: validateLabels(p.labels),
    formats: p.formats.map((f) => formats.domain(f)).filter((f) => f !== undefined),
    shared: p.shared,
    share: shareFromWire(p.name, p.share),
  };
}

/**
 * A shared pool's identity as an agent reports it (netfs: nfs://server/path): compared, stored and shown, never
 * parsed here; at most 1,024 characters, no control characters.
 */
function shareFromWire(pool: string, share: string): string {
  if (share.length > 1024 || [...share].some((ch) => ch.charCodeAt(0) < 0x20 || ch.charCodeAt(0) === 0x7f))
    throw invalidArgument(
      `pool ${pool}'s share is not valid: at most 1024 characters, no control characters`,
      {
        field: "share",
      },
    );
  return share;
}

/** The host as the store keeps it, every field checked (before anything is written, NATS included). */
function hostFromWire(host: HostInfo): Parameters<typeof upsertHost>[1] {
  return {
    id: host.name,
    zone: host.zone ? validateName("zone", host.zone) : "",
    labels: validateLabels(host.labels),
    numaNodes: host.numaNodes.map((n) => ({
      id: int32("numa node id", n.id),
      cpuList: n.cpuList,
      cpus: n.cpus,
      memoryBytes: Number(int64("numa node memory_bytes", n.memoryBytes)),
      distances: n.distances,
    })),
    cpuCount: int32("cpu_count", host.cpuCount),
    memoryBytes: int64("memory_bytes", host.memoryBytes),
    agentVersion: host.agentVersion,
    initiatorName: host.initiatorName,
    addresses: hostAddresses(host.addresses),
    metricsAddress: host.metricsAddress,
  };
}

/** At most this many addresses per host go into export ACLs. */
const MAX_HOST_ADDRESSES = 16;

/** A host's unicast addresses as export ACLs bind them: IPv4 or IPv6 literals only, each once. */
function hostAddresses(addresses: readonly string[]): string[] {
  const out = [...new Set(addresses)];
  if (out.length > MAX_HOST_ADDRESSES)
    throw invalidArgument(`host reports ${out.length} addresses: at most ${MAX_HOST_ADDRESSES}`);
  for (const a of out)
    if (isIP(a) === 0)
      throw invalidArgument(`host address ${JSON.stringify(a.slice(0, 60))} is not an IP address`);
  return out;
}

async function applyHostInfo(sql: Queryable, host: ReturnType<typeof hostFromWire>) {
  return upsertHost(sql, host);
}

/** RegisterAgent: records the host and its pools, and makes sure its command consumer exists. Idempotent. */
export async function registerAgent(
  ctx: ControllerContext,
  req: RegisterAgentRequest,
  peer?: Peer,
): Promise<RegisterAgentResponse> {
  if (!req.host) throw invalidArgument("host is required");
  const hostId = validateName("host name", req.host.name);
  // On TLS a certificate acts only as the host it names (auth.ts checked it is live); nothing is written else.
  if (tlsEnabled(ctx.config) && peer?.host !== hostId)
    throw new ConnectError(
      `this certificate is host ${peer?.host ?? "(none)"}'s: it cannot register host ${hostId}`,
      Code.PermissionDenied,
    );
  const host = hostFromWire(req.host);
  const pools = req.pools.map((p) => poolReportFromWire(ctx, p));
  const durable = await ensureAgentConsumer(ctx.bus.jsm, hostId);
  if (req.processStart) {
    const handedBack = await redeliverAgentCommands(ctx.bus.jsm, hostId);
    if (handedBack > 0)
      ctx.log.info(
        { host: hostId, commands: handedBack },
        "a new agent process: its predecessor's unacked commands are delivered again",
      );
  }
  await ctx.sql.begin(async (tx) => {
    await applyHostInfo(tx, host);
    await applyPoolReports(tx, hostId, pools);
  });
  // The host's pools are placeable through this controller once it answers (other controllers follow the feed).
  await ctx.placement?.refresh([hostId]);
  ctx.log.info({ host: hostId, pools: pools.map((p) => p.name) }, "agent registered");
  ctx.kickRelay();
  ctx.notifyChange();
  return create(RegisterAgentResponseSchema, {
    hostId,
    ...agentSubjects(hostId),
    commandConsumer: durable,
    heartbeatIntervalMs: ctx.config.heartbeatIntervalMs,
  });
}

/** A volume as `diffInventory` judges it; `holds` is whether the ledger holds its bytes (default true). */
export type JudgedVolume = Pick<InventoryVolume, "id" | "state" | "poolId"> & { holds?: boolean };

/**
 * Why an artefact the host reports is an orphan, or undefined when the database knows it: no row for its volume
 * id, a `deleted` one, or one in `error` whose bytes the ledger no longer holds (a create that finished on the host
 * after the controller had failed it and released its space). An `error` volume that still holds its bytes (a
 * failed delete) is known: it is counted, and deleting it again converges.
 */
function orphanReason(path: string, v: JudgedVolume | undefined): string | undefined {
  if (!v) return `artefact ${path} has no volume in the database`;
  if (v.state === "deleted") return `artefact ${path} belongs to a deleted volume`;
  if (v.state === "error" && v.holds === false)
    return `artefact ${path} belongs to a volume in error whose space the ledger released (made after its operation had failed): it is counted nowhere`;
  return undefined;
}

/**
 * Compares a host's inventory with the database. What the host has and the database does not count is an orphan
 * (reported, never deleted; with what the agent said of its artefact, so that it can be adopted): no volume, a
 * deleted one, or one in error holding nothing (`orphanReason`); what the database has and the host lacks is
 * missing; unmarked artefacts are foreign. `landed` says which pool each of the host's pool names is (a shared
 * pool may be another host's row): only the host's own pools are judged for missing volumes.
 */
export function diffInventory(
  inv: Pick<Inventory, "volumes" | "foreignArtifacts" | "pools">,
  hostId: string,
  live: JudgedVolume[],
  landed?: ReadonlyMap<string, ReportedPool>,
): Finding[] {
  const findings: Finding[] = [];
  const known = new Map(live.map((v) => [v.id, v]));
  const poolIdOf = (name: string) => landed?.get(name)?.poolId ?? poolId(hostId, name);
  const reportedPools = new Set(
    inv.pools.filter((p) => !landed?.get(p.name)?.attached).map((p) => poolIdOf(p.name)),
  );
  const present = new Set<string>();
  for (const a of inv.volumes) {
    present.add(a.volumeId);
    const reason = isId(a.volumeId, "vol") ? orphanReason(a.path, known.get(a.volumeId)) : undefined;
    if (reason) {
      findings.push({
        hostId,
        kind: "orphan",
        subject: a.volumeId,
        poolId: poolIdOf(a.poolName),
        detail: reason,
        artefact: {
          sizeBytes: a.sizeBytes,
          format: formats.domain(a.format) ?? "",
          allocatedBytes: a.allocatedBytes,
          path: a.path,
          operationId: a.operationId,
        },
      });
    }
  }
  for (const v of live) {
    if (v.state === "available" && reportedPools.has(v.poolId) && !present.has(v.id)) {
      findings.push({
        hostId,
        kind: "missing",
        subject: v.id,
        poolId: v.poolId,
        detail: "the database has this volume, the host does not",
      });
    }
  }
  for (const f of inv.foreignArtifacts)
    findings.push({
      hostId,
      kind: "foreign",
      subject: f.slice(0, 200),
      poolId: "",
      detail: "no Stowage ownership marker: left alone",
    });
  return findings;
}

/** A full inventory: the host, every pool (the others marked absent) and its findings, judged anew. */
async function applyFullInventory(ctx: ControllerContext, inv: Inventory): Promise<void> {
  if (!inv.host) return;
  const hostId = validateName("host name", inv.hostId);
  const host = hostFromWire(inv.host);
  const pools = inv.pools.map((p) => poolReportFromWire(ctx, p));
  const findings = await ctx.sql.begin(async (tx) => {
    if (!(await markInventoryReceived(tx, hostId))) return undefined;
    await applyHostInfo(tx, host);
    const landed = await applyPoolReports(tx, hostId, pools);
    // Volumes being created or deleted are in flux: judge only the settled ones. A shared pool's listing is
    // judged in its owner's inventory, against every host's volumes in it; an attached host's is not judged.
    const live = await inventoryVolumesOnHost(tx, hostId);
    const inFlux = await volumesInFluxOnHost(tx, hostId);
    const shared = await sharedPoolVolumesOfOwner(tx, hostId);
    const judged = inv.volumes.filter(
      (a) => !inFlux.has(a.volumeId) && !shared.inFlux.has(a.volumeId) && !landed.get(a.poolName)?.attached,
    );
    const found = diffInventory({ ...inv, volumes: judged }, hostId, [...live, ...shared.volumes], landed);
    await replaceFindings(tx, hostId, found);
    return found;
  });
  if (findings?.length)
    ctx.log.warn({ host: hostId, findings: findings.length }, "inventory differs from the database");
}

/**
 * A delta: what one or more operations changed. Only the named pools are updated (the others are left as they
 * are, not marked absent), and only the touched volumes' findings are dropped; its cost is that of the delta,
 * never of the host's size.
 */
async function applyInventoryDelta(ctx: ControllerContext, inv: Inventory): Promise<void> {
  const hostId = validateName("host name", inv.hostId);
  const pools = inv.pools.map((p) => poolReportFromWire(ctx, p));
  const touched = [...inv.volumes.map((a) => a.volumeId), ...inv.removedVolumeIds];
  await ctx.sql.begin(async (tx) => {
    const landed = await applyPoolReportDeltas(tx, hostId, pools);
    // The touched artefacts are judged again (as a full inventory would, in flux excepted): an artefact of a
    // volume that is deleted or in error holding nothing stays an orphan.
    const rows = await inventoryVolumesById(
      tx,
      inv.volumes.map((a) => a.volumeId),
    );
    const moving = new Set(rows.filter(inFlux).map((v) => v.id));
    const found = diffInventory(
      {
        volumes: inv.volumes.filter((a) => !moving.has(a.volumeId)),
        foreignArtifacts: [],
        pools: [],
      },
      hostId,
      rows,
      landed,
    );
    const still = new Set(found.map((f) => f.subject));
    await dropVolumeFindings(
      tx,
      hostId,
      touched.filter((id) => !still.has(id)),
    );
    await upsertFindings(tx, hostId, found);
  });
}

/** As `volumesInFluxOnHost`: being created or deleted, or deleted within the last minute. */
function inFlux(v: InventoryVolume): boolean {
  return (
    v.state === "creating" ||
    v.state === "deleting" ||
    (v.state === "deleted" && v.deletedAt !== null && Date.now() - v.deletedAt.getTime() < 60_000)
  );
}

export async function applyInventory(ctx: ControllerContext, inv: Inventory): Promise<void> {
  if (inv.delta) await applyInventoryDelta(ctx, inv);
  else await applyFullInventory(ctx, inv);
}

/** What a controller last saw of a host's sequence (heartbeats, inventories and deltas share one). */
interface HostSequence {
  last: bigint;
  lastFull: bigint;
  /** When a full inventory was last asked for, since the last one arrived. */
  requestedAt: number | undefined;
}

export type SequenceVerdict = {
  /** False for a delta older than the last full inventory: that inventory already says more. */
  apply: boolean;
  /** A full inventory should be asked for: a message was lost (a gap), or the host is new to this controller. */
  requestFull: boolean;
};

/**
 * Follows each host's sequence, in arrival order (core NATS keeps one publisher's order). A gap means a lost
 * message, possibly a delta: the controller then asks the host for a full inventory, at most once per
 * `requestEveryMs` until one arrives. A sequence that goes back is a restarted agent (it counts from 1 again).
 * With several controller replicas in the queue group, each sees part of a host's messages, so gaps are
 * overcounted; the rate limit bounds what that costs.
 */
export function createSequenceTracker(requestEveryMs = 30_000, now: () => number = Date.now) {
  const hosts = new Map<string, HostSequence>();
  return {
    observe(hostId: string, sequence: bigint, kind: "heartbeat" | "full" | "delta"): SequenceVerdict {
      const h = hosts.get(hostId);
      if (!h || sequence <= h.last) {
        // New to this controller, or a restarted agent (counting from 1 again): the start of its sequence.
        const requestFull = kind !== "full";
        hosts.set(hostId, {
          last: sequence,
          lastFull: kind === "full" ? sequence : 0n,
          requestedAt: requestFull ? now() : undefined,
        });
        return { apply: true, requestFull };
      }
      const gap = sequence > h.last + 1n;
      h.last = sequence;
      if (kind === "full") {
        h.lastFull = sequence;
        h.requestedAt = undefined;
        return { apply: true, requestFull: false };
      }
      const apply = kind !== "delta" || sequence > h.lastFull;
      if (gap && (h.requestedAt === undefined || now() - h.requestedAt >= requestEveryMs)) {
        h.requestedAt = now();
        return { apply, requestFull: true };
      }
      return { apply, requestFull: false };
    },
    forget(hostId: string): void {
      hosts.delete(hostId);
    },
  };
}
export type SequenceTracker = ReturnType<typeof createSequenceTracker>;

/** Asks a host's agent for a full inventory (core NATS; a host that is down simply does not answer). */
export function requestFullInventory(bus: Bus, hostId: string): void {
  bus.nc.publish(inventoryRequestSubject(hostId));
}

async function applyHeartbeat(
  ctx: ControllerContext,
  bus: Bus,
  hostId: string,
  bootId: string,
): Promise<void> {
  const r = await recordHeartbeat(ctx.sql, hostId, bootId);
  if (r.cameBack) {
    ctx.log.info({ host: hostId }, "host is up again");
    // What it reported while it was down may have been lost.
    requestFullInventory(bus, hostId);
    ctx.kickRelay();
    ctx.notifyChange();
  }
}

/** A message whose sender is not the host it names (its subject's host): dropped and counted, never applied. */
export class ForgedMessageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ForgedMessageError";
  }
}

/**
 * A host publishes only on its own subjects (its NATS credentials allow no other): a message naming another host
 * is forged, and one naming no valid host is malformed; either is refused before anything reads its host id, so
 * one host cannot keep another one up or rewrite its pools.
 */
export function checkSubjectHost(what: string, hostId: string, subjectHost: string): string {
  const id = validateName("host name", hostId);
  if (id !== subjectHost)
    throw new ForgedMessageError(
      `${what} for host ${JSON.stringify(id)} arrived on host ${JSON.stringify(subjectHost.slice(0, 80))}'s subject`,
    );
  return id;
}

/** Decodes a core-NATS message; one that does not decode is poison (counted, then dropped). */
function decode<T>(decoder: () => T): T {
  try {
    return decoder();
  } catch (err) {
    throw new PoisonMessageError(`does not decode: ${(err as Error).message}`, "undecodable", { cause: err });
  }
}

/**
 * Handles every message on `subject` in the controllers' queue group, logging (not throwing) what fails. Core
 * NATS never redelivers: a message that does not decode, or is malformed (INVALID_ARGUMENT), is dropped and
 * counted in stowage_bus_poison_messages_total{consumer}; a forged one (ForgedMessageError) in
 * stowage_bus_forged_messages_total{kind}, logged without its payload.
 */
function subscribeQueued(
  ctx: ControllerContext,
  bus: Bus,
  subject: string,
  consumer: "heartbeats" | "inventories",
  handle: (data: Uint8Array, subjectHost: string) => Promise<void>,
) {
  const kind = consumer === "heartbeats" ? "heartbeat" : "inventory";
  return bus.nc.subscribe(subject, {
    queue: CONTROLLER_QUEUE,
    callback: (err, msg) => {
      if (err) return;
      void (async () => {
        try {
          await handle(msg.data, tokenToHost(msg.subject.slice(msg.subject.lastIndexOf(".") + 1)));
        } catch (e) {
          if (e instanceof ForgedMessageError) {
            ctx.metrics.busForged.inc({ kind });
            ctx.log.warn({ subject: msg.subject, error: e.message }, `forged ${kind} dropped`);
            return;
          }
          const reason =
            e instanceof PoisonMessageError
              ? e.reason
              : e instanceof StowageError && e.code === "invalid_argument"
                ? "invalid"
                : undefined;
          if (reason) ctx.metrics.busPoison.inc({ consumer, reason });
          ctx.log.warn(
            { err: e, subject: msg.subject, ...(reason ? { poison: reason } : {}) },
            reason ? `malformed ${consumer} message dropped` : `${consumer} handling failed`,
          );
        }
      })();
    },
  });
}

/** Runs each host's inventories one after another, in arrival order: an older delta never lands after a newer one. */
function perHostQueue() {
  const tails = new Map<string, Promise<void>>();
  return (hostId: string, fn: () => Promise<void>): Promise<void> => {
    const run = (tails.get(hostId) ?? Promise.resolve()).then(fn);
    const tail = run.catch(() => {});
    tails.set(hostId, tail);
    void tail.then(() => {
      if (tails.get(hostId) === tail) tails.delete(hostId);
    });
    return run;
  };
}

/**
 * Heartbeats and inventories arrive on core NATS, shared by controller replicas through a queue group. Sequences
 * are followed as messages arrive (before any await), so a gap is seen in order.
 */
export function subscribeAgentTraffic(
  ctx: ControllerContext,
  bus: Bus,
  tracker: SequenceTracker = createSequenceTracker(),
): () => void {
  const inOrder = perHostQueue();
  const observe = (hostId: string, sequence: bigint, kind: "heartbeat" | "full" | "delta") => {
    const v = tracker.observe(hostId, sequence, kind);
    if (v.requestFull) {
      ctx.log.info({ host: hostId, sequence }, "asking the host for a full inventory");
      requestFullInventory(bus, hostId);
    }
    return v.apply;
  };
  const subscriptions = [
    subscribeQueued(ctx, bus, ALL_HEARTBEATS, "heartbeats", async (data, subjectHost) => {
      const h = decode(() => fromBinary(HeartbeatSchema, data));
      checkSubjectHost("a heartbeat", h.hostId, subjectHost);
      observe(h.hostId, h.sequence, "heartbeat");
      await applyHeartbeat(ctx, bus, h.hostId, h.bootId);
    }),
    subscribeQueued(ctx, bus, ALL_INVENTORIES, "inventories", async (data, subjectHost) => {
      const inv = decode(() => fromBinary(InventorySchema, data));
      checkSubjectHost("an inventory", inv.hostId, subjectHost);
      // A full inventory's host record is its sender's too (it would rewrite that host's row).
      if (inv.host) checkSubjectHost("an inventory's host record", inv.host.name, subjectHost);
      if (!observe(inv.hostId, inv.sequence, inv.delta ? "delta" : "full")) return;
      await inOrder(inv.hostId, () => applyInventory(ctx, inv));
    }),
  ];
  return () => {
    for (const s of subscriptions) s.unsubscribe();
  };
}
