import { failedPrecondition, type VolumeFormat } from "@stowage/core";
import { z } from "zod";
import { mapLimit } from "../async.js";
import type { DriverBackend } from "../guard.js";
import type { DirPool } from "./layout.js";

// Ownership records: `.stowage/<volumeId>.json` per volume (its snapshots inside), `.stowage/base-<snapshotId>.json`
// per base image. Each is written whole (write, flush, rename), so a crash leaves the old record or the new one.

const decimal = z.string().regex(/^\d+$/);

const snapshotRecordSchema = z.object({
  snapshotId: z.string(),
  operationId: z.string(),
  /** The volume's virtual size when the snapshot was taken. */
  sizeBytes: decimal,
  createdAt: z.string(),
});

const sidecarSchema = z.object({
  volumeId: z.string(),
  operationId: z.string(),
  format: z.enum(["qcow2", "raw"]),
  /** Size asked for at creation, in bytes, as a decimal string (JSON has no 64-bit integers). */
  sizeBytes: decimal,
  /** The virtual size after the last resize or revert through the driver; absent: `sizeBytes`. */
  virtualSizeBytes: decimal.optional(),
  createdAt: z.string(),
  /** Internal snapshots of the image that Stowage made; absent when there are none. */
  snapshots: z.array(snapshotRecordSchema).optional(),
  /** Set for volumes made by cloneVolume: where the data came from. */
  clone: z.object({ sourceVolumeId: z.string(), sourceSnapshotId: z.string().optional() }).optional(),
});

/** Ownership of a base image, `.stowage/base-<snapshotId>.json`: written before the image, removed after. */
const baseRecordSchema = z.object({
  snapshotId: z.string(),
  sourceVolumeId: z.string(),
  operationId: z.string(),
  createdAt: z.string(),
});

export interface SnapshotRecord {
  snapshotId: string;
  operationId: string;
  sizeBytes: bigint;
  createdAt: string;
}

export interface Sidecar {
  volumeId: string;
  operationId: string;
  format: VolumeFormat;
  sizeBytes: bigint;
  /** Set once a resize or revert through the driver changed the size it was made with. */
  virtualSizeBytes?: bigint;
  createdAt: string;
  snapshots: SnapshotRecord[];
  clone?: { sourceVolumeId: string; sourceSnapshotId?: string };
}

/** The volume's virtual size as its record knows it. */
export function currentSize(rec: Sidecar): bigint {
  return rec.virtualSizeBytes ?? rec.sizeBytes;
}

/** `rec` with `sizeBytes` as its current virtual size (the size it was made with stays as it was). */
export function withSize(rec: Sidecar, sizeBytes: bigint): Sidecar {
  const { virtualSizeBytes: _, ...rest } = rec;
  return sizeBytes === rec.sizeBytes ? rest : { ...rest, virtualSizeBytes: sizeBytes };
}

export type BaseRecord = z.output<typeof baseRecordSchema>;

/** An owned, completed volume: its record, and an image under its final name. */
export interface OwnedVolume {
  id: string;
  rec: Sidecar;
}

/** Before a create or delete, what lies under a volume's names is its record, if any. */
export type DirBackend = DriverBackend<OwnedVolume, Sidecar | undefined>;

const SCAN_CONCURRENCY = 16;
const OWNED_FILE = /^(vol-[0-9a-f]{32})\.(qcow2|raw)$/;
const BASE_RECORD = /^base-(snap-[0-9a-f]{32})\.json$/;

export interface DirRecords {
  readSidecar(id: string): Promise<Sidecar | undefined>;
  writeSidecar(rec: Sidecar): Promise<void>;
  readBaseRecord(snapshotId: string): Promise<BaseRecord | undefined>;
  writeBaseRecord(rec: BaseRecord): Promise<void>;
  /** The owned, completed volume for `id`, or undefined (no record, or the image was never finished). */
  findOwned(id: string): Promise<OwnedVolume | undefined>;
  /** Owned, completed volumes (record and image), from a directory listing; and the names that are not ours. */
  scanOwned(): Promise<{ owned: OwnedVolume[]; foreign: string[] }>;
  /** Base images exported from snapshots of `volumeId`. */
  basesOf(volumeId: string): Promise<BaseRecord[]>;
}

export function createDirRecords(pool: DirPool): DirRecords {
  const { poolName, metaDir, fs, label } = pool;

  async function readRecord<S extends z.ZodType>(path: string, schema: S): Promise<z.output<S> | undefined> {
    const text = await fs.readText(path);
    if (text === undefined) return undefined;
    try {
      return schema.parse(JSON.parse(text));
    } catch (e) {
      throw failedPrecondition(
        `${label} pool ${poolName}: ownership record ${pool.artifactPath(path)} is unreadable (${(e as Error).message.split("\n")[0]}); inspect or remove it by hand`,
      );
    }
  }

  async function writeRecord(path: string, value: unknown): Promise<void> {
    const partial = `${path}.partial`;
    const body = `${JSON.stringify(value, null, 2)}\n`;
    // Write, flush, rename: a crash leaves either the old record or the new one, never half of one.
    await fs.writeDurable(partial, body, 0o600);
    await fs.rename(partial, path);
    await fs.fsync(metaDir);
  }

  async function readSidecar(id: string): Promise<Sidecar | undefined> {
    const path = pool.sidecarPath(id);
    const parsed = await readRecord(path, sidecarSchema);
    if (!parsed) return undefined;
    if (parsed.volumeId !== id) {
      throw failedPrecondition(
        `${label} pool ${poolName}: ownership record ${pool.artifactPath(path)} names ${parsed.volumeId}, not ${id}; inspect it by hand`,
      );
    }
    const { snapshots, clone, virtualSizeBytes, ...rest } = parsed;
    return {
      ...rest,
      sizeBytes: BigInt(parsed.sizeBytes),
      ...(virtualSizeBytes !== undefined ? { virtualSizeBytes: BigInt(virtualSizeBytes) } : {}),
      snapshots: (snapshots ?? []).map((s) => ({ ...s, sizeBytes: BigInt(s.sizeBytes) })),
      ...(clone ? { clone } : {}),
    };
  }

  async function writeSidecar(rec: Sidecar): Promise<void> {
    const { snapshots, clone, virtualSizeBytes, ...rest } = rec;
    await writeRecord(pool.sidecarPath(rec.volumeId), {
      ...rest,
      sizeBytes: rec.sizeBytes.toString(),
      ...(virtualSizeBytes !== undefined ? { virtualSizeBytes: virtualSizeBytes.toString() } : {}),
      // Plain volumes keep the short record they always had.
      ...(snapshots.length > 0
        ? { snapshots: snapshots.map((s) => ({ ...s, sizeBytes: s.sizeBytes.toString() })) }
        : {}),
      ...(clone ? { clone } : {}),
    });
  }

  async function findOwned(id: string): Promise<OwnedVolume | undefined> {
    const rec = await readSidecar(id);
    if (!rec) return undefined;
    return (await fs.kindOf(pool.volumePath(id, rec.format))) === "file" ? { id, rec } : undefined;
  }

  async function scanOwned(): Promise<{ owned: OwnedVolume[]; foreign: string[] }> {
    const entries = await fs.list(pool.root);
    // .stowage (records, bases, temp files), lost+found, ...: directories are not volumes.
    const files = entries.filter((e) => e.kind !== "dir");
    const recs = await mapLimit(files, SCAN_CONCURRENCY, async (e) => {
      const m = OWNED_FILE.exec(e.name);
      if (!m || e.kind !== "file") return undefined;
      // An unreadable record makes the file unaccounted for: report it rather than fail the inventory.
      const rec = await readSidecar(m[1]!).catch(() => undefined);
      return rec && rec.format === m[2] ? { id: m[1]!, rec } : undefined;
    });
    const foreign: string[] = [];
    const owned: OwnedVolume[] = [];
    files.forEach((e, i) => {
      const v = recs[i];
      if (v) owned.push(v);
      else foreign.push(e.name);
    });
    return { owned, foreign };
  }

  async function basesOf(volumeId: string): Promise<BaseRecord[]> {
    let names: string[];
    try {
      names = (await fs.list(metaDir)).map((e) => e.name);
    } catch (e) {
      if (fs.isMissing(e)) return [];
      throw e;
    }
    const out: BaseRecord[] = [];
    for (const n of names) {
      if (!BASE_RECORD.test(n)) continue;
      const rec = await readRecord(pool.metaPath(n), baseRecordSchema);
      if (rec?.sourceVolumeId === volumeId) out.push(rec);
    }
    return out;
  }

  return {
    readSidecar,
    writeSidecar,
    readBaseRecord: (snapshotId) => readRecord(pool.baseRecordPath(snapshotId), baseRecordSchema),
    writeBaseRecord: (rec) => writeRecord(pool.baseRecordPath(rec.snapshotId), rec),
    findOwned,
    scanOwned,
    basesOf,
  };
}
