/**
 * Last-resort cleanup of what a test process started: daemons are killed and temporary directories removed
 * when the test process exits, normally or by SIGINT/SIGTERM/SIGHUP. Against a SIGKILL (a vitest worker
 * killed on timeout) a tiny detached bash "reaper" watches this process and does the same once it is gone.
 *
 * Every helper of the testkit registers what it starts here and unregisters it on a clean stop.
 * Set STOWAGE_TESTKIT_NO_REAPER=1 to skip the watchdog process (exit handlers still run).
 */
import { spawn, spawnSync } from "node:child_process";
import { rmSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export type CleanupSignal = "KILL" | "QUIT" | "TERM";

type Entry =
  | { kind: "signal"; pid: number; group: boolean; signal: CleanupSignal }
  | { kind: "exec"; argv: readonly string[]; argvFile: string; run?: () => void }
  | { kind: "rm"; path: string };

const entries = new Map<number, Entry>();
let nextId = 1;
let installed = false;
let reaperStarted = false;
const registryFile = join(tmpdir(), `stowage-testkit-reap-${process.pid}.list`);

const REAPER = `
parent=$1; reg=$2
alive() { [ -d "/proc/$1" ] && ! grep -qs '^State:[[:space:]]*[ZX]' "/proc/$1/status"; }
while alive "$parent"; do sleep 1; done
[ -f "$reg" ] || exit 0
while read -r kind target; do
  case "$kind" in KILL|QUIT|TERM) kill -s "$kind" -- "$target" 2>/dev/null ;; esac
done < "$reg"
sleep 1
while read -r kind target; do
  if [ "$kind" = exec ] && [ -f "$target" ]; then
    mapfile -d '' -t argv < "$target"
    [ "\${#argv[@]}" -gt 0 ] && timeout 120 "\${argv[@]}" </dev/null >/dev/null 2>&1
    rm -f -- "$target"
  fi
done < "$reg"
while read -r kind target; do
  if [ "$kind" = rm ] && [ -n "$target" ]; then rm -rf -- "$target"; fi
done < "$reg"
rm -f -- "$reg"
`;

function writeRegistry(): void {
  if (!reaperStarted) return;
  try {
    if (entries.size === 0) {
      unlinkSync(registryFile);
      return;
    }
    const lines = [...entries.values()].map((e) =>
      e.kind === "rm"
        ? `rm ${e.path}`
        : e.kind === "exec"
          ? `exec ${e.argvFile}`
          : `${e.signal} ${e.group ? -e.pid : e.pid}`,
    );
    writeFileSync(registryFile, `${lines.join("\n")}\n`);
  } catch {
    // best effort: the exit handlers still do the job
  }
}

function startReaper(): void {
  if (reaperStarted || process.env.STOWAGE_TESTKIT_NO_REAPER === "1" || process.platform !== "linux") return;
  reaperStarted = true;
  try {
    const child = spawn("bash", ["-c", REAPER, "stowage-testkit-reaper", String(process.pid), registryFile], {
      detached: true,
      stdio: "ignore",
    });
    child.on("error", () => {});
    child.unref();
  } catch {
    // no bash: rely on the exit handlers
  }
}

/**
 * Synchronously kills everything registered, runs the registered commands, then removes the registered
 * directories. Idempotent.
 */
export function cleanupNow(): void {
  const all = [...entries.values()];
  entries.clear();
  for (const e of all) {
    if (e.kind !== "signal") continue;
    try {
      process.kill(e.group ? -e.pid : e.pid, `SIG${e.signal}`);
    } catch {
      // already gone
    }
  }
  for (const e of all) {
    if (e.kind !== "exec") continue;
    try {
      if (e.run) e.run();
      else spawnSync(e.argv[0]!, e.argv.slice(1), { stdio: "ignore", timeout: 120_000 });
    } catch {
      // best effort; the next run of the same helper finds what is left
    }
    try {
      unlinkSync(e.argvFile);
    } catch {
      // never written (no reaper) or already gone
    }
  }
  const leftovers: Entry[] = [];
  for (const e of all) {
    if (e.kind !== "rm") continue;
    try {
      rmSync(e.path, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
    } catch {
      leftovers.push(e);
    }
  }
  // what could not be removed now (a daemon still writing) is left to the reaper
  for (const e of leftovers) entries.set(nextId++, e);
  writeRegistry();
}

function install(): void {
  if (installed) return;
  installed = true;
  process.on("exit", cleanupNow);
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    const handler = () => {
      cleanupNow();
      // if nobody else handles the signal, restore the default behaviour (die by that signal)
      if (process.listenerCount(signal) === 1) {
        process.removeListener(signal, handler);
        process.kill(process.pid, signal);
      }
    };
    process.on(signal, handler);
  }
}

function add(entry: Entry): () => void {
  install();
  startReaper();
  const id = nextId++;
  entries.set(id, entry);
  writeRegistry();
  return () => {
    if (entries.delete(id)) writeRegistry();
  };
}

/**
 * Kill `pid` (or its whole process group when `group`) with `signal` (default KILL) if it is still
 * registered when the test process exits. Returns the function that unregisters it.
 */
export function trackProcess(
  pid: number,
  opts: { group?: boolean; signal?: CleanupSignal } = {},
): () => void {
  return add({ kind: "signal", pid, group: opts.group ?? false, signal: opts.signal ?? "KILL" });
}

/**
 * Run a teardown that is neither a kill nor an rm (a network namespace to delete, say) if it is still
 * registered when the test process exits: `run` in this process when it exits (synchronously; the argv
 * when no `run` is given), or `argv` by the reaper after a SIGKILL (after the kills, before the removals;
 * argv[0] is looked up in PATH, so prefer absolute paths). Returns the unregister function.
 */
export function trackCommand(argv: readonly string[], opts: { run?: () => void } = {}): () => void {
  if (argv.length === 0) throw new Error("trackCommand: empty argv");
  const argvFile = join(tmpdir(), `stowage-testkit-reap-${process.pid}-${nextId}.argv`);
  try {
    writeFileSync(argvFile, `${argv.join("\0")}\0`, { mode: 0o600 });
  } catch {
    // the reaper will not run it; the exit handlers still do
  }
  const untrack = add({ kind: "exec", argv, argvFile, ...(opts.run ? { run: opts.run } : {}) });
  return () => {
    untrack();
    try {
      unlinkSync(argvFile);
    } catch {
      // gone
    }
  };
}

/** Remove `path` recursively if it is still registered when the test process exits. Returns the unregister function. */
export function trackDir(path: string): () => void {
  return add({ kind: "rm", path });
}
