import type { ServiceImpl } from "@connectrpc/connect";
import type { ExportService } from "@stowage/proto";
import type { ControllerContext } from "../context.js";
import { getDiskXml } from "../disk-xml.js";
import { notYet } from "./unimplemented.js";

/** ExportService: GetDiskXml for local volumes (disk-xml.ts); exports themselves are not built yet. */
export function exportRoutes(ctx: ControllerContext): ServiceImpl<typeof ExportService> {
  return {
    createExport: notYet("CreateExport"),
    getExport: notYet("GetExport"),
    listExports: notYet("ListExports"),
    deleteExport: notYet("DeleteExport"),
    updateExport: notYet("UpdateExport"),
    getDiskXml: (req) => getDiskXml(ctx, req),
  };
}
