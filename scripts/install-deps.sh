#!/usr/bin/env bash
# Installs what Stowage needs to build and test on this machine, and only what is missing:
#   system (Debian 12, as root): qemu-utils, nats-server, postgresql-15 (+ its client), procps
#   node_modules: `npm ci` when node_modules is missing or older than package-lock.json
# Idempotent: a second run checks and does nothing. Used by scripts/test.sh (npm test, CI) and scripts/up.sh.
#
# Usage: scripts/install-deps.sh [--check] [--no-npm] [--no-system] [--test-backends]
#   --check      only report what is missing (exit 1 if anything is)
#   --no-npm     skip the node_modules step
#   --no-system  skip the system packages step
#   --test-backends  also the real backends the test suites run: LVM, Ceph, tgt and libiscsi, NFS-Ganesha, rpcbind
#                    and libnfs, qemu-system (kernel VM), open-iscsi (the kernel VM's initiator), Prometheus,
#                    virt-xml-validate
# Env: STOWAGE_EXTRA_APT_PACKAGES="lvm2 tgt ..."  more Debian packages to ensure (checked with dpkg -s)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHECK_ONLY=0 DO_NPM=1 DO_SYSTEM=1
for arg in "$@"; do
  case "$arg" in
    --check) CHECK_ONLY=1 ;;
    --no-npm) DO_NPM=0 ;;
    --no-system) DO_SYSTEM=0 ;;
    --test-backends) TEST_BACKENDS=1 ;;
    -h | --help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-deps: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

say() { echo "install-deps: $*"; }
die() { echo "install-deps: $*" >&2; exit 1; }

# ---- Node.js (never installed from here: Debian's nodejs is too old) --------------------------------
node_ok() {
  command -v node >/dev/null 2>&1 || return 1
  node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>=22||(a===20&&b>=19)?0:1)'
}
if ! node_ok; then
  have=$(node --version 2>/dev/null || echo "none")
  die "Node.js >= 20.19 (or 22+) is required, found: $have. Install Node.js 20 LTS (Debian's own nodejs package is too old), then run this again."
fi

# ---- system packages --------------------------------------------------------------------------------
have_cmd() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have_pg_server() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && return 0; done
  [ -n "${STOWAGE_PG_BIN:-}" ] && [ -x "$STOWAGE_PG_BIN/initdb" ] && [ -x "$STOWAGE_PG_BIN/pg_ctl" ]
}
have_pkg() { dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'; }

missing=()
have_cmd qemu-img || missing+=(qemu-utils)
have_cmd nats-server || [ -n "${STOWAGE_NATS_SERVER:-}" ] || missing+=(nats-server)
have_pg_server || missing+=(postgresql-15)
have_cmd psql || missing+=(postgresql-client-15)
have_cmd ps || missing+=(procps)
have_cmd runuser || missing+=(util-linux)
for p in ${STOWAGE_EXTRA_APT_PACKAGES:-}; do have_pkg "$p" || missing+=("$p"); done
# Test backends (docs/testkit.md says what runs where): qemu-io and qemu-img's rbd and iscsi drivers, LVM
# tools, a one-node Ceph, tgtd and the libiscsi tools for the iSCSI exports, the kernel VM for
# device-mapper, open-iscsi (iscsid, iscsiadm) for the kernel initiator in that VM (the guest runs the host's
# packages; the host kernel has no iscsi_tcp, and policy-rc.d below keeps its postinst from starting iscsid or
# udev), promtool/prometheus for the observability checks, and virt-xml-validate (libvirt-clients, with the
# schemas) and the xmllint it runs (libxml2-utils) for the libvirt <disk> elements.
if [ "${TEST_BACKENDS:-0}" = 1 ]; then
  for p in qemu-utils qemu-block-extra lvm2 thin-provisioning-tools ceph-mon ceph-osd ceph-common tgt libiscsi-bin nfs-ganesha nfs-ganesha-vfs libnfs-utils rpcbind qemu-system-x86 busybox-static kmod open-iscsi prometheus libvirt-clients libxml2-utils; do
    have_pkg "$p" || missing+=("$p")
  done
fi
# postgresql-15 brings its client
if [[ " ${missing[*]} " == *" postgresql-15 "* ]]; then
  missing=("${missing[@]/postgresql-client-15/}")
fi
read -r -a missing <<<"${missing[*]:-}"

if [ "$DO_SYSTEM" = 1 ] && [ "${#missing[@]}" -gt 0 ]; then
  is_debian=0
  [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1 && is_debian=1
  if [ "$CHECK_ONLY" = 1 ] || [ "$(id -u)" != 0 ] || [ "$is_debian" != 1 ]; then
    {
      echo "install-deps: missing system packages: ${missing[*]}"
      if [ "$is_debian" = 1 ]; then
        echo "  install them as root:"
        echo "    sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
        echo "  (or run: sudo bash scripts/install-deps.sh)"
      else
        echo "  this is not a Debian-like system; install the equivalents with your package manager:"
        echo "    qemu-utils -> qemu-img (Fedora: qemu-img; Arch: qemu-img; macOS: brew install qemu)"
        echo "    nats-server -> https://github.com/nats-io/nats-server/releases (brew install nats-server)"
        echo "    postgresql-15 -> PostgreSQL 15 server + client (dnf install postgresql-server; brew install postgresql@15)"
        echo "  then point STOWAGE_NATS_SERVER / STOWAGE_PG_BIN at them if they are not on PATH,"
        echo "  or set STOWAGE_TEST_PG_URL to an existing PostgreSQL."
      fi
    } >&2
    exit 1
  fi
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # keep package scripts from starting daemons (postgresql's main cluster on :5432, nats-server on :4222)
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy_added=1
  fi
  cleanup_policy() { [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d; return 0; }
  trap cleanup_policy EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  cleanup_policy
  trap - EXIT
  have_cmd qemu-img && have_cmd nats-server && have_pg_server || die "packages installed but tools still missing"
  say "system packages installed"
elif [ "$DO_SYSTEM" = 1 ]; then
  say "system packages: all present"
fi

# ---- node_modules -----------------------------------------------------------------------------------
if [ "$DO_NPM" = 1 ]; then
  cd "$ROOT"
  reason=""
  if [ ! -d node_modules ]; then
    reason="node_modules is missing"
  elif [ ! -f node_modules/.package-lock.json ]; then
    reason="node_modules has no install record"
  elif [ package-lock.json -nt node_modules/.package-lock.json ]; then
    reason="package-lock.json is newer than node_modules"
  fi
  if [ -z "$reason" ]; then
    say "node_modules: up to date"
  elif [ "$CHECK_ONLY" = 1 ]; then
    die "node_modules: needs \`npm ci\` ($reason)"
  else
    say "npm ci ($reason)"
    npm ci --no-audit --no-fund </dev/null
  fi
fi
