import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createDirDriver, createToolRunner, defineConformanceSuite } from "@stowage/drivers/testing";

// dir pools on a temp directory, with the real qemu-img. qcow2 volumes have internal snapshots and linked
// clones; raw files cannot be snapshotted (a raw file has nowhere to keep one), but clone and flatten by copy.

function setup(label: string) {
  return async () => {
    const root = await mkdtemp(join(tmpdir(), `stowage-conformance-dir-${label}-`));
    const driver = createDirDriver({ poolName: `conformance-${label}`, root, runner: createToolRunner() });
    return {
      driver,
      qemuIoArgs: (a: { format: string; path: string }) => ["-f", a.format, a.path],
      teardown: async () => {
        if (process.env.STOWAGE_TEST_KEEP_TMP !== "1") await rm(root, { recursive: true, force: true });
      },
    };
  };
}

defineConformanceSuite({
  kind: "dir",
  formats: ["qcow2"],
  setup: setup("qcow2"),
});

defineConformanceSuite({
  kind: "dir",
  formats: ["raw"],
  setup: setup("raw"),
});
