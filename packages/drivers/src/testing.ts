// "@stowage/drivers/testing": what the tests of drivers and their users need beyond the public face: the
// conformance suite, qemu-io helpers, output parsers and argv builders, and each driver's names and markers.

export * from "./conformance/qemu-io.js";
export * from "./conformance/suite.js";
export { DEFAULT_MAX_CHAIN_DEPTH, DIR_META } from "./dir/index.js";
export { assertOperationId, assertSnapshotId, assertVolumeId } from "./driver.js";
export { type DriverBackend, guardDriver } from "./guard.js";
export * from "./index.js";
export { createKeyedLock, type KeyedLock } from "./keyed-lock.js";
export { LVM_TAG, lvName, lvOldName, lvTempName } from "./lvm/index.js";
export * from "./lvm.js";
export * from "./qemu-img.js";
export { RBD_META } from "./rbd/index.js";
export * from "./rbd.js";
export {
  DEFAULT_KILL_GRACE_MS,
  DEFAULT_MAX_OUTPUT_BYTES,
  DEFAULT_TIMEOUT_MS,
  formatArgv,
  parseJsonOutput,
  STDERR_TAIL_BYTES,
} from "./runner.js";
export * from "./tgt/index.js";
