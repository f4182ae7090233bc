"""roles/pgbackrest (+ the archiving part of roles/postgresql) on the test bed: continuous WAL
archiving to an encrypted, compressed repository on another host over mutual TLS (a CA of its
own), the stanza checked end to end, a first full backup, timers and metrics on the repository
host, the lock shared by every unit, the passphrase nowhere but its file, and bad variables
refused before any change.

The restore itself (to a time into a scratch cluster; latest onto a fresh host after the
database host is destroyed) is drilled under load in molecule/resilience/tests/test_restore_drills.py.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import subprocess
import time

import pytest
import testinfra

from bedlib import ADDRESSES, LAB_DIR, PG_UNIT, hosts_in, inventory_vars, lab_secret, play_recap, role_defaults, run_playbook

DB = hosts_in("postgresql")[0]
REPO = hosts_in("pgbackrest_repo")[0]
PGB = role_defaults("pgbackrest")
STANZA = PGB["pgbackrest_stanza"]
PORT = int(PGB["pgbackrest_tls_port"])
REPO_PATH = PGB["pgbackrest_repo_path"]
METRICS_DIR = PGB["pgbackrest_metrics_dir"]
CONF = "/etc/pgbackrest/pgbackrest.conf"
CIPHER_CONF = "/etc/pgbackrest/conf.d/cipher.conf"
LOCK_DIR = "/run/pgbackrest"


def bed(name):
    return testinfra.get_host(f"podman://{name}")


@pytest.fixture(scope="module")
def db():
    return bed(DB)


@pytest.fixture(scope="module")
def repo():
    return bed(REPO)


def pgbackrest(host, *args, timeout=300):
    """pgbackrest as postgres on a bed host: (rc, stdout + stderr)."""
    cmd = " ".join(shlex.quote(a) for a in ("timeout", str(timeout), "runuser", "-u", "postgres", "--",
                                             "pgbackrest", f"--stanza={STANZA}", *args))
    res = host.run(cmd)
    return res.rc, res.stdout + res.stderr


def pg(db, sql):
    res = db.run(f"runuser -u postgres -- psql -XAt -F '|' -v ON_ERROR_STOP=1 -c {shlex.quote(sql)}")
    assert res.rc == 0, res.stderr
    return res.stdout.strip()


# --- topology, services, files ------------------------------------------------------------

def test_the_repository_is_not_on_the_database_host():
    assert REPO not in hosts_in("postgresql")


@pytest.mark.parametrize("name", [DB, REPO])
def test_tls_server_runs_on_the_private_address_only(name):
    host = bed(name)
    unit = host.service("pgbackrest.service")
    assert unit.is_enabled and unit.is_running
    addr = ADDRESSES["db"] if name == DB else ADDRESSES["gateway"]  # the bed's repository: the gateway host
    listening = host.run(f"ss -Htln 'sport = :{PORT}' | awk '{{print $4}}'").stdout.split()
    assert listening == [f"{addr}:{PORT}"], listening


@pytest.mark.parametrize("name", [DB, REPO])
def test_configuration_files_are_root_owned_and_private(name):
    host = bed(name)
    for path, mode in ((CONF, 0o640), ("/etc/pgbackrest/tls/host.key", 0o640), ("/etc/pgbackrest/tls/host.crt", 0o644)):
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "postgres", mode), path
    conf = host.file(CONF).content_string
    assert f"lock-path={LOCK_DIR}" in conf
    assert "cipher-pass" not in conf, "the passphrase belongs in conf.d/cipher.conf on the repository host"
    lock = host.file(LOCK_DIR)
    assert lock.is_directory and lock.user == "postgres" and lock.mode == 0o770
    assert f"d {LOCK_DIR} 0770 postgres postgres" in host.file("/etc/tmpfiles.d/pgbackrest-pglog.conf").content_string


def test_passphrase_only_on_the_repository_host(db, repo):
    f = repo.file(CIPHER_CONF)
    assert (f.user, f.group, f.mode) == ("root", "postgres", 0o640)
    assert lab_secret("pglog_backup_passphrase") in f.content_string  # the test would be vacuous otherwise
    assert not db.file(CIPHER_CONF).exists
    assert db.run(f"grep -rlF {shlex.quote(lab_secret('pglog_backup_passphrase'))} /etc /var/lib/postgresql"
                  " /var/log 2>/dev/null").stdout.strip() == ""


def test_postgresql_archives_through_pgbackrest(db):
    settings = dict(line.split("|") for line in pg(db, (
        "SELECT name, setting FROM pg_settings WHERE name IN"
        " ('archive_mode', 'archive_command', 'archive_timeout', 'track_commit_timestamp', 'wal_level')")).splitlines())
    timeout = int(inventory_vars(DB).get("pgbackrest_archive_timeout", PGB["pgbackrest_archive_timeout"]))
    assert settings == {"archive_mode": "on", "archive_command": f"pgbackrest --stanza={STANZA} archive-push %p",
                        "archive_timeout": str(timeout), "track_commit_timestamp": "on", "wal_level": "replica"}
    failed_now = pg(db, "SELECT coalesce(last_failed_time > last_archived_time, false) FROM pg_stat_archiver")
    assert failed_now == "f", pg(db, "SELECT * FROM pg_stat_archiver")


def test_checkpoint_after_every_start(db):
    """The PostgreSQL 17 pitfall: archive_timeout is ignored after a start until the first
    checkpoint; the unit runs one as soon as the server accepts connections."""
    post = db.run(f"systemctl show -p ExecStartPost {PG_UNIT}").stdout
    assert "CHECKPOINT" in post and "ignore_errors=yes" in post, post


def test_check_passes_end_to_end(repo):
    rc, out = pgbackrest(repo, "--log-level-console=warn", "check")
    assert rc == 0, out


def test_first_full_backup_is_in_the_encrypted_repository(repo):
    rc, out = pgbackrest(repo, "--output=json", "info")
    assert rc == 0, out
    stanza = json.loads(out)[0]
    assert stanza["status"]["code"] == 0 and stanza["cipher"] == "aes-256-cbc"
    fulls = [b for b in stanza["backup"] if b["type"] == "full" and not b["error"]]
    assert fulls, stanza["backup"]


def test_repository_files_are_encrypted_and_compressed(repo):
    """Every file starts with OpenSSL's "Salted__" (aes-256-cbc), none with zstd's magic or in clear;
    WAL segments are stored compressed (.zst)."""
    for path in (f"{REPO_PATH}/archive/{STANZA}/archive.info", f"{REPO_PATH}/backup/{STANZA}/backup.info"):
        assert repo.run(f"head -c 8 {path}").stdout == "Salted__", path
    # WAL segments: <name>-<sha1>.zst (the .backup/.history files beside them are tiny, not compressed)
    segments = repo.run(f"find {REPO_PATH}/archive/{STANZA} -name '0000*-*' -type f").stdout.split()
    assert segments and all(s.endswith(".zst") for s in segments), segments[:5]
    for path in segments[:3] + repo.run(f"find {REPO_PATH}/archive/{STANZA} -name '*.backup'").stdout.split()[:1]:
        assert repo.run(f"head -c 8 {path}").stdout == "Salted__", path
    # a backed-up catalog file would show table names in clear
    assert repo.run(f"grep -rl pg_catalog {REPO_PATH} | head -1").stdout.strip() == ""


# --- TLS: a CA of its own ------------------------------------------------------------------------

def _cert(ca_dir, common_name, tmp_path):
    """A key and a client certificate signed by the CA in ca_dir (control node)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("ca,cn,refusal", [
    # the bundle's main CA (it also signs the PostgreSQL and other services' certificates)
    ("main", REPO, "unknown ca"),
    # the backup CA, but a common name the database host does not list
    ("backup", "intruder", "access denied"),
    # control: the backup CA and the repository host's name get in
    ("backup", REPO, None),
])
def test_db_host_admits_only_the_backup_cas_listed_names(repo, tmp_path, ca, cn, refusal):
    ca_dir = LAB_DIR / "pki" if ca == "main" else LAB_DIR / "pki" / "pgbackrest"
    key, cert = _cert(ca_dir, cn, tmp_path)
    d = "/run/pgbackrest-tls-test"
    try:
        repo.run(f"install -d -o postgres -m 0700 {d}")
        for name, data, mode in (("k.pem", key, "0600"), ("c.crt", cert, "0644")):
            subprocess.run(["podman", "exec", "-i", REPO, "sh", "-c",
                            f"umask 077; cat > {d}/{name}; chown postgres {d}/{name}; chmod {mode} {d}/{name}"],
                           input=data, check=True, timeout=60)
        rc, out = pgbackrest(repo, f"--pg1-host-cert-file={d}/c.crt", f"--pg1-host-key-file={d}/k.pem",
                             "--log-level-console=warn", "check")
    finally:
        repo.run(f"rm -rf {d}")
    if refusal is None:
        assert rc == 0, out
    else:
        assert rc != 0 and refusal in out, out


# --- schedules, metrics, lock -----------------------------------------------------------------

def test_timers_on_the_repository_host_only(db, repo):
    for unit, cal in (("pgbackrest-backup-full.timer", PGB["pgbackrest_full_on_calendar"]),
                      ("pgbackrest-backup-diff.timer", PGB["pgbackrest_diff_on_calendar"]),
                      ("pgbackrest-check.timer", PGB["pgbackrest_check_on_calendar"])):
        t = repo.service(unit)
        assert t.is_enabled and t.is_running, unit
        assert f"OnCalendar={cal}" in repo.file(f"/etc/systemd/system/{unit}").content_string
        assert not db.file(f"/etc/systemd/system/{unit}").exists
    unit = repo.file("/etc/systemd/system/pgbackrest-backup@.service").content_string
    assert "User=postgres" in unit and "PrivateTmp=yes" in unit and "--type=%i" in unit


def test_metrics_files_for_node_exporter(repo):
    """Written by the units after the setup's check and first backup (as root, atomically)."""
    prom = repo.file(f"{METRICS_DIR}/pgbackrest.prom").content_string
    check = repo.file(f"{METRICS_DIR}/pgbackrest_check.prom").content_string
    values = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) (\S+)$", prom + check, re.M)
              if not m.group(1).startswith("#")}
    s = f'stanza="{STANZA}"'
    assert values[f"pgbackrest_info_success{{{s}}}"] == 1
    assert values[f"pgbackrest_stanza_status_code{{{s}}}"] == 0
    assert values[f"pgbackrest_check_success{{{s}}}"] == 1
    full = values[f'pgbackrest_backup_last_completion_timestamp_seconds{{{s},type="full"}}']
    assert 0 < time.time() - full < 7 * 86400
    # the root part wrote only these files: nothing of the repository or its logs is root's
    owned = repo.run(f"find {REPO_PATH} /var/log/pgbackrest {LOCK_DIR} -user root").stdout.strip()
    assert owned == "", owned


def test_two_backups_never_run_at_once(repo):
    """Lock-path pitfall: the lock lives in /run/pgbackrest, shared by every unit (with
    PrivateTmp each unit would have its own /tmp/pgbackrest). While something holds the
    stanza's backup lock there, a backup unit fails cleanly with [050]."""
    lock = f"{LOCK_DIR}/{STANZA}-backup-1.lock"
    # -o: the lock is flock's own, not inherited by sleep, so killing flock releases it
    repo.run(f"runuser -u postgres -- sh -c 'flock -o {lock} sleep 30 >/dev/null 2>&1 &'")
    try:
        time.sleep(1)
        started = repo.run("systemctl start pgbackrest-backup@diff.service")
        journal = repo.run("journalctl -u pgbackrest-backup@diff.service -o cat -n 20 --no-pager").stdout
    finally:
        repo.run("pkill -u postgres -f '^flock /run/pgbackrest' ; systemctl reset-failed pgbackrest-backup@diff.service")
    assert started.rc != 0
    assert "ERROR: [050]: unable to acquire lock" in journal and lock in journal, journal


# --- secrets ------------------------------------------------------------------------------------

def test_passphrase_never_in_journal_logs_or_process_list(db, repo):
    """During a backup (its processes exist on both hosts) the passphrase is in no command
    line; it is in no journal line and no pgBackRest or PostgreSQL log, on either host."""
    secret = lab_secret("pglog_backup_passphrase")
    repo.run("systemctl start --no-block pgbackrest-backup@incr.service")
    cmdlines = {DB: "", REPO: ""}
    for _ in range(8):
        for name, host in ((DB, db), (REPO, repo)):
            cmdlines[name] += host.run("sh -c 'for f in /proc/[0-9]*/cmdline; do tr \"\\0\" \" \" < $f 2>/dev/null;"
                                       " echo; done'").stdout
        time.sleep(0.2)
    wait = time.time() + 120
    while repo.run("systemctl is-active pgbackrest-backup@incr.service").stdout.strip() in ("active", "activating"):
        assert time.time() < wait, "incr backup still running after 120 s"
        time.sleep(1)
    for name, host in ((DB, db), (REPO, repo)):
        assert "pgbackrest" in cmdlines[name]  # the sample saw pgBackRest processes
        assert secret not in cmdlines[name], f"passphrase in a command line on {name}"
        assert secret not in host.run("journalctl --no-pager -o cat").stdout, f"passphrase in the journal of {name}"
        logs = host.run("cat /var/log/pgbackrest/* /var/log/postgresql/* 2>/dev/null").stdout
        assert logs and secret not in logs, f"passphrase in a log file on {name}"


# --- bad variables fail before any change --------------------------------------------------

BAD = [
    ({"pglog_backup_passphrase": "too-short"}, "pgbackrest_cipher_passphrase"),
    # the repository is encrypted with the old one: a new passphrase is refused, not written
    ({"pglog_backup_passphrase": "another-passphrase-0123456789-abcdefghij"}, "cannot re-encrypt"),
    ({"pgbackrest_diff_on_calendar": "Someday 25:00"}, "systemd refuses"),
]


@pytest.mark.parametrize("extra,named", BAD, ids=[b[1] for b in BAD])
def test_bad_variables_fail_before_any_change(extra, named):
    """On the repository host (--limit: the checks are its own), the backup tier's play alone."""
    rc, out = run_playbook("playbooks/pgbackrest.yml", "--limit", REPO, "-e", json.dumps(extra), timeout=600)
    assert rc != 0 and named in out, out[-3000:]
    assert play_recap(out, REPO)["changed"] == 0, out[-3000:]
    assert extra.get("pglog_backup_passphrase", "\0") not in out
