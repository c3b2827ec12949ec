import type { ConnectRouter } from "@connectrpc/connect";
import {
  AgentService,
  AuditService,
  ExportService,
  FindingService,
  Health,
  HostService,
  MigrationService,
  OperationService,
  PlacementService,
  PoolService,
  SnapshotService,
  TokenService,
  VolumeService,
} from "@stowage/proto";
import type { ControllerContext } from "../context.js";
import { agentRoutes } from "./agents.js";
import { auditRoutes } from "./audit.js";
import { exportRoutes } from "./exports.js";
import { findingRoutes } from "./findings.js";
import { healthRoutes } from "./health.js";
import { hostRoutes } from "./hosts.js";
import { migrationRoutes } from "./migrations.js";
import { operationRoutes } from "./operations.js";
import { placementRoutes } from "./placement.js";
import { poolRoutes } from "./pools.js";
import { snapshotRoutes } from "./snapshots.js";
import { tokenRoutes } from "./tokens.js";
import { volumeRoutes } from "./volumes.js";

/** The public API and the agent protocol: one route module per gRPC service, and the gRPC health service. */
export function createRoutes(ctx: ControllerContext) {
  return (router: ConnectRouter) => {
    router.service(VolumeService, volumeRoutes(ctx));
    router.service(SnapshotService, snapshotRoutes(ctx));
    router.service(HostService, hostRoutes(ctx));
    router.service(PoolService, poolRoutes(ctx));
    router.service(PlacementService, placementRoutes(ctx));
    router.service(OperationService, operationRoutes(ctx));
    router.service(FindingService, findingRoutes(ctx));
    router.service(AgentService, agentRoutes(ctx));
    router.service(ExportService, exportRoutes(ctx));
    router.service(MigrationService, migrationRoutes());
    router.service(TokenService, tokenRoutes(ctx));
    router.service(AuditService, auditRoutes(ctx));
    const services = router.handlers.map((h) => h.service.typeName);
    router.service(Health, healthRoutes(ctx, [...new Set(services)]));
  };
}
