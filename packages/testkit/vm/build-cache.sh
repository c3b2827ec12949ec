#!/usr/bin/env bash
# Builds (once) what the kernel VM lab boots: Debian's own kernel (linux-image-amd64, which has device-mapper,
# thin pools, LIO, knfsd, krbd as modules, unlike the host kernel) and a tiny busybox initramfs (./init).
# Usage: build-cache.sh CACHE_DIR        (kernel-vm.ts runs it; idempotent; concurrent runs wait on a lock)
# Layout: CACHE_DIR/kernel/ (the package's tree: boot/vmlinuz-KV, lib/modules/KV), kernel.ver (KV, written
# last), initrd.gz + initrd.stamp (a hash of ./init, this script and KV: a changed init rebuilds only the initrd).
# Cost: one ~100 MB download from the Debian mirror plus ~5 s; ~0.4 GB on disk. Keep CACHE_DIR between CI runs.
set -euo pipefail
C=${1:?usage: build-cache.sh CACHE_DIR}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "kernel-vm cache: $*" >&2; exit 2; }
for c in apt-get apt-cache dpkg-deb depmod modprobe busybox gzip flock sha256sum; do
  command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || [ -x "/sbin/$c" ] ||
    die "missing $c: apt-get install -y --no-install-recommends busybox-static kmod (on Debian)"
done
export PATH="$PATH:/usr/sbin:/sbin"
mkdir -p "$C"
exec 9>"$C/.lock"
flock 9

if [ ! -s "$C/kernel.ver" ] || [ ! -d "$C/kernel/lib/modules/$(cat "$C/kernel.ver")" ]; then
  resolve() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
  KPKG=$(resolve)
  if [ -z "$KPKG" ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    KPKG=$(resolve)
  fi
  [ -n "$KPKG" ] || die "cannot resolve the package behind linux-image-amd64 (is this Debian with a reachable mirror? run apt-get update)"
  T=$(mktemp -d "$C/.build.XXXXXX")
  trap 'rm -rf "$T"' EXIT
  echo "kernel-vm cache: downloading $KPKG into $C (once)" >&2
  if ! (cd "$T" && apt-get download "$KPKG" >"$T/download.log" 2>&1); then
    tail -5 "$T/download.log" >&2
    die "apt-get download $KPKG failed: the Debian mirror must be reachable, or pre-fill $C from a machine that has it"
  fi
  dpkg-deb -x "$T"/"$KPKG"_*.deb "$T/kernel"
  KV=$(ls "$T/kernel/lib/modules" | head -1)
  [ -n "$KV" ] && [ -f "$T/kernel/boot/vmlinuz-$KV" ] || die "$KPKG has no kernel image or module tree"
  depmod -b "$T/kernel" "$KV"
  rm -rf "$C/kernel" "$C/kernel.ver"
  mv "$T/kernel" "$C/kernel"
  echo "$KV" >"$C/kernel.ver.partial"
  mv "$C/kernel.ver.partial" "$C/kernel.ver"
fi
KV=$(cat "$C/kernel.ver")

# Only what the initramfs needs to reach the 9p root; the guest modprobes everything else from /lib/modules.
MODULES="virtio_pci 9p 9pnet_virtio overlay"
STAMP=$( (cat "$HERE/init" "${BASH_SOURCE[0]}"; echo "$KV $MODULES") | sha256sum | cut -c1-16)
if [ "$(cat "$C/initrd.stamp" 2>/dev/null)" != "$STAMP" ] || [ ! -s "$C/initrd.gz" ]; then
  BB=$(command -v busybox)
  # ldd exits non-zero on a static binary, which is what we want; its message is the test.
  case "$(ldd "$BB" 2>&1 || true)" in *"not a dynamic"*) ;; *) die "$BB is not statically linked: apt-get install -y busybox-static" ;; esac
  T=$(mktemp -d "$C/.build.XXXXXX")
  trap 'rm -rf "$T"' EXIT
  I="$T/initrd"
  mkdir -p "$I"/{bin,mods,proc,sys,dev,lower,upper,newroot}
  cp "$BB" "$I/bin/busybox"
  cp "$HERE/init" "$I/init"
  chmod 755 "$I/init"
  for m in $MODULES; do modprobe -d "$C/kernel" -S "$KV" --show-depends "$m"; done |
    awk '$1=="insmod"{print $2}' | awk '!seen[$0]++' >"$T/paths"
  : >"$I/mods/order"
  while read -r f; do
    cp "$f" "$I/mods/"
    basename "$f" >>"$I/mods/order"
  done <"$T/paths"
  (cd "$I" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 >"$T/initrd.gz")
  mv "$T/initrd.gz" "$C/initrd.gz"
  echo "$STAMP" >"$C/initrd.stamp"
fi
echo "$KV"
