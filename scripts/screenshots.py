"""Screenshots of the dashboard for the README: ``python scripts/screenshots.py``.

Runs ``caracal demo --serve`` on a temporary home, signs in with its admin key in Debian's chromium
(Playwright), lets the demo's agents spend for a few seconds, creates two alert rules (delivered to a
receiver in this script), and writes ``docs/screenshots/overview.png``, ``agent.png``, ``ledger.png``,
``alerts.png`` (desktop) and ``phone.png`` (the overview on a phone-sized screen).
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Receiver(BaseHTTPRequestHandler):
    """A webhook receiver for the alerts page's deliveries (answers 200 to everything)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--spend-seconds", type=float, default=8.0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="caracal-screens-")) / "home"
    demo = subprocess.Popen(
        [sys.executable, "-m", "caracal", "demo", "--home", str(home), "--serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        key = None
        for line in demo.stdout:
            found = re.search(r"sign in with the admin key: (ck_\S+)", line)
            if found:
                key = found.group(1)
                break
        if key is None:
            raise SystemExit("the demo did not start its server")
        time.sleep(args.spend_seconds)  # let the agents spend a little on the dashboard
        base = f"http://127.0.0.1:{port}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}/ui/login")
            page.fill("#key", key)
            page.click("button[type=submit]")
            page.wait_for_url("**/ui/overview")
            receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
            threading.Thread(target=receiver.serve_forever, daemon=True).start()
            page.goto(f"{base}/ui/alerts")  # two rules, so the alerts page has something to show
            for name, watch, threshold in (("lead at 10%", "threshold", "0.1"), ("denials", "denied", "")):
                page.fill("input[name=name]", name)
                page.fill("input[name=url]", f"http://127.0.0.1:{receiver.server_address[1]}/hook")
                page.select_option("select[name=on]", watch)
                page.fill("input[name=threshold]", threshold)
                page.fill("input[name=agent]", "research-lead")
                page.click("#new-rule button[type=submit]")
            time.sleep(5)  # the server's sender delivers what fired
            shots = {
                "alerts": "/ui/alerts",
                "overview": "/ui/overview",
                "agent": "/ui/agents/research-lead?granularity=hour",
                "ledger": "/ui/ledger",
            }
            for name, path in shots.items():
                page.goto(base + path)
                page.screenshot(path=str(args.out / f"{name}.png"), full_page=True)
                print(f"wrote {args.out / f'{name}.png'}")
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto(f"{base}/ui/overview")
            page.screenshot(path=str(args.out / "phone.png"), full_page=False)
            print(f"wrote {args.out / 'phone.png'}")
            browser.close()
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()


if __name__ == "__main__":
    main()
