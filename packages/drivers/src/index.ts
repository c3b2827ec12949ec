// The public face of @stowage/drivers: the pool drivers' factories, the contract they implement, and the tool
// runner with its errors. Parsers, argv builders, layout constants and the conformance suite are for tests:
// "@stowage/drivers/testing".
export { createDirDriver, DEFAULT_MAX_CHAIN_DEPTH, type DirDriverOptions } from "./dir/index.js";
export type {
  CloneSpec,
  CreateResult,
  CreateVolumeSpec,
  DeleteOptions,
  PoolCapacityReport,
  PoolDriver,
  ResizeOptions,
  SnapshotInfo,
  VolumeArtifact,
  WipeMode,
} from "./driver.js";
export {
  createLvmDriver,
  LVM_NO_UDEV_CONFIG,
  type LvmDriverOptions,
  lvmPhysicalDevices,
  lvmToolEnv,
} from "./lvm/index.js";
export {
  createNetfsDriver,
  type NetfsDriverOptions,
  type NetfsShare,
  Nfs3Client,
  NfsError,
  parseNetfsUrl,
} from "./netfs/index.js";
export {
  type CephAdmin,
  cephMonitorAddresses,
  cephxKeyDigest,
  createRbdDriver,
  grantRbdAccess,
  listStowageCephxClients,
  type RbdCaps,
  type RbdDriverOptions,
  type RbdGrant,
  type RbdGrantSpec,
  rbdImageForVolume,
  revokeRbdAccess,
  STOWAGE_CEPHX_PREFIX,
  type StowageCephxClient,
} from "./rbd/index.js";
export {
  createToolRunner,
  REDACTED,
  type RunOptions,
  ToolError,
  type ToolErrorFields,
  type ToolInvocationEvent,
  ToolOutputError,
  type ToolResult,
  type ToolRunner,
  type ToolRunnerOptions,
} from "./runner.js";
export {
  type ApplyReport,
  createTgtExporter,
  type ExportKeeper,
  type IscsiExport,
  type IscsiInitiator,
  iqnForVolume,
  type KeepExportedOptions,
  keepExported,
  STOWAGE_IQN_PREFIX,
  type TgtExporter,
  type TgtExporterOptions,
  volumeIdFromIqn,
} from "./tgt/index.js";
