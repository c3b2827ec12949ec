/**
 * The kernel VM lab: runs a bash script as root inside a throwaway qemu guest that boots Debian's own kernel,
 * for what this host's kernel cannot do (it has no device-mapper, so no LVM activation, thin pools or
 * snapshots; no configfs, knfsd or krbd, nor the kernel's iSCSI initiator, either).
 *
 * How (docs/testkit.md, "The kernel VM"): the guest kernel comes from `apt-get download` of
 * the package behind `linux-image-amd64`, unpacked into a cache outside the repository ($STOWAGE_VM_CACHE,
 * default /var/cache/stowage-vm; built once in ~5 s plus the download, reused while the machine is kept). A
 * busybox initramfs (vm/init) mounts this machine's `/` read-only over virtio-9p with a tmpfs overlay, so the
 * guest sees every installed package and the repository at the same paths, and nothing it writes reaches the
 * host except the share directory (mounted read-write at /share). vm/guest-init.sh then runs the script. The
 * guest has its own tmpfs /tmp and /run; the host's /tmp is at /host-tmp (kernelVmGuestPath).
 *
 * - TCG only (`-accel tcg,thread=multi -cpu max`): /dev/kvm here is a nested PVM hypervisor, and a stock
 *   kernel under `-accel kvm` hangs after "Booting from ROM...". TCG is 5-10x slower than native; an empty
 *   script takes ~6 s from start to power-off.
 * - The host's root is mounted with cache=loose: without a page cache every page fault of a binary is a 9p
 *   round trip, and node took 17 s to start instead of 2.
 * - There is no udev and no module autoloading in the guest: scripts `modprobe` what they use and run LVM
 *   with `activation{udev_sync=0 udev_rules=0}`. There is no network device, only loopback.
 *
 * CLI (scripts/vm-test.sh uses it through tsx):
 *   tsx packages/testkit/src/kernel-vm.ts [--share DIR] [--timeout SECONDS] [--memory MB] [--env K=V]... \
 *       SCRIPT [ARGS...]
 * streams the guest's console, exits with the script's exit code; 2 when a tool or the kernel is missing,
 * 99 when the VM died or timed out without a result.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { accessSync, constants, createWriteStream, realpathSync } from "node:fs";
import { copyFile, mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { delimiter, join, resolve } from "node:path";
import { StringDecoder } from "node:string_decoder";
import { fileURLToPath, pathToFileURL } from "node:url";
import { trackProcess } from "./cleanup.js";
import { makeTempDir } from "./temp.js";

/** Where the guest kernel and initramfs are cached unless STOWAGE_VM_CACHE says otherwise. */
export const DEFAULT_KERNEL_VM_CACHE = "/var/cache/stowage-vm";
export const DEFAULT_KERNEL_VM_MEMORY_MB = 3072;
export const DEFAULT_KERNEL_VM_TIMEOUT_MS = 10 * 60_000;
/** The guest's mount point of the share directory. */
export const KERNEL_VM_SHARE = "/share";

/** Set in the guest by scripts/vm-test.sh: tests that need the guest kernel run only where it is "1". */
export const IN_KERNEL_VM_ENV = "STOWAGE_IN_KERNEL_VM";

/** The skip reason of device-mapper suites on the host. */
export const KERNEL_VM_SKIP_REASON =
  "device-mapper is absent from this kernel; this suite runs in the kernel VM (scripts/vm-test.sh, the vm step of npm test)";

/** True inside the kernel VM of scripts/vm-test.sh. */
export function inKernelVm(): boolean {
  return process.env[IN_KERNEL_VM_ENV] === "1";
}

/** The guest-side files: the initramfs init, the PID 1 script, the cache builder, guest scripts. */
export const KERNEL_VM_DIR = fileURLToPath(new URL("../vm/", import.meta.url));

/** Host tools the lab needs, with the Debian package that has each. */
const REQUIRED_TOOLS: Record<string, string> = {
  "qemu-system-x86_64": "qemu-system-x86",
  busybox: "busybox-static",
  modprobe: "kmod",
  depmod: "kmod",
  "dpkg-deb": "dpkg",
  "apt-get": "apt",
};

export type KernelVmFailure = "missing-tool" | "cache" | "timeout" | "no-result";

/** The lab itself failed (not the script in it): missing tools, no kernel, a VM that died or hung. */
export class KernelVmError extends Error {
  override readonly name = "KernelVmError";
  constructor(
    readonly reason: KernelVmFailure,
    message: string,
    /** The end of the guest's serial console, when it ran at all. */
    readonly consoleTail = "",
  ) {
    super(consoleTail ? `${message}\n--- last console lines ---\n${consoleTail}` : message);
  }
}

export interface KernelVmImage {
  cacheDir: string;
  kernelVersion: string;
  kernel: string;
  initrd: string;
  /** The guest's /lib/modules. */
  modulesDir: string;
}

export interface KernelVmOptions {
  /** A bash script on the host; it runs in the guest as root. */
  script: string;
  args?: readonly string[];
  /** Extra environment for the script (the guest starts from a clean one; PATH comes from the host). */
  env?: Record<string, string>;
  /**
   * The script's working directory, a host path (the guest sees the host's tree; see kernelVmGuestPath).
   * Default: process.cwd().
   */
  cwd?: string;
  /** Host directory mounted read-write at /share in the guest, for results. Default: a fresh temp dir. */
  shareDir?: string;
  memoryMb?: number;
  cpus?: number;
  /** The whole run, boot to power-off. The VM is killed after it. Default 10 minutes. */
  timeoutMs?: number;
  cacheDir?: string;
  /** More qemu arguments, e.g. a two-node NUMA layout. */
  qemuArgs?: readonly string[];
  /** The guest's serial console as it arrives (boot lines, then the script's output). */
  onConsole?: (text: string) => void;
}

export interface KernelVmResult {
  /** The script's exit code. */
  exitCode: number;
  /** What the script printed (stdout and stderr together). */
  output: string;
  /** The whole serial console. */
  console: string;
  durationMs: number;
  shareDir: string;
  kernelVersion: string;
}

/**
 * Where a host path is in the guest: the same, except under /tmp, which the guest mounts a tmpfs of its own
 * over (the host's /tmp stays visible at /host-tmp).
 */
export function kernelVmGuestPath(hostPath: string): string {
  const p = resolve(hostPath);
  return p === "/tmp" || p.startsWith("/tmp/") ? `/host-tmp${p.slice(4)}` : p;
}

/** Names (with their Debian packages) of the tools the lab needs that are not on PATH. */
export function kernelVmMissingTools(): string[] {
  return Object.entries(REQUIRED_TOOLS)
    .filter(([tool]) => findOnPath(tool) === undefined)
    .map(([tool, pkg]) => `${tool} (apt-get install -y --no-install-recommends ${pkg})`);
}

/**
 * The cache directory in effect: the option, else $STOWAGE_VM_CACHE, else /var/cache/stowage-vm (root) or
 * ~/.cache/stowage-vm.
 */
export function kernelVmCacheDir(cacheDir?: string): string {
  const explicit = cacheDir ?? process.env.STOWAGE_VM_CACHE;
  if (explicit) return resolve(explicit);
  // Only root may write /var/cache; anyone else builds the cache in their own ~/.cache.
  if (process.getuid?.() === 0) return DEFAULT_KERNEL_VM_CACHE;
  return join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "stowage-vm");
}

/** Builds the guest kernel and initramfs cache if needed (a download the first time), and describes it. */
export async function ensureKernelVmImage(opts: { cacheDir?: string } = {}): Promise<KernelVmImage> {
  const missing = kernelVmMissingTools();
  if (missing.length > 0) {
    throw new KernelVmError("missing-tool", `the kernel VM lab needs: ${missing.join(", ")}`);
  }
  const cacheDir = kernelVmCacheDir(opts.cacheDir);
  const { code, stdout, stderr } = await runCollect("bash", [
    join(KERNEL_VM_DIR, "build-cache.sh"),
    cacheDir,
  ]);
  if (code !== 0) {
    throw new KernelVmError(
      "cache",
      `building the kernel VM cache in ${cacheDir} failed (exit ${code}): ${stderr.trim() || "(no stderr)"}`,
    );
  }
  const kernelVersion = stdout.trim().split("\n").at(-1) ?? "";
  const image: KernelVmImage = {
    cacheDir,
    kernelVersion,
    kernel: join(cacheDir, "kernel", "boot", `vmlinuz-${kernelVersion}`),
    initrd: join(cacheDir, "initrd.gz"),
    modulesDir: join(cacheDir, "kernel", "lib", "modules"),
  };
  for (const f of [image.kernel, image.initrd, image.modulesDir]) {
    if (!(await exists(f))) {
      throw new KernelVmError("cache", `the kernel VM cache in ${cacheDir} lacks ${f}; remove the directory`);
    }
  }
  return image;
}

/**
 * Boots the VM, runs the script, powers off. Resolves with the script's exit code whatever it is; rejects
 * with a KernelVmError only when the lab itself fails (and then the VM is gone: nothing is left running).
 */
export async function runInKernelVm(opts: KernelVmOptions): Promise<KernelVmResult> {
  const image = await ensureKernelVmImage(opts.cacheDir === undefined ? {} : { cacheDir: opts.cacheDir });
  const script = resolve(opts.script);
  if (!(await exists(script))) throw new Error(`kernel VM script ${script} does not exist`);
  const cwd = realpathSync(opts.cwd ?? process.cwd());
  const temp = opts.shareDir === undefined ? await makeTempDir("stowage-vm-share-") : undefined;
  const shareDir = resolve(opts.shareDir ?? temp!.path);
  const control = join(shareDir, ".stowage-vm");
  await rm(control, { recursive: true, force: true });
  await mkdir(control, { recursive: true });
  await copyFile(join(KERNEL_VM_DIR, "guest-init.sh"), join(control, "guest-init.sh"));
  await copyFile(script, join(control, "guest.sh"));
  const env: Record<string, string> = {
    // The guest's root is this machine's root, so the host's PATH (a node under /opt, say) is valid there.
    PATH: [process.env.PATH ?? "", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
      .filter((p) => p !== "")
      .join(delimiter),
    ...opts.env,
    STOWAGE_VM_SCRIPT: script,
    STOWAGE_VM_CWD: kernelVmGuestPath(cwd),
    STOWAGE_VM_SHARE: KERNEL_VM_SHARE,
  };
  await writeFile(join(control, "env"), shellEnv(env));
  await writeFile(join(control, "args"), (opts.args ?? []).map((a) => `${a}\0`).join(""));

  const timeoutMs = opts.timeoutMs ?? DEFAULT_KERNEL_VM_TIMEOUT_MS;
  const qemuArgv = [
    ...["-accel", "tcg,thread=multi", "-cpu", "max"],
    ...["-m", String(opts.memoryMb ?? DEFAULT_KERNEL_VM_MEMORY_MB), "-smp", String(opts.cpus ?? 2)],
    ...["-display", "none", "-nodefaults", "-no-user-config", "-no-reboot"],
    ...["-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con"],
    ...["-kernel", image.kernel, "-initrd", image.initrd],
    // panic=-1 + -no-reboot: a guest that loses PID 1 ends the VM instead of hanging it.
    ...["-append", "console=ttyS0 panic=-1 quiet"],
    ...ninePShare("hostroot", "/", true, "multidevs=remap"),
    ...ninePShare("modules", image.modulesDir, true),
    ...ninePShare("share", shareDir, false),
    ...(opts.qemuArgs ?? []),
  ];

  const consolePath = join(control, "console.log");
  const consoleFile = createWriteStream(consolePath);
  let consoleText = "";
  const started = performance.now();
  const child = spawn("qemu-system-x86_64", qemuArgv, {
    detached: true,
    // stdin stays an open pipe we never write: the serial chardev reads it, and EOF is not an input.
    stdio: ["pipe", "pipe", "pipe"],
  });
  const untrack = child.pid !== undefined ? trackProcess(child.pid, { group: true }) : () => {};
  // One decoder for the console: qemu passes the serial port on a byte or two at a time, and a character
  // split across chunks must not turn into two replacement characters.
  const decoder = new StringDecoder("utf8");
  const onData = (chunk: Buffer) => {
    const text = decoder.write(chunk);
    consoleText += text;
    if (consoleText.length > 8 * 1024 * 1024) consoleText = consoleText.slice(-4 * 1024 * 1024);
    consoleFile.write(chunk);
    opts.onConsole?.(text);
  };
  child.stdout?.on("data", onData);
  child.stderr?.on("data", (chunk: Buffer) => {
    // qemu's own messages (not the guest's): kept in the log, never mixed into a half-decoded character.
    const text = chunk.toString("utf8");
    consoleText += text;
    consoleFile.write(chunk);
    opts.onConsole?.(text);
  });

  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup(child, "SIGKILL");
  }, timeoutMs);
  let exit: { code: number | null; error?: Error };
  try {
    exit = await new Promise((resolveExit) => {
      child.once("error", (error) => resolveExit({ code: null, error }));
      child.once("close", (code) => resolveExit({ code }));
    });
  } finally {
    clearTimeout(timer);
    killGroup(child, "SIGKILL");
    untrack();
    await new Promise<void>((r) => consoleFile.end(r));
  }
  const durationMs = Math.round(performance.now() - started);
  const tail = lastLines(consoleText, 30);

  if (exit.error) {
    throw new KernelVmError("missing-tool", `cannot start qemu-system-x86_64: ${exit.error.message}`);
  }
  const rcText = await readFile(join(control, "rc"), "utf8").catch(() => undefined);
  const exitCode = rcText === undefined ? Number.NaN : Number.parseInt(rcText.trim(), 10);
  if (Number.isNaN(exitCode)) {
    if (timedOut) {
      throw new KernelVmError(
        "timeout",
        `the kernel VM did not finish within ${Math.round(timeoutMs / 1000)} s and was killed (console: ${consolePath})`,
        tail,
      );
    }
    throw new KernelVmError(
      "no-result",
      `the kernel VM stopped (qemu exit ${exit.code}) without the script's exit code (console: ${consolePath})`,
      tail,
    );
  }
  const output = await readFile(join(control, "output.log"), "utf8").catch(() => "");
  return { exitCode, output, console: consoleText, durationMs, shareDir, kernelVersion: image.kernelVersion };
}

/** `-fsdev` + `-device` for one virtio-9p export. */
function ninePShare(tag: string, path: string, readonly: boolean, extra?: string): string[] {
  // qemu option values escape a comma by doubling it.
  const fsdev = [`local,id=fs-${tag},path=${path.replaceAll(",", ",,")},security_model=none`];
  if (readonly) fsdev.push("readonly=on");
  if (extra) fsdev.push(extra);
  return ["-fsdev", fsdev.join(","), "-device", `virtio-9p-pci,fsdev=fs-${tag},mount_tag=${tag}`];
}

/** `export K='v'` lines that bash sources back to exactly the same values. */
function shellEnv(env: Record<string, string>): string {
  return Object.entries(env)
    .map(([k, v]) => {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`invalid environment variable name ${k}`);
      return `export ${k}='${v.replaceAll("'", `'\\''`)}'\n`;
    })
    .join("");
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // Already gone.
  }
}

function findOnPath(tool: string): string | undefined {
  const dirs = [...(process.env.PATH ?? "").split(delimiter), "/usr/sbin", "/sbin"];
  for (const d of dirs) {
    if (d === "") continue;
    try {
      accessSync(join(d, tool), constants.X_OK);
      return join(d, tool);
    } catch {
      // not here
    }
  }
  return undefined;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

function lastLines(text: string, n: number): string {
  return text.replaceAll("\r", "").trimEnd().split("\n").slice(-n).join("\n");
}

function runCollect(
  command: string,
  args: readonly string[],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolveRun) => {
    const child = spawn(command, [...args], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => {
      stdout += c.toString("utf8");
    });
    child.stderr.on("data", (c: Buffer) => {
      stderr += c.toString("utf8");
    });
    child.once("error", (e) => resolveRun({ code: null, stdout, stderr: `${stderr}${e.message}` }));
    child.once("close", (code) => resolveRun({ code, stdout, stderr }));
  });
}

/** The CLI described at the top of this file. */
async function main(argv: string[]): Promise<number> {
  const env: Record<string, string> = {};
  const opts: Partial<KernelVmOptions> = {};
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === "--share") opts.shareDir = value();
    else if (a === "--timeout") opts.timeoutMs = Number(value()) * 1000;
    else if (a === "--memory") opts.memoryMb = Number(value());
    else if (a === "--env") {
      const kv = value();
      const eq = kv.indexOf("=");
      if (eq <= 0) throw new Error(`--env wants K=V, got ${kv}`);
      env[kv.slice(0, eq)] = kv.slice(eq + 1);
    } else if (a === "--") {
      i++;
      break;
    } else if (a.startsWith("--")) throw new Error(`unknown option ${a}`);
    else break;
  }
  const script = argv[i];
  if (script === undefined) {
    process.stderr.write(
      "usage: kernel-vm.ts [--share DIR] [--timeout S] [--memory MB] [--env K=V]... SCRIPT [ARGS...]\n",
    );
    return 2;
  }
  try {
    const result = await runInKernelVm({
      ...opts,
      script,
      args: argv.slice(i + 1),
      env,
      onConsole: (text) => process.stdout.write(text.replaceAll("\r", "")),
    });
    process.stderr.write(
      `kernel-vm: guest script exited ${result.exitCode} after ${(result.durationMs / 1000).toFixed(1)} s (kernel ${result.kernelVersion})\n`,
    );
    return result.exitCode;
  } catch (e) {
    process.stderr.write(`kernel-vm: ${(e as Error).message}\n`);
    return e instanceof KernelVmError && (e.reason === "missing-tool" || e.reason === "cache") ? 2 : 99;
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`kernel-vm: ${(e as Error).message}\n`);
      process.exit(2);
    },
  );
}
