"""`ansible-playbook site.yml -i <bed inventory> --check --diff` from the repository root, on
the converged bed (exactly what a user types): nothing would change, nothing fails.

Runs right after idempotence (file order), before tests that deploy a second release.
"""

from bedlib import assert_check_mode_changes_nothing


def test_check_mode_on_a_converged_bed_changes_nothing():
    assert_check_mode_changes_nothing()
