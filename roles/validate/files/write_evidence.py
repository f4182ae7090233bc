#!/usr/bin/env python3
"""Renders the evidence files of one validation run from what validate.yml collected
(stdlib only, control node), masks every secret and writes them.

    write_evidence.py RUN_DIR < collected.json

stdin carries the secrets to mask (never a command line or the environment, which
Ansible shows at high verbosity) and the raw results of the collecting tasks:

  {"secrets": [...], "run_id": ..., "tag": ..., "calls": K, "max_logging_delay_ms": MS,
   "units": {group: unit}, "expected_units": {host: [unit, ...]}, "gateway_https": bool,
   "hosts": {host: {"groups": [...], "units": [...], "show": [cmdres], "status": [cmdres],
                    "journal": cmdres | null, "since": str, "connect_check": cmdres | null} | null},
   "chat": cmdres, "cli": {name: cmdres}, "db_auth": {...}, "config": str,
   "backup": {"host", "stanza", "collected_at", "grace_s", "info_json": cmdres, "info_text": cmdres,
              "check": cmdres, "timers": [{"type", "unit", "show", "calendar"}], "archiver": {...}} | null,
   "backup_hosts": [...],
   "monitoring": {"host", "read_at", "gateways": [{"host", "url", "status", "content", "msg"}],
                  "alerts": [{"source": "prometheus" | "alertmanager", "url", "status", "content", "msg"}]} | null,
   "monitoring_hosts": [...],
   "cluster": {"ha": bool, "primary": host | null,
               "nodes": [{"host", "is_primary", "patroni_list": cmdres | null, "replication": [...] | null}]}}

  cmdres = {"cmd": [...], "rc": int, "stdout": str, "stderr": str}

Writes the run's manifest (run.json: what the verdict judges against) and the files that
contract.json lists: service_status.txt, gateway_db_connect.log, chat_call.json,
requests_head.txt, responses_head.txt, join_check.txt (+ the CLI's --json output as *.json,
which is what verdict.py judges), db_auth_check.json, pgbackrest_info.json (+ .txt), metrics_snapshot.txt,
cluster_state.json and config.redacted.yaml. Raw output
is kept as it came; only secrets are masked (scrub.py).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import contract  # beside this script (sys.path[0] when run as a script)
import scrub

CLI_FILES = {
    "requests_head": "requests_head.txt",
    "responses_head": "responses_head.txt",
    "join_check": "join_check.txt",
    "requests_head_json": "requests_head.json",
    "responses_head_json": "responses_head.json",
    "join_check_json": "join_check.json",
}


def _cmd(res: dict[str, Any] | None) -> str:
    if not res:
        return "$ (not run: no data from the host)"
    cmd = res.get("cmd") or []
    return f"$ {' '.join(cmd) if isinstance(cmd, list) else cmd}   (exit {res.get('rc')})"


def _out(res: dict[str, Any] | None) -> str:
    if not res:
        return ""
    text = (res.get("stdout") or "").rstrip("\n")
    err = (res.get("stderr") or "").rstrip("\n")
    return text + (f"\n[stderr]\n{err}" if err else "")


def _by_unit(results: list[dict[str, Any]] | None, unit: str) -> dict[str, Any] | None:
    for res in results or []:
        if res.get("item") == unit:
            return res
    return None


def service_status(hosts: dict[str, Any], expected_units: dict[str, list[str]]) -> str:
    """One `### host=H unit=U` section per unit each host should run; a host that gave no
    data still gets its sections (ActiveState=unknown), so the verdict sees the gap."""
    parts = []
    for host, units in expected_units.items():
        data = hosts.get(host) or {}
        for unit in units:
            show, status = _by_unit(data.get("show"), unit), _by_unit(data.get("status"), unit)
            parts.append(f"### host={host} unit={unit}")
            if show is None:
                parts.append("ActiveState=unknown\nSubState=unknown\n(no data from this host)")
                continue
            parts += [_cmd(show), _out(show), _cmd(status), _out(status), ""]
    return "\n".join(parts)


def connect_log(hosts: dict[str, Any], gateways: list[str]) -> str:
    """Per gateway: the pool's connect and pool_stats lines since the unit's start (journal), then
    the fresh connection the play opened (`litellm-pglog connect-check`) as one
    `event=connect_check {json}` line. Both show the client address the server saw."""
    parts = []
    for host in gateways:
        data = hosts.get(host) or {}
        journal = data.get("journal")
        unit = (data.get("units") or ["?"])[0]
        parts.append(f"### host={host} unit={unit} since={data.get('since') or 'boot'}")
        parts.append(_cmd(journal))
        if journal:
            lines = [ln for ln in (journal.get("stdout") or "").splitlines()
                     if (contract.parse_event(ln) or ("",))[0] in contract.EVIDENCE_EVENTS]
            parts += lines or [f"(no event={' / event='.join(contract.EVIDENCE_EVENTS)} line since the unit's start)"]
            if journal.get("rc") not in (0, 1) and journal.get("stderr"):
                parts.append("[stderr] " + journal["stderr"].strip())
        check = data.get("connect_check")
        parts.append(f"### host={host} check=connect-check")
        parts.append(_cmd(check))
        try:
            fresh = json.loads((check or {}).get("stdout") or "")
        except ValueError:
            fresh = None
        if isinstance(fresh, dict):
            parts.append(f"event={contract.FRESH_CONNECT_EVENT} {json.dumps(fresh, sort_keys=True)}")
        else:
            parts.append("(no fresh connection was described)" + (f"\n[stderr] {check['stderr'].strip()}"
                                                                   if check and check.get("stderr") else ""))
    return "\n".join(parts)


def chat_call(res: dict[str, Any] | None) -> str:
    try:
        data = json.loads((res or {}).get("stdout") or "")
    except ValueError:
        data = {"error": "the chat calls did not run", "rc": (res or {}).get("rc"),
                "stdout": (res or {}).get("stdout"), "stderr": (res or {}).get("stderr")}
    return json.dumps(data, indent=2)


def cli_text(res: dict[str, Any] | None) -> str:
    return _cmd(res) + "\n" + _out(res)


def cli_json(res: dict[str, Any] | None) -> str:
    try:
        return json.dumps(json.loads((res or {}).get("stdout") or ""), indent=2, sort_keys=True)
    except ValueError:
        return json.dumps({"error": "no JSON from the CLI", "rc": (res or {}).get("rc"),
                           "stderr": (res or {}).get("stderr")}, indent=2)


def _props(text: str) -> dict[str, str]:
    """`systemctl show` output as a dict."""
    return dict(line.split("=", 1) for line in (text or "").splitlines() if "=" in line)


def backup_json(backup: dict[str, Any] | None, repo_hosts: list[str]) -> dict[str, Any]:
    """pgbackrest_info.json: what verdict.py's backup_pitr judges. The info JSON parsed,
    the check's exit code and output, each timer's properties and the raw
    `systemd-analyze calendar` output of its calendar (the verdict reads the elapses
    there), pg_stat_archiver and the archiving settings of the first database host."""
    if not backup:
        return {"repository_hosts": repo_hosts,
                "error": ("no data from the repository host" if repo_hosts
                          else "no host in group pgbackrest_repo: no backups are configured")}
    info_res = backup.get("info_json") or {}
    try:
        info = json.loads(info_res.get("stdout") or "")
    except ValueError:
        info = None
    check = backup.get("check") or {}
    collected = str(backup.get("collected_at") or "").strip()
    return {
        "repository_hosts": repo_hosts,
        "host": backup.get("host"),
        "stanza": backup.get("stanza"),
        "collected_at": int(collected) if collected.isdigit() else None,
        "grace_s": backup.get("grace_s"),
        "info": info,
        "info_rc": info_res.get("rc"),
        "info_stderr": (info_res.get("stderr") or "").strip(),
        "check": {"rc": check.get("rc"),
                  "output": ((check.get("stdout") or "") + (check.get("stderr") or "")).strip()},
        "timers": [{"type": t.get("type"), "unit": t.get("unit"), "show": _props(t.get("show") or ""),
                    "calendar_analysis": t.get("calendar") or ""} for t in backup.get("timers") or []],
        "archiver": backup.get("archiver") or {},
        "archiver_error": backup.get("archiver_error") or "",
    }


def backup_text(backup: dict[str, Any] | None, repo_hosts: list[str]) -> str:
    """pgbackrest_info.txt: the same for a human (pgBackRest's own text output)."""
    if not backup:
        return backup_json(backup, repo_hosts)["error"]
    parts = [f"### host={backup.get('host')} stanza={backup.get('stanza')}",
             cli_text(backup.get("info_text")), "", cli_text(backup.get("check")), ""]
    for t in backup.get("timers") or []:
        parts += [f"### timer type={t.get('type')} unit={t.get('unit')}", (t.get("show") or "").strip(),
                  (t.get("calendar") or "").strip(), ""]
    parts += ["### pg_stat_archiver and archiving settings (first database host)",
              json.dumps(backup.get("archiver") or {}, indent=2, sort_keys=True, default=str)]
    if backup.get("archiver_error"):
        parts.append("[error] " + str(backup["archiver_error"]))
    return "\n".join(parts)


METRIC_PREFIX = "pglog_"  # the logging module's own metrics (files/litellm_pglog metrics.py)


def _alert_lines(source: str, content: str) -> list[str]:
    """One JSON line per alert: Prometheus' rule alerts (firing and pending, with their state),
    Alertmanager's active ones (state "active"); an answer that is not the API's JSON is one
    `(unreadable ...)` line, which the verdict fails."""
    try:
        data = json.loads(content or "")
        raw = data["data"]["alerts"] if source == "prometheus" else data
        alerts = [{"alertname": (a.get("labels") or {}).get("alertname"),
                   "state": a.get("state") if source == "prometheus" else (a.get("status") or {}).get("state"),
                   "since": a.get("activeAt") if source == "prometheus" else a.get("startsAt"),
                   "labels": a.get("labels") or {}} for a in raw]
    except (ValueError, TypeError, KeyError, AttributeError):
        return [f"(unreadable answer: {(content or '')[:200]!r})"]
    return [json.dumps(a, sort_keys=True) for a in sorted(alerts, key=lambda a: str(a["alertname"]))]


def metrics_snapshot(mon: dict[str, Any] | None, gateways: list[str], mon_hosts: list[str]) -> str:
    """metrics_snapshot.txt: what the verdict's monitoring_clean judges. `### source=gateway
    host=H url=U status=S` with that gateway's pglog_* exposition lines (as scraped, HELP and
    TYPE included), then `### source=prometheus|alertmanager url=U status=S` with one JSON line
    per alert. A gateway the scrape did not reach keeps its section, status -1 and the error."""
    if not mon:
        why = ("no data from the monitoring host" if mon_hosts
               else "no host in group monitoring: nothing watches the deployment")
        return f"### source=monitoring status=-1\n({why})\n"
    parts = [f"# The logging module's metrics and the alerts at validation time, read on the monitoring "
             f"host {mon.get('host')} (epoch {str(mon.get('read_at') or '').strip()}).",
             "# Counters count since the gateway's start; alert lines are the APIs' alerts, one JSON each."]
    scraped = {g.get("host"): g for g in mon.get("gateways") or []}
    for host in gateways:
        g = scraped.get(host) or {}
        parts.append(f"### source=gateway host={host} url={g.get('url') or '-'} status={g.get('status', -1)}")
        if g.get("status") == 200:
            lines = [ln for ln in (g.get("content") or "").splitlines()
                     if ln.startswith(METRIC_PREFIX) or ln.startswith(("# HELP " + METRIC_PREFIX,
                                                                         "# TYPE " + METRIC_PREFIX))]
            parts += lines or ["(no pglog_ metric in the answer)"]
        else:
            parts.append(f"(not read: {g.get('msg') or 'no answer'})")
    for a in mon.get("alerts") or []:
        parts.append(f"### source={a.get('source')} url={a.get('url') or '-'} status={a.get('status', -1)}")
        if a.get("status") == 200:
            parts += _alert_lines(str(a.get("source")), a.get("content") or "")
        else:
            parts.append(f"(not read: {a.get('msg') or 'no answer'})")
    return "\n".join(parts) + "\n"


def cluster_state(cluster: dict[str, Any] | None) -> dict[str, Any]:
    """cluster_state.json: where the database evidence was read (the primary) and, on the HA
    topology, the cluster as Patroni lists it (members, roles, states, timeline, lag) and the
    replication the primary serves (sync state, replay lag). Extra evidence: not judged."""
    cluster = cluster or {}
    nodes = cluster.get("nodes") or []
    out: dict[str, Any] = {"topology": "patroni" if cluster.get("ha") else "single server",
                           "evidence_read_on": cluster.get("primary"),
                           "servers": {n.get("host"): ("primary" if n.get("is_primary") else "replica")
                                       for n in nodes}}
    primary = next((n for n in nodes if n.get("is_primary")), None)
    if cluster.get("ha"):
        members, errors = None, []
        for n in nodes:
            res = n.get("patroni_list") or {}
            if res.get("rc") == 0:
                try:
                    members = json.loads(res.get("stdout") or "")
                    break
                except ValueError as e:
                    errors.append(f"{n.get('host')}: {e}")
            else:
                errors.append(f"{n.get('host')}: rc={res.get('rc')} {str(res.get('stderr') or '')[-300:]}")
        out["patroni_members"] = members
        if members is None:
            out["patroni_errors"] = errors
        out["replication"] = primary.get("replication") if primary else None
    return out


def render(c: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    hosts = c.get("hosts") or {}
    expected_units = c.get("expected_units") or {}
    gateways = c.get("gateways") or []
    files = {
        "service_status.txt": service_status(hosts, expected_units),
        "gateway_db_connect.log": connect_log(hosts, gateways),
        "chat_call.json": chat_call(c.get("chat")),
        "db_auth_check.json": json.dumps(c.get("db_auth") or {}, indent=2, sort_keys=True, default=str),
    }
    repo_hosts = list(c.get("backup_hosts") or [])
    files["pgbackrest_info.json"] = json.dumps(backup_json(c.get("backup"), repo_hosts), indent=2,
                                               sort_keys=True, default=str)
    files["pgbackrest_info.txt"] = backup_text(c.get("backup"), repo_hosts)
    files["cluster_state.json"] = json.dumps(cluster_state(c.get("cluster")), indent=2, sort_keys=True,
                                             default=str)
    files["metrics_snapshot.txt"] = metrics_snapshot(c.get("monitoring"), gateways,
                                                     list(c.get("monitoring_hosts") or []))
    cli = c.get("cli") or {}
    for key, name in CLI_FILES.items():
        files[name] = cli_json(cli.get(key)) if name.endswith(".json") else cli_text(cli.get(key))
    files[contract.MANIFEST] = json.dumps(manifest(c), indent=2, sort_keys=True)
    config = {"config.redacted.yaml": c.get("config") or "# config.yaml could not be read\n"}
    listed = contract.CARD_FILES + contract.JUDGED_FILES + contract.EXTRA_FILES + contract.CONFIG_FILES
    missing = set(listed) - set(files) - set(config)
    if missing:  # the contract and this renderer disagree: a bug, never a silent gap
        raise RuntimeError(f"write_evidence.py renders no {sorted(missing)}")
    return files, config


def manifest(c: dict[str, Any]) -> dict[str, Any]:
    """What the verdict judges against: the run, its bounds and the unit of each group."""
    return {"run_id": c.get("run_id"), "tag": c.get("tag"), "expected_calls": c.get("calls"),
            "max_logging_delay_ms": c.get("max_logging_delay_ms"), "units": c.get("units") or {},
            "expected_units": c.get("expected_units") or {},
            # false only when the inventory turned HTTPS off; the verdict then says INFO, never PASS
            "gateway_https": c.get("gateway_https") is not False}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(__doc__, file=sys.stderr)
        return 2
    collected = json.load(sys.stdin)
    files, config = render(collected)
    written = scrub.write_all(Path(argv[0]), {"secrets": collected.get("secrets") or [],
                                              "files": files, "config": config})
    print(json.dumps({"written": written}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
