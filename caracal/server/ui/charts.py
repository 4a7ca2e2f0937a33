"""Stacked bar charts as inline SVG, drawn on the server: no JavaScript chart library, nothing to load.

Each bar segment carries its exact figure in a ``<title>`` (the browser's tooltip); pixel geometry is the
only place a figure is rounded, and it is never shown as money.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from caracal.core.spend_series import Bar, scaled

PALETTE = ("#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#84cc16", "#ec4899")
WIDTH = 720
HEIGHT = 180


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int
    color: str
    title: str


@dataclass(frozen=True)
class Chart:
    rects: list[Rect]
    legend: list[tuple[str, str]]
    width: int
    height: int
    top: Decimal
    first_label: str
    last_label: str


def stacked(bars: list[Bar], currency: str, label_of: dict[str, str], fmt: str) -> Chart:
    """A chart of ``bars``; ``label_of`` names the stacked parts (agent ids → names), ``fmt`` formats a
    bucket's start (``%H:00`` or ``%m-%d``)."""
    names = sorted({name for bar in bars for name, _v in bar.parts}, key=lambda n: label_of.get(n, n))
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    totals = [bar.total for bar in bars]
    slot = WIDTH // max(len(bars), 1)
    rects = []
    for index, bar in enumerate(bars):
        heights = scaled([*totals, *(value for _n, value in bar.parts)], HEIGHT)[len(totals) :]
        y = HEIGHT
        for (name, value), height in zip(bar.parts, heights, strict=True):
            if height <= 0:
                height = 1
            y -= height
            when = bar.start.strftime("%Y-%m-%d " + ("%H:00" if "H" in fmt else "")).strip()
            title = f"{when} UTC · {label_of.get(name, name)}: {value} {currency}"
            rects.append(Rect(index * slot + 1, y, max(slot - 2, 1), height, colors[name], title))
    legend = [(label_of.get(name, name), colors[name]) for name in names]
    return Chart(
        rects,
        legend,
        slot * max(len(bars), 1),
        HEIGHT,
        max(totals, default=Decimal(0)),
        bars[0].start.strftime(fmt) if bars else "",
        bars[-1].start.strftime(fmt) if bars else "",
    )


__all__ = ["Chart", "Rect", "stacked"]
