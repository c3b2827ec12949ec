import {
  createLvmDriver,
  createToolRunner,
  defineConformanceSuite,
  LVM_NO_UDEV_CONFIG,
  lvmToolEnv,
} from "@stowage/drivers/testing";
import { createLoopVg, inKernelVm, KERNEL_VM_SKIP_REASON } from "@stowage/testkit";

// Thick LVM on a loop-device VG with real device-mapper: only in the kernel VM (scripts/vm-test.sh). Snapshots
// are classic COW snapshots (100%ORIGIN), revert merges them, clones are copies, so flatten has nothing to do.

defineConformanceSuite({
  kind: "lvm",
  formats: ["raw"],
  ...(inKernelVm() ? {} : { skipReason: KERNEL_VM_SKIP_REASON }),
  setup: async () => {
    const vg = await createLoopVg({ activation: true, sizeBytes: 2n * 1024n ** 3n });
    const driver = createLvmDriver({
      poolName: "conformance-lvm",
      vg: vg.vg,
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
