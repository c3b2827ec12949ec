import type { ServiceImpl } from "@connectrpc/connect";
import { failedPrecondition } from "@stowage/core";
import type { AgentService } from "@stowage/proto";
import { registerAgent } from "../agents.js";
import { peerKey } from "../auth.js";
import { tlsEnabled } from "../config.js";
import type { ControllerContext } from "../context.js";
import { exportCredentials } from "../export-service.js";
import { join, pkiOf, renewCertificate } from "../join.js";

/**
 * AgentService: agents join (once, with a join token), renew their certificate, and register themselves (and
 * learn their subjects) over gRPC. Never log these requests: they carry join tokens and CSRs.
 */
export function agentRoutes(ctx: ControllerContext): ServiceImpl<typeof AgentService> {
  return {
    registerAgent: (req, hc) => registerAgent(ctx, req, hc.values.get(peerKey)),
    join: (req, hc) => join(ctx, pkiOf(ctx), req, hc.values.get(peerKey)),
    renewCertificate: (req, hc) => renewCertificate(ctx, pkiOf(ctx), req, hc.values.get(peerKey)),
    // The CHAP account or cephx key of an export, for an allowed host only, as its certificate names it.
    async getExportCredentials(req, hc) {
      const host = hc.values.get(peerKey).host;
      if (!tlsEnabled(ctx.config) || !host)
        throw failedPrecondition(
          "export credentials are handed out only over mutual TLS, to the host a certificate names (docs/security.md)",
        );
      return exportCredentials(ctx, req.exportId, host);
    },
  };
}
