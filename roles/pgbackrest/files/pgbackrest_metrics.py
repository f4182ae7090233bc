#!/usr/bin/python3
"""pgBackRest state as Prometheus text for node_exporter's textfile collector (stdlib only).

    pgbackrest_metrics.py --stanza=S --dir=DIR [--check-result] [--user=postgres]

Run by the repository host's units after every backup and check (ExecStopPost=+, as
root so that it can write DIR whoever owns it; the `pgbackrest info` call itself runs as
--user, so no file of the repository or its logs is ever created as root). Writes, each
atomically (temporary file + rename in DIR):

  DIR/pgbackrest.prom        from `pgbackrest --output=json info`, on every run
  DIR/pgbackrest_check.prom  with --check-result (the check unit): the result systemd
                             hands to ExecStopPost ($SERVICE_RESULT, $EXIT_STATUS)

Metrics (label stanza; timestamps are Unix seconds, so an alert computes the age with
time() - x and a stale file cannot look fresh):

  pgbackrest_info_success                       1 when `info` answered and parsed
  pgbackrest_stanza_status_code                 pgBackRest's status (0 ok, 2 no valid backup, 99 other)
  pgbackrest_backup_running                     1 while a backup/expire holds the lock
  pgbackrest_backups{type}                      valid backups in the repository, per type
  pgbackrest_backup_last_completion_timestamp_seconds{type}
                                                end of the newest valid backup that serves
                                                a schedule of this type (a full also counts
                                                as diff and incr, a diff as incr)
  pgbackrest_backup_last_duration_seconds       of the newest valid backup
  pgbackrest_backup_last_repo_size_bytes        its size in the repository (compressed, encrypted)
  pgbackrest_backup_last_database_size_bytes    the database size it copied
  pgbackrest_metrics_last_run_timestamp_seconds when this file was written
  pgbackrest_check_success                      1 when the last `pgbackrest check` passed
  pgbackrest_check_last_run_timestamp_seconds   when it ran

Exit status 0 whenever the files were written (a failed `info` is a metric, not an error).
"""
from __future__ import annotations

import argparse
import json
import os
import pwd
import subprocess
import sys
import tempfile
import time
from typing import Any

INFO_TIMEOUT_S = 120
# the types a schedule can ask for, and the backup types that satisfy each
SERVES = {"full": ("full",), "diff": ("full", "diff"), "incr": ("full", "diff", "incr")}


def run_info(stanza: str, user: str) -> list[dict[str, Any]] | None:
    """`pgbackrest info` as `user` (never as root: it would leave root-owned logs and
    locks behind); None when it fails or prints no JSON."""
    pw = pwd.getpwnam(user)
    cmd = ["pgbackrest", f"--stanza={stanza}", "--output=json", "--log-level-console=off",
           "--log-level-stderr=error", "--log-level-file=off", "info"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=INFO_TIMEOUT_S, check=False,
                              user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                              env={"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir}, cwd="/")
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    try:
        data = json.loads(done.stdout)
    except ValueError:
        return None
    return data if isinstance(data, list) else None


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def info_metrics(stanza: str, info: list[dict[str, Any]] | None, now: float) -> list[str]:
    """The lines of pgbackrest.prom for one stanza's `info` output (None: info failed)."""
    s = f'stanza="{_label(stanza)}"'
    out = [
        "# HELP pgbackrest_info_success Whether pgbackrest info answered (1) or not (0).",
        "# TYPE pgbackrest_info_success gauge",
        f"pgbackrest_info_success{{{s}}} {0 if info is None else 1}",
    ]
    entry = next((e for e in info or [] if isinstance(e, dict) and e.get("name") == stanza), None)
    status = (entry or {}).get("status") or {}
    out += [
        "# HELP pgbackrest_stanza_status_code pgBackRest's stanza status (0 ok, 1 missing, 2 no valid backup, 99 other).",
        "# TYPE pgbackrest_stanza_status_code gauge",
        f"pgbackrest_stanza_status_code{{{s}}} {int(status.get('code', 99))}",
        "# HELP pgbackrest_backup_running Whether a backup or expire holds the stanza's lock.",
        "# TYPE pgbackrest_backup_running gauge",
        f"pgbackrest_backup_running{{{s}}} {int(bool(((status.get('lock') or {}).get('backup') or {}).get('held')))}",
    ]
    backups = [b for b in (entry or {}).get("backup") or []
               if isinstance(b, dict) and not b.get("error") and (b.get("timestamp") or {}).get("stop")]
    out += ["# HELP pgbackrest_backups Valid backups in the repository.", "# TYPE pgbackrest_backups gauge"]
    for kind in ("full", "diff", "incr"):
        out.append(f'pgbackrest_backups{{{s},type="{kind}"}} {sum(1 for b in backups if b.get("type") == kind)}')
    out += ["# HELP pgbackrest_backup_last_completion_timestamp_seconds End of the newest valid backup serving"
            " a schedule of this type (a full serves diff and incr too).",
            "# TYPE pgbackrest_backup_last_completion_timestamp_seconds gauge"]
    for kind, serving in SERVES.items():
        stops = [b["timestamp"]["stop"] for b in backups if b.get("type") in serving]
        if stops:
            out.append(f'pgbackrest_backup_last_completion_timestamp_seconds{{{s},type="{kind}"}} {max(stops)}')
    if backups:
        last = max(backups, key=lambda b: b["timestamp"]["stop"])
        info_part = last.get("info") or {}
        repo = info_part.get("repository") or {}
        out += [
            "# HELP pgbackrest_backup_last_duration_seconds Duration of the newest valid backup.",
            "# TYPE pgbackrest_backup_last_duration_seconds gauge",
            f"pgbackrest_backup_last_duration_seconds{{{s},type=\"{_label(str(last.get('type')))}\"}} "
            f"{last['timestamp']['stop'] - last['timestamp'].get('start', last['timestamp']['stop'])}",
            "# HELP pgbackrest_backup_last_repo_size_bytes Repository bytes of the newest valid backup.",
            "# TYPE pgbackrest_backup_last_repo_size_bytes gauge",
            f"pgbackrest_backup_last_repo_size_bytes{{{s}}} {int(repo.get('delta', repo.get('size', 0)) or 0)}",
            "# HELP pgbackrest_backup_last_database_size_bytes Database bytes the newest valid backup covers.",
            "# TYPE pgbackrest_backup_last_database_size_bytes gauge",
            f"pgbackrest_backup_last_database_size_bytes{{{s}}} {int(info_part.get('size', 0) or 0)}",
        ]
    out += ["# HELP pgbackrest_metrics_last_run_timestamp_seconds When this file was written.",
            "# TYPE pgbackrest_metrics_last_run_timestamp_seconds gauge",
            f"pgbackrest_metrics_last_run_timestamp_seconds{{{s}}} {now:.0f}"]
    return out


def check_metrics(stanza: str, service_result: str | None, exit_status: str | None, now: float) -> list[str]:
    """The lines of pgbackrest_check.prom from what systemd passes to ExecStopPost."""
    s = f'stanza="{_label(stanza)}"'
    ok = service_result == "success" and exit_status in (None, "", "0")
    return [
        "# HELP pgbackrest_check_success Whether the last pgbackrest check (archiving end to end) passed.",
        "# TYPE pgbackrest_check_success gauge",
        f"pgbackrest_check_success{{{s}}} {int(ok)}",
        "# HELP pgbackrest_check_last_run_timestamp_seconds When the last pgbackrest check ran.",
        "# TYPE pgbackrest_check_last_run_timestamp_seconds gauge",
        f"pgbackrest_check_last_run_timestamp_seconds{{{s}}} {now:.0f}",
    ]


def write_atomically(directory: str, name: str, lines: list[str]) -> None:
    """node_exporter must never read half a file: write a temporary file beside the
    target, then rename it over the target (atomic on one file system)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stanza", required=True)
    ap.add_argument("--dir", required=True, help="node_exporter's textfile collector directory")
    ap.add_argument("--user", default="postgres", help="who runs `pgbackrest info`")
    ap.add_argument("--check-result", action="store_true",
                    help="also write pgbackrest_check.prom from $SERVICE_RESULT/$EXIT_STATUS")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.dir):
        print(f"pgbackrest_metrics: {args.dir} is not a directory", file=sys.stderr)
        return 2
    now = time.time()
    if args.check_result:
        write_atomically(args.dir, "pgbackrest_check.prom",
                         check_metrics(args.stanza, os.environ.get("SERVICE_RESULT"),
                                       os.environ.get("EXIT_STATUS"), now))
    write_atomically(args.dir, "pgbackrest.prom", info_metrics(args.stanza, run_info(args.stanza, args.user), now))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
