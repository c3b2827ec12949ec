import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "./ports.js";
import { QmpError, qsdAvailable, startQemuStorageDaemon } from "./qsd.js";
import { makeTempDir, type TempDir } from "./temp.js";

const avail = qsdAvailable();
const title = avail.ok ? "startQemuStorageDaemon" : `startQemuStorageDaemon: SKIPPED, ${avail.reason}`;
const run = promisify(execFile);
const MiB = 1024 * 1024;
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

function isGone(pid: number): boolean {
  try {
    return /^State:\s*[ZX]/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return true;
  }
}

describe.skipIf(!avail.ok)(title, () => {
  let tmp: TempDir;
  beforeAll(async () => {
    tmp = await makeTempDir("stowage-qsd-test-");
  });
  afterAll(async () => {
    await tmp?.cleanup();
  });

  it("serves an image over a writable NBD export, answers QMP, refuses an unknown command, and stop() leaves nothing", async () => {
    const img = join(tmp.path, "a.raw");
    await run("qemu-img", ["create", "-f", "raw", img, "8M"]);
    const port = await freePort();
    const qsd = await startQemuStorageDaemon({
      dir: join(tmp.path, "a"),
      blockdevs: [{ id: "vda", path: img, format: "raw" }],
      nbd: { address: "127.0.0.1", port },
      exports: [{ id: "vda", node: "vda", writable: true }],
    });
    try {
      const data = randomBytes(MiB);
      const src = join(tmp.path, "a.data");
      writeFileSync(src, data);
      await run("qemu-io", ["-f", "raw", `nbd://127.0.0.1:${port}/vda`, "-c", `write -s ${src} 3M 1M`]);
      const exportsNow = (await qsd.qmp("query-block-exports")) as { id: string; "node-name": string }[];
      expect(exportsNow.map((e) => [e.id, e["node-name"]])).toEqual([["vda", "vda"]]);
      const err = await qsd.qmp("no-such-command").catch((e: unknown) => e);
      expect(err).toBeInstanceOf(QmpError);
      expect((err as QmpError).errorClass).toBe("CommandNotFound");
      // the connection is still usable after an error answer
      expect(await qsd.queryJobs()).toEqual([]);
      await qsd.stop();
      expect(isGone(qsd.pid)).toBe(true);
      expect(existsSync(qsd.socketPath)).toBe(false);
      expect(sha(readFileSync(img).subarray(3 * MiB, 4 * MiB))).toBe(sha(data));
      await expect(qsd.qmp("query-jobs")).rejects.toThrow(/closed/);
    } finally {
      await qsd.stop();
    }
  });

  it("mirrors a qcow2 into a raw node (sync=full): ready, complete, concluded without error, images identical", async () => {
    const src = join(tmp.path, "m-src.qcow2");
    const dst = join(tmp.path, "m-dst.raw");
    await run("qemu-img", ["create", "-f", "qcow2", src, "16M"]);
    await run("qemu-io", ["-f", "qcow2", "-c", "write -P 0x5c 1M 5M", src]);
    await run("qemu-img", ["create", "-f", "raw", dst, "16M"]);
    const qsd = await startQemuStorageDaemon({
      dir: join(tmp.path, "m"),
      blockdevs: [{ id: "src", path: src, format: "qcow2" }],
    });
    try {
      await qsd.addImage({ id: "dst", path: dst, format: "raw" });
      await qsd.blockdevMirror({ device: "src", target: "dst", sync: "full", jobId: "m0" });
      const ready = await qsd.waitJobReady("m0", 20_000);
      expect(ready.type).toBe("mirror");
      await qsd.jobComplete("m0");
      const end = await qsd.waitJobConcluded("m0", 20_000);
      expect(end.error).toBeUndefined();
      expect(await qsd.queryJobs()).toEqual([]); // dismissed
      expect(qsd.events("JOB_STATUS_CHANGE").map((e) => e.data?.status)).toContain("ready");
      await expect(qsd.waitJobConcluded("nope", 1000)).rejects.toThrow(/does not exist/);
      await qsd.blockdevDel("dst");
    } finally {
      await qsd.stop();
    }
    const cmp = await run("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", src, dst]);
    expect(cmp.stdout).toMatch(/Images are identical/);
  });

  it("fails to start with the daemon's own message when an image is missing", async () => {
    await expect(
      startQemuStorageDaemon({
        dir: join(tmp.path, "bad"),
        blockdevs: [{ id: "vda", path: join(tmp.path, "missing.raw"), format: "raw" }],
      }),
    ).rejects.toThrow(/exited before its QMP monitor answered[\s\S]*missing\.raw/);
  });
});
