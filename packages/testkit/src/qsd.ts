/**
 * A private `qemu-storage-daemon` for one test: QEMU's block layer, NBD server and block jobs without a guest,
 * driven over QMP on a unix socket in the test's directory. It plays both sides of the live-migration data
 * path that libvirt drives under `virsh migrate --copy-storage-all`: the destination serves the pre-created
 * destination image over NBD (as the destination QEMU does with `nbd-server-start`/`nbd-server-add`), the
 * source runs `blockdev-mirror` into an NBD blockdev pointing at it.
 *
 * Facts (Debian 12, qemu-system-common 7.2): `--blockdev`, `--nbd-server` and `--export` take JSON (what this
 * file passes: no option-string escaping of paths), `--chardev` takes QemuOpts (a comma in a value is written
 * as two). The daemon handles its options in order, so with the monitor last, a QMP greeting means every
 * blockdev and export on the command line is in place. It has no HMP (`human-monitor-command` is missing).
 * Ready in about 50 ms; SIGTERM ends it at once. A path-based unix socket is reachable from every network
 * namespace, so the test process talks QMP to a daemon running in a fleet host's namespace.
 *
 * Node names are built here from the test's ids: blockdev `ID` is the format node `ID` on the protocol node
 * `ID-file`. Everything reaches the daemon as argv or as JSON over QMP; nothing passes through a shell.
 */
import { mkdir, rm } from "node:fs/promises";
import { createConnection, type Socket } from "node:net";
import { join } from "node:path";
import { sleep } from "./ports.js";
import { type Service, serviceView, spawnService, toolPath } from "./process.js";

export const QSD_INSTALL_HINT =
  "apt-get install -y qemu-system-common qemu-utils (qemu-system-x86 pulls qemu-system-common in)";

/** Whether qemu-storage-daemon suites can run: the daemon, qemu-img and qemu-io installed; else the reason. */
export function qsdAvailable(): { ok: true } | { ok: false; reason: string } {
  const missing = ["qemu-storage-daemon", "qemu-img", "qemu-io"].filter((t) => !toolPath(t));
  if (missing.length > 0)
    return { ok: false, reason: `${missing.join(", ")} not found: ${QSD_INSTALL_HINT}` };
  return { ok: true };
}

/** An id the test gives a blockdev, an export or a job: a letter, then letters, digits or `-` (QEMU's node-name rules, kept short). */
const ID_PATTERN = /^[a-zA-Z][a-zA-Z0-9-]{0,23}$/;

function checkId(what: string, id: string): void {
  if (!ID_PATTERN.test(id)) throw new Error(`qsd: ${what} ${JSON.stringify(id)} must match ${ID_PATTERN}`);
}

export interface QsdBlockdev {
  /** The format node's name (the device a mirror copies, the node an export serves); its file node is `ID-file`. */
  id: string;
  /** The image on this machine's file system. */
  path: string;
  format: "raw" | "qcow2";
  readOnly?: boolean;
}

export interface QsdExport {
  /** The export's id (for `block-export-del`); also its NBD name unless `name` is given. */
  id: string;
  /** The blockdev id it serves. */
  node: string;
  name?: string;
  writable?: boolean;
}

export interface StartQsdOptions {
  /** The QMP socket (DIR/qmp.sock) and the log (DIR/qsd.log) go here; made if missing. */
  dir: string;
  /** Run in this network namespace (`PREFIX-h1`); default: the test's own. */
  netns?: string;
  blockdevs?: readonly QsdBlockdev[];
  /** Start the NBD server on address:port (inside `netns` when given). */
  nbd?: { address: string; port: number };
  /** NBD exports of blockdevs (needs `nbd`). */
  exports?: readonly QsdExport[];
  /** Default 10 s. */
  startTimeoutMs?: number;
}

/** A QMP error answer: `class` is QEMU's error class (GenericError, CommandNotFound, DeviceNotFound...). */
export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`qmp ${command}: ${errorClass}: ${desc}`);
    this.name = "QmpError";
  }
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

/** One entry of `query-jobs`. `error` is set on a job that concluded with one. */
export interface QemuJob {
  id: string;
  type: string;
  status: string;
  "current-progress": number;
  "total-progress": number;
  error?: string;
}

export interface QsdService extends Service {
  readonly socketPath: string;
  /**
   * Sends one QMP command and resolves with its `return`; rejects with a QmpError on an error answer, or
   * after `timeoutMs` (default 10 s) without an answer. Commands are sent one at a time, in call order.
   */
  qmp(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<unknown>;
  /** Every event received so far (oldest first), optionally only those named `name`. */
  events(name?: string): QmpEvent[];
  /** Adds the blockdev `id` (format node `id` on file node `id-file`) for an image on this machine. */
  addImage(dev: QsdBlockdev): Promise<void>;
  /** Adds the blockdev `id`: an NBD client of export `exportName` on host:port (a migration target). */
  addNbdClient(opts: { id: string; host: string; port: number; exportName: string }): Promise<void>;
  /** `blockdev-del` of a node; for an image also its file node. */
  blockdevDel(id: string): Promise<void>;
  /** `nbd-server-start` on address:port. */
  nbdServerStart(opts: { address: string; port: number }): Promise<void>;
  /** `nbd-server-add` (what libvirt runs on the destination QEMU): an NBD export of a node. Default writable. */
  nbdServerAdd(opts: { node: string; name?: string; writable?: boolean }): Promise<void>;
  /** `block-export-add` of type nbd. Default writable. */
  blockExportAdd(exp: QsdExport): Promise<void>;
  /** `block-export-del` (mode hard: open NBD connections are dropped). */
  blockExportDel(id: string): Promise<void>;
  /** `blockdev-mirror` of `device` into `target` as job `jobId`, with auto-dismiss off so its end can be read. */
  blockdevMirror(opts: {
    device: string;
    target: string;
    sync: "full" | "top" | "none";
    jobId: string;
    /** Bytes per second; 0 (default) is unlimited. */
    speed?: number;
    /** The copy buffer (QEMU's default 16 MiB); smaller makes a rate-limited job act sooner on what happens. */
    bufSize?: number;
  }): Promise<void>;
  /** `block-job-set-speed`: a new rate limit for a running job (0: unlimited). */
  setJobSpeed(jobId: string, speed: number): Promise<void>;
  queryJobs(): Promise<QemuJob[]>;
  /** Waits until job `jobId` is ready (mirror: in sync); throws if it concludes or vanishes first, or after `timeoutMs` (default 30 s). */
  waitJobReady(jobId: string, timeoutMs?: number): Promise<QemuJob>;
  /** `job-complete`: a ready mirror switches over and ends. */
  jobComplete(jobId: string): Promise<void>;
  /** `job-cancel`. */
  jobCancel(jobId: string): Promise<void>;
  /**
   * Waits until job `jobId` has concluded (default 30 s), dismisses it, and resolves with its last state;
   * `error` is set when it failed. Throws if the job does not exist.
   */
  waitJobConcluded(jobId: string, timeoutMs?: number): Promise<QemuJob>;
}

/** Escapes a QemuOpts value (the --chardev option string): a comma is written as two. */
function optValue(v: string): string {
  return v.replaceAll(",", ",,");
}

function imageBlockdevs(dev: QsdBlockdev): [Record<string, unknown>, Record<string, unknown>] {
  checkId("blockdev id", dev.id);
  const ro = dev.readOnly === true;
  return [
    { driver: "file", "node-name": `${dev.id}-file`, filename: dev.path, "read-only": ro },
    { driver: dev.format, "node-name": dev.id, file: `${dev.id}-file`, "read-only": ro },
  ];
}

function nbdExportArgs(exp: QsdExport): Record<string, unknown> {
  checkId("export id", exp.id);
  checkId("export node", exp.node);
  return {
    type: "nbd",
    id: exp.id,
    "node-name": exp.node,
    name: exp.name ?? exp.id,
    writable: exp.writable !== false,
  };
}

/** A QMP client on a unix socket: greeting, `qmp_capabilities`, then one command at a time. */
class QmpClient {
  private buf = "";
  private readonly eventLog: QmpEvent[] = [];
  private pending: { resolve: (m: Record<string, unknown>) => void; id: string } | undefined;
  private closedWith: Error | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private seq = 0;
  private greeting: ((m: Record<string, unknown>) => void) | undefined;
  private readonly eventWaiters = new Set<() => void>();

  private constructor(
    private readonly socket: Socket,
    private readonly label: string,
  ) {
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      this.buf += chunk;
      for (let nl = this.buf.indexOf("\n"); nl >= 0; nl = this.buf.indexOf("\n")) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (line) this.onMessage(line);
      }
    });
    const onClose = (err?: Error) => {
      this.closedWith ??= new Error(`${this.label}: QMP connection closed${err ? ` (${err.message})` : ""}`);
      const p = this.pending;
      this.pending = undefined;
      p?.resolve({ closed: true });
      for (const w of this.eventWaiters) w();
    };
    socket.on("error", onClose);
    socket.on("close", () => onClose());
  }

  private onMessage(line: string): void {
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // QMP sends one JSON object a line; anything else is not ours to answer
    }
    if ("QMP" in m) {
      this.greeting?.(m);
      return;
    }
    if (typeof m.event === "string") {
      this.eventLog.push(m as unknown as QmpEvent);
      for (const w of this.eventWaiters) w();
      return;
    }
    if (this.pending && m.id === this.pending.id) {
      const p = this.pending;
      this.pending = undefined;
      p.resolve(m);
    }
  }

  /** Connects, reads the greeting and negotiates capabilities. */
  static async open(path: string, label: string, timeoutMs: number): Promise<QmpClient> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = createConnection({ path });
      s.once("connect", () => resolve(s));
      s.once("error", reject);
    });
    const client = new QmpClient(socket, label);
    const greeted = new Promise<"ok">((resolve) => {
      client.greeting = () => resolve("ok");
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), timeoutMs);
    });
    const outcome = await Promise.race([greeted, timeout]);
    clearTimeout(timer);
    if (outcome !== "ok") {
      socket.destroy();
      throw new Error(`${label}: no QMP greeting within ${timeoutMs} ms`);
    }
    await client.execute("qmp_capabilities", undefined, timeoutMs);
    return client;
  }

  execute(command: string, args: Record<string, unknown> | undefined, timeoutMs: number): Promise<unknown> {
    const run = async (): Promise<unknown> => {
      if (this.closedWith) throw new Error(`qmp ${command}: ${this.closedWith.message}`);
      const id = `c${++this.seq}`;
      const answer = new Promise<Record<string, unknown>>((resolve) => {
        this.pending = { resolve, id };
      });
      this.socket.write(
        `${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`,
      );
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), timeoutMs);
      });
      const m = await Promise.race([answer, timeout]);
      clearTimeout(timer);
      if (m === "timeout") {
        this.pending = undefined;
        // A late answer would be taken for the next command's: this connection is no longer usable.
        this.closedWith = new Error(`${this.label}: ${command} got no answer within ${timeoutMs} ms`);
        this.socket.destroy();
        throw new Error(`qmp ${command}: no answer within ${timeoutMs} ms (${this.label})`);
      }
      if (m.closed) throw new Error(`qmp ${command}: ${this.closedMessage()}`);
      if (m.error) {
        const e = m.error as { class?: string; desc?: string };
        throw new QmpError(command, e.class ?? "Error", e.desc ?? JSON.stringify(m.error));
      }
      return m.return;
    };
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private closedMessage(): string {
    return this.closedWith?.message ?? "QMP connection closed";
  }

  events(name?: string): QmpEvent[] {
    return name ? this.eventLog.filter((e) => e.event === name) : [...this.eventLog];
  }

  /** Resolves at the next event (or close), or after `ms`. */
  nextEvent(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.eventWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.eventWaiters.add(done);
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

/**
 * Starts a qemu-storage-daemon with the given images, NBD server and exports, and resolves once its QMP
 * monitor answers. Fails (with the daemon's last output) if it exits first, e.g. on a missing image.
 */
export async function startQemuStorageDaemon(opts: StartQsdOptions): Promise<QsdService> {
  const avail = qsdAvailable();
  if (!avail.ok) throw new Error(`startQemuStorageDaemon: ${avail.reason}`);
  const blockdevs = opts.blockdevs ?? [];
  const exports = opts.exports ?? [];
  if (exports.length > 0 && !opts.nbd) throw new Error("startQemuStorageDaemon: exports need an nbd server");
  const socketPath = join(opts.dir, "qmp.sock");
  if (Buffer.byteLength(socketPath) > 107)
    throw new Error(`startQemuStorageDaemon: ${socketPath} is too long for a unix socket`);
  await mkdir(opts.dir, { recursive: true });
  await rm(socketPath, { force: true });

  const args: string[] = [];
  for (const dev of blockdevs)
    for (const node of imageBlockdevs(dev)) args.push("--blockdev", JSON.stringify(node));
  if (opts.nbd) {
    const { address, port } = opts.nbd;
    args.push("--nbd-server", JSON.stringify({ addr: { type: "inet", host: address, port: String(port) } }));
  }
  for (const exp of exports) args.push("--export", JSON.stringify(nbdExportArgs(exp)));
  // The monitor last: its greeting then means everything above is in place.
  args.push("--chardev", `socket,id=qmp0,path=${optValue(socketPath)},server=on,wait=off`);
  args.push("--monitor", "chardev=qmp0");

  const label = `qemu-storage-daemon${opts.netns ? ` in ${opts.netns}` : ""} (${opts.dir})`;
  const service = await spawnService({
    name: label,
    command: toolPath("qemu-storage-daemon")!,
    args,
    logFile: join(opts.dir, "qsd.log"),
    stopTimeoutMs: 5_000,
    ...(opts.netns ? { netns: opts.netns } : {}),
  });

  const timeoutMs = opts.startTimeoutMs ?? 10_000;
  const deadline = Date.now() + timeoutMs;
  let client: QmpClient | undefined;
  let lastErr: Error | undefined;
  while (!client) {
    if (!service.running || Date.now() > deadline) {
      await service.kill();
      throw new Error(
        `${label}: ${service.running ? `no QMP within ${timeoutMs} ms` : "exited before its QMP monitor answered"}${lastErr ? ` (${lastErr.message})` : ""}; last output:\n${service.logTail(20)}`,
      );
    }
    try {
      client = await QmpClient.open(socketPath, label, Math.max(500, deadline - Date.now()));
    } catch (err) {
      lastErr = err as Error;
      await sleep(30);
    }
  }
  const qmpClient = client;

  const qmp = (command: string, a?: Record<string, unknown>, ms = 10_000) =>
    qmpClient.execute(command, a, ms);
  const queryJobs = async () => (await qmp("query-jobs")) as QemuJob[];
  const job = async (jobId: string) => (await queryJobs()).find((j) => j.id === jobId);
  const imageIds = new Set(blockdevs.map((d) => d.id));

  /** Polls the job (and wakes on every event) until `done(job)` says so. */
  const waitJob = async (
    jobId: string,
    timeoutMs: number,
    what: string,
    done: (j: QemuJob) => "yes" | "no" | string,
  ): Promise<QemuJob> => {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const j = await job(jobId);
      if (!j) throw new Error(`${label}: job ${jobId} does not exist (waiting until ${what})`);
      const verdict = done(j);
      if (verdict === "yes") return j;
      if (verdict !== "no") throw new Error(`${label}: job ${jobId} ${verdict}`);
      if (Date.now() > end)
        throw new Error(
          `${label}: job ${jobId} not ${what} after ${timeoutMs} ms (status ${j.status}, ${j["current-progress"]}/${j["total-progress"]})`,
        );
      await qmpClient.nextEvent(Math.min(200, Math.max(1, end - Date.now())));
    }
  };

  let stopping: Promise<number | null> | undefined;
  const stop = (signal?: NodeJS.Signals) => {
    stopping ??= (async () => {
      qmpClient.close();
      const code = await service.stop(signal);
      await rm(socketPath, { force: true });
      return code;
    })();
    return stopping;
  };

  return serviceView<QsdService>(service, {
    socketPath,
    stop,
    kill: () => stop("SIGKILL"),
    qmp,
    events: (name) => qmpClient.events(name),
    async addImage(dev) {
      for (const node of imageBlockdevs(dev)) await qmp("blockdev-add", node);
      imageIds.add(dev.id);
    },
    async addNbdClient({ id, host, port, exportName }) {
      checkId("blockdev id", id);
      await qmp("blockdev-add", {
        driver: "nbd",
        "node-name": id,
        server: { type: "inet", host, port: String(port) },
        export: exportName,
      });
    },
    async blockdevDel(id) {
      checkId("blockdev id", id);
      await qmp("blockdev-del", { "node-name": id });
      if (imageIds.delete(id)) await qmp("blockdev-del", { "node-name": `${id}-file` });
    },
    async nbdServerStart({ address, port }) {
      await qmp("nbd-server-start", { addr: { type: "inet", data: { host: address, port: String(port) } } });
    },
    async nbdServerAdd({ node, name, writable }) {
      checkId("export node", node);
      await qmp("nbd-server-add", { device: node, name: name ?? node, writable: writable !== false });
    },
    async blockExportAdd(exp) {
      await qmp("block-export-add", nbdExportArgs(exp));
    },
    async blockExportDel(id) {
      checkId("export id", id);
      await qmp("block-export-del", { id, mode: "hard" });
    },
    async blockdevMirror({ device, target, sync, jobId, speed, bufSize }) {
      checkId("mirror device", device);
      checkId("mirror target", target);
      checkId("job id", jobId);
      await qmp("blockdev-mirror", {
        "job-id": jobId,
        device,
        target,
        sync,
        "auto-dismiss": false,
        ...(speed ? { speed } : {}),
        ...(bufSize ? { "buf-size": bufSize } : {}),
      });
    },
    async setJobSpeed(jobId, speed) {
      checkId("job id", jobId);
      await qmp("block-job-set-speed", { device: jobId, speed });
    },
    queryJobs,
    waitJobReady: (jobId, ms = 30_000) =>
      waitJob(jobId, ms, "ready", (j) => {
        if (j.status === "ready") return "yes";
        if (["concluded", "null", "aborting"].includes(j.status))
          return `ended (${j.status}) before it was ready${j.error ? `: ${j.error}` : ""}`;
        return "no";
      }),
    async jobComplete(jobId) {
      await qmp("job-complete", { id: jobId });
    },
    async jobCancel(jobId) {
      await qmp("job-cancel", { id: jobId });
    },
    async waitJobConcluded(jobId, ms = 30_000) {
      const j = await waitJob(jobId, ms, "concluded", (x) => (x.status === "concluded" ? "yes" : "no"));
      await qmp("job-dismiss", { id: jobId });
      return j;
    },
  });
}
