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


def load_avg():
    return [round(x, 2) for x in os.getloadavg()]


def _stat(pid):
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def cluster_cpu_s(cluster):
    """CPU seconds the PostgreSQL cluster has used so far: the postmaster with its reaped children
    (exited backends) plus every live child. CPU time, unlike wall time, hardly moves with other
    load on the machine, so it is the figure to compare when the host is busy."""
    with open(os.path.join(cluster.data, "postmaster.pid")) as fh:
        postmaster = int(fh.readline())
    tick = os.sysconf("SC_CLK_TCK")
    f = _stat(postmaster)
    total = sum(int(x) for x in f[11:15])  # utime stime cutime cstime
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                f = _stat(name)
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(f[1]) == postmaster:
                total += int(f[11]) + int(f[12])
    return total / tick
