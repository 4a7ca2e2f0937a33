"""Where Caracal keeps its files.

The home folder is ``$CARACAL_HOME`` when set, else ``~/.caracal``. Inside it:

- ``data/ledger.jsonl`` (and its sidecars): the default ledger;
- ``keys/checkpoint.key`` (owner-only) and ``keys/checkpoint.key.pub``: the Ed25519 key that signs ledger
  checkpoints. It lives apart from ``data/`` on purpose: whoever can rewrite the ledger's folder should not
  find the key that would let them re-sign it.

It also reads the home's ``config.toml`` (:func:`load_settings`). Stdlib only (and ``tomli`` on Python
3.10), so every layer may use it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from caracal.exceptions import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef,unused-ignore]

HOME_ENV = "CARACAL_HOME"


def caracal_home() -> Path:
    """The home folder: ``$CARACAL_HOME``, else ``~/.caracal``."""
    configured = os.environ.get(HOME_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".caracal"


def default_ledger_path(home: Path | None = None) -> Path:
    return (home or caracal_home()) / "data" / "ledger.jsonl"


def default_signing_key_path(home: Path | None = None) -> Path:
    return (home or caracal_home()) / "keys" / "checkpoint.key"


@dataclass(frozen=True)
class Settings:
    """The settings in ``config.toml`` (every one optional; these are the defaults)."""

    backup_count: int = 3
    checkpoint_every: int = 1000
    checkpoint_interval: float = 60.0
    backup_min_interval: float = 600.0
    lock_timeout: float = 10.0
    use_llm_prices: bool = True
    tiered_llm_prices: str = "refuse"
    default_ttl: float = 300.0


_SECTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    "ledger": {
        "backup_count": (int,),
        "checkpoint_every": (int,),
        "checkpoint_interval": (int, float),
        "backup_min_interval": (int, float),
        "lock_timeout": (int, float),
    },
    "pricing": {"use_llm_prices": (bool,), "tiered_llm_prices": (str,)},
    "holds": {"default_ttl": (int, float)},
}


def load_settings(home: Path | None = None) -> Settings:
    """Read ``config.toml`` of the home (defaults when the file does not exist).

    A file that does not parse, an unknown section or key (a typo would otherwise be ignored silently) or a
    value of the wrong type raises :class:`ConfigurationError` naming it: a misconfigured home fails closed.
    """
    path = (home or caracal_home()) / "config.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
    values: dict[str, object] = {}
    for section, table in document.items():
        known = _SECTIONS.get(section)
        if known is None or not isinstance(table, dict):
            raise ConfigurationError(f"{path}: unknown section [{section}]; known: {', '.join(_SECTIONS)}")
        for key, value in table.items():
            types = known.get(key)
            if types is None:
                raise ConfigurationError(
                    f"{path}: unknown setting {section}.{key}; known: {', '.join(known)}"
                )
            if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
                raise ConfigurationError(
                    f"{path}: {section}.{key} must be {types[-1].__name__}, got {value!r}"
                )
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ConfigurationError(f"{path}: {section}.{key} must not be negative, got {value!r}")
            values[key] = value
    if values.get("tiered_llm_prices", "refuse") not in ("refuse", "base"):
        raise ConfigurationError(f'{path}: pricing.tiered_llm_prices must be "refuse" or "base"')
    return Settings(**values)  # type: ignore[arg-type]
