#!/usr/bin/env bash
# Runs a command (a molecule run of the Makefile), its output passed through as it comes; when the
# command fails, ends with a recap of the failed tasks and tests (scripts/failure-recap.py): CI
# keeps only the tail of a run, and the tail of a failed molecule run is its destroy step.
# The exit code is the command's.
set -uo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
# Behind the pipe molecule and ansible no longer see a terminal: keep their colours where the
# caller has one (CI writes to a file and gets none, as before).
if [[ -t 1 ]]; then
  export PY_COLORS=1 ANSIBLE_FORCE_COLOR=1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if (( rc != 0 )); then
  echo "[recap] '$*' failed (exit $rc); what failed, repeated from the output above:"
  python3 "$here/failure-recap.py" "$log"
fi
exit "$rc"
