import { Code } from "@connectrpc/connect";
import {
  type Export,
  type ExportKind,
  ExportKindSchema,
  ExportSchema,
  ExportState,
  ExportStateSchema,
} from "@stowage/proto";
import type { Command, OptionValues } from "commander";
import { type Act, collect, collectPages, examples, PAGE_SIZE } from "../command-kit.js";
import type { Context } from "../context.js";
import { CliError } from "../errors.js";
import { enumName, formatDuration, formatTime, renderDetails, renderTable, toPlain } from "../output.js";
import { parseDuration, parseEnum, parseName } from "../parse.js";
import { formatError } from "../views.js";

const hints = { notFoundHint: "list exports with `stowctl export list`" };
const kindName = (k: ExportKind) => enumName(ExportKindSchema, k);
const stateName = (s: ExportState) => enumName(ExportStateSchema, s);

function exportTable(exports: readonly Export[], ctx: Context): string {
  const now = new Date();
  return renderTable(
    ["ID", "VOLUME", "KIND", "STATE", "HOST", "ALLOWED", "CHAP", "AGE"],
    exports.map((e) => [
      e.id,
      e.volumeId,
      kindName(e.kind),
      stateName(e.state),
      e.hostId,
      e.allowedHostIds.join(",") || "-",
      e.chapUser ? "yes" : "no",
      formatTime(e.createdAt, now, ctx.output),
    ]),
  );
}

function exportDetails(e: Export, ctx: Context): string {
  return renderDetails([
    ["ID", e.id],
    ["Volume", e.volumeId],
    ["Kind", kindName(e.kind)],
    ["State", stateName(e.state)],
    ["Served by", e.hostId],
    ["URI", e.uri || "(not yet reported)"],
    ["Allowed hosts", e.allowedHostIds.join(", ") || "(none)"],
    ["CHAP user", e.chapUser || "(no CHAP)"],
    ["Created", formatTime(e.createdAt, new Date(), ctx.output)],
    ["Error", formatError(e.error)],
  ]);
}

function print(ctx: Context, e: Export): void {
  if (ctx.json) ctx.printJson(toPlain(ExportSchema, e));
  else ctx.print(exportDetails(e, ctx));
}

/**
 * Polls an export until its operation is done: `want` (active, deleted), or error. Progress goes to stderr. An
 * update of an active export is done when the export points at the update's operation and that operation ended.
 */
async function waitForExport(
  ctx: Context,
  e: Export,
  operationId: string | undefined,
  want: ExportState,
  opts: OptionValues,
): Promise<Export> {
  const timeoutMs = parseDuration(opts.waitTimeout, "--wait-timeout");
  const started = performance.now();
  ctx.note(`${want === ExportState.DELETED ? "unexporting" : "exporting"} ${e.volumeId} (${e.id}) … `);
  let current = e;
  for (;;) {
    const opDone = operationId
      ? await ctx.clients.operations
          .getOperation({ operationId }, ctx.call())
          .then((r) => (r.operation?.state ?? 0) >= 3)
      : true;
    if (current.state === ExportState.ERROR || (current.state === want && opDone)) break;
    if (performance.now() - started > timeoutMs) {
      ctx.note(`still ${stateName(current.state)}\n`);
      throw new CliError(
        Code.DeadlineExceeded,
        `timed out after ${formatDuration(timeoutMs)} waiting for export ${e.id}`,
      );
    }
    await new Promise((r) => setTimeout(r, 300));
    current = (await ctx.clients.exports.getExport({ exportId: e.id }, ctx.call())).export ?? current;
  }
  const took = formatDuration(performance.now() - started);
  if (current.state === ExportState.ERROR || current.error?.message) {
    ctx.note(`error (${took})\n`);
    throw new CliError(Code.Unknown, `export ${e.id} failed: ${formatError(current.error) ?? "no details"}`);
  }
  ctx.note(`${stateName(current.state)} (${took})\n`);
  return current;
}

/** With --wait, the export once its operation is done (waitForExport); without, as the controller answered. */
function settled(
  ctx: Context,
  res: { export?: Export; operation?: { id: string } },
  want: ExportState,
  opts: OptionValues,
): Promise<Export> {
  if (!res.export) throw new CliError(Code.Internal, "the controller answered no export");
  return opts.wait
    ? waitForExport(ctx, res.export, res.operation?.id, want, opts)
    : Promise.resolve(res.export);
}

const waitOptions = (c: Command) =>
  c
    .option("--wait", "wait until the serving agent has done it")
    .option("--wait-timeout <duration>", "give up waiting after this long (exit 8)", "2m");

function hostList(values: readonly string[] | undefined, option: string): string[] {
  return (values ?? []).flatMap((v) => v.split(",")).map((h) => parseName(`${option} host`, h.trim()));
}

async function exportsOfVolume(ctx: Context, volume: string): Promise<Export[]> {
  return collectPages(async (pageToken) => {
    const r = await ctx.clients.exports.listExports({ volume, pageSize: PAGE_SIZE, pageToken }, ctx.call());
    return { items: r.exports, next: r.nextPageToken };
  });
}

/** `stowctl volume export|unexport`: added to the volume command group. */
export function registerVolumeExportCommands(volume: Command, act: Act): void {
  waitOptions(
    volume
      .command("export")
      .description(
        "Make a volume reachable from other hosts: an iSCSI target on its host (dir, lvm, lvmthin) or a cephx grant (rbd). The same call again answers the same export",
      )
      .argument("<volume>", "the volume's name or id")
      .requiredOption("--allow <host>", "a host that may use it (repeatable, or comma-separated)", collect)
      .option("--kind <kind>", "iscsi (dir, lvm, lvmthin volumes) or rbd (rbd volumes)", "iscsi")
      .option("--chap", "iSCSI: require a CHAP account (its secret goes only to the allowed hosts' agents)")
      .addHelpText(
        "after",
        examples(
          "stowctl volume export vm1-disk0 --allow node2 --chap --wait",
          "stowctl volume export vm1-disk0 --allow node2,node3 -o json | jq -r .id",
          "stowctl volume export db-rbd --kind rbd --allow node2 --wait",
          "stowctl volume xml vm1-disk0 --host node2   # the <disk> with which node2 attaches it",
        ),
      ),
  ).action(
    act(hints, async (ctx, [ref], opts) => {
      const kind = parseEnum<ExportKind>(ExportKindSchema, String(opts.kind), "--kind");
      const res = await ctx.clients.exports.createExport(
        {
          volume: parseName("volume", ref!),
          kind,
          allowedHostIds: hostList(opts.allow as string[], "--allow"),
          chap: opts.chap === true,
        },
        ctx.call(),
      );
      const e = await settled(ctx, res, ExportState.ACTIVE, opts);
      print(ctx, e);
    }),
  );

  waitOptions(
    volume
      .command("unexport")
      .description(
        "Remove a volume's export (its iSCSI target or cephx grants); the hosts lose access at once",
      )
      .argument("<volume>", "the volume's name or id")
      .option("--kind <kind>", "which export, when the volume has several: iscsi or rbd")
      .addHelpText(
        "after",
        examples("stowctl volume unexport vm1-disk0 --wait", "stowctl volume unexport db-rbd --kind rbd"),
      ),
  ).action(
    act(hints, async (ctx, [ref], opts) => {
      const volume = parseName("volume", ref!);
      const kind =
        opts.kind === undefined
          ? undefined
          : parseEnum<ExportKind>(ExportKindSchema, String(opts.kind), "--kind");
      const live = (await exportsOfVolume(ctx, volume)).filter(
        (e) => (kind === undefined || e.kind === kind) && e.state !== ExportState.DELETED,
      );
      if (live.length === 0) {
        if (ctx.json) ctx.printJson([]);
        else ctx.print(`volume ${volume} has no ${kind === undefined ? "" : `${kindName(kind)} `}export`);
        return;
      }
      if (live.length > 1)
        throw new CliError(
          Code.InvalidArgument,
          `volume ${volume} has ${live.length} exports (${live.map((e) => kindName(e.kind)).join(", ")}): say which with --kind`,
        );
      const res = await ctx.clients.exports.deleteExport({ exportId: live[0]!.id }, ctx.call());
      const e = await settled(ctx, res, ExportState.DELETED, opts);
      if (ctx.json) ctx.printJson(toPlain(ExportSchema, e));
      else ctx.print(`export ${e.id} of ${volume} is ${stateName(e.state)}`);
    }),
  );
}

export function registerExportCommands(program: Command, act: Act): void {
  const exp = program
    .command("export")
    .description("Exports: volumes made reachable from other hosts (iSCSI targets, RBD grants)")
    .addHelpText(
      "after",
      examples(
        "stowctl volume export vm1-disk0 --allow node2 --chap --wait",
        "stowctl export list",
        "stowctl export update exp-0190... --allow node3 --disallow node2 --wait",
        "stowctl volume unexport vm1-disk0",
      ),
    );

  exp
    .command("list")
    .description("List live exports (every page), optionally of one volume or served by one host")
    .option("--volume <volume>", "only this volume's exports")
    .option("--host <host>", "only exports this host serves")
    .addHelpText("after", examples("stowctl export list", "stowctl export list --host node1 -o json"))
    .action(
      act(hints, async (ctx, _args, opts) => {
        const volume = opts.volume === undefined ? "" : parseName("volume", String(opts.volume));
        const hostId = opts.host === undefined ? "" : parseName("host", String(opts.host));
        const all = await collectPages(async (pageToken) => {
          const r = await ctx.clients.exports.listExports(
            { volume, hostId, pageSize: PAGE_SIZE, pageToken },
            ctx.call(),
          );
          return { items: r.exports, next: r.nextPageToken };
        });
        if (ctx.json) ctx.printJson(all.map((e) => toPlain(ExportSchema, e)));
        else ctx.print(all.length ? exportTable(all, ctx) : "no exports");
      }),
    );

  exp
    .command("get")
    .description("Show one export: its URI, allowed hosts, CHAP user (never the secret) and state")
    .argument("<export>", "the export's id (exp-...)")
    .addHelpText(
      "after",
      examples("stowctl export get exp-0190...", "stowctl export get exp-0190... -o json"),
    )
    .action(
      act(hints, async (ctx, [id]) => {
        const res = await ctx.clients.exports.getExport({ exportId: parseName("export", id!) }, ctx.call());
        print(ctx, res.export!);
      }),
    );

  waitOptions(
    exp
      .command("update")
      .description("Add hosts to or remove hosts from a live export's ACL; the serving agent converges it")
      .argument("<export>", "the export's id (exp-...)")
      .option("--allow <host>", "a host to add (repeatable, or comma-separated)", collect)
      .option("--disallow <host>", "a host to remove (repeatable, or comma-separated)", collect)
      .addHelpText(
        "after",
        examples("stowctl export update exp-0190... --allow node3 --disallow node2 --wait"),
      ),
  ).action(
    act(hints, async (ctx, [id], opts) => {
      const add = hostList(opts.allow as string[] | undefined, "--allow");
      const remove = hostList(opts.disallow as string[] | undefined, "--disallow");
      if (add.length === 0 && remove.length === 0)
        throw new CliError(Code.InvalidArgument, "give --allow HOST and/or --disallow HOST");
      const res = await ctx.clients.exports.updateExport(
        { exportId: parseName("export", id!), addAllowedHostIds: add, removeAllowedHostIds: remove },
        ctx.call(),
      );
      const e = await settled(ctx, res, ExportState.ACTIVE, opts);
      print(ctx, e);
    }),
  );

  waitOptions(
    exp
      .command("delete")
      .description("Remove an export (the same as `stowctl volume unexport`)")
      .argument("<export>", "the export's id (exp-...)")
      .addHelpText("after", examples("stowctl export delete exp-0190... --wait")),
  ).action(
    act(hints, async (ctx, [id], opts) => {
      const res = await ctx.clients.exports.deleteExport({ exportId: parseName("export", id!) }, ctx.call());
      const e = await settled(ctx, res, ExportState.DELETED, opts);
      if (ctx.json) ctx.printJson(toPlain(ExportSchema, e));
      else ctx.print(`export ${e.id} is ${stateName(e.state)}`);
    }),
  );
}
