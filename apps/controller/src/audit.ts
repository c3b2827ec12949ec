import { AsyncLocalStorage } from "node:async_hooks";
import { type DescMessage, toJson } from "@bufbuild/protobuf";
import { Code, ConnectError, type ContextValues, type Interceptor } from "@connectrpc/connect";
import { type Queryable, writeAudit } from "@stowage/store";
import type { Logger } from "@stowage/telemetry";
import { peerKey, principalKey } from "./auth.js";

/** Who made a call, as an audit row names it. */
export interface AuditWho {
  /** The principal's name: a token's name, "host:NAME" for an agent, "anonymous" without auth. */
  actor: string;
  /** viewer, operator, admin or agent; "" when the caller was not authenticated. */
  role: string;
  /** The caller's address (host:port) from the socket, "" when unknown. */
  source: string;
}

/** The audit state of one call: whose it is, and whether the service already wrote a row that stays. */
interface AuditedCall {
  values: ContextValues;
  recorded: boolean;
}

const current = new AsyncLocalStorage<AuditedCall>();

function whoOf(values: ContextValues): AuditWho {
  const p = values.get(principalKey);
  return { actor: p.name, role: p.role, source: values.get(peerKey).address };
}

/** Who is calling a handler: the principal the auth interceptor set, and the socket's address. */
export function auditWho(hc: { values: ContextValues }): AuditWho {
  return whoOf(hc.values);
}

/**
 * For service code below a handler, which is given the actor only: the actor, with the role and address of the
 * call it runs in (both "" outside a call, as for the controller's own acts).
 */
export function callerOf(actor: string): AuditWho {
  const call = current.getStore();
  if (!call) return { actor, role: "", source: "" };
  const who = whoOf(call.values);
  return { actor, role: who.role, source: who.source };
}

/**
 * Tells the audit interceptor that this call's row is written and committed even though the call is failing
 * (a refusal the service audits itself, outside any transaction that rolls back): it writes no second row.
 */
export function markAudited(): void {
  const call = current.getStore();
  if (call) call.recorded = true;
}

/** Reads, health checks and the audit trail itself are not audited; every other method is. */
export function isAuditedMethod(service: string, method: string): boolean {
  if (service === "grpc.health.v1.Health" || service === "stowage.v1.AuditService") return false;
  return !/^(Get|List|Watch|Explain|Check)/.test(method);
}

type Fields = Record<string, unknown>;
const str = (v: unknown) => (typeof v === "string" ? v : "");

/** What a refused call acted on, by method where the obvious field is not enough. */
const TARGETS: Record<string, (m: Fields, values: ContextValues) => string> = {
  CreateVolumeGroup: (m) =>
    Array.isArray(m.volumes) ? m.volumes.map((v) => str((v as Fields).name)).join(",") : "",
  CreateVolume: (m) => str(m.name),
  CloneVolume: (m) => str(m.name),
  CreateToken: (m) => str(m.name),
  // A token's name or id (a pasted secret is redacted by its shape when the row is written).
  RevokeToken: (m) => str(m.token),
  RegisterAgent: (m) => str((m.host as Fields | undefined)?.name),
  Join: (m) => str(m.hostName),
  RenewCertificate: (_m, values) => values.get(peerKey).host ?? "",
};
/** The obvious id or name field of a request, in this order. */
const TARGET_FIELDS = ["volume", "volumeId", "hostId", "poolId", "exportId", "migrationId", "vmName", "name"];

export function auditTarget(method: string, message: Fields, values: ContextValues): string {
  const byMethod = TARGETS[method];
  if (byMethod) return byMethod(message, values);
  for (const f of TARGET_FIELDS) if (str(message[f])) return str(message[f]);
  return "";
}

/** The request as JSON (proto3 JSON names); the store redacts it when it writes the row. */
function requestOf(schema: DescMessage, message: unknown): unknown {
  try {
    return toJson(schema, message as never);
  } catch {
    return message;
  }
}

/** "permission_denied" for Code.PermissionDenied, as the services' own error rows write codes. */
export function codeText(code: Code): string {
  return (Code[code] ?? "unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

/**
 * Who a refused call came from. The auth interceptor names the caller before a PERMISSION_DENIED (its
 * principal); without one, a caller that presented a verified certificate is "host:NAME" without a role (its
 * certificate was refused, revoked say), an UNAUTHENTICATED one is "unauthenticated", and the rest (a join with
 * a bad token, say) "anonymous" with no role.
 */
function refusedWho(values: ContextValues, err: ConnectError): AuditWho {
  const peer = values.get(peerKey);
  const source = peer.address;
  const principal = values.get(principalKey);
  if (principal !== principalKey.defaultValue) return { actor: principal.name, role: principal.role, source };
  // A certificate the TLS handshake verified names its host even when it is refused (revoked, say).
  if (peer.host) return { actor: `host:${peer.host}`, role: "", source };
  if (err.code === Code.Unauthenticated) return { actor: "unauthenticated", role: "", source };
  return { actor: "anonymous", role: "", source };
}

/**
 * Who a call that failed otherwise came from: its principal. An agent's call on a controller without TLS has
 * none (AgentService needs no token there): it is "anonymous" without a role, not the anonymous admin.
 */
function failedWho(values: ContextValues, service: string): AuditWho {
  if (service === "stowage.v1.AgentService" && values.get(principalKey) === principalKey.defaultValue)
    return { actor: "anonymous", role: "", source: values.get(peerKey).address };
  return whoOf(values);
}

/** How long a refusal waits for its audit row before answering anyway (the write goes on, and is logged if it fails). */
export const AUDIT_WRITE_WAIT_MS = 2_000;

/**
 * Audits every mutating call that fails, so that each mutating call leaves exactly one row. Services write the
 * row of a call that succeeds (in its own transaction), and of the refusals they audit themselves (markAudited);
 * for the others this writes one: outcome "denied" for UNAUTHENTICATED and PERMISSION_DENIED, "error" for the
 * rest, with the caller, its role and address, the method, the target and the request (redacted by the store).
 * A row a service wrote in a transaction that then failed was rolled back with it, so the failure is written
 * here. It sits outside the auth interceptor to see its refusals. A failed audit write is logged; the caller
 * gets its own error, never another one.
 */
export function createAuditInterceptor(sql: Queryable, log: Logger): Interceptor {
  return (next) => async (req) => {
    if (req.stream || !isAuditedMethod(req.service.typeName, req.method.name)) return next(req);
    const call: AuditedCall = { values: req.contextValues, recorded: false };
    try {
      return await current.run(call, () => next(req));
    } catch (err) {
      if (call.recorded) throw err;
      const e = ConnectError.from(err);
      const method = req.method.name;
      const denied = e.code === Code.Unauthenticated || e.code === Code.PermissionDenied;
      const message = req.message as unknown as Fields;
      const write = writeAudit(sql, {
        ...(denied ? refusedWho(req.contextValues, e) : failedWho(req.contextValues, req.service.typeName)),
        action: method,
        target: auditTarget(method, message, req.contextValues),
        request: requestOf(req.method.input, message),
        outcome: denied ? "denied" : "error",
        error: `${codeText(e.code)}: ${e.rawMessage}`,
      }).then(
        () => true,
        (writeErr: unknown) => {
          // The message and code only: a database error's detail may quote the row.
          const { message, code } = writeErr as { message?: unknown; code?: unknown };
          log.error({ error: String(message), code, method }, "audit write of a failed call failed");
          return true;
        },
      );
      let timer: NodeJS.Timeout | undefined;
      const waited = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), AUDIT_WRITE_WAIT_MS);
      });
      if (!(await Promise.race([write, waited])))
        log.warn({ method }, "audit write of a failed call is slow: answering without waiting for it");
      clearTimeout(timer);
      throw err;
    }
  };
}
