"""The benchmarks' lean upstream (``bench/lean_upstream.py``) answers what the tests' fake answers, byte for
byte, so a gateway benchmark behind it measures the same work as behind the fake (only cheaper for the
upstream). Both run as real processes; requests are real HTTP over keep-alive connections."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.fake_upstream import serve_fake_upstream

ROOT = Path(__file__).resolve().parents[2]
KEY = {"authorization": "Bearer sk-upstream-test"}


@pytest.fixture(scope="module")
def lean() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "lean_upstream.py")], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    try:
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(10)


def _comparable(response: httpx.Response) -> tuple[int, str | None, bytes]:
    """Status, content type and body, without the reply's ``created`` (the second it was built)."""
    return (
        response.status_code,
        response.headers.get("content-type"),
        re.sub(rb'"created":\d+', b"", response.content),
    )


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("max_tokens", [None, 3], ids=["default-length", "max-tokens-3"])
def test_the_lean_upstream_replies_as_the_test_fake_does(
    lean: str, stream: bool, max_tokens: int | None
) -> None:
    body: dict[str, object] = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    with serve_fake_upstream(record=False, completion_tokens=16) as fake, httpx.Client() as client:
        expected = _comparable(client.post(f"{fake.base_url}/v1/chat/completions", json=body, headers=KEY))
        for _ in range(3):  # built once, then served again on the same connection
            got = _comparable(client.post(f"{lean}/v1/chat/completions", json=body, headers=KEY))
            assert got == expected
    assert expected[0] == 200
    assert b'"usage"' in expected[2]


def test_the_lean_upstream_refuses_what_the_benchmark_does_not_send(lean: str) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client() as client:
        wrong_key = client.post(
            f"{lean}/v1/chat/completions", json=body, headers={"authorization": "Bearer x"}
        )
        assert wrong_key.status_code == 401
        assert wrong_key.json()["error"]["message"] == "invalid api key"
        elsewhere = client.get(f"{lean}/v1/models", headers=KEY)
        assert elsewhere.status_code == 404
        not_json = client.post(f"{lean}/v1/chat/completions", content=b"{", headers=KEY)
        assert not_json.status_code == 400
        # the connection still serves a good request after the refusals
        assert client.post(f"{lean}/v1/chat/completions", json=body, headers=KEY).status_code == 200
