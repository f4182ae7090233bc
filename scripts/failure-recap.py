#!/usr/bin/env python3
"""What failed in a molecule run, in a few lines, for the end of its output.

CI keeps only the tail of a run, and after a failed converge or verify the tail is molecule's
destroy step: the task or test that failed is pages above it. scripts/with-recap.sh keeps the
run's output and, when the run fails, prints this recap last: each failed task with its host and
its message, each failed test with its reason, at most MAX_LINES lines of at most WIDTH
characters. It only repeats what the run already printed above it (no_log tasks are censored
there already)."""

from __future__ import annotations

import re
import sys

MAX_LINES = 16
WIDTH = 240

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
BOX = re.compile(r"^\s*[│┌└├]\s?")  # molecule 26 draws each step's ansible output in a box
TASK = re.compile(r"^TASK \[(.*)")
FAILED_TASK = re.compile(r"^(?:fatal|failed): \[([^\]]+)\]")
PYTEST_FAILED = re.compile(r"^(FAILED|ERROR) (\S+::\S+)(?: - (.*))?")
MSG = re.compile(r'"msg":\s*"((?:[^"\\]|\\.)*)"')
# lines that end the message of a failed task: the next result, task, play or recap
NEXT = re.compile(r"^(ok|changed|skipping|fatal|failed|included|FAILED - RETRYING|TASK|PLAY|RUNNING HANDLER|\.\.\.)[: \[]")


def clean(lines: list[str]) -> list[str]:
    return [BOX.sub("", ANSI.sub("", line.rstrip("\n"))).rstrip() for line in lines]


def _task_name(lines: list[str], i: int) -> str:
    """The TASK header at line i, with its wrapped continuation lines, without the stars."""
    name = TASK.match(lines[i]).group(1)
    j = i + 1
    while "]" not in name and j < len(lines) and lines[j] and not lines[j].startswith(("ok", "changed")):
        name += " " + lines[j].strip()
        j += 1
    return name.split("]")[0]


def _message(lines: list[str], i: int) -> str:
    """A failed task's result: its first line and the wrapped ones after it, its msg if it has one."""
    text = lines[i].split("=>", 1)[-1] if "=>" in lines[i] else lines[i]
    j = i + 1
    while j < len(lines) and lines[j].strip() and not NEXT.match(lines[j].strip()) and j - i < 200:
        text += lines[j].strip()
        j += 1
    found = MSG.search(text)
    return found.group(1) if found else text.strip()


def recap(raw: list[str]) -> list[str]:
    lines = clean(raw)
    out: list[str] = []
    task = "?"
    for i, line in enumerate(lines):
        stripped = line.strip()
        if TASK.match(stripped):
            task = _task_name([ln.strip() for ln in lines], i)
            continue
        m = FAILED_TASK.match(stripped)
        if m and "...ignoring" not in " ".join(lines[i:i + 60]).split("TASK [")[0]:
            out.append(f"task [{task}] on {m.group(1)}: {_message([ln.strip() for ln in lines], i)}")
            continue
        m = PYTEST_FAILED.match(stripped)
        if m:
            out.append(f"test {m.group(2)}: {m.group(3) or m.group(1)}")
    seen: list[str] = []
    for entry in out:  # the same failure is printed twice by some callbacks: once is enough
        if entry not in seen:
            seen.append(entry)
    return [e if len(e) <= WIDTH else e[: WIDTH - 3] + "..." for e in seen][-MAX_LINES:]


def main() -> int:
    with open(sys.argv[1], encoding="utf-8", errors="replace") as fh:
        entries = recap(fh.readlines())
    if not entries:
        print("[recap] no failed task or test found in the output (see above)")
    for entry in entries:
        print(f"[recap] {entry}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
