import { create } from "@bufbuild/protobuf";
import { type Timestamp, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { invalidArgument } from "@stowage/core";
import { type AuditEvent, AuditEventSchema, type AuditService } from "@stowage/proto";
import { type AuditRow, listAudit } from "@stowage/store";
import type { ControllerContext } from "../context.js";

const MAX_PAGE = 1000;
const DEFAULT_PAGE = 100;
const MAX_FILTER = 512;
const OUTCOMES = new Set(["", "ok", "error", "denied"]);
const MAX_ID = 2n ** 63n - 1n;

/** An audit row as the API answers it: its request as JSON text, already redacted when it was written. */
export function auditEventToWire(r: AuditRow): AuditEvent {
  return create(AuditEventSchema, {
    id: r.id,
    at: timestampFromDate(r.at),
    actor: r.actor,
    role: r.role,
    source: r.source,
    action: r.action,
    target: r.target,
    requestJson: JSON.stringify(r.request),
    outcome: r.outcome,
    error: r.error,
  });
}

/** The opaque cursor of the next page: the last id answered (newest first, so the next page is below it). */
export function encodeAuditPageToken(lastId: bigint): string {
  return Buffer.from(`audit:${lastId}`, "utf8").toString("base64url");
}

export function decodeAuditPageToken(token: string): bigint | undefined {
  if (token === "") return undefined;
  const text = /^[A-Za-z0-9_-]{1,64}$/.test(token) ? Buffer.from(token, "base64url").toString("utf8") : "";
  const m = /^audit:([1-9][0-9]{0,18})$/.exec(text);
  const id = m ? BigInt(m[1]!) : 0n;
  if (!m || id > MAX_ID || encodeAuditPageToken(id) !== token)
    throw invalidArgument("page_token is not valid: pass the next_page_token of the previous response", {
      field: "page_token",
    });
  return id;
}

function time(ts: Timestamp | undefined, field: string): Date | undefined {
  if (!ts) return undefined;
  const d = timestampDate(ts);
  if (Number.isNaN(d.getTime()) || ts.nanos < 0 || ts.nanos > 999_999_999)
    throw invalidArgument(`${field} is not a valid time`, { field });
  // The database keeps years 1 to 9999 here (and a JavaScript date past that does not pass as text).
  const year = d.getUTCFullYear();
  if (year < 1 || year > 9999)
    throw invalidArgument(`${field} is not between the years 1 and 9999`, { field });
  return d;
}

function filter(value: string, field: string): string | undefined {
  if (value.length > MAX_FILTER)
    throw invalidArgument(`${field} is ${value.length} characters long: at most ${MAX_FILTER}`, { field });
  return value || undefined;
}

/** The audit trail (admin only: auth.ts). */
export function auditRoutes(ctx: ControllerContext): ServiceImpl<typeof AuditService> {
  return {
    async listAuditEvents(req) {
      if (req.pageSize > MAX_PAGE)
        throw invalidArgument(`page_size is ${req.pageSize}: at most ${MAX_PAGE} (0 means ${DEFAULT_PAGE})`, {
          field: "page_size",
        });
      if (!OUTCOMES.has(req.outcome))
        throw invalidArgument(
          `outcome ${JSON.stringify(req.outcome.slice(0, 40))} is not ok, error or denied (or empty for any)`,
          { field: "outcome" },
        );
      const since = time(req.since, "since");
      const until = time(req.until, "until");
      if (since && until && since.getTime() >= until.getTime())
        throw invalidArgument("since must be before until", { field: "since" });
      const before = decodeAuditPageToken(req.pageToken);
      const limit = req.pageSize || DEFAULT_PAGE;
      const rows = await listAudit(ctx.sql, {
        actor: filter(req.actor, "actor"),
        target: filter(req.target, "target"),
        action: filter(req.action, "action"),
        outcome: req.outcome || undefined,
        since,
        until,
        before,
        limit: limit + 1,
      });
      const page = rows.slice(0, limit);
      const more = rows.length > limit;
      return {
        events: page.map(auditEventToWire),
        nextPageToken: more ? encodeAuditPageToken(page[page.length - 1]!.id) : "",
      };
    },
  };
}
