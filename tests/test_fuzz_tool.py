"""The bed's fuzz tool (molecule/shared/fuzz.py) reads the gateway's call id from each answer.

schemathesis 4 hands back headers as {name: [values]} (requests: {name: value}); the bed's
fuzz pass once collected lists instead of ids and failed on its own bookkeeping. These tests
check the reading on both shapes, and on a real schemathesis Response in the audit venv."""

import importlib.util
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
FUZZ = PROJECT / "molecule" / "shared" / "fuzz.py"
AUDIT_PYTHON = PROJECT / ".venv-audit" / "bin" / "python"


def fuzz_module():
    spec = importlib.util.spec_from_file_location("bed_fuzz", FUZZ)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("headers,value", [
    ({"x-litellm-call-id": "c1"}, "c1"),                       # requests
    ({"x-litellm-call-id": ["c1"]}, "c1"),                     # schemathesis 4
    ({"X-LiteLLM-Call-Id": ["c1"]}, "c1"),                     # the name's case is free
    ({"x-litellm-call-id": ["c1", "c1"]}, "c1"),               # repeated, same value
    ({"content-type": ["application/json"]}, None),
    ({}, None),
])
def test_the_call_id_is_one_string_whatever_the_header_shape(headers, value):
    assert fuzz_module().one_header(headers, "x-litellm-call-id") == value


def test_two_different_call_ids_in_one_answer_are_an_error():
    with pytest.raises(ValueError, match="2 different values"):
        fuzz_module().one_header({"x-litellm-call-id": ["c1", "c2"]}, "x-litellm-call-id")


def test_on_a_real_schemathesis_response():
    """The shape the fuzz pass really gets: schemathesis' Response built from a requests one."""
    assert AUDIT_PYTHON.exists(), "the audit venv is missing: make venvs"
    code = f"""
import datetime, importlib.util, io
import requests, urllib3
from schemathesis.core.transport import Response
spec = importlib.util.spec_from_file_location("bed_fuzz", {str(FUZZ)!r})
fuzz = importlib.util.module_from_spec(spec); spec.loader.exec_module(fuzz)
raw = urllib3.HTTPResponse(body=io.BytesIO(b"{{}}"), headers={{"x-litellm-call-id": "c-42",
      "content-type": "application/json"}}, status=200, preload_content=False)
r = requests.adapters.HTTPAdapter().build_response(requests.Request("POST", "http://gw/").prepare(), raw)
r.elapsed = datetime.timedelta(0)
resp = Response.from_requests(r, verify=True)
assert isinstance(resp.headers["x-litellm-call-id"], list), resp.headers
print(fuzz.one_header(resp.headers, "x-litellm-call-id"))
"""
    p = subprocess.run([str(AUDIT_PYTHON), "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "c-42"
