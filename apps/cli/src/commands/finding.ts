import { isId } from "@stowage/core";
import { type FindingKind, FindingKindSchema, FindingSchema, VolumeSchema } from "@stowage/proto";
import type { Command } from "commander";
import { type Act, collect, collectPages, examples, PAGE_SIZE } from "../command-kit.js";
import { usageError } from "../errors.js";
import { enumChoices, toPlain } from "../output.js";
import { parseEnum, parseLabels, parseName, parsePoolId } from "../parse.js";
import { findingDetails, findingTable, volumeDetails } from "../views.js";

// The controller's NOT_FOUND and ALREADY_EXISTS for findings already say what to do next.
const hints = {};

const KINDS_HELP = `
Kinds:
  orphan   an artefact with a Stowage ownership marker whose volume id has no live volume in the database
           (a database restored from an older backup, or a deleted volume whose artefact stayed behind)
  missing  a volume the database has available that its host no longer has
  foreign  a file or LV in a pool without a Stowage ownership marker: never adopted, changed or deleted

Nothing is ever deleted because of a finding. An orphan can be quarantined (kept marked, even once its
host stops reporting it) or adopted (registered as a volume of the size and format its agent reported).
`;

/** An orphan's volume id, checked here so that a typo never leaves the machine. */
function parseVolumeId(value: string): string {
  if (!isId(value, "vol"))
    throw usageError(
      `${JSON.stringify(value.slice(0, 80))} is not a volume id (vol- and 32 hex digits): take it from the SUBJECT column of \`stowctl finding list --kind orphan\``,
    );
  return value;
}

export function registerFindingCommands(program: Command, act: Act): void {
  const finding = program
    .command("finding")
    .description(
      "What the controller found comparing each host's inventory with its database: orphans, missing volumes, foreign files",
    )
    .addHelpText(
      "after",
      `${examples(
        "stowctl finding list",
        "stowctl finding quarantine vol-0192f7c4e5a87b3c9d1e2f3a4b5c6d7e --reason 'disk of vm7?'",
        "stowctl finding adopt vol-0192f7c4e5a87b3c9d1e2f3a4b5c6d7e --name vm7-disk0",
      )}${KINDS_HELP}`,
    );

  finding
    .command("list")
    .description("List findings with their host, pool, size and format, and whether they are quarantined")
    .option("--host <host>", "only findings of this host")
    .option("--pool <pool>", "only findings in this pool, HOST/POOL")
    .option("--kind <kind>", `only findings of this kind: ${enumChoices(FindingKindSchema).join(", ")}`)
    .addHelpText(
      "after",
      examples(
        "stowctl finding list",
        "stowctl finding list --kind orphan --host node1",
        "stowctl finding list --pool node1/default -o wide",
        "stowctl finding list --kind orphan -o json | jq -r '.[] | [.hostId, .subject, .sizeBytes] | @tsv'",
      ),
    )
    .action(
      act(hints, async (ctx, _args, opts) => {
        const hostId = opts.host !== undefined ? parseName("--host", opts.host) : "";
        const poolId = opts.pool !== undefined ? parsePoolId(opts.pool, "--pool") : "";
        const kind =
          opts.kind !== undefined ? parseEnum<FindingKind>(FindingKindSchema, opts.kind, "--kind") : 0;
        const findings = await collectPages(async (pageToken) => {
          const res = await ctx.clients.findings.listFindings(
            { hostId, poolId, kind, pageSize: PAGE_SIZE, pageToken },
            ctx.call(),
          );
          return { items: res.findings, next: res.nextPageToken };
        });
        if (ctx.json) ctx.printJson(findings.map((f) => toPlain(FindingSchema, f)));
        else if (findings.length === 0)
          ctx.note("No findings: every host's inventory agrees with the database\n");
        else ctx.print(findingTable(findings, ctx.view()));
      }),
    );

  finding
    .command("quarantine")
    .description(
      "Mark an orphan so that nothing deletes it or schedules on it; kept even when its host stops reporting it. Touches nothing on the host",
    )
    .argument("<volume-id>", "the orphan's volume id (SUBJECT in `stowctl finding list --kind orphan`)")
    .option("--host <host>", "the host that reports it (needed only when several do)")
    .option("--reason <text>", "why, for the audit log and `finding list -o wide` (up to 500 characters)")
    .addHelpText(
      "after",
      `${examples(
        "stowctl finding quarantine vol-0192f7c4e5a87b3c9d1e2f3a4b5c6d7e --reason 'disk of vm7? ask the owner'",
        "stowctl finding quarantine vol-0192f7c4e5a87b3c9d1e2f3a4b5c6d7e --host node2",
      )}
Quarantining again changes nothing: the first quarantine's author, time and reason stay. Only orphans are
quarantined (a missing volume has no artefact; a foreign one is never touched anyway). Needs the operator role.
`,
    )
    .action(
      act(hints, async (ctx, [id], opts) => {
        const volumeId = parseVolumeId(id!);
        const hostId = opts.host !== undefined ? parseName("--host", opts.host) : "";
        const reason = (opts.reason as string | undefined) ?? "";
        if (reason.length > 500)
          throw usageError(`--reason is ${reason.length} characters long: at most 500`);
        const res = await ctx.clients.findings.quarantineFinding({ volumeId, hostId, reason }, ctx.call());
        const f = res.finding;
        if (!f) throw new Error(`the controller returned no finding for ${volumeId}`);
        if (ctx.json) ctx.printJson(toPlain(FindingSchema, f));
        else {
          ctx.print(findingDetails(f, ctx.view()));
          ctx.note(
            `Orphan ${f.subject} on ${f.hostId} is quarantined: it stays where it is. Adopt it with \`stowctl finding adopt ${f.subject}\` when it is wanted.\n`,
          );
        }
      }),
    );

  finding
    .command("adopt")
    .description(
      "Register an orphan as an available volume of the size and format its agent reported, holding its space in the pool's ledger",
    )
    .argument("<volume-id>", "the orphan's volume id (SUBJECT in `stowctl finding list --kind orphan`)")
    .option("--host <host>", "the host that reports it (needed only when several do)")
    .option("--name <name>", "the volume's name (default: its volume id)")
    .option("--label <key=value>", "label the volume (repeatable)", collect)
    .addHelpText(
      "after",
      `${examples(
        "stowctl finding adopt vol-0192f7c4e5a87b3c9d1e2f3a4b5c6d7e --name vm7-disk0 --label app=db",
        "stowctl finding adopt vol-0192f7c4e5a87b3c9d1e2f3a4b5c6d7e -o json",
      )}
The volume keeps the orphan's id (its artefact is named after it) and becomes available at once; nothing on
the host is touched. When the pool cannot hold its size the adoption is refused (exit 5) and nothing changes.
Adopting the same orphan again prints the same volume. A quarantined orphan may be adopted: that ends its
quarantine. Needs the operator role.
`,
    )
    .action(
      act(hints, async (ctx, [id], opts) => {
        const volumeId = parseVolumeId(id!);
        const hostId = opts.host !== undefined ? parseName("--host", opts.host) : "";
        const name = opts.name !== undefined ? parseName("--name", opts.name) : "";
        const labels = parseLabels((opts.label as string[] | undefined) ?? []);
        const res = await ctx.clients.findings.adoptFinding({ volumeId, hostId, name, labels }, ctx.call());
        const v = res.volume;
        if (!v) throw new Error(`the controller returned no volume for ${volumeId}`);
        if (ctx.json) ctx.printJson(toPlain(VolumeSchema, v));
        else ctx.print(volumeDetails(v, ctx.view()));
      }),
    );
}
