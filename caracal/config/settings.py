"""The Caracal Core v0.1 configuration: a YAML file naming where each of its files lives.

v0.1 code and scripts point Caracal at such a file (``CaracalClient(config_path=...)``, ``caracal --config
FILE ...``); this module reads it as v0.1 did, with v0.1's defaults and messages::

    storage:   {agent_registry, policy_store, ledger, pricebook, backup_dir, backup_count}
    defaults:  {currency, time_window, default_budget}
    logging:   {level, file, format}
    performance: {policy_eval_timeout_ms, ledger_write_timeout_ms, file_lock_timeout_s, max_retries}

Invariants (where we differ from v0.1, on purpose):

- **Money is exact.** ``default_budget`` is a ``Decimal`` made from the number's text in the file (``200.10``
  stays ``Decimal("200.10")``: YAML floats are read as decimals, never through a binary float); it still
  compares equal to the number v0.1 gave (``Decimal("100.00") == 100.0``). NaN and infinities are refused.
- **Windows.** ``time_window`` accepts every calendar window Caracal enforces (hourly, daily, weekly,
  monthly, total), not only v0.1's ``daily``.
- A file that does not parse, or a value out of range, raises :class:`ConfigurationError` (v0.1's
  ``InvalidConfigurationError``, the same class) naming the setting: a misconfigured install fails closed.

Stdlib and PyYAML only; YAML is imported when a file is read, so ``caracal`` commands that never see a v0.1
configuration never import it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from caracal.exceptions import ConfigurationError

V01_HOME = Path("~") / ".caracal"
"""Where v0.1 kept everything (``~/.caracal``): its config.yaml and its files side by side."""

TIME_WINDOWS = ("hourly", "daily", "weekly", "monthly", "total")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def _home_file(name: str) -> str:
    return str(Path.home() / ".caracal" / name)


@dataclass
class StorageConfig:
    """Where each file lives (``~`` expanded when loaded)."""

    agent_registry: str = field(default_factory=lambda: _home_file("agents.json"))
    policy_store: str = field(default_factory=lambda: _home_file("policies.json"))
    ledger: str = field(default_factory=lambda: _home_file("ledger.jsonl"))
    pricebook: str = field(default_factory=lambda: _home_file("pricebook.csv"))
    backup_dir: str = field(default_factory=lambda: _home_file("backups"))
    backup_count: int = 3


@dataclass
class DefaultsConfig:
    """Defaults for new policies. ``default_budget`` is exact (a Decimal)."""

    currency: str = "USD"
    time_window: str = "daily"
    default_budget: Decimal = Decimal("100.00")


@dataclass
class LoggingConfig:
    level: str = "INFO"
    file: str = field(default_factory=lambda: _home_file("caracal.log"))
    format: str = DEFAULT_LOG_FORMAT


@dataclass
class PerformanceConfig:
    """v0.1's tuning knobs. ``file_lock_timeout_s`` bounds lock waits; the others are kept for v0.1 code
    that reads them (Caracal's budget checks do not re-read the ledger, so they need no timeout)."""

    policy_eval_timeout_ms: int = 100
    ledger_write_timeout_ms: int = 10
    file_lock_timeout_s: int = 5
    max_retries: int = 3


@dataclass
class CaracalConfig:
    """A whole v0.1 configuration."""

    storage: StorageConfig = field(default_factory=StorageConfig)
    defaults: DefaultsConfig = field(default_factory=DefaultsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)


def get_default_config() -> CaracalConfig:
    """The configuration v0.1 used without a file: everything under ``~/.caracal``."""
    return CaracalConfig()


def get_default_config_path() -> str:
    """``~/.caracal/config.yaml`` (expanded)."""
    return _home_file("config.yaml")


def load_config(config_path: str | os.PathLike[str] | None = None) -> CaracalConfig:
    """Read a v0.1 YAML configuration (default ``~/.caracal/config.yaml``).

    A missing or empty file gives the defaults; a present file must have a ``storage`` section. Unknown
    keys are refused (a typo would otherwise be ignored); every value is validated.
    """
    path = Path(config_path).expanduser() if config_path is not None else Path(get_default_config_path())
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return get_default_config()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the configuration {path}: {exc}") from exc
    data = parse_yaml(text, path)
    if data is None:
        return get_default_config()
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path}: the configuration must be a mapping of sections")
    if "storage" not in data:
        raise ConfigurationError(
            f"{path}: Missing required 'storage' section (agent_registry, policy_store, ledger, pricebook, "
            f"backup_dir)"
        )
    sections: dict[str, type] = {
        "storage": StorageConfig,
        "defaults": DefaultsConfig,
        "logging": LoggingConfig,
        "performance": PerformanceConfig,
    }
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigurationError(
            f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sections)}"
        )
    built: dict[str, Any] = {}
    for name, kind in sections.items():
        table = data.get(name) or {}
        if not isinstance(table, dict):
            raise ConfigurationError(f"{path}: '{name}' must be a mapping")
        known = {f.name for f in fields(kind)}
        extra = sorted(set(table) - known)
        if extra:
            raise ConfigurationError(
                f"{path}: unknown setting(s) {name}.{', '.join(extra)}; known: {', '.join(sorted(known))}"
            )
        built[name] = kind(**table)
    config = CaracalConfig(**built)
    _expand_paths(config)
    validate_config(config, path)
    return config


def parse_yaml(text: str, where: object = "configuration") -> Any:
    """YAML with floats read as exact Decimals (from their text); ConfigurationError if it does not parse."""
    import yaml  # here: only v0.1 configurations need it

    class _ExactLoader(yaml.SafeLoader):  # type: ignore[misc]
        pass

    def _decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal:
        text = str(loader.construct_scalar(node)).replace("_", "")
        try:
            return Decimal(text)
        except InvalidOperation:  # .inf, .nan: not an amount
            raise ConfigurationError(f"{where}: {text!r} is not a finite number") from None

    _ExactLoader.add_constructor("tag:yaml.org,2002:float", _decimal)
    try:
        return yaml.load(text, Loader=_ExactLoader)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{where}: Failed to parse YAML: {exc}") from None


def _expand_paths(config: CaracalConfig) -> None:
    storage = config.storage
    for name in ("agent_registry", "policy_store", "ledger", "pricebook", "backup_dir"):
        value = getattr(storage, name)
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError(f"storage.{name} must be a non-empty path, got {value!r}")
        setattr(storage, name, os.path.expanduser(value))
    if isinstance(config.logging.file, str):
        config.logging.file = os.path.expanduser(config.logging.file)


def validate_config(config: CaracalConfig, where: object = "configuration") -> None:
    """v0.1's checks (with its messages), raising :class:`ConfigurationError`."""

    def fail(message: str) -> None:
        raise ConfigurationError(f"{where}: {message}")

    count = config.storage.backup_count
    if type(count) is not int or count < 1:
        fail(f"backup_count must be at least 1, got {count!r}")
    defaults = config.defaults
    if defaults.time_window not in TIME_WINDOWS:
        fail(f"time_window must be one of {', '.join(TIME_WINDOWS)}, got {defaults.time_window!r}")
    budget = defaults.default_budget
    if isinstance(budget, bool) or not isinstance(budget, (int, Decimal)):
        fail(f"default_budget must be positive number, got {budget!r}")
    defaults.default_budget = Decimal(budget)
    if not defaults.default_budget.is_finite() or defaults.default_budget <= 0:
        fail(f"default_budget must be positive, got {budget}")
    if (
        not isinstance(defaults.currency, str)
        or len(defaults.currency) != 3
        or not defaults.currency.isupper()
    ):
        fail(f"currency must be a 3-letter code like USD, got {defaults.currency!r}")
    if str(config.logging.level).upper() not in LOG_LEVELS:
        fail(f"logging level must be one of {', '.join(LOG_LEVELS)}, got {config.logging.level!r}")
    for name in ("policy_eval_timeout_ms", "ledger_write_timeout_ms", "file_lock_timeout_s"):
        value = getattr(config.performance, name)
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or value <= 0:
            fail(f"{name} must be positive, got {value!r}")
    retries = config.performance.max_retries
    if type(retries) is not int or retries < 0:
        fail(f"max_retries must be non-negative, got {retries!r}")


__all__ = [
    "CaracalConfig",
    "DefaultsConfig",
    "LoggingConfig",
    "PerformanceConfig",
    "StorageConfig",
    "get_default_config",
    "get_default_config_path",
    "load_config",
    "parse_yaml",
    "validate_config",
]
