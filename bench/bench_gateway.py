"""Gateway benchmark: prints figures, asserts nothing. Run: ``python bench/bench_gateway.py``.

Three processes on this machine: a fake OpenAI-compatible upstream (``bench/lean_upstream.py``: the tests'
fake's replies, byte for byte, at a third of its CPU; ``--upstream test-fake`` runs the tests' fake
itself), ``caracal serve`` on a fresh home whose gateway forwards to it, and this load generator (aiohttp,
uvloop).
For 1, 50 and 200 concurrent clients, plain and streamed chat completions, the same requests go once to
the upstream directly and once through the gateway (agent key, pre-call hold, settlement from usage), in
alternating rounds so drift of this VM hits both alike. Printed per case: latency p50/p99 of each path,
the added latency (gateway minus direct, at p50 and at p99) and requests/s through the gateway.

Last, the overspend check: 200 concurrent requests against an agent whose budget covers about half of
them at their worst case; printed: granted, denied (402), the settled total against the limit.

``--workers 1,2`` measures worker processes instead: one ``caracal serve --workers N`` per N (each on its
own fresh home, all running at once, the same fake upstream behind them), the same plain and streamed
calls through each in alternating rounds; printed per case: gateway requests/s and latency p50/p99 for
each N, the throughput ratio of the most workers to the fewest (the median of each round's ratio), and
how the requests spread over each server's workers (from each worker's ``/metrics``). Last, the overspend
check through the server with the most workers.

With ``--workers``, the load comes from ``wrk`` when it is installed (``apt-get install wrk``; ``--load``
chooses), for ``--seconds`` a round: the servers' throughput is what is measured, and on a machine of
two CPUs the Python load generator's own CPU time (about a fifth of a core at 1,500 calls/s) is taken from
the workers it measures, while wrk takes a few hundredths. Each case's line names the generator.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import aiohttp
import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from caracal.core.ledger import LedgerReader  # noqa: E402
from caracal.core.windows import parse_window  # noqa: E402
from caracal.server.gateway.estimate import bound_openai_chat  # noqa: E402
from caracal.server.gateway.pricing import hold_amount  # noqa: E402
from caracal.server.gateway.tokens import counter_for_model  # noqa: E402
from caracal.storage.home import EmbeddedHome  # noqa: E402

FAKE = """
import sys, time
sys.path.insert(0, {root!r})
from tests.server.fake_upstream import serve_fake_upstream
with serve_fake_upstream(record=False, completion_tokens=16) as fake:
    print(fake.base_url, flush=True)
    while True:
        time.sleep(3600)
"""
"""``--upstream test-fake``: the tests' fake upstream, in a process of its own."""
PROVIDER_KEY = "sk-upstream-test"
MODEL = "gpt-4o"
PRICE_IN, PRICE_OUT = "0.0000025", "0.00001"


def body(stream: bool) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Summarise the quarterly report in three lines."}],
        "max_tokens": 16,
        "stream": stream,
    }


def start_upstream(upstream: str) -> tuple[subprocess.Popen[str], str]:
    """The upstream the gateway forwards to, in a process of its own: (process, base URL)."""
    command = (
        [sys.executable, str(ROOT / "bench" / "lean_upstream.py")]
        if upstream == "lean"
        else [sys.executable, "-c", FAKE.format(root=str(ROOT))]
    )
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


DATABASE: str | None = None
"""``--database``: a PostgreSQL server; each home then gets a fresh schema on it (dropped at exit)."""
_SCHEMAS: list[str] = []


def storage_table() -> str:
    """``[storage] url`` of a fresh schema when benchmarking on PostgreSQL ('' on files)."""
    if DATABASE is None:
        return ""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ["CARACAL_TEST_DATABASE_URL"] = DATABASE
    from tests.pg import create_schema

    schema, url = create_schema()
    _SCHEMAS.append(schema)
    return f'[storage]\nurl = "{url}"\n\n'


def drop_schemas() -> None:
    if _SCHEMAS:
        from tests.pg import drop_schema

        for schema in _SCHEMAS:
            drop_schema(schema)


def make_home(home: Path, upstream: str, limit: str) -> tuple[str, str]:
    """A home whose gateway forwards to ``upstream``; two agents with keys: "bench" (``limit`` per day)
    and "tight" (for the overspend check). Returns their tokens."""
    (home / "config.toml").write_text(
        storage_table() + f'[gateway.openai]\nbase_url = "{upstream}/v1"\napi_key = "{PROVIDER_KEY}"\n',
        encoding="utf-8",
    )
    if DATABASE is not None:
        from caracal.config import load_settings
        from caracal.storage.backends import open_backend

        backend = open_backend(home, load_settings(home))
        backend.initialize()
        backend.close()
    embedded = EmbeddedHome(home)
    tokens = []
    for name in ("bench", "tight"):
        agent = embedded.agents.register(name, "bench@example.com")
        embedded.policies.create(agent.agent_id, limit, parse_window("daily", None, "UTC"), "USD")
        tokens.append(embedded.keys.create("agent", agent.agent_id)[1])
    for kind, price in (("input_tokens", PRICE_IN), ("output_tokens", PRICE_OUT)):
        embedded.prices.set(f"openai.{MODEL}.{kind}", price, "USD")
    embedded.close()
    return tokens[0], tokens[1]


def start_gateway(home: Path, port: int, workers: int = 1) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "caracal", "--home", str(home), "serve", "--port", str(port), "--log-level",
         "warning", "--workers", str(workers)],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("the gateway did not start")


async def run(
    url: str, key: str, stream: bool, clients: int, total: int
) -> tuple[list[float], float, dict[int, int]]:
    """``total`` requests from ``clients`` concurrent loops: latencies (to the last byte), req/s, statuses."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    payload = orjson.dumps(body(stream))
    remaining = [total]
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                started = time.perf_counter()
                async with session.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, total / elapsed, statuses


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("CARACAL_BENCH_KEY")
wrk.body = os.getenv("CARACAL_BENCH_BODY")
"""
_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def run_wrk(url: str, key: str, stream: bool, clients: int, seconds: int) -> tuple[float, float, float, int]:
    """``clients`` connections of ``wrk`` for ``seconds``: (requests/s, p50 ms, p99 ms, failed), where
    failed counts non-2xx responses and socket errors."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    env = {**os.environ, "CARACAL_BENCH_KEY": key, "CARACAL_BENCH_BODY": orjson.dumps(body(stream)).decode()}
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "30s", "--latency", "-s",
             script.name, url],
            env=env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script.name)

    def latency(label: str) -> float:
        found = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
        if found is None:
            raise SystemExit(f"unexpected wrk output (no {label} latency):\n{out}")
        return float(found.group(1)) * _WRK_UNITS[found.group(2)]

    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.MULTILINE)
    if rate is None:
        raise SystemExit(f"unexpected wrk output:\n{out}")
    failed = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed += sum(int(n) for n in errors.groups()) if errors else 0
    return float(rate.group(1)), latency("50%"), latency("99%"), failed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def settled_total(home: Path, agent: str) -> tuple[Decimal, int]:
    embedded = EmbeddedHome(home)
    agent_id = embedded.agents.get(agent).agent_id
    total, holds = Decimal(0), 0
    for event in LedgerReader(embedded.ledger):
        if event.agent_id == agent_id and event.is_charge:
            total += event.cost
        holds += event.agent_id == agent_id and event.kind == "hold"
    embedded.close()
    return total, holds


def worker_requests(base: str, admin: str, workers: int) -> dict[str, int]:
    """Gateway calls each worker of a server answered (2xx) so far: ``{pid: count}``, from each worker's
    ``/metrics`` (scraped on fresh connections until every worker answered; each keeps its own figures)."""
    seen: dict[str, int] = {}
    for _ in range(200):
        text = httpx.get(f"{base}/metrics", headers={"authorization": f"Bearer {admin}"}).text
        pid = re.search(r'^caracal_server_process\{pid="(\d+)"\}', text, re.MULTILINE)
        if pid is None:
            break
        seen[pid.group(1)] = sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            if line.startswith("caracal_http_request_seconds_count{")
            and 'route="/v1/chat/completions"' in line
            and 'status="2xx"' in line
        )
        if len(seen) >= workers:
            break
    return seen


def paired_ratio(more: list[float], fewer: list[float]) -> float:
    """The median of each round's ratio (the servers run one after the other within a round, so a drift of
    this VM's speed between rounds cancels out of each ratio, not out of a ratio of medians)."""
    return statistics.median(m / f for m, f in zip(more, fewer, strict=True))


def overspend_check(home: Path, base: str, tight_key: str) -> None:
    """200 concurrent requests of the "tight" agent against a budget for about 100 of them at their worst."""
    bound, _ = bound_openai_chat(  # as the gateway bounds it (with the model's tokenizer when available)
        body(False), max_output_tokens=4096, image_tokens=2000, counter=counter_for_model(MODEL)
    )
    embedded = EmbeddedHome(home)
    now = datetime.now(timezone.utc)
    worst, _ = hold_amount(embedded.prices.pricebook(), "openai", MODEL, bound, now)
    limit = worst * 100
    tight = embedded.agents.get("tight").agent_id
    for policy in embedded.policies.active_for(tight):
        embedded.policies.update(policy.policy_id, limit=limit, reason="bench overspend check")
    embedded.close()
    _, _, statuses = asyncio.run(run(base + "/v1/chat/completions", tight_key, False, 200, 200))
    time.sleep(1.0)  # settlements are queued as responses complete
    spent, holds = settled_total(home, "tight")
    print(
        f"overspend check: 200 concurrent requests, budget {limit} USD (~100 worst cases of {worst}): "
        f"granted {statuses.get(200, 0)}, denied {statuses.get(402, 0)}, holds {holds}, settled "
        f"{spent} USD <= limit: {spent <= limit}"
    )


def compare_workers(args: argparse.Namespace, upstream: str, workdir: Path) -> None:
    """``--workers``: the same calls through one ``caracal serve --workers N`` per N, alternating rounds."""
    counts = [int(n) for n in args.workers.split(",")]
    servers = []
    try:
        for index, workers in enumerate(counts):
            home = workdir / f"home-{workers}"
            home.mkdir()
            bench_key, tight_key = make_home(home, upstream, "1000000")
            port = args.port + index
            process = start_gateway(home, port, workers)
            admin = (home / "keys" / "admin.key").read_text().strip()
            servers.append((workers, home, f"http://127.0.0.1:{port}", process, bench_key, tight_key, admin))
        python = sys.version.split()[0]
        load = args.load if args.load != "auto" else ("wrk" if shutil.which("wrk") else "aiohttp")
        rounds = f"{args.seconds} s" if load == "wrk" else "8 requests per client"
        print(
            f"gateway workers benchmark: {os.cpu_count()} CPUs, Python {python}, {args.upstream} upstream, "
            f"{MODEL}; load from {load}, {args.rounds} rounds of {rounds} per case and server"
        )
        ratio = f"{counts[-1]}/{counts[0]} ratio" if len(counts) > 1 else ""
        print(
            f"{'case':<14}"
            + "".join(f"{f'{n} worker(s): req/s  p50/p99 ms':>36}" for n in counts)
            + f"{ratio:>14}"
        )
        for stream in (False, True):
            for clients in (50, 200):
                rates: dict[int, list[float]] = {n: [] for n in counts}
                latencies: dict[int, list[float]] = {n: [] for n in counts}  # aiohttp: every call's
                quantiles: dict[int, list[tuple[float, float]]] = {n: [] for n in counts}  # wrk: each round's
                for _ in range(args.rounds):
                    for workers, _home, base, _process, bench_key, _tight, _admin in servers:
                        url = base + "/v1/chat/completions"
                        if load == "wrk":
                            rate, p50, p99, failed = run_wrk(url, bench_key, stream, clients, args.seconds)
                            quantiles[workers].append((p50, p99))
                            if failed:
                                print(f"  {failed} failed requests through {workers} worker(s)")
                        else:
                            lat, rate, statuses = asyncio.run(
                                run(url, bench_key, stream, clients, clients * 8)
                            )
                            if set(statuses) != {200}:
                                print(f"  unexpected statuses through {workers} worker(s): {statuses}")
                            latencies[workers] += lat
                        rates[workers].append(rate)
                for n, every in latencies.items():
                    if every:
                        quantiles[n] = [(pct(every, 0.5), pct(every, 0.99))]
                name = f"{'stream' if stream else 'plain'} x{clients}"
                print(
                    f"{name:<14}"
                    + "".join(
                        f"{statistics.median(rates[n]):>21.0f}"
                        f"{statistics.median(q[0] for q in quantiles[n]):>8.2f}/"
                        f"{statistics.median(q[1] for q in quantiles[n]):<6.2f}"
                        for n in counts
                    )
                    + (f"{paired_ratio(rates[counts[-1]], rates[counts[0]]):>14.2f}" if ratio else "")
                )
        for workers, _home, base, _process, _bench, _tight, admin in servers:
            spread = worker_requests(base, admin, workers)
            shares = " / ".join(f"{count:,}" for count in spread.values())
            print(f"requests answered per worker, {workers} worker(s): {shares}")
        workers, home, base, _process, _bench, tight_key, _admin = servers[-1]
        print(f"through {workers} worker(s):")
        overspend_check(home, base, tight_key)
    finally:
        for server in servers:
            server[3].terminate()
        for server in servers:
            server[3].wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating direct/gateway rounds per case")
    parser.add_argument("--port", type=int, default=8797)
    parser.add_argument(
        "--workers",
        default=None,
        help="compare `caracal serve --workers N` for these N (comma-separated, e.g. 1,2) instead",
    )
    parser.add_argument(
        "--load",
        choices=("auto", "wrk", "aiohttp"),
        default="auto",
        help="with --workers: the load generator (auto: wrk when installed, else this script's aiohttp)",
    )
    parser.add_argument(
        "--upstream",
        choices=("lean", "test-fake"),
        default="lean",
        help="what the gateway forwards to: bench/lean_upstream.py (default) or the tests' fake upstream; "
        "both send the same bytes, the lean one with a fraction of the CPU",
    )
    parser.add_argument(
        "--seconds", type=int, default=4, help="with --workers and wrk: the length of one round (seconds)"
    )
    parser.add_argument(
        "--database",
        default=None,
        help="keep each home in a fresh schema of this PostgreSQL server (default: the home's files)",
    )
    args = parser.parse_args()
    global DATABASE
    DATABASE = args.database
    try:
        _main(args)
    finally:
        drop_schemas()


def _main(args: argparse.Namespace) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    fake, upstream = start_upstream(args.upstream)
    if args.workers:
        try:
            compare_workers(args, upstream, Path(tempfile.mkdtemp(prefix="caracal-bench-gw-")))
        finally:
            fake.terminate()
        return
    workdir = Path(tempfile.mkdtemp(prefix="caracal-bench-gw-"))
    home = workdir / "home"
    home.mkdir()
    bench_key, tight_key = make_home(home, upstream, "1000000")
    gateway = start_gateway(home, args.port)
    base = f"http://127.0.0.1:{args.port}"
    try:
        python = sys.version.split()[0]
        print(f"gateway benchmark: {os.cpu_count()} CPUs, Python {python}, {args.upstream} upstream, {MODEL}")
        print(f"{'case':<16}{'direct p50/p99 ms':>20}{'gateway p50/p99 ms':>22}{'added p50/p99 ms':>20}"
              f"{'gateway req/s':>15}{'direct req/s':>14}")  # fmt: skip
        for stream in (False, True):
            for clients in (1, 50, 200):
                total = 300 if clients == 1 else clients * 8
                direct: list[float] = []
                through: list[float] = []
                rates: list[float] = []
                direct_rates: list[float] = []
                for _ in range(args.rounds):
                    lat, rate, _ = asyncio.run(
                        run(upstream + "/v1/chat/completions", PROVIDER_KEY, stream, clients, total)
                    )
                    direct += lat
                    direct_rates.append(rate)
                    lat, rate, statuses = asyncio.run(
                        run(base + "/v1/chat/completions", bench_key, stream, clients, total)
                    )
                    if set(statuses) != {200}:
                        print(f"  unexpected statuses through the gateway: {statuses}")
                    through += lat
                    rates.append(rate)
                name = f"{'stream' if stream else 'plain'} x{clients}"
                added50 = pct(through, 0.5) - pct(direct, 0.5)
                added99 = pct(through, 0.99) - pct(direct, 0.99)
                print(
                    f"{name:<16}{pct(direct, 0.5):>10.2f}/{pct(direct, 0.99):<9.2f}"
                    f"{pct(through, 0.5):>12.2f}/{pct(through, 0.99):<9.2f}"
                    f"{added50:>10.2f}/{added99:<9.2f}{statistics.median(rates):>15.0f}"
                    f"{statistics.median(direct_rates):>14.0f}"
                )
        # Overspend: a budget for about half of 200 requests at their worst case.
        overspend_check(home, base, tight_key)
    finally:
        gateway.terminate()
        gateway.wait(30)
        fake.terminate()


if __name__ == "__main__":
    main()
