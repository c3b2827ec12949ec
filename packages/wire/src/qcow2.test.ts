import { create } from "@bufbuild/protobuf";
import type { Qcow2Options } from "@stowage/core";
import { CompressionType, type Preallocation, Qcow2OptionsSchema } from "@stowage/proto";
import { describe, expect, it } from "vitest";
import { qcow2FromWire, qcow2ToWire } from "./qcow2.js";

describe("qcow2 options", () => {
  it.each<Qcow2Options>([
    {},
    {
      clusterSize: 131072,
      preallocation: "metadata",
      lazyRefcounts: true,
      compressionType: "zstd",
      extendedL2: true,
    },
    { compressionType: "zlib", lazyRefcounts: false, extendedL2: false },
    { preallocation: "full" },
  ])("round-trip %j", (q) => {
    expect(qcow2FromWire(qcow2ToWire(q))).toEqual(q);
  });

  it("takes the compression type from the wire (zlib is not zstd)", () => {
    const w = create(Qcow2OptionsSchema, { compressionType: CompressionType.ZLIB });
    expect(qcow2FromWire(w)).toEqual({ compressionType: "zlib" });
  });

  it("leaves unset fields unset and refuses enum numbers it does not know", () => {
    expect(qcow2FromWire(undefined)).toEqual({});
    expect(qcow2FromWire(create(Qcow2OptionsSchema, {}))).toEqual({});
    expect(() => qcow2FromWire(create(Qcow2OptionsSchema, { preallocation: 9 as Preallocation }))).toThrow(
      expect.objectContaining({ code: "invalid_argument", details: { field: "qcow2.preallocation" } }),
    );
  });
});
