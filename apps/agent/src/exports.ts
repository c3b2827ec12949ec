import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { cephxUserFor, isCephxKey, isId, StowageError, validateName } from "@stowage/core";
import {
  type CephAdmin,
  cephMonitorAddresses,
  cephxKeyDigest,
  type ExportKeeper,
  grantRbdAccess,
  type IscsiExport,
  iqnForVolume,
  keepExported,
  listStowageCephxClients,
  type RbdCaps,
  rbdImageForVolume,
  revokeRbdAccess,
  type StowageCephxClient,
  type TgtExporter,
  ToolError,
} from "@stowage/drivers";
import {
  type AgentCommand,
  type ExportArtifact,
  ExportArtifactSchema,
  type ExportCommand,
  ExportKind,
  type OperationResultSchema,
} from "@stowage/proto";
import type { Logger } from "@stowage/telemetry";
import { writeAtomic } from "./identity.js";

type Outcome = MessageInitShape<typeof OperationResultSchema>;

/**
 * What the agent keeps of one export it was told to serve (the state file, 0600: it holds CHAP secrets and
 * cephx keys). Entries without `kind` are iSCSI ones (state files written before RBD exports existed).
 */
type DesiredExport = DesiredIscsiExport | DesiredRbdExport;

interface DesiredIscsiExport {
  kind?: "iscsi";
  exportId: string;
  hostIds: string[];
  export: IscsiExport;
}

/** One allowed host of an RBD export: its cephx client and the key the controller made for it. */
interface RbdClient {
  hostId: string;
  /** Without `client.`: `cephxUserFor(exportId, hostId)`. */
  user: string;
  key: string;
}

interface DesiredRbdExport {
  kind: "rbd";
  exportId: string;
  volumeId: string;
  poolName: string;
  hostIds: string[];
  clients: RbdClient[];
  uri: string;
}

/** An rbd pool of this host, as RBD exports need it: the pool's admin access and where its images are. */
export interface RbdExportPool {
  /** The rbd driver's runner and connection (its conf, user and keyring). */
  admin: CephAdmin;
  cephPool: string;
  namespace?: string;
}

/** The exports a host serves, kept as desired state and put back by itself (docs/architecture.md, Exports). */
export interface ExportManager {
  /** Runs a create_export or delete_export command; the fields of its result. */
  handle(cmd: AgentCommand): Promise<Outcome>;
  /** The exports as the agent serves them (for full inventories). */
  artifacts(): ExportArtifact[];
  /** Checks the RBD grants now (as the interval does) and puts back any that is missing or changed. */
  checkRbdGrants(): Promise<{ restored: string[] }>;
  stop(): Promise<void>;
}

export interface ExportManagerOptions {
  stateDir: string;
  /** tgtd, for iSCSI exports; without it (no iscsiPortal) iSCSI exports are refused. */
  exporter?: TgtExporter;
  /** host:port clients reach tgtd at, for the export's URI. */
  portal?: string;
  /** The file or block device of a volume in a pool (its driver's path), for iSCSI exports. */
  backing?(poolName: string, volumeId: string): Promise<IscsiExport["backing"]>;
  /**
   * The rbd pool named `poolName` on this host, or undefined when there is none of that name (RBD exports are
   * refused then). Without this option every RBD export is refused.
   */
  rbdPool?(poolName: string): RbdExportPool | undefined;
  log: Logger;
  /**
   * How often the exports are re-applied, so a restarted tgtd gets them back and a lost cephx client is
   * granted again (default 10 s). For RBD each round is one `ceph auth ls` per pool in use.
   */
  intervalMs?: number;
}

const STATE_FILE = "exports.json";

export async function openExportManager(o: ExportManagerOptions): Promise<ExportManager> {
  const path = join(o.stateDir, STATE_FILE);
  const desired = new Map<string, DesiredExport>();
  try {
    const saved = JSON.parse(await readFile(path, "utf8")) as { exports?: DesiredExport[] };
    for (const d of saved.exports ?? []) desired.set(d.exportId, d);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT")
      throw new Error(`${path}: ${(err as Error).message}`);
  }
  await mkdir(o.stateDir, { recursive: true, mode: 0o700 });
  const intervalMs = o.intervalMs ?? 10_000;
  const save = () =>
    writeAtomic(o.stateDir, STATE_FILE, `${JSON.stringify({ exports: [...desired.values()] })}\n`);
  const iscsi = () =>
    [...desired.values()].filter((d): d is DesiredIscsiExport => d.kind !== "rbd").map((d) => d.export);
  const rbdExports = () => [...desired.values()].filter((d): d is DesiredRbdExport => d.kind === "rbd");
  const keeper: ExportKeeper | undefined = o.exporter
    ? keepExported(o.exporter, iscsi, { intervalMs })
    : undefined;
  const artifact = (d: DesiredExport) =>
    d.kind === "rbd"
      ? create(ExportArtifactSchema, {
          exportId: d.exportId,
          volumeId: d.volumeId,
          kind: ExportKind.RBD,
          uri: d.uri,
          allowedHostIds: d.hostIds,
        })
      : create(ExportArtifactSchema, {
          exportId: d.exportId,
          volumeId: d.export.volumeId,
          kind: ExportKind.ISCSI,
          uri: `iscsi://${o.portal}/${iqnForVolume(d.export.volumeId)}/1`,
          allowedHostIds: d.hostIds,
        });

  // Commands and the interval's check run one at a time: a check must never put back a grant that a
  // delete_export is taking away.
  let queue: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = queue.then(fn, fn);
    queue = run.catch(() => undefined);
    return run;
  };

  // ---- iSCSI (tgt) ----

  async function handleIscsi(cmd: AgentCommand, e: ExportCommand, deleting: boolean): Promise<Outcome> {
    const { exporter, backing } = o;
    if (!exporter || !backing || !o.portal) {
      throw new StowageError(
        "failed_precondition",
        `this host serves no iSCSI exports: set iscsiPortal in its agent config (export ${e.exportId})`,
      );
    }
    if (deleting) {
      desired.delete(e.exportId);
      await save();
      await exporter.apply(iscsi());
      o.log.info({ export: e.exportId, volume: e.volumeId }, "export removed");
      return { success: true };
    }
    const d: DesiredIscsiExport = {
      exportId: e.exportId,
      hostIds: e.allowed.map((a) => a.hostId),
      export: {
        volumeId: e.volumeId,
        backing: await backing(cmd.poolName, e.volumeId),
        allowed: e.allowed.flatMap((a) =>
          a.addresses.map((address) => ({ initiatorIqn: a.initiatorName, address })),
        ),
        ...(e.chapUser ? { chap: { username: e.chapUser, secret: e.chapSecret } } : {}),
      },
    };
    desired.set(e.exportId, d);
    await save();
    await exporter.apply(iscsi());
    o.log.info({ export: e.exportId, volume: e.volumeId, allowed: d.hostIds }, "export applied");
    return { success: true, export: artifact(d) };
  }

  // ---- RBD (cephx grants) ----

  /** The caps each client was last granted, to tell a changed client from ours on the interval. */
  const grantedCaps = new Map<string, RbdCaps>();
  const monitors = new Map<string, Promise<string[]>>();

  function rbdPoolOf(poolName: string, exportId: string): RbdExportPool {
    const pool = o.rbdPool?.(poolName);
    if (!pool) {
      throw new StowageError(
        "failed_precondition",
        `pool ${poolName} on this host is not an rbd pool: RBD export ${exportId} needs the volume in an rbd pool`,
      );
    }
    return pool;
  }

  async function uriFor(poolName: string, pool: RbdExportPool, volumeId: string): Promise<string> {
    let mons = monitors.get(poolName);
    if (!mons) {
      mons = cephMonitorAddresses(pool.admin);
      monitors.set(poolName, mons);
      mons.catch(() => monitors.delete(poolName));
    }
    const ns = pool.namespace ? `${pool.namespace}/` : "";
    return `rbd://${(await mons).join(",")}/${pool.cephPool}/${ns}${rbdImageForVolume(volumeId)}`;
  }

  async function grant(pool: RbdExportPool, volumeId: string, c: RbdClient): Promise<void> {
    try {
      const g = await grantRbdAccess(pool.admin, {
        pool: pool.cephPool,
        ...(pool.namespace ? { namespace: pool.namespace } : {}),
        image: rbdImageForVolume(volumeId),
        user: c.user,
        key: c.key,
      });
      grantedCaps.set(c.user, g.caps);
    } catch (err) {
      // rbd exits with the errno: ENOENT is a volume that is not (or no longer) in the pool.
      if (err instanceof ToolError && err.tool === "rbd" && err.exitCode === 2) {
        throw new StowageError(
          "not_found",
          `volume ${volumeId} is not in ceph pool ${pool.cephPool}${pool.namespace ? `/${pool.namespace}` : ""}`,
          { volumeId },
        );
      }
      throw err;
    }
  }

  /**
   * Whether Ceph's client is the one `c` wants: its key, and the caps this agent last granted it. Caps this
   * process has not granted yet (after a restart) count as wrong for a command, which grants again, but as
   * fine for the interval's check, which only puts back what is missing or has another key or changed caps.
   */
  function inPlace(
    now: StowageCephxClient | undefined,
    c: RbdClient,
    opts: { capsUnknownIsFine?: boolean } = {},
  ): boolean {
    if (!now || now.keyDigest !== cephxKeyDigest(c.key)) return false;
    const caps = grantedCaps.get(c.user);
    if (!caps) return opts.capsUnknownIsFine === true;
    return now.caps.mon === caps.mon && now.caps.osd === caps.osd;
  }

  /** Revokes every client of the export that `keep` does not name, as Ceph lists them (a crash may have left some). */
  async function revokeOthers(
    pool: RbdExportPool,
    exportId: string,
    keep: Set<string>,
    listed?: StowageCephxClient[],
  ): Promise<string[]> {
    const prefix = cephxUserFor(exportId, "");
    const revoked: string[] = [];
    for (const c of listed ?? (await listStowageCephxClients(pool.admin))) {
      if (!c.user.startsWith(prefix) || keep.has(c.user)) continue;
      await revokeRbdAccess(pool.admin, c.user);
      grantedCaps.delete(c.user);
      revoked.push(c.user);
    }
    return revoked;
  }

  async function handleRbd(cmd: AgentCommand, e: ExportCommand, deleting: boolean): Promise<Outcome> {
    // The export id names the cephx clients (and, by prefix, the set a delete removes): ids only.
    if (!isId(e.exportId, "exp")) {
      throw new StowageError(
        "invalid_argument",
        `export id ${JSON.stringify(e.exportId.slice(0, 80))} is not valid`,
      );
    }
    if (!isId(e.volumeId, "vol")) {
      throw new StowageError(
        "invalid_argument",
        `volume id ${JSON.stringify(e.volumeId.slice(0, 80))} is not valid`,
      );
    }
    const before = desired.get(e.exportId);
    // A delete goes to the pool the export was made in; a create to the command's pool.
    const poolName = deleting && before?.kind === "rbd" ? before.poolName : cmd.poolName;
    const pool = rbdPoolOf(poolName, e.exportId);
    if (deleting) {
      // Forget it first: a crash after this point leaves clients that a redelivered delete (which lists
      // Ceph's clients of the export) removes, never a grant that the interval would put back.
      desired.delete(e.exportId);
      await save();
      const revoked = await revokeOthers(pool, e.exportId, new Set());
      o.log.info({ export: e.exportId, volume: e.volumeId, revoked }, "rbd export removed");
      return { success: true };
    }
    const clients: RbdClient[] = [];
    for (const a of e.allowed) {
      validateName("allowed host id", a.hostId);
      // Never quote the key back: a malformed one may still be most of a real one.
      if (!isCephxKey(a.cephxKey)) {
        throw new StowageError(
          "invalid_argument",
          `export ${e.exportId}: the cephx key for host ${a.hostId} is missing or not a cephx key`,
        );
      }
      clients.push({ hostId: a.hostId, user: cephxUserFor(e.exportId, a.hostId), key: a.cephxKey });
    }
    const d: DesiredRbdExport = {
      kind: "rbd",
      exportId: e.exportId,
      volumeId: e.volumeId,
      poolName,
      hostIds: clients.map((c) => c.hostId),
      clients,
      uri: await uriFor(poolName, pool, e.volumeId),
    };
    // Grants first, then the desired state, then the revocations: a failed grant (a missing volume) leaves
    // the export as it was; a crash leaves at worst a grant that this command's redelivery converges.
    // A client already in place with this key and the caps this agent granted is left as it is, so a
    // repeated create_export costs one `ceph auth ls`.
    const listed = await listStowageCephxClients(pool.admin);
    const byUser = new Map(listed.map((c) => [c.user, c]));
    const had = new Set(before?.kind === "rbd" ? before.clients.map((c) => c.user) : []);
    const made: string[] = [];
    try {
      for (const c of clients) {
        if (inPlace(byUser.get(c.user), c)) continue;
        if (!byUser.has(c.user)) made.push(c.user);
        await grant(pool, e.volumeId, c);
      }
    } catch (err) {
      // A failed create leaves the export as it was: the clients this attempt made for hosts it did not have
      // go again (best effort; a redelivered command or delete_export converges the rest).
      for (const user of made.filter((u) => !had.has(u))) {
        await revokeRbdAccess(pool.admin, user).catch(() => undefined);
        grantedCaps.delete(user);
      }
      throw err;
    }
    desired.set(e.exportId, d);
    await save();
    const revoked = await revokeOthers(pool, e.exportId, new Set(clients.map((c) => c.user)), listed);
    o.log.info(
      {
        export: e.exportId,
        volume: e.volumeId,
        allowed: d.hostIds,
        users: clients.map((c) => c.user),
        revoked,
      },
      "rbd export applied",
    );
    return { success: true, export: artifact(d) };
  }

  /**
   * One `ceph auth ls` per rbd pool in use; a client of a desired export that is missing, or whose key or caps
   * are not what was granted, is granted again. Clients of exports this agent does not know are left alone:
   * other agents may serve exports from the same cluster.
   */
  async function checkRbdGrants(): Promise<{ restored: string[] }> {
    const restored: string[] = [];
    const byPool = new Map<string, DesiredRbdExport[]>();
    for (const d of rbdExports()) byPool.set(d.poolName, [...(byPool.get(d.poolName) ?? []), d]);
    for (const [poolName, exports] of byPool) {
      const pool = o.rbdPool?.(poolName);
      if (!pool) continue;
      const listed = new Map((await listStowageCephxClients(pool.admin)).map((c) => [c.user, c]));
      for (const d of exports) {
        for (const c of d.clients) {
          if (inPlace(listed.get(c.user), c, { capsUnknownIsFine: true })) continue;
          await grant(pool, d.volumeId, c);
          restored.push(c.user);
        }
      }
    }
    if (restored.length > 0) o.log.warn({ users: restored }, "rbd grants put back");
    return { restored };
  }

  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let inFlight: Promise<unknown> | undefined;
  const tick = () => {
    timer = undefined;
    if (stopped) return;
    inFlight = serial(checkRbdGrants)
      .catch((err: unknown) => {
        o.log.warn({ err: err instanceof Error ? err.message : String(err) }, "rbd grants check failed");
      })
      .finally(() => {
        inFlight = undefined;
        if (!stopped) timer = setTimeout(tick, intervalMs);
      });
  };
  if (o.rbdPool) timer = setTimeout(tick, rbdExports().length > 0 ? 0 : intervalMs);

  return {
    handle(cmd) {
      return serial(async () => {
        const p = cmd.payload;
        if (p.case !== "createExport" && p.case !== "deleteExport")
          throw new StowageError("invalid_argument", `command ${cmd.operationId} is not an export command`);
        const e = p.value;
        const deleting = p.case === "deleteExport";
        if (e.kind === ExportKind.ISCSI) return handleIscsi(cmd, e, deleting);
        if (e.kind === ExportKind.RBD) return handleRbd(cmd, e, deleting);
        throw new StowageError(
          "failed_precondition",
          `only iSCSI and RBD exports are built on this agent (export ${e.exportId})`,
        );
      });
    },
    artifacts: () => [...desired.values()].map(artifact),
    checkRbdGrants: () => serial(checkRbdGrants),
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      await inFlight;
      await keeper?.stop();
    },
  };
}
