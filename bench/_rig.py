"""Shared set-up of the benchmarks: the same throwaway PostgreSQL (SCRAM + TLS) and proxy rig
as the tests (tests/pgcluster.py, tests/proxyrig.py). Run with the dev venv's python, where
`make venvs` installs the logging package editable."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the test rigs, not the package

from pgcluster import OWNER, OWNER_PW, WRITER, new_cluster  # noqa: E402


def migrated_cluster():
    from litellm_pglog.config import Settings
    from litellm_pglog.engine import make_engine
    from litellm_pglog.schema import migrate

    cluster = new_cluster()
    engine = make_engine(Settings.from_env(cluster.env(OWNER, OWNER_PW)), log_connect=False)
    migrate(engine, WRITER)
    engine.dispose()
    return cluster


def percentile(values, q):
    s = sorted(values)
    if not s:
        return None
    k = min(len(s) - 1, max(0, int(round(q / 100.0 * (len(s) - 1)))))
    return s[k]
