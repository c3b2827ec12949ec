import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { type AuditEvent, AuditEventSchema } from "@stowage/proto";
import { type Command, Option } from "commander";
import { type Act, examples } from "../command-kit.js";
import { CliError, usageError } from "../errors.js";
import { formatTime, type OutputFormat, orDash, renderTable, toPlain } from "../output.js";
import { parseDuration, parseUint } from "../parse.js";

const hints = {};

/** The most a controller answers in one page. */
const MAX_PAGE = 1000;
const DEFAULT_LIMIT = 100;
/** How much of an error a table shows (wide shows all of it). */
const ERROR_WIDTH = 60;
const DAY_MS = 86_400_000;

/**
 * A time for --since/--until: a duration ago ("30m", "1h", "7d", "1d12h") or an ISO 8601 time
 * ("2025-01-01", "2025-01-01T12:00:00Z").
 */
export function parseWhen(input: string, option: string, now: Date): Date {
  const text = input.trim();
  const invalid = () =>
    usageError(
      `${option} ${JSON.stringify(input)} is not valid: write a duration ago like 30m, 1h or 7d, or a time like 2025-01-01T12:00:00Z`,
    );
  if (/^\d{4}-\d{2}-\d{2}/.test(text)) {
    const d = new Date(text);
    if (Number.isNaN(d.getTime())) throw invalid();
    return d;
  }
  const days = /^(\d+)d(.*)$/i.exec(text);
  let ms = days ? Number(days[1]) * DAY_MS : 0;
  const rest = days ? days[2]! : text;
  if (rest !== "") {
    try {
      ms += parseDuration(rest, option);
    } catch {
      throw invalid();
    }
  }
  if (!(ms > 0) || ms > 100 * 365 * DAY_MS) throw invalid();
  return new Date(now.getTime() - ms);
}

function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

function auditTable(events: readonly AuditEvent[], view: { format: OutputFormat; now: Date }): string {
  const wide = view.format === "wide";
  const rows = events.map((e) => [
    ...(wide ? [e.id.toString()] : []),
    formatTime(e.at, view.now, view.format),
    orDash(e.actor),
    orDash(e.role),
    orDash(e.source),
    e.action,
    orDash(e.target),
    e.outcome,
    orDash(wide ? e.error : clip(e.error, ERROR_WIDTH)),
    ...(wide ? [e.requestJson || "{}"] : []),
  ]);
  return renderTable(
    [
      ...(wide ? ["ID"] : []),
      "AT",
      "ACTOR",
      "ROLE",
      "SOURCE",
      "ACTION",
      "TARGET",
      "OUTCOME",
      "ERROR",
      ...(wide ? ["REQUEST"] : []),
    ],
    rows,
  );
}

export function registerAuditCommands(program: Command, act: Act): void {
  const audit = program
    .command("audit")
    .description("The audit trail: every mutating call, join, token and revocation, done or refused (admin)")
    .addHelpText(
      "after",
      `${examples(
        "stowctl audit list",
        "stowctl audit list --since 1h --outcome denied",
        "stowctl audit list --actor ci --action CreateVolume -o wide",
      )}
Each event names its actor (a token's name, host:NAME for an agent), role, source address, action, target and
outcome (ok, error or denied). Requests are kept without their secrets.
`,
    );

  audit
    .command("list")
    .description("List audit events, newest first; every filter is exact")
    .option(
      "--actor <name>",
      "only events of this actor (a token's name, host:NAME, anonymous, unauthenticated)",
    )
    .option("--target <id>", "only events on this target (a volume, token or host id, or a name)")
    .option("--action <method>", "only this action, like CreateVolume, RevokeToken or Join")
    .addOption(new Option("--outcome <outcome>", "only this outcome").choices(["ok", "error", "denied"]))
    .option("--since <when>", "events at or after this: a duration ago (30m, 1h, 7d) or an ISO 8601 time")
    .option("--until <when>", "events before this: a duration ago or an ISO 8601 time")
    .option("--limit <n>", `at most this many events, the newest (default ${DEFAULT_LIMIT})`)
    .addHelpText(
      "after",
      examples(
        "stowctl audit list --since 1h",
        "stowctl audit list --outcome denied --since 2025-01-01T00:00:00Z",
        "stowctl audit list --actor ci --since 7d --until 1d --limit 1000",
        "stowctl audit list --target vol-0192f7c4e5a87b3c9d1e2f3a4b5c6d7e -o wide",
        "stowctl audit list --action RevokeHost -o json | jq '.[].actor'",
      ),
    )
    .action(
      act(hints, async (ctx, _args, opts) => {
        const now = ctx.now();
        const since = opts.since !== undefined ? parseWhen(opts.since, "--since", now) : undefined;
        const until = opts.until !== undefined ? parseWhen(opts.until, "--until", now) : undefined;
        if (since && until && since.getTime() >= until.getTime())
          throw usageError("--since must be before --until");
        const limit = opts.limit !== undefined ? parseUint(opts.limit, "--limit", 1_000_000) : DEFAULT_LIMIT;
        if (limit === 0) throw usageError("--limit must be at least 1");
        const filter = {
          actor: opts.actor ?? "",
          target: opts.target ?? "",
          action: opts.action ?? "",
          outcome: opts.outcome ?? "",
          ...(since ? { since: timestampFromDate(since) } : {}),
          ...(until ? { until: timestampFromDate(until) } : {}),
        };
        const events: AuditEvent[] = [];
        const seen = new Set<string>();
        let pageToken = "";
        let more = false;
        while (events.length < limit) {
          const res = await ctx.clients.audit.listAuditEvents(
            { ...filter, pageSize: Math.min(MAX_PAGE, limit - events.length), pageToken },
            ctx.call(),
          );
          events.push(...res.events);
          more = res.nextPageToken !== "";
          if (!more) break;
          if (seen.has(res.nextPageToken))
            throw new CliError(
              Code.Internal,
              `the controller returned page token ${JSON.stringify(res.nextPageToken)} twice`,
            );
          seen.add(res.nextPageToken);
          pageToken = res.nextPageToken;
        }
        const shown = events.slice(0, limit);
        if (ctx.json) ctx.printJson(shown.map((e) => toPlain(AuditEventSchema, e)));
        else if (shown.length === 0) ctx.note("No audit events match\n");
        else ctx.print(auditTable(shown, ctx.view()));
        if (more && !ctx.json)
          ctx.note(`Showing the newest ${shown.length}: raise --limit or narrow --since/--until for more\n`);
      }),
    );
}
