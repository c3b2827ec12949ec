import { describe, expect, it } from "vitest";
import { decodeReply, encodeAuthSys, encodeCall, frameRecord, RecordDecoder } from "./rpc.js";
import { XdrError, XdrReader, XdrWriter } from "./xdr.js";

// Pure logic: XDR encoding and RPC framing, byte for byte against RFC 4506 / RFC 5531.

describe("XDR", () => {
  it("encodes big-endian, pads opaque data and strings to 4 bytes, and reads back what it wrote", () => {
    const b = new XdrWriter()
      .u32(1)
      .u64(0x0102030405060708n)
      .bool(true)
      .string("abcde")
      .opaque(Buffer.from([9]))
      .toBuffer();
    expect(b.toString("hex")).toBe(
      [
        "00000001",
        "0102030405060708",
        "00000001",
        "00000005",
        "6162636465000000",
        "00000001",
        "09000000",
      ].join(""),
    );
    const r = new XdrReader(b);
    expect(r.u32()).toBe(1);
    expect(r.u64()).toBe(0x0102030405060708n);
    expect(r.bool()).toBe(true);
    expect(r.string()).toBe("abcde");
    expect([...r.opaque()]).toEqual([9]);
    expect(r.remaining).toBe(0);
  });

  it("refuses truncated data, out-of-range values, bad booleans and oversized opaques", () => {
    expect(() => new XdrReader(Buffer.from([0, 0, 0])).u32()).toThrow(XdrError);
    expect(() => new XdrReader(Buffer.from([0, 0, 0, 8, 1, 2])).opaque()).toThrow(/truncated/);
    expect(() => new XdrReader(Buffer.from([0, 0, 0, 2])).bool()).toThrow(/boolean/);
    expect(() => new XdrReader(Buffer.from([0, 0, 0, 65])).opaque(64)).toThrow(/at most 64/);
    expect(() => new XdrWriter().u32(-1)).toThrow(XdrError);
    expect(() => new XdrWriter().u32(2 ** 32)).toThrow(XdrError);
    expect(() => new XdrWriter().u64(-1n)).toThrow(XdrError);
    expect(() => new XdrWriter().opaque(Buffer.alloc(65), 64)).toThrow(XdrError);
  });
});

describe("ONC RPC messages", () => {
  it("encodes a CALL with AUTH_SYS credentials and an AUTH_NONE verifier", () => {
    const auth = { stamp: 7, machineName: "h1", uid: 0, gid: 0, gids: [0] };
    const msg = encodeCall({
      xid: 0x11223344,
      prog: 100003,
      vers: 3,
      proc: 1,
      auth,
      args: Buffer.from([0xaa, 0xbb, 0xcc, 0xdd]),
    });
    const r = new XdrReader(msg);
    expect(r.u32()).toBe(0x11223344); // xid
    expect(r.u32()).toBe(0); // CALL
    expect(r.u32()).toBe(2); // RPC version
    expect([r.u32(), r.u32(), r.u32()]).toEqual([100003, 3, 1]);
    expect(r.u32()).toBe(1); // AUTH_SYS
    const cred = r.opaque();
    expect(cred.equals(encodeAuthSys(auth))).toBe(true);
    const c = new XdrReader(cred);
    expect([c.u32(), c.string(), c.u32(), c.u32(), c.u32(), c.u32()]).toEqual([7, "h1", 0, 0, 1, 0]);
    expect([r.u32(), r.u32()]).toEqual([0, 0]); // verifier AUTH_NONE, empty
    expect(r.rest().toString("hex")).toBe("aabbccdd");
    expect(() => encodeAuthSys({ ...auth, gids: Array.from({ length: 17 }, (_, i) => i) })).toThrow(
      /16 groups/,
    );
  });

  it("decodes accepted, refused and denied replies", () => {
    const ok = new XdrWriter().u32(5).u32(1).u32(0).u32(0).opaque(Buffer.alloc(0)).u32(0).u32(42).toBuffer();
    const d = decodeReply(ok);
    expect(d.xid).toBe(5);
    expect(d.error).toBeUndefined();
    expect(new XdrReader(d.results!).u32()).toBe(42);

    const mismatch = new XdrWriter()
      .u32(6)
      .u32(1)
      .u32(0)
      .u32(0)
      .opaque(Buffer.alloc(0))
      .u32(2)
      .u32(2)
      .u32(4)
      .toBuffer();
    expect(decodeReply(mismatch).error?.message).toMatch(/PROG_MISMATCH \(server supports versions 2-4\)/);
    const unavail = new XdrWriter().u32(6).u32(1).u32(0).u32(0).opaque(Buffer.alloc(0)).u32(1).toBuffer();
    expect(decodeReply(unavail).error?.reason).toBe("PROG_UNAVAIL");
    const denied = new XdrWriter().u32(7).u32(1).u32(1).u32(1).u32(5).toBuffer();
    expect(decodeReply(denied).error?.reason).toBe("AUTH_ERROR");
    const notReply = new XdrWriter().u32(8).u32(0).toBuffer();
    expect(() => decodeReply(notReply)).toThrow(/not a reply/);
  });
});

describe("record marking", () => {
  it("frames a record as one last fragment", () => {
    expect(frameRecord(Buffer.from([1, 2, 3, 4])).toString("hex")).toBe("8000000401020304");
  });

  it("reassembles records split across chunks and fragments, and several in one chunk", () => {
    const dec = new RecordDecoder();
    const frag1 = Buffer.concat([Buffer.from("00000002", "hex"), Buffer.from("ab")]); // not last
    const frag2 = Buffer.concat([Buffer.from("80000003", "hex"), Buffer.from("cde")]); // last
    const whole = Buffer.concat([frag1, frag2, frameRecord(Buffer.from("xy"))]);
    const out: string[] = [];
    for (let i = 0; i < whole.length; i++)
      out.push(...dec.push(whole.subarray(i, i + 1)).map((b) => b.toString()));
    expect(out).toEqual(["abcde", "xy"]);
    const dec2 = new RecordDecoder();
    expect(dec2.push(whole).map((b) => b.toString())).toEqual(["abcde", "xy"]);
  });

  it("refuses a record larger than its bound", () => {
    const dec = new RecordDecoder(16);
    expect(() => dec.push(Buffer.from("80000011", "hex"))).toThrow(/more than 16 bytes/);
  });
});
