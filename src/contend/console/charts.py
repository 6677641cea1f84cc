"""Charts as inline SVG geometry computed here; the templates only place it.

No JavaScript and no charting library: a chart is a few polylines or rects with their axis
ticks, sized in the SVG's own coordinates and scaled by the browser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Bar",
    "BarChart",
    "Frame",
    "LineChart",
    "Series",
    "Tick",
    "bar_chart",
    "line_chart",
    "nice_max",
]

WIDTH = 640
HEIGHT = 220
LEFT = 56
RIGHT = 12
TOP = 12
BOTTOM = 28


@dataclass(frozen=True, slots=True)
class Tick:
    label: str
    at: float


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    points: str
    last: float


@dataclass(frozen=True, slots=True)
class Bar:
    name: str
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """The SVG's size and the plot area's edges, in its own coordinates; and the axis ticks."""

    y_ticks: list[Tick]
    x_ticks: list[Tick]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM


@dataclass(frozen=True, slots=True, kw_only=True)
class LineChart(Frame):
    series: list[Series]


@dataclass(frozen=True, slots=True, kw_only=True)
class BarChart(Frame):
    bars: list[Bar]
    names: list[str] = field(default_factory=list)


def nice_max(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above `value` (at least 1)."""
    if value <= 1:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 5.0, 10.0):
        if value <= step * power:
            return step * power
    return 10.0 * power


def _count(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:,.0f}"


def _y_ticks(top_value: float) -> list[Tick]:
    plot = HEIGHT - BOTTOM - TOP
    return [Tick(_count(top_value * i / 4), HEIGHT - BOTTOM - plot * i / 4) for i in range(5)]


def _x_ticks(start: float, end: float, every: float) -> list[Tick]:
    """Minutes before `end`, every `every` seconds."""
    span = end - start
    ticks = []
    back = 0.0
    while back <= span + 1e-9:
        x = LEFT + (WIDTH - LEFT - RIGHT) * (span - back) / span
        ticks.append(Tick("now" if back == 0 else f"-{back / 60:g}m", x))
        back += every
    return ticks


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]], start: float, end: float
) -> LineChart:
    """One polyline per named series of (clock time, value) between `start` and `end`."""
    top_value = nice_max(max((v for pts in series.values() for _, v in pts), default=0.0))
    span = max(end - start, 1e-9)
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    lines = []
    for name, pts in series.items():
        xs = (LEFT + plot_w * (t - start) / span for t, _ in pts)
        ys = (HEIGHT - BOTTOM - plot_h * v / top_value for _, v in pts)
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
        lines.append(Series(name, coords, pts[-1][1] if pts else 0.0))
    return LineChart(
        series=lines, y_ticks=_y_ticks(top_value), x_ticks=_x_ticks(start, end, (end - start) / 6)
    )


def bar_chart(
    groups: Sequence[tuple[float, dict[str, float | None]]], names: Sequence[str], end: float
) -> BarChart:
    """Grouped bars: for each (minute start, {name: value}), one bar per name side by side."""
    values = [v for _, g in groups for v in g.values() if v is not None]
    top_value = nice_max(max(values, default=0.0))
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(groups), 1)
    width = max(slot * 0.8 / max(len(names), 1), 0.5)
    bars = []
    for i, (_, group) in enumerate(groups):
        for j, name in enumerate(names):
            value = group.get(name)
            if not value:
                continue
            h = plot_h * value / top_value
            bars.append(
                Bar(
                    name,
                    LEFT + i * slot + slot * 0.1 + j * width,
                    HEIGHT - BOTTOM - h,
                    width,
                    h,
                    f"{name}: {value:,.0f}",
                )
            )
    start = groups[0][0] if groups else end - 3600
    return BarChart(
        bars=bars,
        names=list(names),
        y_ticks=_y_ticks(top_value),
        x_ticks=_x_ticks(start, end, (end - start) / 6),
    )
