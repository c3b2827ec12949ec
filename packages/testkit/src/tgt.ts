/**
 * A private tgtd (the userspace iSCSI target) for one test: its own portal (`ip:port`, inside a fleet
 * namespace if given) and its own control port (`tgtd -C N`: the socket /var/run/tgtd/socket.N, on the shared
 * file system, so tgtadm reaches it from any namespace and every test needs its own N).
 *
 * Facts (tgt 1.0.85, Debian 12): ready in 0.1-0.2 s; **ignores SIGTERM and SIGINT**. It is stopped by
 * deleting its targets (`--op delete --force`) and then `--mode system --op delete` (exit under 1 s); SIGKILL
 * is the last resort. A SIGKILLed tgtd leaves socket.N and socket.N.lock behind; a new tgtd on the same N
 * starts fine over them, and stop() removes them. Harmless warnings: "Failed to initialize RDMA", "can't
 * adjust oom-killer's pardon".
 */
import { execFile } from "node:child_process";
import { rmSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { sleep } from "./ports.js";
import { type Service, serviceView, spawnService, toolPath } from "./process.js";

export interface StartTgtdOptions {
  /** Its log (DIR/tgtd.log) goes here; the directory is made if missing and kept. */
  dir: string;
  /** Run in this network namespace (`PREFIX-h1`); default: the test's own. */
  netns?: string;
  /** Where it listens for initiators, "ip:port" (e.g. "203.0.113.11:3260"). */
  portal: string;
  /** `-C N` (1-32767: tgt refuses more): unique per live tgtd on the machine. */
  controlPort: number;
  /** Default 10 s. */
  startTimeoutMs?: number;
}

export interface TgtdService extends Service {
  readonly controlPort: number;
  readonly portal: string;
  /** Runs tgtadm against this daemon (adds `-C N`); resolves with the exit code and output. */
  tgtadm(args: readonly string[]): Promise<{ exitCode: number; stdout: string; stderr: string }>;
}

export const TGT_INSTALL_HINT = "apt-get install -y tgt";

/** Whether tgtd suites can run: root (tgtd opens /var/run/tgtd) and tgtd and tgtadm installed; else the reason. */
export function tgtAvailable(): { ok: true } | { ok: false; reason: string } {
  if (process.getuid?.() !== 0) return { ok: false, reason: "tgtd needs root" };
  const missing = ["tgtd", "tgtadm"].filter((t) => !toolPath(t));
  if (missing.length > 0)
    return { ok: false, reason: `${missing.join(" and ")} not found: ${TGT_INSTALL_HINT}` };
  return { ok: true };
}

function runTgtadm(
  controlPort: number,
  args: readonly string[],
): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const bin = toolPath("tgtadm") ?? "tgtadm";
  return new Promise((resolve) => {
    execFile(
      bin,
      ["-C", String(controlPort), ...args],
      { encoding: "utf8", timeout: 10_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
        resolve({ exitCode: code, stdout, stderr });
      },
    );
  });
}

/** Starts tgtd and resolves once tgtadm can talk to it. */
export async function startTgtd(opts: StartTgtdOptions): Promise<TgtdService> {
  const avail = tgtAvailable();
  if (!avail.ok) throw new Error(`startTgtd: ${avail.reason}`);
  const { controlPort, portal } = opts;
  if (!Number.isInteger(controlPort) || controlPort < 1 || controlPort > 32767) {
    throw new Error(`startTgtd: control port ${controlPort} must be 1-32767 (tgtd refuses more)`);
  }
  if (!/^[0-9a-fA-F.:[\]]+:\d+$/.test(portal)) throw new Error(`startTgtd: portal ${portal} is not ip:port`);
  // A tgtd already answering on this control port belongs to someone else: two would fight over the socket.
  if ((await runTgtadm(controlPort, ["--mode", "system", "--op", "show"])).exitCode === 0) {
    throw new Error(`startTgtd: a tgtd already answers on control port ${controlPort}`);
  }
  await mkdir(opts.dir, { recursive: true });
  const service = await spawnService({
    name: `tgtd -C ${controlPort} ${portal}`,
    command: toolPath("tgtd")!,
    args: ["-f", "-C", String(controlPort), "--iscsi", `portal=${portal}`],
    logFile: join(opts.dir, "tgtd.log"),
    stopTimeoutMs: 3_000,
    ...(opts.netns ? { netns: opts.netns } : {}),
  });
  const deadline = Date.now() + (opts.startTimeoutMs ?? 10_000);
  for (;;) {
    const r = await runTgtadm(controlPort, ["--mode", "system", "--op", "show"]);
    if (r.exitCode === 0) break;
    if (!service.running || Date.now() > deadline) {
      // Why, before the kill (after it the daemon has always exited).
      const why = service.running ? "timeout" : "exited";
      await service.kill();
      throw new Error(
        `tgtd on control port ${controlPort} did not come up (${why}): ${service.logTail(20)} ${r.stderr}`,
      );
    }
    await sleep(50);
  }

  const removeSockets = () => {
    for (const f of [`socket.${controlPort}`, `socket.${controlPort}.lock`]) {
      rmSync(join("/var/run/tgtd", f), { force: true });
    }
  };
  let stopping: Promise<number | null> | undefined;
  const stop = (): Promise<number | null> => {
    stopping ??= (async () => {
      if (service.running) {
        const show = await runTgtadm(controlPort, ["--lld", "iscsi", "--mode", "target", "--op", "show"]);
        for (const m of show.stdout.matchAll(/^Target (\d+):/gm)) {
          await runTgtadm(controlPort, [
            "--lld",
            "iscsi",
            "--mode",
            "target",
            "--op",
            "delete",
            "--force",
            "--tid",
            m[1]!,
          ]);
        }
        await runTgtadm(controlPort, ["--mode", "system", "--op", "delete"]);
        const gone = await Promise.race([service.exited.then(() => true), sleep(3_000).then(() => false)]);
        if (!gone) await service.kill();
      }
      // Reaps it (and anything left in its group).
      const code = await service.stop("SIGKILL");
      // A successor started on the same control port after a kill() owns the socket now.
      if ((await runTgtadm(controlPort, ["--mode", "system", "--op", "show"])).exitCode !== 0)
        removeSockets();
      return code;
    })();
    return stopping;
  };

  return serviceView<TgtdService>(service, {
    controlPort,
    portal,
    stop,
    kill: () => service.kill(),
    tgtadm: (args) => runTgtadm(controlPort, args),
  });
}
