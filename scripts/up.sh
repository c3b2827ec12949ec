#!/usr/bin/env bash
# `npm run up`: installs what is missing, builds, and runs a local Stowage cluster in the foreground
# (nats-server, the controller on embedded PGlite, three agents with dir pools), then provisions a few volumes.
# Ctrl-C stops it cleanly; run it again and it comes back with its volumes. Data: .stowage/ (STOWAGE_LOCAL_DIR).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export TURBO_TELEMETRY_DISABLED=1 DO_NOT_TRACK=1
echo "==> checking dependencies"
bash scripts/install-deps.sh
echo "==> building"
npx turbo run build --output-logs=errors-only
exec node scripts/local-cluster.mjs "$@"
