"""Every dashboard asset ships in the package (no CDN): the templates and static files are package data
that a non-editable install includes, and no page refers to anything outside the server."""

from __future__ import annotations

import fnmatch
import re
import sys
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def assets() -> list[str]:
    """The dashboard's asset files, relative to the ``caracal`` package."""
    package = resources.files("caracal")
    found = []
    for folder in ("templates", "static"):
        for item in (package / "server" / "ui" / folder).iterdir():
            found.append(f"server/ui/{folder}/{item.name}")
    return sorted(found)


def test_every_asset_is_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = patterns["caracal"]
    names = assets()
    expected = {"server/ui/static/ui.css", "server/ui/static/ui.js", "server/ui/templates/base.html"}
    assert expected <= set(names)
    for name in names:
        assert any(fnmatch.fnmatch(name, glob) for glob in globs), f"{name} would be left out of the wheel"


def test_no_page_loads_anything_from_elsewhere() -> None:
    package = resources.files("caracal") / "server" / "ui"
    for name in assets():
        text = (package / name.removeprefix("server/ui/")).read_text("utf-8")
        for url in re.findall(r"""(?:src|href)=["']([^"']+)""", text):
            assert not re.match(r"^(https?:)?//", url), f"{name} loads {url}"
