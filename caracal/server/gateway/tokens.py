"""Exact, offline token counts for the gateway's input bound (optional: the ``tokens`` extra, ``tiktoken``).

The byte bound of :mod:`.estimate` (one token per UTF-8 byte of JSON) is safe for every tokenizer but about
4x the real count of English text, so an agent near its limit is refused while money remains. For the
OpenAI models whose tokenizer is public, the gateway counts the text of ``messages`` with that tokenizer
instead (:func:`counter_for_model`): ``o200k_base`` for the gpt-4o, gpt-4.1, gpt-4.5, o-series and gpt-5
families, ``cl100k_base`` for gpt-4, gpt-3.5 and the embedding models. Every other model (and every
Anthropic model, whose tokenizer is not public) keeps the byte bound.

**Why the counted bound is never below the real count** (checked by property tests in
``tests/server/test_gateway_tokens.py`` against tiktoken's count of the rendered template):

- The provider renders each message as ``<start>role<sep>content<end>``: special tokens (never produced by
  text: user text is encoded as ordinary text, as :meth:`TokenCounter.count` does) separate the role and
  the content from their neighbours, so each is tokenized on its own and its tokens are exactly
  :meth:`TokenCounter.count` of its text. The frame costs at most 4 tokens per message (OpenAI's cookbook:
  3, plus 1 for a ``name``); :data:`MESSAGE_OVERHEAD_TOKENS` is twice that, and
  :data:`COUNTED_REQUEST_OVERHEAD_TOKENS` covers the reply priming (3) with room to spare. A tool result
  is rendered under the called function's name, which the message does not carry:
  :data:`TOOL_RESULT_TOKENS` covers the longest name OpenAI accepts (64 characters).
- A content list of text parts is joined by the provider (with nothing, a space or newlines between
  them). BPE tokens of a concatenation can differ from the sum of the parts' tokens only around the join
  (the pre-tokenizer splits on word boundaries, so pieces away from the join are unchanged): at most
  :data:`JOIN_SLACK_TOKENS` per join, separator included (measured: at most 2 over random unicode, text
  and JSON-like strings, see the tests).
- Everything the counter cannot count exactly keeps the byte bound: message fields other than ``role``
  and ``content`` (``name``, ``tool_calls``, ``tool_call_id``, ...), content parts other than plain text
  parts, and the request's other fields (tools, functions, response format). Images keep their
  ``image_tokens``.
- Any failure falls back to the byte bound, never to less: ``tiktoken`` missing, an encoding file missing,
  unreadable, larger than :data:`MAX_ENCODING_BYTES` or whose SHA-256 differs from the hash tiktoken
  itself pins (:data:`ENCODINGS`; an edited file is never loaded), or a text the tokenizer refuses.

The encoding files ship in the package (``encodings/*.tiktoken.gz``: there is no download at run time).
They are OpenAI's published ``o200k_base.tiktoken`` and ``cl100k_base.tiktoken`` (MIT, as tiktoken),
taken byte for byte from the ``litellm`` wheel on PyPI (``litellm/litellm_core_utils/tokenizers/``) and
gzipped; their SHA-256 is the one tiktoken pins.
Loading one takes a fraction of a second: :func:`preload` does it in a background thread at startup.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "COUNTED_REQUEST_OVERHEAD_TOKENS",
    "ENCODINGS",
    "JOIN_SLACK_TOKENS",
    "MAX_ENCODING_BYTES",
    "MESSAGE_OVERHEAD_TOKENS",
    "TOOL_RESULT_TOKENS",
    "EncodingSpec",
    "TokenCounter",
    "counter_for_model",
    "encoding_for_model",
    "is_loaded",
    "load_counter",
    "preload",
]

logger = logging.getLogger("caracal.gateway")

MESSAGE_OVERHEAD_TOKENS = 8
"""Tokens added per counted message for the chat template's frame (at most 4: start, separator, end and a
name marker), doubled as a margin for template text adjacent to the content."""

COUNTED_REQUEST_OVERHEAD_TOKENS = 16
"""Added once per counted request, on top of :data:`~.estimate.REQUEST_OVERHEAD_TOKENS`: the reply priming
(3 tokens) and any fixed framing the provider adds, which the byte bound covered with its JSON syntax."""

TOOL_RESULT_TOKENS = 72
"""Added per ``tool`` (or legacy ``function``) message: the provider renders a tool result under the name of
the function that was called (at most 64 characters, so at most 64 tokens), which is not in the message
itself, plus a few tokens of routing (``to=assistant``, a channel)."""

JOIN_SLACK_TOKENS = 4
"""Added per content part: the separator the provider may insert between parts plus the tokens a join can
add by re-splitting the words on either side of it (measured at most 2; see the module docstring)."""

MAX_ENCODING_BYTES = 16 * 1024 * 1024
"""The largest decompressed encoding file read (the real ones are 1.7 and 3.6 MB): an edited file cannot
make the server decompress without limit."""


@dataclass(frozen=True)
class EncodingSpec:
    """One BPE encoding: its shipped file, the SHA-256 tiktoken pins, its split pattern and special tokens."""

    name: str
    file: str
    sha256: str
    pat_str: str
    special_tokens: dict[str, int]


_ENDOFTEXT = "<|endoftext|>"
_ENDOFPROMPT = "<|endofprompt|>"

# Copied from tiktoken_ext/openai_public.py (tiktoken 0.14); the tests check they are still equal.
ENCODINGS: dict[str, EncodingSpec] = {
    "o200k_base": EncodingSpec(
        "o200k_base",
        "o200k_base.tiktoken.gz",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
    "cl100k_base": EncodingSpec(
        "cl100k_base",
        "cl100k_base.tiktoken.gz",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
        r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        {
            _ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
}
"""The encodings the gateway can count with, by name."""

# Longest prefix first wins (gpt-4o before gpt-4). As in tiktoken/model.py, plus fine-tuned models.
_MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5-turbo", "cl100k_base"),
    ("gpt-35-turbo", "cl100k_base"),  # Azure's spelling
    ("text-embedding-ada-002", "cl100k_base"),
    ("text-embedding-3-", "cl100k_base"),
)


def encoding_for_model(model: object) -> str | None:
    """The encoding name of an OpenAI model (``ft:<model>:...`` counts as ``<model>``), else ``None``."""
    if not isinstance(model, str):
        return None
    name = model.strip().lower()
    if name.startswith("ft:"):
        name = name[3:]
    for prefix, encoding in _MODEL_PREFIXES:
        if name.startswith(prefix):
            if prefix[-1].isdigit() and name[len(prefix) : len(prefix) + 1].isdigit():
                continue  # "o10" is not "o1", "gpt-50" not "gpt-5"
            return encoding
    return None


class TokenCounter:
    """Counts tokens of text with one BPE encoding, as the provider does for text in a message."""

    __slots__ = ("_encoding", "name")

    def __init__(self, name: str, encoding: Any):
        self.name = name
        self._encoding = encoding

    def count(self, text: str) -> int:
        """Tokens of ``text`` encoded as ordinary text (special-token strings are plain text, as the
        provider encodes user text). A text the tokenizer refuses counts its UTF-8 bytes (>= its tokens)."""
        try:
            return len(self._encoding.encode_ordinary(text))
        except Exception:  # e.g. lone surrogates: the byte bound is still safe
            return len(text.encode("utf-8", "surrogatepass"))

    def count_all(self, texts: Sequence[str]) -> int:
        """The sum of :meth:`count` over ``texts``."""
        return sum(self.count(text) for text in texts)


def _read_verified(spec: EncodingSpec, directory: Path | None) -> bytes:
    """The decompressed file of ``spec``, only if its SHA-256 is the pinned one (else ``ValueError``)."""
    if directory is None:
        package = resources.files(__package__ or "caracal.server.gateway")
        compressed = package.joinpath("encodings").joinpath(spec.file).read_bytes()
    else:
        compressed = (directory / spec.file).read_bytes()
    with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as stream:
        data = stream.read(MAX_ENCODING_BYTES + 1)
    if len(data) > MAX_ENCODING_BYTES:
        raise ValueError(f"it is larger than {MAX_ENCODING_BYTES} bytes decompressed")
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise ValueError(f"its SHA-256 is {digest}, expected {spec.sha256} (the hash tiktoken pins)")
    return data


def _ranks(data: bytes) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def load_counter(name: str, directory: Path | None = None) -> TokenCounter | None:
    """Build the :class:`TokenCounter` of encoding ``name`` from its shipped file (or from ``directory``).

    Returns ``None``, after logging why, when it cannot be trusted or built: ``tiktoken`` is not installed,
    the file is missing, unreadable, not gzip, too large, or its SHA-256 is not the pinned one. Callers then
    use the byte bound. Not cached: see :func:`counter_for_model`.
    """
    spec = ENCODINGS.get(name)
    if spec is None:
        raise ValueError(f"unknown encoding {name!r}: expected one of {sorted(ENCODINGS)}")
    try:
        import tiktoken
    except ImportError:
        logger.info("tiktoken is not installed (extra 'tokens'): gateway input is bounded by bytes")
        return None
    try:
        data = _read_verified(spec, directory)
        encoding = tiktoken.Encoding(
            name, pat_str=spec.pat_str, mergeable_ranks=_ranks(data), special_tokens=spec.special_tokens
        )
    except Exception as exc:  # any defect of the file: never fail open, fall back to bytes
        logger.warning(
            "the %s encoding file cannot be used, gateway input is bounded by bytes: %s", name, exc
        )
        return None
    return TokenCounter(name, encoding)


_lock = threading.Lock()
_counters: dict[str, TokenCounter | None] = {}


def _cached(name: str) -> TokenCounter | None:
    if name in _counters:  # every request after the load: no lock (entries are only ever added)
        return _counters[name]
    with _lock:  # one load per encoding per process, even when requests race the preload
        if name not in _counters:
            _counters[name] = load_counter(name)
        return _counters[name]


def counter_for_model(model: object) -> TokenCounter | None:
    """The counter of ``model``'s encoding (loaded once per process), or ``None``: unknown model, or the
    encoding could not be loaded (the byte bound applies). May block while the encoding loads: see
    :func:`is_loaded` and :func:`preload`."""
    name = encoding_for_model(model)
    return None if name is None else _cached(name)


def is_loaded(model: object) -> bool:
    """Whether :func:`counter_for_model` answers ``model`` without loading a file (no encoding needed, or
    already loaded or failed)."""
    name = encoding_for_model(model)
    return name is None or name in _counters


def preload() -> threading.Thread:
    """Load every encoding in a daemon thread (started and returned), so requests do not wait for it."""
    thread = threading.Thread(
        target=lambda: [_cached(name) for name in ENCODINGS], name="caracal-tokens-preload", daemon=True
    )
    thread.start()
    return thread
