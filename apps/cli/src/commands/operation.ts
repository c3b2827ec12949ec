import { Code, ConnectError } from "@connectrpc/connect";
import { OperationSchema, type OperationState, OperationStateSchema } from "@stowage/proto";
import type { Command } from "commander";
import { type Act, collectPages, examples, PAGE_SIZE } from "../command-kit.js";
import type { Context } from "../context.js";
import { enumChoices, toPlain } from "../output.js";
import { parseEnum, parseName } from "../parse.js";
import { operationDetails, operationTable } from "../views.js";

const hints = { notFoundHint: "list them with `stowctl operation list`" };

/** A volume's id from its name or id; a name the controller no longer knows is passed on as given. */
async function volumeId(ctx: Context, volume: string): Promise<string> {
  try {
    const res = await ctx.clients.volumes.getVolume({ volume }, ctx.call());
    return res.volume?.id || volume;
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.NotFound) return volume;
    throw err;
  }
}

export function registerOperationCommands(program: Command, act: Act): void {
  const operation = program
    .command("operation")
    .description(
      "Operations: the units of work sent to agents (create, delete, resize...), with attempts and errors",
    )
    .addHelpText(
      "after",
      examples("stowctl operation list --volume vm1-disk0", "stowctl operation get op-0190..."),
    );

  operation
    .command("get")
    .description("Show one operation: kind, state, attempts, and the tool error if it failed")
    .argument("<id>", "the operation id (op-...)")
    .addHelpText("after", examples("stowctl operation get op-01900000000070008000000000000001"))
    .action(
      act(hints, async (ctx, [id]) => {
        const operationId = parseName("operation id", id!);
        const res = await ctx.clients.operations.getOperation({ operationId }, ctx.call());
        const op = res.operation;
        if (!op) throw new Error(`the controller returned no operation for ${operationId}`);
        if (ctx.json) ctx.printJson(toPlain(OperationSchema, op));
        else ctx.print(operationDetails(op, ctx.view()));
      }),
    );

  operation
    .command("list")
    .description("List operations, newest first as the controller returns them")
    .option("--volume <volume>", "only operations on this volume (id or name)")
    .option("--host <host>", "only operations sent to this host")
    .option(
      "--state <state>",
      `only operations in this state: ${enumChoices(OperationStateSchema).join(", ")}`,
    )
    .addHelpText(
      "after",
      examples(
        "stowctl operation list",
        "stowctl operation list --volume vm1-disk0",
        "stowctl operation list --state failed",
      ),
    )
    .action(
      act({ notFoundHint: "list volumes with `stowctl volume list`" }, async (ctx, _args, opts) => {
        const volume = opts.volume !== undefined ? parseName("--volume", opts.volume) : undefined;
        const hostId = opts.host !== undefined ? parseName("--host", opts.host) : "";
        const state =
          opts.state !== undefined
            ? parseEnum<OperationState>(OperationStateSchema, opts.state, "--state")
            : 0;
        const volumeIdFilter = volume !== undefined ? await volumeId(ctx, volume) : "";
        const ops = await collectPages(async (pageToken) => {
          const res = await ctx.clients.operations.listOperations(
            { volumeId: volumeIdFilter, hostId, state, pageSize: PAGE_SIZE, pageToken },
            ctx.call(),
          );
          return { items: res.operations, next: res.nextPageToken };
        });
        if (ctx.json) ctx.printJson(ops.map((op) => toPlain(OperationSchema, op)));
        else if (ops.length === 0) ctx.note("No operations found\n");
        else ctx.print(operationTable(ops, ctx.view()));
      }),
    );
}
