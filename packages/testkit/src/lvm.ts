/**
 * Throwaway LVM volume groups on a loop device, for LVM driver tests. Each VG lives on its own sparse file and
 * loop device and is driven through a private LVM_SYSTEM_DIR (lvm.conf filtering that one loop device, backups
 * inside the temp dir), so tests never see or touch the machine's own LVM, nor each other's.
 *
 * Two modes (docs/testkit.md, "LVM on loop devices" and "The kernel VM"):
 * - metadata only (the default wherever the kernel has no device-mapper, like this host): `global/activation=0`,
 *   so pvcreate/vgcreate/lvcreate (linear)/lvextend/lvreduce/lvrename/lvremove/tags and every report work, and
 *   nothing is activated: no /dev/VG/LV, no thin pool, no snapshots.
 * - full (`activation: true`, in the kernel VM after `modprobe dm-mod dm-thin-pool dm-snapshot loop`): real
 *   LVs, thin pools and snapshots. There is no udevd there, so the config carries
 *   `activation{udev_sync=0 udev_rules=0}` and `devices{obtain_device_list_from_udev=0}` (with the defaults
 *   lvcreate fails: "device not cleared"), and `global{use_lvmpolld=0}` (no lvmpolld: merges poll in-process).
 */
import { spawn, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdir, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { execa } from "execa";
import { makeTempDir } from "./temp.js";

export interface LoopVgOptions {
  /** Default: a unique `stowage_t<pid>_<n>`. */
  vg?: string;
  /** Size of the sparse backing file (the PV). Default 2 GiB. */
  sizeBytes?: bigint;
  /** Real activation (needs device-mapper). Default: whether this kernel has device-mapper. */
  activation?: boolean;
  /** Also create a thin pool of this size (needs activation). */
  thinPool?: { name: string; sizeBytes: bigint };
  /** Remove the LVM warnings that every metadata-only command prints. Default true. */
  quiet?: boolean;
}

export interface LoopVg {
  vg: string;
  loopDevice: string;
  /** The temp dir holding the backing file and etc/. */
  dir: string;
  /** LVM_SYSTEM_DIR for every LVM command against this VG. */
  lvmSystemDir: string;
  /** Environment for a tool runner (or execa) that runs LVM against this VG. */
  env: Record<string, string>;
  activation: boolean;
  thinPool?: string;
  /** Runs an LVM command against this VG (test set-up and assertions, not the code under test). */
  lvm(tool: string, args: readonly string[]): Promise<{ stdout: string; stderr: string }>;
  /** Removes the VG, the PV, the loop device and the files. Idempotent. */
  teardown(): Promise<void>;
}

let counter = 0;
const attached = new Set<string>();
let exitHookInstalled = false;

/** True when this kernel has device-mapper (the host here has not; the kernel VM has, once dm-mod is loaded). */
export function hasDeviceMapper(): boolean {
  try {
    return /\bdevice-mapper\b/.test(readFileSync("/proc/misc", "utf8"));
  } catch {
    return false;
  }
}

export async function createLoopVg(opts: LoopVgOptions = {}): Promise<LoopVg> {
  const activation = opts.activation ?? hasDeviceMapper();
  if (opts.thinPool && !activation) {
    throw new Error("a thin pool needs device-mapper (activation); run this in the kernel VM");
  }
  const vg = opts.vg ?? `stowage_t${process.pid}_${++counter}`;
  const quiet = opts.quiet ?? true;
  const temp = await makeTempDir("stowage-lvm-");
  const dir = temp.path;
  const etc = join(dir, "etc");
  const image = join(dir, "pv0.img");
  const env = { LVM_SYSTEM_DIR: etc, LVM_SUPPRESS_FD_WARNINGS: "1", LC_ALL: "C" };
  let loopDevice = "";
  let stopWatchdog = () => {};

  const lvm = async (tool: string, args: readonly string[]) => {
    const r = await execa(tool, [...args], { env, reject: false, stdin: "ignore" });
    if (r.exitCode !== 0) {
      throw new Error(`${tool} ${args.join(" ")} exited ${r.exitCode}: ${r.stderr.trim()}`);
    }
    const stderr = quiet ? dropNoise(r.stderr) : r.stderr;
    return { stdout: r.stdout, stderr };
  };

  let done = false;
  const teardown = async () => {
    if (done) return;
    done = true;
    // Best effort all the way: a test that failed half-way leaves half a VG.
    if (loopDevice) {
      await execa("vgremove", ["-q", "-f", vg], { env, reject: false, stdin: "ignore" });
      await execa("pvremove", ["-q", "-y", loopDevice], { env, reject: false, stdin: "ignore" });
      await execa("losetup", ["-d", loopDevice], { reject: false });
      attached.delete(loopDevice);
      stopWatchdog();
    }
    await temp.cleanup();
  };

  try {
    await writeFile(image, "");
    await truncate(image, Number(opts.sizeBytes ?? 2n * 1024n ** 3n));
    loopDevice = (await execa("losetup", ["--find", "--show", image])).stdout.trim();
    attached.add(loopDevice);
    installExitHook();
    stopWatchdog = watchLoopDevice(loopDevice, image);
    await mkdir(join(etc, "backup"), { recursive: true });
    const conf = [
      activation ? "global { use_lvmpolld = 0 }" : "global { activation = 0 use_lvmpolld = 0 }",
      `devices { filter = [ "a|^${loopDevice}$|", "r|.*|" ] use_devicesfile = 0 obtain_device_list_from_udev = 0 }`,
      "activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }",
      // One backup per VG (overwritten), no archive per command: each LVM command costs ~0.5 s in the VM.
      `backup { backup = 1 backup_dir = "${join(etc, "backup")}" archive = 0 }`,
      "",
    ].join("\n");
    await writeFile(join(etc, "lvm.conf"), conf);
    await lvm("pvcreate", ["-q", "-y", loopDevice]);
    await lvm("vgcreate", ["-q", vg, loopDevice]);
    if (opts.thinPool) {
      const { name, sizeBytes } = opts.thinPool;
      await lvm("lvcreate", ["-q", "-y", "--type", "thin-pool", "-L", `${sizeBytes}b`, "-n", name, vg]);
    }
  } catch (e) {
    await teardown();
    throw e;
  }
  const result: LoopVg = { vg, loopDevice, dir, lvmSystemDir: etc, env, activation, lvm, teardown };
  if (opts.thinPool) result.thinPool = opts.thinPool.name;
  return result;
}

function dropNoise(stderr: string): string {
  return stderr
    .split("\n")
    .filter((l) => !/Activation disabled|not zeroed|Skipping zeroing|NOT backed up/.test(l))
    .join("\n");
}

/**
 * A test process killed without running its exit handlers (a vitest worker is stopped by a signal) must not
 * leave a loop device attached to a deleted file: a tiny detached watchdog detaches it once this process is
 * gone, if the device still has our file behind it (its number may have been reused by then).
 */
const WATCHDOG = `
parent=$1; dev=$2; file=$3
alive() { [ -d "/proc/$1" ] && ! grep -qs '^State:[[:space:]]*[ZX]' "/proc/$1/status"; }
while alive "$parent"; do sleep 1; done
case "$(losetup -n -O BACK-FILE "$dev" 2>/dev/null)" in *"$file"*) losetup -d "$dev" ;; esac
`;

function watchLoopDevice(device: string, file: string): () => void {
  if (process.env.STOWAGE_TESTKIT_NO_REAPER === "1") return () => {};
  try {
    const child = spawn(
      "bash",
      ["-c", WATCHDOG, "stowage-loop-watchdog", String(process.pid), device, file],
      {
        detached: true,
        stdio: "ignore",
      },
    );
    child.on("error", () => {});
    child.unref();
    return () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    };
  } catch {
    return () => {};
  }
}

/** A test process that exits without teardown must not leave loop devices attached to deleted files. */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const dev of attached) spawnSync("losetup", ["-d", dev], { stdio: "ignore" });
  });
}
