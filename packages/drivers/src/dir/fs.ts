import { constants } from "node:fs";
import {
  access,
  chmod,
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

/**
 * The file operations a file-based pool (dir, netfs) does on its own files, so the same layout, records and
 * ownership rules run on a local directory (LocalPoolFs, node:fs) and on an NFS export reached without a
 * kernel client (netfs/store.ts). Paths are what the pool's layout hands out: the very strings given to
 * qemu-img (an absolute path for dir, an `nfs://` URL for netfs).
 */
export type PathKind = "missing" | "file" | "other";

export interface PoolFsEntry {
  name: string;
  kind: "file" | "dir" | "other";
}

/** A file opened for writing in place (wipes). */
export interface PoolFsHandle {
  write(data: Buffer, length: number, position: number): Promise<void>;
  truncate(size: number): Promise<void>;
  sync(): Promise<void>;
  close(): Promise<void>;
}

export interface PoolFs {
  /** What lies under `path`, not following symlinks (a symlink under a volume's name is not a volume we made). */
  kindOf(path: string): Promise<PathKind>;
  /** Whether an error says "no such file or directory". */
  isMissing(e: unknown): boolean;
  /** A small file's text, or undefined when it does not exist. */
  readText(path: string): Promise<string | undefined>;
  /** Creates or replaces `path` with `body` (mode for a new file), durable when it resolves. */
  writeDurable(path: string, body: string, mode: number): Promise<void>;
  /** Replaces `to` atomically. */
  rename(from: string, to: string): Promise<void>;
  /** Fails when missing. */
  remove(path: string): Promise<void>;
  removeIfExists(path: string): Promise<void>;
  /** Makes the directory if missing (its parent must exist); true when this call made it. */
  mkdir(path: string, mode: number): Promise<boolean>;
  chmod(path: string, mode: number): Promise<void>;
  /** Makes a file's data durable, or (for a directory) a rename or unlink in it. */
  fsync(path: string): Promise<void>;
  /** fsync of a file that also answers how many bytes it holds on disk. */
  fsyncFile(path: string): Promise<bigint>;
  /** Bytes a file holds on disk (not following symlinks); fails when missing. */
  allocated(path: string): Promise<bigint>;
  list(dir: string): Promise<PoolFsEntry[]>;
  /** The file system holding `path`: total, used, and free bytes we may promise. */
  statfs(path: string): Promise<{ totalBytes: bigint; usedBytes: bigint; freeBytes: bigint }>;
  /** Whether `path` is a directory (following symlinks); fails when missing. */
  isDirectory(path: string): Promise<boolean>;
  /** Fails unless this process may create and remove entries in the directory. */
  assertWritableDir(path: string): Promise<void>;
  openForWrite(path: string): Promise<PoolFsHandle>;
}

export function isNoEnt(e: unknown): boolean {
  return (e as NodeJS.ErrnoException | undefined)?.code === "ENOENT";
}

/** Bytes a file holds on disk: st_blocks is in 512-byte units whatever the filesystem's block size. */
export function allocatedOf(st: { blocks: bigint }): bigint {
  return st.blocks * 512n;
}

/** node:fs on a local directory. */
export const localPoolFs: PoolFs = {
  async kindOf(path) {
    try {
      return (await lstat(path)).isFile() ? "file" : "other";
    } catch (e) {
      if (isNoEnt(e)) return "missing";
      throw e;
    }
  },
  isMissing: isNoEnt,
  async readText(path) {
    try {
      return await readFile(path, "utf8");
    } catch (e) {
      if (isNoEnt(e)) return undefined;
      throw e;
    }
  },
  async writeDurable(path, body, mode) {
    const fh = await open(path, "w", mode);
    try {
      await fh.writeFile(body, "utf8");
      await fh.sync();
    } finally {
      await fh.close();
    }
  },
  rename: (from, to) => rename(from, to),
  remove: (path) => unlink(path),
  async removeIfExists(path) {
    try {
      await unlink(path);
    } catch (e) {
      if (!isNoEnt(e)) throw e;
    }
  },
  async mkdir(path, mode) {
    return (await mkdir(path, { recursive: true, mode })) !== undefined;
  },
  chmod: (path, mode) => chmod(path, mode),
  async fsync(path) {
    const fh = await open(path, "r");
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  },
  async fsyncFile(path) {
    const fh = await open(path, "r");
    try {
      await fh.sync();
      return allocatedOf(await fh.stat({ bigint: true }));
    } finally {
      await fh.close();
    }
  },
  allocated: async (path) => allocatedOf(await lstat(path, { bigint: true })),
  async list(dir) {
    return (await readdir(dir, { withFileTypes: true })).map((e) => ({
      name: e.name,
      kind: e.isDirectory() ? "dir" : e.isFile() ? "file" : "other",
    }));
  },
  async statfs(path) {
    const s = await statfs(path, { bigint: true });
    const totalBytes = s.blocks * s.bsize;
    // bavail, not bfree: blocks reserved for root are not ours to promise.
    return { totalBytes, usedBytes: totalBytes - s.bfree * s.bsize, freeBytes: s.bavail * s.bsize };
  },
  isDirectory: async (path) => (await stat(path)).isDirectory(),
  assertWritableDir: (path) => access(path, constants.W_OK | constants.X_OK),
  async openForWrite(path) {
    const fh = await open(path, "r+");
    return {
      write: async (data, length, position) => void (await fh.write(data, 0, length, position)),
      truncate: (size) => fh.truncate(size),
      sync: () => fh.sync(),
      close: () => fh.close(),
    };
  },
};
