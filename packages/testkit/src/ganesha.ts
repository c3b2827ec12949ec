/**
 * A private NFS-Ganesha (4.3, FSAL_VFS) serving one directory over NFSv3 for one test, with its own rpcbind.
 * NFSv3 is what qemu's `nfs://` driver (libnfs) speaks, and v3 needs the portmapper on port 111: Ganesha
 * registers its NFS and MOUNT programs there at start and exits when it cannot.
 *
 * Each instance runs in a mount namespace of its own (`unshare -m`) with a fresh tmpfs on /run, where its
 * rpcbind keeps its lock file and its local socket (`/run/rpcbind.sock`): that socket is a path on the
 * shared file system, so without the private /run a second rpcbind would refuse to start and a Ganesha in
 * another network namespace would register with the wrong portmapper.
 *
 * - In a network namespace of its own (`netns`, e.g. a fleet host without an agent): its rpcbind binds :111
 *   of that namespace, so any number of these run side by side, one per namespace.
 * - In the test's own namespace (no `netns`): port 111 is machine-wide, so only one v3 server can run at a
 *   time. startGanesha takes the lock file GANESHA_ROOT_LOCK (its content: the holder's pid) and waits for
 *   it (up to `lockTimeoutMs`); a lock whose holder is dead is taken over. stop() releases it.
 *
 * Facts (Debian 12): must run as root (FSAL_VFS needs CAP_DAC_READ_SEARCH for open_by_handle_at; as another
 * user every operation fails with a permission error); ready in 0.2-0.5 s, on the log line `NFS SERVER
 * INITIALIZED`; SIGTERM ends it in about a second. Ganesha resolves its bind address with AI_ADDRCONFIG,
 * so in a namespace that only has a loopback address, 127.0.0.1 is "not found": give it the namespace's
 * real address. Files created through libnfs or qemu get mode 0600 and uid 0 (No_Root_Squash).
 * Harmless log noise: dbus CRIT lines (no system bus), krb5 warnings, "Missing RADOS URLs backend library".
 */
import { accessSync, constants, readFileSync, rmSync, writeFileSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { trackDir } from "./cleanup.js";
import { freePort, sleep } from "./ports.js";
import { type Service, serviceView, spawnService, toolPath } from "./process.js";

export interface StartGaneshaOptions {
  /** Its configuration, log and the exported directory (DIR/export) go here; made if missing, and kept. */
  dir: string;
  /** Run in this network namespace (`PREFIX-h3`); default: the test's own (one at a time, see above). */
  netns?: string;
  /** The address it binds (NFS, MOUNT and, through rpcbind, the portmapper). Default 127.0.0.1. */
  address?: string;
  /** The path clients mount (Ganesha's Pseudo path), e.g. "/export". */
  exportPath: string;
  /** NFS and MOUNT ports (registered with rpcbind). Default: 2049 and 20048 in a namespace of its own, free ports otherwise. */
  nfsPort?: number;
  mountPort?: number;
  /** Default 15 s. */
  startTimeoutMs?: number;
  /** How long to wait for the machine-wide lock in the test's own namespace. Default 300 s. */
  lockTimeoutMs?: number;
}

export interface GaneshaService extends Service {
  readonly address: string;
  readonly exportPath: string;
  /** The exported directory on this machine's file system (what NFS clients see under `exportPath`). */
  readonly exportDir: string;
  /** `nfs://ADDRESS/EXPORTPATH`: what libnfs and qemu-img open. */
  readonly url: string;
  readonly nfsPort: number;
  readonly mountPort: number;
}

/** The lock file for the one NFSv3 server of the root network namespace (rpcbind's :111 is machine-wide). */
export const GANESHA_ROOT_LOCK = "/run/stowage-testkit/ganesha-v3.lock";
export const GANESHA_INSTALL_HINT =
  "apt-get install -y --no-install-recommends nfs-ganesha nfs-ganesha-vfs libnfs-utils rpcbind";
const READY_LINE = "NFS SERVER INITIALIZED";
const PLUGINS_DIR = "/usr/lib/x86_64-linux-gnu/ganesha";

/** Whether Ganesha suites can run here: root, ganesha.nfsd with FSAL_VFS, rpcbind, rpcinfo, unshare; else the reason. */
export function ganeshaAvailable(): { ok: true } | { ok: false; reason: string } {
  if (process.getuid?.() !== 0) return { ok: false, reason: "nfs-ganesha with FSAL_VFS needs root" };
  const missing = ["ganesha.nfsd", "rpcbind", "rpcinfo", "unshare"].filter((t) => !toolPath(t));
  try {
    accessSync(join(PLUGINS_DIR, "libfsalvfs.so"), constants.R_OK);
  } catch {
    missing.push("FSAL_VFS (nfs-ganesha-vfs)");
  }
  if (missing.length > 0)
    return { ok: false, reason: `${missing.join(", ")} not found: ${GANESHA_INSTALL_HINT}` };
  return { ok: true };
}

/**
 * Runs in the service's own mount namespace: a private /run, rpcbind in the background (same process group,
 * so stop() ends it too), and once it answers, Ganesha in the foreground (exec: the service's pid is
 * Ganesha's). Arguments, never interpolated: $1 address, $2 config, $3 log, $4 pid file.
 */
const WRAPPER = `set -e
mount -t tmpfs -o mode=0755 stowage-ganesha-run /run
mkdir -p /run/rpcbind
rpcbind -f &
i=0
until rpcinfo -p "$1" >/dev/null 2>&1; do
  i=$((i + 1)); [ "$i" -le 100 ] || { echo "rpcbind did not answer on $1" >&2; exit 1; }
  sleep 0.05
done
exec ganesha.nfsd -F -f "$2" -L "$3" -p "$4"`;

function ganeshaConfig(o: {
  address: string;
  nfsPort: number;
  mountPort: number;
  exportDir: string;
  exportPath: string;
  recovDir: string;
}): string {
  return `NFS_CORE_PARAM {
  Bind_addr = ${o.address};
  NFS_Port = ${o.nfsPort};
  MNT_Port = ${o.mountPort};
  Protocols = 3;
  mount_path_pseudo = true;
  Enable_NLM = false;
  Enable_RQUOTA = false;
  Enable_UDP = false;
  Plugins_Dir = ${PLUGINS_DIR};
}
NFSV4 { Graceless = true; RecoveryRoot = ${o.recovDir}; }
NFS_KRB5 { Active_krb5 = false; }
EXPORT {
  Export_Id = 1;
  Path = ${o.exportDir};
  Pseudo = ${o.exportPath};
  Access_Type = RW;
  Squash = No_Root_Squash;
  SecType = sys;
  Protocols = 3;
  Transports = TCP;
  FSAL { Name = VFS; }
}
LOG { Default_Log_Level = EVENT; }
`;
}

function pidAlive(pid: number): boolean {
  try {
    return !/^State:\s*[ZX]/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return false;
  }
}

/** Takes GANESHA_ROOT_LOCK (O_EXCL), taking over a lock whose holder is gone; returns its release. */
async function takeRootLock(timeoutMs: number): Promise<() => void> {
  await mkdir(join(GANESHA_ROOT_LOCK, ".."), { recursive: true });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      writeFileSync(GANESHA_ROOT_LOCK, `${process.pid}\n`, { flag: "wx" });
      const untrack = trackDir(GANESHA_ROOT_LOCK);
      return () => {
        try {
          if (readFileSync(GANESHA_ROOT_LOCK, "utf8").trim() === String(process.pid))
            rmSync(GANESHA_ROOT_LOCK, { force: true });
        } catch {
          // already gone
        }
        untrack();
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    let holder = Number.NaN;
    try {
      holder = Number(readFileSync(GANESHA_ROOT_LOCK, "utf8").trim());
    } catch {
      continue; // released in between
    }
    if (!Number.isInteger(holder) || holder <= 0 || !pidAlive(holder)) {
      rmSync(GANESHA_ROOT_LOCK, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `startGanesha: the root namespace's NFSv3 server lock ${GANESHA_ROOT_LOCK} is held by pid ${holder} (only one v3 server per namespace: port 111); run it in a network namespace of its own`,
      );
    }
    await sleep(200);
  }
}

const ADDRESS = /^(?:\d{1,3}\.){3}\d{1,3}$/;
const EXPORT_PATH = /^(?:\/[A-Za-z0-9._-]+)+$/;

/** Starts Ganesha (and its rpcbind) and resolves once it logs `NFS SERVER INITIALIZED`. */
export async function startGanesha(opts: StartGaneshaOptions): Promise<GaneshaService> {
  const avail = ganeshaAvailable();
  if (!avail.ok) throw new Error(`startGanesha: ${avail.reason}`);
  const address = opts.address ?? "127.0.0.1";
  if (!ADDRESS.test(address)) throw new Error(`startGanesha: address ${address} is not an IPv4 address`);
  if (!EXPORT_PATH.test(opts.exportPath) || opts.exportPath.split("/").some((p) => p === "." || p === "..")) {
    throw new Error(
      `startGanesha: export path ${JSON.stringify(opts.exportPath)} must be absolute, plain names only`,
    );
  }
  const ownNamespace = opts.netns !== undefined;
  const release = ownNamespace ? () => {} : await takeRootLock(opts.lockTimeoutMs ?? 300_000);
  try {
    const nfsPort = opts.nfsPort ?? (ownNamespace ? 2049 : await freePort(address));
    const mountPort = opts.mountPort ?? (ownNamespace ? 20048 : await freePort(address));
    const exportDir = join(opts.dir, "export");
    const recovDir = join(opts.dir, "recov");
    await mkdir(exportDir, { recursive: true });
    await mkdir(recovDir, { recursive: true });
    const conf = join(opts.dir, "ganesha.conf");
    const log = join(opts.dir, "ganesha.log");
    writeFileSync(
      conf,
      ganeshaConfig({ address, nfsPort, mountPort, exportDir, recovDir, exportPath: opts.exportPath }),
    );
    // A log from an earlier run in the same dir must not satisfy readiness.
    writeFileSync(log, "");
    const service = await spawnService({
      name: `ganesha ${address} ${opts.exportPath}${opts.netns ? ` in ${opts.netns}` : ""}`,
      command: toolPath("unshare")!,
      args: [
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        WRAPPER,
        "stowage-ganesha",
        address,
        conf,
        log,
        join(opts.dir, "ganesha.pid"),
      ],
      logFile: join(opts.dir, "stdout.log"),
      stopTimeoutMs: 5_000,
      ...(opts.netns ? { netns: opts.netns } : {}),
    });
    const deadline = Date.now() + (opts.startTimeoutMs ?? 15_000);
    for (;;) {
      let text = "";
      try {
        text = readFileSync(log, "utf8");
      } catch {
        // not yet written
      }
      if (text.includes(READY_LINE)) break;
      if (!service.running || Date.now() > deadline) {
        await service.kill();
        const logTail = text.split("\n").slice(-15).join("\n");
        throw new Error(
          `ganesha on ${address} did not come up (${service.running ? "timeout" : "exited"}): ${service.logTail(10)}\n${logTail}`,
        );
      }
      await sleep(50);
    }
    let stopping: Promise<number | null> | undefined;
    const stop = (signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> => {
      stopping ??= service.stop(signal).finally(release);
      return stopping;
    };
    return serviceView<GaneshaService>(service, {
      address,
      exportPath: opts.exportPath,
      exportDir,
      url: `nfs://${address}${opts.exportPath}`,
      nfsPort,
      mountPort,
      stop,
      kill: () => service.kill().finally(release),
    });
  } catch (e) {
    release();
    throw e;
  }
}
