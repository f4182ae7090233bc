"""The upstream stub: token counts from the input, directives, SSE, errors."""

import json
import time
import urllib.request

import pytest

from proxyrig import Stub, http


@pytest.fixture(scope="module")
def stub():
    s = Stub()
    yield s
    s.stop()


def chat(stub, content, path="/v1/chat/completions", **extra):
    body = {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                       {"role": "user", "content": content}], **extra}
    return http("POST", f"http://127.0.0.1:{stub.port}{path}", body)


def test_tokens_depend_on_input(stub):
    s1, _, short = chat(stub, "one two")
    s2, _, long = chat(stub, "one two three four five six", path="/chat/completions")
    assert s1 == s2 == 200
    assert short["usage"] == {"prompt_tokens": 2 + 3 + 2 + 3, "completion_tokens": 3, "total_tokens": 13}
    assert long["usage"]["prompt_tokens"] == 14 and long["usage"]["completion_tokens"] == 7
    assert long["choices"][0]["message"]["content"] == "echo: one two three four five six"


def test_fail_and_sleep_directives(stub):
    status, _, body = chat(stub, "x #stub:fail=503")
    assert status == 503 and "stub failure 503" in body["error"]["message"]
    t0 = time.monotonic()
    assert chat(stub, "x #stub:sleep=300")[0] == 200
    assert time.monotonic() - t0 >= 0.3


def test_bad_body_and_unknown_path(stub):
    assert http("POST", f"http://127.0.0.1:{stub.port}/v1/chat/completions", raw=b"{nope")[0] == 400
    assert http("POST", f"http://127.0.0.1:{stub.port}/v1/other", {"messages": []})[0] == 404
    assert http("GET", f"http://127.0.0.1:{stub.port}/health")[2] == {"status": "ok"}


def test_stream_sse(stub):
    req = urllib.request.Request(f"http://127.0.0.1:{stub.port}/v1/chat/completions", method="POST",
                                 data=json.dumps({"model": "m", "stream": True,
                                                  "messages": [{"role": "user", "content": "a b"}]}).encode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        events = [l[6:] for l in resp.read().decode().splitlines() if l.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: a b"
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
