"""``caracal demo --serve`` (the demo, then its home served while its agents keep spending) and
``caracal ui`` (the dashboard's address)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.cli.test_cli_serve import reserved_port


def test_caracal_ui_prints_the_dashboards_address(caracal_home: Path) -> None:
    env = {**os.environ, "DISPLAY": "", "WAYLAND_DISPLAY": ""}
    run = [sys.executable, "-m", "caracal", "ui"]
    done = subprocess.run([*run, "--port", "9123"], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "http://127.0.0.1:9123/ui"
    done = subprocess.run([*run, "--url", "https://c.example.com/"], capture_output=True, text=True, env=env)
    assert done.stdout.strip() == "https://c.example.com/ui"


def test_demo_serve_shows_the_agents_spending_live_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    home = tmp_path / "demo-home"
    with reserved_port() as port:
        process = subprocess.Popen(
            [sys.executable, "-m", "caracal", "demo", "--home", str(home), "--steps", "5", "--serve",
             "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            key = None
            deadline = time.monotonic() + 120  # a bound on waiting, not a performance assertion
            lines = []
            while key is None and time.monotonic() < deadline:
                line = process.stdout.readline()
                if not line and process.poll() is not None:
                    pytest.fail("the demo exited: " + "".join(lines))
                lines.append(line)
                found = re.search(r"sign in with the admin key: (ck_\S+)", line)
                key = found.group(1) if found else None
            assert key is not None, "".join(lines)
            assert any(f"http://127.0.0.1:{port}/ui" in line for line in lines)
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
            for _ in range(200):
                try:
                    if client.post("/ui/login", data={"key": key}).status_code == 303:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            first = client.get("/ui/state").json()["ledger_size"]
            while client.get("/ui/state").json()["ledger_size"] <= first:  # the agents keep spending
                assert time.monotonic() < deadline + 60, "no new spend"
                time.sleep(0.5)
            assert "scout" in client.get("/ui/overview").text
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=60) == 0, process.stdout.read()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
