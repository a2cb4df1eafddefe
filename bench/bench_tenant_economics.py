"""What tenant economics cost per request on the router's path, in microseconds (one core, in process).

    python bench/bench_tenant_economics.py

Times the pieces the router runs for every proxied request: asking a stream for its usage
(`usage.ask_for_usage`), reading the usage of a non-streaming answer (`Tap.body`), cutting a
stream of 64 token events into events and stripping the usage event (`SseTap`), the token budget
(`check_tokens` + `debit_tokens`) and the fair-queue gate with room to spare. Compare with the
router's total CPU per plain request in docs/benchmarks.md (about 300 us on this machine).
"""

from __future__ import annotations

import asyncio
import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pixtral_runtime.router import usage  # noqa: E402
from pixtral_runtime.router.config import Limits, QueuePolicy, TenancyPolicy  # noqa: E402
from pixtral_runtime.router.gate import TrackGate  # noqa: E402
from pixtral_runtime.router.tenancy import TenantLimiter  # noqa: E402

# The bench upstream's answer (bench/upstream.py), as the router relays it.
ANSWER = json.dumps({
    "id": "cmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
}).encode()
REQUEST = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
REQUEST_BYTES = json.dumps(REQUEST).encode()
EVENTS = [b"data: " + json.dumps({"object": "chat.completion.chunk", "choices": [
    {"index": 0, "delta": {"content": "tok"}}]}).encode() + b"\n\n" for _ in range(64)]
EVENTS.append(b"data: " + json.dumps({"object": "chat.completion.chunk", "choices": [], "usage": {
    "prompt_tokens": 12, "completion_tokens": 64, "total_tokens": 76}}).encode() + b"\n\n")
EVENTS.append(b"data: [DONE]\n\n")


def per_call_us(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def stream_once() -> None:
    tap = usage.SseTap(strip=True)
    for event in EVENTS:
        tap.feed(event)
    tap.finish()


def main() -> None:
    limiter = TenantLimiter(TenancyPolicy(default_limits=Limits(0, 0, tokens_per_minute=10**12)))
    gate = TrackGate()
    policy = QueuePolicy(backend_concurrency=10**6)
    loop = asyncio.new_event_loop()

    async def gate_many(n: int) -> None:
        for _ in range(n):
            await gate.acquire("t", 10**6, 1, policy)
            gate.release()

    def gate_us() -> float:
        n = 20_000
        return min(timeit.repeat(lambda: loop.run_until_complete(gate_many(n)), number=1, repeat=5)) / n * 1e6

    def tap_answer() -> None:
        usage.tap_for(REQUEST, False)
        usage.BodyTap().body(ANSWER)

    def budget() -> None:
        limiter.check_tokens("t")
        limiter.debit_tokens("t", 19)

    results = {
        "ask_for_usage_stream_request_us": per_call_us(lambda: usage.ask_for_usage(REQUEST_BYTES, REQUEST), 50_000),
        "usage_of_json_answer_us": per_call_us(tap_answer, 50_000),
        "stream_of_64_events_us": per_call_us(stream_once, 5_000),
        "token_budget_check_and_debit_us": per_call_us(budget, 50_000),
        "fair_gate_with_room_us": gate_us(),
    }
    print(json.dumps({k: round(v, 2) for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
