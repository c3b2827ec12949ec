// Fails when the code committed under packages/proto/src/gen is not what `buf generate` makes from proto/.
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dirname, "..");
const work = mkdtempSync(join(tmpdir(), "stowage-gen-"));
try {
  for (const p of ["proto", "buf.yaml", "buf.gen.yaml"])
    cpSync(join(root, p), join(work, p), { recursive: true });
  symlinkSync(join(root, "node_modules"), join(work, "node_modules"));
  const env = { ...process.env, PATH: `${join(root, "node_modules/.bin")}:${process.env.PATH}` };
  execFileSync(join(root, "node_modules/.bin/buf"), ["generate"], { cwd: work, env, stdio: "inherit" });
  const out = join(work, "packages/proto/src/gen");
  try {
    execFileSync("diff", ["-r", "-u", out, join(root, "packages/proto/src/gen")], { stdio: "inherit" });
  } catch {
    console.error(
      "generated code drifted from proto/: run `npm run generate` and commit packages/proto/src/gen",
    );
    process.exit(1);
  }
  console.log("generated code matches proto/");
} finally {
  rmSync(work, { recursive: true, force: true });
}
