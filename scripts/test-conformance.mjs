// Runs the driver conformance suite (packages/drivers/src/conformance) per pool kind and prints one line per
// kind, last:
//   conformance <kind>: N passed, N failed[, N skipped]
// dir and rbd run here with vitest; lvm and lvmthin need device-mapper, so they run inside the kernel VM
// through scripts/vm-test.sh (contract: first argument = host path of the JSON report to write, the rest =
// test files; its exit code is vitest's). Each kind's vitest JSON report is kept in
// test-results/conformance-<kind>.json. A kind whose test file (or VM script) is missing, or that wrote no
// report, counts as failed. Exits 1 if any kind failed, 2 on bad usage.
// Usage: node scripts/test-conformance.mjs [--kinds dir,rbd,lvm,lvmthin]
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { relative, resolve } from "node:path";

const ROOT = resolve(import.meta.dirname, "..");
const CONFORMANCE_DIR = "packages/drivers/src/conformance";
const VM_SCRIPT = "scripts/vm-test.sh";
/** How each kind runs: on this machine, or in the kernel VM (device-mapper is missing from the host kernel). */
const KINDS = { dir: "host", netfs: "host", rbd: "host", lvm: "vm", lvmthin: "vm" };

function usage(message) {
  console.error(`test-conformance: ${message}`);
  console.error(`usage: node scripts/test-conformance.mjs [--kinds ${Object.keys(KINDS).join(",")}]`);
  process.exit(2);
}

function parseKinds(argv) {
  let kinds = Object.keys(KINDS);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    let value;
    if (a === "--kinds") value = argv[++i];
    else if (a.startsWith("--kinds=")) value = a.slice("--kinds=".length);
    else if (a === "-h" || a === "--help") {
      console.log(`usage: node scripts/test-conformance.mjs [--kinds ${Object.keys(KINDS).join(",")}]`);
      process.exit(0);
    } else usage(`unknown argument ${JSON.stringify(a)}`);
    if (value === undefined || value === "") usage("--kinds needs a comma-separated list of pool kinds");
    kinds = value.split(",").map((k) => k.trim());
    const unknown = kinds.filter((k) => !(k in KINDS));
    if (unknown.length > 0) usage(`unknown pool kind ${unknown.join(", ")}`);
  }
  return [...new Set(kinds)];
}

/** Counts from a vitest JSON report, the way scripts/vitest-summary.mjs counts them. */
function summarise(reportPath, exitCode) {
  let report;
  try {
    report = JSON.parse(readFileSync(reportPath, "utf8"));
  } catch (err) {
    return {
      error: `no usable report at ${relative(ROOT, reportPath)} (${err.code ?? err.message}; exit code ${exitCode})`,
    };
  }
  const n = (v) => (typeof v === "number" && Number.isFinite(v) ? v : 0);
  const files = Array.isArray(report.testResults) ? report.testResults : [];
  const failedNames = [];
  let brokenFiles = 0;
  for (const f of files) {
    const assertions = Array.isArray(f.assertionResults) ? f.assertionResults : [];
    const failing = assertions.filter((a) => a.status === "failed");
    for (const a of failing) failedNames.push(a.fullName ?? a.title);
    // A file that failed with no failing test (an import error, a failing beforeAll): one failure.
    if (f.status === "failed" && failing.length === 0) {
      brokenFiles++;
      failedNames.push(`${relative(ROOT, String(f.name))}: ${String(f.message ?? "").split("\n")[0]}`);
    }
  }
  let failed = n(report.numFailedTests) + brokenFiles;
  // vitest failed the run for something it could not pin on a test (a crashed worker, an unhandled error).
  if (failed === 0 && (report.success === false || exitCode !== 0)) {
    failed = 1;
    failedNames.push(`vitest exited with code ${exitCode} and errors outside any test`);
  }
  return {
    passed: n(report.numPassedTests),
    failed,
    skipped: n(report.numPendingTests) + n(report.numTodoTests),
    failedNames,
  };
}

function run(cmd, args) {
  console.log(`\n$ ${[cmd, ...args].join(" ")}`);
  const r = spawnSync(cmd, args, { cwd: ROOT, stdio: "inherit" });
  if (r.error) return { exitCode: 127, error: r.error.message };
  return { exitCode: r.status ?? 1 };
}

function runKind(kind) {
  const file = `${CONFORMANCE_DIR}/${kind}.conformance.test.ts`;
  const report = resolve(ROOT, "test-results", `conformance-${kind}.json`);
  if (!existsSync(resolve(ROOT, file))) return { line: "not run (file missing)", failed: true };
  // An old report must never stand in for this run.
  rmSync(report, { force: true });
  mkdirSync(resolve(ROOT, "test-results"), { recursive: true });
  let result;
  if (KINDS[kind] === "vm") {
    if (!existsSync(resolve(ROOT, VM_SCRIPT)))
      return { line: `not run (${VM_SCRIPT} missing)`, failed: true };
    result = run("bash", [VM_SCRIPT, report, file]);
  } else {
    result = run(resolve(ROOT, "node_modules/.bin/vitest"), [
      "run",
      "--reporter=default",
      "--reporter=json",
      `--outputFile=${report}`,
      file,
    ]);
  }
  if (result.error) return { line: `not run (${result.error})`, failed: true };
  const s = summarise(report, result.exitCode);
  if (s.error) return { line: `failed: ${s.error}`, failed: true };
  return {
    line: `${s.passed} passed, ${s.failed} failed${s.skipped > 0 ? `, ${s.skipped} skipped` : ""}`,
    failed: s.failed > 0,
    failedNames: s.failedNames,
  };
}

const kinds = parseKinds(process.argv.slice(2));
const results = kinds.map((kind) => ({ kind, ...runKind(kind) }));

console.log("");
for (const r of results) {
  if (!r.failedNames?.length) continue;
  console.log(`conformance ${r.kind} failures (${r.failedNames.length}):`);
  for (const name of r.failedNames.slice(0, 50)) console.log(`  FAIL ${name}`);
}
for (const r of results) console.log(`conformance ${r.kind}: ${r.line}`);
process.exit(results.some((r) => r.failed) ? 1 : 0);
