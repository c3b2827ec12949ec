import {
  createLvmDriver,
  createToolRunner,
  defineConformanceSuite,
  LVM_NO_UDEV_CONFIG,
  lvmToolEnv,
} from "@stowage/drivers/testing";
import { createLoopVg, inKernelVm, KERNEL_VM_SKIP_REASON } from "@stowage/testkit";

// Thin LVs in a thin pool on a loop-device VG with real device-mapper: only in the kernel VM
// (scripts/vm-test.sh). Thin snapshots, merge to revert, clones are thin snapshots (independent, so flatten
// is a no-op), wipes unmap the blocks.

defineConformanceSuite({
  kind: "lvmthin",
  formats: ["raw"],
  ...(inKernelVm() ? {} : { skipReason: KERNEL_VM_SKIP_REASON }),
  setup: async () => {
    const vg = await createLoopVg({
      activation: true,
      sizeBytes: 2n * 1024n ** 3n,
      thinPool: { name: "pool0", sizeBytes: 1024n ** 3n },
    });
    const driver = createLvmDriver({
      poolName: "conformance-lvmthin",
      vg: vg.vg,
      thinPool: "pool0",
      runner: createToolRunner({ env: lvmToolEnv({ lvmSystemDir: vg.lvmSystemDir }) }),
      lvmConfig: LVM_NO_UDEV_CONFIG,
    });
    return {
      driver,
      qemuIoArgs: (a) => ["-f", "raw", a.path],
      teardown: () => vg.teardown(),
    };
  },
});
