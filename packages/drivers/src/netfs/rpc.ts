import { connect, type Socket } from "node:net";
import { XdrError, XdrReader, XdrWriter } from "./xdr.js";

/**
 * ONC RPC version 2 (RFC 5531) over TCP: calls with AUTH_SYS or AUTH_NONE credentials, record marking
 * (RFC 5531 §11: a 4-byte header per fragment, the high bit on the last one), replies matched by xid.
 */

export const AUTH_NONE = 0;
export const AUTH_SYS = 1;
const CALL = 0;
const REPLY = 1;
const MSG_ACCEPTED = 0;
const MSG_DENIED = 1;
const LAST_FRAGMENT = 0x8000_0000;
/** A reply larger than this is refused (the largest we ask for is a 1 MiB READ plus its header). */
export const MAX_RECORD_BYTES = 4 * 1024 * 1024;

const ACCEPT_STAT = [
  "SUCCESS",
  "PROG_UNAVAIL",
  "PROG_MISMATCH",
  "PROC_UNAVAIL",
  "GARBAGE_ARGS",
  "SYSTEM_ERR",
];

export interface AuthSys {
  stamp: number;
  machineName: string;
  uid: number;
  gid: number;
  gids: number[];
}

export interface RpcCall {
  xid: number;
  prog: number;
  vers: number;
  proc: number;
  /** AUTH_SYS credentials; absent: AUTH_NONE. */
  auth?: AuthSys;
  /** The procedure's XDR-encoded arguments. */
  args: Buffer;
}

/** Why a call was not answered with results: the server's words, as RFC 5531 names them. */
export class RpcError extends Error {
  override readonly name = "RpcError";
  constructor(
    message: string,
    /** PROG_UNAVAIL, PROG_MISMATCH, PROC_UNAVAIL, GARBAGE_ARGS, SYSTEM_ERR, RPC_MISMATCH, AUTH_ERROR, TIMEOUT, CONNECTION, PROTOCOL. */
    readonly reason: string,
  ) {
    super(message);
  }
}

export function encodeAuthSys(a: AuthSys): Buffer {
  const w = new XdrWriter().u32(a.stamp).string(a.machineName, 255).u32(a.uid).u32(a.gid);
  if (a.gids.length > 16) throw new XdrError("AUTH_SYS carries at most 16 groups");
  w.u32(a.gids.length);
  for (const g of a.gids) w.u32(g);
  return w.toBuffer();
}

/** A call message (without record marking). */
export function encodeCall(c: RpcCall): Buffer {
  const w = new XdrWriter().u32(c.xid).u32(CALL).u32(2).u32(c.prog).u32(c.vers).u32(c.proc);
  if (c.auth) w.u32(AUTH_SYS).opaque(encodeAuthSys(c.auth), 400);
  else w.u32(AUTH_NONE).opaque(Buffer.alloc(0));
  // Verifier: AUTH_NONE.
  w.u32(AUTH_NONE).opaque(Buffer.alloc(0));
  return Buffer.concat([w.toBuffer(), c.args]);
}

/** A reply message: its xid, and the results of a successful call or the error saying why there are none. */
export function decodeReply(msg: Buffer): { xid: number; results?: Buffer; error?: RpcError } {
  const r = new XdrReader(msg);
  const xid = r.u32();
  const type = r.u32();
  if (type !== REPLY) throw new XdrError(`RPC message ${xid} is not a reply (type ${type})`);
  const stat = r.u32();
  if (stat === MSG_ACCEPTED) {
    r.u32(); // verifier flavor
    r.opaque(400);
    const accept = r.u32();
    if (accept === 0) return { xid, results: r.rest() };
    const name = ACCEPT_STAT[accept] ?? `accept_stat ${accept}`;
    let detail = "";
    if (accept === 2) detail = ` (server supports versions ${r.u32()}-${r.u32()})`;
    return { xid, error: new RpcError(`RPC call refused: ${name}${detail}`, name) };
  }
  if (stat === MSG_DENIED) {
    const reject = r.u32();
    if (reject === 0) {
      return {
        xid,
        error: new RpcError(`RPC version mismatch (server: ${r.u32()}-${r.u32()})`, "RPC_MISMATCH"),
      };
    }
    const auth = r.u32();
    return { xid, error: new RpcError(`RPC authentication refused (auth_stat ${auth})`, "AUTH_ERROR") };
  }
  throw new XdrError(`RPC reply ${xid} has a bad reply_stat ${stat}`);
}

/** One record as one last fragment. */
export function frameRecord(msg: Buffer): Buffer {
  if (msg.length >= LAST_FRAGMENT) throw new XdrError("record too large");
  const h = Buffer.allocUnsafe(4);
  h.writeUInt32BE((LAST_FRAGMENT | msg.length) >>> 0, 0);
  return Buffer.concat([h, msg]);
}

/**
 * Reassembles records from a TCP byte stream: feed it chunks as they arrive, it returns the records they
 * complete (fragments joined). A record over `maxRecordBytes` is a protocol error.
 */
export class RecordDecoder {
  private buf: Buffer = Buffer.alloc(0);
  private fragments: Buffer[] = [];
  private recordBytes = 0;

  constructor(private readonly maxRecordBytes = MAX_RECORD_BYTES) {}

  push(chunk: Buffer): Buffer[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: Buffer[] = [];
    for (;;) {
      if (this.buf.length < 4) break;
      const h = this.buf.readUInt32BE(0);
      const len = h & 0x7fff_ffff;
      if (this.recordBytes + len > this.maxRecordBytes) {
        throw new XdrError(`RPC record of more than ${this.maxRecordBytes} bytes`);
      }
      if (this.buf.length < 4 + len) break;
      this.fragments.push(this.buf.subarray(4, 4 + len));
      this.recordBytes += len;
      this.buf = this.buf.subarray(4 + len);
      if (h & LAST_FRAGMENT) {
        out.push(this.fragments.length === 1 ? this.fragments[0]! : Buffer.concat(this.fragments));
        this.fragments = [];
        this.recordBytes = 0;
      }
    }
    return out;
  }
}

interface Pending {
  resolve(results: Buffer): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

export interface RpcConnectionOptions {
  host: string;
  port: number;
  /** Bound on the TCP connect. */
  connectTimeoutMs: number;
}

/**
 * One TCP connection to one RPC server, calls multiplexed on it by xid. A call that gets no reply within its
 * timeout fails with reason TIMEOUT (a late reply is dropped); a closed or broken connection fails every
 * call in flight with reason CONNECTION, and the connection is not used again.
 */
export class RpcConnection {
  private nextXid = (Math.random() * 0x7fff_ffff) >>> 0;
  private pending = new Map<number, Pending>();
  private closedWith: Error | undefined;
  private readonly decoder = new RecordDecoder();

  private constructor(
    private readonly socket: Socket,
    readonly where: string,
  ) {
    socket.on("data", (chunk: Buffer) => {
      let records: Buffer[];
      try {
        records = this.decoder.push(chunk);
      } catch (e) {
        this.fail(new RpcError(`${where}: ${(e as Error).message}`, "PROTOCOL"));
        return;
      }
      for (const rec of records) this.onRecord(rec);
    });
    socket.on("error", (e) => this.fail(new RpcError(`${where}: ${e.message}`, "CONNECTION")));
    socket.on("close", () => this.fail(new RpcError(`${where}: connection closed`, "CONNECTION")));
  }

  static open(opts: RpcConnectionOptions): Promise<RpcConnection> {
    const where = `${opts.host}:${opts.port}`;
    return new Promise((resolve, reject) => {
      const socket = connect({ host: opts.host, port: opts.port });
      socket.setNoDelay(true);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new RpcError(`${where}: no TCP connection within ${opts.connectTimeoutMs} ms`, "TIMEOUT"));
      }, opts.connectTimeoutMs);
      const onError = (e: Error) => {
        clearTimeout(timer);
        reject(new RpcError(`${where}: ${e.message}`, "CONNECTION"));
      };
      socket.once("error", onError);
      socket.once("connect", () => {
        clearTimeout(timer);
        socket.off("error", onError);
        resolve(new RpcConnection(socket, where));
      });
    });
  }

  get usable(): boolean {
    return this.closedWith === undefined;
  }

  private onRecord(rec: Buffer): void {
    let reply: ReturnType<typeof decodeReply>;
    try {
      reply = decodeReply(rec);
    } catch (e) {
      this.fail(new RpcError(`${this.where}: ${(e as Error).message}`, "PROTOCOL"));
      return;
    }
    const p = this.pending.get(reply.xid);
    if (!p) return; // a reply to a call that timed out
    this.pending.delete(reply.xid);
    clearTimeout(p.timer);
    if (reply.error) p.reject(reply.error);
    else p.resolve(reply.results ?? Buffer.alloc(0));
  }

  private fail(e: Error): void {
    if (!this.closedWith) this.closedWith = e;
    for (const [xid, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(xid);
      p.reject(e);
    }
    this.socket.destroy();
  }

  call(c: Omit<RpcCall, "xid">, timeoutMs: number): Promise<Buffer> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    this.nextXid = (this.nextXid + 1) >>> 0;
    const xid = this.nextXid;
    const msg = frameRecord(encodeCall({ ...c, xid }));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(xid);
        reject(
          new RpcError(
            `${this.where}: no reply to RPC program ${c.prog} version ${c.vers} procedure ${c.proc} within ${timeoutMs} ms`,
            "TIMEOUT",
          ),
        );
      }, timeoutMs);
      this.pending.set(xid, { resolve, reject, timer });
      this.socket.write(msg);
    });
  }

  close(): void {
    this.fail(new RpcError(`${this.where}: connection closed by the client`, "CONNECTION"));
  }
}
