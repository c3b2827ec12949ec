import { readdir, readFile, realpath, stat } from "node:fs/promises";
import { dirname, join, sep } from "node:path";
import { failedPrecondition, formatCpuList, parseCpuList } from "@stowage/core";

/**
 * Host discovery from sysfs and procfs: NUMA nodes (CPUs, memory, distances) and the NUMA node of the block
 * device under a pool. Roots are parameters so tests can point at a fake tree (this machine has one node).
 */

export interface NumaNodeInfo {
  id: number;
  /** Kernel notation ("0-3,8-11"), usable as-is for libvirt's `<iothreadpin cpuset=...>`. */
  cpuList: string;
  cpus: number[];
  memoryBytes: bigint;
  /** Distances to every node, in node id order (the kernel's `nodeN/distance`). */
  distances: number[];
}

export interface HostDiscovery {
  numaNodes: NumaNodeInfo[];
  cpuCount: number;
  /** From /proc/meminfo MemTotal: node meminfo misses hot-plugged (virtio-mem) memory. */
  memoryBytes: bigint;
}

export interface DiscoverOptions {
  sysfsRoot?: string;
  procRoot?: string;
}

export async function discoverHost(opts: DiscoverOptions = {}): Promise<HostDiscovery> {
  const sysfsRoot = opts.sysfsRoot ?? "/sys";
  const procRoot = opts.procRoot ?? "/proc";
  const memoryBytes = await readMemTotal(join(procRoot, "meminfo"));
  const onlineText = await readOptional(join(sysfsRoot, "devices/system/cpu/online"));
  const onlineCpus = onlineText === undefined ? undefined : parseCpuList(onlineText);

  const nodeRoot = join(sysfsRoot, "devices/system/node");
  const nodeIds = (await readdirOptional(nodeRoot))
    .map((name) => /^node(\d+)$/.exec(name)?.[1])
    .filter((n): n is string => n !== undefined)
    .map(Number)
    .sort((a, b) => a - b);

  let numaNodes: NumaNodeInfo[];
  if (nodeIds.length === 0) {
    // Kernels built without NUMA have no node directory: the whole machine is node 0.
    if (onlineCpus === undefined) {
      throw failedPrecondition(
        `cannot discover CPUs: neither ${nodeRoot} nor ${sysfsRoot}/devices/system/cpu/online exists`,
      );
    }
    numaNodes = [
      { id: 0, cpuList: formatCpuList(onlineCpus), cpus: onlineCpus, memoryBytes, distances: [10] },
    ];
  } else {
    numaNodes = await Promise.all(nodeIds.map((id) => readNode(join(nodeRoot, `node${id}`), id)));
    if (numaNodes.length === 1 && numaNodes[0]!.memoryBytes < memoryBytes) {
      // One node owns all memory by definition; its own meminfo can miss virtio-mem blocks (docs/testkit.md, "NUMA and the fake sysfs").
      numaNodes[0]!.memoryBytes = memoryBytes;
    }
  }
  const allCpus = onlineCpus ?? [...new Set(numaNodes.flatMap((n) => n.cpus))];
  return { numaNodes, cpuCount: allCpus.length, memoryBytes };
}

async function readNode(dir: string, id: number): Promise<NumaNodeInfo> {
  // A memory-only node (CXL, hot-plug) has an empty cpulist; that is a node, not an error.
  const cpus = parseCpuList((await readOptional(join(dir, "cpulist"))) ?? "");
  const meminfo = (await readOptional(join(dir, "meminfo"))) ?? "";
  const m = /MemTotal:\s+(\d+)\s*kB/.exec(meminfo);
  const distanceText = (await readOptional(join(dir, "distance"))) ?? "";
  const distances = distanceText
    .trim()
    .split(/\s+/)
    .filter((s) => s !== "")
    .map(Number);
  if (distances.some((d) => !Number.isInteger(d) || d < 0)) {
    throw failedPrecondition(`${dir}/distance is not a list of numbers: ${JSON.stringify(distanceText)}`);
  }
  return {
    id,
    cpuList: formatCpuList(cpus),
    cpus,
    memoryBytes: m ? BigInt(m[1]!) * 1024n : 0n,
    distances,
  };
}

async function readMemTotal(path: string): Promise<bigint> {
  const text = await readFile(path, "utf8");
  const m = /^MemTotal:\s+(\d+)\s*kB/m.exec(text);
  if (!m) throw failedPrecondition(`${path} has no MemTotal line`);
  return BigInt(m[1]!) * 1024n;
}

/** Splits a Linux dev_t (as glibc's makedev encodes it, which is what Node's stat returns) into major:minor. */
export function devMajorMinor(dev: bigint | number): { major: number; minor: number } {
  const d = BigInt(dev);
  const major = ((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn);
  const minor = (d & 0xffn) | ((d >> 12n) & ~0xffn);
  return { major: Number(major), minor: Number(minor) };
}

/**
 * The NUMA node of the block device that holds `path`, or undefined when there is none to speak of (network or
 * virtual filesystems, a device the firmware gave no node: `numa_node` = -1). Partitions use their disk's node;
 * device-mapper and md devices use their lower devices' node when all of them agree.
 */
export async function poolNumaNode(path: string, sysfsRoot = "/sys"): Promise<number | undefined> {
  const st = await stat(path, { bigint: true });
  const { major, minor } = devMajorMinor(st.dev);
  return blockDeviceNumaNode(sysfsRoot, `${major}:${minor}`);
}

/**
 * The NUMA node of a set of block devices (an LVM volume group's physical volumes, given as `/dev/...` paths):
 * their common node, or undefined when they are spread over nodes or any of them has none.
 */
export async function devicesNumaNode(
  devices: readonly string[],
  sysfsRoot = "/sys",
): Promise<number | undefined> {
  if (devices.length === 0) return undefined;
  const nodes = new Set<number | undefined>();
  for (const d of devices) {
    const st = await stat(d, { bigint: true });
    if (!st.isBlockDevice()) return undefined;
    const { major, minor } = devMajorMinor(st.rdev);
    nodes.add(await blockDeviceNumaNode(sysfsRoot, `${major}:${minor}`));
  }
  return nodes.size === 1 ? [...nodes][0] : undefined;
}

/** Same as `poolNumaNode` for a block device given as "MAJ:MIN". */
export async function blockDeviceNumaNode(
  sysfsRoot: string,
  majorMinor: string,
): Promise<number | undefined> {
  let dir: string;
  try {
    dir = await realpath(join(sysfsRoot, "dev/block", majorMinor));
  } catch {
    return undefined; // tmpfs, overlay, NFS: anonymous devices have no sysfs entry
  }
  return deviceDirNumaNode(await realpath(sysfsRoot), dir, 0);
}

const MAX_STACK_DEPTH = 8;

async function deviceDirNumaNode(
  sysfsReal: string,
  blockDir: string,
  depth: number,
): Promise<number | undefined> {
  let dir = blockDir;
  if ((await readOptional(join(dir, "partition"))) !== undefined) dir = dirname(dir);

  const direct = await readNumaNode(join(dir, "device/numa_node"));
  if (direct !== "absent") return direct;

  // virtio-blk, SCSI, NVMe: `device` is a bus device without numa_node; its PCI ancestor has one.
  const devicesRoot = join(sysfsReal, "devices");
  let cur: string | undefined;
  try {
    cur = await realpath(join(dir, "device"));
  } catch {
    cur = undefined;
  }
  while (cur?.startsWith(devicesRoot + sep)) {
    const n = await readNumaNode(join(cur, "numa_node"));
    if (n !== "absent") return n;
    cur = dirname(cur);
  }

  // device-mapper (LVM), md: follow the lower devices.
  if (depth >= MAX_STACK_DEPTH) return undefined;
  const slaves = await readdirOptional(join(dir, "slaves"));
  if (slaves.length === 0) return undefined;
  const nodes = new Set<number | undefined>();
  for (const s of slaves) {
    let lower: string;
    try {
      lower = await realpath(join(dir, "slaves", s));
    } catch {
      nodes.add(undefined);
      continue;
    }
    nodes.add(await deviceDirNumaNode(sysfsReal, lower, depth + 1));
  }
  // Spread over several nodes (or unknown on one of them): no single node is local.
  return nodes.size === 1 ? [...nodes][0] : undefined;
}

/** A `numa_node` file's value: a node, undefined for "-1" (unknown), or "absent" when there is no such file. */
async function readNumaNode(path: string): Promise<number | undefined | "absent"> {
  const text = await readOptional(path);
  if (text === undefined) return "absent";
  const n = Number.parseInt(text.trim(), 10);
  return Number.isInteger(n) && n >= 0 ? n : undefined;
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return undefined;
    throw e;
  }
}

async function readdirOptional(path: string): Promise<string[]> {
  try {
    return await readdir(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return [];
    throw e;
  }
}
