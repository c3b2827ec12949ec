import { createHash } from "node:crypto";
import { accessSync, constants } from "node:fs";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { newId } from "@stowage/core";
import {
  createDirDriver,
  createToolRunner,
  DIR_META,
  ToolError,
  ToolOutputError,
} from "@stowage/drivers/testing";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";

/**
 * Fault injection: small bash scripts named `qemu-img`, put first on PATH through the runner's `pathPrefix`.
 * Each fakes one subcommand and hands everything else to the real qemu-img.
 */

const MiB = 1024n * 1024n;
const realQemuImg = (process.env.PATH ?? "")
  .split(":")
  .map((d) => join(d, "qemu-img"))
  .find((p) => {
    try {
      accessSync(p, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });

let fakes: string;
let root: string;
const realRunner = createToolRunner();

async function fakeQemuImg(name: string, subcommand: string, body: string): Promise<string> {
  const dir = join(fakes, name);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const script = `#!/bin/bash
if [ "$1" = "${subcommand}" ]; then
${body}
fi
exec ${realQemuImg} "$@"
`;
  await writeFile(join(dir, "qemu-img"), script);
  await chmod(join(dir, "qemu-img"), 0o755);
  return dir;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function sha(path: string): Promise<string> {
  return createHash("sha256")
    .update(await readFile(path))
    .digest("hex");
}

beforeAll(async () => {
  expect(realQemuImg).toBeDefined();
  fakes = await mkdtemp(join(tmpdir(), "stowage-fake-tools-"));
});
afterAll(async () => {
  await rm(fakes, { recursive: true, force: true });
});
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "stowage-dir-faults-"));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("dir driver under tool faults", () => {
  it("a hung qemu-img create is killed at the timeout, leaves nothing, and a retry succeeds", async () => {
    // Writes the start of an image into its target (the argument before the size), then hangs.
    const bin = await fakeQemuImg(
      "hang",
      "create",
      `printf 'QFI\\xfb partial' > "\${@: -2:1}"\nsleep 300 & wait\nexit 0`,
    );
    const hungRunner = createToolRunner({ pathPrefix: [bin], defaultTimeoutMs: 500, killGraceMs: 200 });
    const hung = createDirDriver({ poolName: "local", root, runner: hungRunner });
    const spec = {
      volumeId: newId("vol"),
      operationId: newId("op"),
      sizeBytes: 64n * MiB,
      format: "qcow2" as const,
    };

    const t0 = Date.now();
    const err = await hung.createVolume(spec).catch((e) => e);
    expect(Date.now() - t0).toBeLessThan(5_000);
    expect(err).toBeInstanceOf(ToolError);
    expect(err).toMatchObject({ code: "deadline_exceeded", timedOut: true, tool: "qemu-img" });
    expect(err.argv[0]).toBe("create");
    expect(await exists(join(root, `${spec.volumeId}.qcow2`))).toBe(false);
    expect(await readdir(join(root, DIR_META))).toEqual([]);
    expect(await hung.list()).toEqual({ volumes: [], foreign: [] });

    const real = createDirDriver({ poolName: "local", root, runner: realRunner });
    const { artifact, adopted } = await real.createVolume(spec);
    expect(adopted).toBe(false);
    const { stdout } = await realRunner.run("qemu-img", [
      "info",
      "--output=json",
      "-f",
      "qcow2",
      artifact.path,
    ]);
    expect(JSON.parse(stdout)["virtual-size"]).toBe(64 * 1024 * 1024);
  });

  it("a failing qemu-img create gives an error naming the tool, argv and stderr, and leaves nothing", async () => {
    const bin = await fakeQemuImg(
      "fail",
      "create",
      `echo "qemu-img: \${@: -2:1}: Could not create image: Disk quota exceeded" >&2\nexit 1`,
    );
    const d = createDirDriver({ poolName: "local", root, runner: createToolRunner({ pathPrefix: [bin] }) });
    const volumeId = newId("vol");
    const err = await d
      .createVolume({ volumeId, operationId: newId("op"), sizeBytes: 64n * MiB, format: "raw" })
      .catch((e) => e);
    expect(err).toBeInstanceOf(ToolError);
    expect(err).toMatchObject({ code: "internal", tool: "qemu-img", exitCode: 1, timedOut: false });
    const tmp = join(root, DIR_META, `tmp-${volumeId}.raw`);
    expect(err.argv).toEqual(["create", "-q", "-f", "raw", "--", tmp, String(64n * MiB)]);
    expect(err.stderr).toMatch(/Disk quota exceeded/);
    expect(err.message).toBe(
      `qemu-img create -q -f raw -- ${tmp} ${64n * MiB} exited with code 1: qemu-img: ${tmp}: Could not create image: Disk quota exceeded`,
    );
    expect(await readdir(root)).toEqual([DIR_META]);
    expect(await readdir(join(root, DIR_META))).toEqual([]);
  });

  it("broken JSON from qemu-img info gives a clear parse error and changes nothing; list and capacity never ask it", async () => {
    const real = createDirDriver({ poolName: "local", root, runner: realRunner });
    const spec = {
      volumeId: newId("vol"),
      operationId: newId("op"),
      sizeBytes: 64n * MiB,
      format: "qcow2" as const,
    };
    const { artifact } = await real.createVolume(spec);
    const sidecar = join(root, DIR_META, `${spec.volumeId}.json`);
    const before = [await sha(artifact.path), await sha(sidecar)];

    const bin = await fakeQemuImg(
      "badjson",
      "info",
      `echo '{"virtual-size": 67108864, "filename": '\nexit 0`,
    );
    const seen: string[] = [];
    const broken = createDirDriver({
      poolName: "local",
      root,
      runner: createToolRunner({ pathPrefix: [bin], onInvocation: (e) => seen.push(e.argv[0] ?? "") }),
    });
    const attempts = [
      () => broken.info(spec.volumeId),
      () => broken.createVolume(spec),
      () => broken.resizeVolume(spec.volumeId, 128n * MiB, { allowShrink: false, operationId: newId("op") }),
    ];
    for (const attempt of attempts) {
      const err = await attempt().catch((e) => e);
      expect(err).toBeInstanceOf(ToolOutputError);
      expect(err.message).toMatch(/^qemu-img info printed output that is not the expected JSON: /);
      expect(err.message).toContain(artifact.path);
    }
    // Only `info` ran: the resize never reached qemu-img resize.
    expect(new Set(seen)).toEqual(new Set(["info"]));
    // The inventory comes from the records and the directory: a qemu-img that prints garbage cannot break it.
    seen.length = 0;
    expect(await broken.list()).toEqual({ volumes: [artifact], foreign: [] });
    expect((await broken.capacity()).provisionedBytes).toBe(64n * MiB);
    expect(seen).toEqual([]);
    expect([await sha(artifact.path), await sha(sidecar)]).toEqual(before);
    expect(await real.info(spec.volumeId)).toEqual(artifact);
  });
});
