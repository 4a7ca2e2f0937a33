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
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

from caracal.config.mcp import McpConfig, parse_mcp
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


UPSTREAM_APIS = ("openai", "anthropic")
"""The gateway's upstream kinds: OpenAI-compatible (chat completions, embeddings) and Anthropic (messages)."""


@dataclass(frozen=True)
class UpstreamSettings:
    """Where the gateway forwards one API's calls, and with which provider key.

    The key is ``api_key`` if set, else the environment variable ``api_key_env`` read when a call is
    forwarded (so a key can be rotated without editing the file). Agents never see it. ``provider`` is the
    pricebook provider of the models (``<provider>.<model>.input_tokens``).
    """

    api: str
    base_url: str
    api_key_env: str
    provider: str
    api_key: str | None = None


DEFAULT_UPSTREAMS = {
    "openai": UpstreamSettings("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", "openai"),
    "anthropic": UpstreamSettings(
        "anthropic", "https://api.anthropic.com/v1", "ANTHROPIC_API_KEY", "anthropic"
    ),
}


@dataclass(frozen=True)
class Settings:
    """The settings in ``config.toml`` (every one optional; these are the defaults)."""

    backup_count: int = 3
    checkpoint_every: int = 1000
    checkpoint_interval: float = 60.0
    backup_min_interval: float = 600.0
    lock_timeout: float = 10.0
    replay_wait: float = 600.0
    """Seconds a process waits for another one's replay of a long ledger (one replay per home) before it
    replays itself: longer than a replay of the largest ledger takes here."""
    verify_interval: float = 3600.0
    """Seconds between two whole-ledger verifications by ``caracal serve`` (one per home, whatever the
    number of server processes; 0: never). They find edits enforcement does not read again."""
    use_llm_prices: bool = True
    tiered_llm_prices: str = "refuse"
    default_ttl: float = 300.0
    idempotency_window: float = 604800.0
    """Seconds an idempotency key is remembered after its charge (7 days); a retry after it is a new
    charge. It bounds the memory and snapshot the keys take."""
    suspend_over_hold_factor: float | None = None
    """Suspend an agent when a settle or charge takes a hold past this many times its amount (off when
    unset): usage far beyond the bound is an anomaly (a runaway or a misbehaving upstream)."""
    default_estimate: Decimal | None = None
    """What ``budget_check`` without an ``estimated_cost`` reserves (embedded client); unset: it only
    checks that budget remains."""
    storage_url: str | None = None
    """``[storage] url``: a ``postgresql://`` URL puts the ledger and registries in that database (many
    hosts share budgets); unset, the home's files. ``$CARACAL_DATABASE_URL`` overrides it."""
    statement_timeout: float = 10.0
    """``[storage] statement_timeout``: on a database, seconds before a statement is cancelled (and the
    operation fails closed)."""
    host: str = "127.0.0.1"
    port: int = 8787
    max_body_bytes: int = 1 << 20
    body_timeout: float = 30.0
    workers: int = 1
    """Processes ``caracal serve`` runs on its one port (1 to :data:`MAX_WORKERS`); they all enforce against
    the same home, through the ledger's lock."""
    max_output_tokens: int = 4096
    image_tokens: int = 2000
    gateway_hold_ttl: float = 900.0
    upstream_timeout: float = 600.0
    alerts_interval: float = 1.0
    """``[alerts] interval``: seconds between two looks of ``caracal serve`` for alerts to fire and send."""
    alerts_retry_base: float = 1.0
    """``[alerts] retry_base``: seconds before the second try of a webhook; doubled after each failure."""
    alerts_retry_max: float = 300.0
    """``[alerts] retry_max``: the longest wait between two tries of a webhook."""
    alerts_max_attempts: int = 25
    """``[alerts] max_attempts``: tries before a webhook is marked failed (kept, visible, never deleted)."""
    alerts_timeout: float = 10.0
    """``[alerts] timeout``: seconds a webhook request may take."""
    alerts_keep_delivered: int = 200
    """``[alerts] keep_delivered``: delivered webhooks kept in the outbox (the oldest pruned first)."""
    openai: UpstreamSettings = DEFAULT_UPSTREAMS["openai"]
    anthropic: UpstreamSettings = DEFAULT_UPSTREAMS["anthropic"]
    mcp: McpConfig = McpConfig()  # noqa: RUF009  (frozen: one shared empty default is safe)
    """``[mcp]``: the MCP servers Caracal meters (:mod:`caracal.config.mcp`)."""

    def upstream(self, api: str) -> UpstreamSettings:
        return self.openai if api == "openai" else self.anthropic


MAX_WORKERS = 64
"""The most server worker processes (``[server] workers``, ``caracal serve --workers``)."""

_SETTING_NAMES = {
    ("gateway", "hold_ttl"): "gateway_hold_ttl",
    ("storage", "url"): "storage_url",
    **{
        ("alerts", key): f"alerts_{key}"
        for key in ("interval", "retry_base", "retry_max", "max_attempts", "timeout", "keep_delivered")
    },
}
"""Settings whose attribute name differs from their key in the file."""

_POSITIVE = frozenset(
    {
        ("server", "max_body_bytes"),
        ("server", "body_timeout"),
        ("gateway", "max_output_tokens"),
        ("gateway", "hold_ttl"),
        ("gateway", "upstream_timeout"),
        ("holds", "suspend_over_hold_factor"),
        ("metering", "idempotency_window"),
        ("storage", "statement_timeout"),
        ("alerts", "interval"),
        ("alerts", "retry_base"),
        ("alerts", "retry_max"),
        ("alerts", "max_attempts"),
        ("alerts", "timeout"),
    }
)
"""Settings where 0 would make the server refuse everything (or nothing)."""

_UPSTREAM_KEYS: dict[str, tuple[type, ...]] = {
    "base_url": (str,),
    "api_key": (str,),
    "api_key_env": (str,),
    "provider": (str,),
}

_SECTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    "ledger": {
        "backup_count": (int,),
        "checkpoint_every": (int,),
        "checkpoint_interval": (int, float),
        "backup_min_interval": (int, float),
        "lock_timeout": (int, float),
        "replay_wait": (int, float),
        "verify_interval": (int, float),
    },
    "storage": {"url": (str,), "statement_timeout": (int, float)},
    "pricing": {"use_llm_prices": (bool,), "tiered_llm_prices": (str,)},
    "holds": {"default_ttl": (int, float), "suspend_over_hold_factor": (int, float)},
    "metering": {"idempotency_window": (int, float)},
    "sdk": {"default_estimate": (str,)},
    "server": {
        "host": (str,),
        "port": (int,),
        "workers": (int,),
        "max_body_bytes": (int,),
        "body_timeout": (int, float),
    },
    "gateway": {
        "max_output_tokens": (int,),
        "image_tokens": (int,),
        "hold_ttl": (int, float),
        "upstream_timeout": (int, float),
        **{api: (dict,) for api in UPSTREAM_APIS},
    },
    "alerts": {
        "interval": (int, float),
        "retry_base": (int, float),
        "retry_max": (int, float),
        "max_attempts": (int,),
        "timeout": (int, float),
        "keep_delivered": (int,),
    },
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
        if section == "mcp":
            values["mcp"] = parse_mcp(path, table)
            continue
        known = _SECTIONS.get(section)
        if known is None or not isinstance(table, dict):
            raise ConfigurationError(
                f"{path}: unknown section [{section}]; known: {', '.join(_SECTIONS)}, mcp"
            )
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
            if value == 0 and (section, key) in _POSITIVE:
                raise ConfigurationError(f"{path}: {section}.{key} must be more than 0")
            if isinstance(value, dict):
                values[key] = _upstream(path, key, value)
                continue
            if (section, key) == ("sdk", "default_estimate"):
                values[key] = _money(path, f"{section}.{key}", str(value))
                continue
            name = _SETTING_NAMES.get((section, key)) or str(key)
            values[name] = value
    if values.get("tiered_llm_prices", "refuse") not in ("refuse", "base"):
        raise ConfigurationError(f'{path}: pricing.tiered_llm_prices must be "refuse" or "base"')
    if not 0 < int(values.get("port", 1)) < 65536:  # type: ignore[call-overload]
        raise ConfigurationError(f"{path}: server.port must be between 1 and 65535")
    if not 1 <= int(values.get("workers", 1)) <= MAX_WORKERS:  # type: ignore[call-overload]
        raise ConfigurationError(f"{path}: server.workers must be between 1 and {MAX_WORKERS}")
    url = values.get("storage_url")
    if url is not None:
        check_storage_url(str(url), f"{path}: storage.url")
    return Settings(**values)  # type: ignore[arg-type]


DATABASE_URL_ENV = "CARACAL_DATABASE_URL"


def check_storage_url(url: str, where: str) -> str:
    """A storage URL must be a PostgreSQL URL (files need none)."""
    if not url.startswith(("postgresql://", "postgres://")):
        shown = url.split("@")[-1]  # never echo a password
        raise ConfigurationError(
            f"{where} must be a PostgreSQL URL like postgresql://user@host:5432/caracal, got {shown!r}"
        )
    return url


def storage_url(settings: Settings) -> str | None:
    """Where a home keeps its ledger and registries: ``$CARACAL_DATABASE_URL``, else ``[storage] url``;
    None means the home's files."""
    configured = os.environ.get(DATABASE_URL_ENV, "").strip()
    if configured:
        return check_storage_url(configured, f"${DATABASE_URL_ENV}")
    return settings.storage_url


def _money(path: Path, name: str, text: str) -> Decimal:
    """A positive, finite decimal amount written as a string (``"0.10"``: never a float)."""
    try:
        amount = Decimal(text.strip())
    except ArithmeticError:
        amount = Decimal("NaN")
    if not amount.is_finite() or amount <= 0:
        raise ConfigurationError(
            f'{path}: {name} must be a positive amount as a string, like "0.10"; got {text!r}'
        )
    return amount


def _upstream(path: Path, api: str, table: dict[str, object]) -> UpstreamSettings:
    """``[gateway.<api>]``: the defaults of that API with the keys the table sets."""
    fields: dict[str, object] = {}
    for key, value in table.items():
        if key not in _UPSTREAM_KEYS:
            raise ConfigurationError(
                f"{path}: unknown setting gateway.{api}.{key}; known: {', '.join(_UPSTREAM_KEYS)}"
            )
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError(f"{path}: gateway.{api}.{key} must be a non-empty string, got {value!r}")
        fields[key] = value
    base_url = str(fields.get("base_url", DEFAULT_UPSTREAMS[api].base_url))
    if not base_url.startswith(("http://", "https://")):
        raise ConfigurationError(f"{path}: gateway.{api}.base_url must start with http:// or https://")
    fields["base_url"] = base_url.rstrip("/")
    return replace(DEFAULT_UPSTREAMS[api], **fields)  # type: ignore[arg-type]


def __getattr__(name: str) -> object:
    """Caracal Core v0.1's configuration (a YAML file naming each file, :mod:`caracal.config.settings`):
    its names import from here as in v0.1 (``from caracal.config import load_config``), loaded on first
    use so that nothing here imports YAML."""
    from caracal.v01 import load

    return load(__name__, name)
