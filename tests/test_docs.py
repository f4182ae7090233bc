"""The docs name no path of the repository that does not exist.

Every `backticked` token in README.md and docs/*.md that starts with a top-level entry of
the repository (roles/…, playbooks/…, files/…, site.yml, …) must exist in the work tree;
placeholders (<…>, *, {…}) and paths on the hosts (/etc/…) are not repository paths.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# gitignored or generated on demand: named by the docs, absent from a fresh clone
GENERATED = (".venv", ".venv-dev", ".lab", ".cache", "evidence", "build", "inventory/production/pki",
             "inventory/production/group_vars/all/vault.yml")
_TICKED = re.compile(r"`([^`\s]+)`")


def repo_paths(text: str) -> set[str]:
    tops = {p.name for p in ROOT.iterdir() if p.name != ".git"}
    found = set()
    for token in _TICKED.findall(text):
        token = token.rstrip(".,:;)").split("::")[0]
        if re.search(r"[<>*{}$]", token) or token.startswith(("/", "http")):
            continue
        first = token.split("/")[0]
        if first in tops and (token != first or "." in first):
            found.add(token)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_repository_path_in_the_docs_exists(doc):
    paths = repo_paths(doc.read_text(encoding="utf-8"))
    missing = sorted(p for p in paths
                     if not (ROOT / p).exists() and not p.startswith(GENERATED))
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


def test_the_check_finds_a_stale_path():
    assert repo_paths("see `playbooks/nowhere.yml` and `roles/base` but not `/etc/x` or `roles/<r>`") == {
        "playbooks/nowhere.yml", "roles/base"}
