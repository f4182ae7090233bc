#!/usr/bin/env python3
"""Checks the alert rules as roles/monitoring deploys them (run by `make lint`).

    scripts/check-alert-rules.py [--promtool PATH]

1. Renders roles/monitoring/templates/pglog-alerts.yml.j2 the way the role's task does
   (Jinja, variables written [[ name ]], trim_blocks) with the role's defaults, and again
   with the lab's values on top (inventory/lab/group_vars/all/monitoring.yml).
2. `promtool check rules` on both renderings.
3. `promtool test rules tests/promtool/alerts_test.yml` against the defaults' rendering.
4. Coverage: every alert has at least one test case where it fires and one where it is
   expected silent, and a runbook entry `### Alert <Name>` in docs/RUNBOOK.md (the anchor
   its runbook annotation points at).

The variables the template uses must be literal values in the defaults (no Ansible
expression): rendering fails loudly on anything undefined. Exit 0 when all is well.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jinja2
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "roles/monitoring/templates/pglog-alerts.yml.j2"
DEFAULTS = ROOT / "roles/monitoring/defaults/main.yml"
LAB_VALUES = ROOT / "inventory/lab/group_vars/all/monitoring.yml"
TESTS = ROOT / "tests/promtool/alerts_test.yml"
RUNBOOK = ROOT / "docs/RUNBOOK.md"
RULES_NAME = "pglog-alerts.yml"  # the name alerts_test.yml's rule_files uses


def render(overlay: Path | None = None) -> str:
    values = yaml.safe_load(DEFAULTS.read_text())
    if overlay is not None:
        values.update({k: v for k, v in (yaml.safe_load(overlay.read_text()) or {}).items()
                       if k.startswith("monitoring_")})
    values["ansible_managed"] = "Rendered by scripts/check-alert-rules.py"
    env = jinja2.Environment(variable_start_string="[[", variable_end_string="]]", trim_blocks=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE.read_text()).render(**values)


def promtool(binary: str, *args: str, cwd: Path) -> None:
    p = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    print(f"$ promtool {' '.join(args)}\n{(p.stdout + p.stderr).strip()}")
    if p.returncode != 0:
        raise SystemExit(f"check-alert-rules: promtool {args[0]} {args[1]} failed ({p.returncode})")


def coverage(rules_text: str) -> list[str]:
    alerts = [r["alert"] for g in yaml.safe_load(rules_text)["groups"] for r in g["rules"] if "alert" in r]
    fires: set[str] = set()
    silent: set[str] = set()
    for test in yaml.safe_load(TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test") or []:
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    runbook = RUNBOOK.read_text()
    problems = []
    for name in alerts:
        if name not in fires:
            problems.append(f"{name}: no test case where it fires")
        if name not in silent:
            problems.append(f"{name}: no test case where it stays silent")
        if not re.search(rf"^### Alert {re.escape(name)}$", runbook, re.M):
            problems.append(f"{name}: no '### Alert {name}' entry in docs/RUNBOOK.md")
    print(f"coverage: {len(alerts)} alerts, each tested firing and silent, each in the runbook"
          if not problems else "coverage problems:\n  " + "\n  ".join(problems))
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--promtool", default=shutil.which("promtool") or "promtool")
    args = ap.parse_args()
    if not shutil.which(args.promtool):
        print("check-alert-rules: promtool not found (scripts/setup-host.sh installs it)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pglog-rules-") as tmp:
        work = Path(tmp)
        default_rules = render()
        (work / RULES_NAME).write_text(default_rules)
        (work / "lab").mkdir()
        (work / "lab" / RULES_NAME).write_text(render(LAB_VALUES))
        shutil.copy(TESTS, work / TESTS.name)
        promtool(args.promtool, "check", "rules", RULES_NAME, f"lab/{RULES_NAME}", cwd=work)
        promtool(args.promtool, "test", "rules", TESTS.name, cwd=work)
        return 1 if coverage(default_rules) else 0


if __name__ == "__main__":
    sys.exit(main())
