"""`litellm-pglog`: migrate, status, replay, evidence, connect-check, report. Connection from the
PGLOG_* environment.

Exit codes: 0 ok, 1 the command ran and found a problem (e.g. schema mismatch in status),
2 usage/configuration error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import glob
import json
import os
import sys
from typing import Any, Sequence

from sqlalchemy import text

from . import evidence as ev
from . import records
from .config import ConfigError, Settings


def _json_default(o: Any) -> Any:
    if isinstance(o, (dt.datetime, dt.date)):
        return o.isoformat()
    if isinstance(o, decimal.Decimal):
        return float(o)
    return str(o)


def _dump(obj: Any) -> None:
    print(json.dumps(obj, default=_json_default, sort_keys=True))


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ", timespec="milliseconds")
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, decimal.Decimal):
        return format(v.normalize(), "f")
    return str(v)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """psql-like aligned table."""
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = lambda vals: " " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [line(list(columns)), "-" + "-+-".join("-" * w for w in widths) + "-"]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def _engine(settings: Settings):  # noqa: ANN202
    from .engine import make_engine

    return make_engine(settings, log_connect=False)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from .dberrors import is_read_only
    from .schema import migrate, pending

    engine = _engine(settings)
    try:
        _dump(pending(engine) if args.pending else migrate(engine, args.grant_to))
    except Exception as exc:
        if not is_read_only(exc):
            raise
        # refused at its first write, in a transaction that is rolled back: nothing half-done
        print(f"litellm-pglog migrate: the database at {','.join(settings.db_hosts)} is read-only (a standby, or a "
              "primary demoted by a switchover): migrations run on the primary. List every node in "
              "PGLOG_DB_HOST (with target_session_attrs=read-write, the default for several hosts) or "
              "point it at the primary.", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from .schema import code_head, db_revision
    from .spool import Spool

    out: dict[str, Any] = {"code_revision": code_head()}
    try:
        engine = _engine(settings)
        with engine.connect() as conn:
            out["db_revision"] = db_revision(conn)
        engine.dispose()
    except Exception as exc:  # status must report, not crash, when the DB is away
        out["db_revision"] = None
        out["db_error"] = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    spool = Spool(settings.spool_dir, settings.spool_max_mb)
    out["spool_segments"] = len(spool.segments())
    out["spool_bytes"] = spool.size_bytes()
    out["rejected_records"] = spool.rejected_count()
    stats = {}
    for path in sorted(glob.glob(os.path.join(settings.state_dir, "stats-*.json"))):
        try:
            with open(path, encoding="utf-8") as fh:
                stats[os.path.basename(path)] = json.load(fh)
        except (OSError, ValueError):
            continue
    out["stats"] = stats
    out["in_sync"] = out["db_revision"] == out["code_revision"]
    if args.json:
        _dump(out)
    else:
        for k in ("code_revision", "db_revision", "in_sync", "spool_segments", "spool_bytes", "rejected_records"):
            print(f"{k}: {out[k]}")
        if "db_error" in out:
            print(f"db_error: {out['db_error']}")
        for name, s in stats.items():
            print(f"{name}: online={s.get('online')} counters={json.dumps(s.get('counters'), sort_keys=True)}"
                  f" pool={json.dumps(s.get('pool'), sort_keys=True)}")
    return 0 if out["in_sync"] else 1


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from .writer import Writer

    writer = Writer(settings)
    writer.start()  # replays the spool (all pids) in its thread, then waits for records
    writer.stop(timeout=settings.drain_timeout_s)
    _dump({"replayed": writer.counters["replayed"], "duplicates": writer.counters["duplicates"],
           "failed": writer.counters["failed"], "spool_segments_left": len(writer.spool.segments())})
    return 0 if not writer.spool.segments() else 1


def _key_from_stdin() -> str:
    """The key on stdin's first line (never an argument: a command line is visible to every
    user of the host and lands in the journal)."""
    key = sys.stdin.readline().strip()
    if not key:
        raise ValueError("--key-from-stdin: no key on stdin")
    return key


def cmd_evidence(args: argparse.Namespace, settings: Settings) -> int:
    key_hash = records.stored_key_hash(_key_from_stdin()) if args.key_from_stdin else None
    engine = _engine(settings)
    try:
        with engine.connect() as conn:
            conn.execute(text("SET TRANSACTION READ ONLY"))
            if args.what == "requests-head":
                res = ev.requests_head(conn, args.tag, args.limit, key_hash)
            elif args.what == "responses-head":
                res = ev.responses_head(conn, args.tag, args.limit, key_hash)
            else:
                res = ev.join_check(conn, args.tag, args.expected, key_hash)
    finally:
        engine.dispose()
    if args.json:
        if "rows" in res:
            res["rows"] = [dict(zip(res["columns"], r)) for r in res["rows"]]
        _dump(res)
        return 0
    scope = f"tag {args.tag}"
    if key_hash:
        scope += (f", made with the key whose api_key_hash starts {res['key_hash12']}"
                  f" ({res['other_key_rows']} rows of the tag made with other keys are not counted)")
    if args.what == "join-check":
        print(f"join check for {scope}")
        print(table(["metric", "value"], [(k, v) for k, v in res.items() if k != "tag"]))
    else:
        print(f"{args.what} for {scope} (first {args.limit} rows by id)")
        print(table(res["columns"], res["rows"]))
        print(f"count: {res['count']}")
        if "totals" in res:
            print(table(list(res["totals"].keys()), [tuple(res["totals"].values())]))
        if "by_status" in res:
            print(table(["status", "responses", "total_tokens", "cost_usd"],
                        [(s, v["responses"], v["total_tokens"], v["cost_usd"]) for s, v in res["by_status"].items()]))
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from . import report

    since = report.parse_since(args.since)
    engine = _engine(settings)
    try:
        with engine.begin() as conn:
            state = report.refresh(conn, args.lag) if not args.no_refresh else None
            columns, rows = report.usage(conn, since, args.by)
    finally:
        engine.dispose()
    if args.format == "json":
        _dump({"since": args.since, "by": args.by, "rollup": state,
               "rows": [dict(zip(columns, r)) for r in rows]})
    elif args.format == "csv":
        import csv

        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(columns)
        w.writerows([[_cell(v) for v in r] for r in rows])
    else:
        through = f", rollup through {_cell(state['logged_through'])}" if state else ""
        print(f"usage over the last {args.since} by {args.by}{through}")
        print(table(columns, rows))
    return 0


def cmd_connect_check(args: argparse.Namespace, settings: Settings) -> int:
    """One new connection, described as the package's `event=connect` line describes its pool's:
    how the server authenticates these credentials from this host right now."""
    from .engine import describe_new_connection, masked_dsn

    try:
        out: dict[str, Any] = {"connected": True, **describe_new_connection(settings)}
    except Exception as exc:  # report, do not crash: the verdict judges a failed connection
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        out = {"connected": False, "error": f"{exc.__class__.__name__}: {first}"}
    out["dsn"] = masked_dsn(settings)
    _dump(out)
    return 0 if out["connected"] else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="litellm-pglog", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("migrate", help="Alembic upgrade to head (as the schema owner), grants")
    m.add_argument("--grant-to", metavar="ROLE", help="role to grant SELECT, INSERT and sequence USAGE")
    m.add_argument("--pending", action="store_true",
                   help="change nothing; print (JSON) whether the database is behind this code's head")
    s = sub.add_parser("status", help="revision in DB vs code, spool depth, counters")
    s.add_argument("--json", action="store_true")
    sub.add_parser("replay", help="replay spooled batches into the database")
    e = sub.add_parser("evidence", help="evidence queries for a tagged run")
    e.add_argument("what", choices=("requests-head", "responses-head", "join-check"))
    e.add_argument("--tag", required=True)
    e.add_argument("--expected", type=int, help="number of calls the run made (join-check)")
    e.add_argument("--limit", type=int, default=20)
    e.add_argument("--json", action="store_true")
    e.add_argument("--key-from-stdin", action="store_true",
                   help="count only rows made with the key on stdin's first line (matched by its stored hash)")
    sub.add_parser("connect-check", help="open one new connection; print (JSON) how the server authenticated it")
    r = sub.add_parser("report", help="usage from the hourly rollup (refreshed first): calls, tokens, cost, "
                                      "latency and time-to-first-token percentiles")
    r.add_argument("--since", default="7d", help="window ending now: 90m, 24h, 7d, 2w (default 7d)")
    r.add_argument("--by", default="model", choices=("key", "model", "user", "status", "day", "hour"))
    r.add_argument("--format", default="table", choices=("table", "csv", "json"))
    r.add_argument("--lag", type=float, default=60.0,
                   help="seconds of the newest rows left out of the refresh (in-flight inserts; default 60)")
    r.add_argument("--no-refresh", action="store_true", help="read the rollup as it is")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"litellm-pglog: configuration error: {exc}", file=sys.stderr)
        return 2
    handler = {"migrate": cmd_migrate, "status": cmd_status, "replay": cmd_replay, "evidence": cmd_evidence,
               "connect-check": cmd_connect_check, "report": cmd_report}
    try:
        return handler[args.cmd](args, settings)
    except ValueError as exc:
        print(f"litellm-pglog: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # SchemaMismatch from replay
        print(f"litellm-pglog: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
