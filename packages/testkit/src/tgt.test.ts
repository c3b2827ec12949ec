import { existsSync, readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { makeTempDir } from "./temp.js";
import { startTgtd, tgtAvailable } from "./tgt.js";

const avail = tgtAvailable();
const title = avail.ok ? "startTgtd" : `startTgtd: SKIPPED, ${avail.reason}`;

function isGone(pid: number): boolean {
  try {
    return /^State:\s*[ZX]/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return true;
  }
}

describe.skipIf(!avail.ok)(title, () => {
  // tgt control ports go up to 32767; one per test process
  const controlPort = 8_000 + (process.pid % 12_000);

  it("starts on its own portal and control port, and stop() (tgtd ignores SIGTERM) leaves nothing behind", async () => {
    const tmp = await makeTempDir("stowage-tgtd-test-");
    const tgtd = await startTgtd({ dir: tmp.path, portal: "127.0.0.1:0", controlPort });
    try {
      const made = await tgtd.tgtadm([
        "--lld",
        "iscsi",
        "--mode",
        "target",
        "--op",
        "new",
        "--tid",
        "1",
        "--targetname",
        "iqn.2024-01.test:t",
      ]);
      expect(made.exitCode, made.stderr).toBe(0);
      await expect(startTgtd({ dir: tmp.path, portal: "127.0.0.1:0", controlPort })).rejects.toThrow(
        /already answers/,
      );
      const t0 = Date.now();
      await tgtd.stop();
      expect(Date.now() - t0).toBeLessThan(2_500); // no wait for a SIGKILL timeout
      expect(tgtd.signalCode).toBeNull(); // it exited on `--mode system --op delete`, not by a kill
      expect(isGone(tgtd.pid)).toBe(true);
      expect(existsSync(`/var/run/tgtd/socket.${controlPort}`)).toBe(false);
    } finally {
      await tgtd.stop();
      await tmp.cleanup();
    }
  });

  it("comes back on the same control port after a SIGKILL", async () => {
    const tmp = await makeTempDir("stowage-tgtd-test-");
    const first = await startTgtd({ dir: tmp.path, portal: "127.0.0.1:0", controlPort: controlPort + 1 });
    await first.kill();
    const second = await startTgtd({ dir: tmp.path, portal: "127.0.0.1:0", controlPort: controlPort + 1 });
    try {
      expect((await second.tgtadm(["--mode", "system", "--op", "show"])).exitCode).toBe(0);
      await first.stop(); // the killed one's stop leaves its successor's socket alone
      expect((await second.tgtadm(["--mode", "system", "--op", "show"])).exitCode).toBe(0);
    } finally {
      await second.stop();
      await tmp.cleanup();
    }
  });
});
