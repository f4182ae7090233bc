"""`ansible-playbook site.yml -i <bed inventory> --check --diff` from the repository root, on
the converged bed (exactly what a user types): nothing would change, nothing fails.

Runs right after idempotence (file order), before tests that deploy a second release.
"""

from bedlib import hosts_in, play_recap, run_playbook


def test_check_mode_on_a_converged_bed_changes_nothing():
    rc, out = run_playbook("site.yml", "--check", "--diff")
    assert rc == 0, f"--check --diff failed:\n{out[-4000:]}"
    for name in hosts_in("all"):
        counts = play_recap(out, name)
        assert counts["failed"] == 0 and counts["unreachable"] == 0, (name, counts)
        assert counts["changed"] == 0, f"{name}: --check reports {counts['changed']} change(s):\n{out[-4000:]}"
