import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort, sleep } from "./ports.js";
import { spawnService } from "./process.js";
import { makeTempDir, type TempDir } from "./temp.js";

const node = process.execPath;

/** Gone, or a zombie waiting for a lazy PID 1 to reap it. */
function isGone(pid: number): boolean {
  try {
    return /^State:\s*[ZX]/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return true;
  }
}

describe("spawnService", () => {
  let tmp: TempDir;
  beforeAll(async () => {
    tmp = await makeTempDir("stowage-proc-test-");
  });
  afterAll(async () => {
    await tmp.cleanup();
  });

  it("waits for a ready line, keeps the output and stops with SIGTERM", async () => {
    const logFile = join(tmp.path, "svc.log");
    const svc = await spawnService({
      name: "liner",
      command: node,
      args: [
        "-e",
        "console.log('starting'); setTimeout(() => console.error('ready now'), 200); setInterval(() => {}, 1000)",
      ],
      readyWhen: (line) => line.includes("ready now"),
      logFile,
    });
    expect(svc.running).toBe(true);
    expect(svc.logs()).toContain("starting");
    expect(await svc.stop()).toBeNull();
    expect(svc.signalCode).toBe("SIGTERM");
    expect(svc.running).toBe(false);
    await sleep(50);
    expect(readFileSync(logFile, "utf8")).toContain("ready now");
  });

  it("polls a URL until it answers, and returns the exit code of a graceful stop", async () => {
    const port = await freePort();
    const svc = await spawnService({
      name: "http",
      command: node,
      args: [
        "-e",
        `const s = require("node:http").createServer((q, r) => r.end("ok"));
         setTimeout(() => s.listen(${port}, "127.0.0.1"), 300);
         process.on("SIGTERM", () => s.close(() => process.exit(0)));`,
      ],
      readyWhen: `http://127.0.0.1:${port}/`,
    });
    expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toBe("ok");
    expect(await svc.stop()).toBe(0);
    expect(await svc.exited).toBe(0);
  });

  it("passes env and cwd", async () => {
    const svc = await spawnService({
      name: "env",
      command: node,
      args: [
        "-e",
        "console.log('v=' + process.env.TK_VALUE + ' cwd=' + process.cwd()); setInterval(() => {}, 1000)",
      ],
      env: { TK_VALUE: "42" },
      cwd: tmp.path,
      readyWhen: (line) => line.startsWith("v="),
    });
    expect(svc.logs()).toContain(`v=42 cwd=${tmp.path}`);
    await svc.kill();
    expect(svc.signalCode).toBe("SIGKILL");
  });

  it("rejects with the output when the process exits before it is ready", async () => {
    await expect(
      spawnService({
        name: "crasher",
        command: node,
        args: ["-e", "console.error('boom: bad config'); process.exit(3)"],
        readyWhen: () => false,
      }),
    ).rejects.toThrow(/crasher: exited with code 3 before it was ready; last output:\nboom: bad config/);
  });

  it("rejects after the ready timeout and kills the process", async () => {
    const err = await spawnService({
      name: "slow",
      command: node,
      args: ["-e", "console.log('pid', process.pid); setInterval(() => {}, 1000)"],
      readyWhen: () => false,
      readyTimeoutMs: 500,
    }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/slow: not ready after 500 ms/);
    const pid = Number(/pid (\d+)/.exec((err as Error).message)?.[1]);
    expect(isGone(pid)).toBe(true);
  });

  it("rejects clearly when the command does not exist", async () => {
    await expect(
      spawnService({ name: "ghost", command: "/nonexistent/stowage-ghost", readyWhen: () => true }),
    ).rejects.toThrow(/ghost: cannot start \/nonexistent\/stowage-ghost/);
  });

  it("kills the children of the service too", async () => {
    const svc = await spawnService({
      name: "parent",
      command: node,
      args: [
        "-e",
        `const c = require("node:child_process").spawn("sleep", ["1000"], { stdio: "ignore" });
         console.log("child", c.pid); setInterval(() => {}, 1000);`,
      ],
      readyWhen: (line) => line.startsWith("child "),
    });
    const childPid = Number(/child (\d+)/.exec(svc.logs())?.[1]);
    expect(isGone(childPid)).toBe(false);
    await svc.stop();
    for (let i = 0; i < 50 && !isGone(childPid); i++) await sleep(20);
    expect(isGone(childPid)).toBe(true);
  });
});

describe("makeTempDir", () => {
  it("creates a directory under the temp dir and removes it", async () => {
    const dir = await makeTempDir("stowage-tk-");
    expect(existsSync(dir.path)).toBe(true);
    expect(dir.path).toMatch(/stowage-tk-/);
    await dir.cleanup();
    expect(existsSync(dir.path)).toBe(false);
    await dir.cleanup();
  });
});
