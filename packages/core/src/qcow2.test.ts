import { describe, expect, it } from "vitest";
import { isQcow2ClusterSize, type Qcow2Options, validateQcow2 } from "./qcow2.js";

describe("qcow2 rules", () => {
  it("takes cluster sizes that are powers of two from 512 B to 2 MiB", () => {
    expect([512, 65536, 2 * 1024 * 1024].every(isQcow2ClusterSize)).toBe(true);
    expect([0, 256, 1000, 4 * 1024 * 1024, 512.5].some(isQcow2ClusterSize)).toBe(false);
  });

  it.each<[Qcow2Options, RegExp]>([
    [
      { clusterSize: 1000 },
      /qcow2 cluster size 1000 is not valid: use a power of two from 512 to 2097152 bytes/,
    ],
    [
      { extendedL2: true, clusterSize: 8192 },
      /extended L2 entries need a cluster size of at least 16384 bytes/,
    ],
    [{ preallocation: "sparse" as never }, /preallocation "sparse" is not valid/],
    [{ compressionType: "lz4" as never }, /compression type "lz4" is not valid: use zlib or zstd/],
  ])("refuses qcow2 options %j", (q, message) => {
    expect(() => validateQcow2("qcow2", q)).toThrow(message);
  });

  it("checks extended L2 against qemu's default cluster size when none is given", () => {
    expect(validateQcow2("qcow2", { extendedL2: true })).toEqual({ extendedL2: true });
  });

  it("lets raw images have only a preallocation raw has", () => {
    expect(validateQcow2("raw", { preallocation: "falloc" })).toEqual({ preallocation: "falloc" });
    expect(() => validateQcow2("raw", { preallocation: "metadata" })).toThrow(
      /not supported for raw volumes/,
    );
    expect(() => validateQcow2("raw", { lazyRefcounts: true })).toThrow(
      /option lazyRefcounts applies to qcow2 volumes only, not raw/,
    );
  });

  it("refuses a format that is neither", () => {
    expect(() => validateQcow2("vmdk" as never, {})).toThrow(
      /volume format "vmdk" is not valid: use qcow2 or raw/,
    );
  });
});
