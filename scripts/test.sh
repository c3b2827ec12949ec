#!/usr/bin/env bash
# The test command (`npm test`, and CI through .ci/run). Steps, each announced by a "==> step" line and
# closed by one with its result and duration:
#   install-deps, build, generate-check, typecheck, lint, postgres (one server for the run), vitest, vm
# and finally the closing line "N passed, N failed[, N skipped]" summed over vitest's JSON reports
# (test-results/vitest.json from the host, test-results/vitest-vm.json from the kernel VM). A failing step
# does not stop the later ones (except install-deps), but makes the exit code non-zero.
#
# The vm step (scripts/vm-test.sh) runs the suites that need device-mapper (LVM activation, thin pools,
# snapshots; this host's kernel has none) inside a qemu guest with Debian's kernel: every *.vm.test.ts and
# the LVM conformance suites. On the host the same files are skipped with that reason. It takes ~8 minutes
# (TCG emulation: ~0.5 s an LVM command) plus, the first time on a machine, a ~100 MB kernel download into
# $STOWAGE_VM_CACHE (5 s more to unpack).
#
# Env:
#   STOWAGE_TEST_PG_URL     use this PostgreSQL (superuser URL, database "postgres") instead of starting one
#   STOWAGE_TEST_FILTER     file filters passed to vitest, e.g. "packages/store apps/agent" (quick local runs)
#   STOWAGE_TEST_SKIP       comma-separated steps to skip: install-deps,build,generate-check,typecheck,lint,vm
#   STOWAGE_VM_TESTS        the test files of the vm step (default: found as described above)
#   STOWAGE_VM_CACHE        where the guest kernel is cached (default /var/cache/stowage-vm; keep it in CI)
#   STOWAGE_TEST_KEEP_TMP=1 keep the temporary directories of tests and of the run's PostgreSQL
export TURBO_TELEMETRY_DISABLED=1 DO_NOT_TRACK=1
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
REPORT=test-results/vitest.json
VM_REPORT=test-results/vitest-vm.json
failed_steps=()

now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1f s", ms / 1000 }'; }
skipped() { [[ ",${STOWAGE_TEST_SKIP:-}," == *",$1,"* ]]; }

# step NAME COMMAND...: runs the command, prints its result and duration, records a failure.
step() {
  local name=$1
  shift
  if skipped "$name"; then
    echo "==> $name: skipped (STOWAGE_TEST_SKIP)"
    return 0
  fi
  echo "==> $name"
  local t0 rc
  t0=$(now_ms)
  "$@"
  rc=$?
  if [ "$rc" = 0 ]; then
    echo "==> $name: ok ($(secs $(($(now_ms) - t0))))"
  else
    echo "==> $name: FAILED with exit code $rc ($(secs $(($(now_ms) - t0))))"
    failed_steps+=("$name")
  fi
  return "$rc"
}

# ---- a PostgreSQL 15 for the whole run (same recipe as packages/testkit/src/postgres.ts) --------------
PG_DIR=""
PG_BIN=""
as_postgres() {
  if [ "$(id -u)" = 0 ]; then (cd "$PG_DIR" && runuser -u postgres -- "$@"); else (cd "$PG_DIR" && "$@"); fi
}
free_port() {
  node -e 'const s=require("node:net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}
pg_bin_dir() {
  local d
  if [ -n "${STOWAGE_PG_BIN:-}" ]; then echo "$STOWAGE_PG_BIN"; return; fi
  for d in /usr/lib/postgresql/15/bin $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return; }
  done
  return 1
}
start_postgres() {
  PG_BIN=$(pg_bin_dir) || { echo "PostgreSQL server binaries not found (apt-get install -y postgresql-15)" >&2; return 1; }
  PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/stowage-test-pg-XXXXXX") || return 1
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$PG_DIR"
  chmod 700 "$PG_DIR"
  if ! as_postgres "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 -N \
    >"$PG_DIR/initdb.log" 2>&1; then
    tail -20 "$PG_DIR/initdb.log" >&2
    return 1
  fi
  local attempt port
  for attempt in 1 2 3; do
    port=$(free_port) || return 1
    # many suites share this server (each with its own database and pool): room for their connections
    if as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/pg.log" -w -t 60 -o \
      "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c shared_buffers=128MB" \
      start >/dev/null; then
      export STOWAGE_TEST_PG_URL="postgresql://postgres@127.0.0.1:$port/postgres"
      echo "postgres $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (dir $PG_DIR)"
      return 0
    fi
    grep -qiE 'could not bind|already in use|could not create any TCP' "$PG_DIR/pg.log" || break
  done
  tail -20 "$PG_DIR/pg.log" >&2
  return 1
}
stop_postgres() {
  [ -n "$PG_DIR" ] || return 0
  if [ -f "$PG_DIR/data/postmaster.pid" ]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  if [ "${STOWAGE_TEST_KEEP_TMP:-}" = 1 ]; then echo "kept $PG_DIR"; else rm -rf "$PG_DIR"; fi
  PG_DIR=""
}
trap stop_postgres EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- the steps -------------------------------------------------------------------------------------------
rm -f "$REPORT" "$VM_REPORT"
T_START=$(now_ms)

if ! step install-deps bash scripts/install-deps.sh --test-backends; then
  echo "cannot test without the dependencies (see above)" >&2
  exit 1
fi
step build npm run build
step generate-check npm run generate:check
step typecheck npm run typecheck
step lint npm run lint

export STOWAGE_TEST_NATS_AUTOSTART=1
if [ -n "${STOWAGE_TEST_PG_URL:-}" ]; then
  echo "==> postgres: using STOWAGE_TEST_PG_URL"
else
  step postgres start_postgres
fi

mkdir -p test-results
# shellcheck disable=SC2086 # the filter is a list of words
step vitest node_modules/.bin/vitest run --reporter=default --reporter=json --outputFile="$REPORT" \
  ${STOWAGE_TEST_FILTER:-}

stop_postgres

# ---- the kernel VM (device-mapper suites) ----------------------------------------------------------------
# The VM's test files: the filter's words pick among them as vitest's filters do (a substring of the path).
vm_tests() {
  local files f w
  if [ -n "${STOWAGE_VM_TESTS:-}" ]; then
    files=$STOWAGE_VM_TESTS
  else
    files=$(find packages apps -path '*/node_modules' -prune -o -path '*/src/*' \
      \( -name '*.vm.test.ts' -o -name 'lvm*.conformance.test.ts' \) -print 2>/dev/null | sort)
  fi
  for f in $files; do
    if [ -z "${STOWAGE_TEST_FILTER:-}" ]; then echo "$f"; continue; fi
    for w in $STOWAGE_TEST_FILTER; do
      [[ "$f" == *"$w"* ]] && { echo "$f"; break; }
    done
  done
}
VM_RAN=0
if skipped vm; then
  echo "==> vm: skipped (STOWAGE_TEST_SKIP)"
else
  mapfile -t VM_FILES < <(vm_tests)
  if [ "${#VM_FILES[@]}" -eq 0 ]; then
    echo "==> vm: skipped (no kernel VM test files${STOWAGE_TEST_FILTER:+ match STOWAGE_TEST_FILTER})"
  else
    VM_RAN=1
    step vm bash scripts/vm-test.sh "$VM_REPORT" "${VM_FILES[@]}"
  fi
fi

echo "==> total $(secs $(($(now_ms) - T_START)))"
[ "${#failed_steps[@]}" -gt 0 ] && echo "==> failed steps: ${failed_steps[*]}"

rc=0
[ "${#failed_steps[@]}" -gt 0 ] && rc=1
reports=("$REPORT")
[ "$VM_RAN" = 1 ] && reports+=("$VM_REPORT")
if [ -f "$REPORT" ] || [ -f "$VM_REPORT" ]; then
  # A report that should be there and is not counts as a failure in the closing line.
  node scripts/vitest-summary.mjs "${reports[@]}" || rc=1
else
  echo "no test report (vitest did not run or crashed before writing $REPORT)" >&2
  rc=1
fi
exit "$rc"
