"""Every error Caracal raises, rooted at :class:`CaracalError`.

Callers can catch ``CaracalError`` to handle anything Caracal refuses, or a narrower class to act on one
cause. Messages are written for a person: they say what was wrong and, where possible, what to do.

The tree::

    CaracalError
    ├── ConfigurationError            a setting, path or key is missing or unusable
    ├── LedgerError                   anything about the ledger file
    │   ├── InvalidLedgerEventError   bad input to an append; nothing was written (also a ValueError)
    │   ├── LedgerWriteError          an append failed (I/O error, lock timeout, refused ledger)
    │   │   └── LedgerLockTimeoutError    the exclusive lock was not obtained in time
    │   ├── LedgerReadError           the ledger could not be read
    │   │   └── LedgerCorruptError        a complete line does not parse, or ids are not contiguous
    │   └── LedgerVerificationError   ``verify`` found a problem (tampering, truncation, corruption)
    └── MerkleError                   Merkle trees, proofs and checkpoints
        ├── ProofError                a proof could not be produced or does not verify
        └── CheckpointError           a checkpoint file or signature is missing, malformed or invalid
"""

from __future__ import annotations


class CaracalError(Exception):
    """Root of every error Caracal raises."""


class ConfigurationError(CaracalError):
    """A setting, path or key is missing or unusable."""


class LedgerError(CaracalError):
    """Anything that went wrong with the ledger."""


class InvalidLedgerEventError(LedgerError, ValueError):
    """Input to an append was invalid; nothing was written."""


class LedgerWriteError(LedgerError):
    """An append failed and was not acknowledged; no partial line was left behind."""


class LedgerLockTimeoutError(LedgerWriteError):
    """The ledger's exclusive lock could not be obtained within the timeout."""


class LedgerReadError(LedgerError):
    """The ledger could not be read."""


class LedgerCorruptError(LedgerReadError):
    """A complete line does not parse, or event ids are not contiguous.

    ``line_number`` (1-based) and ``event_id`` (when known) say where.
    """

    def __init__(self, message: str, *, line_number: int | None = None, event_id: int | None = None):
        super().__init__(message)
        self.line_number = line_number
        self.event_id = event_id


class LedgerVerificationError(LedgerError):
    """Verification found a problem; ``first_bad_event_id`` names the first bad event when known."""

    def __init__(self, message: str, *, first_bad_event_id: int | None = None):
        super().__init__(message)
        self.first_bad_event_id = first_bad_event_id


class MerkleError(CaracalError):
    """Merkle trees, proofs and checkpoints."""


class ProofError(MerkleError):
    """A proof could not be produced for the request, or a proof does not verify."""


class CheckpointError(MerkleError):
    """A checkpoint file or signature is missing, malformed or invalid."""
