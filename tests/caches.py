"""Reading and writing Caracal's sealed caches in tests, as someone holding the home's key could.

Tests that damage a cache's *contents* (to show each check behind the seal) re-seal it with the real key;
tests of forgery write it without the key and expect it to be ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from caracal.config import default_signing_key_path
from caracal.core.checkpoint import CheckpointSigner
from caracal.core.sealed import seal, unseal


def cache_key(purpose: str, key_path: str | os.PathLike[str] | None = None) -> bytes:
    """The key the home (``$CARACAL_HOME`` unless ``key_path``) seals caches of ``purpose`` with."""
    return CheckpointSigner.load_or_create(key_path or default_signing_key_path()).cache_key(purpose)


def read_sealed(path: Path, purpose: str, key_path: str | os.PathLike[str] | None = None) -> Any:
    return orjson.loads(unseal(cache_key(purpose, key_path), purpose, path.read_bytes()))


def write_sealed(path: Path, purpose: str, data: Any, key_path: str | os.PathLike[str] | None = None) -> None:
    path.write_bytes(seal(cache_key(purpose, key_path), purpose, orjson.dumps(data)))


def read_home_cache(home: Any, purpose: str) -> Any:
    """A sealed cache of an :class:`EmbeddedHome` (its file, or its row on a database), unsealed."""
    store = home.writer().store
    data = store.load_cache(purpose)
    assert data is not None, f"no {purpose} cache in {store.location}"
    return orjson.loads(unseal(cache_key(purpose, home.key_path), purpose, data))
