"""Caracal: an economic control plane for AI agents.

The public API is re-exported here; everything else is internal and may change.

The names are loaded on first use (PEP 562 ``__getattr__``), not when ``caracal`` is imported: every
``caracal.*`` import runs this file first, and the command line must not pay for the ledger, the Merkle
tree and the signing library before it knows which command it runs. ``from caracal import LedgerWriter``
and ``caracal.LedgerWriter`` work as before; type checkers see the plain imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from caracal.core.ledger import LedgerEvent, LedgerQuery, LedgerReader, LedgerTail, LedgerWriter
    from caracal.core.verify import VerificationReport, verify_ledger
    from caracal.exceptions import (
        CaracalError,
        CheckpointError,
        ConfigurationError,
        InvalidLedgerEventError,
        LedgerCorruptError,
        LedgerError,
        LedgerLockTimeoutError,
        LedgerReadError,
        LedgerVerificationError,
        LedgerWriteError,
        MerkleError,
        ProofError,
    )

# Public name -> the module that defines it (imported on first access).
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ("LedgerEvent", "LedgerQuery", "LedgerReader", "LedgerTail", "LedgerWriter"), "caracal.core.ledger"
    ),
    **dict.fromkeys(("VerificationReport", "verify_ledger"), "caracal.core.verify"),
    **dict.fromkeys(
        (
            "CaracalError",
            "CheckpointError",
            "ConfigurationError",
            "InvalidLedgerEventError",
            "LedgerCorruptError",
            "LedgerError",
            "LedgerLockTimeoutError",
            "LedgerReadError",
            "LedgerVerificationError",
            "LedgerWriteError",
            "MerkleError",
            "ProofError",
        ),
        "caracal.exceptions",
    ),
}

__all__ = [
    "CaracalError",
    "CheckpointError",
    "ConfigurationError",
    "InvalidLedgerEventError",
    "LedgerCorruptError",
    "LedgerError",
    "LedgerEvent",
    "LedgerLockTimeoutError",
    "LedgerQuery",
    "LedgerReadError",
    "LedgerReader",
    "LedgerTail",
    "LedgerVerificationError",
    "LedgerWriteError",
    "LedgerWriter",
    "MerkleError",
    "ProofError",
    "VerificationReport",
    "__version__",
    "verify_ledger",
]


def __getattr__(name: str) -> Any:
    """Import the module behind a public name on first access, and cache the name in this module."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'caracal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
