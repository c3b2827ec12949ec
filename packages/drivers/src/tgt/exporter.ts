import { createHash } from "node:crypto";
import { StowageError } from "@stowage/core";
import { ToolError, type ToolRunner } from "../runner.js";
import { type IscsiExport, validateExports } from "./export.js";
import {
  describeStep,
  type PlannedExport,
  planTgt,
  type TgtState,
  type TgtStep,
  tgtadmArgv,
} from "./plan.js";
import { parseTgtAccounts, parseTgtTargets } from "./show.js";

/**
 * iSCSI exports with tgt: desired state in, convergence out. `apply` reads what tgtd has, plans the tgtadm
 * steps (plan.ts) and runs them through the one tool runner, then reads tgtd again to check that nothing is
 * left to do. tgtd keeps nothing across a restart, so the agent re-applies on an interval (`keepExported`).
 *
 * ACLs: tgt keeps initiator addresses and initiator names in two lists and admits a login when EITHER list
 * matches (tgt 1.0.85, checked: an allowed name from any address gets in, and so does any name from an allowed
 * address). It cannot require both. The exporter binds every allowed host by address and by name, so a host
 * is let in by either; the ACL is a filter, not authentication (an initiator picks its own name and, on a
 * shared network, can take an address). CHAP is the authentication: with it a login must also know the
 * export's secret.
 */

export interface TgtExporterOptions {
  runner: ToolRunner;
  /** tgtd's control port (`tgtd -C N`, `tgtadm -C N`: the socket /var/run/tgtd/socket.N; 0-32767). Default 0. */
  controlPort?: number;
  /** `--bsopts` for rbd LUNs, e.g. `conf=/etc/ceph/ceph.conf;id=stowage` (tgt-rbd). */
  rbdBsopts?: string;
  /** Per tgtadm call. Default 10 s. */
  timeoutMs?: number;
}

export interface ApplyReport {
  /** False when tgtd already had the desired state: nothing was run but the two reads. */
  changed: boolean;
  /** What was done, in order, as `describeStep` shows it (never a secret). */
  actions: string[];
  exports: PlannedExport[];
  /** Stowage targets deleted because no export wants them. */
  removed: { iqn: string; tid: number }[];
}

export interface TgtExporter {
  readonly controlPort: number;
  apply(desired: readonly IscsiExport[]): Promise<ApplyReport>;
  /** What tgtd has now (targets and accounts). */
  show(): Promise<TgtState>;
}

/** tgtadm exits with ENOTCONN (107) or ECONNREFUSED (111) when no tgtd listens on the control port. */
const NOT_RUNNING = new Set([107, 111]);

const digest = (secret: string) => createHash("sha256").update(secret).digest("hex");

export function createTgtExporter(opts: TgtExporterOptions): TgtExporter {
  const controlPort = opts.controlPort ?? 0;
  if (!Number.isInteger(controlPort) || controlPort < 0 || controlPort > 32767) {
    throw new StowageError(
      "invalid_argument",
      `tgt control port ${controlPort} must be 0-32767 (tgtadm refuses more)`,
    );
  }
  const timeoutMs = opts.timeoutMs ?? 10_000;
  // The secret each account was last given by this exporter (its digest only); tgtd cannot tell us.
  const secrets = new Map<string, string>();
  const owned = new Set<string>();
  let queue: Promise<unknown> = Promise.resolve();

  async function tgtadm(argv: string[], secretArgs: string[] = []): Promise<string> {
    try {
      const r = await opts.runner.run("tgtadm", argv, { timeoutMs, secretArgs });
      return r.stdout;
    } catch (err) {
      if (err instanceof ToolError && err.exitCode !== undefined && NOT_RUNNING.has(err.exitCode)) {
        throw new StowageError(
          "unavailable",
          `tgtd is not running on control port ${controlPort} (tgtadm: ${err.stderr.trim() || `exit ${err.exitCode}`})`,
          { controlPort },
          { cause: err },
        );
      }
      throw err;
    }
  }

  async function show(): Promise<TgtState> {
    const base = ["-C", String(controlPort), "--lld", "iscsi"];
    const targets = parseTgtTargets(await tgtadm([...base, "--mode", "target", "--op", "show"]));
    const accounts = parseTgtAccounts(await tgtadm([...base, "--mode", "account", "--op", "show"]));
    return { targets, accounts };
  }

  function plan(state: TgtState, desired: readonly IscsiExport[]) {
    return planTgt(state, desired, {
      accountIsCurrent: (user, secret) => secrets.get(user) === digest(secret),
      ownedAccounts: owned,
    });
  }

  async function run(step: TgtStep): Promise<void> {
    const { argv, secretArgs } = tgtadmArgv(controlPort, step, opts.rbdBsopts);
    await tgtadm(argv, secretArgs);
    if (step.op === "new-account") {
      secrets.set(step.user, digest(step.secret));
      owned.add(step.user);
    } else if (step.op === "delete-account") {
      secrets.delete(step.user);
      owned.delete(step.user);
    }
  }

  async function applyNow(desired: readonly IscsiExport[]): Promise<ApplyReport> {
    validateExports(desired);
    const first = plan(await show(), desired);
    const actions: string[] = [];
    for (const step of first.steps) {
      try {
        await run(step);
      } catch (err) {
        throw new StowageError(
          err instanceof StowageError ? err.code : "internal",
          `tgt export: ${describeStep(step)} failed after ${actions.length} of ${first.steps.length} steps: ${(err as Error).message}`,
          { done: actions, failed: describeStep(step) },
          { cause: err },
        );
      }
      actions.push(describeStep(step));
    }
    if (first.steps.length > 0) {
      const again = plan(await show(), desired);
      if (again.steps.length > 0) {
        throw new StowageError(
          "internal",
          `tgt export did not converge: after ${actions.length} steps tgtd still needs ${again.steps.map(describeStep).join("; ")}`,
          { done: actions },
        );
      }
    }
    return { changed: actions.length > 0, actions, exports: first.exports, removed: first.removed };
  }

  return {
    controlPort,
    show,
    // One apply at a time: two interleaved plans would both create the same target.
    apply(desired) {
      const next = queue.then(() => applyNow(desired));
      queue = next.catch(() => undefined);
      return next;
    },
  };
}

export interface KeepExportedOptions {
  /** How often the desired state is applied again (tgtd loses every target when it dies). */
  intervalMs: number;
  /** After a failed apply (tgtd down, say), how soon to try again. Default min(1 s, intervalMs). */
  retryMs?: number;
  onApply?: (r: ApplyReport) => void;
  onError?: (err: unknown) => void;
}

export interface ExportKeeper {
  /** Applies now (between the timer's runs), and resolves with that apply's report. */
  applyNow(): Promise<ApplyReport>;
  /** Stops the loop and waits for an apply in flight. Idempotent. */
  stop(): Promise<void>;
  readonly lastReport: ApplyReport | undefined;
  readonly lastError: unknown;
}

/**
 * Keeps tgtd at the desired state without any API call: applies `desired()` at once, then every `intervalMs`;
 * while an apply fails (tgtd not running, or restarting) it tries every `retryMs`, so a restarted tgtd has its
 * exports back within about `retryMs` of answering.
 */
export function keepExported(
  exporter: TgtExporter,
  desired: () => readonly IscsiExport[] | Promise<readonly IscsiExport[]>,
  opts: KeepExportedOptions,
): ExportKeeper {
  const retryMs = opts.retryMs ?? Math.min(1000, opts.intervalMs);
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let inFlight: Promise<ApplyReport> | undefined;
  let lastReport: ApplyReport | undefined;
  let lastError: unknown;

  const once = (): Promise<ApplyReport> => {
    inFlight ??= (async () => {
      try {
        const r = await exporter.apply(await desired());
        lastReport = r;
        lastError = undefined;
        try {
          opts.onApply?.(r);
        } catch {
          // A broken hook must not stop the loop.
        }
        return r;
      } catch (err) {
        lastError = err;
        try {
          opts.onError?.(err);
        } catch {
          // As above.
        }
        throw err;
      } finally {
        inFlight = undefined;
      }
    })();
    return inFlight;
  };

  const schedule = (ms: number) => {
    if (stopped) return;
    clearTimeout(timer);
    timer = setTimeout(tick, ms);
    timer.unref();
  };
  const tick = () => {
    once().then(
      () => schedule(opts.intervalMs),
      () => schedule(retryMs),
    );
  };
  tick();

  return {
    applyNow: once,
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await inFlight?.catch(() => undefined);
    },
    get lastReport() {
      return lastReport;
    },
    get lastError() {
      return lastError;
    },
  };
}
