import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CephCluster, cephAvailable, startCeph } from "./ceph.js";

/** Gone, or a zombie waiting for a lazy PID 1 to reap it. */
function isGone(pid: number): boolean {
  try {
    return /^State:\s*[ZX]/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return true;
  }
}

describe.skipIf(!cephAvailable())("startCeph", () => {
  let ceph: CephCluster;
  let pids: number[] = [];

  beforeAll(async () => {
    ceph = await startCeph();
    pids = ["mon.a", "osd.0"].map((n) => Number(readFileSync(join(ceph.dir, "run", `${n}.pid`), "utf8")));
  });
  afterAll(async () => {
    await ceph?.stop({ fast: true });
  });

  const rbd = (args: string[]) =>
    execa("rbd", ["--conf", ceph.conf, "--id", ceph.id, "--keyring", ceph.keyring, ...args], {
      stdin: "ignore",
    });

  it("starts a one-node cluster on 127.0.0.1 with everything in its directory", () => {
    expect(ceph.conf).toBe(join(ceph.dir, "ceph.conf"));
    expect(ceph.env).toEqual({ CEPH_CONF: ceph.conf });
    expect(ceph.pool).toBe("rbd");
    expect(ceph.monHost).toBe(`v2:127.0.0.1:${ceph.monPort}`);
    const conf = readFileSync(ceph.conf, "utf8");
    expect(conf).toContain(`mon host = v2:127.0.0.1:${ceph.monPort}`);
    expect(conf).toContain("ms bind msgr1 = false");
    expect(conf).toContain("crush location = root=default host=cephtest");
    expect(conf).toContain("rbd default features = 61");
    expect(readFileSync(ceph.keyring, "utf8")).toContain("[client.admin]");
    expect(ceph.startSeconds).toBeGreaterThan(0);
    for (const pid of pids) expect(isGone(pid)).toBe(false);
  });

  it("serves rbd: create, ls, info through cephx with the admin keyring", async () => {
    await rbd(["create", "--size", "64M", "--no-progress", "rbd/smoke"]);
    expect(JSON.parse((await rbd(["ls", "--format", "json", "rbd"])).stdout)).toEqual(["smoke"]);
    const info = JSON.parse((await rbd(["info", "--format", "json", "rbd/smoke"])).stdout);
    expect(info).toMatchObject({ name: "smoke", size: 64 * 1024 * 1024 });
    expect(info.features).toEqual(["layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"]);
    await rbd(["rm", "--no-progress", "rbd/smoke"]);
    expect(JSON.parse((await rbd(["ls", "--format", "json", "rbd"])).stdout)).toEqual([]);
  });

  it("takes clients side by side without their admin sockets colliding", async () => {
    const runs = await Promise.all(Array.from({ length: 4 }, () => rbd(["ls", "--format", "json", "rbd"])));
    for (const r of runs) expect(r.stderr).toBe("");
  });

  it("refuses a fleet namespace without the node's address, before starting anything", async () => {
    await expect(startCeph({ netns: "nope-h1" })).rejects.toThrow(/netns needs the node's IPv4 address/);
    await expect(startCeph({ netns: "nope-h1", address: "203.0.113.11;x" })).rejects.toThrow(/IPv4/);
  });

  it("refuses a directory that already holds a cluster, before starting anything", async () => {
    await expect(startCeph({ dir: ceph.dir })).rejects.toThrow(/already holds a cluster/);
  });

  it("stops the OSD and the mon and removes its directory", async () => {
    const dir = ceph.dir;
    await ceph.stop();
    for (const pid of pids) expect(isGone(pid)).toBe(true);
    expect(existsSync(dir)).toBe(false);
    await ceph.stop(); // idempotent
  });
});
