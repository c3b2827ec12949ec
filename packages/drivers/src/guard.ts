import {
  capabilitiesOf,
  FORMATS_BY_KIND,
  failedPrecondition,
  formatSize,
  invalidArgument,
  notFound,
  type PoolKind,
  type VolumeFormat,
  validateVolumeSize,
  WIPE_MODES,
  type WipeMode,
} from "@stowage/core";
import {
  assertOperationId,
  assertSnapshotId,
  assertVolumeId,
  type CloneSpec,
  type CreateResult,
  type CreateVolumeSpec,
  type DeleteOptions,
  type PoolCapacityReport,
  type PoolDriver,
  type SnapshotInfo,
  type VolumeArtifact,
} from "./driver.js";
import type { KeyedLock } from "./keyed-lock.js";

/**
 * What a pool kind implements: the backend steps only. `guardDriver` wraps it into the PoolDriver every caller
 * gets, and does what every entry point must do, the same way for every kind:
 * - every argument is validated before anything is touched (ids with core's isId, so an artefact name can never
 *   hold a path separator, `..` or a shell word: docs/architecture.md, invariant 4; sizes, formats, wipes);
 * - a mutating call runs under the per-volume lock, so a redelivery racing the original sees its result;
 * - the volume is looked up (`findVolume`) and a missing one answered the same way by every kind.
 *
 * `Volume` is the backend's handle on an owned, complete volume; `Names` is what lies under a volume's names
 * before it is made or deleted (which may be nothing, or debris of a crashed attempt).
 */
export interface DriverBackend<Volume, Names> {
  readonly kind: PoolKind;
  readonly poolName: string;
  /** How messages name the pool ("pool local", "lvm pool p (VG vg0)"). */
  readonly where: string;
  /** The per-volume lock; steps that reach another volume (a clone's source) take that one's themselves. */
  readonly lock: KeyedLock;

  /**
   * The owned, complete volume, or undefined (missing, or not ours). `change`: the caller holds its lock and is
   * about to change it, so a backend may first finish a step that crashed half-way.
   */
  findVolume(volumeId: string, purpose: "read" | "change"): Promise<Volume | undefined>;
  /** Under the lock, before a create or delete; throws for an artefact under the volume's names that is not ours. */
  inspectNames(volumeId: string, purpose: "make" | "delete"): Promise<Names>;

  check(): Promise<{ healthy: boolean; message: string }>;
  capacity(): Promise<PoolCapacityReport>;
  list(): Promise<{ volumes: VolumeArtifact[]; foreign: string[] }>;

  /** The volume as it is now. */
  artifact(volume: Volume): Promise<VolumeArtifact>;
  /** For info(): undefined when the volume went away while it was read. Default: `artifact`. */
  info?(volume: Volume): Promise<VolumeArtifact | undefined>;
  /** Kind-specific checks of a create request (options), before the lock. */
  validateCreate?(spec: CreateVolumeSpec): void;
  create(spec: CreateVolumeSpec, names: Names): Promise<CreateResult>;
  delete(volumeId: string, names: Names, wipe: Wipe): Promise<{ existed: boolean }>;
  /** Why the kind refuses a wipe mode its capabilities leave out. */
  explainWipe?(mode: WipeMode): string;
  /** The size a resize to `bytes` really gives (LVM rounds up to whole extents). Default: `bytes`. */
  roundSize?(bytes: bigint): Promise<bigint>;
  /** Called with a size that differs from the current one; a shrink has been allowed. */
  resize(volume: Volume, sizeBytes: bigint, shrink: boolean): Promise<VolumeArtifact>;

  createSnapshot(
    volume: Volume,
    snapshotId: string,
    operationId: string,
  ): Promise<{ snapshot: SnapshotInfo; adopted: boolean }>;
  listSnapshots(volume: Volume): Promise<SnapshotInfo[]>;
  deleteSnapshot(volume: Volume, snapshotId: string): Promise<{ existed: boolean }>;
  revertSnapshot(volume: Volume, snapshotId: string, operationId: string): Promise<VolumeArtifact>;

  /**
   * `names`: what lies under the clone's names (an earlier attempt's result is adopted from it). `withSource`
   * takes the source's lock (inside the clone's: always in that order), looks the source up and runs `fn`.
   */
  clone(spec: CloneSpec, names: Names, withSource: SourceAccess<Volume>): Promise<CreateResult>;
  flatten(volume: Volume, operationId: string): Promise<VolumeArtifact>;
}

export interface Wipe {
  mode: WipeMode;
  /** The delete's own throttle; undefined: the pool's default. */
  bytesPerSecond: number | undefined;
}

export type SourceAccess<Volume> = <T>(fn: (source: Volume) => Promise<T>) => Promise<T>;

export function guardDriver<Volume, Names>(backend: DriverBackend<Volume, Names>): PoolDriver {
  const { kind, poolName, where, lock } = backend;

  async function requireVolume(
    volumeId: string,
    purpose: "read" | "change",
    role = "volume",
  ): Promise<Volume> {
    const volume = await backend.findVolume(volumeId, purpose);
    if (volume === undefined) {
      throw notFound(`${role} ${volumeId} does not exist in ${where}`, { volumeId, poolName });
    }
    return volume;
  }

  /** Runs `fn` on the owned volume under its lock (not_found when there is none). */
  const changing = <T>(volumeId: string, fn: (volume: Volume) => Promise<T>): Promise<T> =>
    lock.run(volumeId, async () => fn(await requireVolume(volumeId, "change")));

  function assertFormat(format: VolumeFormat): void {
    const formats = FORMATS_BY_KIND[kind];
    if (!formats.includes(format)) {
      throw invalidArgument(
        `format ${JSON.stringify(format)} is not valid for ${kind} pools: use ${formats.join(" or ")}`,
        { field: "format" },
      );
    }
  }

  function assertWipe(opts: DeleteOptions): Wipe {
    const mode = opts.wipe ?? "none";
    if (!WIPE_MODES.includes(mode)) {
      throw invalidArgument(`wipe mode ${JSON.stringify(mode)} is not valid: use ${WIPE_MODES.join(", ")}`, {
        field: "wipe",
      });
    }
    const supported = new Set(FORMATS_BY_KIND[kind].flatMap((f) => capabilitiesOf(kind, f).wipe));
    if (!supported.has(mode)) {
      throw invalidArgument(
        backend.explainWipe?.(mode) ??
          `${where} cannot wipe with ${mode}: use ${[...supported].join(" or ")}`,
        { field: "wipe" },
      );
    }
    const rate = opts.wipeBytesPerSecond;
    if (rate !== undefined) assertWipeRate(rate);
    return { mode, bytesPerSecond: rate };
  }

  return {
    kind,
    poolName,
    check: () => backend.check(),
    capacity: () => backend.capacity(),
    list: () => backend.list(),

    async createVolume(spec) {
      assertVolumeId(spec.volumeId);
      assertOperationId(spec.operationId);
      assertFormat(spec.format);
      validateVolumeSize(spec.sizeBytes);
      backend.validateCreate?.(spec);
      return lock.run(spec.volumeId, async () =>
        backend.create(spec, await backend.inspectNames(spec.volumeId, "make")),
      );
    },

    async deleteVolume(volumeId, opts = {}) {
      assertVolumeId(volumeId);
      if (opts.operationId !== undefined) assertOperationId(opts.operationId);
      const wipe = assertWipe(opts);
      return lock.run(volumeId, async () =>
        backend.delete(volumeId, await backend.inspectNames(volumeId, "delete"), wipe),
      );
    },

    async resizeVolume(volumeId, newSizeBytes, opts) {
      assertVolumeId(volumeId);
      validateVolumeSize(newSizeBytes, "new size");
      assertOperationId(opts.operationId);
      return changing(volumeId, async (volume) => {
        const current = await backend.artifact(volume);
        const target = (await backend.roundSize?.(newSizeBytes)) ?? newSizeBytes;
        // Already there: a redelivered resize converges.
        if (target === current.sizeBytes) return current;
        const shrink = target < current.sizeBytes;
        if (shrink && !opts.allowShrink) {
          throw failedPrecondition(
            `shrinking volume ${volumeId} from ${formatSize(current.sizeBytes)} to ${formatSize(newSizeBytes)} would discard the data past the new end; allow shrinking explicitly to do it`,
            { volumeId, currentBytes: current.sizeBytes.toString() },
          );
        }
        return backend.resize(volume, target, shrink);
      });
    },

    async info(volumeId) {
      assertVolumeId(volumeId);
      const volume = await backend.findVolume(volumeId, "read");
      if (volume === undefined) return undefined;
      return backend.info ? backend.info(volume) : backend.artifact(volume);
    },

    async createSnapshot(volumeId, snapshotId, opts) {
      assertSnapshotCall(volumeId, snapshotId, opts);
      return changing(volumeId, (volume) => backend.createSnapshot(volume, snapshotId, opts.operationId));
    },

    async listSnapshots(volumeId) {
      assertVolumeId(volumeId);
      return backend.listSnapshots(await requireVolume(volumeId, "read"));
    },

    async deleteSnapshot(volumeId, snapshotId, opts) {
      assertSnapshotCall(volumeId, snapshotId, opts);
      return lock.run(volumeId, async () => {
        const volume = await backend.findVolume(volumeId, "change");
        // The volume is gone, and its snapshots with it: repeated deletes succeed.
        if (volume === undefined) return { existed: false };
        return backend.deleteSnapshot(volume, snapshotId);
      });
    },

    async revertSnapshot(volumeId, snapshotId, opts) {
      assertSnapshotCall(volumeId, snapshotId, opts);
      return changing(volumeId, (volume) => backend.revertSnapshot(volume, snapshotId, opts.operationId));
    },

    async cloneVolume(spec) {
      assertVolumeId(spec.volumeId);
      assertVolumeId(spec.sourceVolumeId);
      if (spec.sourceSnapshotId !== undefined) assertSnapshotId(spec.sourceSnapshotId);
      assertOperationId(spec.operationId);
      assertFormat(spec.format);
      if (spec.sizeBytes !== undefined) validateVolumeSize(spec.sizeBytes);
      if (spec.volumeId === spec.sourceVolumeId) {
        throw invalidArgument(`a clone needs a volume id of its own, not its source's (${spec.volumeId})`, {
          field: "volumeId",
        });
      }
      const sourceId = spec.sourceVolumeId;
      const withSource: SourceAccess<Volume> = (fn) =>
        lock.run(sourceId, async () => fn(await requireVolume(sourceId, "read", "source volume")));
      return lock.run(spec.volumeId, async () =>
        backend.clone(spec, await backend.inspectNames(spec.volumeId, "make"), withSource),
      );
    },

    async flattenVolume(volumeId, opts) {
      assertVolumeId(volumeId);
      assertOperationId(opts.operationId);
      return changing(volumeId, (volume) => backend.flatten(volume, opts.operationId));
    },
  };
}

function assertSnapshotCall(volumeId: string, snapshotId: string, opts: { operationId: string }): void {
  assertVolumeId(volumeId);
  assertSnapshotId(snapshotId);
  assertOperationId(opts.operationId);
}

/** A wipe throttle in bytes per second; 0: unthrottled. */
export function assertWipeRate(rate: number): void {
  if (!Number.isFinite(rate) || rate < 0) {
    throw invalidArgument(`wipe rate ${rate} is not valid: bytes per second, 0 for unthrottled`, {
      field: "wipeBytesPerSecond",
    });
  }
}
