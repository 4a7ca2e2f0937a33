"""Crash billing: prints figures, asserts nothing. Run: ``python bench/bench_crash_billing.py``.

Each round: a fresh home, ``caracal serve`` (a real process) in front of the fake upstream
(``tests/server/fake_upstream.py``, answering after ``--delay-ms``), ``--workers`` concurrent clients
calling ``/v1/chat/completions`` in a loop, then SIGKILL of the server while calls are in flight. After
the gateway's hold TTL has passed, the server is started again (it bills expired holds at start) and the
ledger is counted: calls answered 200, calls the upstream received, holds billed at their reported usage,
holds billed at their bound (estimated), holds released, holds left open. A call that got a 200 or
reached the upstream and is not billed would show as "unbilled".
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from caracal.core.enforcement import ESTIMATED_RESOURCE
from caracal.core.ledger import LedgerReader
from caracal.core.windows import parse_window
from caracal.storage.home import EmbeddedHome
from tests.server.fake_upstream import serve_fake_upstream

HOLD_TTL = 2


def start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "caracal", "serve", "--port", str(port), "--log-level", "error"],
        env={**os.environ, "CARACAL_HOME": str(home)},
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("caracal serve did not start")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_round(root: Path, workers: int, delay_ms: int, load_seconds: float) -> dict[str, int]:
    home = root / "home"
    env = {**os.environ, "CARACAL_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "caracal", "init"], check=True, capture_output=True, env=env)
    with serve_fake_upstream(delay_ms=delay_ms) as fake:
        (home / "config.toml").write_text(
            f"[gateway]\nmax_output_tokens = 64\nhold_ttl = {HOLD_TTL}\nupstream_timeout = 60\n\n"
            f'[gateway.openai]\nbase_url = "{fake.base_url}/v1"\napi_key = "{fake.api_key}"\n'
        )
        embedded = EmbeddedHome(home)
        tokens = []
        for index in range(workers):
            agent = embedded.agents.register(f"worker-{index}", "bench@example.com")
            embedded.policies.create(agent.agent_id, "1000000", parse_window("total"), "USD")
            tokens.append(embedded.keys.create("agent", agent.agent_id, "bench")[1])
        embedded.prices.set("openai.gpt-4o@slow.input_tokens", "0.001", "USD")
        embedded.prices.set("openai.gpt-4o@slow.output_tokens", "0.002", "USD")
        embedded.close()

        port = free_port()
        process = start_server(home, port)
        answered = [0]
        lock = threading.Lock()
        stop = threading.Event()

        def worker(token: str) -> None:
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    body = {"model": "gpt-4o@slow", "messages": [{"role": "user", "content": "hello"}]}
                    try:
                        response = client.post(
                            f"http://127.0.0.1:{port}/v1/chat/completions",
                            content=orjson.dumps(body),
                            headers={"Authorization": f"Bearer {token}", "content-type": "application/json"},
                        )
                    except httpx.HTTPError:
                        return
                    if response.status_code == 200:
                        with lock:
                            answered[0] += 1

        threads = [threading.Thread(target=worker, args=(token,)) for token in tokens]
        for thread in threads:
            thread.start()
        time.sleep(load_seconds)
        process.send_signal(signal.SIGKILL)
        process.wait()
        stop.set()
        for thread in threads:
            thread.join()
        received = len(fake.requests)

    time.sleep(HOLD_TTL + 0.5)
    restarted = start_server(home, free_port())
    restarted.send_signal(signal.SIGTERM)
    restarted.wait(timeout=60)

    events = list(LedgerReader(home / "data" / "ledger.jsonl"))
    holds = {e.hold_id for e in events if e.kind == "hold"}
    charged: dict[str | None, set[str]] = {}
    for event in events:
        if event.is_charge:
            charged.setdefault(event.hold_id, set()).add(
                "estimated" if event.resource_type == ESTIMATED_RESOURCE else "usage"
            )
    released = {e.hold_id for e in events if e.kind == "release"}
    billed_usage = sum(1 for h in holds if charged.get(h) == {"usage"})
    billed_estimated = sum(1 for h in holds if charged.get(h) == {"estimated"})
    billed_twice = sum(1 for h in holds if len(charged.get(h, ())) > 1)
    return {
        "answered_200": answered[0],
        "received_upstream": received,
        "holds": len(holds),
        "billed_usage": billed_usage,
        "billed_estimated": billed_estimated,
        "billed_both": billed_twice,
        "released_unbilled": sum(1 for h in holds if h in released and h not in charged),
        "left_open": len(holds - released),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--delay-ms", type=int, default=300)
    parser.add_argument("--load-seconds", type=float, default=2.0)
    args = parser.parse_args()
    print(
        f"crash billing: {args.rounds} rounds, {args.workers} workers, upstream delay {args.delay_ms} ms, "
        f"SIGKILL after {args.load_seconds} s ({os.cpu_count()} CPUs)"
    )
    totals: dict[str, int] = {}
    for number in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bench-crash-") as root:
            figures = one_round(Path(root), args.workers, args.delay_ms, args.load_seconds)
        print(f"round {number + 1}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
        for key, value in figures.items():
            totals[key] = totals.get(key, 0) + value
    print("total:   " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    unbilled = max(totals["received_upstream"] - totals["billed_usage"] - totals["billed_estimated"], 0)
    print(f"calls that reached the upstream but were not billed: {unbilled}")


if __name__ == "__main__":
    main()
