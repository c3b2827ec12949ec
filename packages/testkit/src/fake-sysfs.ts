import { mkdir, rm, symlink, writeFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";

/**
 * A fake sysfs + procfs tree for host discovery tests: the test machines have one NUMA node, and the agent must
 * be proven on several. The layout follows the kernel's (docs/testkit.md, "NUMA and the fake sysfs"): `sys/devices/system/node/...`,
 * `sys/devices/system/cpu/...`, `proc/meminfo`.
 */

export interface FakeSysfsOptions {
  nodes?: number;
  cpusPerNode?: number;
  memKbPerNode?: number;
  /** MemTotal in the fake /proc/meminfo; default nodes × memKbPerNode. */
  procMemTotalKb?: number;
  /** Full distance matrix; default 10 on the diagonal, 21 elsewhere (what QEMU and most 2-socket boxes show). */
  distances?: number[][];
  /** Write `devices/system/node` at all (kernels without CONFIG_NUMA have none). Default true. */
  numa?: boolean;
}

export interface FakeSysfs {
  root: string;
  /** Pass as `sysfsRoot`. */
  sysfsRoot: string;
  /** Pass as `procRoot`. */
  procRoot: string;
}

async function put(path: string, text: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, text);
}

export async function makeFakeSysfs(root: string, opts: FakeSysfsOptions = {}): Promise<FakeSysfs> {
  const nodes = opts.nodes ?? 2;
  const cpusPerNode = opts.cpusPerNode ?? 4;
  const memKb = opts.memKbPerNode ?? 16 * 1024 * 1024;
  const sysfsRoot = join(root, "sys");
  const procRoot = join(root, "proc");
  const system = join(sysfsRoot, "devices", "system");
  const range = (n: number) => (n <= 1 ? "0" : `0-${n - 1}`);
  const cpuTotal = nodes * cpusPerNode;

  for (const f of ["online", "possible", "present"])
    await put(join(system, "cpu", f), `${range(cpuTotal)}\n`);
  if (opts.numa !== false) {
    for (const f of ["online", "possible", "has_cpu", "has_memory", "has_normal_memory"]) {
      await put(join(system, "node", f), `${range(nodes)}\n`);
    }
  }
  for (let n = 0; n < nodes; n++) {
    const first = n * cpusPerNode;
    const last = first + cpusPerNode - 1;
    for (let k = first; k <= last; k++) {
      const topo = join(system, "cpu", `cpu${k}`, "topology");
      await put(join(topo, "physical_package_id"), `${n}\n`);
      await put(join(topo, "core_id"), `${k - first}\n`);
    }
    if (opts.numa === false) continue;
    const dir = join(system, "node", `node${n}`);
    await put(join(dir, "cpulist"), `${cpusPerNode === 1 ? first : `${first}-${last}`}\n`);
    await put(join(dir, "cpumap"), `${cpuMask(first, cpusPerNode)}\n`);
    const row = opts.distances?.[n] ?? Array.from({ length: nodes }, (_, m) => (m === n ? 10 : 21));
    await put(join(dir, "distance"), `${row.join(" ")}\n`);
    const free = Math.floor((memKb * 3) / 4);
    await put(
      join(dir, "meminfo"),
      [
        `Node ${n} MemTotal:       ${pad(memKb)} kB`,
        `Node ${n} MemFree:        ${pad(free)} kB`,
        `Node ${n} MemUsed:        ${pad(memKb - free)} kB`,
        `Node ${n} HugePages_Total:     0`,
        "",
      ].join("\n"),
    );
    for (let k = first; k <= last; k++) {
      await symlink(join("..", "..", "cpu", `cpu${k}`), join(dir, `cpu${k}`));
    }
  }

  const total = opts.procMemTotalKb ?? nodes * memKb;
  await put(
    join(procRoot, "meminfo"),
    [
      `MemTotal:       ${pad(total)} kB`,
      `MemFree:        ${pad(Math.floor(total / 2))} kB`,
      `MemAvailable:   ${pad(Math.floor((total * 3) / 4))} kB`,
      "Buffers:               0 kB",
      "",
    ].join("\n"),
  );
  return { root, sysfsRoot, procRoot };
}

export interface FakeBlockDeviceOptions {
  /** Kernel name, e.g. "sda", "nvme0n1". */
  name: string;
  /** "MAJ:MIN". */
  majorMinor: string;
  /** The PCI device's numa_node; -1 is what the kernel writes when it does not know. */
  numaNode: number;
  /** PCI address; default derived from the device number. */
  pciAddress?: string;
  partitions?: { name: string; majorMinor: string }[];
}

/**
 * Adds a PCI-attached block device the way virtio-blk shows up: `dev/block/MAJ:MIN` links to
 * `devices/pci0000:00/<addr>/virtio0/block/<name>`, whose `device` is the virtio device (no numa_node) and whose
 * PCI ancestor holds `numa_node`. Partitions are subdirectories with a `partition` file.
 */
export async function addFakeBlockDevice(sysfsRoot: string, opts: FakeBlockDeviceOptions): Promise<string> {
  const addr = opts.pciAddress ?? pciAddressFor(opts.majorMinor);
  const pci = join(sysfsRoot, "devices", "pci0000:00", addr);
  const virtio = join(pci, `virtio-${opts.name}`);
  const disk = join(virtio, "block", opts.name);
  await put(join(pci, "numa_node"), `${opts.numaNode}\n`);
  await put(join(disk, "dev"), `${opts.majorMinor}\n`);
  await mkdir(join(disk, "slaves"), { recursive: true });
  await symlink(relative(disk, virtio), join(disk, "device"));
  await linkDev(sysfsRoot, opts.majorMinor, disk);
  for (const p of opts.partitions ?? []) {
    const part = join(disk, p.name);
    await put(join(part, "dev"), `${p.majorMinor}\n`);
    await put(join(part, "partition"), `${Number(p.name.replace(/^\D+/, "").replace(/^\d+p/, "")) || 1}\n`);
    await linkDev(sysfsRoot, p.majorMinor, part);
  }
  return disk;
}

/**
 * Adds a virtual block device (device-mapper, md) stacked on others: `devices/virtual/block/<name>` with
 * `slaves/<lower>` links, as LVM volumes appear.
 */
export async function addFakeStackedDevice(
  sysfsRoot: string,
  opts: { name: string; majorMinor: string; slaves: string[] },
): Promise<string> {
  const dir = join(sysfsRoot, "devices", "virtual", "block", opts.name);
  await put(join(dir, "dev"), `${opts.majorMinor}\n`);
  await mkdir(join(dir, "slaves"), { recursive: true });
  for (const s of opts.slaves) {
    await symlink(relative(join(dir, "slaves"), s), join(dir, "slaves", s.split("/").pop()!));
  }
  await linkDev(sysfsRoot, opts.majorMinor, dir);
  return dir;
}

async function linkDev(sysfsRoot: string, majorMinor: string, target: string): Promise<void> {
  const devBlock = join(sysfsRoot, "dev", "block");
  await mkdir(devBlock, { recursive: true });
  const link = join(devBlock, majorMinor);
  await rm(link, { force: true });
  await symlink(relative(devBlock, target), link);
}

function pad(n: number): string {
  return String(n).padStart(8, " ");
}

/** The kernel's cpumap: a hex mask in comma-separated 32-bit words, most significant first. */
function cpuMask(first: number, count: number): string {
  let mask = 0n;
  for (let k = first; k < first + count; k++) mask |= 1n << BigInt(k);
  const words: string[] = [];
  do {
    words.unshift((mask & 0xffffffffn).toString(16).padStart(8, "0"));
    mask >>= 32n;
  } while (mask > 0n);
  return words.join(",");
}

/** A PCI address unique per device number, so two fake disks never share a `numa_node` file. */
function pciAddressFor(majorMinor: string): string {
  const [major = 0, minor = 0] = majorMinor.split(":").map(Number);
  const hex = (n: number, w: number) => n.toString(16).padStart(w, "0");
  return `0000:${hex(major & 0xff, 2)}:${hex(minor & 0x1f, 2)}.${(minor >> 5) & 7}`;
}
