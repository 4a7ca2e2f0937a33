"""The checkpoint signing key of a Caracal Core v0.1 configuration's ledger (v0.1 had none)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from caracal.config import default_signing_key_path


def v01_signing_key_path(ledger: Path) -> Path:
    """Where the checkpoint signing key of a v0.1 configuration's ledger lives.

    The Caracal home's key (``$CARACAL_HOME/keys/checkpoint.key``) when that is outside the ledger's folder.
    v0.1's default layout keeps everything in ``~/.caracal``, which is also the default Caracal home, so
    that key would sit inside the ledger's folder, which the ledger refuses (whoever can rewrite the ledger
    must not find the key to re-sign it beside it). Such a ledger gets a key of its own outside it:
    ``$XDG_CONFIG_HOME/caracal/keys/<id>/checkpoint.key`` (``~/.config`` by default), ``<id>`` derived
    from the ledger's absolute path, so each v0.1 installation keeps its own key across runs.
    """
    key = default_signing_key_path().expanduser().resolve()
    folder = ledger.expanduser().resolve().parent
    if not key.is_relative_to(folder):
        return key
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config").expanduser()
    ledger_id = hashlib.sha256(str(ledger.expanduser().resolve()).encode()).hexdigest()[:16]
    return config / "caracal" / "keys" / ledger_id / "checkpoint.key"


__all__ = ["v01_signing_key_path"]
