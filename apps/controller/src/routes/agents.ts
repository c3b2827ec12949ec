import type { ServiceImpl } from "@connectrpc/connect";
import type { AgentService } from "@stowage/proto";
import { registerAgent } from "../agents.js";
import type { ControllerContext } from "../context.js";
import { notYet } from "./unimplemented.js";

/** AgentService: agents register themselves (and learn their subjects) over gRPC. */
export function agentRoutes(ctx: ControllerContext): ServiceImpl<typeof AgentService> {
  return {
    registerAgent: (req) => registerAgent(ctx, req),
    join: notYet("Join"),
    renewCertificate: notYet("RenewCertificate"),
  };
}
