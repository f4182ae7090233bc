"""A throwaway PostgreSQL cluster for the tests: SCRAM-SHA-256 over TLS only (own CA,
sslmode=verify-full), started with pg_ctl as the `postgres` system user on a free port.

pg_hba: `local all postgres trust` (the admin socket of the test) and
`hostssl all all 127.0.0.1/32 scram-sha-256`; nothing else, so a non-TLS or non-SCRAM
connection is refused, like on the real database host.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import psycopg2

OWNER, OWNER_PW = "pglog_owner", "owner-pw-T3st"
WRITER, WRITER_PW = "pglog_writer", "writer-pw-T3st"
DB = "litellm_db"


def pg_bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries missing: apt-get install -y postgresql")
    return os.path.dirname(found[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pglog-test-ca",
             "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", f"{d}/server.key", "-out", f"{d}/server.csr")
    with open(f"{d}/san.ext", "w") as fh:
        fh.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.crt", "-CAkey", f"{d}/ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", f"{d}/san.ext", "-out", f"{d}/server.crt")


@dataclass
class Cluster:
    base: str
    port: int
    bindir: str = field(default_factory=pg_bindir)

    @property
    def data(self) -> str:
        return os.path.join(self.base, "data")

    @property
    def sock(self) -> str:
        return os.path.join(self.base, "sock")

    @property
    def ca(self) -> str:
        return os.path.join(self.base, "pki", "ca.crt")

    def _as_pg(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, text=True)

    def init(self) -> None:
        pki = os.path.join(self.base, "pki")
        os.makedirs(pki)
        os.makedirs(self.sock)
        make_pki(pki)
        pg = pwd.getpwnam("postgres")
        for root, dirs, files in os.walk(self.base):
            for n in dirs + files:
                os.chown(os.path.join(root, n), pg.pw_uid, pg.pw_gid)
        os.chown(self.base, pg.pw_uid, pg.pw_gid)
        os.chmod(self.base, 0o755)
        os.chmod(os.path.join(pki, "server.key"), 0o600)
        os.chmod(self.ca, 0o644)
        self._as_pg(f"{self.bindir}/initdb", "-D", self.data, "-U", "postgres", "-E", "UTF8", "--no-locale",
                    "--auth-local=trust", "--auth-host=reject")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as fh:
            fh.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.sock}'\n"
                f"ssl = on\nssl_cert_file = '{pki}/server.crt'\nssl_key_file = '{pki}/server.key'\n"
                "password_encryption = 'scram-sha-256'\nfsync = off\nsynchronous_commit = off\n"
                "full_page_writes = off\nmax_connections = 60\nshared_buffers = 64MB\n"
            )
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as fh:
            fh.write("local all postgres trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
        self.start()
        with self.admin() as conn:
            cur = conn.cursor()
            cur.execute(f"CREATE ROLE {OWNER} LOGIN PASSWORD %s", (OWNER_PW,))
            cur.execute(f"CREATE ROLE {WRITER} LOGIN PASSWORD %s", (WRITER_PW,))
        self.create_db(DB)

    def create_db(self, name: str) -> None:
        with self.admin() as conn:
            conn.cursor().execute(f"CREATE DATABASE {name} OWNER {OWNER}")
        with self.admin(name) as conn:
            conn.cursor().execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC; GRANT CREATE ON SCHEMA public TO {OWNER}")

    def drop_db(self, name: str) -> None:
        with self.admin() as conn:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def admin(self, db: str = "postgres"):  # noqa: ANN201
        conn = psycopg2.connect(host=self.sock, port=self.port, user="postgres", dbname=db)
        conn.autocommit = True
        return _Closing(conn)

    def start(self) -> None:
        self._as_pg(f"{self.bindir}/pg_ctl", "-D", self.data, "-l", os.path.join(self.base, "log"), "-w",
                    "-t", "30", "start")

    def stop(self) -> None:
        self._as_pg(f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.base, ignore_errors=True)

    def env(self, user: str = WRITER, password: str = WRITER_PW, db: str = DB) -> dict[str, str]:
        return {
            "PGLOG_DB_HOST": "localhost", "PGLOG_DB_PORT": str(self.port), "PGLOG_DB_NAME": db,
            "PGLOG_DB_USER": user, "PGLOG_DB_PASSWORD": password, "PGLOG_DB_SSLMODE": "verify-full",
            "PGLOG_DB_SSLROOTCERT": self.ca,
        }


class _Closing:
    def __init__(self, conn) -> None:  # noqa: ANN001
        self.conn = conn

    def __enter__(self):  # noqa: ANN204
        return self.conn

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.conn.close()


def new_cluster() -> Cluster:
    c = Cluster(base=tempfile.mkdtemp(prefix="pglog-pg-"), port=free_port())
    c.init()
    return c


def wait_until(pred, timeout: float = 20.0, interval: float = 0.1):  # noqa: ANN001, ANN201
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > end:
            return value
        time.sleep(interval)
