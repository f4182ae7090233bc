#!/usr/bin/env bash
# Host prerequisites for the control node / build machine (Debian 12, root).
# Idempotent: installs only missing packages, writes container settings as a
# drop-in (never overwrites an existing /etc/containers/containers.conf) and
# prints every change it makes.
set -euo pipefail

log() { printf '[setup-host] %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
  echo "setup-host.sh: run as root (rootful podman, apt-get)" >&2
  exit 1
fi

# Container stack (see docs: runc, not crun; netavark networking), image build
# (debootstrap), the logging module's host tests (PostgreSQL 15 server) and venvs,
# Ansible's connection to the beds' hosts (ssh).
PACKAGES=(
  podman runc uidmap slirp4netns fuse-overlayfs netavark aardvark-dns
  containernetworking-plugins iptables nftables catatonit debootstrap
  postgresql python3-venv openssh-client
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -q
  timeout 1200 apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  log "packages: all present"
fi

# promtool (`make lint` checks and unit-tests the alert rules) from Debian's
# prometheus package, unpacked rather than installed: installing the package
# would also enable and start a Prometheus server on this machine. apt-get
# download checks the package against the signed index, as an install does.
PROMTOOL=/usr/local/bin/promtool
if [[ -x $PROMTOOL ]]; then
  log "promtool: $($PROMTOOL --version 2>&1 | head -1)"
else
  log "promtool: unpacking /usr/bin/promtool of Debian's prometheus package into $PROMTOOL"
  work=$(mktemp -d)
  chown _apt "$work" 2>/dev/null || true  # apt downloads as _apt where it can
  if ! (cd "$work" && timeout 600 apt-get download -q prometheus); then
    timeout 600 apt-get update -q
    (cd "$work" && timeout 600 apt-get download -q prometheus)
  fi
  dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool
  install -m 0755 "$work/usr/bin/promtool" "$PROMTOOL"
  rm -rf -- "$work"
  log "promtool: $($PROMTOOL --version 2>&1 | head -1)"
fi

# Container settings as a drop-in: containers.conf.d files are merged over
# /etc/containers/containers.conf (podman >= 4.x), so a user's own file stays.
#  - runc: crun cannot raise rlimits without CAP_SYS_RESOURCE and is flaky on
#    cgroup v1 hybrid hosts ("crun: setrlimit RLIMIT_NOFILE: Operation not permitted")
#  - explicit ulimits below the hard limits the host grants us
#  - netavark: the network backend with static IPs per network
DROPIN_DIR=/etc/containers/containers.conf.d
DROPIN=$DROPIN_DIR/50-pglog.conf
want=$(cat <<'CONF'
# Written by scripts/setup-host.sh (litellm-pglog bundle).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[network]
network_backend = "netavark"

[engine]
runtime = "runc"
CONF
)
mkdir -p "$DROPIN_DIR"
if [[ -f $DROPIN ]] && [[ "$(cat "$DROPIN")" == "$want" ]]; then
  log "container settings: $DROPIN up to date"
else
  printf '%s\n' "$want" > "$DROPIN"
  log "container settings: wrote $DROPIN (runtime=runc, default_ulimits, netavark)"
fi
if [[ -f /etc/containers/containers.conf ]]; then
  log "note: /etc/containers/containers.conf exists and was left untouched; $DROPIN overrides its runtime/ulimits/network_backend"
fi

# The network backend is fixed once podman has created networks with another
# backend (CNI): refuse to continue silently in that case.
backend=$(podman info --format '{{.Host.NetworkBackend}}' 2>/dev/null || true)
if [[ $backend != netavark ]]; then
  echo "setup-host.sh: podman network backend is '${backend:-unknown}', expected netavark." >&2
  echo "  Existing CNI networks pin the backend; see README 'Troubleshooting'." >&2
  exit 1
fi
runtime=$(podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null || true)
log "podman $(podman version --format '{{.Client.Version}}'), runtime=$runtime, network backend=$backend"
if [[ $runtime != runc ]]; then
  echo "setup-host.sh: podman OCI runtime is '$runtime', expected runc" >&2
  exit 1
fi

# A quick run of the test image (if already built) proves runtime + ulimits work;
# build-image.sh runs a full systemd boot check whenever it builds.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ref=$("$here/build-image.sh" --print-ref)
if podman image exists "$ref"; then
  if out=$(timeout 60 podman run --rm "$ref" sh -c 'ulimit -n' 2>&1); then
    log "podman run $ref: ok (nofile=$out)"
  else
    echo "setup-host.sh: podman run $ref failed: $out" >&2
    exit 1
  fi
else
  log "test image $ref not built yet (make image / scripts/build-image.sh)"
fi
