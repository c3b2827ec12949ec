import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { makeTempDir } from "@stowage/testkit";
import { describe, expect, it } from "vitest";
import { lockDataDir } from "./db.js";

const ROOT = resolve(import.meta.dirname, "../../..");
/** A starter: waits for the agreed moment, takes the lock, says whether it got it, holds it a little. */
const STARTER = `
import { lockDataDir } from ${JSON.stringify(join(import.meta.dirname, "db.ts"))};
const [dir, at] = process.argv.slice(-2);
while (Date.now() < Number(at)) {}
try { lockDataDir(dir); console.log("locked"); } catch (e) { console.log("refused: " + e.message); }
setTimeout(() => {}, 300);
`;

function starter(script: string, dir: string, at: number): Promise<string> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, ["--import", "tsx", script, dir, String(at)], { cwd: ROOT });
    let out = "";
    child.stdout.on("data", (b) => {
      out += b;
    });
    child.on("error", fail);
    child.on("close", () => done(out.trim()));
  });
}

describe("the PGlite data directory lock", () => {
  it("of two controllers started at the same moment, exactly one gets it, also over a stale lock", async () => {
    const tmp = await makeTempDir("stowage-lock-");
    const script = join(tmp.path, "starter.mts");
    writeFileSync(script, STARTER);
    for (let round = 0; round < 4; round++) {
      const dir = await makeTempDir("stowage-lock-dir-");
      // Odd rounds start over the lock of a process that is gone (a crash).
      if (round % 2 === 1) writeFileSync(join(dir.path, "controller.pid"), "2147483646\n");
      const at = Date.now() + 1500;
      const outs = await Promise.all([starter(script, dir.path, at), starter(script, dir.path, at)]);
      expect(
        outs.filter((o) => o === "locked"),
        `round ${round}: ${outs.join(" | ")}`,
      ).toHaveLength(1);
      expect(outs.find((o) => o !== "locked")).toMatch(
        /^refused: the data directory .* is in use by process \d+/,
      );
      await dir.cleanup();
    }
    await tmp.cleanup();
  }, 60_000);

  it("takes over a lock whose process is gone, refuses a live one, and releases its own", async () => {
    const dir = await makeTempDir("stowage-lock-");
    const file = join(dir.path, "controller.pid");
    writeFileSync(file, "2147483646\n");
    const release = lockDataDir(dir.path);
    expect(readFileSync(file, "utf8")).toBe(`${process.pid}\n`);
    release();
    // A lock file that names no pid (cut short by a crash) is taken over too.
    writeFileSync(file, "");
    lockDataDir(dir.path)();
    writeFileSync(file, "1\n"); // init: alive
    expect(() => lockDataDir(dir.path)).toThrow(/in use by process 1 /);
    await dir.cleanup();
  });
});
