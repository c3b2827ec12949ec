import { describe, expect, it } from "vitest";
import { ToolError, type ToolRunner } from "../runner.js";
import { createTgtExporter } from "./exporter.js";

/** A runner that records argv and answers from `answer` (tgtadm output, or an exit code to fail with). */
function fakeRunner(answer: (argv: readonly string[]) => string | number) {
  const calls: (readonly string[])[] = [];
  const runner: ToolRunner = {
    run: async (tool, argv) => {
      calls.push(argv);
      const a = answer(argv);
      if (typeof a === "number") {
        throw new ToolError("internal", `${tool} exited with code ${a}`, {
          tool,
          argv,
          exitCode: a,
          stderr: "tgtadm: failed to send request hdr to tgt daemon, Transport endpoint is not connected",
          timedOut: false,
        });
      }
      return { stdout: a, stderr: "", exitCode: 0, durationMs: 1 };
    },
  };
  return { runner, calls };
}

const V1 = "vol-00000000000000000000000000000001";

describe("createTgtExporter", () => {
  it("refuses a bad desired state before running anything", async () => {
    const { runner, calls } = fakeRunner(() => "");
    const exporter = createTgtExporter({ runner, controlPort: 3 });
    await expect(
      exporter.apply([{ volumeId: V1, backing: { type: "file", path: "relative.raw" }, allowed: [] }]),
    ).rejects.toMatchObject({ code: "invalid_argument" });
    expect(calls).toEqual([]);
  });

  it("says tgtd is not running (unavailable) when tgtadm cannot reach the control port", async () => {
    const { runner } = fakeRunner(() => 107);
    const exporter = createTgtExporter({ runner, controlPort: 3 });
    await expect(exporter.apply([])).rejects.toMatchObject({
      code: "unavailable",
      message: expect.stringContaining("tgtd is not running on control port 3"),
    });
  });

  it("reads only, and reports nothing changed, when tgtd already has the desired state", async () => {
    const { runner, calls } = fakeRunner((argv) => (argv.includes("account") ? "Account list:\n" : ""));
    const report = await createTgtExporter({ runner, controlPort: 3 }).apply([]);
    expect(report).toEqual({ changed: false, actions: [], exports: [], removed: [] });
    expect(calls.map((a) => a.join(" "))).toEqual([
      "-C 3 --lld iscsi --mode target --op show",
      "-C 3 --lld iscsi --mode account --op show",
    ]);
  });

  it("refuses control ports tgt does not take", () => {
    const { runner } = fakeRunner(() => "");
    expect(() => createTgtExporter({ runner, controlPort: 40_000 })).toThrow(/0-32767/);
  });
});
