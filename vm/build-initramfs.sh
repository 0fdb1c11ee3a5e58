#!/usr/bin/env bash
# Build .cache/vm/initramfs.cpio.gz for the vm test tier.
#
# The initramfs is tiny: busybox-static, the modules needed to mount the
# host's root over virtio-9p (and the virtio console used for the command's
# output), vm/initramfs-init as /init, and vm/guest-modprobe as the kernel's
# module helper. Everything else (ipvsadm, iptables, python, the venv, the
# other kernel modules) is read from the host's root over 9p; see vm/run.
#
# Usage: vm/build-initramfs.sh [--force]     (vm/run calls it when needed)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/vm"
KDIR="$CACHE/kernel"
OUT="$CACHE/initramfs.cpio.gz"

die() { echo "vm/build-initramfs.sh: error: $*" >&2; exit 1; }

# Modules the initramfs itself loads, before the host root is reachable.
# Order and dependencies (virtio_ring, netfs, fscache, 9pnet...) are resolved
# from modules.dep with the host's modprobe --show-depends.
BOOT_MODULES=(virtio_pci 9pnet_virtio 9p virtio_console)

moddir="$(compgen -G "$KDIR/lib/modules/*/" | head -n1 || true)"
[ -n "$moddir" ] || die "no kernel in $KDIR: run vm/install-deps.sh"
KVER="$(basename "$moddir")"
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] && ! ldd "$BUSYBOX" >/dev/null 2>&1 ||
  die "$BUSYBOX is missing or not static: run vm/install-deps.sh (busybox-static)"

if [ "${1:-}" != --force ] && [ -s "$OUT" ]; then
  stale=0
  for dep in "$0" "$ROOT/vm/initramfs-init" "$ROOT/vm/guest-modprobe" "$moddir/modules.dep" "$BUSYBOX"; do
    [ "$dep" -nt "$OUT" ] && stale=1
  done
  [ "$stale" = 0 ] && exit 0
fi

# `modprobe -d` (at boot, and --show-depends here) needs depmod's indexes.
if [ ! -s "$moddir/modules.dep.bin" ]; then
  depmod -b "$KDIR" "$KVER" || die "depmod -b $KDIR $KVER failed"
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,dev,proc,sys,mnt/root,modules}
cp "$BUSYBOX" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
install -m 755 "$ROOT/vm/initramfs-init" "$stage/init"
install -m 755 "$ROOT/vm/guest-modprobe" "$stage/sbin/guest-modprobe"
# The kernel needs /dev/console before /init runs to give it stdin/out/err.
mknod -m 600 "$stage/dev/console" c 5 1

# "insmod PATH" lines in load order, duplicates dropped (first one wins).
i=0
: >"$stage/modules/order"
while read -r verb path _; do
  [ "$verb" = insmod ] || continue
  i=$((i + 1))
  name="$(printf '%02d-%s' "$i" "$(basename "$path")")"
  cp "$path" "$stage/modules/$name"
  echo "$name" >>"$stage/modules/order"
done < <(modprobe -d "$KDIR" -S "$KVER" -a --show-depends "${BOOT_MODULES[@]}" | awk '!seen[$2]++')
[ "$i" -gt 0 ] || die "modprobe --show-depends found none of: ${BOOT_MODULES[*]}"

# gzip -1: the guest decompresses it under software emulation.
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) |
  gzip -1 >"$OUT.tmp" || die "cpio/gzip failed"
mv "$OUT.tmp" "$OUT"
echo "vm/build-initramfs.sh: built $OUT ($(du -h "$OUT" | cut -f1), kernel $KVER)" >&2
