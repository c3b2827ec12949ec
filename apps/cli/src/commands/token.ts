import { type Token, TokenKind, TokenRole, TokenRoleSchema, TokenSchema } from "@stowage/proto";
import type { Command } from "commander";
import { type Act, examples } from "../command-kit.js";
import { usageError } from "../errors.js";
import {
  enumChoices,
  enumName,
  formatTime,
  type OutputFormat,
  orDash,
  renderTable,
  toPlain,
} from "../output.js";
import { parseDuration, parseEnum, parseName } from "../parse.js";

const hints = {};

const isJoin = (t: Token) => t.kind === TokenKind.JOIN;

function tokenTable(tokens: readonly Token[], view: { format: OutputFormat; now: Date }): string {
  const rows = tokens.map((t) => [
    t.name,
    t.id,
    isJoin(t) ? "join" : "api",
    isJoin(t) ? "-" : enumName(TokenRoleSchema, t.role),
    orDash(t.host || undefined),
    t.createdBy,
    formatTime(t.createdAt, view.now, view.format),
    t.expiresAt ? formatTime(t.expiresAt, view.now, view.format) : "never",
    isJoin(t)
      ? orDash(t.usedAt ? formatTime(t.usedAt, view.now, view.format) : undefined)
      : t.lastUsedAt
        ? formatTime(t.lastUsedAt, view.now, view.format)
        : "-",
    orDash(t.revokedAt ? formatTime(t.revokedAt, view.now, view.format) : undefined),
  ]);
  return renderTable(
    ["NAME", "ID", "KIND", "ROLE", "HOST", "CREATED BY", "CREATED", "EXPIRES", "LAST USED", "REVOKED"],
    rows,
  );
}

export function registerTokenCommands(program: Command, act: Act): void {
  const token = program
    .command("token")
    .description(
      "API tokens and one-time join tokens kept (hashed) in the controller's database; every token command needs the admin role",
    )
    .addHelpText(
      "after",
      `${examples(
        "stowctl token create --name ci --role operator --ttl 24h",
        "stowctl token create --host node1 --ttl 1h",
        "stowctl token list",
        "stowctl token revoke ci",
      )}
A token's secret is shown once, by \`token create\`, and never again: the controller keeps only its SHA-256.
A join token (--host) lets one host join a TLS controller once: give it to that agent as STOWAGE_JOIN_TOKEN.
A revoke takes effect within 5 s (the controller caches a token it has looked up for that long).
Tokens in STOWAGE_API_TOKENS keep working beside these.
`,
    );

  token
    .command("create")
    .description(
      "Create an API token (--name, --role) or a one-time join token for a host (--host), and print its secret (once: it cannot be shown again)",
    )
    .option(
      "--name <name>",
      "a name unique among live tokens: lowercase letters, digits and '-' (a join token: optional)",
    )
    .option("--role <role>", `what an API token may do: ${enumChoices(TokenRoleSchema).join(", ")}`)
    .option("--host <host>", "make a join token that lets this host join once (then --role is not taken)")
    .option(
      "--ttl <duration>",
      "how long it lives, like 1h or 720h (default: an API token never expires; a join token lives 1h, at most 24h)",
    )
    .addHelpText(
      "after",
      examples(
        "stowctl token create --name ci --role operator --ttl 24h",
        "STOWAGE_TOKEN=$(stowctl token create --name grafana --role viewer -o json | jq -r .secret)",
        "stowctl token create --host node1 --ttl 1h",
      ),
    )
    .action(
      act(hints, async (ctx, _args, opts) => {
        const host = opts.host === undefined ? "" : parseName("--host", opts.host);
        if (host && opts.role !== undefined)
          throw usageError("--role is for API tokens: a join token (--host) can only join its host");
        const name = opts.name === undefined && host ? "" : parseName("--name", opts.name ?? "");
        let role = TokenRole.UNSPECIFIED;
        if (!host) {
          if (opts.role === undefined) throw usageError("--role is required: viewer, operator or admin");
          role = parseEnum<TokenRole>(TokenRoleSchema, opts.role, "--role");
          if (role === TokenRole.UNSPECIFIED) throw usageError("--role must be viewer, operator or admin");
        }
        let ttl: { seconds: bigint; nanos: number } | undefined;
        if (opts.ttl !== undefined) {
          const ms = parseDuration(opts.ttl, "--ttl");
          if (ms < 1000) throw usageError("--ttl must be at least 1s");
          if (host && ms > 24 * 3600_000) throw usageError("--ttl of a join token is at most 24h");
          ttl = { seconds: BigInt(Math.floor(ms / 1000)), nanos: 0 };
        }
        const res = await ctx.clients.tokens.createToken(
          { name, role, host, ...(ttl ? { ttl } : {}) },
          ctx.call(),
        );
        const t = res.token;
        if (!t) throw new Error(`the controller returned no token for ${name || host}`);
        if (ctx.json) ctx.printJson({ token: toPlain(TokenSchema, t), secret: res.secret });
        else {
          ctx.print(`${res.secret}\n`);
          ctx.note(
            isJoin(t)
              ? `Join token ${t.name} (${t.id}) for host ${t.host} created; it works once${t.expiresAt ? `, until ${formatTime(t.expiresAt, ctx.now(), "wide")}` : ""}. The secret above is shown only now: give it to that host's agent as STOWAGE_JOIN_TOKEN.\n`
              : `Token ${t.name} (${t.id}, ${enumName(TokenRoleSchema, t.role)}) created. The secret above is shown only now: pass it as --token or STOWAGE_TOKEN.\n`,
          );
        }
      }),
    );

  token
    .command("list")
    .description(
      "List tokens: names, roles, who made them, when they expire and were last used (never secrets)",
    )
    .option("--all", "also list revoked and expired tokens")
    .addHelpText("after", examples("stowctl token list", "stowctl token list --all -o json"))
    .action(
      act(hints, async (ctx, _args, opts) => {
        const res = await ctx.clients.tokens.listTokens({ includeInactive: Boolean(opts.all) }, ctx.call());
        if (ctx.json) ctx.printJson(res.tokens.map((t) => toPlain(TokenSchema, t)));
        else if (res.tokens.length === 0)
          ctx.note("No tokens in the database (tokens in STOWAGE_API_TOKENS are not listed)\n");
        else ctx.print(tokenTable(res.tokens, ctx.view()));
      }),
    );

  token
    .command("revoke")
    .description("Revoke a token by name or id: refused within 5 s, kept in `token list --all`")
    .argument("<name-or-id>", "the token's NAME or ID from `stowctl token list`")
    .addHelpText(
      "after",
      examples("stowctl token revoke ci", "stowctl token revoke tok-0192f7c4e5a87b3c9d1e2f3a4b5c6d7e"),
    )
    .action(
      act(hints, async (ctx, [ref]) => {
        const res = await ctx.clients.tokens.revokeToken({ token: ref! }, ctx.call());
        const t = res.token;
        if (!t) throw new Error(`the controller returned no token for ${ref}`);
        if (ctx.json) ctx.printJson(toPlain(TokenSchema, t));
        else ctx.note(`Token ${t.name} (${t.id}) revoked: the controller refuses it within 5 s.\n`);
      }),
    );
}
