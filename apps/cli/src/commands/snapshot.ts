import { Code } from "@connectrpc/connect";
import {
  type Snapshot,
  SnapshotSchema,
  SnapshotState,
  SnapshotStateSchema,
  VolumeState,
} from "@stowage/proto";
import type { Command, OptionValues } from "commander";
import { type Act, examples } from "../command-kit.js";
import type { Context } from "../context.js";
import { CliError } from "../errors.js";
import {
  enumName,
  formatBytes,
  formatDuration,
  formatTime,
  renderDetails,
  renderTable,
  toPlain,
} from "../output.js";
import { parseDuration, parseName } from "../parse.js";
import { formatError } from "../views.js";

const hints = { notFoundHint: "list them with `stowctl snapshot list VOLUME`" };
const stateName = (s: SnapshotState) => enumName(SnapshotStateSchema, s);

function snapshotTable(snapshots: readonly Snapshot[], ctx: Context): string {
  const now = new Date();
  return renderTable(
    ["NAME", "ID", "STATE", "SIZE", "CLONES", "AGE"],
    snapshots.map((s) => [
      s.name,
      s.id,
      stateName(s.state),
      formatBytes(s.sizeBytes),
      String(s.cloneCount),
      formatTime(s.createdAt, now, ctx.output),
    ]),
  );
}

function snapshotDetails(s: Snapshot, ctx: Context): string {
  return renderDetails([
    ["Name", s.name],
    ["ID", s.id],
    ["Volume", s.volumeId],
    ["State", stateName(s.state)],
    ["Size", formatBytes(s.sizeBytes)],
    ["Clones", String(s.cloneCount)],
    ["Created", formatTime(s.createdAt, new Date(), ctx.output)],
    ["Error", formatError(s.error)],
  ]);
}

/** Polls a snapshot until it is `want` (or error), printing one progress line to stderr. */
async function waitForSnapshot(
  ctx: Context,
  volume: string,
  s: Snapshot,
  want: SnapshotState,
  verb: string,
  timeoutMs: number,
): Promise<Snapshot> {
  const started = performance.now();
  ctx.note(`${verb} snapshot ${s.name} of ${volume} … `);
  let current = s;
  while (current.state !== want && current.state !== SnapshotState.ERROR) {
    if (performance.now() - started > timeoutMs) {
      ctx.note(`still ${stateName(current.state)}\n`);
      throw new CliError(
        Code.DeadlineExceeded,
        `timed out after ${formatDuration(timeoutMs)} waiting for snapshot ${s.name}`,
      );
    }
    await new Promise((r) => setTimeout(r, 300));
    try {
      current =
        (await ctx.clients.snapshots.getSnapshot({ volume, snapshot: s.id }, ctx.call())).snapshot ?? current;
    } catch (err) {
      if (want === SnapshotState.DELETED && (err as { code?: Code }).code === Code.NotFound) break;
      throw err;
    }
  }
  const took = formatDuration(performance.now() - started);
  if (current.state === SnapshotState.ERROR) {
    ctx.note(`error (${took})\n`);
    throw new CliError(
      Code.Unknown,
      `snapshot ${s.name} failed: ${formatError(current.error) ?? "no details"}`,
    );
  }
  ctx.note(`${stateName(want)} (${took})\n`);
  return current;
}

/** With --wait, waits until the snapshot is `want`; without, returns it as the controller answered. */
function settle(
  ctx: Context,
  volume: string,
  s: Snapshot,
  opts: OptionValues,
  want: SnapshotState,
  verb: string,
): Promise<Snapshot> {
  if (!opts.wait) return Promise.resolve(s);
  return waitForSnapshot(ctx, volume, s, want, verb, parseDuration(opts.waitTimeout, "--wait-timeout"));
}

export function registerSnapshotCommands(program: Command, act: Act): void {
  const snapshot = program
    .command("snapshot")
    .description(
      "Snapshots: point-in-time copies of a volume (qcow2 internal snapshots, LVM thin snapshots, RBD snaps)",
    )
    .addHelpText(
      "after",
      examples(
        "stowctl snapshot create vm1-disk0 before-upgrade --wait",
        "stowctl snapshot list vm1-disk0",
        "stowctl snapshot revert vm1-disk0 before-upgrade --wait",
        "stowctl snapshot delete vm1-disk0 before-upgrade --wait",
      ),
    );
  const waitOptions = (c: Command) =>
    c
      .option("--wait", "wait until it is done")
      .option("--wait-timeout <duration>", "give up waiting after this long (exit 8)", "5m");

  waitOptions(
    snapshot
      .command("create")
      .description("Take a snapshot of a volume; the same name again returns the existing snapshot")
      .argument("<volume>", "the volume's name or id")
      .argument("<name>", "the snapshot's name, unique per volume")
      .addHelpText("after", examples("stowctl snapshot create vm1-disk0 before-upgrade --wait")),
  ).action(
    act(hints, async (ctx, [vol, name], opts) => {
      const volume = parseName("volume", vol!);
      const res = await ctx.clients.snapshots.createSnapshot(
        { volume, name: parseName("snapshot name", name!) },
        ctx.call(),
      );
      const s = await settle(ctx, volume, res.snapshot!, opts, SnapshotState.AVAILABLE, "taking");
      if (ctx.json) ctx.printJson(toPlain(SnapshotSchema, s));
      else ctx.print(snapshotDetails(s, ctx));
    }),
  );

  snapshot
    .command("list")
    .description("List a volume's snapshots")
    .argument("<volume>", "the volume's name or id")
    .addHelpText(
      "after",
      examples("stowctl snapshot list vm1-disk0", "stowctl snapshot list vm1-disk0 -o json"),
    )
    .action(
      act(hints, async (ctx, [vol]) => {
        const volume = parseName("volume", vol!);
        const all: Snapshot[] = [];
        let pageToken = "";
        do {
          const res = await ctx.clients.snapshots.listSnapshots(
            { volume, pageSize: 200, pageToken },
            ctx.call(),
          );
          all.push(...res.snapshots);
          pageToken = res.nextPageToken;
        } while (pageToken);
        if (ctx.json) ctx.printJson(all.map((s) => toPlain(SnapshotSchema, s)));
        else ctx.print(all.length ? snapshotTable(all, ctx) : `volume ${volume} has no snapshots`);
      }),
    );

  snapshot
    .command("get")
    .description("Show one snapshot")
    .argument("<volume>", "the volume's name or id")
    .argument("<snapshot>", "the snapshot's name or id")
    .addHelpText("after", examples("stowctl snapshot get vm1-disk0 before-upgrade"))
    .action(
      act(hints, async (ctx, [vol, snap]) => {
        const res = await ctx.clients.snapshots.getSnapshot(
          { volume: parseName("volume", vol!), snapshot: parseName("snapshot", snap!) },
          ctx.call(),
        );
        if (ctx.json) ctx.printJson(toPlain(SnapshotSchema, res.snapshot!));
        else ctx.print(snapshotDetails(res.snapshot!, ctx));
      }),
    );

  waitOptions(
    snapshot
      .command("delete")
      .description("Delete a snapshot (refused while clones depend on it)")
      .argument("<volume>", "the volume's name or id")
      .argument("<snapshot>", "the snapshot's name or id")
      .addHelpText("after", examples("stowctl snapshot delete vm1-disk0 before-upgrade --wait")),
  ).action(
    act(hints, async (ctx, [vol, snap], opts) => {
      const volume = parseName("volume", vol!);
      const res = await ctx.clients.snapshots.deleteSnapshot(
        { volume, snapshot: parseName("snapshot", snap!) },
        ctx.call(),
      );
      const s = await settle(ctx, volume, res.snapshot!, opts, SnapshotState.DELETED, "deleting");
      if (ctx.json) ctx.printJson(toPlain(SnapshotSchema, s));
      else ctx.print(`snapshot ${s.name} is ${stateName(s.state)}`);
    }),
  );

  waitOptions(
    snapshot
      .command("revert")
      .description("Roll a volume back to a snapshot (the data written since is lost)")
      .argument("<volume>", "the volume's name or id")
      .argument("<snapshot>", "the snapshot's name or id")
      .addHelpText("after", examples("stowctl snapshot revert vm1-disk0 before-upgrade --wait")),
  ).action(
    act(hints, async (ctx, [vol, snap], opts) => {
      const volume = parseName("volume", vol!);
      const res = await ctx.clients.snapshots.revertSnapshot(
        { volume, snapshot: parseName("snapshot", snap!) },
        ctx.call(),
      );
      if (opts.wait) {
        const timeoutMs = parseDuration(opts.waitTimeout, "--wait-timeout");
        const started = performance.now();
        ctx.note(`reverting ${volume} to ${res.snapshot?.name} … `);
        for (;;) {
          const v = (await ctx.clients.volumes.getVolume({ volume }, ctx.call())).volume!;
          if (v.operationId === res.operation?.id && v.state !== VolumeState.REVERTING) {
            if (v.error?.message) {
              ctx.note("failed\n");
              throw new CliError(Code.Unknown, `revert failed: ${formatError(v.error)}`);
            }
            break;
          }
          if (performance.now() - started > timeoutMs)
            throw new CliError(Code.DeadlineExceeded, `timed out waiting for the revert of ${volume}`);
          await new Promise((r) => setTimeout(r, 300));
        }
        ctx.note(`done (${formatDuration(performance.now() - started)})\n`);
      }
      if (ctx.json) ctx.printJson(toPlain(SnapshotSchema, res.snapshot!));
      else
        ctx.print(
          `volume ${volume} ${opts.wait ? "is back at" : "is being reverted to"} snapshot ${res.snapshot?.name}`,
        );
    }),
  );
}
