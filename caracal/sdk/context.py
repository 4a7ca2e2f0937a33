"""``BudgetCheckContext``: what :meth:`CaracalClient.budget_check` returns (Caracal Core v0.1's
``caracal.sdk.context``).

It is the client's budget block (see :mod:`caracal.sdk.client`): entering reserves the estimate (or checks
that budget remains), the block's charges go against it, and leaving settles or releases it, also when
the block raises (the exception is never swallowed). A denial raises :class:`BudgetExceededError` before
the block runs, worded as v0.1 worded it (``Budget check failed for agent '<id>': <reason>``) with our
:class:`~caracal.core.decisions.Decision` attached as ``decision``.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING

from caracal.exceptions import BudgetExceededError

if TYPE_CHECKING:
    from caracal.sdk.client import BudgetScope, CaracalClient


class BudgetCheckContext:
    """One ``with client.budget_check(agent_id): ...`` block (``client`` and ``agent_id`` as v0.1 had)."""

    def __init__(
        self,
        client: CaracalClient,
        agent_id: str,
        estimated_cost: object | None = None,
        ttl: timedelta | float | None = None,
        currency: str = "USD",
    ):
        self.client = client
        self.agent_id = agent_id
        self.estimated_cost = estimated_cost
        self.ttl = ttl
        self.currency = currency
        self._block: contextlib.AbstractContextManager[BudgetScope] | None = None

    def __enter__(self) -> BudgetScope:
        if self._block is not None:
            raise RuntimeError("a BudgetCheckContext is entered once; call budget_check again")
        block = self.client.budget_block(self.agent_id, self.estimated_cost, self.ttl, self.currency)
        try:
            scope = block.__enter__()
        except BudgetExceededError as exc:
            reason = str(exc)
            decision = exc.decision
            if decision is not None:
                from caracal.v01.policy import v01_decision

                reason = v01_decision(decision).reason  # type: ignore[arg-type]
            raise BudgetExceededError(
                f"Budget check failed for agent '{self.agent_id}': {reason}", decision=decision
            ) from exc
        self._block = block
        return scope

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        block = self._block
        if block is None:
            return None
        return block.__exit__(exc_type, exc, traceback)


__all__ = ["BudgetCheckContext"]
