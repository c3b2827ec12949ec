import { accessSync, constants } from "node:fs";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { newId } from "@stowage/core";
import {
  createLvmDriver,
  createToolRunner,
  LVM_NO_UDEV_CONFIG,
  lvmToolEnv,
  lvName,
  lvTempName,
  ToolError,
  type ToolInvocationEvent,
  ToolOutputError,
} from "@stowage/drivers/testing";
import { createLoopVg, type LoopVg } from "@stowage/testkit";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";

/**
 * Fault injection: bash scripts named like an LVM tool, first on PATH through the runner's `pathPrefix`, over
 * a real metadata-only VG. Each one misbehaves in one way (hangs, fails, prints broken JSON), some after doing
 * the real work first, which is what a crash in the middle looks like from the driver's side.
 */

const MiB = 1024n * 1024n;
const realTool = (name: string) =>
  [...(process.env.PATH ?? "").split(":"), "/usr/sbin", "/sbin"]
    .map((d) => join(d, name))
    .find((p) => {
      try {
        accessSync(p, constants.X_OK);
        return true;
      } catch {
        return false;
      }
    });

let vg: LoopVg;
let fakes: string;

beforeAll(async () => {
  vg = await createLoopVg({ activation: false, sizeBytes: 256n * MiB });
  fakes = await mkdtemp(join(tmpdir(), "stowage-fake-lvm-"));
});
afterAll(async () => {
  await vg?.teardown();
  if (fakes) await rm(fakes, { recursive: true, force: true });
});
beforeEach(async () => {
  const { stdout } = await vg.lvm("lvs", ["--noheadings", "-o", "lv_name", vg.vg]);
  for (const name of stdout
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean)) {
    await vg.lvm("lvremove", ["-q", "-y", `${vg.vg}/${name}`]);
  }
});

/** A directory holding one fake `tool` whose body runs first; `$REAL` is the real tool. */
async function fake(label: string, tool: string, body: string): Promise<string> {
  const real = realTool(tool);
  expect(real, `${tool} on PATH`).toBeDefined();
  const dir = join(fakes, label);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, tool), `#!/bin/bash\nREAL=${real}\n${body}\n`);
  await chmod(join(dir, tool), 0o755);
  return dir;
}

function driverWith(
  pathPrefix: string[],
  extra: { defaultTimeoutMs?: number } = {},
  seen?: ToolInvocationEvent[],
) {
  const runner = createToolRunner({
    env: lvmToolEnv({ lvmSystemDir: vg.lvmSystemDir }),
    pathPrefix,
    killGraceMs: 200,
    ...extra,
    ...(seen ? { onInvocation: (e: ToolInvocationEvent) => seen.push(e) } : {}),
  });
  return createLvmDriver({ poolName: "faulty", vg: vg.vg, runner, lvmConfig: LVM_NO_UDEV_CONFIG });
}

async function lvNames(): Promise<string[]> {
  const { stdout } = await vg.lvm("lvs", ["--noheadings", "-o", "lv_name", vg.vg]);
  return stdout
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean)
    .sort();
}

const spec = () => ({
  volumeId: newId("vol"),
  operationId: newId("op"),
  sizeBytes: 64n * MiB,
  format: "raw" as const,
});

describe("lvm driver under tool faults", () => {
  it("an lvcreate that hangs after making the LV is killed at the timeout; nothing stays, a retry succeeds", async () => {
    // The real lvcreate runs (the temp LV exists), then the process hangs as if stuck on a device.
    const bin = await fake("hang", "lvcreate", `"$REAL" "$@" || exit $?\nsleep 300 & wait\nexit 0`);
    const hung = driverWith([bin], { defaultTimeoutMs: 1500 });
    const s = spec();
    const t0 = Date.now();
    const err = await hung.createVolume(s).catch((e: unknown) => e);
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(err).toBeInstanceOf(ToolError);
    expect(err).toMatchObject({ code: "deadline_exceeded", timedOut: true, tool: "lvcreate" });
    expect((err as ToolError).argv).toContain(lvTempName(s.volumeId));
    // The failed attempt cleaned up its temp LV; nothing appeared under the final name.
    expect(await lvNames()).toEqual([]);
    expect(await hung.list()).toEqual({ volumes: [], foreign: [] });

    const real = driverWith([]);
    const { adopted, artifact } = await real.createVolume(s);
    expect(adopted).toBe(false);
    expect(artifact.sizeBytes).toBe(64n * MiB);
    expect(await lvNames()).toEqual([lvName(s.volumeId)]);
  });

  it("a crash between lvcreate and lvrename leaves only a temp LV, which the retry replaces", async () => {
    // lvrename "crashes": the process dies by SIGKILL before doing anything, and so does the cleanup's lvremove.
    const renameBin = await fake("rename-crash", "lvrename", "kill -9 $$");
    const removeBin = await fake("remove-crash", "lvremove", "kill -9 $$");
    const crashing = driverWith([renameBin, removeBin]);
    const s = spec();
    const err = await crashing.createVolume(s).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ToolError);
    expect((err as ToolError).message).toMatch(/^lvrename .* was killed by SIGKILL/);
    expect(await lvNames()).toEqual([lvTempName(s.volumeId)]);
    expect((await crashing.list()).volumes).toEqual([]);
    expect(await crashing.info(s.volumeId)).toBeUndefined();

    const seen: ToolInvocationEvent[] = [];
    const { adopted } = await driverWith([], {}, seen).createVolume(s);
    expect(adopted).toBe(false);
    expect(seen.map((e) => e.tool)).toEqual(["lvs", "lvremove", "lvcreate", "lvrename", "lvs"]);
    expect(await lvNames()).toEqual([lvName(s.volumeId)]);
  });

  it("a failing lvcreate gives an error naming the tool, its argv and stderr, and leaves nothing", async () => {
    const bin = await fake(
      "fail",
      "lvcreate",
      `echo "  Device /dev/loop9 not found (or ignored by filtering)." >&2\necho "  Aborting. Failed to wipe start of new LV." >&2\nexit 5`,
    );
    const s = spec();
    const err = (await driverWith([bin])
      .createVolume(s)
      .catch((e: unknown) => e)) as ToolError;
    expect(err).toBeInstanceOf(ToolError);
    expect(err).toMatchObject({ code: "internal", tool: "lvcreate", exitCode: 5, timedOut: false });
    expect(err.argv).toEqual([
      "--config",
      LVM_NO_UDEV_CONFIG,
      "-q",
      "-y",
      "-n",
      lvTempName(s.volumeId),
      "--addtag",
      `stowage.vol=${s.volumeId}`,
      "--addtag",
      `stowage.op=${s.operationId}`,
      "-L",
      `${64n * MiB}b`,
      vg.vg,
    ]);
    expect(err.stderr).toMatch(/Failed to wipe start of new LV/);
    expect(err.message).toMatch(
      /^lvcreate --config .* -n stowage-tmp-vol-[0-9a-f]{32} .* exited with code 5: .*Aborting/s,
    );
    expect(await lvNames()).toEqual([]);
  });

  it("insufficient space from lvcreate is resource_exhausted, with the tool error as its cause", async () => {
    const bin = await fake(
      "nospace",
      "lvcreate",
      `echo '  Volume group "vg0" has insufficient free space (10 extents): 16 required.' >&2\nexit 5`,
    );
    const err = await driverWith([bin])
      .createVolume(spec())
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "resource_exhausted" });
    expect((err as Error).cause).toBeInstanceOf(ToolError);
  });

  it("broken JSON from lvs is a clear parse error and changes nothing", async () => {
    const real = driverWith([]);
    const s = spec();
    await real.createVolume(s);
    const bin = await fake(
      "badjson",
      "lvs",
      `echo '  {'\necho '      "report": [ {"lv": [ {"lv_name":"x", '\nexit 0`,
    );
    const seen: ToolInvocationEvent[] = [];
    const broken = driverWith([bin], {}, seen);
    const attempts = [
      () => broken.info(s.volumeId),
      () => broken.list(),
      () => broken.capacity(),
      () => broken.createVolume(s),
      () => broken.deleteVolume(s.volumeId),
      () => broken.resizeVolume(s.volumeId, 128n * MiB, { allowShrink: false, operationId: newId("op") }),
    ];
    for (const attempt of attempts) {
      const err = await attempt().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ToolOutputError);
      expect((err as Error).message).toMatch(/^lvs printed output that is not the expected JSON: /);
      expect((err as Error).message).toContain(`--reportformat json`);
    }
    // Nothing but lvs ran: no delete or resize acted on a report it could not read.
    expect(new Set(seen.map((e) => e.tool))).toEqual(new Set(["lvs"]));
    expect(await real.info(s.volumeId)).toMatchObject({ sizeBytes: 64n * MiB, operationId: s.operationId });
  });

  it("JSON of the wrong shape (a size with a unit suffix) is refused, not fed into capacity maths", async () => {
    await driverWith([]).createVolume(spec());
    // The real lvs without --nosuffix: sizes come out as "67108864B".
    const bin = await fake(
      "suffix",
      "lvs",
      `args=()\nfor a in "$@"; do [ "$a" = --nosuffix ] || args+=("$a"); done\n"$REAL" "\${args[@]}"`,
    );
    const err = await driverWith([bin])
      .capacity()
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ToolOutputError);
    expect((err as Error).message).toMatch(/lv_size: expected a decimal byte count/);
  });

  it("a hung lvs makes check() unhealthy with the reason, within the timeout", async () => {
    const bin = await fake("hang-vgs", "vgs", "sleep 300 & wait");
    const t0 = Date.now();
    const r = await driverWith([bin], { defaultTimeoutMs: 1000 }).check();
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(r.healthy).toBe(false);
    expect(r.message).toMatch(/vgs .* timed out after 1000 ms and was killed/);
  });
});
