import { constants } from "node:fs";
import {
  access,
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  stat,
  statfs,
  unlink,
} from "node:fs/promises";
import { isAbsolute, join, resolve } from "node:path";
import {
  alreadyExists,
  FORMATS_BY_KIND,
  failedPrecondition,
  formatSize,
  invalidArgument,
  notFound,
  type Qcow2Options,
  StowageError,
  type VolumeFormat,
  validateName,
  validateVolumeSize,
} from "@stowage/core";
import { z } from "zod";
import {
  assertOperationId,
  assertVolumeId,
  type CreateResult,
  type CreateVolumeSpec,
  type PoolCapacityReport,
  type PoolDriver,
  type VolumeArtifact,
} from "./driver.js";
import { createKeyedLock } from "./keyed-lock.js";
import { parseQemuImgInfo, qemuImgCreateArgv, qemuImgInfoArgv, qemuImgResizeArgv } from "./qemu-img.js";
import type { ToolRunner } from "./runner.js";

/**
 * `dir` pools: qcow2/raw files in one directory, `<root>/<volumeId>.<qcow2|raw>`, each owned through a sidecar
 * record `<root>/.stowage/<volumeId>.json`. The sidecar is written before the image (it is the intent) and
 * removed after it, so at every instant a file under a final name either has its record or is not ours.
 */

export interface DirDriverOptions {
  poolName: string;
  /** Absolute path of the pool directory. It must exist; the driver never creates it. */
  root: string;
  runner: ToolRunner;
  /** Applied under each request's own qcow2 options (the request wins). Not applied to raw volumes. */
  qcow2Defaults?: Qcow2Options;
  /**
   * Timeout for `qemu-img create`. Default: the runner's default, or 30 minutes with falloc/full preallocation,
   * which writes the whole image.
   */
  createTimeoutMs?: number;
  /** Clock for `createdAt` (tests). */
  now?: () => Date;
}

/** Directory for ownership records and temp images, inside the pool so renames never cross filesystems. */
export const DIR_META = ".stowage";
const PREALLOCATED_CREATE_TIMEOUT_MS = 30 * 60_000;
const LIST_CONCURRENCY = 8;
const FORMATS: readonly VolumeFormat[] = ["qcow2", "raw"];
const OWNED_FILE = /^(vol-[0-9a-f]{32})\.(qcow2|raw)$/;

const sidecarSchema = z.object({
  volumeId: z.string(),
  operationId: z.string(),
  format: z.enum(["qcow2", "raw"]),
  /** Size asked for at creation, in bytes, as a decimal string (JSON has no 64-bit integers). */
  sizeBytes: z.string().regex(/^\d+$/),
  createdAt: z.string(),
});

interface Sidecar {
  volumeId: string;
  operationId: string;
  format: VolumeFormat;
  sizeBytes: bigint;
  createdAt: string;
}

type Kind = "missing" | "file" | "other";

export function createDirDriver(opts: DirDriverOptions): PoolDriver {
  const poolName = validateName("pool name", opts.poolName);
  if (!isAbsolute(opts.root)) {
    throw invalidArgument(`dir pool ${poolName}: root ${JSON.stringify(opts.root)} must be an absolute path`);
  }
  const root = resolve(opts.root);
  const metaDir = join(root, DIR_META);
  const runner = opts.runner;
  const now = opts.now ?? (() => new Date());
  const lock = createKeyedLock();

  const volumePath = (id: string, format: VolumeFormat) => join(root, `${id}.${format}`);
  const tempPath = (id: string, format: VolumeFormat) => join(metaDir, `tmp-${id}.${format}`);
  const sidecarPath = (id: string) => join(metaDir, `${id}.json`);

  async function kindOf(path: string): Promise<Kind> {
    try {
      // lstat: a symlink under a volume's name is not a volume we made.
      return (await lstat(path)).isFile() ? "file" : "other";
    } catch (e) {
      if (isNoEnt(e)) return "missing";
      throw e;
    }
  }

  async function assertRootUsable(): Promise<void> {
    let st: Awaited<ReturnType<typeof stat>>;
    try {
      st = await stat(root);
    } catch (e) {
      if (isNoEnt(e)) throw failedPrecondition(`dir pool ${poolName}: root ${root} does not exist`);
      throw e;
    }
    if (!st.isDirectory()) throw failedPrecondition(`dir pool ${poolName}: root ${root} is not a directory`);
  }

  async function readSidecar(id: string): Promise<Sidecar | undefined> {
    const path = sidecarPath(id);
    let text: string;
    try {
      text = await readFile(path, "utf8");
    } catch (e) {
      if (isNoEnt(e)) return undefined;
      throw e;
    }
    let parsed: z.output<typeof sidecarSchema>;
    try {
      parsed = sidecarSchema.parse(JSON.parse(text));
    } catch (e) {
      throw failedPrecondition(
        `dir pool ${poolName}: ownership record ${path} is unreadable (${(e as Error).message.split("\n")[0]}); inspect or remove it by hand`,
      );
    }
    if (parsed.volumeId !== id) {
      throw failedPrecondition(
        `dir pool ${poolName}: ownership record ${path} names ${parsed.volumeId}, not ${id}; inspect it by hand`,
      );
    }
    return { ...parsed, sizeBytes: BigInt(parsed.sizeBytes) };
  }

  async function writeSidecar(rec: Sidecar): Promise<void> {
    const path = sidecarPath(rec.volumeId);
    const partial = `${path}.partial`;
    const body = `${JSON.stringify({ ...rec, sizeBytes: rec.sizeBytes.toString() }, null, 2)}\n`;
    // Write, flush, rename: a crash leaves either the old record or the new one, never half of one.
    const fh = await open(partial, "w", 0o600);
    try {
      await fh.writeFile(body, "utf8");
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(partial, path);
    await fsyncDir(metaDir);
  }

  async function inspect(id: string, rec: Sidecar): Promise<VolumeArtifact> {
    const path = volumePath(id, rec.format);
    const argv = qemuImgInfoArgv(path, rec.format);
    const { stdout } = await runner.run("qemu-img", argv);
    const info = parseQemuImgInfo(stdout, argv);
    return {
      volumeId: id,
      poolName,
      sizeBytes: info.virtualSize,
      format: rec.format,
      allocatedBytes: info.actualSize ?? 0n,
      path,
      operationId: rec.operationId,
    };
  }

  /** The owned, completed volume for `id`, or undefined (no record, or the image was never finished). */
  async function findOwned(id: string): Promise<Sidecar | undefined> {
    const rec = await readSidecar(id);
    if (!rec) return undefined;
    return (await kindOf(volumePath(id, rec.format))) === "file" ? rec : undefined;
  }

  function describe(format: VolumeFormat, size: bigint) {
    return `${format} ${formatSize(size)}`;
  }

  async function createVolume(spec: CreateVolumeSpec): Promise<CreateResult> {
    const id = spec.volumeId;
    assertVolumeId(id);
    assertOperationId(spec.operationId);
    if (!FORMATS_BY_KIND.dir.includes(spec.format)) {
      throw invalidArgument(
        `format ${JSON.stringify(spec.format)} is not valid for dir pools: use qcow2 or raw`,
        {
          field: "format",
        },
      );
    }
    validateVolumeSize(spec.sizeBytes);
    const options: Qcow2Options =
      spec.format === "qcow2" ? { ...opts.qcow2Defaults, ...spec.qcow2 } : { ...spec.qcow2 };
    const finalPath = volumePath(id, spec.format);
    const tmpPath = tempPath(id, spec.format);
    // Built (and so validated) before anything on disk is touched: bad options change nothing.
    const argv = qemuImgCreateArgv(tmpPath, spec.format, spec.sizeBytes, options);
    const timeoutMs =
      opts.createTimeoutMs ??
      (options.preallocation === "falloc" || options.preallocation === "full"
        ? PREALLOCATED_CREATE_TIMEOUT_MS
        : undefined);

    return lock.run(id, async () => {
      await assertRootUsable();
      const rec = await readSidecar(id);
      if (rec) {
        const differs =
          rec.format !== spec.format ||
          (rec.sizeBytes !== spec.sizeBytes && rec.operationId !== spec.operationId);
        if (differs) {
          throw alreadyExists(
            `volume ${id} already exists in pool ${poolName} as ${describe(rec.format, rec.sizeBytes)} (operation ${rec.operationId}); this request asks for ${describe(spec.format, spec.sizeBytes)}`,
            { volumeId: id, poolName },
          );
        }
      }
      for (const f of FORMATS) {
        const p = volumePath(id, f);
        const kind = await kindOf(p);
        if (kind === "missing") continue;
        if (!rec || f !== spec.format || kind !== "file") {
          throw alreadyExists(
            `${p} already exists in pool ${poolName} without a matching Stowage ownership record; refusing to take it over (move it away, or import it)`,
            { volumeId: id, poolName, path: p },
          );
        }
      }

      if (rec && (await kindOf(finalPath)) === "file") {
        // Done before: a redelivery, or a crash after the rename but before the result went out.
        await removeIfExists(tmpPath);
        return { artifact: await inspect(id, rec), adopted: true };
      }

      await mkdir(metaDir, { recursive: true, mode: 0o700 });
      // A crashed attempt may have left a half-written temp image; qemu-img must start from nothing.
      await removeIfExists(tmpPath);
      const record: Sidecar = {
        volumeId: id,
        operationId: spec.operationId,
        format: spec.format,
        sizeBytes: spec.sizeBytes,
        createdAt: now().toISOString(),
      };
      await writeSidecar(record);
      try {
        await runner.run("qemu-img", argv, timeoutMs === undefined ? {} : { timeoutMs });
        await fsyncFile(tmpPath);
        // The image appears under its final name complete, or not at all.
        await rename(tmpPath, finalPath);
      } catch (e) {
        // Nothing of a failed attempt stays behind; a crash instead of an error is finished by the retry.
        await removeIfExists(tmpPath).catch(() => undefined);
        await removeIfExists(sidecarPath(id)).catch(() => undefined);
        throw e;
      }
      await fsyncDir(root);
      return { artifact: await inspect(id, record), adopted: false };
    });
  }

  async function deleteVolume(
    volumeId: string,
    _opts?: { operationId?: string },
  ): Promise<{ existed: boolean }> {
    assertVolumeId(volumeId);
    const id = volumeId;
    return lock.run(id, async () => {
      await assertRootUsable();
      const rec = await readSidecar(id);
      let existed = false;
      if (rec) {
        const p = volumePath(id, rec.format);
        const kind = await kindOf(p);
        if (kind === "other") {
          throw failedPrecondition(`${p} is not a regular file; refusing to delete it`, { path: p });
        }
        if (kind === "file") {
          await unlink(p);
          await fsyncDir(root);
          existed = true;
        }
      } else {
        for (const f of FORMATS) {
          const p = volumePath(id, f);
          if ((await kindOf(p)) !== "missing") {
            throw failedPrecondition(
              `${p} has no Stowage ownership record; refusing to delete a file that is not ours`,
              { path: p },
            );
          }
        }
      }
      for (const f of FORMATS) await removeIfExists(tempPath(id, f));
      // The record goes last: a crash before this line leaves a record without an image, which a retry
      // (of the delete or the create) handles, never an image without a record.
      if (rec) {
        await removeIfExists(sidecarPath(id));
        await fsyncDir(metaDir).catch(() => undefined);
      }
      return { existed };
    });
  }

  async function resizeVolume(
    volumeId: string,
    newSizeBytes: bigint,
    ropts: { allowShrink: boolean; operationId: string },
  ): Promise<VolumeArtifact> {
    assertVolumeId(volumeId);
    const id = volumeId;
    validateVolumeSize(newSizeBytes, "new size");
    assertOperationId(ropts.operationId);
    return lock.run(id, async () => {
      const rec = await findOwned(id);
      if (!rec) throw notFound(`volume ${id} does not exist in pool ${poolName}`, { volumeId: id, poolName });
      const current = await inspect(id, rec);
      // Already there: a redelivered resize converges.
      if (current.sizeBytes === newSizeBytes) return current;
      const shrink = newSizeBytes < current.sizeBytes;
      if (shrink && !ropts.allowShrink) {
        throw failedPrecondition(
          `shrinking volume ${id} from ${formatSize(current.sizeBytes)} to ${formatSize(newSizeBytes)} would discard the data past the new end; allow shrinking explicitly to do it`,
          { volumeId: id, currentBytes: current.sizeBytes.toString() },
        );
      }
      await runner.run("qemu-img", qemuImgResizeArgv(current.path, rec.format, newSizeBytes, { shrink }));
      return inspect(id, rec);
    });
  }

  async function info(volumeId: string): Promise<VolumeArtifact | undefined> {
    assertVolumeId(volumeId);
    const rec = await findOwned(volumeId);
    return rec ? inspect(volumeId, rec) : undefined;
  }

  async function list(): Promise<{ volumes: VolumeArtifact[]; foreign: string[] }> {
    await assertRootUsable();
    const entries = await readdir(root, { withFileTypes: true });
    const foreign: string[] = [];
    const owned: { id: string; rec: Sidecar }[] = [];
    for (const e of entries) {
      if (e.isDirectory()) continue; // .stowage, lost+found, ...: not volumes
      const m = OWNED_FILE.exec(e.name);
      let rec: Sidecar | undefined;
      if (m && e.isFile()) {
        // An unreadable record makes the file unaccounted for: report it rather than fail the inventory.
        rec = await readSidecar(m[1]!).catch(() => undefined);
      }
      if (m && rec && rec.format === m[2]) owned.push({ id: m[1]!, rec });
      else foreign.push(e.name);
    }
    const volumes = await mapLimit(owned, LIST_CONCURRENCY, async ({ id, rec }) => {
      try {
        return await inspect(id, rec);
      } catch (e) {
        // Deleted between readdir and info: it is simply gone.
        if ((await kindOf(volumePath(id, rec.format))) === "missing") return undefined;
        throw e;
      }
    });
    return {
      volumes: volumes.filter((v): v is VolumeArtifact => v !== undefined).sort(byId),
      foreign: foreign.sort(),
    };
  }

  async function capacity(): Promise<PoolCapacityReport> {
    await assertRootUsable();
    const s = await statfs(root, { bigint: true });
    const totalBytes = s.blocks * s.bsize;
    // bavail, not bfree: blocks reserved for root are not ours to promise.
    const freeBytes = s.bavail * s.bsize;
    const usedBytes = totalBytes - s.bfree * s.bsize;
    const { volumes } = await list();
    const provisionedBytes = volumes.reduce((sum, v) => sum + v.sizeBytes, 0n);
    return { totalBytes, usedBytes, freeBytes, provisionedBytes };
  }

  async function check(): Promise<{ healthy: boolean; message: string }> {
    const where = `dir pool ${poolName} at ${root}`;
    try {
      await assertRootUsable();
      await access(root, constants.W_OK | constants.X_OK);
    } catch (e) {
      const msg = e instanceof StowageError ? e.message : `${where} is not writable: ${(e as Error).message}`;
      return { healthy: false, message: msg };
    }
    if ((await kindOf(metaDir)) !== "missing") {
      try {
        if (!(await stat(metaDir)).isDirectory()) throw new Error("not a directory");
        await access(metaDir, constants.W_OK | constants.X_OK);
      } catch (e) {
        return { healthy: false, message: `${where}: ${metaDir} is not usable: ${(e as Error).message}` };
      }
    }
    try {
      const { stdout } = await runner.run("qemu-img", ["--version"], { timeoutMs: 10_000 });
      return { healthy: true, message: `${where} is usable (${stdout.split("\n")[0]?.trim()})` };
    } catch (e) {
      return { healthy: false, message: `${where}: ${(e as Error).message}` };
    }
  }

  return {
    kind: "dir",
    poolName,
    check,
    capacity,
    createVolume,
    deleteVolume,
    resizeVolume,
    info,
    list,
    // Snapshots and clones of dir pools arrive with the conformance work (issue 4).
    createSnapshot: notYet("createSnapshot"),
    listSnapshots: notYet("listSnapshots"),
    deleteSnapshot: notYet("deleteSnapshot"),
    revertSnapshot: notYet("revertSnapshot"),
    cloneVolume: notYet("cloneVolume"),
    flattenVolume: notYet("flattenVolume"),
  };
}

function isNoEnt(e: unknown): boolean {
  return (e as NodeJS.ErrnoException | undefined)?.code === "ENOENT";
}

async function removeIfExists(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (e) {
    if (!isNoEnt(e)) throw e;
  }
}

async function fsyncFile(path: string): Promise<void> {
  const fh = await open(path, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Makes a rename or unlink in `dir` durable (the entry, not just the data). */
async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function byId(a: VolumeArtifact, b: VolumeArtifact): number {
  return a.volumeId < b.volumeId ? -1 : a.volumeId > b.volumeId ? 1 : 0;
}

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

function notYet(what: string) {
  return async (): Promise<never> => {
    throw new StowageError("unimplemented", `dir pools do not support ${what} yet`);
  };
}
