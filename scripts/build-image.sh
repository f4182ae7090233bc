#!/usr/bin/env bash
# Builds the test-bed image: a Debian 13 (trixie) minbase root file system with
# systemd as PID 1, imported into rootful podman as localhost/pglog-trixie:<hash>.
# There is no registry here, so the image is built locally with debootstrap.
#
# <hash> is a content hash of this script and of every file it copies into the
# image (the build host's extra CA certificates), so a change to either makes a
# new tag; an existing tag is never rebuilt.
#
#   scripts/build-image.sh              build if missing, print the reference
#   scripts/build-image.sh --print-ref  only print the reference (no build)
#
# Env: PGLOG_DEBIAN_MIRROR (default http://deb.debian.org/debian),
#      PGLOG_BUILD_DIR     (default <repo>/build; scratch space, gitignored).
set -euo pipefail

IMAGE_NAME=localhost/pglog-trixie
SUITE=trixie
MIRROR=${PGLOG_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# systemd/dbus: a real init for services; python3 + python3-apt: Ansible's
# modules (apt needs python3-apt); sudo: become; openssh-server: Ansible
# reaches the bed's hosts over SSH as it reaches production's (pipelined, one
# connection per host; podman exec costs four processes per task); the rest is
# what the testinfra tests and drills use (ps, curl, ping, ip).
INCLUDE=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,iproute2,ca-certificates,procps,curl,iputils-ping,openssh-server

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
BUILD_DIR=${PGLOG_BUILD_DIR:-$repo/build}

# Extra trust anchors of the build host (corporate TLS-intercepting proxies):
# copied into the image so apt/pip/curl inside the bed trust the same CAs.
shopt -s nullglob
extra_cas=(/usr/local/share/ca-certificates/*.crt)
shopt -u nullglob

image_hash() {
  {
    sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
    echo "$MIRROR"
    for f in "${extra_cas[@]}"; do
      printf '%s ' "$(basename "$f")"; sha256sum "$f" | cut -d' ' -f1
    done
  } | sha256sum | cut -c1-12
}
REF="$IMAGE_NAME:$(image_hash)"

if [[ ${1:-} == --print-ref ]]; then
  echo "$REF"
  exit 0
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--print-ref]" >&2
  exit 2
fi

log() { printf '[build-image %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

mkdir -p "$BUILD_DIR"
# Several engineers/beds may ask for the image at once: one builder at a time.
exec 9>"$BUILD_DIR/build-image.lock"
if ! flock -w 900 9; then
  echo "build-image.sh: another build holds $BUILD_DIR/build-image.lock for >15 min" >&2
  exit 1
fi

if podman image exists "$REF"; then
  log "image $REF exists, nothing to build"
  echo "$REF"
  exit 0
fi

start=$SECONDS
work=$(mktemp -d "$BUILD_DIR/rootfs.XXXXXX")
cleanup() { rm -rf --one-file-system "$work"; }
trap cleanup EXIT
rootfs=$work/rootfs

log "debootstrap $SUITE minbase from $MIRROR"
timeout 1200 debootstrap --variant=minbase --include="$INCLUDE" \
  "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -30 "$work/debootstrap.log" >&2
  echo "build-image.sh: debootstrap failed (log above)" >&2
  exit 1
}
log "debootstrap done in $((SECONDS - start)) s"

# debootstrap copies the build host's hostname; each container gets its own
# (podman sets it). An empty machine-id makes systemd generate one per boot.
: >"$rootfs/etc/hostname"
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"
# No host key in the image: every bed mounts its own (molecule/shared/create.yml),
# so no two beds, and no image user, share a private key.
rm -f "$rootfs"/etc/ssh/ssh_host_*

if ((${#extra_cas[@]})); then
  log "adding ${#extra_cas[@]} extra CA certificate(s) from the build host"
  cp "${extra_cas[@]}" "$rootfs/usr/local/share/ca-certificates/"
  chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
fi

# Smaller image: package caches and docs are not needed in a test bed.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*

t=$SECONDS
tar --numeric-owner --xattrs --acls -C "$rootfs" -cf "$work/rootfs.tar" .
log "tar done in $((SECONDS - t)) s ($(du -h "$work/rootfs.tar" | cut -f1))"

t=$SECONDS
podman import -q --change 'CMD ["/sbin/init"]' "$work/rootfs.tar" "$REF" >/dev/null
log "podman import done in $((SECONDS - t)) s"

# Smoke test: the image must boot systemd to "running" (or "degraded") under
# the host's podman settings; a broken image is removed, not left tagged.
t=$SECONDS
smoke=pglog-image-smoke-$$
state=none
if podman run -d --name "$smoke" --systemd=always "$REF" >/dev/null; then
  # is-system-running exits non-zero unless "running": read its output only.
  # Right after `podman run`, systemd may not have opened its bus yet ("Failed
  # to connect to system scope bus"): ask again until it answers, for 60 s.
  deadline=$((SECONDS + 60))
  while ((SECONDS < deadline)); do
    state=$(timeout 60 podman exec "$smoke" systemctl is-system-running --wait 2>/dev/null || true)
    [[ $state == running || $state == degraded ]] && break
    sleep 1
  done
fi
podman rm -f -t 0 "$smoke" >/dev/null 2>&1 || true
if [[ $state != running && $state != degraded ]]; then
  podman rmi "$REF" >/dev/null 2>&1 || true
  echo "build-image.sh: smoke test failed: systemd state '${state:-none}' (image removed)" >&2
  exit 1
fi
log "smoke test: systemd ${state} in $((SECONDS - t)) s; total $((SECONDS - start)) s"
echo "$REF"
