#!/usr/bin/env bash
# Install what the vm and image test tiers need on a Debian bookworm host, and fetch the
# guest kernel (Debian's linux-image-amd64, 6.1) into .cache/vm/kernel/. `make image` uses
# mmdebstrap and buildah (run as root with chroot isolation: no OCI runtime is needed).
#
# Idempotent and fast on re-runs: apt is only touched when a tool is missing,
# and the kernel package is only downloaded when the cached tree is absent.
# The kernel is *not* installed on the host (it is never put into /boot): it is
# `apt-get download`ed and unpacked with `dpkg-deb -x`.
#
# Usage: vm/install-deps.sh            (as root)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/vm"
KDIR="$CACHE/kernel"

die() { echo "vm/install-deps.sh: error: $*" >&2; exit 1; }
log() { echo "vm/install-deps.sh: $*" >&2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get install, and the vm tier itself)"
command -v apt-get >/dev/null || die "apt-get not found: this script expects a Debian host"

# Debian package -> a file it installs (checked to skip apt entirely).
declare -A PKGS=(
  [qemu-system-x86]=/usr/bin/qemu-system-x86_64
  [busybox-static]=/bin/busybox
  [cpio]=/usr/bin/cpio
  [kmod]=/usr/bin/kmod
  [ipvsadm]=/usr/sbin/ipvsadm
  [ipset]=/usr/sbin/ipset
  [iptables]=/usr/sbin/iptables
  [iproute2]=/usr/bin/ip
  [curl]=/usr/bin/curl
  [socat]=/usr/bin/socat
  [conntrack]=/usr/sbin/conntrack
  [keepalived]=/usr/sbin/keepalived
  [bird2]=/usr/sbin/bird
  [procps]=/usr/sbin/sysctl
  [gzip]=/usr/bin/gzip
  [python3]=/usr/bin/python3
  [python3-venv]=/usr/share/doc/python3-venv
  [mmdebstrap]=/usr/bin/mmdebstrap
  [buildah]=/usr/bin/buildah
)

# busybox-static replaces busybox; only the static one is usable in the
# initramfs, so check for it specifically.
busybox_is_static() { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; }

missing=()
for pkg in "${!PKGS[@]}"; do
  f="${PKGS[$pkg]}"
  if [ "$pkg" = busybox-static ]; then
    busybox_is_static || missing+=("$pkg")
  elif [ ! -e "$f" ]; then
    missing+=("$pkg")
  fi
done

APT_UPDATED=0
apt_update_once() {
  [ "$APT_UPDATED" = 1 ] && return 0
  log "apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
  APT_UPDATED=1
}

if [ "${#missing[@]}" -gt 0 ]; then
  apt_update_once
  log "installing: ${missing[*]}"
  # keepalived's and bird2's postinst try to start their services; policy-rc.d keeps it (and
  # anything else) from being started on the host.
  policy_created=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy_created=1
  fi
  rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?
  [ "$policy_created" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" -eq 0 ] || die "apt-get install failed (exit $rc) for: ${missing[*]}"
  for pkg in "${missing[@]}"; do
    if [ "$pkg" = busybox-static ]; then
      busybox_is_static || die "busybox-static installed but /bin/busybox is not static"
    else
      [ -e "${PKGS[$pkg]}" ] || die "package $pkg installed but ${PKGS[$pkg]} is missing"
    fi
  done
fi

# --- guest kernel ------------------------------------------------------------
# Done when the unpacked tree has a vmlinuz and its module directory.
kernel_ready() {
  compgen -G "$KDIR/boot/vmlinuz-*" >/dev/null &&
    compgen -G "$KDIR/lib/modules/*/kernel/net/netfilter/ipvs/ip_vs.ko*" >/dev/null
}

if ! kernel_ready; then
  apt_update_once
  # linux-image-amd64 is a metapackage: Depends: linux-image-6.1.0-NN-amd64.
  kpkg="$(apt-cache depends linux-image-amd64 2>/dev/null |
          sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)"
  [ -n "$kpkg" ] || die "cannot resolve the kernel package linux-image-amd64 depends on"
  log "downloading $kpkg"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # apt-get download drops privileges to _apt: let it write the temp dir.
  chmod 755 "$tmp"
  if id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
  (cd "$tmp" && apt-get download -qq "$kpkg") || die "apt-get download $kpkg failed"
  deb="$(compgen -G "$tmp/*.deb" | head -n1 || true)"
  [ -n "$deb" ] || die "apt-get download produced no .deb for $kpkg"
  rm -rf "$KDIR.new"
  mkdir -p "$KDIR.new"
  dpkg-deb -x "$deb" "$KDIR.new" || die "dpkg-deb -x $deb failed"
  rm -rf "$KDIR"
  mv "$KDIR.new" "$KDIR"
  # The boot files depend on the kernel tree: force a rebuild.
  rm -f "$CACHE/initramfs.cpio.gz" "$CACHE/vmlinux" "$CACHE/vmlinux.kver"
  kernel_ready || die "unpacked $kpkg but found no vmlinuz / ip_vs module in $KDIR"
  log "kernel unpacked into $KDIR"
fi

# depmod the unpacked tree (cheap to check, needed by `modprobe -d`).
for moddir in "$KDIR"/lib/modules/*/; do
  kver="$(basename "$moddir")"
  if [ ! -s "$moddir/modules.dep" ] || [ "$moddir/modules.dep" -ot "$moddir/modules.order" ]; then
    log "depmod -b $KDIR $kver"
    depmod -b "$KDIR" "$kver" || die "depmod failed for $kver"
  fi
done

log "ok"
