import type { ServiceImpl } from "@connectrpc/connect";
import type { AgentService } from "@stowage/proto";
import { registerAgent } from "../agents.js";
import { peerKey } from "../auth.js";
import type { ControllerContext } from "../context.js";
import { join, pkiOf, renewCertificate } from "../join.js";
import { notYet } from "./unimplemented.js";

/**
 * AgentService: agents join (once, with a join token), renew their certificate, and register themselves (and
 * learn their subjects) over gRPC. Never log these requests: they carry join tokens and CSRs.
 */
export function agentRoutes(ctx: ControllerContext): ServiceImpl<typeof AgentService> {
  return {
    registerAgent: (req, hc) => registerAgent(ctx, req, hc.values.get(peerKey)),
    join: (req, hc) => join(ctx, pkiOf(ctx), req, hc.values.get(peerKey)),
    renewCertificate: (req, hc) => renewCertificate(ctx, pkiOf(ctx), req, hc.values.get(peerKey)),
    // CHAP credentials of exports: in the contract, built with exports (docs/architecture.md, Not built yet).
    getExportCredentials: notYet("GetExportCredentials"),
  };
}
