import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import type { VolumeFormat } from "@stowage/core";
import { type Finding, FindingSchema, type FindingService } from "@stowage/proto";
import type { FindingRow } from "@stowage/store";
import { findingKinds, formats } from "@stowage/wire";
import { actorOf } from "../auth.js";
import type { ControllerContext } from "../context.js";
import { volumeToWire } from "../convert.js";
import {
  adoptFinding,
  findingFilterFromWire,
  listFindingsPage,
  quarantineFinding,
} from "../finding-service.js";
import { paged } from "./paging.js";

export function findingToWire(f: FindingRow): Finding {
  return create(FindingSchema, {
    hostId: f.hostId,
    kind: findingKinds.wire(f.kind),
    subject: f.subject,
    poolId: f.poolId,
    detail: f.detail,
    firstSeen: timestampFromDate(f.firstSeen),
    lastSeen: timestampFromDate(f.lastSeen),
    sizeBytes: f.sizeBytes,
    format: f.format ? formats.wire(f.format as VolumeFormat) : 0,
    allocatedBytes: f.allocatedBytes,
    path: f.path,
    ...(f.quarantinedAt ? { quarantinedAt: timestampFromDate(f.quarantinedAt) } : {}),
    quarantinedBy: f.quarantinedBy,
    quarantineReason: f.quarantineReason,
  });
}

export function findingRoutes(ctx: ControllerContext): ServiceImpl<typeof FindingService> {
  return {
    async listFindings(req) {
      const filter = findingFilterFromWire(req);
      const p = await paged(
        req,
        (page) => listFindingsPage(ctx, { ...filter, ...page }),
        (f) => String(f.seq),
        findingToWire,
      );
      return { findings: p.rows, nextPageToken: p.nextPageToken };
    },
    async quarantineFinding(req, hc) {
      return { finding: findingToWire(await quarantineFinding(ctx, req, actorOf(hc))) };
    },
    async adoptFinding(req, hc) {
      return { volume: volumeToWire(await adoptFinding(ctx, req, actorOf(hc))) };
    },
  };
}
