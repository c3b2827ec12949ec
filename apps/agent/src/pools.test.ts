import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, statfsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { newId } from "@stowage/core";
import { createToolRunner } from "@stowage/drivers";
import {
  addFakeBlockDevice,
  ganeshaAvailable,
  makeFakeSysfs,
  makeTempDir,
  startGanesha,
} from "@stowage/testkit";
import { describe, expect, it } from "vitest";
import { type AgentConfig, parseAgentConfig } from "./config.js";
import { devicesNumaNode } from "./discovery.js";
import { poolReports } from "./inventory.js";
import { openPools } from "./pools.js";

/** Block device nodes with chosen numbers, as the physical volumes a fake `pvs` names. Needs root (mknod). */
function mknod(path: string, major: number, minor: number): boolean {
  return spawnSync("mknod", [path, "b", String(major), String(minor)]).status === 0;
}

const canMknod = (() => {
  const probe = join("/tmp", `stowage-mknod-probe-${process.pid}`);
  const ok = mknod(probe, 8, 250);
  spawnSync("rm", ["-f", probe]);
  return ok;
})();

describe.skipIf(!canMknod)(
  "an LVM pool's NUMA node from its physical volumes (fake sysfs, device nodes made with mknod)",
  () => {
    it("is the node of its PVs when they agree, and none when they are spread or unknown", async () => {
      const tmp = await makeTempDir("stowage-lvm-numa-");
      const fake = await makeFakeSysfs(join(tmp.path, "root"));
      await addFakeBlockDevice(fake.sysfsRoot, { name: "sdb", majorMinor: "8:16", numaNode: 1 });
      await addFakeBlockDevice(fake.sysfsRoot, { name: "sdc", majorMinor: "8:32", numaNode: 1 });
      await addFakeBlockDevice(fake.sysfsRoot, { name: "sdd", majorMinor: "8:48", numaNode: 0 });
      const dev = join(tmp.path, "dev");
      mkdirSync(dev);
      for (const [name, minor] of [
        ["sdb", 16],
        ["sdc", 32],
        ["sdd", 48],
      ] as const)
        expect(mknod(join(dev, name), 8, minor)).toBe(true);

      expect(await devicesNumaNode([join(dev, "sdb"), join(dev, "sdc")], fake.sysfsRoot)).toBe(1);
      expect(await devicesNumaNode([join(dev, "sdb"), join(dev, "sdd")], fake.sysfsRoot)).toBeUndefined();
      expect(await devicesNumaNode([], fake.sysfsRoot)).toBeUndefined();

      // Through the agent's pool setup: a `pvs` that reports vg0 on sdb and sdc, and vg1 on sdb and sdd.
      const bin = join(tmp.path, "bin");
      mkdirSync(bin);
      const pv = (name: string, vg: string) =>
        `{"pv_name":"${join(dev, name)}","vg_name":"${vg}","pv_uuid":"u-${name}","pv_size":"1073741824","pv_free":"0"}`;
      const report = `{"report":[{"pv":[${[pv("sdb", "vg0"), pv("sdc", "vg0"), pv("sdb", "vg1"), pv("sdd", "vg1")].join(",")}]}]}`;
      writeFileSync(join(bin, "pvs"), `#!/bin/sh\ncat <<'EOF'\n${report}\nEOF\n`);
      chmodSync(join(bin, "pvs"), 0o755);
      const config = {
        sysfsRoot: fake.sysfsRoot,
        pools: [
          { name: "fast", kind: "lvm", vg: "vg0", udev: true, labels: {} },
          { name: "spread", kind: "lvm", vg: "vg1", udev: true, labels: {} },
          { name: "pinned", kind: "lvm", vg: "vg1", udev: true, numaNode: 0, labels: {} },
        ],
      } as unknown as AgentConfig;
      const pools = await openPools(config, (env) =>
        createToolRunner({ pathPrefix: [bin], ...(env ? { env } : {}) }),
      );
      expect(pools.get("fast")?.numaNode).toBe(1);
      expect(pools.get("spread")?.numaNode).toBeUndefined();
      // A node in the config wins over sysfs.
      expect(pools.get("pinned")?.numaNode).toBe(0);
      await tmp.cleanup();
    });
  },
);

const ganesha = ganeshaAvailable();
describe.skipIf(!ganesha.ok)(
  `a netfs pool on a real NFS-Ganesha${ganesha.ok ? "" : ` [skipped: ${ganesha.reason}]`}`,
  () => {
    it("is opened from its config, makes volumes on the export, and reports itself shared with its canonical URL", async () => {
      const tmp = await makeTempDir("stowage-agent-netfs-");
      const g = await startGanesha({ dir: tmp.path, exportPath: "/vm" });
      try {
        const config = parseAgentConfig({
          hostName: "node1",
          pools: [
            { name: "shared", kind: "netfs", url: `${g.url.replace("nfs://", "NFS://").toLowerCase()}/` },
          ],
        });
        const pools = await openPools(config, () => createToolRunner());
        const pool = pools.get("shared")!;
        expect(pool.numaNode).toBeUndefined();
        const volumeId = newId("vol");
        const made = await pool.driver.createVolume({
          volumeId,
          operationId: newId("op"),
          format: "qcow2",
          sizeBytes: 64n * 1024n * 1024n,
        });
        expect(made.artifact.path).toBe(`${g.url}/${volumeId}.qcow2`);
        expect(existsSync(join(g.exportDir, `${volumeId}.qcow2`))).toBe(true);
        expect(existsSync(join(g.exportDir, ".stowage", `${volumeId}.json`))).toBe(true);

        const [report] = await poolReports(pools.values());
        expect(report).toMatchObject({ name: "shared", healthy: true, shared: true, share: g.url });
        const fs = statfsSync(g.exportDir, { bigint: true });
        expect(report!.totalBytes).toBe(fs.blocks * fs.bsize);
        expect(report!.provisionedBytes).toBe(64n * 1024n * 1024n);
        expect((await pool.driver.deleteVolume(volumeId)).existed).toBe(true);
      } finally {
        await g.stop();
        await tmp.cleanup();
      }
    }, 360_000);
  },
);
