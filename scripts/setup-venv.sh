#!/usr/bin/env bash
# Creates/updates a virtualenv from a hash-pinned lock file.
#   scripts/setup-venv.sh VENV_DIR LOCK_FILE [PYTHON]
# Idempotent: a stamp file in the venv holds the lock's sha256 (and the
# interpreter); when both are unchanged nothing is installed. A venv of the
# same interpreter is updated in place, never deleted.
set -euo pipefail

venv=${1:?usage: setup-venv.sh VENV_DIR LOCK_FILE [PYTHON]}
lock=${2:?usage: setup-venv.sh VENV_DIR LOCK_FILE [PYTHON]}
python=${3:-python3.11}

[[ -f $lock ]] || { echo "setup-venv.sh: $lock not found" >&2; exit 1; }
command -v "$python" >/dev/null || { echo "setup-venv.sh: $python not found" >&2; exit 1; }

want="$(sha256sum "$lock" | cut -d' ' -f1) $("$python" -c 'import sys; print(sys.version.split()[0])')"
stamp=$venv/.lock-stamp
if [[ -x $venv/bin/python && -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
  echo "[setup-venv] $venv up to date with $lock"
  exit 0
fi

start=$SECONDS
pyver=$("$python" -c 'import sys; print(sys.version.split()[0])')
if [[ -x $venv/bin/python ]] &&
   [[ "$("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])')" == "$pyver" ]]; then
  # Same interpreter: install in place. The venv may be in use by someone's
  # running tests on this shared machine; packages outside the lock (e.g. an
  # editable install of the project's own package) are kept.
  echo "[setup-venv] updating $venv in place"
else
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
# --require-hashes + --no-deps: exactly what the lock lists, nothing resolved
# at install time.
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  --require-hashes --no-deps -r "$lock"
printf '%s\n' "$want" >"$stamp"
echo "[setup-venv] $venv installed from $lock in $((SECONDS - start)) s"
