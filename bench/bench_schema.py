"""A fresh PostgreSQL schema for a benchmark, made and dropped with the tests' helpers (``tests/pg.py``)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def fresh_schema(server: str | None) -> Iterator[tuple[str | None, str | None]]:
    """``(schema, url)`` of a fresh schema on the PostgreSQL ``server``, dropped when the block ends;
    ``(None, None)`` without a server (the benchmark runs on files)."""
    if server is None:
        yield None, None
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ["CARACAL_TEST_DATABASE_URL"] = server
    from tests.pg import create_schema, drop_schema

    schema, url = create_schema()
    try:
        yield schema, url
    finally:
        drop_schema(schema)
