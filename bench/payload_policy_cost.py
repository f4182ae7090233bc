"""Writer-thread CPU per record of each payload capture policy (privacy.py): records.prepare
over N realistic records (~1 KB prompt, 8 messages, a completion), interleaved rounds so every
mode sees the same load; thread CPU time, not wall time. No database needed. Prints JSON.

Usage: bench/payload_policy_cost.py [N] [ROUNDS]"""

import json
import sys
import time

from _rig import load_avg

from helpers import make_slo  # noqa: E402  (tests/)
from litellm_pglog import privacy, records


def main(n=int(sys.argv[1]) if len(sys.argv) > 1 else 5000, rounds=int(sys.argv[2]) if len(sys.argv) > 2 else 5):
    text = ("Please summarise the meeting notes below and list the action items. " * 14)[:1000]
    messages = [{"role": "system", "content": "You are terse."}] + [
        {"role": "user" if i % 2 else "assistant", "content": text} for i in range(7)]
    raws = [records.capture(make_slo(i, messages=messages, response={"choices": [{"message": {"content": text}}]}))
            for i in range(n)]
    patterns = privacy.load_patterns(None)
    policies = {mode: privacy.Policy(mode, patterns if mode != "full" else ()) for mode in privacy.MODES}
    best = {mode: float("inf") for mode in policies}
    load0 = load_avg()
    for _ in range(rounds):
        for mode, policy in policies.items():
            t0 = time.thread_time_ns()
            for raw in raws:
                records.prepare(raw, 262_144, policy)
            best[mode] = min(best[mode], (time.thread_time_ns() - t0) / 1000.0 / n)
    print(json.dumps({
        "bench": "payload_policy_cost", "records": n, "rounds": rounds, "record_bytes": len(json.dumps(raws[0], default=str)),
        "cpu_us_per_record_best": {m: round(v, 1) for m, v in best.items()},
        "ratio_to_full": {m: round(v / best["full"], 2) for m, v in best.items()},
        "load_avg_before": load0, "load_avg_after": load_avg(),
    }))


if __name__ == "__main__":
    main()
