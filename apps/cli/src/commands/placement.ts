import { ExplainPlacementResponseSchema, type VolumeFormat, VolumeFormatSchema } from "@stowage/proto";
import type { Command } from "commander";
import { type Act, examples } from "../command-kit.js";
import { toPlain } from "../output.js";
import { parseEnum, parseName, parseVolumeSize } from "../parse.js";
import { placementView } from "../views.js";
import { addPlacementOptions, PLACEMENT_HELP, placementConstraints } from "./placement-options.js";

export function registerPlacementCommands(program: Command, act: Act): void {
  const placement = program
    .command("placement")
    .description("Dry-run placement: ask the scheduler where a volume would go and why (reserves nothing)")
    .addHelpText("after", examples("stowctl placement explain --size 10G"));

  addPlacementOptions(
    placement
      .command("explain")
      .description(
        "Explain where a volume of this size would be placed: the chosen pool, then every candidate pool with its score or the filter that refused it",
      )
      .requiredOption(
        "--size <size>",
        "virtual size, like 10G, 512M, 1.5T (K/M/G/T = 1024, KB/MB/GB/TB = 1000)",
      )
      .option("--format <format>", "qcow2 or raw (default: qcow2 on file pools, raw on block pools)")
      .option("--name <name>", "the volume's name (some constraints, like anti-affinity, consider it)"),
  )
    .addHelpText(
      "after",
      `${PLACEMENT_HELP}\n${examples(
        "stowctl placement explain --size 10G",
        "stowctl placement explain --size 100G --kind lvmthin --numa-host node1 --numa-node 0 --numa-required",
        "stowctl placement explain --size 1T -o json | jq '.placement.candidates[] | select(.feasible | not)'",
      )}`,
    )
    .action(
      act(
        { notFoundHint: "list hosts and pools with `stowctl host list` and `stowctl pool list`" },
        async (ctx, _a, opts) => {
          const sizeBytes = parseVolumeSize(opts.size);
          const format =
            opts.format !== undefined
              ? parseEnum<VolumeFormat>(VolumeFormatSchema, opts.format, "--format")
              : 0;
          const name = opts.name !== undefined ? parseName("volume name", opts.name) : "";
          const constraints = placementConstraints(opts);
          const res = await ctx.clients.placement.explainPlacement(
            { volume: { name, sizeBytes, format, constraints } },
            ctx.call(),
          );
          if (ctx.json) ctx.printJson(toPlain(ExplainPlacementResponseSchema, res));
          else ctx.print(placementView(res, ctx.view()));
        },
      ),
    );
}
