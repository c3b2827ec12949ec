import { createRequire } from "node:module";
import { Command, CommanderError, Option } from "commander";
import { DEFAULT_SERVER } from "./client.js";
import { makeAct } from "./command-kit.js";
import { registerAuditCommands } from "./commands/audit.js";
import { registerExportCommands, registerVolumeExportCommands } from "./commands/export.js";
import { registerFindingCommands } from "./commands/finding.js";
import { registerHostCommands } from "./commands/host.js";
import { registerOperationCommands } from "./commands/operation.js";
import { registerPlacementCommands } from "./commands/placement.js";
import { registerPoolCommands } from "./commands/pool.js";
import { registerSnapshotCommands } from "./commands/snapshot.js";
import { registerTokenCommands } from "./commands/token.js";
import { registerVolumeCommands } from "./commands/volume.js";
import { DEFAULT_TIMEOUT, type ProgramDeps } from "./context.js";
import { EXIT_CODE_HELP, ExitCode, toCliError } from "./errors.js";
import { OUTPUT_FORMATS } from "./output.js";

export type { ProgramDeps, Writer } from "./context.js";

const VERSION = (createRequire(import.meta.url)("../package.json") as { version: string }).version;

const ROOT_HELP = `
Examples:
  $ stowctl host list
  $ stowctl pool list --kind lvmthin
  $ stowctl placement explain --size 10G --numa-host node1 --numa-node 0
  $ stowctl volume create vm1-disk0 --size 10G --wait
  $ stowctl volume list -o json
  $ stowctl volume export vm1-disk0 --allow node2 --chap --wait
  $ stowctl finding list --kind orphan
  $ stowctl --server http://controller:7480 volume get vm1-disk0
  $ stowctl --server https://controller:7480 --ca-file ca.crt host list

Environment:
  STOWAGE_SERVER  the controller's address when --server is not given (default ${DEFAULT_SERVER},
                  where \`npm run up\` listens); host:port without a scheme means http:// (h2c)
  STOWAGE_TOKEN   a bearer token, when --token is not given
  STOWAGE_CA_FILE the CA to trust for an https:// server, when --ca-file is not given

Output:
  table (default) aligned columns, sizes like "10 GiB", relative times
  wide            more columns, ISO 8601 times
  json            for scripts: camelCase fields, sizes in bytes as strings, enums as lowercase names

${EXIT_CODE_HELP}
`;

export interface StowctlProgram {
  /** Runs one command line (without `node stowctl`) and resolves to the exit code. Never throws. */
  run(argv: readonly string[]): Promise<number>;
  /** A fresh commander tree, for inspection (help text) in tests and docs. */
  command(): Command;
}

function buildCommand(deps: ProgramDeps): Command {
  const program = new Command("stowctl");
  program
    .description("stowctl drives Stowage, the storage control plane for KVM/QEMU fleets")
    .version(VERSION, "-V, --version", "print the version")
    .configureOutput({
      writeOut: (s) => deps.out.write(s),
      writeErr: (s) => deps.err.write(s),
    })
    .configureHelp({ showGlobalOptions: true })
    .exitOverride()
    .showHelpAfterError("(add --help for usage and examples)")
    .option("-s, --server <url>", `the controller's address (env STOWAGE_SERVER, default ${DEFAULT_SERVER})`)
    .option("--token <token>", "bearer token (env STOWAGE_TOKEN)")
    .option(
      "--ca-file <file>",
      "PEM of the CA to trust for an https:// server (env STOWAGE_CA_FILE; default: the system's)",
    )
    .option(
      "--timeout <duration>",
      "deadline of each call to the controller, like 10s or 2m",
      DEFAULT_TIMEOUT,
    )
    .addOption(
      new Option("-o, --output <format>", "output format: table, wide or json")
        .choices(OUTPUT_FORMATS)
        .default("table"),
    )
    .addHelpText("after", ROOT_HELP);

  const act = makeAct(deps);
  registerHostCommands(program, act);
  registerPoolCommands(program, act);
  registerVolumeCommands(program, act);
  registerVolumeExportCommands(program.commands.find((c) => c.name() === "volume")!, act);
  registerSnapshotCommands(program, act);
  registerPlacementCommands(program, act);
  registerOperationCommands(program, act);
  registerFindingCommands(program, act);
  registerTokenCommands(program, act);
  registerAuditCommands(program, act);
  registerExportCommands(program, act);
  return program;
}

async function run(deps: ProgramDeps, argv: readonly string[]): Promise<number> {
  const program = buildCommand(deps);
  try {
    await program.parseAsync([...argv], { from: "user" });
    return ExitCode.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Commander has printed its message (or the help) already.
      if (err.exitCode === 0) return ExitCode.ok;
      return ExitCode.usage;
    }
    const e = toCliError(err);
    deps.err.write(`error: ${e.message}\n`);
    return e.exitCode;
  }
}

/** The stowctl program; `deps` decides where it prints and how it reaches the controller. */
export function createProgram(deps: ProgramDeps): StowctlProgram {
  return {
    run: (argv) => run(deps, argv),
    command: () => buildCommand(deps),
  };
}
