/**
 * A throwaway one-node Ceph (Debian 12 ceph 16.2.15 "pacific") for one test file: one mon, one OSD, optionally
 * one mgr, and a pool `rbd` of size 1, all on 127.0.0.1 with cephx on, speaking msgr2 only, with every file
 * (config, keyrings, mon store, OSD store, sockets, logs) inside one directory. Ready, meaning the pool takes
 * writes, in about 11 s with bluestore and 8 s with memstore.
 *
 * Facts this relies on (probed on the kind of machine the project is tested on):
 * - A host name that is not a valid CRUSH name (`(none)` in a bare VM) makes the OSD exit, so the OSD gets a
 *   fixed `crush location`.
 * - A mgr or OSD reading the global keyring fails cephx (`handle_auth_bad_method`): each daemon has its own.
 * - `bluestore block path` set explicitly breaks mkfs (ELOOP); the default file inside the OSD dir works.
 *   bluestore on tmpfs fails (no O_DIRECT), so a tmpfs dir gets memstore unless told otherwise.
 * - An OSD whose mon is already gone takes ~7 s to exit: stop the OSD first.
 * - Without a mgr the cluster serves rbd/rados fully, but `ceph df` and pool stats read 0 and health turns
 *   HEALTH_WARN (MGR_DOWN) after a minute. Debian ships ceph-mgr separately (`ceph-mgr` package).
 *
 * Daemons run in the foreground (`-f`) as children of the test process, so they are reaped normally and
 * killed (SIGKILL: a throwaway cluster needs no clean shutdown) when the test process exits.
 *
 * Several clusters run side by side: each has its own directory, a free mon port and its own block of ports
 * for the OSD (and mgr) below the kernel's ephemeral range, so `freePort()` users never collide with it.
 *
 * In a test fleet (`netns` and `address`, see netns.ts): the mon and the OSD run inside that namespace, bound to
 * the node's fleet address (mon port 3300, OSD ports from 6800: the namespace has a port space of its own), and
 * the fixture's own ceph/rados/rbd commands run there too; clients on other fleet hosts reach it at
 * `ADDRESS:3300`. The files stay on the shared file system, in the cluster's directory.
 *
 * Environment: STOWAGE_TEST_CEPH_AUTOSTART=1 makes Ceph suites run (and fail) when the binaries are missing,
 * instead of being skipped.
 */
import { randomUUID } from "node:crypto";
import { accessSync, constants } from "node:fs";
import { mkdir, readdir, readFile, statfs, writeFile } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { execa } from "execa";
import { isPortFree, sleep } from "./ports.js";
import { type Service, spawnService } from "./process.js";
import { makeTempDir } from "./temp.js";

export type CephStore = "bluestore" | "memstore";

export interface StartCephOptions {
  /** Where everything lives. Default: a new temp dir, removed by stop(). A given dir is kept (but must not hold a cluster). */
  dir?: string;
  /** The mon's msgr2 port. Default: a free one. */
  monPort?: number;
  /** First of the 100 ports the OSD (and mgr) may bind. Default: a free block below the ephemeral range. */
  osdPortMin?: number;
  /** Default bluestore (on a sparse file), or memstore when the dir is on tmpfs. */
  store?: CephStore;
  /** Size of the OSD's device (bluestore sparse file, or memstore's limit). Default 10 GiB. */
  osdSizeBytes?: number;
  /** Start a ceph-mgr too (needs the ceph-mgr package): HEALTH_OK and a working `ceph df`. Default false. */
  mgr?: boolean;
  /** Default 90 s for the whole start. */
  startTimeoutMs?: number;
  /**
   * Run the mon and the OSD inside this network namespace (a fleet node's, as root), bound to `address`.
   * Default: the root namespace on 127.0.0.1.
   */
  netns?: string;
  /** The address the daemons bind and clients use; required with `netns` (the node's fleet address). */
  address?: string;
}

export interface CephCluster {
  /** Path of ceph.conf; pass it as `--conf` or `CEPH_CONF`. */
  readonly conf: string;
  /** Keyring holding the client.admin key (also the `keyring` of ceph.conf, so `--id admin` alone works). */
  readonly keyring: string;
  /** The client id of the keyring: `admin`. */
  readonly id: string;
  /** The initialised RBD pool: `rbd`. */
  readonly pool: string;
  readonly dir: string;
  readonly fsid: string;
  readonly monPort: number;
  /** Where the daemons listen: 127.0.0.1, or the fleet address given with `netns`. */
  readonly address: string;
  /** The namespace the daemons run in, when started in a fleet. */
  readonly netns: string | undefined;
  /** `v2:ADDRESS:PORT` */
  readonly monHost: string;
  readonly store: CephStore;
  /** For child processes: `{ CEPH_CONF }`. */
  readonly env: { CEPH_CONF: string };
  /** Seconds the start took, for the curious. */
  readonly startSeconds: number;
  /** The last lines of every daemon log, for failure messages. */
  logs(lines?: number): Promise<string>;
  /** Stops the OSD, then mgr and mon; removes the dir if the testkit created it. Idempotent. */
  stop(opts?: { fast?: boolean }): Promise<void>;
}

const CEPH_TOOLS = ["ceph-mon", "ceph-osd", "ceph", "ceph-authtool", "monmaptool", "rados", "rbd"] as const;
const SBIN_DIRS = ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"];
const TMPFS_MAGIC = 0x01021994;
/** Below the ephemeral range (32768+) that freePort() and outgoing connections draw from. */
const OSD_PORT_BLOCKS = { first: 20000, count: 120, size: 100 };

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Path of a Ceph binary on $PATH or in the usual places, or undefined. */
export function cephToolPath(tool: string): string | undefined {
  const dirs = [...(process.env.PATH ?? "").split(delimiter).filter(Boolean), ...SBIN_DIRS];
  return dirs.map((d) => join(d, tool)).find(isExecutable);
}

/**
 * Whether Ceph suites should run: the mon, OSD and client tools are installed, or
 * STOWAGE_TEST_CEPH_AUTOSTART=1 (then a missing binary fails the start loudly). Use:
 * `describe.skipIf(!cephAvailable())`.
 */
export function cephAvailable(): boolean {
  if (process.env.STOWAGE_TEST_CEPH_AUTOSTART === "1") return true;
  return CEPH_TOOLS.every((t) => cephToolPath(t) !== undefined);
}

/** Whether `startCeph({ mgr: true })` can work. */
export function cephMgrAvailable(): boolean {
  return cephToolPath("ceph-mgr") !== undefined;
}

export const CEPH_INSTALL_HINT = "apt-get install ceph-mon ceph-osd ceph-common";

function cephConf(o: {
  dir: string;
  address: string;
  fsid: string;
  monPort: number;
  osdPortMin: number;
  store: CephStore;
  sizeBytes: number;
}): string {
  const d = o.dir;
  return `# written by @stowage/testkit
[global]
fsid = ${o.fsid}
mon host = v2:${o.address}:${o.monPort}
public addr = ${o.address}
cluster addr = ${o.address}
ms bind msgr1 = false
ms bind msgr2 = true
ms bind port min = ${o.osdPortMin}
ms bind port max = ${o.osdPortMin + OSD_PORT_BLOCKS.size - 1}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = ${d}/keyring
run dir = ${d}/run
log file = ${d}/log/$name.log
pid file = ${d}/run/$name.pid
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon allow pool delete = true
# the test disk may be fuller than Ceph likes; that is not what the tests are about
mon data avail warn = 1
mon data avail crit = 0
auth allow insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
mon max pg per osd = 1000
# layering, exclusive-lock, object-map, fast-diff, deep-flatten: what qemu and rbd du/clone/flatten need
rbd default features = 61
# clients (rbd, rados, qemu) run many at once: a fixed socket path per name would collide
[client]
admin socket =
[mon]
admin socket = ${d}/run/$name.asok
mon data = ${d}/mon.$id
mon cluster log file = ${d}/log/cluster.log
[mgr]
admin socket = ${d}/run/$name.asok
mgr data = ${d}/mgr.$id
keyring = ${d}/mgr.$id/keyring
[osd]
admin socket = ${d}/run/$name.asok
osd data = ${d}/osd.$id
keyring = ${d}/osd.$id/keyring
osd objectstore = ${o.store}
# the OSD would use $(hostname), which must be a valid CRUSH name ("(none)" in a bare VM is not)
crush location = root=default host=cephtest
osd memory target = 1073741824
bluestore block create = true
bluestore block size = ${o.sizeBytes}
bluestore fsck on mount = false
memstore device bytes = ${o.sizeBytes}
osd op num shards = 1
osd op num threads per shard = 2
`;
}

/** A block of ports nobody listens on, starting at a random multiple of 100 below the ephemeral range. */
async function freePortBlock(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const block = Math.floor(Math.random() * OSD_PORT_BLOCKS.count);
    const min = OSD_PORT_BLOCKS.first + block * OSD_PORT_BLOCKS.size;
    // The OSD takes the first free ports of its range, so the first few being free is what matters.
    const probes = await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map((i) => isPortFree(min + i)));
    if (probes.every(Boolean)) return min;
  }
  throw new Error("startCeph: found no free block of 100 ports for the OSD below 32768");
}

/** A mon port outside every OSD block, so a neighbour's OSD cannot take it. */
async function freeMonPort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 32000 + Math.floor(Math.random() * 700);
    if (await isPortFree(port)) return port;
  }
  throw new Error("startCeph: found no free port for the mon in 32000-32699");
}

async function onTmpfs(dir: string): Promise<boolean> {
  try {
    return (await statfs(dir)).type === TMPFS_MAGIC;
  } catch {
    return false;
  }
}

/** Starts a one-node cluster and resolves once pool `rbd` takes writes. */
export async function startCeph(opts: StartCephOptions = {}): Promise<CephCluster> {
  const t0 = performance.now();
  const deadline = Date.now() + (opts.startTimeoutMs ?? 90_000);
  const missing = [...CEPH_TOOLS, ...(opts.mgr ? ["ceph-mgr"] : [])].filter((t) => !cephToolPath(t));
  if (missing.length > 0) {
    throw new Error(
      `startCeph: ${missing.join(", ")} not found: ${CEPH_INSTALL_HINT}${opts.mgr ? " ceph-mgr" : ""}`,
    );
  }
  if (opts.netns !== undefined && !/^[0-9.]+$/.test(opts.address ?? "")) {
    throw new Error("startCeph: netns needs the node's IPv4 address (address)");
  }
  const address = opts.address ?? "127.0.0.1";
  const netns = opts.netns;
  const temp = opts.dir ? undefined : await makeTempDir("stowage-ceph-");
  const dir = opts.dir ?? temp!.path;
  const conf = join(dir, "ceph.conf");
  const keyring = join(dir, "keyring");
  const env = { CEPH_CONF: conf };
  const store: CephStore = opts.store ?? ((await onTmpfs(dir)) ? "memstore" : "bluestore");
  const fsid = randomUUID();
  const daemons: { name: string; service: Service }[] = [];
  let stopped = false;

  /** Runs a Ceph command line tool against this cluster; throws with its output when it fails. */
  const tool = async (cmd: string, args: string[], o: { input?: string; timeoutMs?: number } = {}) => {
    const argv = ["--conf", conf, ...args];
    const r = await execa(netns ? "ip" : cmd, netns ? ["netns", "exec", netns, cmd, ...argv] : argv, {
      env: { ...env, LC_ALL: "C" },
      reject: false,
      all: true,
      timeout: o.timeoutMs ?? 30_000,
      ...(o.input !== undefined ? { input: o.input } : { stdin: "ignore" as const }),
    });
    return r;
  };
  const must = async (cmd: string, args: string[], o: { input?: string; timeoutMs?: number } = {}) => {
    const r = await tool(cmd, args, o);
    if (r.exitCode !== 0) {
      throw new Error(`${cmd} ${args.join(" ")} failed (exit ${r.exitCode}): ${(r.all ?? "").trim()}`);
    }
    return (r.stdout ?? "").trim();
  };
  const daemon = async (name: string, cmd: string, args: string[]) => {
    const service = await spawnService({
      name: `${cmd} ${name}`,
      command: cephToolPath(cmd)!,
      args: ["-f", "--conf", conf, ...args],
      env,
      logFile: join(dir, "log", `${name}.out`),
      stopTimeoutMs: 10_000,
      ...(netns ? { netns } : {}),
    });
    daemons.push({ name, service });
    return service;
  };
  const waitFor = async (what: string, probe: () => Promise<boolean>) => {
    while (!(await probe())) {
      for (const d of daemons) {
        if (!d.service.running) throw new Error(`${d.name} exited while waiting for ${what}`);
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(200);
    }
  };

  const halt = async (fast: boolean) => {
    // OSD first: with its mon gone an OSD takes ~7 s to give up.
    const order = [...daemons].sort((a, b) => rank(a.name) - rank(b.name));
    for (const d of order) await (fast ? d.service.kill() : d.service.stop("SIGTERM"));
    daemons.length = 0;
  };

  const logs = async (lines = 20): Promise<string> => {
    const logDir = join(dir, "log");
    const files = await readdir(logDir).catch(() => [] as string[]);
    const parts: string[] = [];
    for (const f of files.sort()) {
      const text = await readFile(join(logDir, f), "utf8").catch(() => "");
      const tail = text.trimEnd().split("\n").slice(-lines).join("\n");
      if (tail) parts.push(`--- ${join(logDir, f)}\n${tail}`);
    }
    return parts.join("\n");
  };

  let monPort = opts.monPort ?? 0;
  try {
    await mkdir(dir, { recursive: true });
    if ((await readdir(dir)).includes("ceph.conf")) {
      throw new Error(`${dir} already holds a cluster (ceph.conf); stop it or use another dir`);
    }
    for (const sub of ["mon.a", "osd.0", "mgr.x", "run", "log"])
      await mkdir(join(dir, sub), { recursive: true });
    // In a namespace of its own the ports are the cluster's alone: Ceph's defaults.
    monPort = opts.monPort ?? (netns ? 3300 : await freeMonPort());
    const osdPortMin = opts.osdPortMin ?? (netns ? 6800 : await freePortBlock());
    const sizeBytes = opts.osdSizeBytes ?? 10 * 1024 ** 3;
    await writeFile(conf, cephConf({ dir, address, fsid, monPort, osdPortMin, store, sizeBytes }));

    // Keys and the mon: the mon. key and client.admin share the global keyring, as ceph-deploy did.
    await execa("ceph-authtool", [
      "--create-keyring",
      keyring,
      "--gen-key",
      "-n",
      "mon.",
      "--cap",
      "mon",
      "allow *",
    ]);
    await execa("ceph-authtool", [
      keyring,
      "--gen-key",
      "-n",
      "client.admin",
      ...["--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"],
      ...["--cap", "mds", "allow *"],
    ]);
    const monmap = join(dir, "monmap");
    await execa("monmaptool", [
      "--create",
      "--clobber",
      "--fsid",
      fsid,
      "--addv",
      "a",
      `[v2:${address}:${monPort}]`,
      monmap,
    ]);
    await must("ceph-mon", ["--mkfs", "-i", "a", "--monmap", monmap, "--keyring", keyring]);
    await daemon("mon.a", "ceph-mon", ["-i", "a"]);
    await waitFor("the mon to form a quorum", async () => {
      return (
        (await tool("ceph", ["--connect-timeout", "2", "mon", "stat"], { timeoutMs: 10_000 })).exitCode === 0
      );
    });

    // The OSD: registered with its own key, then mkfs (bluestore on a sparse file: ~2.5 s), then started.
    const osdUuid = randomUUID();
    const osdKey = (await execa("ceph-authtool", ["--gen-print-key"])).stdout.trim();
    const osdId = await must("ceph", ["osd", "new", osdUuid, "-i", "-"], {
      input: JSON.stringify({ cephx_secret: osdKey }),
    });
    if (osdId !== "0") throw new Error(`ceph osd new gave osd id ${JSON.stringify(osdId)}, expected 0`);
    await execa("ceph-authtool", [
      "--create-keyring",
      join(dir, "osd.0", "keyring"),
      "--name",
      "osd.0",
      "--add-key",
      osdKey,
    ]);
    await must("ceph-osd", ["-i", "0", "--mkfs", "--osd-uuid", osdUuid], { timeoutMs: 60_000 });
    await daemon("osd.0", "ceph-osd", ["-i", "0"]);

    if (opts.mgr) {
      const mgrKeyring = await must("ceph", [
        ...["auth", "get-or-create", "mgr.x"],
        ...["mon", "allow profile mgr", "osd", "allow *", "mds", "allow *"],
      ]);
      await writeFile(join(dir, "mgr.x", "keyring"), `${mgrKeyring}\n`);
      await daemon("mgr.x", "ceph-mgr", ["-i", "x"]);
    }

    await waitFor("osd.0 to come up", async () => {
      const r = await tool("ceph", ["osd", "stat", "--format", "json"], { timeoutMs: 10_000 });
      try {
        return r.exitCode === 0 && JSON.parse(r.stdout ?? "").num_up_osds === 1;
      } catch {
        return false;
      }
    });

    await must("ceph", ["osd", "pool", "create", "rbd", "8", "8"]);
    await must("rbd", ["pool", "init", "rbd"]);
    // Writable once its PGs are active; each try is bounded because a put to an inactive PG blocks.
    const probe = join(dir, "run", "probe");
    await writeFile(probe, "stowage\n");
    await waitFor("pool rbd to take writes", async () => {
      return (
        (await tool("rados", ["-p", "rbd", "put", "_probe", probe], { timeoutMs: 5_000 })).exitCode === 0
      );
    });
    await must("rados", ["-p", "rbd", "rm", "_probe"]);

    if (opts.mgr) {
      await waitFor("HEALTH_OK", async () => {
        const r = await tool("ceph", ["health"], { timeoutMs: 10_000 });
        return (r.stdout ?? "").trim() === "HEALTH_OK";
      });
    }
  } catch (err) {
    const tail = await logs(15);
    await halt(true).catch(() => {});
    await temp?.cleanup();
    throw new Error(
      `startCeph (dir ${dir}, mon ${address}:${monPort}${netns ? ` in ${netns}` : ""}, ${store}): ${(err as Error).message}${tail ? `\n${tail}` : ""}`,
      { cause: err },
    );
  }

  return {
    conf,
    keyring,
    id: "admin",
    pool: "rbd",
    dir,
    fsid,
    monPort,
    address,
    netns,
    monHost: `v2:${address}:${monPort}`,
    store,
    env,
    startSeconds: Math.round((performance.now() - t0) / 100) / 10,
    logs,
    async stop(stopOpts: { fast?: boolean } = {}) {
      if (stopped) return;
      stopped = true;
      await halt(stopOpts.fast ?? false);
      await temp?.cleanup();
    },
  };
}

function rank(name: string): number {
  return name.startsWith("osd.") ? 0 : name.startsWith("mgr.") ? 1 : 2;
}
