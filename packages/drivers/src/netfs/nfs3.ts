import { hostname } from "node:os";
import { type ErrorCode, StowageError } from "@stowage/core";
import { type AuthSys, RpcConnection, RpcError } from "./rpc.js";
import { XdrError, XdrReader, XdrWriter } from "./xdr.js";

/**
 * A small NFSv3 client (RFC 1813) for the metadata a netfs pool keeps beside its images: PORTMAP GETPORT
 * (RFC 1833, version 2) finds the MOUNT and NFS ports, MOUNT3 MNT gives the export's root handle, and the NFS3
 * procedures below work on handles. Image data never goes through here: qemu reads and writes it with its own
 * `nfs://` driver (libnfs).
 *
 * Every call is bounded (`timeoutMs`); NFS3ERR_* statuses become NfsError, a StowageError with the code that
 * fits (NOENT: not_found, EXIST: already_exists, NOSPC: resource_exhausted, ...) and the status by name.
 * A broken connection is reopened by the next call (handles outlive connections); a call in flight when it
 * broke fails, and is not retried here: the driver's operations are idempotent, their retry converges.
 */

export const PMAP_PROG = 100000;
export const MOUNT_PROG = 100005;
export const NFS_PROG = 100003;
const PMAP_PORT = 111;
const IPPROTO_TCP = 6;

export const NF3REG = 1;
export const NF3DIR = 2;
export const NF3LNK = 5;
export const ACCESS3_LOOKUP = 0x02;
export const ACCESS3_MODIFY = 0x04;
export const ACCESS3_EXTEND = 0x08;
export const ACCESS3_DELETE = 0x10;

/** NFS3ERR_* names (RFC 1813 §2.6) and the error code each maps to. */
const NFS3_STATUS: Record<number, [string, ErrorCode]> = {
  1: ["NFS3ERR_PERM", "permission_denied"],
  2: ["NFS3ERR_NOENT", "not_found"],
  5: ["NFS3ERR_IO", "unavailable"],
  6: ["NFS3ERR_NXIO", "unavailable"],
  13: ["NFS3ERR_ACCES", "permission_denied"],
  17: ["NFS3ERR_EXIST", "already_exists"],
  18: ["NFS3ERR_XDEV", "failed_precondition"],
  19: ["NFS3ERR_NODEV", "failed_precondition"],
  20: ["NFS3ERR_NOTDIR", "failed_precondition"],
  21: ["NFS3ERR_ISDIR", "failed_precondition"],
  22: ["NFS3ERR_INVAL", "invalid_argument"],
  27: ["NFS3ERR_FBIG", "resource_exhausted"],
  28: ["NFS3ERR_NOSPC", "resource_exhausted"],
  30: ["NFS3ERR_ROFS", "failed_precondition"],
  31: ["NFS3ERR_MLINK", "failed_precondition"],
  63: ["NFS3ERR_NAMETOOLONG", "invalid_argument"],
  66: ["NFS3ERR_NOTEMPTY", "failed_precondition"],
  69: ["NFS3ERR_DQUOT", "resource_exhausted"],
  70: ["NFS3ERR_STALE", "unavailable"],
  71: ["NFS3ERR_REMOTE", "failed_precondition"],
  10001: ["NFS3ERR_BADHANDLE", "unavailable"],
  10002: ["NFS3ERR_NOT_SYNC", "aborted"],
  10003: ["NFS3ERR_BAD_COOKIE", "aborted"],
  10004: ["NFS3ERR_NOTSUPP", "failed_precondition"],
  10005: ["NFS3ERR_TOOSMALL", "internal"],
  10006: ["NFS3ERR_SERVERFAULT", "unavailable"],
  10007: ["NFS3ERR_BADTYPE", "invalid_argument"],
  10008: ["NFS3ERR_JUKEBOX", "unavailable"],
};

/** MNT3ERR_* (RFC 1813 §5.1.5). */
const MNT3_STATUS: Record<number, [string, ErrorCode]> = {
  1: ["MNT3ERR_PERM", "permission_denied"],
  2: ["MNT3ERR_NOENT", "not_found"],
  5: ["MNT3ERR_IO", "unavailable"],
  13: ["MNT3ERR_ACCES", "permission_denied"],
  20: ["MNT3ERR_NOTDIR", "failed_precondition"],
  22: ["MNT3ERR_INVAL", "invalid_argument"],
  63: ["MNT3ERR_NAMETOOLONG", "invalid_argument"],
  10004: ["MNT3ERR_NOTSUPP", "failed_precondition"],
  10006: ["MNT3ERR_SERVERFAULT", "unavailable"],
};

/** An NFS3 or MOUNT3 status other than OK, or an RPC failure, as a StowageError. */
export class NfsError extends StowageError {
  constructor(
    code: ErrorCode,
    message: string,
    /** NFS3ERR_NOENT, MNT3ERR_ACCES, ... or the RPC reason (TIMEOUT, CONNECTION, PROG_UNAVAIL...). */
    readonly status: string,
    details: Record<string, unknown> = {},
  ) {
    super(code, message, { ...details, nfsStatus: status });
  }
}

export function nfsStatusName(status: number): string {
  return NFS3_STATUS[status]?.[0] ?? `NFS3 status ${status}`;
}

export function nfsError(status: number, what: string): NfsError {
  const [name, code] = NFS3_STATUS[status] ?? [`NFS3 status ${status}`, "internal" as ErrorCode];
  return new NfsError(code, `${what}: ${name}`, name);
}

export function isNfsStatus(e: unknown, name: string): boolean {
  return e instanceof NfsError && e.status === name;
}

function rpcToNfsError(e: unknown, what: string): unknown {
  if (e instanceof RpcError) {
    const code: ErrorCode = e.reason === "TIMEOUT" ? "deadline_exceeded" : "unavailable";
    return new NfsError(code, `${what}: ${e.message}`, e.reason);
  }
  if (e instanceof XdrError) return new NfsError("unavailable", `${what}: ${e.message}`, "PROTOCOL");
  return e;
}

export interface Fattr3 {
  type: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  size: bigint;
  /** Bytes the file holds on the server's disk. */
  used: bigint;
  fileid: bigint;
  mtime: { seconds: number; nseconds: number };
}

export interface DirEntry {
  name: string;
  fileid: bigint;
  attr?: Fattr3;
  handle?: Buffer;
}

export interface FsStat {
  totalBytes: bigint;
  freeBytes: bigint;
  /** Free bytes available to this user (what we may promise). */
  availBytes: bigint;
}

export interface SetAttrs {
  mode?: number;
  size?: bigint;
}

function readFattr(r: XdrReader): Fattr3 {
  const type = r.u32();
  const mode = r.u32();
  const nlink = r.u32();
  const uid = r.u32();
  const gid = r.u32();
  const size = r.u64();
  const used = r.u64();
  r.u32(); // rdev
  r.u32();
  r.u64(); // fsid
  const fileid = r.u64();
  r.u32(); // atime
  r.u32();
  const mtime = { seconds: r.u32(), nseconds: r.u32() };
  r.u32(); // ctime
  r.u32();
  return { type, mode, nlink, uid, gid, size, used, fileid, mtime };
}

function readPostOpAttr(r: XdrReader): Fattr3 | undefined {
  return r.bool() ? readFattr(r) : undefined;
}

function skipWcc(r: XdrReader): void {
  if (r.bool()) {
    r.u64(); // size
    r.u32(); // mtime
    r.u32();
    r.u32(); // ctime
    r.u32();
  }
  readPostOpAttr(r);
}

function readPostOpFh(r: XdrReader): Buffer | undefined {
  return r.bool() ? Buffer.from(r.opaque(64)) : undefined;
}

function writeSattr(w: XdrWriter, a: SetAttrs): XdrWriter {
  if (a.mode !== undefined) w.bool(true).u32(a.mode);
  else w.bool(false);
  w.bool(false); // uid
  w.bool(false); // gid
  if (a.size !== undefined) w.bool(true).u64(a.size);
  else w.bool(false);
  w.u32(0); // atime: DONT_CHANGE
  w.u32(0); // mtime: DONT_CHANGE
  return w;
}

export interface Nfs3ClientOptions {
  host: string;
  /** The export's path as the server's MOUNT protocol knows it (e.g. "/export"). */
  exportPath: string;
  /** Ports; absent: asked of the portmapper (port 111). */
  nfsPort?: number;
  mountPort?: number;
  /** Bound on each call and each connect. Default 15 s. */
  timeoutMs?: number;
  /** AUTH_SYS identity. Default uid 0, gid 0 (what qemu and libnfs send when run as root). */
  uid?: number;
  gid?: number;
}

const NAME_MAX = 255;

/** The NFS3 procedures a netfs pool needs, on one export (see the file's comment). */
export class Nfs3Client {
  readonly host: string;
  readonly exportPath: string;
  private readonly timeoutMs: number;
  private readonly auth: AuthSys;
  private nfsPort: number | undefined;
  private mountPort: number | undefined;
  private conn: RpcConnection | undefined;
  private connecting: Promise<RpcConnection> | undefined;
  private root: Buffer | undefined;
  private writeMax = 64 * 1024;
  private readMax = 64 * 1024;

  constructor(opts: Nfs3ClientOptions) {
    this.host = opts.host;
    this.exportPath = opts.exportPath;
    this.timeoutMs = opts.timeoutMs ?? 15_000;
    this.nfsPort = opts.nfsPort;
    this.mountPort = opts.mountPort;
    this.auth = {
      stamp: (Date.now() / 1000) >>> 0,
      machineName: hostname().slice(0, NAME_MAX),
      uid: opts.uid ?? 0,
      gid: opts.gid ?? 0,
      gids: [opts.gid ?? 0],
    };
  }

  private get where(): string {
    return `nfs://${this.host}${this.exportPath}`;
  }

  /** One call on a short-lived connection (portmapper, MOUNT). */
  private async oneShot(port: number, prog: number, vers: number, proc: number, args: Buffer, auth: boolean) {
    const c = await RpcConnection.open({ host: this.host, port, connectTimeoutMs: this.timeoutMs });
    try {
      return await c.call({ prog, vers, proc, args, ...(auth ? { auth: this.auth } : {}) }, this.timeoutMs);
    } finally {
      c.close();
    }
  }

  /** PORTMAP v2 GETPORT for TCP; 0 means not registered. */
  async getPort(prog: number, vers: number): Promise<number> {
    const what = `${this.host}: portmapper GETPORT ${prog} v${vers}`;
    try {
      const args = new XdrWriter().u32(prog).u32(vers).u32(IPPROTO_TCP).u32(0).toBuffer();
      const port = new XdrReader(await this.oneShot(PMAP_PORT, PMAP_PROG, 2, 3, args, false)).u32();
      if (port === 0) {
        throw new NfsError(
          "unavailable",
          `${what}: program not registered (is the NFS server running with NFSv3?)`,
          "PROG_UNAVAIL",
        );
      }
      return port;
    } catch (e) {
      throw rpcToNfsError(e, what);
    }
  }

  /** MOUNT3 MNT of the export: its root file handle. */
  async mount(): Promise<Buffer> {
    if (this.root) return this.root;
    this.mountPort ??= await this.getPort(MOUNT_PROG, 3);
    const what = `${this.where}: MOUNT`;
    let res: Buffer;
    try {
      res = await this.oneShot(
        this.mountPort,
        MOUNT_PROG,
        3,
        1,
        new XdrWriter().string(this.exportPath, 1024).toBuffer(),
        true,
      );
    } catch (e) {
      throw rpcToNfsError(e, what);
    }
    const r = new XdrReader(res);
    const status = r.u32();
    if (status !== 0) {
      const [name, code] = MNT3_STATUS[status] ?? [`MNT3 status ${status}`, "internal" as ErrorCode];
      throw new NfsError(code, `${what}: ${name}`, name);
    }
    this.root = Buffer.from(r.opaque(64));
    return this.root;
  }

  private async connection(): Promise<RpcConnection> {
    if (this.conn?.usable) return this.conn;
    this.connecting ??= (async () => {
      try {
        this.nfsPort ??= await this.getPort(NFS_PROG, 3);
        const c = await RpcConnection.open({
          host: this.host,
          port: this.nfsPort,
          connectTimeoutMs: this.timeoutMs,
        });
        this.conn = c;
        return c;
      } catch (e) {
        throw rpcToNfsError(e, `${this.where}: connect`);
      } finally {
        this.connecting = undefined;
      }
    })();
    return this.connecting;
  }

  /** An NFS3 call: its reader positioned after the status, or an NfsError for a status other than OK. */
  private async nfs(
    proc: number,
    args: Buffer,
    what: string,
    onError?: (r: XdrReader) => void,
  ): Promise<XdrReader> {
    let res: Buffer;
    try {
      const c = await this.connection();
      res = await c.call({ prog: NFS_PROG, vers: 3, proc, args, auth: this.auth }, this.timeoutMs);
    } catch (e) {
      throw rpcToNfsError(e, `${this.where}: ${what}`);
    }
    const r = new XdrReader(res);
    const status = r.u32();
    if (status !== 0) {
      onError?.(r);
      throw nfsError(status, `${this.where}: ${what}`);
    }
    return r;
  }

  private static name(name: string): string {
    if (
      name === "" ||
      name === "." ||
      name === ".." ||
      name.includes("/") ||
      Buffer.byteLength(name) > NAME_MAX
    ) {
      throw new NfsError(
        "invalid_argument",
        `bad NFS file name ${JSON.stringify(name.slice(0, 80))}`,
        "NFS3ERR_INVAL",
      );
    }
    return name;
  }

  private static dirop(w: XdrWriter, dir: Buffer, name: string): XdrWriter {
    return w.opaque(dir, 64).string(Nfs3Client.name(name), NAME_MAX);
  }

  /** FSINFO: the server's preferred transfer sizes (capped at 1 MiB). */
  async fsinfo(): Promise<void> {
    const root = await this.mount();
    const r = await this.nfs(19, new XdrWriter().opaque(root, 64).toBuffer(), "FSINFO");
    readPostOpAttr(r);
    const rtmax = r.u32();
    const rtpref = r.u32();
    r.u32();
    const wtmax = r.u32();
    const wtpref = r.u32();
    const cap = 1024 * 1024;
    this.readMax = Math.max(4096, Math.min(rtpref || rtmax, rtmax || cap, cap));
    this.writeMax = Math.max(4096, Math.min(wtpref || wtmax, wtmax || cap, cap));
  }

  async getattr(fh: Buffer): Promise<Fattr3> {
    const r = await this.nfs(1, new XdrWriter().opaque(fh, 64).toBuffer(), "GETATTR");
    return readFattr(r);
  }

  /** LOOKUP: the handle and attributes of `name` in `dir`, or undefined when it does not exist. */
  async lookup(dir: Buffer, name: string): Promise<{ fh: Buffer; attr: Fattr3 } | undefined> {
    try {
      const r = await this.nfs(3, Nfs3Client.dirop(new XdrWriter(), dir, name).toBuffer(), `LOOKUP ${name}`);
      const fh = Buffer.from(r.opaque(64));
      const attr = readPostOpAttr(r) ?? (await this.getattr(fh));
      return { fh, attr };
    } catch (e) {
      if (isNfsStatus(e, "NFS3ERR_NOENT")) return undefined;
      throw e;
    }
  }

  /** The handle of a path below the export's root ("a/b"; "" is the root), or undefined if a part is missing. */
  async resolve(path: string): Promise<{ fh: Buffer; attr: Fattr3 } | undefined> {
    let fh = await this.mount();
    const parts = path.split("/").filter((p) => p !== "");
    if (parts.length === 0) return { fh, attr: await this.getattr(fh) };
    let found: { fh: Buffer; attr: Fattr3 } | undefined;
    for (const p of parts) {
      found = await this.lookup(fh, p);
      if (!found) return undefined;
      fh = found.fh;
    }
    return found;
  }

  /**
   * CREATE: GUARDED fails with NFS3ERR_EXIST when the name exists, UNCHECKED truncates nothing and
   * answers the existing file (sattr3 size not set).
   */
  async create(dir: Buffer, name: string, mode: number, how: "guarded" | "unchecked"): Promise<Buffer> {
    const w = Nfs3Client.dirop(new XdrWriter(), dir, name).u32(how === "guarded" ? 1 : 0);
    writeSattr(w, { mode });
    const r = await this.nfs(8, w.toBuffer(), `CREATE ${name}`);
    const fh = readPostOpFh(r);
    if (fh) return fh;
    const found = await this.lookup(dir, name);
    if (!found)
      throw new NfsError(
        "unavailable",
        `${this.where}: CREATE ${name} answered no handle, and LOOKUP finds none`,
        "NFS3ERR_NOENT",
      );
    return found.fh;
  }

  async mkdir(dir: Buffer, name: string, mode: number): Promise<Buffer> {
    const w = Nfs3Client.dirop(new XdrWriter(), dir, name);
    writeSattr(w, { mode });
    const r = await this.nfs(9, w.toBuffer(), `MKDIR ${name}`);
    const fh = readPostOpFh(r);
    if (fh) return fh;
    const found = await this.lookup(dir, name);
    if (!found)
      throw new NfsError("unavailable", `${this.where}: MKDIR ${name} answered no handle`, "NFS3ERR_NOENT");
    return found.fh;
  }

  /** WRITE with FILE_SYNC (data and metadata on stable storage before the reply), in chunks the server takes. */
  async write(fh: Buffer, offset: bigint, data: Buffer): Promise<void> {
    let pos = 0;
    do {
      const n = Math.min(this.writeMax, data.length - pos);
      const chunk = data.subarray(pos, pos + n);
      const w = new XdrWriter()
        .opaque(fh, 64)
        .u64(offset + BigInt(pos))
        .u32(n)
        .u32(2)
        .opaque(chunk);
      const r = await this.nfs(7, w.toBuffer(), "WRITE");
      skipWcc(r);
      const count = r.u32();
      if (count === 0 && n > 0)
        throw new NfsError("unavailable", `${this.where}: WRITE wrote nothing`, "NFS3ERR_IO");
      pos += count;
    } while (pos < data.length);
  }

  /** The whole file (small files only: records). */
  async readAll(fh: Buffer, maxBytes = 16 * 1024 * 1024): Promise<Buffer> {
    const parts: Buffer[] = [];
    let offset = 0n;
    let total = 0;
    for (;;) {
      const w = new XdrWriter().opaque(fh, 64).u64(offset).u32(this.readMax);
      const r = await this.nfs(6, w.toBuffer(), "READ");
      readPostOpAttr(r);
      r.u32(); // count
      const eof = r.bool();
      const data = Buffer.from(r.opaque());
      parts.push(data);
      total += data.length;
      if (total > maxBytes)
        throw new NfsError(
          "failed_precondition",
          `${this.where}: file larger than ${maxBytes} bytes`,
          "NFS3ERR_FBIG",
        );
      offset += BigInt(data.length);
      if (eof || data.length === 0) break;
    }
    return Buffer.concat(parts, total);
  }

  async setattr(fh: Buffer, a: SetAttrs): Promise<void> {
    const w = writeSattr(new XdrWriter().opaque(fh, 64), a).bool(false);
    const r = await this.nfs(2, w.toBuffer(), "SETATTR");
    skipWcc(r);
  }

  async remove(dir: Buffer, name: string): Promise<void> {
    const r = await this.nfs(12, Nfs3Client.dirop(new XdrWriter(), dir, name).toBuffer(), `REMOVE ${name}`);
    skipWcc(r);
  }

  async rmdir(dir: Buffer, name: string): Promise<void> {
    const r = await this.nfs(13, Nfs3Client.dirop(new XdrWriter(), dir, name).toBuffer(), `RMDIR ${name}`);
    skipWcc(r);
  }

  /** RENAME: atomic on the server, replacing `toName` if it exists. */
  async rename(fromDir: Buffer, fromName: string, toDir: Buffer, toName: string): Promise<void> {
    const w = Nfs3Client.dirop(new XdrWriter(), fromDir, fromName);
    Nfs3Client.dirop(w, toDir, toName);
    const r = await this.nfs(14, w.toBuffer(), `RENAME ${fromName} ${toName}`);
    skipWcc(r);
    skipWcc(r);
  }

  /** READDIRPLUS, every page: the entries (without . and ..), each with its attributes and handle when the server sends them. */
  async readdir(dir: Buffer): Promise<DirEntry[]> {
    const out: DirEntry[] = [];
    let cookie = 0n;
    let verf: Buffer = Buffer.alloc(8);
    for (let page = 0; page < 100_000; page++) {
      const w = new XdrWriter()
        .opaque(dir, 64)
        .u64(cookie)
        .fixed(verf, 8)
        .u32(32 * 1024)
        .u32(128 * 1024);
      const r = await this.nfs(17, w.toBuffer(), "READDIRPLUS", (er) => readPostOpAttr(er));
      readPostOpAttr(r);
      verf = Buffer.from(r.fixed(8));
      let last = cookie;
      while (r.bool()) {
        const fileid = r.u64();
        const name = r.string(NAME_MAX);
        last = r.u64();
        const attr = readPostOpAttr(r);
        const handle = readPostOpFh(r);
        if (name === "." || name === "..") continue;
        out.push({ name, fileid, ...(attr ? { attr } : {}), ...(handle ? { handle } : {}) });
      }
      const eof = r.bool();
      if (eof) return out;
      if (last === cookie)
        throw new NfsError("unavailable", `${this.where}: READDIRPLUS made no progress`, "PROTOCOL");
      cookie = last;
    }
    throw new NfsError("unavailable", `${this.where}: READDIRPLUS did not end`, "PROTOCOL");
  }

  /** COMMIT of everything written UNSTABLE (by qemu through libnfs) to stable storage. */
  async commit(fh: Buffer): Promise<void> {
    const r = await this.nfs(21, new XdrWriter().opaque(fh, 64).u64(0n).u32(0).toBuffer(), "COMMIT");
    skipWcc(r);
  }

  /** ACCESS: which of `bits` (ACCESS3_* of RFC 1813 §3.3.4) the server grants us on `fh`. */
  async access(fh: Buffer, bits: number): Promise<number> {
    const r = await this.nfs(4, new XdrWriter().opaque(fh, 64).u32(bits).toBuffer(), "ACCESS");
    readPostOpAttr(r);
    return r.u32();
  }

  async fsstat(): Promise<FsStat> {
    const root = await this.mount();
    const r = await this.nfs(18, new XdrWriter().opaque(root, 64).toBuffer(), "FSSTAT");
    readPostOpAttr(r);
    const totalBytes = r.u64();
    const freeBytes = r.u64();
    const availBytes = r.u64();
    return { totalBytes, freeBytes, availBytes };
  }

  close(): void {
    this.conn?.close();
    this.conn = undefined;
  }
}
