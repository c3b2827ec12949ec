import { type PoolKind, PoolKindSchema, PoolSchema } from "@stowage/proto";
import type { Command } from "commander";
import { type Act, collectPages, examples, PAGE_SIZE } from "../command-kit.js";
import { enumChoices, toPlain } from "../output.js";
import { parseEnum, parseName, parsePoolId } from "../parse.js";
import { poolDetails, poolTable } from "../views.js";

const hints = { notFoundHint: "list them with `stowctl pool list`" };

export function registerPoolCommands(program: Command, act: Act): void {
  const pool = program
    .command("pool")
    .description(
      "Storage pools: where volumes are carved (dir, lvm, lvmthin, netfs, rbd), with their capacity",
    )
    .addHelpText("after", examples("stowctl pool list", "stowctl pool get node1/default"));

  pool
    .command("list")
    .description("List pools with kind, health, NUMA node and capacity (size, free, provisioned, reserved)")
    .option("--host <host>", "only pools on this host")
    .option("--kind <kind>", `only pools of this kind: ${enumChoices(PoolKindSchema).join(", ")}`)
    .addHelpText(
      "after",
      examples(
        "stowctl pool list",
        "stowctl pool list --host node1 --kind lvmthin",
        "stowctl pool list -o wide",
      ),
    )
    .action(
      act(hints, async (ctx, _args, opts) => {
        const hostId = opts.host !== undefined ? parseName("--host", opts.host) : "";
        const kind = opts.kind !== undefined ? parseEnum<PoolKind>(PoolKindSchema, opts.kind, "--kind") : 0;
        const pools = await collectPages(async (pageToken) => {
          const res = await ctx.clients.pools.listPools(
            { hostId, kind, pageSize: PAGE_SIZE, pageToken },
            ctx.call(),
          );
          return { items: res.pools, next: res.nextPageToken };
        });
        if (ctx.json) ctx.printJson(pools.map((p) => toPlain(PoolSchema, p)));
        else if (pools.length === 0) ctx.note("No pools found: pools come from each agent's configuration\n");
        else ctx.print(poolTable(pools, ctx.view()));
      }),
    );

  pool
    .command("get")
    .description("Show one pool: health, NUMA node, formats, overcommit ratio and the capacity ledger")
    .argument("<pool>", "the pool's id, HOST/POOL")
    .addHelpText("after", examples("stowctl pool get node1/default", "stowctl pool get node1/thin -o json"))
    .action(
      act(hints, async (ctx, [id]) => {
        const poolId = parsePoolId(id!);
        const res = await ctx.clients.pools.getPool({ poolId }, ctx.call());
        const p = res.pool;
        if (!p) throw new Error(`the controller returned no pool for ${poolId}`);
        if (ctx.json) ctx.printJson(toPlain(PoolSchema, p));
        else ctx.print(poolDetails(p, ctx.view()));
      }),
    );
}
