"""Starts the real pieces for end-to-end tests: the upstream stub and the `litellm` proxy
from the dev venv (same interpreter as pytest), configured like the gateway role does."""

from __future__ import annotations

import json
import os
import signal
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


class Proxy:
    def __init__(self, workdir: str, stub_port: int, env: dict[str, str]) -> None:
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.config = os.path.join(workdir, "config.yaml")
        with open(self.config, "w") as fh:
            fh.write(CONFIG.format(stub_port=stub_port))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PGLOG_", "LITELLM_"))}
        self.env.update({
            "LITELLM_MASTER_KEY": MASTER_KEY, "PGLOG_API_KEYS": f"team-e2e={TEAM_KEY}",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
            "PGLOG_SPOOL_DIR": os.path.join(workdir, "spool"), "PGLOG_STATE_DIR": os.path.join(workdir, "state"),
            **env,
        })
        self.port = free_port()
        self.log_path = os.path.join(workdir, "proxy.log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        litellm = os.path.join(os.path.dirname(sys.executable), "litellm")
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([litellm, "--config", self.config, "--host", "127.0.0.1", "--port", str(self.port)],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir)
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
