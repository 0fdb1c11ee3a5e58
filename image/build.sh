#!/usr/bin/env bash
# make image: the Dockerfile built here without a registry, on a base made from Debian's packages.
#
#   image/build.sh            (as root; IMAGE=NAME:TAG to tag it otherwise, default vsop:VERSION)
#
# 1. The base (image/base.sh: mmdebstrap, bookworm, Debian's Python 3.11), imported into the
#    project's image store as localhost/vsop-base:<hash of image/base.sh>; built only when
#    that tag is missing, so a second run skips it.
# 2. The Dockerfile, unchanged but for `--build-arg BASE=`, built by buildah with its layer
#    cache (a step whose inputs did not change is reused). Isolation chroot: no user
#    namespace, OCI runtime or cgroup setup is needed, only root. The host's CA bundle is
#    mounted over the build's during RUN steps (never in a layer), so apt and pip work
#    behind a TLS-intercepting proxy; Debian's pip trusts that file.
# 3. The image's size and layers printed, and its root filesystem exported to
#    .cache/image/rootfs (with its config beside it in rootfs.config.json) for the image
#    test tier, which chroots into it on this machine and in the VM.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
STORE=.cache/image
B=image/buildah
die() { echo "image/build.sh: error: $*" >&2; exit 1; }
log() { echo "image/build.sh: $*" >&2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap's root mode, buildah's chroot isolation)"
for tool in mmdebstrap buildah; do
  command -v "$tool" >/dev/null || die "$tool not found: run 'make deps' (it installs Debian's mmdebstrap and buildah)"
done
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' operator/vsop/__init__.py)
[ -n "$VERSION" ] || die "no __version__ in operator/vsop/__init__.py"
IMAGE=${IMAGE:-vsop:$VERSION}
mkdir -p "$STORE"

# --- 1. the base -------------------------------------------------------------------------
key=$(sha256sum image/base.sh | cut -c1-16)
BASE=localhost/vsop-base:$key
start=$SECONDS
if "$B" inspect --type image "$BASE" >/dev/null 2>&1; then
  log "base $BASE: cached"
else
  log "base $BASE: mmdebstrap (a few minutes)"
  tar="$STORE/base-$key.tar"
  image/base.sh "$tar" >"$STORE/base.log" 2>&1 || { tail -n 30 "$STORE/base.log" >&2; die "image/base.sh failed (log: $STORE/base.log)"; }
  ctr=$("$B" from scratch)
  "$B" add "$ctr" "$tar" / >/dev/null
  # The python image's own settings (its PATH puts /usr/local/bin first; LANG; CMD).
  "$B" config --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd python3 --created-by "image/base.sh $key: mmdebstrap bookworm minbase, python3 (venv at /usr/local)" "$ctr"
  "$B" commit --rm --quiet "$ctr" "$BASE" >/dev/null
  rm -f "$tar"
  for old in $("$B" images --noheading --format '{{.Name}}:{{.Tag}}' 2>/dev/null | grep '^localhost/vsop-base:' || true); do
    [ "$old" = "$BASE" ] || "$B" rmi "$old" >/dev/null 2>&1 || true
  done
  log "base built in $((SECONDS - start))s"
fi

# --- 2. the Dockerfile -------------------------------------------------------------------
start=$SECONDS
mounts=()
[ -r /etc/ssl/certs/ca-certificates.crt ] && mounts=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
"$B" bud --isolation chroot --layers --build-arg "BASE=$BASE" "${mounts[@]}" -t "$IMAGE" -f Dockerfile . >"$STORE/build.log" 2>&1 ||
  { tail -n 40 "$STORE/build.log" >&2; die "buildah bud failed (log: $STORE/build.log)"; }
log "$IMAGE built in $((SECONDS - start))s (log: $STORE/build.log)"

# --- 3. size, layers, export ------------------------------------------------------------
"$B" inspect --type image "$IMAGE" > "$STORE/image.json"
python3 - "$STORE/image.json" "$STORE/storage" "$IMAGE" <<'PY'
import json, sys
from pathlib import Path
image = json.load(open(sys.argv[1]))
sizes = {}
for layers in Path(sys.argv[2]).glob("*-layers/layers.json"):
    sizes.update({layer.get("diff-digest"): layer.get("diff-size", 0) for layer in json.loads(layers.read_text())})
history = [h for h in image["OCIv1"].get("history", []) if not h.get("empty_layer")]
digests = image["OCIv1"]["rootfs"]["diff_ids"]
total = sum(sizes.get(d, 0) for d in digests)
print(f"{sys.argv[3]}  id {image['FromImageID'][:12]}  {total / 1e6:.0f} MB in {len(digests)} layers")
for digest, step in zip(digests, history):
    print(f"  {sizes.get(digest, 0) / 1e6:7.1f} MB  {step.get('created_by', '')[:110]}")
PY
id=$("$B" inspect --type image --format '{{.FromImageID}}' "$IMAGE")
if [ "$(cat "$STORE/rootfs.id" 2>/dev/null)" != "$id" ]; then
  rm -rf "$STORE/rootfs" "$STORE/rootfs.new"
  ctr=$("$B" from --pull-never "$IMAGE")
  mnt=$("$B" mount "$ctr")
  cp -a "$mnt/." "$STORE/rootfs.new"
  "$B" umount "$ctr" >/dev/null
  "$B" rm "$ctr" >/dev/null
  python3 -c 'import json, sys; json.dump(json.load(open(sys.argv[1]))["OCIv1"]["config"], sys.stdout, indent=1)' "$STORE/image.json" > "$STORE/rootfs.config.json"
  mv "$STORE/rootfs.new" "$STORE/rootfs"
  echo "$id" > "$STORE/rootfs.id"
  log "root filesystem exported to $STORE/rootfs"
fi
