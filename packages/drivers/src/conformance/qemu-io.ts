import { StowageError } from "@stowage/core";
import { createToolRunner } from "../runner.js";

/**
 * Reads and writes byte patterns through `qemu-io`, so the conformance suite checks data the way QEMU sees it
 * (through the format layer and the backing chain), whatever the backend. The suite only ever passes
 * arguments the pool itself built (`qemuIoArgs`), never user input.
 */

export interface PatternRange {
  /** One byte, 0..255: every byte of the range holds it. */
  pattern: number;
  offset: bigint | number;
  length: bigint | number;
}

/** qemu-io over TCG or librbd can be slow; it is a test helper, so a generous bound. */
const QEMU_IO_TIMEOUT_MS = 120_000;

/** Fills the range with the pattern. Throws when qemu-io cannot open the image or the write fails. */
export async function writePattern(
  args: readonly string[],
  env: Record<string, string> | undefined,
  range: PatternRange,
): Promise<void> {
  await writePatterns(args, env, [range]);
}

/**
 * True when every byte of the range holds the pattern. A mismatch is an answer (false), not an error: qemu-io
 * prints "Pattern verification failed" (and, depending on the version, still exits 0).
 */
export async function readPattern(
  args: readonly string[],
  env: Record<string, string> | undefined,
  range: PatternRange,
): Promise<boolean> {
  return readPatterns(args, env, [range]);
}

/** writePattern for several ranges in one qemu-io process (one open of the image: slow backends add up). */
export async function writePatterns(
  args: readonly string[],
  env: Record<string, string> | undefined,
  ranges: readonly PatternRange[],
): Promise<void> {
  const commands = ranges.map((r) => `write -P ${hexByte(r.pattern)} ${r.offset} ${r.length}`);
  const out = await qemuIo(args, env, commands, false);
  // qemu-io reports some failures on stdout with exit code 0 (7.2 exits 1 for most, not all).
  if (
    out.exitCode !== 0 ||
    /\bfailed\b/i.test(out.text) ||
    count(out.text, /^wrote \d+\/\d+ bytes/gm) !== ranges.length
  ) {
    throw ioError(args, commands, out.text);
  }
}

/** True when every range holds its pattern, read in one qemu-io process. */
export async function readPatterns(
  args: readonly string[],
  env: Record<string, string> | undefined,
  ranges: readonly PatternRange[],
): Promise<boolean> {
  const commands = ranges.map((r) => `read -P ${hexByte(r.pattern)} ${r.offset} ${r.length}`);
  const out = await qemuIo(args, env, commands, true);
  if (out.text.includes("Pattern verification failed")) return false;
  if (
    out.exitCode !== 0 ||
    /\bfailed\b/i.test(out.text) ||
    count(out.text, /^read \d+\/\d+ bytes/gm) !== ranges.length
  ) {
    throw ioError(args, commands, out.text);
  }
  return true;
}

async function qemuIo(
  args: readonly string[],
  env: Record<string, string> | undefined,
  commands: readonly string[],
  readOnly: boolean,
): Promise<{ text: string; exitCode: number }> {
  const runner = createToolRunner(env ? { env } : {});
  // Exit code 1 is how qemu-io 7.2 reports a failed command; the output says which failure it was.
  const r = await runner.run(
    "qemu-io",
    [...(readOnly ? ["-r"] : []), ...args, ...commands.flatMap((c) => ["-c", c])],
    {
      timeoutMs: QEMU_IO_TIMEOUT_MS,
      allowExitCodes: [1],
    },
  );
  return { text: `${r.stdout}\n${r.stderr}`, exitCode: r.exitCode };
}

function hexByte(pattern: number): string {
  if (!Number.isInteger(pattern) || pattern < 0 || pattern > 255) {
    throw new StowageError("invalid_argument", `pattern ${pattern} is not a byte`);
  }
  return `0x${pattern.toString(16).padStart(2, "0")}`;
}

function count(text: string, re: RegExp): number {
  return text.match(re)?.length ?? 0;
}

function ioError(args: readonly string[], commands: readonly string[], text: string): StowageError {
  const cs = commands.map((c) => `-c "${c}"`).join(" ");
  return new StowageError("internal", `qemu-io ${args.join(" ")} ${cs} failed: ${text.trim().slice(0, 500)}`);
}
