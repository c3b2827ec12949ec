import {
  Code,
  ConnectError,
  createContextKey,
  type HandlerContext,
  type Interceptor,
} from "@connectrpc/connect";

type Role = "viewer" | "operator" | "admin";

/** Who is calling: set by the auth interceptor. */
export const principalKey = createContextKey<{ name: string; role: Role }>({
  name: "anonymous",
  role: "admin",
});

/** The name the audit log records for the caller of a handler. */
export const actorOf = (hc: HandlerContext) => hc.values.get(principalKey).name;
const RANK: Record<Role, number> = { viewer: 0, operator: 1, admin: 2 };

/** Parses STOWAGE_API_TOKENS: "name:role:token,name:role:token". */
export function parseTokens(spec: string): Map<string, { name: string; role: Role }> {
  const out = new Map<string, { name: string; role: Role }>();
  for (const entry of spec
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)) {
    const [name, role, token] = entry.split(":");
    if (!name || !token || !(role === "viewer" || role === "operator" || role === "admin")) {
      throw new Error(
        `STOWAGE_API_TOKENS entry ${JSON.stringify(name ?? entry)} is not name:role:token with role viewer, operator or admin`,
      );
    }
    out.set(token, { name, role });
  }
  return out;
}

/**
 * The role a method needs: reads are for viewers, agents register themselves, load balancers check health
 * without a token, the rest needs an operator.
 */
function requiredRole(service: string, method: string): Role | null {
  if (service === "stowage.v1.AgentService" || service === "grpc.health.v1.Health") return null;
  if (/^(Get|List|Watch|Explain)/.test(method)) return "viewer";
  if (service === "stowage.v1.HostService" && method === "SetHostSchedulable") return "admin";
  return "operator";
}

/**
 * The authentication seam: without tokens configured (a loopback-only cluster) every caller is an anonymous
 * admin; with tokens, a bearer token is required and its role is checked against the method.
 */
export function createAuthInterceptor(tokens: Map<string, { name: string; role: Role }>): Interceptor {
  return (next) => async (req) => {
    if (tokens.size === 0) return next(req);
    const need = requiredRole(req.service.typeName, req.method.name);
    if (need === null) return next(req);
    const header = req.header.get("authorization") ?? "";
    const m = /^Bearer\s+(.+)$/i.exec(header);
    const who = m ? tokens.get(m[1]!.trim()) : undefined;
    if (!who)
      throw new ConnectError(
        "a bearer token is required: pass --token or set STOWAGE_TOKEN",
        Code.Unauthenticated,
      );
    if (RANK[who.role] < RANK[need]) {
      throw new ConnectError(
        `${who.name} (${who.role}) may not call ${req.method.name}: it needs the ${need} role`,
        Code.PermissionDenied,
      );
    }
    req.contextValues.set(principalKey, who);
    return next(req);
  };
}
