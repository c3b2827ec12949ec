import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  type CompressionType,
  CompressionTypeSchema,
  CreateVolumeResponseSchema,
  DeleteVolumeResponseSchema,
  GetDiskXmlResponseSchema,
  type Preallocation,
  PreallocationSchema,
  type Qcow2OptionsSchema,
  type Volume,
  VolumeFormat,
  VolumeFormatSchema,
  VolumeSchema,
  VolumeState,
  VolumeStateSchema,
  type WipeMode,
  WipeModeSchema,
} from "@stowage/proto";
import type { Command, OptionValues } from "commander";
import { type Act, collect, collectPages, examples, PAGE_SIZE } from "../command-kit.js";
import type { Context } from "../context.js";
import { usageError } from "../errors.js";
import { enumChoices, enumName, formatBytes, toPlain } from "../output.js";
import {
  parseClusterSize,
  parseDuration,
  parseEnum,
  parseLabels,
  parseName,
  parsePoolId,
  parsePrefix,
  parseUint,
  parseVolumeSize,
} from "../parse.js";
import { placementSummaryLine, placementView, volumeDetails, volumeTable } from "../views.js";
import { waitForVolume } from "../wait.js";
import { addPlacementOptions, PLACEMENT_HELP, placementConstraints } from "./placement-options.js";

const hints = { notFoundHint: "list them with `stowctl volume list`" };

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

function parseRequestId(value: string | undefined): string {
  if (value === undefined) return "";
  if (!REQUEST_ID.test(value)) {
    throw usageError(
      `--request-id ${JSON.stringify(value)} is not valid: use 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'`,
    );
  }
  return value;
}

/** qcow2 options from the flags; undefined when none was given. */
function qcow2Options(o: OptionValues): MessageInitShape<typeof Qcow2OptionsSchema> | undefined {
  const q: MessageInitShape<typeof Qcow2OptionsSchema> = {};
  let any = false;
  if (o.clusterSize !== undefined) {
    q.clusterSizeBytes = parseClusterSize(o.clusterSize);
    any = true;
  }
  if (o.preallocation !== undefined) {
    q.preallocation = parseEnum<Preallocation>(PreallocationSchema, o.preallocation, "--preallocation");
    any = true;
  }
  if (o.lazyRefcounts) {
    q.lazyRefcounts = true;
    any = true;
  }
  if (o.compression !== undefined) {
    q.compressionType = parseEnum<CompressionType>(CompressionTypeSchema, o.compression, "--compression");
    any = true;
  }
  if (o.extendedL2) {
    q.extendedL2 = true;
    any = true;
  }
  return any ? q : undefined;
}

function parseWaitTimeout(o: OptionValues): number {
  return parseDuration(o.waitTimeout ?? "5m", "--wait-timeout");
}

export function registerVolumeCommands(program: Command, act: Act): void {
  const volume = program
    .command("volume")
    .description("Volumes: virtual disks placed by the scheduler and created by the agents")
    .addHelpText(
      "after",
      examples(
        "stowctl volume create vm1-disk0 --size 10G --wait",
        "stowctl volume list",
        "stowctl volume get vm1-disk0",
        "stowctl volume delete vm1-disk0 --wait",
        "stowctl volume resize vm1-disk0 --size 20G --wait",
        "stowctl volume clone vm1-disk0 vm2-disk0 --wait",
      ),
    );

  addPlacementOptions(
    volume
      .command("create")
      .description(
        "Create a volume: validated, placed by the scheduler, capacity reserved, then created by the host's agent. Returns at once in state creating unless --wait is given",
      )
      .argument("<name>", "1-63 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
      .requiredOption(
        "--size <size>",
        "virtual size, like 10G, 512M, 1.5T (K/M/G/T = 1024, KB/MB/GB/TB = 1000)",
      )
      .option("--format <format>", "qcow2 or raw (default: qcow2 on file pools, raw on block pools)"),
  )
    .option("--label <key=value>", "label the volume (repeatable)", collect)
    .option("--cluster-size <size>", "qcow2 cluster size, a power of two from 512 to 2M, like 64K")
    .option("--preallocation <mode>", `qcow2 preallocation: ${enumChoices(PreallocationSchema).join(", ")}`)
    .option("--lazy-refcounts", "qcow2 lazy refcounts (faster writes, needs a repair after a crash)")
    .option(
      "--compression <type>",
      `qcow2 compression type: ${enumChoices(CompressionTypeSchema).join(", ")}`,
    )
    .option("--extended-l2", "qcow2 extended L2 entries (subclusters)")
    .option(
      "--request-id <id>",
      "makes retries safe: a second create with the same id returns the first volume",
    )
    .option("--dry-run", "place only: show where it would go, reserve and create nothing")
    .option("--wait", "wait until the volume is available (or failed), showing progress on stderr")
    .option("--wait-timeout <duration>", "give up waiting after this long (exit 8)", "5m")
    .addHelpText(
      "after",
      `${PLACEMENT_HELP}
qcow2 options (--cluster-size, --preallocation, --lazy-refcounts, --compression, --extended-l2) imply
--format qcow2.
${examples(
  "stowctl volume create vm1-disk0 --size 10G",
  "stowctl volume create vm1-disk0 --size 20G --format qcow2 --cluster-size 64K --preallocation metadata --wait",
  "stowctl volume create db1-data --size 100G --kind lvmthin --numa-host node1 --numa-node 1 --numa-required",
  "stowctl volume create web1-disk0 --size 10G --anti-affinity web --label app=web --label tier=front",
  "stowctl volume create vm1-disk0 --size 10G --dry-run",
)}`,
    )
    .action(
      act(
        (args) => ({
          notFoundHint: "check --pool/--host with `stowctl pool list` and `stowctl host list`",
          conflictHint: `pick another name, or look at the existing one with \`stowctl volume get ${args[0]}\``,
        }),
        (ctx, [name], opts) => createVolume(ctx, name!, opts),
      ),
    );

  addPlacementOptions(
    volume
      .command("create-group")
      .description(
        "Create the disks of one VM all or nothing: every disk is placed (the largest first, each seeing the others), and either all are reserved and created or none is",
      )
      .requiredOption(
        "--disk <name:size[:format]>",
        "a disk of the group, like vm1-root:10G or vm1-data:50G:raw (repeatable)",
        collect,
      ),
  )
    .option("--label <key=value>", "label every disk (repeatable)", collect)
    .option("--request-id <id>", "makes retries safe: a second call with the same id returns the first group")
    .option("--dry-run", "place only: show where each disk would go, reserve and create nothing")
    .option("--wait", "wait until every disk is available (or failed)")
    .option("--wait-timeout <duration>", "give up waiting after this long (exit 8)", "5m")
    .addHelpText(
      "after",
      `${PLACEMENT_HELP}
The placement options apply to every disk: with --numa-host/--numa-node --numa-required, all disks land on the
VM's NUMA node or none is created.
${examples(
  "stowctl volume create-group --disk vm1-root:10G --disk vm1-data:50G:raw --numa-host node2 --numa-node 1 --numa-required --wait",
  "stowctl volume create-group --disk db-a:100G --disk db-b:100G --anti-affinity db --dry-run",
)}`,
    )
    .action(
      act(
        () => ({ conflictHint: "a group is created all or nothing: choose names that are not taken" }),
        (ctx, _args, opts) => createGroup(ctx, opts),
      ),
    );

  volume
    .command("resize")
    .description(
      "Resize a volume: growing reserves the extra capacity first; shrinking loses data and needs --allow-shrink",
    )
    .argument("<volume>", "the volume's name or id")
    .requiredOption("--size <size>", "the new virtual size, like 20G")
    .option("--allow-shrink", "allow a smaller size (the data past the new end is lost)")
    .option("--request-id <id>", "makes retries safe")
    .option("--wait", "wait until the resize is done")
    .option("--wait-timeout <duration>", "give up waiting after this long (exit 8)", "5m")
    .addHelpText(
      "after",
      examples(
        "stowctl volume resize vm1-disk0 --size 20G --wait",
        "stowctl volume resize scratch --size 1G --allow-shrink",
      ),
    )
    .action(
      act(hints, async (ctx, [ref], opts) => {
        const res = await ctx.clients.volumes.resizeVolume(
          {
            volume: parseName("volume", ref!),
            newSizeBytes: parseVolumeSize(opts.size),
            allowShrink: Boolean(opts.allowShrink),
            requestId: parseRequestId(opts.requestId),
          },
          ctx.call(),
        );
        await showVolume(ctx, res.volume, opts, "resizing");
      }),
    );

  volume
    .command("clone")
    .description(
      "Clone a volume, from its current data or one of its snapshots, into a new volume in the same pool",
    )
    .argument("<source>", "the source volume's name or id")
    .argument("<name>", "the new volume's name")
    .option(
      "--snapshot <snapshot>",
      "clone this snapshot of the source (name or id) instead of its current data",
    )
    .option("--size <size>", "a larger size for the clone (default: the source's)")
    .option("--flatten", "copy every block now instead of sharing them with the source")
    .option("--label <key=value>", "label the clone (repeatable)", collect)
    .option("--request-id <id>", "makes retries safe")
    .option("--wait", "wait until the clone is available")
    .option("--wait-timeout <duration>", "give up waiting after this long (exit 8)", "10m")
    .addHelpText(
      "after",
      examples(
        "stowctl volume clone golden-image vm2-disk0 --snapshot v1 --wait",
        "stowctl volume clone vm1-disk0 vm1-copy --flatten --wait",
      ),
    )
    .action(
      act(hints, async (ctx, [source, name], opts) => {
        const res = await ctx.clients.volumes.cloneVolume(
          {
            sourceVolume: parseName("volume", source!),
            name: parseName("volume name", name!),
            sourceSnapshot: opts.snapshot ? parseName("snapshot", opts.snapshot) : "",
            sizeBytes: opts.size ? parseVolumeSize(opts.size) : 0n,
            flatten: Boolean(opts.flatten),
            labels: opts.label !== undefined ? parseLabels(opts.label) : {},
            requestId: parseRequestId(opts.requestId),
          },
          ctx.call(),
        );
        await showVolume(ctx, res.volume, opts, "cloning");
      }),
    );

  volume
    .command("get")
    .description(
      "Show one volume: state, size, format, pool, NUMA node and CPU set, path, labels, last operation",
    )
    .argument("<volume>", "the volume's name or id")
    .addHelpText(
      "after",
      examples("stowctl volume get vm1-disk0", "stowctl volume get vm1-disk0 -o json | jq -r .hostPath"),
    )
    .action(
      act(hints, async (ctx, [ref]) => {
        const res = await ctx.clients.volumes.getVolume({ volume: parseName("volume", ref!) }, ctx.call());
        const v = res.volume;
        if (!v) throw new Error(`the controller returned no volume for ${ref}`);
        if (ctx.json) ctx.printJson(toPlain(VolumeSchema, v));
        else ctx.print(volumeDetails(v, ctx.view()));
      }),
    );

  volume
    .command("xml")
    .description(
      "Print the libvirt <disk> element with which a host attaches the volume (file for dir, block for LVM), and the <iothreadpin> for its CPU set",
    )
    .argument("<volume>", "the volume's name or id")
    .option("--host <host>", "the host that attaches it (default: the volume's own host)")
    .option("--target-dev <dev>", "the guest's device name", "vdb")
    .option(
      "--iothread <n>",
      "run the disk in this IO thread (then <iothreadpin> pins it to the volume's CPU set)",
    )
    .addHelpText(
      "after",
      examples(
        "stowctl volume xml vm1-disk0 > disk.xml && virsh attach-device vm1 disk.xml --persistent",
        "stowctl volume xml vm1-disk0 --target-dev vdc --iothread 1",
        "stowctl volume xml vm1-disk0 -o json | jq -r .diskXml",
      ),
    )
    .action(
      act(hints, async (ctx, [ref], opts) => {
        const res = await ctx.clients.exports.getDiskXml(
          {
            volume: parseName("volume", ref!),
            hostId: opts.host === undefined ? "" : parseName("host", String(opts.host)),
            targetDev: String(opts.targetDev),
            iothread: opts.iothread === undefined ? 0 : parseUint(String(opts.iothread), "--iothread", 1024),
          },
          ctx.call(),
        );
        if (ctx.json) ctx.printJson(toPlain(GetDiskXmlResponseSchema, res));
        else ctx.print(`${res.diskXml.trimEnd()}${res.iothreadPinXml ? `\n${res.iothreadPinXml}` : ""}`);
      }),
    );

  volume
    .command("list")
    .description("List volumes (every page), optionally filtered by pool, host, state, name prefix or labels")
    .option("--pool <host/pool>", "only volumes in this pool")
    .option("--host <host>", "only volumes on this host")
    .option("--state <state>", `only volumes in this state: ${enumChoices(VolumeStateSchema).join(", ")}`)
    .option("--prefix <prefix>", "only volumes whose name starts with this")
    .option("--label <key=value>", "only volumes with this label (repeatable: all must match)", collect)
    .option("--all", "include deleted volumes")
    .addHelpText(
      "after",
      examples(
        "stowctl volume list",
        "stowctl volume list --pool node1/default --state error",
        "stowctl volume list --prefix vm1- --label app=web -o wide",
        "stowctl volume list -o json | jq -r '.[] | [.name, .sizeBytes] | @tsv'",
      ),
    )
    .action(
      act(hints, async (ctx, _args, opts) => {
        const poolId = opts.pool !== undefined ? parsePoolId(opts.pool, "--pool") : "";
        const hostId = opts.host !== undefined ? parseName("--host", opts.host) : "";
        const state =
          opts.state !== undefined ? parseEnum<VolumeState>(VolumeStateSchema, opts.state, "--state") : 0;
        const namePrefix = opts.prefix !== undefined ? parsePrefix(opts.prefix) : "";
        const labels = opts.label !== undefined ? parseLabels(opts.label) : {};
        const showDeleted = Boolean(opts.all) || state === VolumeState.DELETED;
        const volumes = await collectPages(async (pageToken) => {
          const res = await ctx.clients.volumes.listVolumes(
            { poolId, hostId, state, namePrefix, labels, showDeleted, pageSize: PAGE_SIZE, pageToken },
            ctx.call(),
          );
          return { items: res.volumes, next: res.nextPageToken };
        });
        if (ctx.json) ctx.printJson(volumes.map((v) => toPlain(VolumeSchema, v)));
        else if (volumes.length === 0) {
          ctx.note("No volumes found: create one with `stowctl volume create NAME --size 10G`\n");
        } else ctx.print(volumeTable(volumes, ctx.view()));
      }),
    );

  volume
    .command("delete")
    .description(
      "Delete a volume: its data is wiped as asked, then its space is released. Returns at once unless --wait",
    )
    .argument("<volume>", "the volume's name or id")
    .option(
      "--wipe <mode>",
      `how to destroy the data first: ${enumChoices(WipeModeSchema).join(", ")} (default: the pool's policy)`,
    )
    .option("--request-id <id>", "makes retries safe")
    .option("--wait", "wait until the volume is deleted (or failed), showing progress on stderr")
    .option("--wait-timeout <duration>", "give up waiting after this long (exit 8)", "5m")
    .addHelpText(
      "after",
      examples("stowctl volume delete vm1-disk0", "stowctl volume delete vm1-disk0 --wipe zero --wait"),
    )
    .action(
      act(hints, async (ctx, [ref], opts) => {
        const volumeRef = parseName("volume", ref!);
        const wipe = opts.wipe !== undefined ? parseEnum<WipeMode>(WipeModeSchema, opts.wipe, "--wipe") : 0;
        const requestId = parseRequestId(opts.requestId);
        const waitTimeoutMs = parseWaitTimeout(opts);
        const res = await ctx.clients.volumes.deleteVolume(
          { volume: volumeRef, wipe, requestId },
          ctx.call(),
        );
        let v = res.volume;
        if (opts.wait && v) {
          v = await waitForVolume(ctx, {
            volume: v,
            want: VolumeState.DELETED,
            verb: "deleting",
            timeoutMs: waitTimeoutMs,
          });
        }
        if (ctx.json) {
          ctx.printJson(toPlain(DeleteVolumeResponseSchema, { ...res, volume: v }));
          return;
        }
        const label = v ? `${v.name} (${v.id})` : volumeRef;
        const state = v ? enumName(VolumeStateSchema, v.state) : "deleting";
        const op = res.operation?.id ? `, operation ${res.operation.id}` : "";
        ctx.print(`volume ${label} is ${state}${op}`);
        if (!opts.wait && v?.state !== VolumeState.DELETED) {
          ctx.note(
            `follow it with \`stowctl volume get ${v?.name || volumeRef}\`, or pass --wait next time\n`,
          );
        }
      }),
    );
}

async function createVolume(ctx: Context, rawName: string, opts: OptionValues): Promise<void> {
  const name = parseName("volume name", rawName);
  const sizeBytes = parseVolumeSize(opts.size);
  let format: VolumeFormat =
    opts.format !== undefined ? parseEnum<VolumeFormat>(VolumeFormatSchema, opts.format, "--format") : 0;
  const qcow2 = qcow2Options(opts);
  if (qcow2 && format === VolumeFormat.RAW) {
    throw usageError(
      "qcow2 options (--cluster-size, --preallocation, --lazy-refcounts, --compression) need --format qcow2, not raw",
    );
  }
  if (qcow2) format = VolumeFormat.QCOW2;
  const constraints = placementConstraints(opts);
  const labels = opts.label !== undefined ? parseLabels(opts.label) : {};
  const requestId = parseRequestId(opts.requestId);
  const dryRun = Boolean(opts.dryRun);
  const waitTimeoutMs = parseWaitTimeout(opts);
  if (dryRun && opts.wait)
    throw usageError("--wait and --dry-run do not go together: a dry run creates nothing");

  const res = await ctx.clients.volumes.createVolume(
    { name, sizeBytes, format, constraints, labels, requestId, dryRun, ...(qcow2 ? { qcow2 } : {}) },
    ctx.call(),
  );

  let v = res.volume;
  if (opts.wait && v && !dryRun) {
    v = await waitForVolume(ctx, {
      volume: v,
      want: VolumeState.AVAILABLE,
      verb: "creating",
      timeoutMs: waitTimeoutMs,
    });
  }
  if (ctx.json) {
    ctx.printJson(toPlain(CreateVolumeResponseSchema, { ...res, volume: v }));
    return;
  }
  if (dryRun) {
    const p = res.placement;
    const where = p?.poolId ? placementSummaryLine(p) : "no pool";
    ctx.print(
      `dry run: ${name} (${formatBytes(sizeBytes)}) would be placed on ${where}; nothing was reserved or created`,
    );
    if (p) ctx.print(`\n${placementView({ feasible: Boolean(p.poolId), placement: p }, ctx.view())}`);
    return;
  }
  if (v) ctx.print(volumeDetails(v, ctx.view()));
  if (res.operation?.id && !opts.wait) {
    ctx.note(
      `operation ${res.operation.id} is on its way; follow it with \`stowctl volume get ${name}\`, or pass --wait\n`,
    );
  }
}

async function createGroup(ctx: Context, opts: OptionValues): Promise<void> {
  const constraints = placementConstraints(opts);
  const labels = opts.label !== undefined ? parseLabels(opts.label) : {};
  const disks = (opts.disk as string[]).map((spec) => {
    const [rawName, rawSize, rawFormat, ...rest] = spec.split(":");
    if (!rawName || !rawSize || rest.length)
      throw usageError(`--disk ${JSON.stringify(spec)} is not name:size[:format], like vm1-root:10G`);
    const format = rawFormat ? parseEnum<VolumeFormat>(VolumeFormatSchema, rawFormat, "--disk format") : 0;
    return {
      name: parseName("volume name", rawName),
      sizeBytes: parseVolumeSize(rawSize),
      format,
      constraints,
      labels,
    };
  });
  const dryRun = Boolean(opts.dryRun);
  if (dryRun && opts.wait)
    throw usageError("--wait and --dry-run do not go together: a dry run creates nothing");
  const waitTimeoutMs = parseWaitTimeout(opts);
  const res = await ctx.clients.volumes.createVolumeGroup(
    { volumes: disks, requestId: parseRequestId(opts.requestId), dryRun },
    ctx.call(),
  );
  const made = [];
  for (const r of res.volumes) {
    let v = r.volume;
    if (opts.wait && v)
      v = await waitForVolume(ctx, {
        volume: v,
        want: VolumeState.AVAILABLE,
        verb: "creating",
        timeoutMs: waitTimeoutMs,
      });
    made.push({ ...r, volume: v });
  }
  if (ctx.json) {
    ctx.printJson(made.map((r) => toPlain(CreateVolumeResponseSchema, r)));
    return;
  }
  if (dryRun) {
    for (const [i, r] of made.entries()) {
      const p = r.placement;
      ctx.print(
        `dry run: ${disks[i]!.name} (${formatBytes(disks[i]!.sizeBytes)}) would be placed on ${p?.poolId ? placementSummaryLine(p) : "no pool"}`,
      );
    }
    ctx.print("nothing was reserved or created");
    return;
  }
  ctx.print(
    volumeTable(
      made.flatMap((r) => (r.volume ? [r.volume] : [])),
      ctx.view(),
    ),
  );
}

/** Prints a volume a call returned, after waiting (with --wait) until it is available again. */
async function showVolume(
  ctx: Context,
  volume: Volume | undefined,
  opts: OptionValues,
  verb: string,
): Promise<void> {
  let v = volume;
  if (!v) return;
  if (opts.wait)
    v = await waitForVolume(ctx, {
      volume: v,
      want: VolumeState.AVAILABLE,
      verb,
      timeoutMs: parseWaitTimeout(opts),
    });
  if (ctx.json) ctx.printJson(toPlain(VolumeSchema, v));
  else ctx.print(volumeDetails(v, ctx.view()));
}
