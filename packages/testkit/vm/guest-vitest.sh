#!/bin/bash
# Runs in the kernel VM (scripts/vm-test.sh): loads the modules the LVM and iSCSI tests need (the guest has no
# udev and no module autoloading), gives the guest an iSCSI initiator name of its own, then `vitest run` over
# the given test files from the repository (seen read-only through 9p, under a RAM overlay, so vitest's caches
# and the tests' temp files land in guest memory), with a JSON report in the share dir. Exit code: vitest's.
set -u
# iscsi_tcp and sd_mod: the kernel initiator (open-iscsi) and the disks its sessions attach.
for m in dm-mod dm-thin-pool dm-snapshot dm-bufio loop iscsi_tcp sd_mod; do
  modprobe "$m" || echo "guest-vitest: modprobe $m failed"
done
# iscsid will not start without /etc/iscsi/initiatorname.iscsi, and the one the host's open-iscsi package
# generated (if any) is the host's. This write lands in the guest's RAM overlay, never on the host; iscsiadm
# makes its own state (/etc/iscsi/nodes, send_targets, ifaces; /run/lock/iscsi) in the same writable layer.
mkdir -p /etc/iscsi
echo "InitiatorName=iqn.2026-12.io.stowage:kernel-vm" >/etc/iscsi/initiatorname.iscsi
export STOWAGE_IN_KERNEL_VM=1 TMPDIR=/tmp
echo "guest-vitest: $(nproc) CPUs, $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) MiB, node $(node --version)"
# verbose: the default reporter, plus a line per test as it finishes (a VM run is long; this is its progress).
# maxWorkers: vitest's default is one less than the CPUs, so one worker on the guest's two, running the files
# one after the other; they spend much of their time waiting on LVM, so three at once roughly halve the run.
exec node node_modules/.bin/vitest run --reporter=verbose --reporter=json \
  --maxWorkers="${STOWAGE_VM_WORKERS:-3}" --outputFile="${STOWAGE_VM_REPORT:-/share/report.json}" "$@"
