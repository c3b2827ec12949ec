/**
 * XDR (RFC 4506), the subset ONC RPC, PORTMAP, MOUNT3 and NFS3 use: 32-bit and 64-bit unsigned integers,
 * booleans, fixed and variable-length opaque data and strings, all big-endian and padded to 4 bytes.
 */

const MAX_U32 = 0xffff_ffff;
const MAX_U64 = (1n << 64n) - 1n;

/** Thrown when a message is shorter than what it announces, or a value is out of range: a protocol error. */
export class XdrError extends Error {
  override readonly name = "XdrError";
}

export class XdrWriter {
  private chunks: Buffer[] = [];
  private length = 0;

  private push(b: Buffer): this {
    this.chunks.push(b);
    this.length += b.length;
    return this;
  }

  u32(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > MAX_U32) throw new XdrError(`u32 out of range: ${v}`);
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32BE(v, 0);
    return this.push(b);
  }

  u64(v: bigint): this {
    if (v < 0n || v > MAX_U64) throw new XdrError(`u64 out of range: ${v}`);
    const b = Buffer.allocUnsafe(8);
    b.writeBigUInt64BE(v, 0);
    return this.push(b);
  }

  bool(v: boolean): this {
    return this.u32(v ? 1 : 0);
  }

  /** Fixed-length opaque data: the bytes and their padding, no length. */
  fixed(data: Uint8Array, size: number): this {
    if (data.length !== size) throw new XdrError(`fixed opaque of ${data.length} bytes, expected ${size}`);
    this.push(Buffer.from(data));
    return this.pad(size);
  }

  /** Variable-length opaque data: its length, the bytes, their padding. */
  opaque(data: Uint8Array, max = MAX_U32): this {
    if (data.length > max) throw new XdrError(`opaque of ${data.length} bytes, at most ${max} allowed`);
    this.u32(data.length);
    this.push(Buffer.from(data));
    return this.pad(data.length);
  }

  string(s: string, max = MAX_U32): this {
    return this.opaque(Buffer.from(s, "utf8"), max);
  }

  private pad(n: number): this {
    const p = (4 - (n % 4)) % 4;
    return p === 0 ? this : this.push(Buffer.alloc(p));
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.chunks, this.length);
  }
}

export class XdrReader {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}

  private need(n: number): void {
    if (this.pos + n > this.buf.length) {
      throw new XdrError(`truncated XDR data: need ${n} bytes at offset ${this.pos} of ${this.buf.length}`);
    }
  }

  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  u64(): bigint {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  bool(): boolean {
    const v = this.u32();
    if (v > 1) throw new XdrError(`bad XDR boolean ${v}`);
    return v === 1;
  }

  fixed(size: number): Buffer {
    this.need(size);
    const b = this.buf.subarray(this.pos, this.pos + size);
    this.pos += size;
    this.skipPad(size);
    return b;
  }

  opaque(max = MAX_U32): Buffer {
    const n = this.u32();
    if (n > max) throw new XdrError(`opaque of ${n} bytes, at most ${max} allowed`);
    return this.fixed(n);
  }

  string(max = MAX_U32): string {
    return this.opaque(max).toString("utf8");
  }

  private skipPad(n: number): void {
    const p = (4 - (n % 4)) % 4;
    this.need(p);
    this.pos += p;
  }

  /** Bytes not read yet. */
  get remaining(): number {
    return this.buf.length - this.pos;
  }

  /** The unread rest (e.g. an RPC reply's results). */
  rest(): Buffer {
    const b = this.buf.subarray(this.pos);
    this.pos = this.buf.length;
    return b;
  }
}
