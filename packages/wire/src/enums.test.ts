import { PoolKind, PoolKindSchema, VolumeFormat, VolumeFormatSchema } from "@stowage/proto";
import { describe, expect, it } from "vitest";
import { checkWireEnums, enumCodec, poolKinds, WIRE_ENUMS, wireValueName } from "./enums.js";

describe("enum codecs", () => {
  it.each(WIRE_ENUMS.map((c) => [c.schema.typeName, c] as const))(
    "%s round-trips every name both ways",
    (_, c) => {
      expect(c.names.length).toBeGreaterThan(0);
      for (const name of c.names) expect(c.domain(c.wire(name))).toBe(name);
      for (const v of c.schema.values.filter((v) => v.number !== 0))
        expect(c.wire(c.domain(v.number)!)).toBe(v.number);
    },
  );

  it("maps by the proto naming convention", () => {
    expect(poolKinds.wire("lvmthin")).toBe(PoolKind.LVMTHIN);
    expect(poolKinds.domain(PoolKind.LVMTHIN)).toBe("lvmthin");
    expect(wireValueName(PoolKindSchema, "POOL_KIND_LVMTHIN")).toBe("lvmthin");
  });

  it("reads UNSPECIFIED and unknown numbers as undefined", () => {
    expect(poolKinds.domain(PoolKind.UNSPECIFIED)).toBeUndefined();
    expect(poolKinds.domain(99)).toBeUndefined();
  });

  it("refuses UNSPECIFIED and unknown numbers with INVALID_ARGUMENT where a value is required", () => {
    const formats = enumCodec(VolumeFormatSchema, ["raw", "qcow2"] as const);
    expect(formats.require(VolumeFormat.RAW, "format")).toBe("raw");
    expect(() => formats.require(VolumeFormat.UNSPECIFIED, "format")).toThrow(
      expect.objectContaining({
        code: "invalid_argument",
        message: "volume format is required: use one of raw, qcow2",
      }),
    );
    expect(() => formats.require(7, "format")).toThrow(/volume format 7 is not known: use one of raw, qcow2/);
    expect(formats.optional(VolumeFormat.UNSPECIFIED, "format")).toBeUndefined();
    expect(() => formats.optional(7, "format")).toThrow(/volume format 7 is not known/);
  });

  it("the start-up check passes for this build's proto and core", () => {
    expect(() => checkWireEnums()).not.toThrow();
  });

  it("the start-up check catches a core list and a proto enum that disagree", () => {
    const short = enumCodec(PoolKindSchema, ["dir", "lvm", "netfs", "rbd", "zfs"] as const);
    expect(() => checkWireEnums([short])).toThrow(
      "wire enums and core's lists disagree: stowage.v1.PoolKind has lvmthin, core does not; core has zfs, stowage.v1.PoolKind does not",
    );
  });
});
