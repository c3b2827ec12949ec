import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { cpus, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { addFakeBlockDevice, addFakeStackedDevice, makeFakeSysfs } from "@stowage/testkit";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { blockDeviceNumaNode, devMajorMinor, discoverHost, poolNumaNode } from "./discovery.js";
import { hostAddresses } from "./inventory.js";

const GiB = 1024n ** 3n;
let root: string;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "stowage-fakesys-"));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("discoverHost on a fake sysfs", () => {
  it("reads two NUMA nodes", async () => {
    const fake = await makeFakeSysfs(root, { nodes: 2, cpusPerNode: 4, memKbPerNode: 8 * 1024 * 1024 });
    const host = await discoverHost(fake);
    expect(host).toEqual({
      numaNodes: [
        { id: 0, cpuList: "0-3", cpus: [0, 1, 2, 3], memoryBytes: 8n * GiB, distances: [10, 21] },
        { id: 1, cpuList: "4-7", cpus: [4, 5, 6, 7], memoryBytes: 8n * GiB, distances: [21, 10] },
      ],
      cpuCount: 8,
      memoryBytes: 16n * GiB,
    });
    // The tree is the kernel's shape (docs/testkit.md, "NUMA and the fake sysfs").
    const sys = join(fake.sysfsRoot, "devices/system");
    expect(await readFile(join(sys, "node/online"), "utf8")).toBe("0-1\n");
    expect(await readFile(join(sys, "node/node1/cpumap"), "utf8")).toBe("000000f0\n");
    expect(await readFile(join(sys, "cpu/cpu5/topology/physical_package_id"), "utf8")).toBe("1\n");
    expect(await readFile(join(sys, "node/node1/cpu5/topology/core_id"), "utf8")).toBe("1\n");
  });

  it("takes host memory from /proc/meminfo, not the sum of nodes", async () => {
    const fake = await makeFakeSysfs(root, {
      nodes: 2,
      cpusPerNode: 2,
      memKbPerNode: 1024 * 1024,
      procMemTotalKb: 24 * 1024 * 1024,
    });
    const host = await discoverHost(fake);
    expect(host.memoryBytes).toBe(24n * GiB);
    expect(host.numaNodes.map((n) => n.memoryBytes)).toEqual([GiB, GiB]);
  });

  it("gives a single node all of the host's memory (virtio-mem under-reports it)", async () => {
    const fake = await makeFakeSysfs(root, {
      nodes: 1,
      cpusPerNode: 2,
      memKbPerNode: 5_335_252,
      procMemTotalKb: 24_684_092,
    });
    const host = await discoverHost(fake);
    expect(host.numaNodes).toEqual([
      { id: 0, cpuList: "0-1", cpus: [0, 1], memoryBytes: 24_684_092n * 1024n, distances: [10] },
    ]);
  });

  it("reads custom distances and four nodes", async () => {
    const distances = [
      [10, 12, 20, 22],
      [12, 10, 22, 20],
      [20, 22, 10, 12],
      [22, 20, 12, 10],
    ];
    const fake = await makeFakeSysfs(root, { nodes: 4, cpusPerNode: 3, distances });
    const host = await discoverHost(fake);
    expect(host.numaNodes.map((n) => n.distances)).toEqual(distances);
    expect(host.numaNodes.map((n) => n.cpuList)).toEqual(["0-2", "3-5", "6-8", "9-11"]);
    expect(host.cpuCount).toBe(12);
  });

  it("falls back to one node with every online CPU when the kernel has no NUMA", async () => {
    const fake = await makeFakeSysfs(root, {
      nodes: 2,
      cpusPerNode: 2,
      numa: false,
      procMemTotalKb: 4 * 1024 * 1024,
    });
    const host = await discoverHost(fake);
    expect(host).toEqual({
      numaNodes: [{ id: 0, cpuList: "0-3", cpus: [0, 1, 2, 3], memoryBytes: 4n * GiB, distances: [10] }],
      cpuCount: 4,
      memoryBytes: 4n * GiB,
    });
  });
});

describe("pool NUMA node on a fake sysfs", () => {
  it("follows the pool directory's device to its PCI node", async () => {
    const fake = await makeFakeSysfs(root);
    const { major, minor } = devMajorMinor((await stat(root, { bigint: true })).dev);
    await addFakeBlockDevice(fake.sysfsRoot, { name: "vdz", majorMinor: `${major}:${minor}`, numaNode: 1 });
    expect(await poolNumaNode(root, fake.sysfsRoot)).toBe(1);
  });

  it("uses the disk's node for a partition, and undefined for -1 or no device", async () => {
    const fake = await makeFakeSysfs(root);
    await addFakeBlockDevice(fake.sysfsRoot, {
      name: "sdb",
      majorMinor: "8:16",
      numaNode: 1,
      partitions: [{ name: "sdb1", majorMinor: "8:17" }],
    });
    await addFakeBlockDevice(fake.sysfsRoot, { name: "sdc", majorMinor: "8:32", numaNode: -1 });
    expect(await blockDeviceNumaNode(fake.sysfsRoot, "8:16")).toBe(1);
    expect(await blockDeviceNumaNode(fake.sysfsRoot, "8:17")).toBe(1);
    expect(await blockDeviceNumaNode(fake.sysfsRoot, "8:32")).toBeUndefined();
    expect(await blockDeviceNumaNode(fake.sysfsRoot, "0:42")).toBeUndefined();
  });

  it("follows device-mapper volumes to their physical volumes", async () => {
    const fake = await makeFakeSysfs(root);
    const a = await addFakeBlockDevice(fake.sysfsRoot, { name: "nvme0n1", majorMinor: "259:0", numaNode: 1 });
    const b = await addFakeBlockDevice(fake.sysfsRoot, { name: "nvme1n1", majorMinor: "259:1", numaNode: 1 });
    const c = await addFakeBlockDevice(fake.sysfsRoot, { name: "nvme2n1", majorMinor: "259:2", numaNode: 0 });
    await addFakeStackedDevice(fake.sysfsRoot, { name: "dm-0", majorMinor: "253:0", slaves: [a, b] });
    await addFakeStackedDevice(fake.sysfsRoot, { name: "dm-1", majorMinor: "253:1", slaves: [a, c] });
    expect(await blockDeviceNumaNode(fake.sysfsRoot, "253:0")).toBe(1);
    // Striped over two nodes: none is local.
    expect(await blockDeviceNumaNode(fake.sysfsRoot, "253:1")).toBeUndefined();
  });

  it("splits dev_t as glibc encodes it", () => {
    expect(devMajorMinor(0xfe00)).toEqual({ major: 254, minor: 0 });
    expect(devMajorMinor(0x811)).toEqual({ major: 8, minor: 17 });
    // major 259, minor 300: minor bits above 8 sit at bit 20.
    expect(devMajorMinor((259 << 8) | (300 & 0xff) | ((300 & ~0xff) << 12))).toEqual({
      major: 259,
      minor: 300,
    });
  });
});

describe("discovery on this machine's /sys", () => {
  it("finds the real nodes, CPUs and memory", async () => {
    const host = await discoverHost();
    expect(host.numaNodes.length).toBeGreaterThanOrEqual(1);
    expect(host.cpuCount).toBe(cpus().length);
    expect(host.memoryBytes).toBe(BigInt(totalmem()));
    const all = host.numaNodes.flatMap((n) => n.cpus).sort((x, y) => x - y);
    expect(all).toEqual(Array.from({ length: host.cpuCount }, (_, i) => i));
    for (const n of host.numaNodes) {
      expect(n.distances).toHaveLength(host.numaNodes.length);
      expect(n.memoryBytes).toBeGreaterThan(0n);
    }
    if (host.numaNodes.length === 1) {
      // A machine seen in testing (docs/testkit.md, "NUMA and the fake sysfs"): node meminfo says ~5 GB, MemTotal ~24 GB; the node must carry MemTotal.
      expect(host.numaNodes[0]!.memoryBytes).toBe(host.memoryBytes);
      expect(host.numaNodes[0]!.distances).toEqual([10]);
    }
  });

  it("gives a pool on the root filesystem a node or none, and none for tmpfs", async () => {
    const host = await discoverHost();
    const node = await poolNumaNode(tmpdir());
    expect(node === undefined || host.numaNodes.some((n) => n.id === node)).toBe(true);
    if (existsSync("/dev/shm")) expect(await poolNumaNode("/dev/shm")).toBeUndefined();
  });
});

describe("hostAddresses", () => {
  it("lists unicast addresses, without loopback or link-local ones, once each", () => {
    const v4 = (address: string, internal = false) =>
      ({ address, family: "IPv4", internal, netmask: "", mac: "", cidr: null }) as const;
    const v6 = (address: string) =>
      ({ address, family: "IPv6", internal: false, netmask: "", mac: "", cidr: null, scopeid: 0 }) as const;
    expect(
      hostAddresses({
        lo: [v4("127.0.0.1", true)],
        eth0: [v4("203.0.113.11"), v6("fe80::1"), v6("2001:db8::11")],
        eth1: [v4("203.0.113.11")],
      }),
    ).toEqual(["2001:db8::11", "203.0.113.11"]);
  });
});
