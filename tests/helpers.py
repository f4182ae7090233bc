"""Test helpers: fake standard_logging_objects (the shape LiteLLM 1.108.7 hands to callbacks)."""

import hashlib
import time
import uuid


def make_slo(i: int = 0, *, call_id: str | None = None, status: str = "success", tag: str = "run:test",
             content: str | None = None, **over):
    now = time.time()
    slo = {
        "id": call_id or f"call-{uuid.uuid4()}", "startTime": now - 0.02, "endTime": now,
        "model_group": "gpt-stub", "call_type": "acompletion", "stream": False, "end_user": None,
        "request_tags": [tag], "messages": [{"role": "user", "content": content or f"hello number {i}"}],
        "model_parameters": {}, "status": status, "prompt_tokens": 4 + i, "completion_tokens": 2,
        "total_tokens": 6 + i, "response_cost": 0.000001 * (i + 1),
        "response": {"choices": [{"message": {"content": "ok"}}]} if status == "success" else None,
        "error_str": None if status == "success" else "upstream 500",
        "error_information": None if status == "success" else {"error_code": "500"},
        "metadata": {"user_api_key_hash": hashlib.sha256(b"key").hexdigest()},
    }
    slo.update(over)
    return slo
