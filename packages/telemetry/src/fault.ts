import { readFileSync } from "node:fs";

/**
 * Fault points for the crash-point matrix (test/crash-matrix.test.ts, docs/testkit.md): off unless the process was
 * started with STOWAGE_FAULT_FILE. Then, at each named point, the file is read; when it holds `<point>:<kind>`
 * (for example `after-commit:create_volume`), the process kills itself with SIGKILL right there, as a power cut
 * would. Without the variable a point costs one comparison. The points:
 * - controller: `before-commit` (the change written, its transaction not committed), `after-commit` (committed,
 *   the command not yet published), `after-publish` (JetStream has the command, it is not marked sent);
 * - agent: `after-tool` (the tool ran, no result published), `after-result` (the result is in JetStream, the
 *   command not acked).
 */
const FILE = process.env.STOWAGE_FAULT_FILE;

export type FaultPoint = "before-commit" | "after-commit" | "after-publish" | "after-tool" | "after-result";

export function faultPoint(point: FaultPoint, kind: string): void {
  if (!FILE) return;
  let armed: string;
  try {
    armed = readFileSync(FILE, "utf8").trim();
  } catch {
    return;
  }
  if (armed !== `${point}:${kind}`) return;
  process.stderr.write(`fault point ${point}:${kind} reached: killing this process (SIGKILL)\n`);
  process.kill(process.pid, "SIGKILL");
}
