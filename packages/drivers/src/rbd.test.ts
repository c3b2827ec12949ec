import { readFileSync } from "node:fs";
import { join } from "node:path";
import { StowageError } from "@stowage/core";
import { describe, expect, it } from "vitest";
import {
  cephDfArgv,
  isRbdNotFound,
  parseCephDf,
  parseCephOsdDump,
  parseCephOsdMetadata,
  parseRbdChildren,
  parseRbdDu,
  parseRbdImageMeta,
  parseRbdInfo,
  parseRbdLsLong,
  parseRbdSnapLs,
  parseRbdStatus,
  rbdCloneArgv,
  rbdCreateArgv,
  rbdDuPoolArgv,
  rbdImageMetaSetArgv,
  rbdInfoArgv,
  rbdLsLongArgv,
  rbdResizeArgv,
  rbdSnapCreateArgv,
  rbdSnapListArgv,
  rbdSpec,
  validateCephName,
  validateRbdConnection,
} from "./rbd.js";
import { ToolError, ToolOutputError } from "./runner.js";

/**
 * Golden files: real output of Debian's ceph 16.2.15 (pacific), from a one-node cluster started by the testkit
 * (bluestore, no mgr), captured with
 *   V=vol-019ab2c4d5e67f00a1b2c3d4e5f60718 V2=…19 S=snap-019ab2c4d5e67f00a1b2c3d4e5f6071a OP=op-…1b
 *   rbd create --size 64M rbd/stowage-$V; rbd image-meta set rbd/stowage-$V stowage.volume-id $V (and
 *     stowage.operation-id, stowage.snapshot.$S); qemu-img convert -n 8 MiB of random data into it
 *   rbd snap create rbd/stowage-$V@$S; rbd snap protect …; rbd clone rbd/stowage-$V@$S rbd/stowage-$V2
 *   rbd create --size 1G rbd/foreign-disk
 * then `--format json` of: rbd info (the image, the clone), rbd ls -l rbd, rbd snap ls, rbd du (the image;
 * the pool with --pool), rbd image-meta list (the image; foreign-disk, which prints nothing), rbd children,
 * rbd status (while qemu-io held the image open), ceph df, ceph osd dump, ceph osd metadata.
 */
const golden = (name: string) => readFileSync(join(import.meta.dirname, "testdata", name), "utf8");
const V = "vol-019ab2c4d5e67f00a1b2c3d4e5f60718";
const V2 = "vol-019ab2c4d5e67f00a1b2c3d4e5f60719";
const S = "snap-019ab2c4d5e67f00a1b2c3d4e5f6071a";
const OP = "op-019ab2c4d5e67f00a1b2c3d4e5f6071b";
const MiB = 1024n * 1024n;

describe("rbd parsers (golden)", () => {
  it("reads rbd info of an image", () => {
    expect(parseRbdInfo(golden("rbd-info.json"))).toEqual({
      name: `stowage-${V}`,
      id: "111250b222fd",
      sizeBytes: 64n * MiB,
      objectSizeBytes: 4n * MiB,
      features: ["layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"],
      flags: [],
      snapshotCount: 1,
    });
  });

  it("reads the parent of a clone from rbd info", () => {
    const info = parseRbdInfo(golden("rbd-info-clone.json"));
    expect(info.name).toBe(`stowage-${V2}`);
    expect(info.parent).toEqual({
      pool: "rbd",
      namespace: "",
      image: `stowage-${V}`,
      snapshot: S,
      overlapBytes: 64n * MiB,
    });
  });

  it("splits rbd ls -l into images and snapshot rows", () => {
    const { images, snapshots } = parseRbdLsLong(golden("rbd-ls-long.json"));
    expect(images).toEqual([
      { image: "foreign-disk", sizeBytes: 1024n * MiB },
      { image: `stowage-${V}`, sizeBytes: 64n * MiB },
      {
        image: `stowage-${V2}`,
        sizeBytes: 64n * MiB,
        parent: { pool: "rbd", namespace: "", image: `stowage-${V}`, snapshot: S },
      },
    ]);
    expect(snapshots).toEqual([
      { image: `stowage-${V}`, snapshot: S, sizeBytes: 64n * MiB, protected: true },
    ]);
  });

  it("reads rbd snap ls", () => {
    expect(parseRbdSnapLs(golden("rbd-snap-ls.json"))).toEqual([
      { id: 6, name: S, sizeBytes: 64n * MiB, protected: true, timestamp: "Sun Nov 22 15:57:24 2026" },
    ]);
  });

  it("sums rbd du of an image over its head and snapshots", () => {
    const du = parseRbdDu(golden("rbd-du-image.json"));
    expect(du.rows).toEqual([
      { image: `stowage-${V}`, snapshot: S, provisionedBytes: 64n * MiB, usedBytes: 8n * MiB },
      { image: `stowage-${V}`, provisionedBytes: 64n * MiB, usedBytes: 0n },
    ]);
    expect(du.usedByImage.get(`stowage-${V}`)).toBe(8n * MiB);
    expect(du.totalUsedBytes).toBe(8n * MiB);
  });

  it("reads rbd du of a whole pool with its totals", () => {
    const du = parseRbdDu(golden("rbd-du-pool.json"));
    expect([...du.usedByImage]).toEqual([
      ["foreign-disk", 0n],
      [`stowage-${V}`, 8n * MiB],
      [`stowage-${V2}`, 0n],
    ]);
    expect(du.totalUsedBytes).toBe(8n * MiB);
  });

  it("reads image metadata, and the nothing rbd prints when there is none", () => {
    expect(parseRbdImageMeta(golden("rbd-image-meta.json"))).toEqual({
      "stowage.volume-id": V,
      "stowage.operation-id": OP,
      [`stowage.snapshot.${S}`]: JSON.stringify({ operationId: OP, createdAt: "2026-11-22T16:00:00.000Z" }),
    });
    expect(golden("rbd-image-meta-empty.json")).toBe("");
    expect(parseRbdImageMeta(golden("rbd-image-meta-empty.json"))).toEqual({});
  });

  it("reads rbd children and rbd status", () => {
    expect(parseRbdChildren(golden("rbd-children.json"))).toEqual([
      { pool: "rbd", namespace: "", image: `stowage-${V2}` },
    ]);
    expect(parseRbdStatus(golden("rbd-status-watched.json"))).toEqual({
      watchers: ["client.4412 127.0.0.1:0/3111069576"],
    });
  });

  it("sees that ceph df without a mgr has no statistics", () => {
    const df = parseCephDf(golden("rbd-ceph-df-no-mgr.json"));
    expect(df).toEqual({ totalBytes: 0n, availBytes: 0n, hasStats: false, pools: new Map() });
  });

  it("reads pool statistics from ceph df with a mgr", () => {
    // The shape pacific's mgr gives (PGMap::dump_pool_stats_full); not captured here: no ceph-mgr installed.
    const text = JSON.stringify({
      stats: {
        total_bytes: 10737418240,
        total_avail_bytes: 10434453504,
        total_used_bytes: 302964736,
        total_used_raw_bytes: 302964736,
        total_used_raw_ratio: 0.028,
        num_osds: 1,
        num_per_pool_osds: 1,
        num_per_pool_omap_osds: 1,
      },
      stats_by_class: {},
      pools: [
        {
          name: "rbd",
          id: 1,
          stats: {
            stored: 8388608,
            stored_data: 8388608,
            stored_omap: 0,
            objects: 7,
            kb_used: 8192,
            bytes_used: 8388608,
            data_bytes_used: 8388608,
            omap_bytes_used: 0,
            percent_used: 0.0008,
            max_avail: 9912730624,
          },
        },
      ],
    });
    const df = parseCephDf(text);
    expect(df.hasStats).toBe(true);
    expect(df.pools.get("rbd")).toEqual({
      storedBytes: 8n * MiB,
      usedRawBytes: 8n * MiB,
      maxAvailBytes: 9912730624n,
      objects: 7,
    });
  });

  it("reads the pool's replicas and quota, the full ratio and the active OSDs from ceph osd dump", () => {
    const dump = parseCephOsdDump(golden("rbd-ceph-osd-dump.json"));
    expect(dump.fullRatio).toBeCloseTo(0.95, 5);
    expect(dump.pools).toEqual(new Map([["rbd", { replicas: 1, quotaMaxBytes: 0n }]]));
    expect(dump.activeOsds).toEqual([0]);
  });

  it("reads each OSD's device size from ceph osd metadata", () => {
    expect(parseCephOsdMetadata(golden("rbd-ceph-osd-metadata.json"))).toEqual(
      new Map([[0, 10n * 1024n * MiB]]),
    );
  });

  it("turns unexpected JSON into a ToolOutputError naming the command", () => {
    const argv = rbdInfoArgv({}, { pool: "rbd", image: "x" });
    const broken = () => parseRbdInfo('{"name": "x", "size": "big"', argv);
    expect(broken).toThrow(ToolOutputError);
    expect(broken).toThrow(/^rbd info printed output that is not the expected JSON: /);
    const shape = () => parseRbdInfo(JSON.stringify({ name: "x", size: -1 }), argv);
    expect(shape).toThrow(/rbd info printed output that is not the expected JSON: .*size/);
    expect(() => parseCephDf("[]", cephDfArgv({}))).toThrow(/^ceph df printed output/);
  });
});

describe("rbd argv", () => {
  const conn = { cephConf: "/etc/ceph/c.conf", cephUser: "stowage", keyring: "/etc/ceph/k.keyring" };
  const connArgs = ["--conf", "/etc/ceph/c.conf", "--id", "stowage", "--keyring", "/etc/ceph/k.keyring"];
  const img = { pool: "rbd", image: `stowage-${V}` };

  it("builds specs with namespaces and snapshots", () => {
    expect(rbdSpec(img)).toBe(`rbd/stowage-${V}`);
    expect(rbdSpec({ ...img, namespace: "tenant1", snapshot: S })).toBe(`rbd/tenant1/stowage-${V}@${S}`);
    expect(rbdSpec({ ...img, namespace: "" })).toBe(`rbd/stowage-${V}`);
  });

  it("puts the subcommand first, exact byte sizes, and --no-progress only where rbd takes it", () => {
    expect(rbdCreateArgv(conn, img, 64n * MiB)).toEqual([
      "create",
      "--size",
      "67108864B",
      "--no-progress",
      ...connArgs,
      `rbd/stowage-${V}`,
    ]);
    expect(rbdResizeArgv(conn, img, 32n * MiB, { allowShrink: true })).toEqual([
      "resize",
      "--size",
      "33554432B",
      "--allow-shrink",
      "--no-progress",
      ...connArgs,
      `rbd/stowage-${V}`,
    ]);
    expect(rbdResizeArgv({}, img, 32n * MiB, { allowShrink: false })).not.toContain("--allow-shrink");
    expect(rbdSnapCreateArgv({}, { ...img, snapshot: S })).toEqual([
      "snap",
      "create",
      "--no-progress",
      `rbd/stowage-${V}@${S}`,
    ]);
    expect(rbdSnapListArgv({}, img)).toEqual(["snap", "ls", "--format", "json", `rbd/stowage-${V}`]);
    expect(rbdCloneArgv({}, { ...img, snapshot: S }, { pool: "rbd", image: "c" })).toEqual([
      "clone",
      `rbd/stowage-${V}@${S}`,
      "rbd/c",
    ]);
    expect(rbdImageMetaSetArgv({}, img, "stowage.volume-id", V)).toEqual([
      "image-meta",
      "set",
      `rbd/stowage-${V}`,
      "stowage.volume-id",
      V,
    ]);
  });

  it("lists a pool positionally but gives du its pool as options", () => {
    expect(rbdLsLongArgv({}, "rbd", "ns1")).toEqual(["ls", "-l", "--format", "json", "rbd/ns1"]);
    expect(rbdDuPoolArgv({}, "rbd")).toEqual(["du", "--format", "json", "--pool", "rbd"]);
    expect(rbdDuPoolArgv({}, "rbd", "ns1")).toEqual([
      "du",
      "--format",
      "json",
      "--pool",
      "rbd",
      "--namespace",
      "ns1",
    ]);
  });

  it("refuses names and paths that would break a spec or a qemu rbd: string", () => {
    for (const bad of ["a/b", "a@b", "a:b", "-x", "", "a b", "$(x)"]) {
      expect(() => validateCephName("ceph pool", bad)).toThrow(StowageError);
    }
    expect(validateCephName("ceph pool", "rbd.ssd_2-a")).toBe("rbd.ssd_2-a");
    expect(() => validateRbdConnection({ cephConf: "ceph.conf" })).toThrow(/absolute path/);
    expect(() => validateRbdConnection({ keyring: "/x:y" })).toThrow(/without ':'/);
    expect(() => validateRbdConnection({ cephUser: "client.admin x" })).toThrow(/ceph user/);
    expect(validateRbdConnection({ cephUser: "admin", cephConf: "/etc/ceph/ceph.conf" })).toEqual({
      cephUser: "admin",
      cephConf: "/etc/ceph/ceph.conf",
    });
  });

  it("tells a missing image from a missing pool by rbd's exit code and message", () => {
    const err = (exitCode: number, stderr: string) =>
      new ToolError("internal", "x", { tool: "rbd", argv: ["info"], exitCode, stderr, timedOut: false });
    expect(isRbdNotFound(err(2, "rbd: error opening image x: (2) No such file or directory"))).toBe(true);
    expect(isRbdNotFound(err(2, "rbd: snapshot does not exist."))).toBe(true);
    expect(isRbdNotFound(err(2, "rbd: error opening pool 'nopool': (2) No such file or directory"))).toBe(
      false,
    );
    expect(isRbdNotFound(err(2, "rbd: namespace 'ns' does not exist.\n"))).toBe(false);
    expect(isRbdNotFound(err(17, "rbd: create error: (17) File exists"))).toBe(false);
    const timedOut = new ToolError("deadline_exceeded", "x", {
      tool: "rbd",
      argv: ["info"],
      exitCode: undefined,
      stderr: "",
      timedOut: true,
    });
    expect(isRbdNotFound(timedOut)).toBe(false);
    expect(isRbdNotFound(new Error("(2)"))).toBe(false);
  });
});
