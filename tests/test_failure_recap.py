"""scripts/with-recap.sh and failure-recap.py: a failed molecule run ends with what failed.

CI keeps only the tail of a run; the last CI failure of the HA scenario showed molecule's destroy
step and "Ansible return code was 2", not the task that failed. The recap repeats, last, each
failed task (its name, host and msg, unwrapped from molecule's box) and each failed test."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WRAPPER = ROOT / "scripts" / "with-recap.sh"

_spec = importlib.util.spec_from_file_location("failure_recap", ROOT / "scripts" / "failure-recap.py")
failure_recap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(failure_recap)

BOX = "  \x1b[2m│\x1b[0m "
# Shaped like molecule 26's output (ANSI colours, a box, long lines wrapped with an indent).
MOLECULE_LOG = [
    BOX + "TASK [postgresql : HA | wait until this node runs (a replica streams from",
    BOX + "  the primary)] ***",
    BOX + "Friday 04 December 2026  20:17:04 +0000 (0:00:00.551)       0:02:36.652",
    BOX + "\x1b[0;32mok: [pglog-ha-db1]\x1b[0m",
    BOX + "FAILED - RETRYING: [pglog-ha-db2]: HA | wait until this node runs (1 retries left).",
    BOX + '\x1b[0;31mfatal: [pglog-ha-db2]: FAILED! => {"attempts": 100, "changed": false,',
    BOX + '  "msg": "Status code was -1 and not [200]: Request failed: <urlopen error',
    BOX + '  [Errno 111] Connection refused>"}\x1b[0m',
    BOX + "",
    BOX + "TASK [pgbackrest : Probe the stanza] ***",
    BOX + '\x1b[0;31mfatal: [pglog-ha-gateway]: FAILED! => {"changed": false, "msg": "expected"}\x1b[0m',
    BOX + "\x1b[0;36m...ignoring\x1b[0m",
    BOX + "",
    "PLAY RECAP *********",
    "FAILED molecule/ha/tests/test_ha.py::test_switchover - AssertionError: leader never changed",
    "\x1b[31mERROR   \x1b[0m Ansible return code was 2, command was: ansible-playbook site.yml",
]


def test_recap_names_the_failed_task_its_host_and_its_message_unwrapped():
    entries = failure_recap.recap([line + "\n" for line in MOLECULE_LOG])
    assert entries[0] == (
        "task [postgresql : HA | wait until this node runs (a replica streams from the primary)] on pglog-ha-db2: "
        "Status code was -1 and not [200]: Request failed: <urlopen error[Errno 111] Connection refused>"
    )
    assert entries[1] == "test molecule/ha/tests/test_ha.py::test_switchover: AssertionError: leader never changed"
    assert len(entries) == 2, entries  # the ignored failure is not a failure


def test_recap_is_bounded_in_lines_and_width():
    log = []
    for n in range(40):
        log += [f"TASK [role : step {n}] ***", f'fatal: [h]: FAILED! => {{"msg": "{"x" * 1000}"}}', ""]
    entries = failure_recap.recap(log)
    assert len(entries) == failure_recap.MAX_LINES
    assert entries[-1].startswith("task [role : step 39] on h: xxx")
    assert all(len(e) <= failure_recap.WIDTH for e in entries)


def _wrapped(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(WRAPPER), "bash", "-c", script], capture_output=True, text=True, timeout=60)


def test_wrapper_keeps_the_exit_code_and_ends_with_the_recap():
    run = _wrapped('echo "TASK [x : boom] ***"; echo \'fatal: [db]: FAILED! => {"msg": "it broke"}\'; '
                   'echo "destroy step"; exit 3')
    assert run.returncode == 3
    lines = run.stdout.splitlines()
    assert "destroy step" in lines  # the output passes through
    assert lines[-1] == "[recap] task [x : boom] on db: it broke"


def test_wrapper_is_silent_when_the_command_succeeds():
    run = _wrapped('echo "fatal: [db]: FAILED! => {}"; echo "...ignoring"; exit 0')
    assert run.returncode == 0
    assert "[recap]" not in run.stdout
