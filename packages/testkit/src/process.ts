/**
 * Test-only helper to run a long-lived process (a built app, a daemon) next to a test: wait until it is
 * ready, keep its output, stop it, and never leave it behind. The product's own tool runner lives in
 * packages/drivers; this one may use child_process directly.
 *
 * Each service is started in its own process group (session), so `stop()` and `kill()` reach the
 * children it spawned too, and they are killed when the test process exits.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { accessSync, constants, createWriteStream, type WriteStream } from "node:fs";
import { delimiter, join } from "node:path";
import { trackProcess } from "./cleanup.js";
import { sleep } from "./ports.js";

export interface SpawnServiceOptions {
  /** Shown in errors and log prefixes. */
  name: string;
  command: string;
  args?: readonly string[];
  /** Added to process.env (a value of `undefined` removes that variable). */
  env?: Record<string, string | undefined>;
  cwd?: string;
  /**
   * When the service counts as ready: a predicate over each output line (stdout and stderr), or a URL
   * polled with GET until it answers 2xx. Without it, ready as soon as it has been spawned.
   */
  readyWhen?: ((line: string) => boolean) | string | URL;
  /** Default 30 s. The process is killed and the start fails (with its last log lines) after that. */
  readyTimeoutMs?: number;
  /** Also append all output to this file. */
  logFile?: string;
  /** How long `stop()` waits after its signal before SIGKILL. Default 10 s. */
  stopTimeoutMs?: number;
  /** How many bytes of output `logs()` keeps (the tail). Default 4 MiB. */
  maxLogBytes?: number;
  /**
   * Run the service inside this network namespace (as root): spawned as `ip netns exec NETNS command args`,
   * which enters the namespace and execs the command, so the pid, the process group, the logs and
   * `stop()`/`kill()` are the service's own. A URL `readyWhen` is then polled from inside the namespace
   * (the test process cannot reach the namespace's addresses). See netns.ts.
   */
  netns?: string;
}

export interface Service {
  readonly name: string;
  readonly pid: number;
  /** Resolves with the exit code once the process has exited (`null` when it died by a signal). */
  readonly exited: Promise<number | null>;
  /** The signal that ended the process, once it has exited by one. */
  readonly signalCode: NodeJS.Signals | null;
  readonly running: boolean;
  /**
   * Sends `signal` (default SIGTERM) to the service's process group, waits for it to exit (SIGKILL after
   * `stopTimeoutMs`), then kills whatever is left in its group. Returns the exit code. Idempotent.
   */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** SIGKILL to the whole process group (a crash), and wait for the exit. */
  kill(): Promise<number | null>;
  /** All output so far (stdout and stderr interleaved, tail-bounded). */
  logs(): string;
  /** The last `n` lines of output. */
  logTail(n?: number): string;
}

export class ServiceStartError extends Error {
  constructor(
    message: string,
    readonly logs: string,
  ) {
    super(message);
    this.name = "ServiceStartError";
  }
}

function tail(text: string, n: number): string {
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  return lines.slice(-n).join("\n");
}

/** Starts the process and resolves once it is ready. Rejects (after killing it) if it exits or times out first. */
export async function spawnService(opts: SpawnServiceOptions): Promise<Service> {
  const maxLog = opts.maxLogBytes ?? 4 * 1024 * 1024;
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const [k, v] of Object.entries(opts.env ?? {})) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  const [command, args] = opts.netns
    ? ["ip", ["netns", "exec", opts.netns, opts.command, ...(opts.args ?? [])]]
    : [opts.command, [...(opts.args ?? [])]];
  const child: ChildProcess = spawn(command, args, {
    cwd: opts.cwd,
    env,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });

  let logBuf = "";
  let logFile: WriteStream | undefined;
  if (opts.logFile) {
    logFile = createWriteStream(opts.logFile, { flags: "a" });
    logFile.on("error", () => {});
  }
  const lineListeners = new Set<(line: string) => void>();
  const partial = { stdout: "", stderr: "" };
  const onData = (stream: "stdout" | "stderr") => (chunk: Buffer) => {
    const text = chunk.toString("utf8");
    logBuf += text;
    if (logBuf.length > maxLog) logBuf = logBuf.slice(logBuf.length - maxLog);
    logFile?.write(chunk);
    const parts = (partial[stream] + text).split("\n");
    partial[stream] = parts.pop() ?? "";
    for (const line of parts) for (const l of lineListeners) l(line);
  };
  child.stdout?.on("data", onData("stdout"));
  child.stderr?.on("data", onData("stderr"));

  let spawnError: Error | undefined;
  let exitCode: number | null | undefined;
  let signalCode: NodeJS.Signals | null = null;
  let untrack = () => {};
  const exited = new Promise<number | null>((resolve) => {
    child.once("error", (err) => {
      spawnError = err;
      if (exitCode === undefined) {
        exitCode = null;
        resolve(null);
      }
    });
    child.once("exit", (code, signal) => {
      exitCode = code;
      signalCode = signal;
      resolve(code);
    });
  });
  void exited.then(() => {
    // flush partial lines, close the log file
    for (const s of ["stdout", "stderr"] as const) {
      if (partial[s]) for (const l of lineListeners) l(partial[s]);
      partial[s] = "";
    }
    logFile?.end();
  });
  if (child.pid !== undefined) untrack = trackProcess(child.pid, { group: true, signal: "KILL" });

  const pid = child.pid ?? -1;
  const signalGroup = (signal: NodeJS.Signals, orLeader = true) => {
    if (pid <= 0) return;
    try {
      process.kill(-pid, signal);
    } catch {
      if (!orLeader || exitCode !== undefined) return; // an exited pid may belong to someone else by now
      try {
        process.kill(pid, signal);
      } catch {
        // gone
      }
    }
  };
  const stopTimeout = opts.stopTimeoutMs ?? 10_000;
  let stopping: Promise<number | null> | undefined;
  const stop = (signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> => {
    stopping ??= (async () => {
      if (exitCode === undefined) {
        signalGroup(signal);
        const timer = sleep(stopTimeout).then(() => "timeout" as const);
        if ((await Promise.race([exited, timer])) === "timeout" && exitCode === undefined) {
          signalGroup("SIGKILL");
        }
      }
      const code = await exited;
      signalGroup("SIGKILL", false); // stragglers left in the group
      untrack();
      return code;
    })();
    return stopping;
  };

  const service: Service = {
    name: opts.name,
    pid,
    exited,
    get signalCode() {
      return signalCode;
    },
    get running() {
      return exitCode === undefined;
    },
    stop,
    kill: () => stop("SIGKILL"),
    logs: () => logBuf,
    logTail: (n = 40) => tail(logBuf, n),
  };

  const timeoutMs = opts.readyTimeoutMs ?? 30_000;
  const fail = async (why: string): Promise<never> => {
    await stop("SIGKILL");
    const t = tail(logBuf, 40);
    throw new ServiceStartError(
      `${opts.name}: ${why}${t ? `; last output:\n${t}` : " (no output)"}${opts.logFile ? `\n(log: ${opts.logFile})` : ""}`,
      logBuf,
    );
  };

  if (spawnError || child.pid === undefined) {
    await exited;
    return fail(`cannot start ${opts.command}: ${spawnError?.message ?? "spawn failed"}`);
  }

  const readyWhen = opts.readyWhen;
  if (readyWhen === undefined) return service;

  let onLine: ((line: string) => void) | undefined;
  const ready: Promise<"ready"> =
    typeof readyWhen === "function"
      ? new Promise((resolve) => {
          onLine = (line) => {
            try {
              if (readyWhen(line)) resolve("ready");
            } catch {
              // a throwing predicate means "not yet"
            }
          };
          lineListeners.add(onLine);
        })
      : (opts.netns
          ? pollUrlInNetns(opts.netns, String(readyWhen), timeoutMs, () => exitCode === undefined)
          : pollUrl(String(readyWhen), () => exitCode === undefined)
        ).then(() => "ready" as const);

  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), timeoutMs);
  });
  const outcome = await Promise.race([ready, exited.then(() => "exited" as const), timeout]);
  clearTimeout(timer);
  if (onLine) lineListeners.delete(onLine);
  if (outcome === "ready") return service;
  if (outcome === "exited") {
    const how = signalCode ? `signal ${signalCode}` : `code ${exitCode}`;
    const err = spawnError as Error | undefined; // set by the "error" listener meanwhile
    return fail(
      err ? `cannot start ${opts.command}: ${err.message}` : `exited with ${how} before it was ready`,
    );
  }
  return fail(`not ready after ${timeoutMs} ms`);
}

/** The probe run inside a namespace: GET argv[1] every 100 ms until it answers 2xx (exit 0), or argv[2] ms pass (exit 1). */
const NETNS_URL_PROBE = `
const [, url, ms] = process.argv;
const end = Date.now() + Number(ms);
(async () => {
  for (;;) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer().catch(() => undefined);
      if (res.ok) process.exit(0);
    } catch {}
    if (Date.now() > end) process.exit(1);
    await new Promise((r) => setTimeout(r, 100));
  }
})();
`;

/**
 * Like pollUrl, from inside network namespace `netns`: one probe process (node, through `ip netns exec`)
 * polls until the URL answers; never resolves if it gives up or the service exits first.
 */
async function pollUrlInNetns(
  netns: string,
  url: string,
  timeoutMs: number,
  keepGoing: () => boolean,
): Promise<void> {
  while (keepGoing()) {
    const probe = spawn(
      "ip",
      ["netns", "exec", netns, process.execPath, "-e", NETNS_URL_PROBE, url, String(timeoutMs)],
      { stdio: "ignore" },
    );
    const untrack = probe.pid !== undefined ? trackProcess(probe.pid) : () => {};
    const stopIfDone = setInterval(() => {
      if (!keepGoing()) probe.kill("SIGKILL");
    }, 200);
    const code = await new Promise<number | null>((resolve) => {
      probe.once("error", () => resolve(null));
      probe.once("exit", (c) => resolve(c));
    });
    clearInterval(stopIfDone);
    untrack();
    if (code === 0) return;
    if (code === null) break; // killed (the service exited) or could not be spawned
    await sleep(100);
  }
  return new Promise(() => {});
}

/** GETs `url` every 100 ms until it answers 2xx; stops (never resolving) once `keepGoing()` is false. */
async function pollUrl(url: string, keepGoing: () => boolean): Promise<void> {
  while (keepGoing()) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer().catch(() => undefined);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  return new Promise(() => {});
}

/** What serviceView fills in from the spawned process. */
type ServiceState = "name" | "pid" | "exited" | "signalCode" | "running" | "logs" | "logTail";

/**
 * A service the test kit builds over a spawned one (tgtd, Ganesha, qemu-storage-daemon): `extra` (its own stop,
 * kill and whatever it adds) with the spawned process's live state (name, pid, exited, signalCode, running)
 * and its logs.
 */
export function serviceView<S extends Service>(service: Service, extra: Omit<S, ServiceState>): S {
  const view = { logs: () => service.logs(), logTail: (n?: number) => service.logTail(n), ...extra };
  for (const key of ["name", "pid", "exited", "signalCode", "running"] as const)
    Object.defineProperty(view, key, { get: () => service[key], enumerable: true });
  return view as unknown as S;
}

/** Where a tool usually lives when $PATH (a non-login root shell's, say) leaves these out. */
const TOOL_DIRS = ["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin", "/usr/local/bin"];

/** The executable `tool` on $PATH or in the usual bin and sbin directories, or undefined. */
export function toolPath(tool: string): string | undefined {
  const dirs = [...(process.env.PATH ?? "").split(delimiter).filter(Boolean), ...TOOL_DIRS];
  return dirs
    .map((d) => join(d, tool))
    .find((p) => {
      try {
        accessSync(p, constants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
}
