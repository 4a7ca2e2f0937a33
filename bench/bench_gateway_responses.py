"""The Responses API through the gateway: prints figures, asserts nothing.
Run: ``python bench/bench_gateway_responses.py [--calls 200] [--concurrency 32]``.

One process: the fake upstream and a gateway (``tests/server/gateway_env.py``, each in a thread of this
process, on the file backend) and the clients (httpx, threads). Figures are therefore indicative (the
clients share the interpreter with the server); what they compare is fair: the same plain call on
``/v1/chat/completions`` and on ``/v1/responses`` (which also writes the responses registry before it
answers), with the registry empty and with it full (20,000 records, ~2.4 MiB over 16 shards: a record
rewrites its shard, ~150 KiB). Printed per case: latency p50 and p99 of sequential calls, and calls/s with
``--concurrency`` clients (concurrent records share one write).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from caracal.storage.responses import MAX_ENTRIES  # noqa: E402
from tests.server.gateway_env import GatewayEnv, behaviour_model, start_gateway  # noqa: E402

MODEL = behaviour_model("gpt-4o", "ok")


def bodies(path: str) -> dict[str, Any]:
    if path == "/v1/chat/completions":
        return {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}
    return {"model": MODEL, "input": "hello there", "max_output_tokens": 5}


def fill(env: GatewayEnv, agent_id: str) -> None:
    registry = env.service.home.responses
    for start in range(0, MAX_ENTRIES, 2000):  # full: sealed records, as the gateway writes them
        registry.record_many([(f"resp_{index:040x}", agent_id, 100) for index in range(start, start + 2000)])


def measure(env: GatewayEnv, token: str, path: str, calls: int, concurrency: int) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    body = bodies(path)
    with httpx.Client(base_url=env.base_url, timeout=60) as client:
        for _ in range(5):
            client.post(path, json=body, headers=headers).raise_for_status()
        latencies = []
        for _ in range(calls):
            started = time.perf_counter()
            client.post(path, json=body, headers=headers).raise_for_status()
            latencies.append(time.perf_counter() - started)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=env.base_url, timeout=60, limits=limits) as client:

        def one(_index: int) -> None:
            client.post(path, json=body, headers=headers).raise_for_status()

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(calls)))
        rate = calls / (time.perf_counter() - started)
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  {rate:6.0f} calls/s at {concurrency} clients"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root, start_gateway(Path(root) / "home", delay_ms=0) as env:
        agent = env.agent("1000000")
        for registry in ("empty", "full"):
            if registry == "full":
                fill(env, agent.agent_id)
            for path in ("/v1/chat/completions", "/v1/responses"):
                figures = measure(env, agent.token, path, args.calls, args.concurrency)
                print(f"registry {registry:>5}  {path:<22} {figures}")
            env.wait_idle(60)


if __name__ == "__main__":
    main()
