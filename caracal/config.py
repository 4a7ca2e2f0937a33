"""Where Caracal keeps its files.

The home folder is ``$CARACAL_HOME`` when set, else ``~/.caracal``. Inside it:

- ``data/ledger.jsonl`` (and its sidecars): the default ledger;
- ``keys/checkpoint.key`` (owner-only) and ``keys/checkpoint.key.pub``: the Ed25519 key that signs ledger
  checkpoints. It lives apart from ``data/`` on purpose: whoever can rewrite the ledger's folder should not
  find the key that would let them re-sign it.

Stdlib only, so every layer may use it.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "CARACAL_HOME"


def caracal_home() -> Path:
    """The home folder: ``$CARACAL_HOME``, else ``~/.caracal``."""
    configured = os.environ.get(HOME_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".caracal"


def default_ledger_path(home: Path | None = None) -> Path:
    return (home or caracal_home()) / "data" / "ledger.jsonl"


def default_signing_key_path(home: Path | None = None) -> Path:
    return (home or caracal_home()) / "keys" / "checkpoint.key"
