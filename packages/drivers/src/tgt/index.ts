// iSCSI exports with tgt (userspace target): the exporter, its desired-state types, the IQN rule, and the
// show parser and planner (pure, for tests).
export {
  type IscsiExport,
  type IscsiInitiator,
  iqnForVolume,
  isInitiatorName,
  isStowageIqn,
  STOWAGE_IQN_PREFIX,
  validateExports,
  volumeIdFromIqn,
} from "./export.js";
export {
  type ApplyReport,
  createTgtExporter,
  type ExportKeeper,
  type KeepExportedOptions,
  keepExported,
  type TgtExporter,
  type TgtExporterOptions,
} from "./exporter.js";
export {
  bstypeFor,
  describeStep,
  type PlannedExport,
  type PlanOptions,
  planTgt,
  type TgtPlan,
  type TgtState,
  type TgtStep,
  tgtadmArgv,
} from "./plan.js";
export { parseTgtAccounts, parseTgtTargets, type TgtLun, type TgtSession, type TgtTarget } from "./show.js";
