// Prints the closing line of a test run from vitest's JSON report, exactly one line, last:
//   "N passed, N failed" (+ ", N skipped" when any were skipped or todo)
// A test file that failed without a failing test (an import error, a failing beforeAll/afterAll hook) counts
// as one failure, so a broken run never reads "0 failed". The failures are listed above the closing line.
// Exits 1 if anything failed or the report is missing or unreadable.
// Usage: node scripts/vitest-summary.mjs [test-results/vitest.json]
import { readFileSync } from "node:fs";
import { relative } from "node:path";

const file = process.argv[2] ?? "test-results/vitest.json";
let report;
try {
  report = JSON.parse(readFileSync(file, "utf8"));
} catch (err) {
  console.error(`vitest-summary: no usable test report at ${file} (${err.code ?? err.message})`);
  process.exit(1);
}

const n = (v) => (typeof v === "number" && Number.isFinite(v) ? v : 0);
const passed = n(report.numPassedTests);
const skipped = n(report.numPendingTests) + n(report.numTodoTests);
const files = Array.isArray(report.testResults) ? report.testResults : [];
const rel = (p) => (typeof p === "string" ? relative(process.cwd(), p) : String(p));

const failedTests = [];
const brokenFiles = [];
for (const f of files) {
  const assertions = Array.isArray(f.assertionResults) ? f.assertionResults : [];
  const failing = assertions.filter((a) => a.status === "failed");
  for (const a of failing) failedTests.push(`${rel(f.name)} > ${a.fullName ?? a.title}`);
  if (f.status === "failed" && failing.length === 0) {
    const why = String(f.message ?? "").split("\n")[0];
    brokenFiles.push(`${rel(f.name)}${why ? `: ${why}` : ""}`);
  }
}
let failed = n(report.numFailedTests) + brokenFiles.length;
// vitest also fails a run for errors it cannot pin on a test (an unhandled rejection, a crashed worker)
const unattributed = report.success === false && failed === 0;
if (unattributed) failed = 1;

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
if (unattributed)
  console.log("vitest reported errors outside any test (see its output above): counted as 1 failure");
console.log(`${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ""}`);
process.exit(failed > 0 ? 1 : 0);
