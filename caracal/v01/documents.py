"""Caracal Core v0.1's files, read and written as our registries' documents (:class:`Codec`\\ s).

A v0.1 install keeps ``agents.json`` and ``policies.json`` as JSON *lists* of records and its prices in a
CSV file (``resource_type,price_per_unit,currency,updated_at``). Each codec turns such a file into the
document our registry keeps (:mod:`caracal.storage.agents`, :mod:`caracal.storage.policies`,
:mod:`caracal.storage.prices`) and back, so the registry's logic, locking, atomic writes and backups are
the same ones every Caracal home uses; only the bytes on disk differ.

Invariants:

- **v0.1 reads what we write**: every record keeps v0.1's fields (a policy's ``limit_amount``,
  ``time_window``, ``created_at``; a price row per version, sorted so a reader that keeps the last row of a
  resource keeps its latest price). Our extra fields ride along (a policy's ``revisions``: the audit trail
  v0.1 did not have), and a file we wrote still loads here with nothing lost.
- **We read what v0.1 wrote**: a v0.1 record gets our defaults for what it lacked (an agent is active, its
  ``updated_at`` is its ``created_at``; a policy is its own first revision).
- **Fail closed**: a file that does not parse, or a record that does not validate, raises a
  :class:`RegistryError` (for the pricebook v0.1's :class:`PricebookLoadError`, a subclass) naming the file;
  it is never read as empty.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson

from caracal.core.pricebook import Price, decimal_text
from caracal.core.validation import format_timestamp
from caracal.exceptions import CaracalError, PricebookLoadError, RegistryError

PRICE_COLUMNS = ("resource_type", "price_per_unit", "currency", "updated_at")
"""v0.1's pricebook header (all required); we add a ``note`` column, which v0.1 ignores."""


def _load_json(data: bytes, path: Path) -> Any:
    if not data.strip():
        return []  # v0.1's ``caracal init`` could leave an empty file
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RegistryError(f"{path} is not valid JSON ({exc}); restore it from {path.name}.bak.1") from None


def _records(value: Any, path: Path) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise RegistryError(f"{path} must hold a JSON list of records (Caracal Core v0.1's format)")
    return value


def _dump(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


class AgentListCodec:
    """``agents.json`` as v0.1 kept it: ``[{agent_id, name, owner, created_at, metadata}, ...]``."""

    def decode(self, data: bytes, path: Path) -> dict[str, Any]:
        value = _load_json(data, path)
        if isinstance(value, dict) and "agents" in value:  # our own format: accepted as it is
            return value
        agents: dict[str, Any] = {}
        for record in _records(value, path):
            item = dict(record)
            item.setdefault("status", "active")
            item.setdefault("parent_id", None)
            item.setdefault("updated_at", item.get("created_at"))
            if item.get("metadata") == {}:
                item["metadata"] = None
            agents[str(item.get("agent_id"))] = item
        return {"agents": agents}

    def encode(self, document: dict[str, Any]) -> bytes:
        records = []
        for record in document.get("agents", {}).values():
            item = dict(record)
            if item.get("metadata") is None:
                item["metadata"] = {}
            records.append(item)
        return _dump(records)


class PolicyListCodec:
    """``policies.json`` as v0.1 kept it: ``[{policy_id, agent_id, limit_amount, time_window, currency,
    created_at, active}, ...]``, each record also carrying our ``revisions`` once we wrote it."""

    def decode(self, data: bytes, path: Path) -> dict[str, Any]:
        value = _load_json(data, path)
        if isinstance(value, dict) and "policies" in value:
            return value
        policies: dict[str, Any] = {}
        for record in _records(value, path):
            revisions = record.get("revisions")
            if not isinstance(revisions, list) or not revisions:
                revisions = [
                    {
                        "policy_id": record.get("policy_id"),
                        "agent_id": record.get("agent_id"),
                        "limit": record.get("limit_amount"),
                        "currency": record.get("currency", "USD"),
                        "window": {"kind": record.get("time_window", "daily")},
                        "active": record.get("active", True),
                        "revision": 1,
                        "updated_at": record.get("created_at", ""),
                    }
                ]
            policies[str(record.get("policy_id"))] = revisions
        return {"policies": policies}

    def encode(self, document: dict[str, Any]) -> bytes:
        records = []
        for policy_id, revisions in document.get("policies", {}).items():
            latest = revisions[-1]
            records.append(
                {
                    "policy_id": policy_id,
                    "agent_id": latest["agent_id"],
                    "limit_amount": latest["limit"],
                    "time_window": latest["window"].get("kind", "daily"),
                    "currency": latest["currency"],
                    "created_at": revisions[0].get("updated_at", ""),
                    "active": latest.get("active", True),
                    "revisions": revisions,
                }
            )
        return _dump(records)


class PriceCsvCodec:
    """A v0.1 pricebook CSV: one row per price version (``updated_at`` is when it takes effect).

    Rows without a ``resource_type`` are skipped (as v0.1 did); any other bad row refuses the whole file.
    """

    def decode(self, data: bytes, path: Path) -> dict[str, Any]:
        try:
            text = data.decode("utf-8").lstrip("\ufeff")
        except UnicodeDecodeError as exc:
            raise PricebookLoadError(f"{path} is not UTF-8 text: {exc}") from None
        if not text.strip():
            return {"version": 1, "prices": []}
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [name.strip() for name in reader.fieldnames or ()]
        missing = [name for name in PRICE_COLUMNS if name not in header]
        if missing:
            raise PricebookLoadError(
                f"{path}: Missing required columns: {', '.join(missing)} (the header must be "
                f"{','.join(PRICE_COLUMNS)})"
            )
        prices = []
        try:
            for line, row in enumerate(reader, start=2):
                fields = {str(key).strip(): (value or "").strip() for key, value in row.items() if key}
                if not fields.get("resource_type"):
                    continue
                try:
                    price = Price(
                        resource_type=fields["resource_type"],
                        unit_price=fields["price_per_unit"],  # type: ignore[arg-type]  # parsed exactly
                        currency=fields.get("currency") or "USD",
                        effective_from=fields.get("updated_at") or "1970-01-01T00:00:00Z",  # type: ignore[arg-type]
                        note=fields.get("note") or None,
                    )
                except CaracalError as exc:
                    raise PricebookLoadError(f"{path}, line {line}: {exc}") from None
                prices.append(price.to_dict())
        except csv.Error as exc:
            raise PricebookLoadError(f"{path} does not parse as CSV: {exc}") from None
        return {"version": 1, "prices": prices}

    def encode(self, document: dict[str, Any]) -> bytes:
        prices = sorted(
            (Price.from_dict(record) for record in document.get("prices", [])),
            key=lambda price: (price.resource_type, price.effective_from),
        )
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow((*PRICE_COLUMNS, "note"))
        for price in prices:
            writer.writerow(
                (
                    price.resource_type,
                    decimal_text(price.unit_price),
                    price.currency,
                    format_timestamp(price.effective_from),
                    price.note or "",
                )
            )
        return buffer.getvalue().encode("utf-8")


__all__ = ["PRICE_COLUMNS", "AgentListCodec", "PolicyListCodec", "PriceCsvCodec"]
