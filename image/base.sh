#!/usr/bin/env bash
# A local stand-in for python:3.11-slim-bookworm, built from Debian's packages alone:
# bookworm's minbase (what debian:bookworm-slim is) with the slim image's dpkg excludes and
# apt settings, plus ca-certificates, netbase and tzdata (which the python image adds) and
# Debian's Python 3.11.
#
# The one layout difference from the python image: its /usr/local holds a Python built from
# source; here /usr/local is a virtual environment over Debian's /usr/bin/python3 (3.11.2,
# `python3 -m venv /usr/local`). So /usr/local/bin/python, python3, pip and pip3 exist,
# `pip install` writes to /usr/local/lib/python3.11/site-packages and /usr/local/bin as in
# the python image, and Debian's "externally managed" guard (PEP 668), which covers
# /usr/bin/python3 only, does not stop the Dockerfile's `pip install`. Debian's compiled
# stdlib (.pyc) is kept: the python image deletes its own, this one starts faster.
#
#   image/base.sh OUT.tar      the root filesystem as a tarball (as root; mmdebstrap's root mode)
#
# The result depends on this file alone (and on what the mirror serves): image/build.sh
# keys its cached base image on this file's hash.
set -euo pipefail
out=${1:?usage: image/base.sh OUT.tar}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

PACKAGES=ca-certificates,netbase,tzdata,python3,python3-venv
# debian:bookworm-slim's /etc/dpkg/dpkg.cfg.d/docker (mmdebstrap keeps --dpkgopt there too):
# no docs, man pages or translations, in this base and in whatever a Dockerfile installs on it.
EXCLUDES=(
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/groff/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  --dpkgopt='path-exclude=/usr/share/linda/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
)

# What debuerreotype (the builder of Debian's images) adds for `docker build`: apt keeps no
# downloaded .debs or package caches in a layer (the Dockerfile removes only the lists and
# relies on this: without it the image carried 87 MB of them), fetches no translations,
# and no service is started by a package's postinst during a build.
MINIMIZE='
cat > "$1/etc/apt/apt.conf.d/docker-clean" <<CONF
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
echo "Acquire::Languages \"none\";" > "$1/etc/apt/apt.conf.d/docker-no-languages"
echo "Acquire::GzipIndexes \"true\";" > "$1/etc/apt/apt.conf.d/docker-gzip-indexes"
echo "Apt::AutoRemove::SuggestsImportant \"false\";" > "$1/etc/apt/apt.conf.d/docker-autoremove-suggests"
printf "#!/bin/sh\nexit 101\n" > "$1/usr/sbin/policy-rc.d"
chmod 755 "$1/usr/sbin/policy-rc.d"
# With these settings in place the bootstrap leaves its downloaded .debs behind.
rm -f "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/*.bin
'

mmdebstrap --mode=root --variant=minbase --format=tar --include="$PACKAGES" "${EXCLUDES[@]}" \
  --customize-hook='chroot "$1" python3 -m venv /usr/local' \
  --customize-hook='rm -f "$1"/usr/local/bin/[Aa]ctivate* "$1"/etc/machine-id' \
  --customize-hook="$MINIMIZE" \
  bookworm "$out" \
  "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" "deb $SECURITY bookworm-security main"
