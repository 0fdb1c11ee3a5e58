#!/usr/bin/env bash
# Build the vm test tier's boot files:
#   .cache/vm/initramfs.cpio.gz
#   .cache/vm/vmlinux   the kernel, decompressed (see below)
#
# The initramfs is tiny: busybox-static, the modules needed to mount the
# host's root over virtio-9p (and virtio_console, for the virtio serial ports
# that carry the command's output), vm/initramfs-init as /init, and
# vm/guest-modprobe as the kernel's module helper. Everything else (ipvsadm,
# iptables, python, the venv, the other kernel modules) is read from the
# host's root over 9p; see vm/run.
#
# Usage: vm/build-initramfs.sh [--force]     (vm/run calls it when needed)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/vm"
KDIR="$CACHE/kernel"
OUT="$CACHE/initramfs.cpio.gz"
VMLINUX="$CACHE/vmlinux"

die() { echo "vm/build-initramfs.sh: error: $*" >&2; exit 1; }

# Modules the initramfs itself loads, before the host root is reachable.
# Order and dependencies (virtio_ring, netfs, fscache, 9pnet...) are resolved
# from modules.dep with the host's modprobe --show-depends.
BOOT_MODULES=(virtio_pci 9pnet_virtio 9p virtio_console)

moddir="$(compgen -G "$KDIR/lib/modules/*/" | head -n1 || true)"
[ -n "$moddir" ] || die "no kernel in $KDIR: run vm/install-deps.sh"
KVER="$(basename "$moddir")"
BUSYBOX=/bin/busybox
if [ ! -x "$BUSYBOX" ] || ldd "$BUSYBOX" >/dev/null 2>&1; then
  die "$BUSYBOX is missing or not static: run vm/install-deps.sh (busybox-static)"
fi

# The kernel, decompressed: qemu boots an ELF vmlinux directly through its PVH
# entry point (Debian builds CONFIG_PVH=y), which skips the bzImage's
# self-decompression of ~8 MB of xz: ~2.5 s under software emulation.
vmlinuz="$(compgen -G "$KDIR/boot/vmlinuz-$KVER" | head -n1 || true)"
[ -n "$vmlinuz" ] || die "no $KDIR/boot/vmlinuz-$KVER: run vm/install-deps.sh"
stage="$(mktemp -d)"
trap 'rm -rf "$stage" "$OUT.tmp.$$" "$VMLINUX.tmp.$$"' EXIT
# vmlinux.kver names the kernel it came from (mtimes from the package can't tell).
if [ "${1:-}" = --force ] || [ ! -s "$VMLINUX" ] || [ "$(cat "$VMLINUX.kver" 2>/dev/null)" != "$KVER" ]; then
  python3 - "$vmlinuz" "$VMLINUX.tmp.$$" <<'PY' || die "cannot decompress $vmlinuz"
import lzma, sys, zlib
data = open(sys.argv[1], "rb").read()
# A bzImage carries the compressed ELF vmlinux after its setup code; find it
# by its magic, as the kernel's scripts/extract-vmlinux does.
for magic, decompressor in ((b"\xfd7zXZ\x00", lzma.LZMADecompressor),
                            (b"\x1f\x8b\x08", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS))):
    pos = data.find(magic)
    while pos >= 0:
        try:
            elf = decompressor().decompress(data[pos:])
        except (lzma.LZMAError, zlib.error):
            elf = b""
        if elf[:4] == b"\x7fELF":
            open(sys.argv[2], "wb").write(elf)
            sys.exit(0)
        pos = data.find(magic, pos + 1)
sys.exit("no xz or gzip compressed ELF kernel found in " + sys.argv[1])
PY
  mv "$VMLINUX.tmp.$$" "$VMLINUX"
  echo "$KVER" >"$VMLINUX.kver"
fi

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
  gzip -1 >"$OUT.tmp.$$" || die "cpio/gzip failed"
mv "$OUT.tmp.$$" "$OUT"
echo "vm/build-initramfs.sh: built $OUT ($(du -h "$OUT" | cut -f1), kernel $KVER)" >&2
