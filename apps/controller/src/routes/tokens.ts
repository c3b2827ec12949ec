import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { type Timestamp, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { isValidName } from "@stowage/core";
import { type Token, TokenKind, TokenRole, TokenSchema, type TokenService } from "@stowage/proto";
import {
  findToken,
  hashTokenSecret,
  insertToken,
  listTokens,
  newJoinTokenSecret,
  newTokenSecret,
  revokeToken,
  type TokenRole as StoreRole,
  type TokenRow,
  writeAudit,
} from "@stowage/store";
import { auditWho } from "../audit.js";
import { actorOf } from "../auth.js";
import type { ControllerContext } from "../context.js";

const NAME = /^[a-z][a-z0-9-]{0,62}$/;
/** The longest time to live: ten years. */
const MAX_TTL_S = 10n * 366n * 24n * 3600n;
/** A join token's time to live when none is asked for, and its longest (docs/security.md). */
export const JOIN_TTL_DEFAULT_MS = 3600_000;
const JOIN_TTL_MAX_S = 24n * 3600n;
const ROLES: Record<number, StoreRole> = {
  [TokenRole.VIEWER]: "viewer",
  [TokenRole.OPERATOR]: "operator",
  [TokenRole.ADMIN]: "admin",
};
const WIRE_ROLE: Record<StoreRole, TokenRole> = {
  viewer: TokenRole.VIEWER,
  operator: TokenRole.OPERATOR,
  admin: TokenRole.ADMIN,
};

const ts = (d: Date | null): Timestamp | undefined => (d ? timestampFromDate(d) : undefined);

/** A token as the API shows it: never its secret or hash. */
export function tokenToWire(t: TokenRow): Token {
  return create(TokenSchema, {
    id: t.id,
    name: t.name,
    // A join token has no role: it can only join its host.
    role: t.kind === "join" ? TokenRole.UNSPECIFIED : WIRE_ROLE[t.role],
    kind: t.kind === "join" ? TokenKind.JOIN : TokenKind.API,
    host: t.hostId ?? "",
    usedAt: ts(t.usedAt),
    createdBy: t.createdBy,
    createdAt: ts(t.createdAt),
    expiresAt: ts(t.expiresAt),
    revokedAt: ts(t.revokedAt),
    lastUsedAt: ts(t.lastUsedAt),
  });
}

const invalid = (msg: string) => new ConnectError(msg, Code.InvalidArgument);

/** The name of a join token made without one: "join-", the host (as a token name allows) and 6 hex digits. */
function joinTokenName(host: string): string {
  return `join-${host.replace(/[._]/g, "-").slice(0, 50)}-${randomBytes(3).toString("hex")}`;
}

/**
 * API tokens and one-time join tokens stored hashed (admin only, auth.ts); every create and revoke is audited,
 * without the secret.
 */
export function tokenRoutes(ctx: ControllerContext): ServiceImpl<typeof TokenService> {
  return {
    async createToken(req, hc) {
      const join = req.host !== "";
      if (join && !isValidName(req.host))
        throw invalid(
          `host ${JSON.stringify(req.host.slice(0, 80))} is not a valid host name: use 1-63 characters of a-z, 0-9, '.', '_' and '-'`,
        );
      const name = req.name === "" && join ? joinTokenName(req.host) : req.name;
      if (!NAME.test(name))
        throw invalid(
          `token name ${JSON.stringify(name.slice(0, 80))} is not 1 to 63 lowercase letters, digits and '-', starting with a letter`,
        );
      // A join token's role is ignored (it only joins its host); it is stored as the least of them.
      const role = join ? "viewer" : ROLES[req.role];
      if (!role) throw invalid("role must be viewer, operator or admin");
      let ttlMs: number | undefined = join ? JOIN_TTL_DEFAULT_MS : undefined;
      if (req.ttl) {
        const { seconds, nanos } = req.ttl;
        if (seconds < 0n || nanos < 0 || (seconds === 0n && nanos > 0))
          throw invalid(
            join
              ? "ttl must be positive (at least 1 s), or unset for one hour"
              : "ttl must be positive (at least 1 s), or unset for a token that never expires",
          );
        if (join && seconds > JOIN_TTL_MAX_S) throw invalid("a join token lives at most 24 h");
        if (seconds > MAX_TTL_S) throw invalid("ttl is longer than ten years");
        if (seconds > 0n) ttlMs = Number(seconds) * 1000 + Math.floor(nanos / 1e6);
      }
      const actor = actorOf(hc);
      const secret = join ? newJoinTokenSecret() : newTokenSecret();
      const row = await ctx.sql.begin(async (tx) => {
        const created = await insertToken(tx, {
          name,
          role,
          createdBy: actor,
          secretHash: hashTokenSecret(secret),
          ...(ttlMs ? { ttlMs } : {}),
          ...(join ? { hostId: req.host } : {}),
        });
        if (!created)
          throw new ConnectError(
            `a live token is already named ${name}: revoke it first (\`stowctl token revoke ${name}\`) or pick another name`,
            Code.AlreadyExists,
          );
        await writeAudit(tx, {
          ...auditWho(hc),
          action: "CreateToken",
          target: created.id,
          request: {
            name,
            ...(join ? { kind: "join", host: req.host } : { role }),
            ttlSeconds: ttlMs ? Math.round(ttlMs / 1000) : 0,
          },
          outcome: "ok",
        });
        return created;
      });
      if (join) ctx.log.info({ actor, token: row.id, name: row.name, host: req.host }, "join token created");
      else ctx.log.info({ actor, token: row.id, name: row.name, role }, "api token created");
      return { token: tokenToWire(row), secret };
    },
    async listTokens(req) {
      return { tokens: (await listTokens(ctx.sql, req.includeInactive)).map(tokenToWire) };
    },
    async revokeToken(req, hc) {
      const ref = req.token;
      if (!NAME.test(ref) && !/^tok-[0-9a-f]{32}$/.test(ref))
        throw invalid(
          // A pasted secret is never echoed back (docs/security.md, Secrets).
          /^stw_/.test(ref)
            ? "that is a token's secret, not its name or id: revoke a token by its name or id (`stowctl token list`)"
            : `${JSON.stringify(ref.slice(0, 80))} is neither a token name nor a token id (tok-...)`,
        );
      const actor = actorOf(hc);
      const row = await ctx.sql.begin(async (tx) => {
        const found = await findToken(tx, ref);
        if (!found)
          throw new ConnectError(
            `no live token is named or has the id ${ref}: list them with \`stowctl token list\``,
            Code.NotFound,
          );
        const revoked = (await revokeToken(tx, found.id))!;
        await writeAudit(tx, {
          ...auditWho(hc),
          action: "RevokeToken",
          target: found.id,
          request: { ref },
          outcome: "ok",
        });
        return revoked;
      });
      ctx.log.info({ actor, token: row.id, name: row.name }, "api token revoked");
      return { token: tokenToWire(row) };
    },
  };
}
