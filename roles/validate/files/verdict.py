#!/usr/bin/env python3
"""Computes the validation verdict from the evidence files of one run (stdlib only).

    verdict.py --run-dir DIR [--secrets-on-stdin]

Reads only files of DIR (so the verdict can be recomputed, and unit-tested,
from a run directory alone) and writes DIR/summary.json and DIR/SUMMARY.md.
Every PASS below is computed from a figure found in a file; a missing or
unreadable file makes its criteria FAIL, never PASS. Exit status: 0 when
the summary was written (whatever the verdict), 2 on bad arguments.

Inputs (written by validate.yml; names and line format from contract.json):
  run.json                the run's manifest: run id, tag, expected calls, the logging
                          delay bound, and the unit each host group must run (as the
                          play derived them from the roles' variables)
  service_status.txt      `### host=H unit=U` sections with `systemctl show` lines
  gateway_db_connect.log  per gateway: `### host=H unit=U` with the pool's `event=connect {json}`
                          lines since the unit's start (TLS, SCRAM, client_addr as the server saw
                          it), and `### host=H check=connect-check` with one `event=connect_check`
                          line: a fresh connection opened by the play with the writer's credentials
  chat_call.json          chat_call.py output: {"exchange": ..., "calls": [...]}, with each call's
                          scheme, TLS version and certificate verification
  requests_head.txt, responses_head.txt, join_check.txt   litellm-pglog evidence output
  requests_head.json, responses_head.json, join_check.json  the same with --json (what is judged):
                          the run = rows of the run's tag made with the play's own key
  db_auth_check.json      pg_hba rules, the writer's verifier type, TLS of the writer's backends
  pgbackrest_info.json    pgbackrest info (JSON) and check, the backup timers and their next
                          elapses, pg_stat_archiver of the first database host
  metrics_snapshot.txt    read on the monitoring host: `### source=gateway host=H url=U status=S`
                          sections with each gateway's pglog_* metrics (Prometheus text format),
                          `### source=prometheus|alertmanager ...` sections with one JSON line per alert
Known secret values (to prove none is in the evidence) come on stdin as
{"secrets": [...]} (--secrets-on-stdin), never on the command line. The secret search runs
over every file of DIR, SUMMARY.md and summary.json included (after they are written).
"""
from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import re
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import contract  # beside this script (sys.path[0] when run as a script)

SCRAM = "scram-sha-256"


@dataclass
class Criterion:
    name: str
    title: str
    passed: bool | None  # None: informational, never makes the run fail
    figure: str
    source: str

    @property
    def result(self) -> str:
        return "INFO" if self.passed is None else ("PASS" if self.passed else "FAIL")


# ---------------------------------------------------------------- file readers

def read_text(run_dir: Path, name: str) -> str | None:
    path = run_dir / name
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def read_json(run_dir: Path, name: str) -> Any:
    text = read_text(run_dir, name)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


_SECTION = re.compile(r"^### (?P<attrs>.*)$")


def sections(text: str) -> list[tuple[dict[str, str], list[str]]]:
    """Splits `### key=value key=value` headed sections."""
    out: list[tuple[dict[str, str], list[str]]] = []
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            attrs = dict(kv.split("=", 1) for kv in m.group("attrs").split() if "=" in kv)
            out.append((attrs, []))
        elif out:
            out[-1][1].append(line)
    return out


def unit_states(text: str | None) -> list[dict[str, str]]:
    """One dict per (host, unit) section: its `systemctl show` properties."""
    if not text:
        return []
    states = []
    for attrs, lines in sections(text):
        props = dict(attrs)
        for line in lines:
            m = re.match(r"^(ActiveState|SubState|MainPID|ActiveEnterTimestamp|NRestarts|"
                         r"MemoryCurrent|CPUUsageNSec|InvocationID)=(.*)$", line)
            if m and m.group(1) not in props:
                props[m.group(1)] = m.group(2).strip()
        states.append(props)
    return states


def event_lines(text: str | None, event: str) -> list[tuple[str, dict[str, Any]]]:
    """(host, payload) of every `event=<event> {json}` line."""
    if not text:
        return []
    out = []
    for attrs, lines in sections(text):
        for line in lines:
            parsed = contract.parse_event(line)
            if parsed and parsed[0] == event:
                out.append((attrs.get("host", "?"), parsed[1]))
    return out


def as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------- criteria

def check_units(run_dir: Path, group_unit: str, name: str, title: str) -> Criterion:
    states = [s for s in unit_states(read_text(run_dir, "service_status.txt"))
              if s.get("unit") == group_unit]
    if not states:
        return Criterion(name, title, False, f"no {group_unit} section found", "service_status.txt")
    bad = [s for s in states if (s.get("ActiveState"), s.get("SubState")) != ("active", "running")]
    parts = [f"{s.get('host', '?')}: {s.get('ActiveState', '?')}/{s.get('SubState', '?')}"
             f" NRestarts={s.get('NRestarts', '?')}" for s in states]
    return Criterion(name, title, not bad, f"{len(states) - len(bad)}/{len(states)} active/running ("
                     + "; ".join(parts) + ")", "service_status.txt")


def _ssl_of(c: dict[str, Any]) -> dict[str, Any]:
    return c.get("ssl") if isinstance(c.get("ssl"), dict) else {}


def _fresh(run_dir: Path, gateways: list[str]) -> dict[str, dict[str, Any] | None]:
    """Each gateway's fresh connection (connect-check), None where the file has none."""
    found = dict(event_lines(read_text(run_dir, "gateway_db_connect.log"), contract.FRESH_CONNECT_EVENT))
    return {h: found.get(h) for h in gateways}


def check_tls(run_dir: Path, m: Manifest) -> Criterion:
    title = ("Gateway's DB connections use TLS (the pool's connect lines since the unit's start, "
             "a fresh connection per gateway, pg_stat_ssl of the writer's live backends)")
    connects = event_lines(read_text(run_dir, "gateway_db_connect.log"), "connect")
    auth = read_json(run_dir, "db_auth_check.json") or {}
    problems, facts = [], []
    if not connects:
        problems.append("pool: no event=connect line since the unit's start")
    for host, c in connects:
        ssl = _ssl_of(c)
        # both sides must agree: the server's pg_stat_ssl row and libpq's ssl_in_use
        if ssl.get("server_ssl") is not True or ssl.get("client_ssl_in_use") is not True:
            problems.append(f"pool {host}: server_ssl={ssl.get('server_ssl')!r} "
                            f"client_ssl_in_use={ssl.get('client_ssl_in_use')!r}")
        else:
            facts.append(f"pool {host}: {ssl.get('version')} {ssl.get('cipher')} sslmode={ssl.get('sslmode')}")
    for host, f in _fresh(run_dir, m.gateway_hosts).items():
        if f is None:
            problems.append(f"fresh connection from {host}: none in the file")
        elif f.get("connected") is not True:
            problems.append(f"fresh connection from {host} failed: {f.get('error')}")
        else:
            ssl = _ssl_of(f)
            ok = ssl.get("server_ssl") is True and ssl.get("client_ssl_in_use") is True
            (facts if ok else problems).append(f"fresh connection from {host}: "
                                               + (f"{ssl.get('version')} {ssl.get('cipher')}" if ok else "no TLS"))
    backends = auth.get("writer_backends")
    if isinstance(backends, list):
        nossl = [b for b in backends if b.get("ssl") is not True]
        facts.append(f"pg_stat_ssl: {len(backends) - len(nossl)}/{len(backends)} writer backends on TLS")
        if nossl:
            problems.append(f"{len(nossl)} writer backend(s) without TLS")
        if not backends:
            # a running gateway keeps its pool's connections open: none means nothing to judge
            problems.append("pg_stat_ssl: no live writer connection to check")
    else:
        problems.append("db_auth_check.json: no writer_backends")
    return Criterion("db_tls", title, not problems, "; ".join(problems + facts),
                     "gateway_db_connect.log, db_auth_check.json")


def _rule_matches(rule: dict[str, Any], addr: str, ssl: bool, db: str, user: str) -> bool:
    rtype = rule.get("type")
    if rtype not in ("host", "hostssl", "hostnossl"):
        return False
    if (rtype == "hostssl" and not ssl) or (rtype == "hostnossl" and ssl):
        return False
    dbs, users = rule.get("database") or [], rule.get("user_name") or []
    if not ({"all", db} & set(dbs)) or not ({"all", user} & set(users)):
        return False
    raw = rule.get("address")
    if raw in (None, "all"):
        return True
    if raw in ("samehost", "samenet"):
        return False  # not evaluated here: treated as not matching
    try:
        mask = rule.get("netmask")
        net = ipaddress.ip_network(f"{raw}/{mask}" if mask else raw, strict=False)
        return ipaddress.ip_address(addr) in net
    except ValueError:
        return False


def hba_in_force(rules: list[dict[str, Any]], addr: str, ssl: bool, db: str, user: str) -> dict | None:
    """The first pg_hba rule (in file order) that a connection would match:
    that rule's method is the one PostgreSQL applies."""
    for rule in sorted(rules, key=lambda r: r.get("rule_number") or r.get("line_number") or 0):
        if rule.get("error"):
            continue
        if _rule_matches(rule, addr, ssl, db, user):
            return rule
    return None


def _scram(method: Any) -> bool:
    # "scram-sha-256" (SYSTEM_USER) or "scram-sha-256-plus" (channel_binding=require)
    return str(method).lower().startswith(SCRAM)


def check_scram(run_dir: Path, m: Manifest) -> Criterion:
    """'Non-SCRAM auth', observably: PostgreSQL lets an md5 (or password/trust) hba rule
    authenticate a SCRAM-hashed role, so the role's hash alone proves nothing. Five parts, each
    named in the figure, each missing part a FAIL: (1) the first hba rule matching each gateway
    address for the writer over TLS says scram-sha-256 -- the addresses configured, those seen in
    pg_stat_activity and the client_addr the server reported on every connect line; (2) no rule
    lets the writer in without TLS; (3) the role's verifier is SCRAM; (4) a fresh connection from
    each gateway reports scram-sha-256 as the method the server used (SYSTEM_USER); (5) the pool's
    connect lines report SCRAM too."""
    title = ("Gateway authenticates with SCRAM-SHA-256 (pg_hba rule in force for every gateway address, "
             "no non-TLS rule, SCRAM verifier, a fresh connection per gateway, the pool's connect lines)")
    src = "db_auth_check.json, gateway_db_connect.log"
    auth = read_json(run_dir, "db_auth_check.json")
    if not isinstance(auth, dict):
        return Criterion("db_scram", title, False, "db_auth_check.json missing or unreadable", src)
    rules = auth.get("hba_rules") or []
    db, user = auth.get("database", ""), auth.get("writer_role", "")
    problems, facts = [], []
    connects = event_lines(read_text(run_dir, "gateway_db_connect.log"), "connect")
    fresh = _fresh(run_dir, m.gateway_hosts)
    # (1)+(2) every address the gateways have or were seen with
    seen = [c.get("client_addr") for _, c in connects] + [f.get("client_addr") for f in fresh.values() if f]
    addrs = list(dict.fromkeys([a for a in (auth.get("gateway_addresses") or []) + seen if a]))
    if not addrs:
        problems.append("no gateway address to evaluate pg_hba for")
    if not rules:
        problems.append("no pg_hba rules read")
    for addr in addrs:
        rule = hba_in_force(rules, addr, True, db, user)
        if rule is None:
            problems.append(f"{addr}: no hba rule admits the writer over TLS")
        else:
            method = rule.get("auth_method")
            where = f"hba for {addr}: {rule.get('type')} {method} (line {rule.get('line_number')})"
            (facts if method == SCRAM and rule.get("type") == "hostssl" else problems).append(where)
        plain = hba_in_force(rules, addr, False, db, user)
        if plain is not None and plain.get("auth_method") != "reject":
            problems.append(f"{addr}: non-TLS connections admitted by pg_hba line {plain.get('line_number')}"
                            f" ({plain.get('type')} {plain.get('auth_method')})")
    # (3)
    verifier = auth.get("writer_verifier")
    (facts if verifier == "SCRAM-SHA-256" else problems).append(f"verifier {verifier}")
    # (4)
    for host, f in fresh.items():
        if f is None:
            problems.append(f"fresh connection from {host}: none in the file")
        elif f.get("connected") is not True:
            problems.append(f"fresh connection from {host} failed: {f.get('error')}")
        else:
            a = f.get("auth") if isinstance(f.get("auth"), dict) else {}
            how = "SYSTEM_USER" if a.get("system_user") else f"channel_binding={a.get('channel_binding')}"
            (facts if _scram(a.get("method")) else problems).append(
                f"fresh connection from {host} ({f.get('client_addr')}): {a.get('method')} by {how}")
    # (5)
    if not connects:
        problems.append("pool: no event=connect line since the unit's start")
    for host, c in connects:
        a = c.get("auth") if isinstance(c.get("auth"), dict) else {}
        if not c.get("client_addr"):
            problems.append(f"pool {host}: connect line without client_addr")
        (facts if _scram(a.get("method")) else problems).append(
            f"pool {host} ({c.get('client_addr')}): {a.get('method')}")
    return Criterion("db_scram", title, not problems, "; ".join(problems + facts), src)


def _calls(run_dir: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    data = read_json(run_dir, "chat_call.json")
    calls = data.get("calls") if isinstance(data, dict) else None
    if not isinstance(calls, list):
        return None, None
    return data, [c for c in calls if isinstance(c, dict)]


def check_http(run_dir: Path, expected: int) -> Criterion:
    title = f"{expected} chat calls: HTTP 200 with tokens and cost"
    data, calls = _calls(run_dir)
    if not calls:
        return Criterion("http_chat", title, False, "chat_call.json missing or without calls", "chat_call.json")
    good = [c for c in calls if c.get("status") == 200 and (c.get("total_tokens") or 0) > 0
            and (as_float(c.get("response_cost")) or 0) > 0]
    statuses = sorted({str(c.get("status")) for c in calls})
    lat = [c["latency_ms"] for c in calls if isinstance(c.get("latency_ms"), (int, float))]
    ex = data.get("exchange") or {}
    usage = ex.get("usage") or {}
    figure = (f"{len(good)}/{len(calls)} OK (status {','.join(statuses)}); first call: "
              f"{usage.get('prompt_tokens')}+{usage.get('completion_tokens')}={usage.get('total_tokens')} tokens, "
              f"cost {ex.get('response_cost')} USD, {ex.get('latency_ms')} ms")
    if lat:
        figure += f"; latency p50 {statistics.median(lat):.1f} ms, max {max(lat):.1f} ms"
    return Criterion("http_chat", title, len(good) == expected == len(calls), figure, "chat_call.json")


TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")


def check_https(run_dir: Path, m: Manifest) -> Criterion:
    """Keys and prompts cross the network encrypted: every chat call went to an https URL, the
    handshake verified the gateway's certificate against the CA the play gave the client, and
    negotiated TLS 1.2 or 1.3. Plain HTTP chosen in the inventory (litellm_gateway_tls_enabled:
    false, e.g. behind a TLS-terminating proxy) is reported as INFO, never as a PASS."""
    title = "Chat calls over HTTPS: certificate verified, TLS 1.2 or newer"
    _, calls = _calls(run_dir)
    if not calls:
        return Criterion("gateway_https", title, False if m.gateway_https else None,
                         "chat_call.json missing or without calls", "chat_call.json")
    good = [c for c in calls if str(c.get("url", "")).startswith("https://") and c.get("cert_verified") is True
            and c.get("tls_version") in TLS_VERSIONS]
    kinds = sorted({f"{c.get('tls_version')} {c.get('tls_cipher')}" for c in good})
    figure = (f"{len(good)}/{len(calls)} calls over HTTPS with a verified certificate"
              + (f" ({'; '.join(kinds)})" if kinds else ""))
    bad = [c for c in calls if c not in good]
    if bad:
        c = bad[0]
        figure += (f"; e.g. {c.get('url')}: tls {c.get('tls_version')!r}, certificate verified "
                   f"{c.get('cert_verified')!r}")
    if not m.gateway_https:
        return Criterion("gateway_https", title, None,
                         "plain HTTP by configuration (litellm_gateway_tls_enabled: false): keys and prompts "
                         "cross the network unencrypted; " + figure, "chat_call.json, run.json")
    return Criterion("gateway_https", title, len(good) == len(calls), figure, "chat_call.json")


def _obj(run_dir: Path, name: str) -> dict[str, Any] | None:
    data = read_json(run_dir, name)
    return data if isinstance(data, dict) else None


def _call_ids(run_dir: Path) -> set[str]:
    _, calls = _calls(run_dir)
    return {c["call_id"] for c in calls or [] if c.get("call_id")}


def _scope(*outputs: dict[str, Any]) -> tuple[str | None, str]:
    """The key filter the CLI reports (the first 12 characters of the stored key hash) and a
    text naming the run: the tag alone is caller-chosen, so the evidence must be limited to
    the play's key; None when any output is unfiltered."""
    keys = {o.get("key_hash12") for o in outputs}
    if len(keys) != 1 or None in keys or "" in keys:
        return None, "rows of the tag from any key (the evidence is not limited to the play's key)"
    key12 = str(keys.pop())
    return key12, f"rows of the tag made with the play's key (api_key_hash {key12}…)"


def check_rows(run_dir: Path, expected: int) -> list[Criterion]:
    """Rows of the run, from `litellm-pglog evidence ... --key-from-stdin --json` (the CLI holds the
    SQL): the run's tag AND the play's own key, since any caller can send a tag."""
    j = _obj(run_dir, "join_check.json")
    req = _obj(run_dir, "requests_head.json")
    resp = _obj(run_dir, "responses_head.json")
    out = []

    title = f"{expected} request rows of the run (its tag, the play's key), one per call made"
    if j is None or req is None:
        out.append(Criterion("request_rows", title, False, "join_check.json or requests_head.json missing",
                             "requests_head.txt"))
    else:
        key12, what = _scope(j, req)
        n_req = j.get("request_rows")
        row_ids = {r.get("call_id") for r in req.get("rows") or [] if isinstance(r, dict)}
        calls = _call_ids(run_dir)
        # every call the client saw (x-litellm-call-id) must be among the rows, and vice versa
        ids_ok = (calls == row_ids) if calls else True
        figure = f"{n_req} {what} (expected {expected}); count by requests-head: {req.get('count')}"
        if calls:
            figure += f"; call ids of the client's calls found: {len(calls & row_ids)}/{len(calls)}"
        if key12 is not None:
            figure += f"; {j.get('other_key_rows')} rows of the tag made with other keys, not counted"
        out.append(Criterion("request_rows", title,
                             key12 is not None and n_req == expected and req.get("count") == expected and ids_ok,
                             figure, "requests_head.txt, join_check.txt"))

    title = f"{expected} response rows of the run, each status success with tokens > 0 and cost > 0"
    if j is None or resp is None:
        out.append(Criterion("response_rows", title, False, "join_check.json or responses_head.json missing",
                             "responses_head.txt"))
    else:
        key12, what = _scope(j, resp)
        rows = [r for r in resp.get("rows") or [] if isinstance(r, dict)]
        good = [r for r in rows if r.get("status") == "success" and (r.get("total_tokens") or 0) > 0
                and (as_float(r.get("cost_usd")) or 0) > 0]
        by_status = resp.get("by_status") if isinstance(resp.get("by_status"), dict) else {}
        statuses = ", ".join(f"{s} {v.get('responses')} ({v.get('total_tokens')} tokens, {v.get('cost_usd')} USD)"
                             for s, v in sorted(by_status.items()) if isinstance(v, dict)) or "none"
        figure = (f"{j.get('response_rows')} {what} (expected {expected}), {len(good)} success with tokens and "
                  f"cost; by status: {statuses}")
        out.append(Criterion("response_rows", title,
                             key12 is not None and j.get("response_rows") == expected == len(rows) == len(good),
                             figure, "responses_head.txt, join_check.txt"))

    title = "100% of the run's requests joined to exactly one response, 0 orphans both ways"
    if j is None:
        out.append(Criterion("join_integrity", title, False, "join_check.json missing", "join_check.txt"))
    else:
        key12, what = _scope(j)
        keys = ("requests_without_response", "responses_without_request", "requests_with_several_responses")
        integrity = as_float(j.get("integrity_pct"))
        ok = (key12 is not None and integrity == 100.0 and j.get("matched_pairs") == expected
              and all(j.get(k) == 0 for k in keys))
        # Call ids are caller-settable (x-litellm-call-id): calls sharing one each keep their own
        # pair, so a repeat is information, not a gap in the log.
        figure = (f"{what}: integrity {integrity}%, {j.get('matched_pairs')} matched pairs; "
                  + ", ".join(f"{k} {j.get(k)}" for k in keys)
                  + f"; duplicate_call_ids {j.get('duplicate_call_ids')} (information: call ids are caller-settable,"
                    " each call keeps its own pair)")
        out.append(Criterion("join_integrity", title, ok, figure, "join_check.txt"))
    return out


def check_delay(run_dir: Path, max_delay_ms: float) -> Criterion:
    title = f"Logging delay (row written - response end) below {max_delay_ms:g} ms"
    j = _obj(run_dir, "join_check.json") or {}
    delay = as_float(j.get("delay_max_ms"))
    if delay is None:
        return Criterion("logging_delay", title, False, "no delay_max_ms in the join check (no matched rows?)",
                         "join_check.txt")
    figure = f"max {delay:.1f} ms, p50 {j.get('delay_p50_ms')} ms, p99 {j.get('delay_p99_ms')} ms"
    return Criterion("logging_delay", title, delay < max_delay_ms, figure, "join_check.txt")


def check_pool(run_dir: Path) -> Criterion:
    title = "Connection pool reuse rate (reported, not judged)"
    stats = event_lines(read_text(run_dir, "gateway_db_connect.log"), "pool_stats")
    if not stats:
        return Criterion("pool_reuse", title, None, "no event=pool_stats line yet (periodic)",
                         "gateway_db_connect.log")
    parts = []
    for host, s in _last_per_host(stats):
        pool = s.get("pool") if isinstance(s.get("pool"), dict) else {}
        rate = as_float(pool.get("reuse_rate"))
        parts.append(f"{host} pid {s.get('pid')}: reuse {rate:.1%}" if rate is not None
                     else f"{host} pid {s.get('pid')}: no reuse_rate yet")
        parts[-1] += f" (checkouts {pool.get('checkouts')}, connects {pool.get('connects')})"
    return Criterion("pool_reuse", title, None, "; ".join(parts), "gateway_db_connect.log")


def _last_per_host(stats: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The newest line of each worker process (host, pid)."""
    last: dict[tuple[str, Any], tuple[str, dict]] = {}
    for host, s in stats:
        last[(host, s.get("pid"))] = (host, s)
    return list(last.values())


# ------------------------------------------------------------------- secrets

SECRETS_TITLE = "No secret value in any file of the run directory (SUMMARY.md and summary.json included)"


def find_secrets(run_dir: Path, secrets: list[str], skip: tuple[str, ...] = ()) -> tuple[list[Path], list[str]]:
    """(files searched, names of files holding a secret): every file under run_dir, at any depth,
    except the names in `skip`."""
    files = sorted(p for p in run_dir.rglob("*") if p.is_file() and p.name not in skip)
    hits = []
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        if any(s in text for s in secrets):
            hits.append(str(path.relative_to(run_dir)))
    return files, hits


def check_secrets(run_dir: Path, secrets: list[str]) -> Criterion:
    """Every file but the verdict's own two (about to be written; write_summary() searches them as
    written and corrects this criterion if they hold a secret)."""
    if not secrets:
        return Criterion("no_secrets", SECRETS_TITLE, False, "no secret values given to check against",
                         "every file")
    files, hits = find_secrets(run_dir, secrets, contract.VERDICT_FILES)
    figure = (f"{len(secrets)} secret values searched in {len(files)} evidence files"
              + (f": found in {', '.join(hits)}" if hits else ": none found"))
    return Criterion("no_secrets", SECRETS_TITLE, not hits, figure, "every file")


_SPAN_UNITS = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1, "sec": 1, "second": 1, "seconds": 1,
               "min": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
               "d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800, "weeks": 604800}


def timespan_s(text: str | None) -> float | None:
    """A systemd time span as `systemctl show` prints it ("10min", "1h 30min", "0") in seconds."""
    if text is None:
        return None
    text = text.strip()
    if text in ("0", ""):
        return 0.0
    total, pos = 0.0, 0
    for m in re.finditer(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]+)", text):
        if m.start() != pos or m.group(2) not in _SPAN_UNITS:
            return None
        total += float(m.group(1)) * _SPAN_UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) else None


_ELAPSE = re.compile(r"^\s*(?:Next elapse|Iteration #\d+):\s+\w+ (\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) UTC\s*$", re.M)


def elapses(analysis: str | None) -> list[float]:
    """Epoch seconds of the elapses `TZ=UTC systemd-analyze calendar --iterations=N` listed."""
    out = []
    for m in _ELAPSE.finditer(analysis or ""):
        stamp = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
        out.append(stamp.timestamp())
    return sorted(set(out))


def longest_gap(times: list[float]) -> float | None:
    return max((b - a for a, b in zip(times, times[1:])), default=None)


def _age(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def check_backup(run_dir: Path) -> Criterion:
    """The backups serve point-in-time recovery: pgBackRest reads its repository (status 0),
    the newest valid backup is younger than the backup timers' longest gap allows, the newest
    full younger than the full timer's (each plus the randomized delay and the grace a backup
    may take), the timers are active, and archiving works: `pgbackrest check` passed (a WAL
    switch reached the repository) and PostgreSQL's archiver has not failed since its last
    success."""
    title = "Last backup younger than its schedule allows, archive working (pgBackRest)"
    src = "pgbackrest_info.json"
    data = _obj(run_dir, src)
    if data is None:
        return Criterion("backup_pitr", title, False, f"{src} missing or unreadable", src)
    if data.get("error"):
        return Criterion("backup_pitr", title, False, str(data["error"]), src)
    problems, facts = [], []
    stanza_name = data.get("stanza")
    info = data.get("info") if isinstance(data.get("info"), list) else []
    stanza = next((e for e in info if isinstance(e, dict) and e.get("name") == stanza_name), None)
    now = as_float(data.get("collected_at"))
    grace = as_float(data.get("grace_s")) or 0.0
    if stanza is None:
        problems.append(f"pgbackrest info gave no stanza {stanza_name!r} (exit {data.get('info_rc')}:"
                        f" {str(data.get('info_stderr'))[:200]})")
        stanza = {}
    status = stanza.get("status") or {}
    if stanza and status.get("code") != 0:
        problems.append(f"stanza status {status.get('code')}: {status.get('message')}")
    backups = [b for b in stanza.get("backup") or []
               if isinstance(b, dict) and not b.get("error") and as_float((b.get("timestamp") or {}).get("stop"))]
    if stanza and not backups:
        problems.append("no valid backup in the repository")
    if now is None:
        problems.append("no collected_at: the ages cannot be computed")

    # the schedules: the longest gap between consecutive elapses, per type and all together
    timers = [t for t in data.get("timers") or [] if isinstance(t, dict)]
    runs: dict[str, list[float]] = {}
    delay = 0.0
    for t in timers:
        show = t.get("show") or {}
        kind, unit = t.get("type"), t.get("unit")
        if show.get("ActiveState") != "active" or show.get("UnitFileState") != "enabled":
            problems.append(f"timer {unit}: {show.get('ActiveState')}/{show.get('UnitFileState')}")
        when = elapses(t.get("calendar_analysis"))
        if len(when) < 2:
            problems.append(f"timer {unit}: no schedule read (calendar {show.get('TimersCalendar')!r})")
            continue
        runs[str(kind)] = when
        delay = max(delay, timespan_s(show.get("RandomizedDelayUSec")) or 0.0)
    if "full" not in runs:
        problems.append("no full backup timer")
    if runs and now is not None and backups:
        # all timers together, up to where every timer's list still reaches
        horizon = min(max(w) for w in runs.values())
        union = sorted({x for w in runs.values() for x in w if x <= horizon})
        allowed_any = (longest_gap(union) or longest_gap(runs.get("full", []) or [0, 0]) or 0) + delay + grace
        newest = max(backups, key=lambda b: b["timestamp"]["stop"])
        age_any = now - float(newest["timestamp"]["stop"])
        line = (f"newest backup {newest.get('label')} ({newest.get('type')}) {_age(age_any)} old,"
                f" allowed {_age(allowed_any)}")
        (facts if age_any <= allowed_any else problems).append(line)
        if "full" in runs:
            fulls = [b for b in backups if b.get("type") == "full"]
            allowed_full = (longest_gap(runs["full"]) or 0) + delay + grace
            if not fulls:
                problems.append("no valid full backup")
            else:
                age_full = now - max(float(b["timestamp"]["stop"]) for b in fulls)
                line = f"newest full {_age(age_full)} old, allowed {_age(allowed_full)}"
                (facts if age_full <= allowed_full else problems).append(line)

    # archiving
    check = data.get("check") or {}
    if check.get("rc") != 0:
        out = str(check.get("output") or "").strip().splitlines()
        problems.append(f"pgbackrest check failed (exit {check.get('rc')}): {(out or ['no output'])[-1][:300]}")
    else:
        facts.append("pgbackrest check passed (a WAL switch reached the repository)")
    arch = data.get("archiver") if isinstance(data.get("archiver"), dict) else {}
    if not arch:
        problems.append(f"pg_stat_archiver not read: {data.get('archiver_error') or 'no data'}")
    else:
        if arch.get("archive_mode") != "on":
            problems.append(f"archive_mode is {arch.get('archive_mode')!r}")
        failed_at, archived_at = as_float(arch.get("last_failed_epoch")), as_float(arch.get("last_archived_epoch"))
        if failed_at is not None and (archived_at is None or failed_at >= archived_at):
            problems.append(f"the archiver's last attempt failed ({arch.get('last_failed_wal')}; "
                            f"{arch.get('failed_count')} failures so far)")
        else:
            facts.append(f"archiver: {arch.get('archived_count')} archived, last {arch.get('last_archived_wal')},"
                         f" {arch.get('failed_count')} failed before the last success")
    return Criterion("backup_pitr", title, not problems, "; ".join(problems + facts), src)


# --------------------------------------------------------------- monitoring

METRICS_FILE = "metrics_snapshot.txt"
MONITORING_TITLE = "No firing alert, no record dropped or rejected (logging metrics, Prometheus, Alertmanager)"
_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{.*\})?\s+(?P<value>\S+)(?:\s+\d+)?\s*$")


def metric_sum(lines: list[str], name: str) -> float | None:
    """Sum of every sample of one metric (all label sets) in Prometheus text lines; None when
    the metric has no sample at all (it cannot be judged, which is not 0)."""
    values = [as_float(m.group("value")) for m in map(_SAMPLE.match, lines) if m and m.group("name") == name]
    values = [v for v in values if v is not None]
    return sum(values) if values else None


def check_monitoring(run_dir: Path, m: Manifest) -> Criterion:
    """FAIL on any firing alert (Prometheus) or active alert (Alertmanager), any record the logger
    dropped or the database rejected since the gateway's start, a source that was not read, or
    a gateway without its counters: every figure from metrics_snapshot.txt."""
    text = read_text(run_dir, METRICS_FILE)
    if text is None:
        return Criterion("monitoring_clean", MONITORING_TITLE, False, f"{METRICS_FILE} missing", METRICS_FILE)
    secs = sections(text)
    if not secs or all(a.get("source") == "monitoring" for a, _ in secs):  # nothing was read
        why = " ".join(ln for _, lines in secs for ln in lines) or "no monitoring data"
        return Criterion("monitoring_clean", MONITORING_TITLE, False, why, METRICS_FILE)
    problems: list[str] = []
    facts: list[str] = []
    gateways = {a.get("host"): (a, lines) for a, lines in secs if a.get("source") == "gateway"}
    for host in m.gateway_hosts:
        attrs, lines = gateways.get(host, ({}, []))
        if attrs.get("status") != "200":
            problems.append(f"{host}: metrics not read (status {attrs.get('status', 'none')})")
            continue
        counts = {k: metric_sum(lines, f"pglog_records_{k}_total") for k in ("dropped", "rejected", "written")}
        missing = [k for k, v in counts.items() if v is None]
        if missing:
            problems.append(f"{host}: no pglog_records_{'/'.join(missing)}_total sample")
            continue
        for k in ("dropped", "rejected"):
            if counts[k] > 0:
                problems.append(f"{host}: {counts[k]:.0f} records {k} since the gateway started")
        facts.append(f"{host}: {counts['written']:.0f} written, {counts['dropped']:.0f} dropped, "
                     f"{counts['rejected']:.0f} rejected")
    for source, firing_state in (("prometheus", "firing"), ("alertmanager", "active")):
        found = [(a, lines) for a, lines in secs if a.get("source") == source]
        if not found or found[0][0].get("status") != "200":
            problems.append(f"{source}: alerts not read" + (f" (status {found[0][0].get('status')})" if found else ""))
            continue
        alerts, unreadable = [], 0
        for line in (ln for ln in found[0][1] if ln.strip()):
            try:
                alerts.append(json.loads(line))
            except ValueError:
                unreadable += 1
        if unreadable:
            problems.append(f"{source}: {unreadable} unreadable line(s)")
        firing = sorted({str(a.get("alertname")) for a in alerts if isinstance(a, dict) and a.get("state") == firing_state})
        if firing:
            problems.append(f"{source}: {firing_state} {', '.join(firing)}")
        else:
            pending = sum(1 for a in alerts if isinstance(a, dict) and a.get("state") == "pending")
            facts.append(f"{source}: none {firing_state}" + (f" ({pending} pending)" if pending else ""))
    return Criterion("monitoring_clean", MONITORING_TITLE, not problems, "; ".join(problems + facts), METRICS_FILE)


# ------------------------------------------------------------------- output

@dataclass
class Manifest:
    """What the run was asked to prove (run.json, written by the play): the verdict judges
    the files against it, never against names of its own."""
    run_id: str
    expected_calls: int
    max_logging_delay_ms: float
    units: dict[str, str]  # group -> unit name every host of the group must run
    gateway_hosts: list[str]  # hosts that run units["litellm_gateway"] (from expected_units)
    gateway_https: bool  # false only when the inventory chose plain HTTP

    @classmethod
    def read(cls, run_dir: Path) -> Manifest | None:
        data = read_json(run_dir, contract.MANIFEST)
        try:
            units = {str(k): str(v) for k, v in data["units"].items()}
            gateways = [str(h) for h, us in (data.get("expected_units") or {}).items()
                        if units.get("litellm_gateway") in us]
            manifest = cls(str(data.get("run_id") or ""), int(data["expected_calls"]),
                           float(data["max_logging_delay_ms"]), units, gateways,
                           data.get("gateway_https", True) is not False)
        except (TypeError, KeyError, ValueError, AttributeError):
            return None
        if manifest.expected_calls < 1 or not {"litellm_gateway", "postgresql"} <= units.keys() or not gateways:
            return None
        return manifest


def compute(run_dir: Path, secrets: list[str]) -> list[Criterion]:
    m = Manifest.read(run_dir)
    if m is None:
        return [Criterion("manifest", "The run's manifest names the calls, the units and the gateway hosts to judge",
                          False, f"{contract.MANIFEST} missing or incomplete: nothing can be judged", contract.MANIFEST),
                check_secrets(run_dir, secrets)]
    crits = [
        check_units(run_dir, m.units["litellm_gateway"], "gateway_active",
                    "Gateway service active on every litellm_gateway host"),
        check_units(run_dir, m.units["postgresql"], "postgresql_active",
                    "PostgreSQL active on every postgresql host"),
        check_tls(run_dir, m),
        check_scram(run_dir, m),
        check_http(run_dir, m.expected_calls),
        check_https(run_dir, m),
    ]
    crits += check_rows(run_dir, m.expected_calls)
    crits.append(check_delay(run_dir, m.max_logging_delay_ms))
    crits.append(check_pool(run_dir))
    crits.append(check_backup(run_dir))
    crits.append(check_monitoring(run_dir, m))
    crits.append(check_secrets(run_dir, secrets))
    return crits


def _render(crits: list[Criterion], meta: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    failed = [c.name for c in crits if c.passed is False]
    summary = {
        "verdict": "FAIL" if failed else "PASS",
        "failed": failed,
        **meta,
        "criteria": [{**asdict(c), "result": c.result} for c in crits],
    }
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = [f"# Validation {meta.get('run_id', '')}: {summary['verdict']}", "",
             f"Chat calls tagged `{meta.get('tag')}`." if meta.get("tag") else "",
             f"Computed {meta.get('computed_at')} from the files of this directory "
             f"(expected calls: {meta.get('expected_calls')}, max logging delay: "
             f"{meta.get('max_logging_delay_ms')} ms).", "",
             "| criterion | result | figure | source file |", "|---|---|---|---|"]
    lines += [f"| {esc(c.title)} (`{c.name}`) | {c.result} | {esc(c.figure)} | {esc(c.source)} |" for c in crits]
    if failed:
        lines += ["", "Failed: " + ", ".join(failed)]
    return summary, json.dumps(summary, indent=2) + "\n", "\n".join(lines) + "\n"


def write_summary(run_dir: Path, crits: list[Criterion], meta: dict[str, Any],
                  secrets: list[str] | None = None) -> dict[str, Any]:
    """Writes summary.json and SUMMARY.md, then searches every file of run_dir -- these two as
    written included -- for the secrets. A secret in a rendered figure is masked before writing
    and turns no_secrets FAIL (the files never hold it); the no_secrets figure names the files
    searched, all of them."""
    secrets = sorted(set(secrets or []), key=len, reverse=True)
    crits = list(crits)
    for _ in range(3):  # converges in at most two rounds; the third is a guard
        _, js, md = _render(crits, meta)
        leaked = [name for name, text in (("summary.json", js), ("SUMMARY.md", md))
                  if any(s in text for s in secrets)]
        for value in secrets:
            js, md = js.replace(value, "********"), md.replace(value, "********")
        for name, text in (("summary.json", js), ("SUMMARY.md", md)):
            (run_dir / name).write_text(text, encoding="utf-8")
            (run_dir / name).chmod(0o640)
        new = _recheck_secrets(run_dir, crits, secrets, leaked)
        if new is None:
            break
        crits = new
    return json.loads(js)  # as written: masked


def _recheck_secrets(run_dir: Path, crits: list[Criterion], secrets: list[str],
                     masked: list[str]) -> list[Criterion] | None:
    """The no_secrets criterion as it must read once every file is on disk; None when the one
    already written says exactly that."""
    idx = next((i for i, c in enumerate(crits) if c.name == "no_secrets"), None)
    if idx is None or not secrets:
        return None
    files, hits = find_secrets(run_dir, secrets)
    found = sorted(set(hits) | {f"{n} (masked)" for n in masked})
    figure = (f"{len(secrets)} secret values searched in all {len(files)} files of the run directory, "
              f"SUMMARY.md and summary.json as written included"
              + (f": found in {', '.join(found)}" if found else ": none found"))
    want = Criterion("no_secrets", SECRETS_TITLE, not found, figure, "every file")
    if crits[idx] == want:
        return None
    return crits[:idx] + [want] + crits[idx + 1:]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--secrets-on-stdin", action="store_true",
                    help='read {"secrets": [...]} from stdin (the values to search the files for)')
    args = ap.parse_args(argv)
    if not args.run_dir.is_dir():
        print("verdict.py: --run-dir must be an existing directory", file=sys.stderr)
        return 2
    raw = sys.stdin.read() if args.secrets_on_stdin else ""
    values = (json.loads(raw) if raw.strip() else {}).get("secrets") or []
    secrets = sorted({str(s) for s in values if contract.is_secret(s)})
    crits = compute(args.run_dir, secrets)
    m = Manifest.read(args.run_dir)
    meta = {"run_id": m.run_id if m else "", "tag": f"run:{m.run_id}" if m and m.run_id else None,
            "computed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "expected_calls": m.expected_calls if m else None,
            "max_logging_delay_ms": m.max_logging_delay_ms if m else None}
    summary = write_summary(args.run_dir, crits, meta, secrets)
    print(json.dumps({"verdict": summary["verdict"], "failed": summary["failed"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
