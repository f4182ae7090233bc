#!/usr/bin/env bash
# checkov's Ansible checks over the repository (make lint), from the audit venv.
#   scripts/checkov.sh [VENV_AUDIT]
# Configuration and the explained skips: .checkov.yaml (and `# checkov:skip=` comments
# inside single tasks). Fails on any finding. Prints how long it took.
set -euo pipefail
venv=${1:-.venv-audit}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ -x $venv/bin/checkov ]] || { echo "checkov.sh: $venv/bin/checkov missing (make venvs)" >&2; exit 2; }
start=$SECONDS
cd "$repo"
# no telemetry, no version check, nothing fetched
export BC_SKIP_MAPPING=TRUE CHECKOV_NO_VERSION_CHECK=TRUE
"$venv/bin/checkov" --config-file .checkov.yaml
echo "[checkov] Ansible checks passed in $((SECONDS - start)) s"
