import { createProgram } from "./program.js";

// A reader that goes away (`stowctl volume list | head`) is not an error.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE") process.exit(process.exitCode ?? 0);
    throw err;
  });
}

const program = createProgram({ out: process.stdout, err: process.stderr, env: process.env });
process.exitCode = await program.run(process.argv.slice(2));
