import { existsSync, readFileSync } from "node:fs";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { createLoopVg, hasDeviceMapper } from "./lvm.js";

// The loop-device VG fixture on this host: metadata only (no device-mapper here), the real LVM tools.

const attachedLoops = async () => (await execa("losetup", ["-a"])).stdout;

describe("createLoopVg (metadata only)", () => {
  it("makes a VG on its own loop device, driven through its private lvm.conf, and tears it all down", async () => {
    expect(hasDeviceMapper()).toBe(false);
    const vg = await createLoopVg({ sizeBytes: 64n * 1024n * 1024n });
    expect(vg.activation).toBe(false);
    expect(vg.loopDevice).toMatch(/^\/dev\/loop\d+$/);
    expect(await attachedLoops()).toContain(`${vg.dir}/pv0.img`);
    const conf = readFileSync(`${vg.lvmSystemDir}/lvm.conf`, "utf8");
    expect(conf).toContain(`"a|^${vg.loopDevice}$|", "r|.*|"`);
    expect(conf).toContain("activation = 0");
    const { stdout } = await vg.lvm("vgs", ["--noheadings", "-o", "vg_name,pv_count", vg.vg]);
    expect(stdout.trim().split(/\s+/)).toEqual([vg.vg, "1"]);
    await vg.lvm("lvcreate", ["-q", "-y", "-n", "lv1", "-L", "8m", vg.vg]);
    await vg.teardown();
    await vg.teardown();
    expect(existsSync(vg.dir)).toBe(false);
    expect(await attachedLoops()).not.toContain(vg.dir);
  });

  it("refuses a thin pool without device-mapper, before attaching anything", async () => {
    const before = await attachedLoops();
    await expect(
      createLoopVg({ thinPool: { name: "pool0", sizeBytes: 64n * 1024n * 1024n } }),
    ).rejects.toThrow(/a thin pool needs device-mapper/);
    expect(await attachedLoops()).toBe(before);
  });

  it("a failing step tears down what was made, and says which command failed", async () => {
    const before = await attachedLoops();
    // LVM refuses this VG name.
    await expect(createLoopVg({ vg: "bad/name", sizeBytes: 64n * 1024n * 1024n })).rejects.toThrow(
      /^vgcreate -q bad\/name \/dev\/loop\d+ exited 3: /,
    );
    expect(await attachedLoops()).toBe(before);
  });
});
