"""CLI startup benchmark: prints figures, asserts nothing. Run: ``python bench/bench_startup.py``.

Times each command as a fresh process, the way a person or a script runs it: the ``caracal`` console
script installed beside this Python (``python -m caracal`` when there is none), against a temporary home
with a few agents, policies and charges (``--dir``, default ``bench/.data``). Runs are interleaved across
the commands (so drifting machine load spreads over all of them) and the median wall time is printed with
the fastest and slowest run, next to a bare ``python -c pass``: the floor no command can go below; and the
median CPU time (user + system) of the process, which other load on a shared machine disturbs less. The
commands run with bytecode caches, as an installed package has them (``PYTHONDONTWRITEBYTECODE`` is
dropped for them, so the warm-up run writes the caches of an editable checkout). ``--no-bytecode-cache``
keeps ``PYTHONDONTWRITEBYTECODE=1`` instead: in an editable checkout without ``__pycache__`` folders (the
development VM sets that variable) every run then compiles each Caracal module it imports.

The target from the "first contact" issue: ``--help`` and the common commands (``budget status``,
``ledger query``, ``agent list``) under 0.15 s each.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS: tuple[tuple[str, ...], ...] = (
    ("--help",),
    ("--version",),
    ("budget", "status", "--agent-id", "lead"),
    ("budget", "status"),
    ("ledger", "query"),
    ("agent", "list"),
    ("policy", "list"),
)


def caracal_command() -> list[str]:
    """The installed console script when there is one (what people run), else ``python -m caracal``."""
    script = Path(sys.executable).with_name("caracal")
    return [str(script)] if script.exists() else [sys.executable, "-m", "caracal"]


def build_home(home: Path, caracal: list[str], events: int, env: dict[str, str]) -> None:
    """``caracal init``, then a lead with three workers, a policy on each, and ``events`` priced charges."""
    from caracal.sdk.client import CaracalClient  # here: after main() decided whether to write bytecode

    subprocess.run([*caracal, "init"], env=env, check=True, stdout=subprocess.DEVNULL)
    with CaracalClient(home) as client:
        client.register_agent("lead", "bench@example.com")
        workers = [client.register_agent(f"worker-{n}", "bench@example.com", parent="lead") for n in range(3)]
        client.create_policy("lead", "1000", "monthly")
        for worker in workers:
            client.create_policy(worker.name, "100", "daily")
        client.set_price("tool.search.calls", "0.005")
        for n in range(events):
            client.emit_event(workers[n % 3].agent_id, "tool.search.calls", 1)


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall time, CPU time (user + system) and exit code of one run of ``argv``."""
    cpu = cpu_of_children()
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, cpu_of_children() - cpu, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each command (default 15)")
    parser.add_argument("--events", type=int, default=50, help="charges in the home (default 50)")
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / ".data")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run with PYTHONDONTWRITEBYTECODE=1 (no caches are written; see above)",
    )
    args = parser.parse_args()
    sys.dont_write_bytecode = args.no_bytecode_cache or sys.dont_write_bytecode

    args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-startup-", dir=args.dir))
    caracal = caracal_command()
    try:
        home = root / "home"
        env = dict(os.environ, CARACAL_HOME=str(home))
        if args.no_bytecode_cache:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        build_home(home, caracal, args.events, env)
        cases: list[tuple[str, list[str]]] = [("python -c pass", [sys.executable, "-c", "pass"])]
        cases += [("caracal " + " ".join(command), [*caracal, *command]) for command in COMMANDS]
        samples: dict[str, list[float]] = {label: [] for label, _ in cases}
        cpu: dict[str, list[float]] = {label: [] for label, _ in cases}
        codes: dict[str, set[int]] = {label: set() for label, _ in cases}
        for _label, argv in cases:  # warm-up: bytecode caches, page cache
            time_once(argv, env)
        for _ in range(args.runs):
            for label, argv in cases:
                elapsed, used, code = time_once(argv, env)
                samples[label].append(elapsed)
                cpu[label].append(used)
                codes[label].add(code)

        print(
            f"CLI startup on {home} ({os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
            f"{' '.join(Path(part).name for part in caracal)}; {args.events} charges; "
            f"{'no bytecode caches written; ' if args.no_bytecode_cache else ''}"
            f"median wall time of {args.runs} runs, fastest-slowest; median CPU time)"
        )
        floor = statistics.median(samples[cases[0][0]])
        for label, _ in cases:
            runs = samples[label]
            median = statistics.median(runs)
            failed = sorted(codes[label] - {0})
            note = f"  EXIT {failed}" if failed else ""
            print(
                f"{label:<40} {median:6.3f} s  ({min(runs):.3f}-{max(runs):.3f})  "
                f"{median / floor:5.1f}x python   cpu {statistics.median(cpu[label]):6.3f} s{note}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
