"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a real ``caracal serve``.

Without chromium (``/usr/bin/chromium``, or ``$CARACAL_CHROMIUM``) or the ``playwright`` package the tests are
skipped locally with the reason, and fail under ``CI=true`` (``.ci/run`` installs chromium when missing):
CI must never pass by skipping the browser.

- ``dashboard``: a home with agents ``team`` (a parent), ``worker`` (its child) and ``other`` (unrelated),
  their keys, daily policies and a price, served by ``caracal serve`` (a real process) on the test's backend;
- ``page``: a fresh browser page that records every console error and uncaught exception; a test fails at
  its end if any page it visited logged one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.test_cli_serve import serving

CHROMIUM = os.environ.get("CARACAL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RESOURCE = "tool.search"
UNIT_PRICE = "0.25"
LIMITS = {"team": "100.00", "worker": "10.00", "other": "10.00"}


def browser_unavailable(reason: str) -> None:
    """Skip (locally) or fail (CI) because the browser cannot run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        browser_unavailable("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        browser_unavailable(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Errors:
    messages: list[str] = field(default_factory=list)


@pytest.fixture
def expected_errors() -> list[str]:
    """Console messages a test expects (e.g. the 403 of a page it must not see); every other error fails."""
    return []


@pytest.fixture
def page(browser: Any, expected_errors: list[str]) -> Iterator[Any]:
    """A page in a fresh context (no cookies); fails the test if any page logged a JavaScript error (other
    than those the test expects)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    errors = Errors()
    found = context.new_page()
    found.on("console", lambda m: errors.messages.append(f"console: {m.text}") if m.type == "error" else None)
    found.on("pageerror", lambda e: errors.messages.append(f"pageerror: {e}"))
    found.set_default_timeout(30_000)
    yield found
    context.close()
    unexpected = [m for m in errors.messages if not any(e in m for e in expected_errors)]
    assert unexpected == [], unexpected


@dataclass
class Dashboard:
    base_url: str
    home: Path
    admin_token: str
    tokens: dict[str, str]
    agent_ids: dict[str, str]
    policy_ids: dict[str, str]
    key_ids: dict[str, str]

    def api(self, method: str, path: str, who: str = "admin", **kwargs: Any) -> httpx.Response:
        token = self.admin_token if who == "admin" else self.tokens[who]
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.request(method, f"{self.base_url}/api/v1{path}", headers=headers, timeout=30, **kwargs)

    def spend(self, *charges: tuple[str, str]) -> None:
        """Record charges ``(agent, quantity)`` from another process (the SDK on the home, embedded)."""
        run_sdk(self.home, f"for agent, quantity in {list(charges)!r}:\n"
                           f"    client.emit_event(agent, {RESOURCE!r}, quantity)\n")  # fmt: skip

    def sign_in(self, page: Any, who: str = "admin") -> None:
        token = self.admin_token if who == "admin" else self.tokens[who]
        page.goto(f"{self.base_url}/ui/login")
        page.fill("#key", token)
        page.click("button[type=submit]")
        page.wait_for_url("**/ui/overview")


def run_sdk(home: Path, body: str) -> str:
    """Run ``body`` in a new Python process with ``client`` = ``CaracalClient(home)``."""
    code = "from caracal.sdk.client import CaracalClient\nclient = CaracalClient(%r)\n%s\nclient.close()\n"
    done = subprocess.run(
        [sys.executable, "-c", code % (str(home), body)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def populate(home: Path) -> dict[str, Any]:
    """Agents, keys, policies and a price, made through the library before the server starts."""
    from caracal.core.windows import policy_window
    from caracal.storage.home import EmbeddedHome

    subprocess.run([sys.executable, "-m", "caracal", "init"], check=True, capture_output=True)
    found: dict[str, Any] = {"tokens": {}, "agent_ids": {}, "policy_ids": {}, "key_ids": {}}
    embedded = EmbeddedHome(home)
    try:
        team = embedded.agents.register("team", "ops@example.com")
        worker = embedded.agents.register("worker", "ops@example.com", team.agent_id)
        other = embedded.agents.register("other", "someone@example.com")
        for agent in (team, worker, other):
            key, token = embedded.keys.create("agent", agent.agent_id, f"{agent.name} key")
            found["tokens"][agent.name] = token
            found["key_ids"][agent.name] = key.key_id
            found["agent_ids"][agent.name] = agent.agent_id
            policy = embedded.policies.create(
                agent.agent_id, LIMITS[agent.name], policy_window("daily", None, "UTC"), "USD"
            )
            found["policy_ids"][agent.name] = policy.policy_id
        embedded.prices.set(RESOURCE, UNIT_PRICE, "USD")
        found["admin"] = embedded.admin_key_path.read_text().strip()
    finally:
        embedded.close()
    return found


@pytest.fixture
def dashboard(caracal_home: Path) -> Iterator[Dashboard]:
    made = populate(caracal_home)
    with serving(caracal_home) as (base_url, _process):
        yield Dashboard(
            base_url, caracal_home, made["admin"], made["tokens"], made["agent_ids"], made["policy_ids"],
            made["key_ids"],
        )  # fmt: skip


def figure(page: Any, selector: str) -> Decimal:
    """The exact Decimal shown by the element ``selector``."""
    return Decimal(page.locator(selector).inner_text().strip())
