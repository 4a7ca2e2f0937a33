"""Authenticated cache files: caches derived from the ledger that an attacker may have edited.

A cache beside the ledger (the budget snapshot, the Merkle frontier) saves a replay, but it lives in the
data folder, where anyone who can edit the ledger can edit it too. A cache that decides budgets must not be
forgeable, so each is *sealed*: an HMAC-SHA256 over its exact bytes, under a key derived from the home's
checkpoint signing key (which lives in ``keys/``, never beside the ledger; see
:meth:`caracal.core.checkpoint.CheckpointSigner.cache_key`). A file whose seal does not verify (edited,
written by another home, or by a version that did not seal it) is ignored, logged, and rebuilt from the
ledger: losing a cache costs time, never correctness.

The format is one header line then the payload, so the payload's bytes are authenticated exactly as
written::

    caracal-sealed-v1 <purpose> <hex hmac>\\n<payload>
"""

from __future__ import annotations

import hashlib
import hmac

_MAGIC = b"caracal-sealed-v1"


class SealError(ValueError):
    """A sealed file is malformed, for another purpose, or its HMAC does not verify (not a CaracalError:
    callers treat it as "no usable cache" and rebuild)."""


def mac(key: bytes, purpose: str, payload: bytes) -> str:
    """The hex HMAC that seals ``payload`` for ``purpose``; for a seal kept beside its payload (a field of a
    shared document) rather than in a sealed file's header. Compare with :func:`hmac.compare_digest`."""
    return hmac.new(key, purpose.encode() + b"\n" + payload, hashlib.sha256).hexdigest()


def seal(key: bytes, purpose: str, payload: bytes) -> bytes:
    """The sealed bytes of ``payload`` for ``purpose`` (a word: ``budget``, ``merkle``)."""
    if not purpose.isidentifier():
        raise ValueError(f"purpose must be a plain word, got {purpose!r}")
    return b"%s %s %s\n" % (_MAGIC, purpose.encode(), mac(key, purpose, payload).encode()) + payload


def unseal(key: bytes, purpose: str, data: bytes) -> bytes:
    """The payload of sealed ``data``; :class:`SealError` unless sealed with ``key`` for ``purpose``."""
    header, newline, payload = data.partition(b"\n")
    parts = header.split(b" ")
    if not newline or len(parts) != 3 or parts[0] != _MAGIC:
        raise SealError("not a sealed cache file (no seal header): written by another version, or edited")
    if parts[1].decode(errors="replace") != purpose:
        raise SealError(f"sealed for {parts[1].decode(errors='replace')!r}, not {purpose!r}")
    if not hmac.compare_digest(parts[2], mac(key, purpose, payload).encode()):
        raise SealError(
            "its seal does not verify: it was edited, or sealed with another home's key (keys/checkpoint.key)"
        )
    return payload


__all__ = ["SealError", "mac", "seal", "unseal"]
