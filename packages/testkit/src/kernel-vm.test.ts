import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { KernelVmError, kernelVmGuestPath, kernelVmMissingTools, runInKernelVm } from "./kernel-vm.js";
import { makeTempDir } from "./temp.js";

// The kernel VM lab itself, booted for real (TCG, ~10 s a boot). The first run on a machine builds the guest
// kernel cache ($STOWAGE_VM_CACHE, a ~100 MB download); scripts/vm-test.sh and the vm step reuse it.

const BOOT_TIMEOUT_MS = 240_000;

describe("kernel VM lab", () => {
  it(
    "runs a script as root on Debian's kernel: exit code, output, args and env intact, /share writable, the host untouched",
    async () => {
      const dir = await makeTempDir("stowage-vm-lab-test-");
      try {
        const script = join(dir.path, "guest.sh");
        const marker = join(dir.path, "written-by-guest");
        await writeFile(
          script,
          [
            'echo "kernel $(uname -r) user $(id -u) cwd $(pwd)"',
            'printf "arg<%s>\\n" "$@"',
            'echo "env<$GREETING>"',
            "modprobe dm-mod && grep -q device-mapper /proc/misc && echo device-mapper-ok",
            // The guest sees the host's files, and may write over them: into its own RAM, never to the host.
            `echo guest > ${kernelVmGuestPath(marker)}; cat ${kernelVmGuestPath(marker)}`,
            "echo result > /share/out.txt",
            "exit 7",
            "",
          ].join("\n"),
        );
        const share = join(dir.path, "share");
        const r = await runInKernelVm({
          script,
          args: ["two words", "it's", ""],
          env: { GREETING: "a 'quoted' $value" },
          cwd: dir.path,
          shareDir: share,
          timeoutMs: BOOT_TIMEOUT_MS,
        });
        expect(r.exitCode).toBe(7);
        expect(r.kernelVersion).toMatch(/^\d+\.\d+\.\d+-\d+-amd64$/);
        expect(r.output).toContain(`kernel ${r.kernelVersion} user 0 cwd ${kernelVmGuestPath(dir.path)}`);
        expect(kernelVmGuestPath(dir.path)).toMatch(/^\/host-tmp\//);
        expect(r.output).toContain("arg<two words>\narg<it's>\narg<>\n");
        expect(r.output).toContain("env<a 'quoted' $value>");
        expect(r.output).toContain("device-mapper-ok");
        expect(r.output).toContain("guest\n");
        expect(r.console).toContain("stowage-vm: guest up");
        expect(await readFile(join(share, "out.txt"), "utf8")).toBe("result\n");
        expect(existsSync(marker)).toBe(false);
        expect(r.durationMs).toBeGreaterThan(0);
      } finally {
        await dir.cleanup();
      }
    },
    BOOT_TIMEOUT_MS,
  );

  it(
    "a guest that does not finish is killed at the timeout, with a KernelVmError saying so",
    async () => {
      const dir = await makeTempDir("stowage-vm-lab-test-");
      try {
        const script = join(dir.path, "hang.sh");
        await writeFile(script, "sleep 600\n");
        const t0 = Date.now();
        const err = await runInKernelVm({ script, cwd: dir.path, timeoutMs: 3_000 }).catch((e: unknown) => e);
        expect(Date.now() - t0).toBeLessThan(60_000);
        expect(err).toBeInstanceOf(KernelVmError);
        expect(err).toMatchObject({ reason: "timeout" });
        expect((err as Error).message).toMatch(/did not finish within 3 s and was killed/);
      } finally {
        await dir.cleanup();
      }
    },
    BOOT_TIMEOUT_MS,
  );

  it("says which package to install when a tool is missing", async () => {
    const saved = process.env.PATH;
    process.env.PATH = "/nonexistent";
    try {
      expect(kernelVmMissingTools()).toContain(
        "qemu-system-x86_64 (apt-get install -y --no-install-recommends qemu-system-x86)",
      );
      const err = await runInKernelVm({ script: "/bin/true" }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(KernelVmError);
      expect(err).toMatchObject({ reason: "missing-tool" });
      expect((err as Error).message).toMatch(
        /^the kernel VM lab needs: .*qemu-system-x86_64 \(apt-get install/,
      );
    } finally {
      process.env.PATH = saved;
    }
  });
});
