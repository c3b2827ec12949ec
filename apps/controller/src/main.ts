import { ADMIN_COMMANDS_HELP, isAdminCommand, runAdminCommand } from "./admin-commands.js";
import { controllerHelp, loadControllerConfig } from "./config.js";
import { startController } from "./controller.js";
import { natsConfigCommand } from "./nats-config.js";

// `stowage-controller nats-config ...` writes the NATS server's config and exits (nats-config.ts).
if (process.argv[2] === "nats-config") process.exit(await natsConfigCommand(process.argv.slice(3)));

// Subcommands (issue-cert, token create, ca-cert) run once and exit; each has its own --help.
const subcommand = process.argv[2];
if (isAdminCommand(subcommand)) {
  process.exit(
    await runAdminCommand(subcommand, process.argv.slice(3), {
      out: process.stdout,
      err: process.stderr,
      env: process.env,
    }),
  );
}

if (process.argv.includes("--help") || process.argv.includes("-h")) {
  process.stdout.write(controllerHelp() + ADMIN_COMMANDS_HELP);
  process.exit(0);
}

try {
  const controller = await startController(loadControllerConfig());
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`stowage-controller: ${signal}, stopping\n`);
    const force = setTimeout(() => process.exit(1), 10_000);
    force.unref();
    await controller.stop();
    process.exit(0);
  };
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
} catch (err) {
  process.stderr.write(`stowage-controller: ${(err as Error).message}\n`);
  process.exit(1);
}
