#!/bin/sh
# Stage 2 of the vm test tier's guest: runs chrooted into the host's root
# (mounted read-only over 9p; the project directory is mounted read-write on
# top), started by vm/initramfs-init. Sets up a VM-local environment, loads the
# kernel modules the tests need, runs $RUN/cmd.sh (written by vm/run) and
# records its exit code in $RUN/rc.
#
# Everything the guest may write is VM-local (the tmpfs mounts below) or under
# the project directory: the host root is read-only, so host /etc, /run, /var
# can never be touched.
#
# Usage (by initramfs-init): guest-init.sh PROJECT RUN
PROJECT="$1"
RUN="$2"
KDIR="$PROJECT/.cache/vm/kernel"

say() { echo "vm-guest: $*" >/dev/console; }
# A setup failure is reported on the command's stderr (the host terminal) and
# as the run's outcome; the command is not run.
setup_failed() {
  say "setup error: $*"
  echo "vm/run: guest setup failed: $*" >&2
  echo "$*" >"$RUN/setup-error"
  exit 1
}

# --- VM-local filesystems ------------------------------------------------------
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/lock /run/netns
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
# Some tools (iproute2's `ip netns exec`) remount /sys; cgroup2 for completeness.
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null

# --- the command's output: two virtio serial ports, wired by vm/run -----------
# Not ttys: bytes go through unchanged (no \r\n), like a CI log.
out= err=
for p in /sys/class/virtio-ports/*; do
  case "$(cat "$p/name" 2>/dev/null)" in
    vsop.stdout) out="/dev/${p##*/}" ;;
    vsop.stderr) err="/dev/${p##*/}" ;;
  esac
done
[ -n "$out" ] && [ -n "$err" ] || setup_failed "virtio ports vsop.stdout/vsop.stderr not found"
exec >"$out" 2>"$err" </dev/null

# --- network and kernel modules ------------------------------------------------
hostname vsop-vm
ip link set lo up || setup_failed "cannot bring lo up"

# Loaded up front so that tests see a kernel with everything in place; anything
# else is auto-loaded by the kernel through /sbin/guest-modprobe.
MODULES="
  ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_dh
  ip_vs_sh ip_vs_sed ip_vs_nq ip_vs_fo ip_vs_ovf ip_vs_mh
  dummy veth bridge macvlan ipip ip6_tunnel tunnel4 tunnel6
  nf_conntrack nf_conntrack_netlink nf_nat nfnetlink nf_tables nft_compat
  nft_chain_nat nft_ct nft_masq nft_nat nft_reject_inet nft_fib_inet
  ip_tables ip6_tables iptable_nat iptable_filter iptable_mangle
  ip6table_nat ip6table_filter ip6table_mangle
  ipt_REJECT ip6t_REJECT
  xt_set xt_ipvs xt_mark xt_MASQUERADE xt_comment xt_conntrack xt_addrtype
  xt_multiport xt_tcpudp xt_nat xt_statistic
  ip_set ip_set_hash_ip ip_set_hash_ipport ip_set_hash_ipportip
  ip_set_hash_ipportnet ip_set_hash_net ip_set_bitmap_port ip_set_list_set
"
# Not built in Debian's 6.1 kernel (CONFIG_IP_VS_TWOS is not set): best effort.
OPTIONAL_MODULES="ip_vs_twos"

# shellcheck disable=SC2086
modprobe -d "$KDIR" -a $MODULES || setup_failed "modprobe failed (see the messages above)"
for m in $OPTIONAL_MODULES; do
  modprobe -q -d "$KDIR" "$m" || say "optional module $m not available"
done

say "ready at $(cut -d' ' -f1 /proc/uptime)s"

# --- the command ---------------------------------------------------------------
# A clean environment; vm/run's cmd.sh adds the forwarded variables, cds and
# execs the command.
env -i \
  HOME=/root \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  LANG=C.UTF-8 \
  VSOP_IN_VM=1 \
  PYTHONUNBUFFERED=1 \
  /bin/bash "$RUN/cmd.sh"
rc=$?
echo "$rc" >"$RUN/rc.tmp" && mv "$RUN/rc.tmp" "$RUN/rc"
say "command exited with $rc at $(cut -d' ' -f1 /proc/uptime)s"
exit 0
