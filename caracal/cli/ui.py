"""``caracal ui``: print the dashboard's address (``/ui`` of a running ``caracal serve``) and open it in a
browser when this machine has a display. Host and port default to the home's ``[server]`` settings."""

from __future__ import annotations

import os
import sys
import webbrowser

import click

from caracal.cli.render import handle_errors


def has_display() -> bool:
    """Whether a browser window could be shown here (macOS and Windows always; elsewhere an X11 or Wayland
    display)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def dashboard_url(url: str | None, host: str | None, port: int | None) -> str:
    if url is not None:
        base = url.rstrip("/")
        return base if base.endswith("/ui") else f"{base}/ui"
    if host is None or port is None:
        from caracal.config import caracal_home, load_settings

        settings = load_settings(caracal_home())
        host = host or settings.host
        port = port or settings.port
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/ui"


@click.command("ui")
@click.option("--url", default=None, help="The server's address, e.g. https://caracal.example.com.")
@click.option("--host", default=None, help="The server's host (default: server.host of the home).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Its port (default: server.port).")
@click.option("--no-browser", is_flag=True, help="Only print the address.")
@handle_errors
def ui_command(url: str | None, host: str | None, port: int | None, no_browser: bool) -> None:
    """Open the dashboard of a running 'caracal serve' (or print its address).

    Sign in there with the admin key (keys/admin.key in the home) or an agent key."""
    address = dashboard_url(url, host, port)
    click.echo(address)
    if not no_browser and has_display():
        webbrowser.open(address)
