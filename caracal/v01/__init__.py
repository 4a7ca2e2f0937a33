"""Caracal Core v0.1's API, as thin layers over our own parts (no second implementation).

v0.1 code imports these names from where v0.1 defined them (``caracal.core.identity.AgentRegistry``,
``caracal.core.policy.PolicyStore``, ``caracal.core.pricebook.Pricebook(csv)``, ...); those modules load
them from here on first use, so Caracal's own code never depends on them. What each adapter is, and where
it deliberately differs from v0.1, is in its module and in ``docs/v01-compatibility.md``.

- :mod:`caracal.v01.documents`: v0.1's files (JSON lists, pricebook CSV) as our registries' documents.
- :mod:`caracal.v01.identity`, :mod:`~caracal.v01.policy`, :mod:`~caracal.v01.pricebook`,
  :mod:`~caracal.v01.metering`: the library classes.
- :mod:`caracal.v01.home`: a v0.1 configuration's files wired together (what the SDK and CLI open).
"""

from __future__ import annotations

import importlib
from typing import Any

LOCATIONS: dict[str, str] = {
    "AgentIdentity": "caracal.v01.identity",
    "AgentRegistry": "caracal.v01.identity",
    "BudgetPolicy": "caracal.v01.policy",
    "PolicyStore": "caracal.v01.policy",
    "PolicyDecision": "caracal.v01.policy",
    "PolicyEvaluator": "caracal.v01.policy",
    "PriceEntry": "caracal.v01.pricebook",
    "MeteringEvent": "caracal.v01.metering",
    "MeteringCollector": "caracal.v01.metering",
    "PolicyEvaluationError": "caracal.exceptions",
    # from caracal.config (its YAML file: caracal.config.settings)
    **dict.fromkeys(
        (
            "CaracalConfig",
            "DefaultsConfig",
            "LoggingConfig",
            "PerformanceConfig",
            "StorageConfig",
            "get_default_config",
            "get_default_config_path",
            "load_config",
        ),
        "caracal.config.settings",
    ),
    # from caracal.cli.main (its click parameter callbacks)
    **dict.fromkeys(
        (
            "validate_currency",
            "validate_non_negative_decimal",
            "validate_positive_decimal",
            "validate_resource_type",
            "validate_time_window",
            "validate_uuid",
        ),
        "caracal.cli.v01_params",
    ),
}


def load(module: str, name: str) -> Any:
    """The v0.1 name ``name`` as seen from ``module`` (a module's ``__getattr__`` calls this)."""
    where = LOCATIONS.get(name)
    if where is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return getattr(importlib.import_module(where), name)
