"""Caracal: an economic control plane for AI agents.

The public API is re-exported here; everything else is internal and may change.
"""

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

__version__ = "0.2.0"

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
