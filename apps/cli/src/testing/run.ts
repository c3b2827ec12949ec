import { createProgram } from "../program.js";
import { NOW } from "./fake-controller.js";

export interface StowctlRun {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs stowctl in-process with `env` as its whole environment (STOWAGE_SERVER, STOWAGE_TOKEN, ...), the fake
 * controller's clock (NOW) and a short poll interval for --wait; its output captured.
 */
export async function runStowctl(
  args: string[],
  env: Record<string, string | undefined>,
  opts: { now?: () => Date } = { now: () => NOW },
): Promise<StowctlRun> {
  const out: string[] = [];
  const err: string[] = [];
  const program = createProgram({
    out: { write: (s: string) => out.push(s) },
    err: { write: (s: string) => err.push(s) },
    env,
    ...(opts.now ? { now: opts.now } : {}),
    pollIntervalMs: 20,
  });
  const code = await program.run(args);
  return { code, stdout: out.join(""), stderr: err.join("") };
}
