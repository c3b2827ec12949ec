import { failedPrecondition, invalidArgument } from "@stowage/core";
import type { PathKind, PoolFs, PoolFsEntry } from "../dir/fs.js";
import {
  ACCESS3_DELETE,
  ACCESS3_EXTEND,
  ACCESS3_LOOKUP,
  ACCESS3_MODIFY,
  type Fattr3,
  isNfsStatus,
  NF3DIR,
  NF3REG,
  type Nfs3Client,
  NfsError,
} from "./nfs3.js";

/**
 * The pool's file operations (dir/fs.ts) on an NFS export, through the TypeScript NFSv3 client: paths are
 * the layout's (`root/...`, see index.ts), turned into names below the export's root (`rootUrl`).
 *
 * Durability: NFSv3 servers commit CREATE, MKDIR, REMOVE, RENAME and SETATTR to stable storage before they
 * answer (RFC 1813 §3.3), and records are written with FILE_SYNC, so "fsync of a directory" has nothing left
 * to do; "fsync of a file" is a COMMIT, which makes what qemu wrote UNSTABLE through libnfs durable.
 *
 * Directory handles are cached (`.stowage/` is looked up on nearly every call); a stale one (the directory
 * was removed and made again, by this host or another) is dropped and the call made once more.
 */
export function createNfsPoolFs(client: Nfs3Client, root: string, rootUrl: string): PoolFs {
  const dirs = new Map<string, Buffer>();

  function rel(path: string): string {
    if (path === root) return "";
    if (!path.startsWith(`${root}/`)) {
      throw invalidArgument(`${path} is not inside ${rootUrl}`);
    }
    const r = path.slice(root.length + 1);
    if (r.split("/").some((p) => p === "" || p === "." || p === "..")) {
      throw invalidArgument(`${path} is not a plain path inside ${rootUrl}`);
    }
    return r;
  }

  function split(path: string): { dir: string; name: string } {
    const r = rel(path);
    if (r === "") throw invalidArgument(`${rootUrl} is the export's root, not a file in it`);
    const i = r.lastIndexOf("/");
    return i < 0 ? { dir: "", name: r } : { dir: r.slice(0, i), name: r.slice(i + 1) };
  }

  function noEnt(what: string): NfsError {
    return new NfsError("not_found", `${what}: NFS3ERR_NOENT`, "NFS3ERR_NOENT");
  }

  async function dirHandle(dir: string): Promise<Buffer> {
    const cached = dirs.get(dir);
    if (cached) return cached;
    const found = await client.resolve(dir);
    if (!found) throw noEnt(`${rootUrl}/${dir}`);
    if (found.attr.type !== NF3DIR) {
      throw new NfsError("failed_precondition", `${rootUrl}/${dir}: NFS3ERR_NOTDIR`, "NFS3ERR_NOTDIR");
    }
    dirs.set(dir, found.fh);
    return found.fh;
  }

  /** Runs `fn` on the parent's handle; once more with fresh handles if one was stale. */
  async function inDir<T>(path: string, fn: (dir: Buffer, name: string) => Promise<T>): Promise<T> {
    const { dir, name } = split(path);
    try {
      return await fn(await dirHandle(dir), name);
    } catch (e) {
      if (!isNfsStatus(e, "NFS3ERR_STALE") && !isNfsStatus(e, "NFS3ERR_BADHANDLE")) throw e;
      dirs.clear();
      return fn(await dirHandle(dir), name);
    }
  }

  async function stat(path: string): Promise<{ fh: Buffer; attr: Fattr3 } | undefined> {
    if (rel(path) === "") {
      const fh = await client.mount();
      return { fh, attr: await client.getattr(fh) };
    }
    try {
      return await inDir(path, (dir, name) => client.lookup(dir, name));
    } catch (e) {
      if (isNfsStatus(e, "NFS3ERR_NOENT")) return undefined;
      throw e;
    }
  }

  async function mustStat(path: string): Promise<{ fh: Buffer; attr: Fattr3 }> {
    const s = await stat(path);
    if (!s) throw noEnt(`${rootUrl}/${rel(path)}`);
    return s;
  }

  const kindOfType = (t: number): PoolFsEntry["kind"] =>
    t === NF3REG ? "file" : t === NF3DIR ? "dir" : "other";

  return {
    async kindOf(path): Promise<PathKind> {
      const s = await stat(path);
      if (!s) return "missing";
      return s.attr.type === NF3REG ? "file" : "other";
    },
    isMissing: (e) => isNfsStatus(e, "NFS3ERR_NOENT"),
    async readText(path) {
      const s = await stat(path);
      if (!s) return undefined;
      return (await client.readAll(s.fh)).toString("utf8");
    },
    async writeDurable(path, body, mode) {
      await inDir(path, async (dir, name) => {
        const fh = await client.create(dir, name, mode, "unchecked");
        await client.setattr(fh, { size: 0n });
        // FILE_SYNC: on stable storage when WRITE answers.
        await client.write(fh, 0n, Buffer.from(body, "utf8"));
      });
    },
    async rename(from, to) {
      const a = split(from);
      const b = split(to);
      await inDir(from, async (fromDir) => client.rename(fromDir, a.name, await dirHandle(b.dir), b.name));
    },
    remove: (path) => inDir(path, (dir, name) => client.remove(dir, name)),
    async removeIfExists(path) {
      try {
        await inDir(path, (dir, name) => client.remove(dir, name));
      } catch (e) {
        if (!isNfsStatus(e, "NFS3ERR_NOENT")) throw e;
      }
    },
    async mkdir(path, mode) {
      try {
        await inDir(path, (dir, name) => client.mkdir(dir, name, mode));
        return true;
      } catch (e) {
        if (isNfsStatus(e, "NFS3ERR_EXIST")) return false;
        throw e;
      }
    },
    async chmod(path, mode) {
      await client.setattr((await mustStat(path)).fh, { mode });
    },
    async fsync(path) {
      const s = await mustStat(path);
      // Directory operations are synchronous in NFSv3: nothing to flush.
      if (s.attr.type === NF3REG) await client.commit(s.fh);
    },
    async fsyncFile(path) {
      const s = await mustStat(path);
      await client.commit(s.fh);
      return (await client.getattr(s.fh)).used;
    },
    allocated: async (path) => (await mustStat(path)).attr.used,
    async list(path) {
      const r = rel(path);
      let fh: Buffer;
      try {
        fh = await dirHandle(r);
      } catch (e) {
        if (!isNfsStatus(e, "NFS3ERR_STALE")) throw e;
        dirs.clear();
        fh = await dirHandle(r);
      }
      const entries = await client.readdir(fh);
      const out: PoolFsEntry[] = [];
      for (const e of entries) {
        const attr = e.attr ?? (await client.lookup(fh, e.name))?.attr;
        if (attr) out.push({ name: e.name, kind: kindOfType(attr.type) });
      }
      return out;
    },
    async statfs() {
      const s = await client.fsstat();
      return { totalBytes: s.totalBytes, usedBytes: s.totalBytes - s.freeBytes, freeBytes: s.availBytes };
    },
    isDirectory: async (path) => (await mustStat(path)).attr.type === NF3DIR,
    async assertWritableDir(path) {
      const s = await mustStat(path);
      const want = ACCESS3_LOOKUP | ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE;
      const got = await client.access(s.fh, want);
      if ((got & want) !== want) {
        throw failedPrecondition(
          `${rootUrl}/${rel(path)}: the NFS server does not let us create and remove files here`,
        );
      }
    },
    async openForWrite(path) {
      const { fh } = await mustStat(path);
      return {
        write: (data, length, position) => client.write(fh, BigInt(position), data.subarray(0, length)),
        truncate: (size) => client.setattr(fh, { size: BigInt(size) }),
        sync: () => client.commit(fh),
        close: async () => {},
      };
    },
  };
}
