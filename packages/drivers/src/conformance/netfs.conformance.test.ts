import { existsSync } from "node:fs";
import { createNetfsDriver, createToolRunner, defineConformanceSuite } from "@stowage/drivers/testing";
import { type GaneshaService, ganeshaAvailable, makeTempDir, startGanesha } from "@stowage/testkit";

// netfs pools on a real NFS-Ganesha (NFSv3, its own rpcbind), images through qemu's nfs:// driver and the
// metadata through the driver's NFSv3 client. Ganesha runs in the test's own network namespace, so it takes
// the machine-wide NFSv3 lock (only one server can own port 111): one suite at a time.

const avail = ganeshaAvailable();
const haveNfsBlock = existsSync("/usr/lib/x86_64-linux-gnu/qemu/block-nfs.so");
const skipReason = !avail.ok
  ? avail.reason
  : !haveNfsBlock
    ? "qemu's nfs block driver not installed: apt-get install -y qemu-block-extra"
    : undefined;

function setup(label: string) {
  return async () => {
    const tmp = await makeTempDir(`stowage-conformance-netfs-${label}-`);
    let g: GaneshaService | undefined;
    try {
      g = await startGanesha({ dir: tmp.path, exportPath: `/pool-${label}` });
    } catch (e) {
      await tmp.cleanup();
      throw e;
    }
    const driver = createNetfsDriver({
      poolName: `conformance-${label}`,
      url: g.url,
      runner: createToolRunner(),
    });
    return {
      driver,
      qemuIoArgs: (a: { format: string; path: string }) => ["-f", a.format, a.path],
      teardown: async () => {
        await g?.stop();
        await tmp.cleanup();
      },
    };
  };
}

defineConformanceSuite({
  kind: "netfs",
  formats: ["qcow2", "raw"],
  setup: setup("all"),
  ...(skipReason ? { skipReason } : {}),
});
