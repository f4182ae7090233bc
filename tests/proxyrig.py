"""Starts the real pieces for end-to-end tests: the upstream stub and the `litellm` proxy
from the dev venv (same interpreter as pytest), configured like the gateway role does."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from pgcluster import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUB = os.path.join(ROOT, "roles", "upstream_stub", "files", "openai_stub.py")
MASTER_KEY = "sk-master-e2e-Zq1"
TEAM_KEY = "sk-team-e2e-Yw2"

CONFIG = """\
model_list:
  - model_name: gpt-stub
    litellm_params:
      model: openai/gpt-stub
      api_base: http://127.0.0.1:{stub_port}/v1
      api_key: stub-upstream-key
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
litellm_settings:
  callbacks: litellm_pglog.callback.proxy_handler_instance
  request_timeout: 30
router_settings:
  num_retries: 0
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
  custom_auth: litellm_pglog.auth.user_api_key_auth
"""


def cli() -> list[str]:
    """The `litellm-pglog` console script if the package is installed, else the same module."""
    script = os.path.join(os.path.dirname(sys.executable), "litellm-pglog")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "litellm_pglog.cli"]


def http(method: str, url: str, body: object = None, key: str | None = None, raw: bytes | None = None,
         timeout: float = 60) -> tuple[int, dict, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read()
            return resp.status, dict(resp.headers), _json(text)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), _json(err.read())


def _json(text: bytes) -> dict:
    try:
        return json.loads(text)
    except ValueError:
        return {"_raw": text.decode("utf-8", "replace")}


class Stub:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, STUB, "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if http("GET", f"http://127.0.0.1:{self.port}/health", timeout=1)[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("stub did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# What systemd does before it execs a socket-activated service: the socket at descriptor 3,
# LISTEN_FDS=1 and LISTEN_PID = the pid that execs the server.
_SYSTEMD_EXEC = """
import os, sys
if {fd} != 3:
    os.dup2({fd}, 3)
    os.close({fd})
os.set_inheritable(3, True)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
os.execv(sys.executable, [sys.executable, "-m", "litellm_pglog.serve", *sys.argv[1:]])
"""


class Proxy:
    def __init__(self, workdir: str, stub_port: int, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.args = tuple(args)  # extra `litellm` arguments, e.g. ("--num_workers", "2")
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.config = os.path.join(workdir, "config.yaml")
        with open(self.config, "w") as fh:
            fh.write(CONFIG.format(stub_port=stub_port))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PGLOG_", "LITELLM_"))}
        self.env.update({
            "LITELLM_MASTER_KEY": MASTER_KEY, "PGLOG_API_KEYS": f"team-e2e={TEAM_KEY}",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
            # what the role's env file sets: no Swagger/ReDoc pages, no admin UI (issue 11)
            "NO_DOCS": "True", "NO_REDOC": "True", "DISABLE_ADMIN_UI": "True",
            "PGLOG_SPOOL_DIR": os.path.join(workdir, "spool"), "PGLOG_STATE_DIR": os.path.join(workdir, "state"),
            **env,
        })
        self.port = free_port()
        self.log_path = os.path.join(workdir, "proxy.log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90, listen: socket.socket | None = None) -> None:
        """`litellm` binding its own port; with `listen`, `python -m litellm_pglog.serve` on
        that listening socket, handed over as systemd does (_SYSTEMD_EXEC)."""
        self.log = open(self.log_path, "a")
        if listen is None:
            litellm = os.path.join(os.path.dirname(sys.executable), "litellm")
            cmd, fds = [litellm], ()
        else:
            self.port = listen.getsockname()[1]
            fd = listen.fileno()
            cmd = [sys.executable, "-c", _SYSTEMD_EXEC.format(fd=fd)]
            fds = (fd,)
        self.proc = subprocess.Popen([*cmd, "--config", self.config, "--host", "127.0.0.1", "--port", str(self.port),
                                      *self.args],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                     pass_fds=fds)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited {self.proc.returncode}: {self.tail()}")
            try:
                if http("GET", self.url + "/health/liveliness", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError("proxy did not become healthy: " + self.tail())

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.log.close()
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, n: int = 4000) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()[-n:]

    def events(self, name: str) -> list[dict]:
        out = []
        with open(self.log_path, errors="replace") as fh:
            for line in fh:
                marker = f"event={name} "
                if marker in line:
                    out.append(json.loads(line.split(marker, 1)[1]))
        return out

    def chat(self, content: str, tag: str, key: str | None = TEAM_KEY, model: str = "gpt-stub", **extra):
        body = {"model": model, "messages": [{"role": "user", "content": content}], "metadata": {"tags": [tag]}}
        body.update(extra)
        return http("POST", self.url + "/v1/chat/completions", body, key)


_ROUTES_SCRIPT = r"""
import json, os, sys
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
from fastapi.routing import _IncludedRouter
from starlette.routing import Mount
from litellm.proxy import proxy_server
from litellm.proxy._lazy_features import register_all_features

app = proxy_server.app
register_all_features(app)  # the routes LiteLLM otherwise attaches on first use
out = []

def walk(items):
    for r in items:
        if isinstance(r, _IncludedRouter):
            walk(r.effective_candidates())
            continue
        orig = getattr(r, "original_route", r)
        path = getattr(r, "path", None) or getattr(orig, "path", None)
        kind = "mount" if isinstance(orig, Mount) else "websocket" if "WebSocket" in type(orig).__name__ else "http"
        out.append({"path": path, "methods": sorted(getattr(orig, "methods", None) or []), "kind": kind})

walk(app.routes)
json.dump(out, sys.stdout)
"""


def litellm_routes() -> list[dict]:
    """Every route of the installed LiteLLM proxy app (the one the proxy rig runs), with the
    lazily attached feature routers registered: [{"path", "methods", "kind"}], ~990 entries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGLOG_", "LITELLM_"))}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    out = subprocess.run([sys.executable, "-c", _ROUTES_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout)
