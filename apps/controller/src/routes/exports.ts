import type { ServiceImpl } from "@connectrpc/connect";
import type { ExportService } from "@stowage/proto";
import { listExports } from "@stowage/store";
import { actorOf } from "../auth.js";
import type { ControllerContext } from "../context.js";
import { getDiskXml } from "../disk-xml.js";
import {
  createExport,
  deleteExport,
  type ExportOutcome,
  exportToWire,
  resolveExport,
  updateExportHosts,
} from "../export-service.js";
import { resolveVolume } from "../volume-service.js";
import { paged } from "./paging.js";
import { operationReply } from "./replies.js";

const exportReply = (out: ExportOutcome) => ({
  export: exportToWire(out.export),
  operation: operationReply(out.operation),
});

/** ExportService (export-service.ts) and GetDiskXml (disk-xml.ts). */
export function exportRoutes(ctx: ControllerContext): ServiceImpl<typeof ExportService> {
  return {
    createExport: async (req, hc) => exportReply(await createExport(ctx, req, actorOf(hc))),
    async getExport(req) {
      return { export: exportToWire(await resolveExport(ctx.sql, req.exportId)) };
    },
    async listExports(req) {
      const volumeId = req.volume ? (await resolveVolume(ctx.sql, req.volume)).id : undefined;
      const p = await paged(
        req,
        (page) =>
          listExports(ctx.sql, {
            ...page,
            ...(volumeId ? { volumeId } : {}),
            ...(req.hostId ? { hostId: req.hostId } : {}),
          }),
        (e) => e.id,
        exportToWire,
      );
      return { exports: p.rows, nextPageToken: p.nextPageToken };
    },
    deleteExport: async (req, hc) => exportReply(await deleteExport(ctx, req, actorOf(hc))),
    updateExport: async (req, hc) => exportReply(await updateExportHosts(ctx, req, actorOf(hc))),
    getDiskXml: (req) => getDiskXml(ctx, req),
  };
}
