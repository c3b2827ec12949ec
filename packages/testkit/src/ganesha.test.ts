import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { GANESHA_ROOT_LOCK, ganeshaAvailable, startGanesha } from "./ganesha.js";
import { makeTempDir } from "./temp.js";

const avail = ganeshaAvailable();
const haveQemuImg = (() => {
  try {
    return existsSync("/usr/bin/qemu-img") && existsSync("/usr/lib/x86_64-linux-gnu/qemu/block-nfs.so");
  } catch {
    return false;
  }
})();
const reason = !avail.ok
  ? avail.reason
  : !haveQemuImg
    ? "qemu-img with block-nfs (qemu-block-extra) not installed"
    : "";
const title = reason ? `startGanesha: SKIPPED, ${reason}` : "startGanesha";

function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: "utf8", timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === "number" ? err.code : -1) : 0, out: stdout + stderr });
    });
  });
}

function isGone(pid: number): boolean {
  try {
    return /^State:\s*[ZX]/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return true;
  }
}

describe.skipIf(reason !== "")(title, () => {
  it("serves NFSv3 to qemu-img (nfs://, found through its own rpcbind), and stop() leaves nothing behind", async () => {
    const tmp = await makeTempDir("stowage-ganesha-test-");
    const g = await startGanesha({ dir: tmp.path, exportPath: "/export" });
    try {
      expect(g.url).toBe("nfs://127.0.0.1/export");
      const made = await run("qemu-img", ["create", "-q", "-f", "qcow2", `${g.url}/a.qcow2`, "16M"]);
      expect(made.code, made.out).toBe(0);
      // The file is in the exported directory, made as root (No_Root_Squash).
      const st = await stat(join(g.exportDir, "a.qcow2"));
      expect(st.isFile()).toBe(true);
      expect(st.uid).toBe(0);
      const info = await run("qemu-img", ["info", "--output=json", `${g.url}/a.qcow2`]);
      expect(info.code, info.out).toBe(0);
      expect(JSON.parse(info.out)["virtual-size"]).toBe(16 * 1024 * 1024);
      // The machine-wide lock is ours while it runs: a second root-namespace server waits, then gives up.
      expect(readFileSync(GANESHA_ROOT_LOCK, "utf8").trim()).toBe(String(process.pid));
      await expect(
        startGanesha({ dir: join(tmp.path, "second"), exportPath: "/export", lockTimeoutMs: 300 }),
      ).rejects.toThrow(/lock .* is held by pid/);
      const t0 = Date.now();
      await g.stop();
      expect(Date.now() - t0).toBeLessThan(5_000);
      expect(isGone(g.pid)).toBe(true);
      expect(existsSync(GANESHA_ROOT_LOCK)).toBe(false);
    } finally {
      await g.stop();
      await tmp.cleanup();
    }
  }, 60_000);

  it("refuses a bad export path or address before starting anything", async () => {
    await expect(startGanesha({ dir: "/nonexistent", exportPath: "/a/../b" })).rejects.toThrow(/export path/);
    await expect(startGanesha({ dir: "/nonexistent", exportPath: "x" })).rejects.toThrow(/export path/);
    await expect(startGanesha({ dir: "/nonexistent", exportPath: "/e", address: "host;rm" })).rejects.toThrow(
      /IPv4/,
    );
  });
});
