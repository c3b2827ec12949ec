import { createRbdDriver, createToolRunner, defineConformanceSuite } from "@stowage/drivers/testing";
import { CEPH_INSTALL_HINT, cephAvailable, startCeph } from "@stowage/testkit";

// rbd pools on a throwaway one-node Ceph (one mon, one bluestore OSD, no mgr; ~11 s to start) with the real
// rbd CLI, and qemu-io reading and writing through librbd. RBD snapshots roll back in place and clones hang
// from protected snapshots; "zero" wipes are refused by design (see rbd/layout.ts), so only none and discard.

defineConformanceSuite({
  kind: "rbd",
  formats: ["raw"],
  ...(cephAvailable() ? {} : { skipReason: `ceph-mon/ceph-osd not installed: ${CEPH_INSTALL_HINT}` }),
  setup: async () => {
    const ceph = await startCeph();
    const driver = createRbdDriver({
      poolName: "conformance-rbd",
      cephPool: ceph.pool,
      cephConf: ceph.conf,
      cephUser: ceph.id,
      keyring: ceph.keyring,
      runner: createToolRunner(),
    });
    return {
      driver,
      // The artefact's path is qemu's own `rbd:pool/image`; the cluster's options follow it.
      qemuIoArgs: (a) => ["-f", "raw", `${a.path}:conf=${ceph.conf}:id=${ceph.id}:keyring=${ceph.keyring}`],
      teardown: () => ceph.stop({ fast: true }),
    };
  },
});
