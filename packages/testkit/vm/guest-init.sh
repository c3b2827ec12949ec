#!/bin/bash
# Runs as PID 1 in the kernel VM, after the initramfs (./init) has switched to the overlay root. Sets up what a
# booted system would have (tmpfs /run and /tmp, loopback), runs the guest script with the env and arguments
# kernel-vm.ts left in /share/.stowage-vm/, tees its output to the console (the host streams it) and to
# output.log, writes its exit code to rc, and powers off. The host reads rc; no rc means the VM died.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C
V=/share/.stowage-vm
mkdir -p /host-tmp && mount --bind /tmp /host-tmp # the host's /tmp stays visible (read-only lower layer)
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/lock
hostname stowage-vm
ip link set lo up 2>/dev/null || busybox ip link set lo up 2>/dev/null || true
# Kernel messages would interleave with the script's output on the one serial console.
dmesg -n 1 2>/dev/null || true
# shellcheck disable=SC1091 # written per run by kernel-vm.ts
. "$V/env"
args=()
[ -s "$V/args" ] && mapfile -d '' -t args <"$V/args"
echo "stowage-vm: guest up ($(uname -r)), running $(basename "$STOWAGE_VM_SCRIPT")"
cd "$STOWAGE_VM_CWD" || { echo "stowage-vm: no directory $STOWAGE_VM_CWD in the guest"; echo 98 >"$V/rc"; }
if [ ! -e "$V/rc" ]; then
  bash "$V/guest.sh" "${args[@]}" 2>&1 | tee "$V/output.log"
  echo "${PIPESTATUS[0]}" >"$V/rc.partial"
  sync
  mv "$V/rc.partial" "$V/rc"
fi
sync
echo o >/proc/sysrq-trigger
sleep 5
poweroff -f
