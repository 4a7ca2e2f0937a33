"""Exact money: the bounds on amounts, and the one decimal context every sum, difference and product of
money runs in (pure; no I/O).

**Bounds.** Every amount Caracal accepts as input (a quantity, a unit price, a cost, a policy limit, a hold
or an estimate) has at most :data:`MAX_INTEGER_DIGITS` (18) digits before the decimal point and at most
:data:`MAX_FRACTION_DIGITS` (18) after it, counted as written (``"0.030"`` has three): it is below
``10**18`` and a whole multiple of ``10**-18``. :func:`caracal.core.validation.parse_amount` refuses
anything else with the caller's typed error. A cost (``quantity x unit price``, :func:`exact_cost`) must fit
the same bounds exactly: trailing zeros beyond 18 decimals are dropped (same value), anything that would
need a 19th decimal or a 19th integer digit is refused, never rounded.

**Arithmetic.** Python's default decimal context silently rounds to 28 significant digits (a sum of
``1e400`` and ``1`` prints ``1.000...E+400``). Caracal's money goes through :func:`add`,
:func:`subtract`, :func:`multiply` and :func:`total`, which run in :data:`MONEY_CONTEXT`: precision
:data:`PRECISION` digits, with Inexact, Rounded, Overflow, Underflow, Clamped and InvalidOperation
trapped, so a result that is not exact raises :class:`~caracal.exceptions.InexactMoneyError` instead of
being rounded. With bounded amounts that cannot happen: a product of two amounts has at most 72 digits,
and a sum of ``n`` amounts at most ``36 + log10(n)``. Amounts beyond the bounds can exist only in ledger
lines written before the bounds existed (they are still read and verified); adding those up may be
refused, which fails closed.

The helpers cost about as much as the operators they replace (one C call inside a function call) and
never touch the caller's thread-local decimal context.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import (
    MAX_EMAX,
    MIN_EMIN,
    Clamped,
    Context,
    Decimal,
    DecimalException,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    Subnormal,
    Underflow,
)

from caracal.exceptions import InexactMoneyError

__all__ = [
    "MAX_FRACTION_DIGITS",
    "MAX_INTEGER_DIGITS",
    "MONEY_CONTEXT",
    "PRECISION",
    "add",
    "exact_cost",
    "multiply",
    "subtract",
    "total",
]

MAX_INTEGER_DIGITS = 18
"""Most digits an amount may have before the decimal point: amounts are below ``10**18``."""

MAX_FRACTION_DIGITS = 18
"""Most digits an amount may have after the decimal point, as written."""

PRECISION = 100
"""Significant digits of :data:`MONEY_CONTEXT`: more than any product (72) or any sum of up to ``10**60``
amounts (36 + 60) within the bounds needs, so in-bounds money is never inexact."""

MONEY_CONTEXT = Context(
    prec=PRECISION,
    Emax=MAX_EMAX,
    Emin=MIN_EMIN,
    traps=[Inexact, Rounded, Overflow, Underflow, Subnormal, Clamped, InvalidOperation, DivisionByZero],
)
"""The one context money arithmetic runs in: anything but an exact result raises."""

_RESOLUTION = Decimal(1).scaleb(-MAX_FRACTION_DIGITS)
_DROP_ZEROS = Context(prec=PRECISION, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact, InvalidOperation])
"""For :func:`exact_cost` only: dropping trailing zeros signals Rounded (digits were discarded) although
the value is unchanged; Inexact is what would mean a changed value."""
_ZERO = Decimal(0)


def _inexact(operation: str, a: Decimal, b: Decimal, exc: DecimalException) -> InexactMoneyError:
    return InexactMoneyError(
        f"{a} {operation} {b} cannot be computed exactly in {PRECISION} digits ({type(exc).__name__}); "
        f"Caracal never rounds money. Amounts are limited to {MAX_INTEGER_DIGITS} digits before and "
        f"{MAX_FRACTION_DIGITS} after the decimal point; a ledger line beyond that was written before the "
        f"limits existed"
    )


def add(a: Decimal, b: Decimal) -> Decimal:
    """``a + b``, exactly (or :class:`InexactMoneyError`)."""
    try:
        return MONEY_CONTEXT.add(a, b)
    except DecimalException as exc:
        raise _inexact("+", a, b, exc) from None


def subtract(a: Decimal, b: Decimal) -> Decimal:
    """``a - b``, exactly (or :class:`InexactMoneyError`)."""
    try:
        return MONEY_CONTEXT.subtract(a, b)
    except DecimalException as exc:
        raise _inexact("-", a, b, exc) from None


def multiply(a: Decimal, b: Decimal) -> Decimal:
    """``a * b``, exactly (or :class:`InexactMoneyError`)."""
    try:
        return MONEY_CONTEXT.multiply(a, b)
    except DecimalException as exc:
        raise _inexact("x", a, b, exc) from None


def total(amounts: Iterable[Decimal]) -> Decimal:
    """The exact sum of ``amounts`` (``Decimal(0)`` for none)."""
    result = _ZERO
    for amount in amounts:
        result = add(result, amount)
    return result


def exact_cost(quantity: Decimal, unit_price: Decimal, error: type[Exception]) -> Decimal:
    """``quantity x unit_price`` as an amount within the bounds, with its value exactly.

    The product keeps its natural exponent (``1000 x 0.0000025`` is ``0.0025000``) unless that has more
    than :data:`MAX_FRACTION_DIGITS` decimals, in which case trailing zeros are dropped down to 18 (the
    same value). A product that needs a 19th decimal or is ``10**18`` or more raises ``error``: it could
    not be recorded without rounding.
    """
    product = multiply(quantity, unit_price)
    if product.adjusted() >= MAX_INTEGER_DIGITS and product:
        raise error(
            f"the cost {quantity} x {unit_price} = {product} is 10^{MAX_INTEGER_DIGITS} or more, beyond "
            f"the largest amount Caracal records"
        )
    exponent = product.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_FRACTION_DIGITS:
        try:
            return _DROP_ZEROS.quantize(product, _RESOLUTION)
        except DecimalException:
            raise error(
                f"the cost {quantity} x {unit_price} = {product} has more than {MAX_FRACTION_DIGITS} digits "
                f"after the decimal point; Caracal never rounds money: use a quantity or a unit price "
                f"with fewer decimals"
            ) from None
    return product
