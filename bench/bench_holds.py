"""Tighter holds benchmark: prints figures, asserts nothing. Run: ``python bench/bench_holds.py``.

**Budget utilisation at the first denial.** One agent works through chat tasks on gpt-4o (o200k_base,
$2.50 / $10 per million input / output tokens) until the gateway first refuses a call; printed is
``spent / budget`` at that moment, for budgets of $0.10, $0.25, $1 and $5, once with the byte bound (one
token per byte of JSON, the gateway before) and once with the token bound (the model's tokenizer,
:mod:`caracal.server.gateway.tokens`). A task is a conversation of :data:`TURNS` calls: a system prompt
(~1.5 KB), each user turn a question plus a retrieved passage (~1-3 KB), each call sending the whole
history with ``max_tokens = 800``; the reply (:data:`REPLY_TOKENS` tokens) joins the history. The text is
English prose from this repository's documentation, picked with a fixed seed. Each call is decided as the
gateway decides it: the hold is the price of the bound (input bound + 800 output tokens), refused when the
spent amount plus the hold exceeds the budget; a granted call is billed at its real usage (tiktoken's count
of the rendered template, and the reply's tokens).

**Added latency.** The p50 time to compute the bound of one request with the tokenizer minus without it,
for requests of 1 KB, 8 KB and 84 KB of English text (the gateway bounds bodies above 32 KB in a worker
thread, so the event loop never waits that long).
"""

from __future__ import annotations

import random
import re
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from caracal.server.gateway.estimate import bound_openai_chat  # noqa: E402
from caracal.server.gateway.tokens import TokenCounter, counter_for_model  # noqa: E402

MODEL = "gpt-4o"
PRICE_IN = Decimal("0.0000025")
PRICE_OUT = Decimal("0.00001")
MAX_TOKENS = 800
REPLY_TOKENS = 220
TURNS = 6
BUDGETS = (Decimal("0.10"), Decimal("0.25"), Decimal("1"), Decimal("5"))
SIZES = (1_000, 8_000, 84_000)


def prose() -> list[str]:
    """English sentences from the repository's documentation (code, tables and headings left out)."""
    text = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        fenced = False
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("```"):
                fenced = not fenced
            elif not fenced and line and not line.startswith(("#", "|", "    ", "<", "!")):
                text.append(re.sub(r"[`*]", "", line))
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text))
    return [s for s in sentences if len(s.split()) >= 5]


def passage(rng: random.Random, sentences: list[str], size: int) -> str:
    parts: list[str] = []
    while sum(len(p) + 1 for p in parts) < size:
        parts.append(rng.choice(sentences))
    return " ".join(parts)


def real_input_tokens(counter: TokenCounter, messages: list[dict[str, Any]]) -> int:
    """What the provider bills: each message framed by 3 special tokens, role and content, plus 3 priming."""
    return 3 + sum(3 + counter.count(m["role"]) + counter.count(m["content"]) for m in messages)


def calls(seed: int = 7) -> Any:
    """An endless stream of (request body, real input tokens) of the tasks described in the docstring."""
    counter = counter_for_model(MODEL)
    assert counter is not None, "tiktoken is needed: pip install 'caracal-core[tokens]'"
    rng = random.Random(seed)
    sentences = prose()
    while True:
        history: list[dict[str, Any]] = [{"role": "system", "content": passage(rng, sentences, 1500)}]
        for _ in range(TURNS):
            question = (
                passage(rng, sentences, 200)
                + "\n\nContext:\n"
                + passage(rng, sentences, rng.randint(1000, 3000))
            )
            history.append({"role": "user", "content": question})
            body = {"model": MODEL, "max_tokens": MAX_TOKENS, "messages": list(history)}
            yield body, real_input_tokens(counter, history)
            reply_words = rng.choice(sentences).split()
            while counter.count(" ".join(reply_words)) < REPLY_TOKENS:
                reply_words += rng.choice(sentences).split()
            history.append({"role": "assistant", "content": " ".join(reply_words)})


def utilisation(budget: Decimal, counted: bool) -> tuple[Decimal, int]:
    """``(spent / budget, granted calls)`` when the first call is refused."""
    counter = counter_for_model(MODEL) if counted else None
    spent = Decimal(0)
    for granted, (body, real_in) in enumerate(calls()):
        bound, _ = bound_openai_chat(body, max_output_tokens=4096, image_tokens=2000, counter=counter)
        hold = bound.input_tokens * PRICE_IN + bound.output_tokens * PRICE_OUT
        if spent + hold > budget:
            return spent / budget, granted
        cost = real_in * PRICE_IN + REPLY_TOKENS * PRICE_OUT
        assert cost <= hold, (cost, hold)  # the bound is never below the real usage
        spent += cost
    raise AssertionError("unreachable")


def latency_us(size: int) -> tuple[float, float]:
    """p50 microseconds to bound a request of ``size`` bytes of English, without and with the tokenizer."""
    rng = random.Random(size)
    body = {"model": MODEL, "messages": [{"role": "user", "content": passage(rng, prose(), size)}]}
    counter = counter_for_model(MODEL)
    result = []
    for with_counter in (None, counter):
        samples = []
        for _ in range(max(20, 2_000_000 // size)):
            started = time.perf_counter()
            bound_openai_chat(body, max_output_tokens=4096, image_tokens=2000, counter=with_counter)
            samples.append(time.perf_counter() - started)
        result.append(statistics.median(samples) * 1e6)
    return result[0], result[1]


def main() -> None:
    started = time.perf_counter()
    counter_for_model(MODEL)
    print(f"encoding load (o200k_base, once per process): {(time.perf_counter() - started) * 1000:.0f} ms\n")
    print("Budget utilisation at the first denial (gpt-4o, English chat tasks, max_tokens 800)")
    print(f"{'budget':>8} | {'byte bound':>20} | {'token bound':>20}")
    for budget in BUDGETS:
        before, before_calls = utilisation(budget, counted=False)
        after, after_calls = utilisation(budget, counted=True)
        print(
            f"{'$' + str(budget):>8} | {before:>8.1%} ({before_calls:>3} calls) | "
            f"{after:>8.1%} ({after_calls:>3} calls)"
        )
    ratios: dict[bool, list[float]] = {False: [], True: []}
    stream = calls()
    for _ in range(120):
        body, real_in = next(stream)
        for counted in (False, True):
            counter = counter_for_model(MODEL) if counted else None
            bound, _ = bound_openai_chat(body, max_output_tokens=4096, image_tokens=2000, counter=counter)
            ratios[counted].append(bound.input_tokens / real_in)
    print(
        f"input bound / real input tokens over 120 calls: byte bound {statistics.median(ratios[False]):.2f}x "
        f"(min {min(ratios[False]):.2f}), token bound {statistics.median(ratios[True]):.3f}x "
        f"(min {min(ratios[True]):.3f})"
    )
    print("\nTime to compute the bound of one request, p50")
    print(f"{'input':>8} | {'byte bound':>12} | {'token bound':>12} | {'added':>10}")
    for size in SIZES:
        plain, counted = latency_us(size)
        print(f"{size // 1000:>5} KB | {plain:>9.0f} us | {counted:>9.0f} us | {counted - plain:>7.0f} us")


if __name__ == "__main__":
    main()
