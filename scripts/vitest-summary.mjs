// Prints the closing line of a test run from vitest's JSON reports, exactly one line, last:
//   "N passed, N failed" (+ ", N skipped" when any were skipped or todo)
// summed over every report: those named on the command line, or else every test-results/vitest*.json (the
// host run's vitest.json and the kernel VM's vitest-vm.json). A test file that failed without a failing test
// (an import error, a failing beforeAll/afterAll hook) counts as one failure, and so does a named report that
// is missing (a VM that died before vitest wrote it), so a broken run never reads "0 failed". The failures are
// listed above the closing line. Exits 1 if anything failed or no report is usable at all.
// Usage: node scripts/vitest-summary.mjs [REPORT.json...]
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";

const DIR = "test-results";
const named = process.argv.slice(2);
const files =
  named.length > 0
    ? named
    : existsSync(DIR)
      ? readdirSync(DIR)
          .filter((f) => /^vitest.*\.json$/.test(f))
          .sort()
          .map((f) => join(DIR, f))
      : [];

const reports = [];
const missing = [];
for (const file of files) {
  try {
    reports.push({ file, report: JSON.parse(readFileSync(file, "utf8")) });
  } catch (err) {
    missing.push(`${file} (${err.code ?? err.message})`);
  }
}
if (reports.length === 0) {
  const what = files.length === 0 ? `${DIR}/vitest*.json` : missing.join(", ");
  console.error(`vitest-summary: no usable test report at ${what}`);
  process.exit(1);
}

const n = (v) => (typeof v === "number" && Number.isFinite(v) ? v : 0);
const rel = (p) => (typeof p === "string" ? relative(process.cwd(), p) : String(p));
let passed = 0;
let skipped = 0;
let failed = 0;
const failedTests = [];
const brokenFiles = [];
const unattributed = [];

for (const { file, report } of reports) {
  // Which run a failure came from, when there are several (the same file runs on the host and in the VM).
  const where = reports.length > 1 ? ` [${file}]` : "";
  passed += n(report.numPassedTests);
  skipped += n(report.numPendingTests) + n(report.numTodoTests);
  let failedHere = n(report.numFailedTests);
  for (const f of Array.isArray(report.testResults) ? report.testResults : []) {
    const assertions = Array.isArray(f.assertionResults) ? f.assertionResults : [];
    const failing = assertions.filter((a) => a.status === "failed");
    for (const a of failing) failedTests.push(`${rel(f.name)} > ${a.fullName ?? a.title}${where}`);
    if (f.status === "failed" && failing.length === 0) {
      const why = String(f.message ?? "").split("\n")[0];
      brokenFiles.push(`${rel(f.name)}${why ? `: ${why}` : ""}${where}`);
      failedHere++;
    }
  }
  // vitest also fails a run for errors it cannot pin on a test (an unhandled rejection, a crashed worker)
  if (report.success === false && failedHere === 0) {
    unattributed.push(file);
    failedHere = 1;
  }
  failed += failedHere;
}
failed += missing.length;

const LIMIT = 50;
if (failedTests.length > 0) {
  console.log(`failed tests (${failedTests.length}):`);
  for (const t of failedTests.slice(0, LIMIT)) console.log(`  FAIL ${t}`);
  if (failedTests.length > LIMIT) console.log(`  ... and ${failedTests.length - LIMIT} more`);
}
if (brokenFiles.length > 0) {
  console.log(`test files that failed outside a test (${brokenFiles.length}):`);
  for (const t of brokenFiles.slice(0, LIMIT)) console.log(`  FAIL ${t}`);
}
for (const file of unattributed) {
  console.log(
    `vitest reported errors outside any test in ${file} (see its output above): counted as 1 failure`,
  );
}
for (const m of missing) console.log(`no usable test report ${m}: counted as 1 failure`);
console.log(`${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ""}`);
process.exit(failed > 0 ? 1 : 0);
