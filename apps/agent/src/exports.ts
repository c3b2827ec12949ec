import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { StowageError } from "@stowage/core";
import {
  type ExportKeeper,
  type IscsiExport,
  iqnForVolume,
  keepExported,
  type TgtExporter,
} from "@stowage/drivers";
import {
  type AgentCommand,
  type ExportArtifact,
  ExportArtifactSchema,
  ExportKind,
  type OperationResultSchema,
} from "@stowage/proto";
import type { Logger } from "@stowage/telemetry";
import { writeAtomic } from "./identity.js";

type Outcome = MessageInitShape<typeof OperationResultSchema>;

/** What the agent keeps of one export it was told to serve (the state file, 0600: it holds CHAP secrets). */
interface DesiredExport {
  exportId: string;
  hostIds: string[];
  export: IscsiExport;
}

/** The exports a host serves, kept as desired state and put back by itself (docs/architecture.md, Exports). */
export interface ExportManager {
  /** Runs a create_export or delete_export command; the fields of its result. */
  handle(cmd: AgentCommand): Promise<Outcome>;
  /** The exports as the agent serves them (for full inventories). */
  artifacts(): ExportArtifact[];
  stop(): Promise<void>;
}

export interface ExportManagerOptions {
  stateDir: string;
  exporter: TgtExporter;
  /** host:port clients reach tgtd at, for the export's URI. */
  portal: string;
  /** The file or block device of a volume in a pool (its driver's path). */
  backing(poolName: string, volumeId: string): Promise<IscsiExport["backing"]>;
  log: Logger;
  /** How often the exports are re-applied, so a restarted tgtd gets them back (default 10 s). */
  intervalMs?: number;
}

const STATE_FILE = "exports.json";

export async function openExportManager(o: ExportManagerOptions): Promise<ExportManager> {
  const path = join(o.stateDir, STATE_FILE);
  const desired = new Map<string, DesiredExport>();
  try {
    const saved = JSON.parse(await readFile(path, "utf8")) as { exports?: DesiredExport[] };
    for (const d of saved.exports ?? []) desired.set(d.exportId, d);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT")
      throw new Error(`${path}: ${(err as Error).message}`);
  }
  await mkdir(o.stateDir, { recursive: true, mode: 0o700 });
  const save = () =>
    writeAtomic(o.stateDir, STATE_FILE, `${JSON.stringify({ exports: [...desired.values()] })}\n`);
  const list = () => [...desired.values()].map((d) => d.export);
  const keeper: ExportKeeper = keepExported(o.exporter, list, { intervalMs: o.intervalMs ?? 10_000 });
  const artifact = (d: DesiredExport) =>
    create(ExportArtifactSchema, {
      exportId: d.exportId,
      volumeId: d.export.volumeId,
      kind: ExportKind.ISCSI,
      uri: `iscsi://${o.portal}/${iqnForVolume(d.export.volumeId)}/1`,
      allowedHostIds: d.hostIds,
    });

  return {
    async handle(cmd) {
      const p = cmd.payload;
      if (p.case !== "createExport" && p.case !== "deleteExport")
        throw new StowageError("invalid_argument", `command ${cmd.operationId} is not an export command`);
      const e = p.value;
      if (e.kind !== ExportKind.ISCSI)
        throw new StowageError(
          "failed_precondition",
          `only iSCSI exports are built on this agent (export ${e.exportId})`,
        );
      if (p.case === "deleteExport") {
        desired.delete(e.exportId);
        await save();
        await o.exporter.apply(list());
        o.log.info({ export: e.exportId, volume: e.volumeId }, "export removed");
        return { success: true };
      }
      const d: DesiredExport = {
        exportId: e.exportId,
        hostIds: e.allowed.map((a) => a.hostId),
        export: {
          volumeId: e.volumeId,
          backing: await o.backing(cmd.poolName, e.volumeId),
          allowed: e.allowed.flatMap((a) =>
            a.addresses.map((address) => ({ initiatorIqn: a.initiatorName, address })),
          ),
          ...(e.chapUser ? { chap: { username: e.chapUser, secret: e.chapSecret } } : {}),
        },
      };
      desired.set(e.exportId, d);
      await save();
      await o.exporter.apply(list());
      o.log.info({ export: e.exportId, volume: e.volumeId, allowed: d.hostIds }, "export applied");
      return { success: true, export: artifact(d) };
    },
    artifacts: () => [...desired.values()].map(artifact),
    stop: () => keeper.stop(),
  };
}
