#!/usr/bin/env bash
# Runs vitest test files inside the kernel VM lab (packages/testkit/src/kernel-vm.ts): Debian's own kernel under
# qemu TCG, with device-mapper (LVM activation, thin pools, snapshots), which this host's kernel lacks. The guest
# sees this machine's / read-only (so the repository and node_modules at the same paths) and runs
# packages/testkit/vm/guest-vitest.sh with STOWAGE_IN_KERNEL_VM=1; vitest's JSON report is copied to REPORT_JSON.
#
# Usage: scripts/vm-test.sh REPORT_JSON TEST_FILE...
# Exit code: vitest's in the guest; 2 when the lab cannot run here (a missing tool, no guest kernel); 99 when the
# VM died or timed out. The first run downloads the guest kernel into $STOWAGE_VM_CACHE (default
# /var/cache/stowage-vm; ~0.4 GB, keep it between CI runs) from the Debian mirror.
# Env: STOWAGE_VM_CACHE, STOWAGE_VM_TIMEOUT (seconds, default 1800), STOWAGE_VM_MEMORY (MiB, default 3072).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ $# -lt 2 ]; then
  echo "usage: scripts/vm-test.sh REPORT_JSON TEST_FILE..." >&2
  exit 2
fi
REPORT=$1
shift
case "$REPORT" in /*) ;; *) REPORT="$PWD/$REPORT" ;; esac
cd "$ROOT" || exit 2
if [ ! -x node_modules/.bin/tsx ] || [ ! -x node_modules/.bin/vitest ]; then
  echo "vm-test: node_modules is not installed (npm ci)" >&2
  exit 2
fi
SHARE=$(mktemp -d "${TMPDIR:-/tmp}/stowage-vm-test-XXXXXX") || exit 2
trap 'if [ "${STOWAGE_TEST_KEEP_TMP:-}" = 1 ]; then echo "vm-test: kept $SHARE"; else rm -rf "$SHARE"; fi' EXIT
rm -f "$REPORT"

node_modules/.bin/tsx packages/testkit/src/kernel-vm.ts --share "$SHARE" \
  --timeout "${STOWAGE_VM_TIMEOUT:-1800}" --memory "${STOWAGE_VM_MEMORY:-3072}" \
  --env STOWAGE_IN_KERNEL_VM=1 --env STOWAGE_VM_REPORT=/share/report.json \
  packages/testkit/vm/guest-vitest.sh "$@"
rc=$?

if [ -s "$SHARE/report.json" ]; then
  mkdir -p "$(dirname "$REPORT")"
  cp "$SHARE/report.json" "$REPORT"
else
  echo "vm-test: the guest wrote no vitest report" >&2
  [ "$rc" = 0 ] && rc=1
fi
exit "$rc"
