import { spawn } from "node:child_process";
import { type ErrorCode, StowageError } from "@stowage/core";
import type { z } from "zod";

/**
 * The single tool runner (DESIGN.md, "Tools"): every process Stowage starts goes through `run`, so that argv
 * arrays (never a shell), `LC_ALL=C`, timeouts, bounded output and typed errors hold everywhere.
 */

export interface ToolInvocationEvent {
  tool: string;
  argv: readonly string[];
  durationMs: number;
  /** Undefined when the process never started or was killed by a signal. */
  exitCode: number | undefined;
  timedOut: boolean;
  ok: boolean;
}

export interface ToolRunnerOptions {
  /** Extra environment for every tool (merged over the agent's own; `LC_ALL` is always forced to `C`). */
  env?: Record<string, string>;
  /** Directories searched before `$PATH`. Tests put fake tools here. */
  pathPrefix?: string[];
  /** Default per-invocation timeout. */
  defaultTimeoutMs?: number;
  /** After the timeout's SIGTERM, how long a tool gets before SIGKILL. */
  killGraceMs?: number;
  /**
   * Per-stream cap on captured stdout/stderr, in bytes; a tool printing more is killed and fails instead of
   * exhausting memory.
   */
  maxOutputBytes?: number;
  /** Called once per invocation, success or not (metrics and logs hang off this). */
  onInvocation?: (e: ToolInvocationEvent) => void;
}

export interface RunOptions {
  timeoutMs?: number;
  /** Written to the tool's stdin; without it stdin is closed so a tool that prompts cannot hang. */
  input?: string | Uint8Array;
  /** Exit codes other than 0 that still count as success (e.g. `qemu-img check` reports leaks with 3). */
  allowExitCodes?: number[];
  /**
   * Values (a password, a key) that must never leave the runner: the tool still gets them verbatim, but every
   * argv, message and stderr the runner hands on (`onInvocation`, `ToolError`) shows `<redacted>` instead.
   * The process list still shows them while the tool runs; only passing them by file or stdin avoids that.
   */
  secretArgs?: readonly string[];
}

export interface ToolResult {
  stdout: string;
  stderr: string;
  exitCode: number;
  durationMs: number;
}

export interface ToolRunner {
  run(tool: string, argv: readonly string[], opts?: RunOptions): Promise<ToolResult>;
}

export const DEFAULT_TIMEOUT_MS = 60_000;
export const DEFAULT_KILL_GRACE_MS = 2_000;
export const DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024;
/** How much of stderr an error carries: enough to diagnose, small enough for a log line or a gRPC status. */
export const STDERR_TAIL_BYTES = 4096;

/** Debian packages that provide the tools Stowage uses, for "install package Y" hints. */
const PACKAGE_HINTS: Record<string, string> = {
  "qemu-img": "qemu-utils",
  "qemu-nbd": "qemu-utils",
  lvs: "lvm2",
  vgs: "lvm2",
  pvs: "lvm2",
  lvcreate: "lvm2",
  lvremove: "lvm2",
  lvextend: "lvm2",
  lvreduce: "lvm2",
  lvresize: "lvm2",
  lvchange: "lvm2",
  lvrename: "lvm2",
  lvconvert: "lvm2",
  blkdiscard: "util-linux",
  "qemu-io": "qemu-utils",
  vgcreate: "lvm2",
  pvcreate: "lvm2",
  thin_check: "thin-provisioning-tools",
  tgtadm: "tgt",
  tgtd: "tgt",
  rbd: "ceph-common",
  ceph: "ceph-common",
  rados: "ceph-common",
  "nfs-ls": "libnfs-utils",
  "nfs-cp": "libnfs-utils",
  "iscsi-ls": "libiscsi-bin",
  numactl: "numactl",
};

export interface ToolErrorFields {
  tool: string;
  argv: readonly string[];
  exitCode: number | undefined;
  stderr: string;
  timedOut: boolean;
}

/** A tool failed: it could not start, exited badly, timed out, or printed too much. */
export class ToolError extends StowageError {
  readonly tool: string;
  readonly argv: readonly string[];
  readonly exitCode: number | undefined;
  /** The last ≤ 4 KiB of stderr. */
  readonly stderr: string;
  readonly timedOut: boolean;

  constructor(code: ErrorCode, message: string, fields: ToolErrorFields, options?: { cause?: unknown }) {
    const stderr = tailBytes(fields.stderr, STDERR_TAIL_BYTES);
    super(
      code,
      message,
      {
        tool: fields.tool,
        argv: [...fields.argv],
        exitCode: fields.exitCode,
        stderr,
        timedOut: fields.timedOut,
      },
      options,
    );
    this.tool = fields.tool;
    this.argv = [...fields.argv];
    this.exitCode = fields.exitCode;
    this.stderr = stderr;
    this.timedOut = fields.timedOut;
  }
}

/** A tool succeeded but printed something we cannot trust (bad JSON, or JSON of an unexpected shape). */
export class ToolOutputError extends ToolError {
  /** The start of the offending output, for the log. */
  readonly outputExcerpt: string;

  constructor(tool: string, argv: readonly string[], reason: string, output: string) {
    const excerpt = output.length > 200 ? `${output.slice(0, 200)}…` : output;
    super(
      "internal",
      `${commandLabel(tool, argv)} printed output that is not the expected JSON: ${reason} (argv: ${formatArgv(argv)}; output starts ${JSON.stringify(excerpt)})`,
      { tool, argv, exitCode: 0, stderr: "", timedOut: false },
    );
    this.outputExcerpt = excerpt;
  }
}

/**
 * Parses a tool's JSON output and checks its shape with zod. Anything unexpected becomes a `ToolOutputError`,
 * so a tool upgrade that changes its output fails loudly instead of feeding `undefined` into capacity maths.
 */
export function parseJsonOutput<S extends z.ZodType>(
  tool: string,
  argv: readonly string[],
  text: string,
  schema: S,
): z.output<S> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ToolOutputError(tool, argv, (e as Error).message, text);
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issues = parsed.error.issues
      .slice(0, 3)
      .map((i) => `${i.path.length > 0 ? i.path.join(".") : "(root)"}: ${i.message}`)
      .join("; ");
    throw new ToolOutputError(tool, argv, issues, text);
  }
  return parsed.data;
}

/**
 * Process groups of tools still running. Detached children are not killed with the agent, so an exiting agent kills them itself rather than leave a qemu-img writing behind it.
 */
const liveGroups = new Set<number>();
let exitHookInstalled = false;
function trackGroup(pid: number): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once("exit", () => {
      for (const pgid of liveGroups) {
        try {
          process.kill(-pgid, "SIGKILL");
        } catch {
          // Already gone.
        }
      }
    });
  }
  liveGroups.add(pid);
}

/** Tools are looked up on PATH by bare name; a path here would bypass `pathPrefix` and the package hints. */
const TOOL_NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/;

export function createToolRunner(opts: ToolRunnerOptions = {}): ToolRunner {
  const defaultTimeoutMs = opts.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS;
  const killGraceMs = opts.killGraceMs ?? DEFAULT_KILL_GRACE_MS;
  const maxOutputBytes = opts.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
  const basePath = process.env.PATH ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  const PATH = [...(opts.pathPrefix ?? []), basePath].filter((p) => p !== "").join(":");
  const env: Record<string, string> = { ...opts.env, PATH, LC_ALL: "C" };

  const notify = (e: ToolInvocationEvent) => {
    try {
      opts.onInvocation?.(e);
    } catch {
      // A broken metrics hook must never turn a successful tool run into a failure.
    }
  };

  async function run(tool: string, argvIn: readonly string[], runOpts: RunOptions = {}): Promise<ToolResult> {
    const argv = [...argvIn];
    if (!TOOL_NAME.test(tool)) {
      throw new StowageError(
        "invalid_argument",
        `tool name ${JSON.stringify(tool)} must be a bare command name`,
      );
    }
    for (const a of argv) {
      if (typeof a !== "string" || a.includes("\0")) {
        throw new StowageError(
          "invalid_argument",
          `argument ${JSON.stringify(a)} for ${tool} is not a string`,
        );
      }
    }
    const timeoutMs = runOpts.timeoutMs ?? defaultTimeoutMs;
    const redact = redactor(runOpts.secretArgs ?? []);
    const started = performance.now();

    // Its own process group, so a timeout kills the whole tree: a wrapper script's children would otherwise
    // keep the pipes open and the run would never end. Node's own spawn, not a wrapper library: it is on the
    // hot path of every operation, and each process costs the agent a fork (docs/operating.md, "The agent's memory").
    const result = await spawnTool(tool, argv, {
      env,
      input: runOpts.input,
      maxOutputBytes,
      timeoutMs,
      killGraceMs,
    });
    const durationMs = Math.round(performance.now() - started);
    const { stdout, exitCode, timedOut } = result;
    // Everything below is what leaves the runner: the argv and stderr as they may be shown.
    const shownArgv = argv.map(redact);
    const stderr = redact(result.stderr);
    const fields: ToolErrorFields = { tool, argv: shownArgv, exitCode, stderr, timedOut };
    const label = `${tool} ${formatArgv(shownArgv)}`.trim();
    // Node's spawn error carries the whole argv (`spawnargs`): a cause logged with it must not leak either.
    const spawnArgs = (result.spawnError as { spawnargs?: unknown } | undefined)?.spawnargs;
    if (Array.isArray(spawnArgs)) {
      (result.spawnError as unknown as { spawnargs: string[] }).spawnargs = spawnArgs.map((a) =>
        redact(String(a)),
      );
    }

    const fail = (err: ToolError): never => {
      notify({ tool, argv: shownArgv, durationMs, exitCode, timedOut, ok: false });
      throw err;
    };

    const errno = (result.spawnError as NodeJS.ErrnoException | undefined)?.code;
    if (exitCode === undefined && (errno === "ENOENT" || errno === "EACCES")) {
      const pkg = PACKAGE_HINTS[tool];
      fail(
        new ToolError(
          "failed_precondition",
          errno === "ENOENT"
            ? `tool ${tool} not found on PATH${pkg ? `; install package ${pkg}` : `; install it`} (PATH=${PATH})`
            : `tool ${tool} found on PATH but is not executable (PATH=${PATH})`,
          fields,
          { cause: result.spawnError },
        ),
      );
    }
    if (timedOut) {
      fail(
        new ToolError(
          "deadline_exceeded",
          `${label} timed out after ${timeoutMs} ms and was killed${stderrSuffix(stderr)}`,
          fields,
        ),
      );
    }
    if (result.overflowed) {
      fail(
        new ToolError(
          "internal",
          `${label} printed more than ${maxOutputBytes} bytes of output; refusing to buffer more${stderrSuffix(stderr)}`,
          fields,
        ),
      );
    }
    const allowed =
      exitCode === 0 || (exitCode !== undefined && (runOpts.allowExitCodes ?? []).includes(exitCode));
    if (!allowed) {
      const how =
        exitCode !== undefined
          ? `exited with code ${exitCode}`
          : result.signal
            ? `was killed by ${result.signal}`
            : `failed to run: ${result.spawnError?.message ?? "unknown error"}`;
      fail(
        new ToolError("internal", `${label} ${how}${stderrSuffix(stderr)}`, fields, {
          cause: result.spawnError,
        }),
      );
    }

    notify({ tool, argv: shownArgv, durationMs, exitCode, timedOut: false, ok: true });
    return { stdout, stderr: result.stderr, exitCode: exitCode as number, durationMs };
  }

  return { run };
}

interface SpawnResult {
  stdout: string;
  stderr: string;
  /** Undefined when the process never started or was killed by a signal. */
  exitCode: number | undefined;
  signal: NodeJS.Signals | undefined;
  timedOut: boolean;
  /** One stream passed maxOutputBytes; the process group was killed. */
  overflowed: boolean;
  /** Why the process could not start (ENOENT, EACCES, ...). */
  spawnError: Error | undefined;
}

/**
 * Runs one process in its own group without a shell and collects its output. Resolves once the process has
 * exited and both pipes are closed (or it could not start); never rejects. A timeout sends SIGTERM to the group
 * and SIGKILL after the grace; output over the cap kills the group at once.
 */
function spawnTool(
  tool: string,
  argv: string[],
  o: {
    env: Record<string, string>;
    input: string | Uint8Array | undefined;
    maxOutputBytes: number;
    timeoutMs: number;
    killGraceMs: number;
  },
): Promise<SpawnResult> {
  return new Promise((resolve) => {
    const child = spawn(tool, argv, {
      env: { ...process.env, ...o.env },
      shell: false,
      detached: true,
      stdio: [o.input !== undefined ? "pipe" : "ignore", "pipe", "pipe"],
    });
    const pid = child.pid;
    if (pid !== undefined) trackGroup(pid);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    let errBytes = 0;
    let overflowed = false;
    let timedOut = false;
    let exited = false;
    let spawnError: Error | undefined;
    let graceTimer: NodeJS.Timeout | undefined;
    const killGroup = (signal: NodeJS.Signals) => {
      if (pid === undefined) return;
      try {
        process.kill(-pid, signal);
      } catch {
        // Already gone.
      }
    };
    const overflow = () => {
      if (overflowed) return;
      overflowed = true;
      killGroup("SIGKILL");
    };
    child.stdout?.on("data", (b: Buffer) => {
      outBytes += b.length;
      if (outBytes > o.maxOutputBytes) return overflow();
      out.push(b);
    });
    child.stderr?.on("data", (b: Buffer) => {
      errBytes += b.length;
      if (errBytes > o.maxOutputBytes) return overflow();
      err.push(b);
    });
    if (o.input !== undefined && child.stdin) {
      // A tool that exits without reading its input closes the pipe: that is its answer, not our failure.
      child.stdin.on("error", () => {});
      child.stdin.end(o.input);
    }
    child.on("exit", () => {
      exited = true;
    });
    const timer = setTimeout(() => {
      // Exited already, only its pipes are still draining: not a timeout.
      if (exited) return;
      timedOut = true;
      killGroup("SIGTERM");
      graceTimer = setTimeout(() => killGroup("SIGKILL"), o.killGraceMs);
      graceTimer.unref();
    }, o.timeoutMs);
    timer.unref();
    let settled = false;
    const settle = (exitCode: number | null, signal: NodeJS.Signals | null) => {
      if (settled) return;
      settled = true;
      if (pid !== undefined) liveGroups.delete(pid);
      clearTimeout(timer);
      if (graceTimer) clearTimeout(graceTimer);
      resolve({
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
        exitCode: exitCode ?? undefined,
        signal: signal ?? undefined,
        timedOut,
        overflowed,
        spawnError,
      });
    };
    child.on("error", (e) => {
      spawnError = e;
      // A process that never started emits no "close" after its "error".
      if (pid === undefined) settle(null, null);
    });
    child.on("close", (code, signal) => settle(code, signal));
  });
}

export const REDACTED = "<redacted>";

/** Replaces every occurrence of each secret (whole argument or part of one, `--password=X`) with REDACTED. */
function redactor(secrets: readonly string[]): (text: string) => string {
  // Longest first, so a secret that contains another is replaced whole.
  const list = [...new Set(secrets.filter((s) => s !== ""))].sort((a, b) => b.length - a.length);
  if (list.length === 0) return (text) => text;
  return (text) => list.reduce((t, secret) => t.replaceAll(secret, REDACTED), text);
}

function stderrSuffix(stderr: string): string {
  const tail = tailBytes(stderr, STDERR_TAIL_BYTES).trim();
  return tail === "" ? " (no stderr)" : `: ${tail}`;
}

/** The last `max` bytes of `text` (UTF-8), cut on a character boundary. */
export function tailBytes(text: string, max: number): string {
  const buf = Buffer.from(text, "utf8");
  if (buf.length <= max) return text;
  let start = buf.length - max;
  // Skip UTF-8 continuation bytes so the tail starts on a whole character.
  while (start < buf.length && ((buf[start] ?? 0) & 0xc0) === 0x80) start++;
  return buf.subarray(start).toString("utf8");
}

/** Argv as a person would paste it into a shell: for messages only, never executed. */
export function formatArgv(argv: readonly string[]): string {
  return argv
    .map((a) => (/^[A-Za-z0-9_./:=,@%+-]+$/.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`))
    .join(" ");
}

/** "qemu-img info" from ("qemu-img", ["info", ...]): the tool plus its subcommand when it has one. */
function commandLabel(tool: string, argv: readonly string[]): string {
  const sub = argv[0];
  return sub !== undefined && /^[a-z][a-z0-9-]*$/.test(sub) ? `${tool} ${sub}` : tool;
}
