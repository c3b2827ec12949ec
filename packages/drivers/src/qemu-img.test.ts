import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  createOptions,
  parseQemuImgCheck,
  parseQemuImgInfo,
  parseQemuImgInfoChain,
  parseQemuImgMap,
  qemuImgConvertArgv,
  qemuImgCreateArgv,
  qemuImgCreateOverlayArgv,
  qemuImgFlattenArgv,
  qemuImgInfoArgv,
  qemuImgInfoChainArgv,
  qemuImgMapArgv,
  qemuImgResizeArgv,
  qemuImgSnapshotArgv,
} from "./qemu-img.js";
import { ToolOutputError } from "./runner.js";

/**
 * Golden files: real `qemu-img` 7.2 output, captured with
 *   qemu-img create -q -f raw r.raw 64M
 *   qemu-img create -q -f qcow2 -o cluster_size=131072,preallocation=metadata,lazy_refcounts=on,\
 *     compression_type=zstd,extended_l2=on q.qcow2 1G
 *   qemu-img create -q -f qcow2 base.qcow2 32M; qemu-img create -q -f qcow2 -b …/base.qcow2 -F qcow2 ov.qcow2 64M
 *   qemu-img snapshot -c snap1 ov.qcow2
 * then `qemu-img info --output=json -f FMT PATH` (and `--backing-chain`, and `check --output=json`).
 * map-raw-sparse.json: `truncate -s 16M m.raw`, 1 MiB of random data written at 4 MiB, then
 *   `qemu-img map --output=json -U -f raw -- m.raw`.
 */
const golden = (name: string) => readFileSync(join(import.meta.dirname, "testdata", name), "utf8");

describe("parseQemuImgInfo (golden)", () => {
  it("reads a raw image", () => {
    const info = parseQemuImgInfo(golden("info-raw.json"));
    expect(info).toEqual({
      filename: "/tmp/stowage-golden/r.raw",
      format: "raw",
      virtualSize: 64n * 1024n * 1024n,
      actualSize: 4096n,
      clusterSize: undefined,
      dirty: false,
      backingFilename: undefined,
      fullBackingFilename: undefined,
      backingFormat: undefined,
      snapshots: [],
      formatSpecificType: undefined,
      qcow2: undefined,
    });
  });

  it("reads a qcow2 image with options", () => {
    const info = parseQemuImgInfo(golden("info-qcow2-options.json"));
    expect(info.format).toBe("qcow2");
    expect(info.virtualSize).toBe(1024n ** 3n);
    expect(info.actualSize).toBe(528384n);
    expect(info.clusterSize).toBe(131072);
    expect(info.formatSpecificType).toBe("qcow2");
    expect(info.qcow2).toEqual({
      compat: "1.1",
      lazyRefcounts: true,
      compressionType: "zstd",
      extendedL2: true,
      refcountBits: 16,
      corrupt: false,
      dataFile: undefined,
    });
  });

  it("reads a qcow2 overlay with a backing file and a snapshot", () => {
    const info = parseQemuImgInfo(golden("info-qcow2-backing-snapshot.json"));
    expect(info.virtualSize).toBe(64n * 1024n * 1024n);
    expect(info.clusterSize).toBe(65536);
    expect(info.backingFilename).toBe("/tmp/stowage-golden/base.qcow2");
    expect(info.fullBackingFilename).toBe("/tmp/stowage-golden/base.qcow2");
    expect(info.backingFormat).toBe("qcow2");
    expect(info.qcow2).toMatchObject({ compressionType: "zlib", lazyRefcounts: false, extendedL2: false });
    expect(info.snapshots).toEqual([
      {
        id: "1",
        name: "snap1",
        vmStateSize: 0n,
        date: new Date(1795361356 * 1000 + 255),
        vmClockNsec: 0n,
      },
    ]);
  });

  it("reads a backing chain, image first", () => {
    const chain = parseQemuImgInfoChain(golden("info-backing-chain.json"));
    expect(chain.map((i) => [i.filename, i.virtualSize])).toEqual([
      ["/tmp/stowage-golden/ov.qcow2", 64n * 1024n * 1024n],
      ["/tmp/stowage-golden/base.qcow2", 32n * 1024n * 1024n],
    ]);
  });

  it("refuses broken JSON and wrong shapes with a clear error", () => {
    expect(() => parseQemuImgInfo('{"virtual-size": 1,', ["info", "/p"])).toThrow(ToolOutputError);
    expect(() => parseQemuImgInfo('{"virtual-size": 1,', ["info", "/p"])).toThrow(
      /^qemu-img info printed output that is not the expected JSON: /,
    );
    const text = golden("info-raw.json").replace('"virtual-size": 67108864', '"virtual-size": "64M"');
    expect(() => parseQemuImgInfo(text)).toThrow(/virtual-size: /);
    const bad = JSON.parse(golden("info-qcow2-options.json"));
    bad["format-specific"].data["compression-type"] = "lz4";
    expect(() => parseQemuImgInfo(JSON.stringify(bad))).toThrow(ToolOutputError);
  });

  it("accepts other formats' specific data without knowing it", () => {
    const info = parseQemuImgInfo(
      JSON.stringify({
        "virtual-size": 1024,
        filename: "x",
        format: "luks",
        "format-specific": { type: "luks", data: { "cipher-alg": "aes-256" } },
      }),
    );
    expect(info.formatSpecificType).toBe("luks");
    expect(info.qcow2).toBeUndefined();
    expect(info.actualSize).toBeUndefined();
  });
});

describe("parseQemuImgCheck", () => {
  it("reads a clean image (golden)", () => {
    expect(parseQemuImgCheck(golden("check-qcow2-clean.json"))).toEqual({
      filename: "/tmp/stowage-golden/ov.qcow2",
      format: "qcow2",
      checkErrors: 0,
      corruptions: 0,
      leaks: 0,
      corruptionsFixed: 0,
      leaksFixed: 0,
      imageEndOffset: 393216n,
      totalClusters: 1024,
      allocatedClusters: undefined,
      fragmentedClusters: undefined,
      compressedClusters: undefined,
      clean: true,
    });
  });

  it("reports leaks (shape from qemu's QAPI ImageCheck)", () => {
    const r = parseQemuImgCheck(
      JSON.stringify({
        filename: "/x",
        format: "qcow2",
        "check-errors": 0,
        leaks: 3,
        "allocated-clusters": 9,
      }),
    );
    expect(r).toMatchObject({ leaks: 3, clean: false, allocatedClusters: 9 });
  });
});

describe("qemu-img argv builders", () => {
  it("builds create for raw and qcow2", () => {
    expect(qemuImgCreateArgv("/p/v.raw", "raw", 1024n ** 3n)).toEqual([
      "create",
      "-q",
      "-f",
      "raw",
      "--",
      "/p/v.raw",
      "1073741824",
    ]);
    expect(
      qemuImgCreateArgv("/p/v.qcow2", "qcow2", 10n * 1024n ** 3n, {
        clusterSize: 131072,
        preallocation: "metadata",
        lazyRefcounts: true,
        compressionType: "zstd",
        extendedL2: true,
      }),
    ).toEqual([
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      "cluster_size=131072,preallocation=metadata,lazy_refcounts=on,compression_type=zstd,extended_l2=on",
      "--",
      "/p/v.qcow2",
      "10737418240",
    ]);
    expect(qemuImgCreateArgv("/p/v.raw", "raw", 512n, { preallocation: "falloc" })).toContain(
      "preallocation=falloc",
    );
  });

  it.each([
    [{ clusterSize: 1000 }, /cluster size 1000 is not valid: use a power of two from 512 to 2097152/],
    [{ clusterSize: 256 }, /cluster size 256 is not valid/],
    [{ clusterSize: 4 * 1024 * 1024 }, /cluster size 4194304 is not valid/],
    [{ preallocation: "sparse" }, /preallocation "sparse" is not valid/],
    [{ compressionType: "lz4" }, /compression type "lz4" is not valid: use zlib or zstd/],
    [{ extendedL2: true, clusterSize: 8192 }, /extended L2 entries need a cluster size of at least 16384/],
  ])("refuses qcow2 options %j", (o, msg) => {
    expect(() => createOptions("qcow2", o as never)).toThrow(msg);
  });

  it("limits raw to the options raw has", () => {
    expect(() => createOptions("raw", { preallocation: "metadata" })).toThrow(
      /preallocation metadata is not supported for raw volumes: use off, falloc, full/,
    );
    expect(() => createOptions("raw", { clusterSize: 65536 })).toThrow(
      /clusterSize applies to qcow2 volumes only/,
    );
    expect(createOptions("raw", { preallocation: "full" })).toEqual(["preallocation=full"]);
    expect(createOptions("qcow2", { extendedL2: true })).toEqual(["extended_l2=on"]);
    expect(createOptions("qcow2", { clusterSize: 512, extendedL2: false })).toEqual([
      "cluster_size=512",
      "extended_l2=off",
    ]);
  });

  it("refuses bad sizes and relative paths", () => {
    expect(() => qemuImgCreateArgv("/p/x", "raw", 1000n)).toThrow(/multiple of 512/);
    expect(() => qemuImgCreateArgv("/p/x", "raw", 0n)).toThrow(/greater than zero/);
    expect(() => qemuImgCreateArgv("nbd:evil:1", "raw", 512n)).toThrow(/must be absolute/);
  });

  it("always names the format for info, and --shrink only on request", () => {
    expect(qemuImgInfoArgv("/p/v.raw", "raw")).toEqual([
      "info",
      "--output=json",
      "-U",
      "-f",
      "raw",
      "--",
      "/p/v.raw",
    ]);
    expect(qemuImgResizeArgv("/p/v.raw", "raw", 2048n)).toEqual([
      "resize",
      "-q",
      "-f",
      "raw",
      "--",
      "/p/v.raw",
      "2048",
    ]);
    expect(qemuImgResizeArgv("/p/v.raw", "raw", 2048n, { shrink: true })).toContain("--shrink");
  });
});

describe("parseQemuImgMap (golden)", () => {
  it("reads the data extents and holes of a sparse file", () => {
    const MiB = 1024n * 1024n;
    expect(parseQemuImgMap(golden("map-raw-sparse.json"))).toEqual([
      { start: 0n, length: 4n * MiB, data: false, zero: true },
      { start: 4n * MiB, length: MiB, data: true, zero: false },
      { start: 5n * MiB, length: 11n * MiB, data: false, zero: true },
    ]);
  });

  it("refuses output of another shape", () => {
    expect(() => parseQemuImgMap('[{"start": 0}]')).toThrow(ToolOutputError);
    expect(() => parseQemuImgMap("{}")).toThrow(ToolOutputError);
  });
});

describe("qemu-img argv builders: snapshots, clones, flatten", () => {
  const snap = "snap-0123456789abcdef0123456789abcdef";

  it("builds snapshot create/apply/delete with the format pinned through --image-opts", () => {
    expect(qemuImgSnapshotArgv("/pool/v.qcow2", "create", snap)).toEqual([
      "snapshot",
      "-q",
      "--image-opts",
      "-c",
      snap,
      "--",
      "driver=qcow2,file.driver=file,file.filename=/pool/v.qcow2",
    ]);
    expect(qemuImgSnapshotArgv("/pool/v.qcow2", "apply", snap)[3]).toBe("-a");
    expect(qemuImgSnapshotArgv("/pool/v.qcow2", "delete", snap)[3]).toBe("-d");
    // A comma would start a new option: qemu's escape is a doubled comma.
    expect(qemuImgSnapshotArgv("/a,b/v.qcow2", "create", snap).at(-1)).toBe(
      "driver=qcow2,file.driver=file,file.filename=/a,,b/v.qcow2",
    );
  });

  it("refuses snapshot tags that are not ids, and relative paths", () => {
    for (const tag of ["1", "", "-c", "a b", "snap-x,driver=raw", "../x"]) {
      expect(() => qemuImgSnapshotArgv("/pool/v.qcow2", "create", tag)).toThrow(/snapshot tag/);
    }
    expect(() => qemuImgSnapshotArgv("v.qcow2", "create", snap)).toThrow(/must be absolute/);
  });

  it("builds an overlay create with an absolute backing file and its format", () => {
    expect(
      qemuImgCreateOverlayArgv(
        "/pool/c.qcow2",
        { path: "/pool/.stowage/base.qcow2", format: "qcow2" },
        1048576n,
        {
          clusterSize: 65536,
        },
      ),
    ).toEqual([
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      "/pool/.stowage/base.qcow2",
      "-F",
      "qcow2",
      "-o",
      "cluster_size=65536",
      "--",
      "/pool/c.qcow2",
      "1048576",
    ]);
    expect(() =>
      qemuImgCreateOverlayArgv("/pool/c.qcow2", { path: "base.qcow2", format: "qcow2" }, 1048576n),
    ).toThrow(/must be absolute/);
  });

  it("builds convert: flat, from a snapshot, and incremental over a backing file", () => {
    expect(
      qemuImgConvertArgv("/p/a.raw", "/p/b.qcow2", { sourceFormat: "raw", targetFormat: "qcow2" }),
    ).toEqual(["convert", "-q", "-f", "raw", "-O", "qcow2", "--", "/p/a.raw", "/p/b.qcow2"]);
    expect(
      qemuImgConvertArgv("/p/a.qcow2", "/p/base.qcow2", {
        sourceFormat: "qcow2",
        targetFormat: "qcow2",
        snapshotTag: snap,
        backing: { path: "/p/base0.qcow2", format: "qcow2" },
        qcow2: { compressionType: "zstd" },
      }),
    ).toEqual([
      "convert",
      "-q",
      "-f",
      "qcow2",
      "-O",
      "qcow2",
      "-l",
      `snapshot.name=${snap}`,
      "-B",
      "/p/base0.qcow2",
      "-F",
      "qcow2",
      "-o",
      "compression_type=zstd",
      "--",
      "/p/a.qcow2",
      "/p/base.qcow2",
    ]);
    expect(() =>
      qemuImgConvertArgv("/p/a.qcow2", "/p/b.raw", {
        sourceFormat: "qcow2",
        targetFormat: "raw",
        backing: { path: "/p/base0.qcow2", format: "qcow2" },
      }),
    ).toThrow(/only a qcow2 target/);
    expect(() =>
      qemuImgConvertArgv("/p/a.qcow2", "/p/b.raw", {
        sourceFormat: "qcow2",
        targetFormat: "raw",
        snapshotTag: "1",
      }),
    ).toThrow(/snapshot tag/);
  });

  it("builds flatten (safe rebase onto nothing), chain info and map", () => {
    expect(qemuImgFlattenArgv("/p/c.qcow2")).toEqual([
      "rebase",
      "-q",
      "-f",
      "qcow2",
      "-b",
      "",
      "--",
      "/p/c.qcow2",
    ]);
    expect(qemuImgInfoChainArgv("/p/c.qcow2", "qcow2")).toEqual([
      "info",
      "--backing-chain",
      "--output=json",
      "-U",
      "-f",
      "qcow2",
      "--",
      "/p/c.qcow2",
    ]);
    expect(qemuImgMapArgv("/p/c.qcow2", "raw")).toEqual([
      "map",
      "--output=json",
      "-U",
      "-f",
      "raw",
      "--",
      "/p/c.qcow2",
    ]);
  });
});
