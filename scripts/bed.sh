#!/usr/bin/env bash
# Helpers for test beds (docs/ARCHITECTURE.md "Test beds").
#
#   scripts/bed.sh env   [BED] [SUBNET]  print the exports for raw `molecule` commands
#   scripts/bed.sh clean [BED]           remove BED's containers, network and state
#                                        (leftovers of an aborted run); nothing else
#   scripts/bed.sh info  [BED] [SUBNET]  addresses, inventory and secret paths of a bed
#
# BED defaults to $PGLOG_BED or pglog-test, SUBNET to $PGLOG_SUBNET or 10.89.71.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
cmd=${1:-}
bed=${2:-${PGLOG_BED:-pglog-test}}
subnet=${3:-${PGLOG_SUBNET:-10.89.71}}

if [[ ! $bed =~ ^[a-z][a-z0-9-]{1,30}$ ]]; then
  echo "bed.sh: bed name '$bed' must match ^[a-z][a-z0-9-]{1,30}\$" >&2
  exit 2
fi
state_dir=$repo/.lab/$bed

case $cmd in
  env)
    cat <<ENV
export PGLOG_BED=$bed
export PGLOG_SUBNET=$subnet
export PGLOG_LAB_DIR=$state_dir
export MOLECULE_EPHEMERAL_DIRECTORY=$state_dir/molecule
export PATH=$repo/.venv/bin:\$PATH
ENV
    ;;
  clean)
    # This bed's containers: <bed>-<host> (db, gateway; db1, db2 in the HA
    # bed) and whatever else sits on its network; another bed whose name
    # merely starts with this one's (<bed>-two-db) is not matched.
    mapfile -t containers < <(
      { podman ps -a --format '{{.Names}}' | grep -E "^${bed}-[a-z0-9]+\$" || true
        podman ps -a --filter "network=$bed" --format '{{.Names}}' 2>/dev/null || true
      } | sort -u)
    for c in "${containers[@]}"; do
      [[ -n $c ]] || continue
      echo "[bed] removing container $c"
      # A container caught half-removed by an aborted run ("Removing",
      # netavark errors) usually goes on a second attempt.
      for attempt in 1 2 3; do
        if podman rm -f -t 5 "$c" >/dev/null 2>&1 || ! podman container exists "$c"; then
          break
        fi
        echo "[bed] $c not removed (attempt $attempt), retrying" >&2
        sleep 2
      done
    done
    if podman network exists "$bed"; then
      echo "[bed] removing network $bed"
      podman network rm -f "$bed" >/dev/null
    fi
    if [[ -d $state_dir ]]; then
      echo "[bed] removing state $state_dir"
      rm -rf "$state_dir"
    fi
    ;;
  info)
    cat <<INFO
bed:        $bed (network $bed, $subnet.0/24)
db:         $bed-db      $subnet.19  groups: postgresql
gateway:    $bed-gateway $subnet.18  groups: litellm_gateway, upstream_stub
inventory:  $state_dir/molecule/inventory
secrets:    $state_dir/secrets/ (pglog_owner_password, pglog_writer_password, litellm_master_key)
INFO
    ;;
  *)
    sed -n '2,10p' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
