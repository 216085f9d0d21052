"""Small SVG charts drawn on the server: line charts, scatter plots, interval bars.

Written here rather than with matplotlib: importing matplotlib costs about half a second
per process and its first run builds a font cache, both paid by a web server for a few
lines and dots. And an inline SVG keeps its text as text: tick labels, legends and
titles stay readable by screen readers, selectable, searchable and zoomable, where a
rendered PNG is a picture of words.

Every chart is an ``<svg role="img">`` named by its ``<title>`` (``aria-labelledby``)
and summarised in a ``<desc>``; every label is escaped, so a run named ``<script>``
stays a string. Non-finite numbers are skipped; a ``None`` value breaks a line.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

from markupsafe import Markup, escape

#: Okabe–Ito colours: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
#: Dash patterns cycled once the palette is used up, so series stay apart without colour.
DASHES = ("", "6 3", "2 3", "8 3 2 3")
TEXT, AXIS, GRID, REF = "#57606a", "#8c959f", "#eaeef2", "#6e7781"
FONT = 'font-family="system-ui, -apple-system, sans-serif" font-size="11"'
CHAR_W = 6.2  # rough width of one 11px character, for laying out labels

_ids = itertools.count(1)


# --------------------------------------------------------------------------
# scales and ticks
# --------------------------------------------------------------------------


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _nice_step(span: float, target: int) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) near ``span / target``."""
    raw = span / max(target, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * power * 1.0000001:
            return m * power
    return 10.0 * power


def _padded(lo: float, hi: float) -> tuple[float, float]:
    """A usable range around one value (or an all-equal series)."""
    if hi > lo:
        return lo, hi
    pad = abs(lo) * 0.1 or 1.0
    return lo - pad, hi + pad


def nice_ticks(lo: float, hi: float, target: int = 5) -> tuple[float, float, list[float]]:
    """The range widened to round numbers and the round ticks across it."""
    lo, hi = max(lo, -1e300), min(hi, 1e300)
    lo, hi = _padded(lo, hi)
    span = hi - lo
    if not math.isfinite(span):
        lo, hi, span = lo / 2, hi / 2, hi / 2 - lo / 2
    step = _nice_step(span, target)
    start, stop = math.floor(lo / step), math.ceil(hi / step)
    ticks = [_clean(i * step, step) for i in range(int(start), int(stop) + 1)]
    return ticks[0], ticks[-1], ticks


def _clean(value: float, step: float) -> float:
    """``value`` without float noise (0.30000000000000004 → 0.3, -0.0 → 0)."""
    digits = max(0, 2 - math.floor(math.log10(step))) if step > 0 else 0
    value = round(value, min(digits, 15))
    return 0.0 if value == 0 else value


def _log_ticks(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """Ticks for a log axis: decades, with 2 and 5 between when the range is narrow."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if b == a:
        b += 1
    mantissas = (1.0, 2.0, 5.0) if b - a <= 2 else (1.0,)
    every = max(1, (b - a) // 6)
    ticks = [m * 10.0 ** e for e in range(a, b + 1, every) for m in mantissas
             if m * 10.0 ** e <= 10.0 ** b]
    return 10.0 ** a, 10.0 ** b, ticks


def tick_label(value: float, step: float | None = None) -> str:
    """A short label for a tick: as many decimals as the step needs, or 1.5e+06 when huge."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6 or magnitude < 1e-4:
        return f"{value:.3g}"
    if step is None or step <= 0:
        return f"{value:.4g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    while decimals < 6 and abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1  # 2.5 × 10^k needs one more digit than 1, 2 or 5
    return f"{value:,.{min(decimals, 6)}f}"


def shared_scale(values: Iterable[float | None], *, include: Sequence[float] = ()
                 ) -> tuple[float, float]:
    """One round scale [lo, hi] covering every finite value (and ``include``).

    Intervals drawn on one page share it, so their bars compare: a score in [0, 1]
    keeps [0, 1]; anything wider is widened to round numbers.
    """
    finite = [float(v) for v in itertools.chain(values, include) if _finite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if 0.0 <= lo and hi <= 1.0:
        return 0.0, 1.0
    lo, hi, _ = nice_ticks(lo, hi)
    return lo, hi


class _Axis:
    """A linear or log mapping from data to pixels, with its ticks."""

    def __init__(self, values: Sequence[float], start: float, end: float, *, log: bool = False,
                 target: int = 5) -> None:
        self.log = log
        if log:
            values = [v for v in values if v > 0]
            lo, hi = (min(values), max(values)) if values else (1.0, 10.0)
            self.lo, self.hi, self.ticks = _log_ticks(lo, hi)
            self.step = None
        else:
            lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
            self.lo, self.hi, self.ticks = nice_ticks(lo, hi, target)
            self.step = self.ticks[1] - self.ticks[0] if len(self.ticks) > 1 else None
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        if self.log:
            lo, hi, value = math.log10(self.lo), math.log10(self.hi), math.log10(value)
        else:
            lo, hi = self.lo, self.hi
        return self.start + (value - lo) / (hi - lo) * (self.end - self.start)

    def label(self, value: float) -> str:
        return tick_label(value, self.step) if not self.log else tick_label(value)


# --------------------------------------------------------------------------
# SVG pieces
# --------------------------------------------------------------------------


def _f(value: float) -> str:
    """A pixel coordinate: one decimal is finer than any screen."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, text: str, *, anchor: str = "start", cls: str = "",
          extra: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return (f'<text{klass} x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" fill="{TEXT}"'
            f'{extra}>{escape(text)}</text>')


def _open(kind: str, title: str, summary: str, width: int, height: int) -> tuple[str, str]:
    pid = f"plot-{next(_ids)}"
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot {kind}" role="img" '
            f'aria-labelledby="{pid}-title {pid}-desc" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" {FONT}>'
            f'<title id="{pid}-title">{escape(title)}</title>'
            f'<desc id="{pid}-desc">{escape(summary)}</desc>')
    return pid, head


def _frame(x: _Axis, y: _Axis, x_label: str, y_label: str, top: float, bottom: float,
           left: float, right: float) -> list[str]:
    """Grid lines, both axes with their ticks and labels."""
    out = ['<g class="grid">']
    for t in y.ticks:
        out.append(f'<line x1="{_f(left)}" x2="{_f(right)}" y1="{_f(y(t))}" y2="{_f(y(t))}" '
                   f'stroke="{GRID}"/>')
    out.append("</g>")
    out.append('<g class="axis x-axis">')
    out.append(f'<line x1="{_f(left)}" x2="{_f(right)}" y1="{_f(bottom)}" y2="{_f(bottom)}" '
               f'stroke="{AXIS}"/>')
    for t in x.ticks:
        px = x(t)
        out.append(f'<g class="tick"><line x1="{_f(px)}" x2="{_f(px)}" y1="{_f(bottom)}" '
                   f'y2="{_f(bottom + 4)}" stroke="{AXIS}"/>'
                   f'{_text(px, bottom + 15, x.label(t), anchor="middle")}</g>')
    out.append(_text((left + right) / 2, bottom + 32, x_label, anchor="middle",
                     cls="axis-label"))
    out.append("</g>")
    out.append('<g class="axis y-axis">')
    out.append(f'<line x1="{_f(left)}" x2="{_f(left)}" y1="{_f(top)}" y2="{_f(bottom)}" '
               f'stroke="{AXIS}"/>')
    for t in y.ticks:
        py = y(t)
        out.append(f'<g class="tick"><line x1="{_f(left - 4)}" x2="{_f(left)}" y1="{_f(py)}" '
                   f'y2="{_f(py)}" stroke="{AXIS}"/>'
                   f'{_text(left - 6, py + 4, y.label(t), anchor="end")}</g>')
    mid = (top + bottom) / 2
    out.append(_text(12, mid, y_label, anchor="middle", cls="axis-label",
                     extra=f' transform="rotate(-90 12 {_f(mid)})"'))
    out.append("</g>")
    return out


def _left_margin(y: _Axis) -> float:
    widest = max((len(y.label(t)) for t in y.ticks), default=1)
    return 26 + widest * CHAR_W


def _x_axis(values: Sequence[float], left: float, width: int, *, log: bool, spacing: int
            ) -> _Axis:
    """The x axis, its right end pulled in so that the last tick's label fits."""
    right = width - 12.0
    x = _Axis(values, left, right, log=log, target=max(2, int((right - left) // spacing)))
    half = len(x.label(x.ticks[-1])) * CHAR_W / 2 + 2
    if half > 12:
        right = width - half
        x = _Axis(values, left, right, log=log, target=max(2, int((right - left) // spacing)))
    return x


def scale_axis(lo: float, hi: float, *, title: str, width: int = 220, height: int = 20
               ) -> Markup:
    """The ruler of a column of :func:`interval` bars: the same scale, with round ticks."""
    pad = 4.0
    if not (_finite(lo) and _finite(hi)) or hi <= lo:
        lo, hi = 0.0, 1.0
    ticks = [t for t in nice_ticks(lo, hi, max(2, width // 50))[2] if lo <= t <= hi]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else None
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot scale-axis" role="img" '
           f'aria-label="{escape(title)}" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" data-lo="{lo:g}" data-hi="{hi:g}" {FONT} '
           f'font-weight="normal"><title>{escape(title)}</title>']
    for i, t in enumerate(ticks):
        px = pad + (t - lo) / (hi - lo) * (width - 2 * pad)
        anchor = "start" if i == 0 and px < 12 else "end" if px > width - 12 else "middle"
        out.append(f'<g class="tick"><line x1="{_f(px)}" x2="{_f(px)}" y1="{height - 4}" '
                   f'y2="{height}" stroke="{AXIS}"/>'
                   f'{_text(px, height - 7, tick_label(t, step), anchor=anchor)}</g>')
    out.append("</svg>")
    return Markup("".join(out))


def _empty(kind: str, title: str, width: int, height: int, message: str = "no data") -> Markup:
    _, head = _open(kind, title, f"{title}: {message}.", width, height)
    body = (f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="none" '
            f'stroke="{GRID}"/>' + _text(width / 2, height / 2 + 4, message, anchor="middle",
                                         cls="empty"))
    return Markup(head + body + "</svg>")


def _decimate(points: list[tuple[float, float | None]], x: _Axis, limit: int
              ) -> list[tuple[float, float | None]]:
    """At most about ``limit`` points: per pixel column its lowest and highest, in order.

    A curve of 100,000 steps would otherwise weigh megabytes for a few hundred pixels;
    keeping each column's extremes keeps the spikes a reader looks for.
    """
    if len(points) <= limit:
        return points
    out: list[tuple[float, float | None]] = []
    column: list[tuple[float, float]] = []
    current = None

    def flush() -> None:
        if column:
            low = min(column, key=lambda p: p[1])
            high = max(column, key=lambda p: p[1])
            out.extend(sorted({low, high}, key=lambda p: p[0]))
            column.clear()

    for px, py in points:
        if py is None:
            flush()
            out.append((px, None))
            current = None
            continue
        col = int(x(px))
        if col != current:
            flush()
            current = col
        column.append((px, py))
    flush()
    return out


# --------------------------------------------------------------------------
# charts
# --------------------------------------------------------------------------


def line_chart(series: Mapping[str, Sequence[tuple[float, float | None]]], *, title: str,
               x_label: str, y_label: str, hlines: Sequence[tuple[float, str]] = (),
               width: int = 640, height: int = 280) -> Markup:
    """Lines over a shared x (a step): one colour per series, a legend when several.

    ``None`` as a value breaks its line; non-finite values are skipped. ``hlines`` are
    labelled reference lines (a baseline's score, a target), always within the y range.
    """
    clean: dict[str, list[tuple[float, float | None]]] = {}
    for name, points in series.items():
        kept: list[tuple[float, float | None]] = []
        for px, py in points:
            if not _finite(px):
                continue
            if py is None:
                kept.append((float(px), None))
            elif _finite(py):
                kept.append((float(px), float(py)))
        kept.sort(key=lambda p: p[0])
        clean[str(name)] = kept
    refs = [(float(v), str(label)) for v, label in hlines if _finite(v)]
    xs = [p[0] for pts in clean.values() for p in pts if p[1] is not None]
    ys = [p[1] for pts in clean.values() for p in pts if p[1] is not None]
    if not ys:
        return _empty("line-chart", title, width, height)
    names = list(clean)
    legend = len(names) > 1
    top = 12.0
    legend_rows = _legend_rows(names, width - 20) if legend else []
    top += 16 * len(legend_rows)
    bottom = height - 40.0
    y = _Axis(ys + [v for v, _ in refs], bottom, top)
    left = _left_margin(y)
    x = _x_axis(xs, left, width, log=False, spacing=80)
    right = x.end
    summary = _line_summary(clean, refs, x_label)
    _, head = _open("line-chart", title, summary, width, height)
    out = [head, *_frame(x, y, x_label, y_label, top, bottom, left, right)]
    for value, label in refs:
        py = y(value)
        out.append(f'<g class="hline" data-value="{value:g}"><line x1="{_f(left)}" '
                   f'x2="{_f(right)}" y1="{_f(py)}" y2="{_f(py)}" stroke="{REF}" '
                   f'stroke-dasharray="4 3"/>'
                   f'{_text(right - 2, py - 4, label, anchor="end")}</g>')
    for i, name in enumerate(names):
        colour, dash = _style(i)
        out.append(f'<g class="series" data-name="{escape(name)}">')
        for run in _runs(_decimate(clean[name], x, 4 * width)):
            coords = [(x(px), y(py)) for px, py in run]
            if len(coords) == 1:
                out.append(f'<circle class="point" cx="{_f(coords[0][0])}" '
                           f'cy="{_f(coords[0][1])}" r="2.5" fill="{colour}"/>')
            else:
                pts = " ".join(f"{_f(a)},{_f(b)}" for a, b in coords)
                out.append(f'<polyline class="line" fill="none" stroke="{colour}" '
                           f'stroke-width="1.6"{_dash(dash)} points="{pts}"/>')
        out.append("</g>")
    if legend:
        out.append('<g class="legend">')
        for row_index, row in enumerate(legend_rows):
            ly = 12 + 16 * row_index
            for name, lx in row:
                colour, dash = _style(names.index(name))
                out.append(f'<g class="legend-item"><line x1="{_f(lx)}" x2="{_f(lx + 18)}" '
                           f'y1="{_f(ly - 4)}" y2="{_f(ly - 4)}" stroke="{colour}" '
                           f'stroke-width="2"{_dash(dash)}/>{_text(lx + 22, ly, name)}</g>')
        out.append("</g>")
    out.append("</svg>")
    return Markup("".join(out))


def _style(index: int) -> tuple[str, str]:
    return PALETTE[index % len(PALETTE)], DASHES[(index // len(PALETTE)) % len(DASHES)]


def _dash(dash: str) -> str:
    return f' stroke-dasharray="{dash}"' if dash else ""


def _legend_rows(names: list[str], room: float) -> list[list[tuple[str, float]]]:
    """Legend entries laid out left to right, wrapping when a row is full."""
    rows: list[list[tuple[str, float]]] = [[]]
    x = 10.0
    for name in names:
        need = 22 + len(name) * CHAR_W + 14
        if rows[-1] and x + need > room:
            rows.append([])
            x = 10.0
        rows[-1].append((name, x))
        x += need
    return rows


def _runs(points: list[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """The unbroken stretches of a series (``None`` ends one)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for px, py in points:
        if py is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((px, py))
    return [r for r in runs if r]


def _line_summary(clean: Mapping[str, list[tuple[float, float | None]]],
                  refs: Sequence[tuple[float, str]], x_label: str) -> str:
    parts = []
    for name, points in clean.items():
        values = [(px, py) for px, py in points if py is not None]
        if not values:
            parts.append(f"{name}: no values")
            continue
        first, last = values[0], values[-1]
        low = min(values, key=lambda p: p[1])
        parts.append(f"{name}: {len(values)} points, {x_label} {first[0]:g} to {last[0]:g}, "
                     f"first {first[1]:.4g}, last {last[1]:.4g}, "
                     f"lowest {low[1]:.4g} at {low[0]:g}")
    parts += [f"{label}: {value:.4g}" for value, label in refs]
    return "; ".join(parts) + "."


def scatter(points: Sequence[tuple[float, float]], *, title: str, x_label: str, y_label: str,
            log_x: bool = False, highlight: Sequence[int] = (),
            labels: Sequence[str] | None = None, width: int = 420, height: int = 280
            ) -> Markup:
    """Dots; ``highlight`` (indices into ``points``) drawn larger, in another colour, named.

    ``labels[i]`` is point i's tooltip (and its visible name when highlighted). Points
    with a non-finite coordinate, or x ≤ 0 on a log axis, are skipped.
    """
    kept = [(i, float(px), float(py)) for i, (px, py) in enumerate(points)
            if _finite(px) and _finite(py) and (not log_x or px > 0)]
    if not kept:
        return _empty("scatter", title, width, height)
    marked = set(highlight)
    top, bottom = 12.0, height - 40.0
    y = _Axis([p[2] for p in kept], bottom, top)
    left = _left_margin(y)
    x = _x_axis([p[1] for p in kept], left, width, log=log_x, spacing=70)
    right = x.end
    shown_x = f"{x_label} (log scale)" if log_x else x_label
    best = [f"{labels[i]}" if labels and i < len(labels) else f"point {i}"
            for i, _, _ in kept if i in marked]
    summary = (f"{len(kept)} points; {shown_x} {min(p[1] for p in kept):.4g} to "
               f"{max(p[1] for p in kept):.4g}; {y_label} {min(p[2] for p in kept):.4g} to "
               f"{max(p[2] for p in kept):.4g}"
               + (f"; highlighted: {', '.join(best)}" if best else "") + ".")
    _, head = _open("scatter", title, summary, width, height)
    out = [head, *_frame(x, y, shown_x, y_label, top, bottom, left, right)]
    out.append('<g class="points">')
    for i, px, py in sorted(kept, key=lambda p: p[0] in marked):  # highlights on top
        label = labels[i] if labels is not None and i < len(labels) else None
        tip = f"<title>{escape(label)}</title>" if label else ""
        cx, cy = x(px), y(py)
        if i in marked:
            out.append(f'<circle class="point highlight" data-index="{i}" cx="{_f(cx)}" '
                       f'cy="{_f(cy)}" r="5.5" fill="{PALETTE[1]}" stroke="#000" '
                       f'stroke-width="1">{tip}</circle>')
            if label:
                anchor = "end" if cx > (left + right) / 2 else "start"
                dx = -8 if anchor == "end" else 8
                out.append(_text(cx + dx, max(cy - 6, 10.0), label, anchor=anchor,
                                 cls="point-label"))
        else:
            out.append(f'<circle class="point" data-index="{i}" cx="{_f(cx)}" cy="{_f(cy)}" '
                       f'r="3.5" fill="{PALETTE[0]}" fill-opacity="0.7">{tip}</circle>')
    out.append("</g></svg>")
    return Markup("".join(out))


def interval(value: float, low: float, high: float, *, lo: float, hi: float,
             marks: Sequence[tuple[float, str]] = (), title: str, width: int = 220,
             height: int = 22) -> Markup:
    """A point with its confidence interval as a bar on the fixed scale [lo, hi].

    Every row of a table gets the same ``lo``/``hi`` (see :func:`shared_scale`), so bars
    compare down the column. ``marks`` are labelled vertical lines (0, a margin, the
    baseline's score). Parts outside the scale are clipped to its edge.
    """
    if not (_finite(lo) and _finite(hi)) or hi <= lo:
        lo, hi = _padded(float(lo) if _finite(lo) else 0.0, float(lo) if _finite(lo) else 0.0)
    pad = 4.0

    def px(v: float) -> float:
        v = min(max(v, lo), hi)
        return pad + (v - lo) / (hi - lo) * (width - 2 * pad)

    mid = height / 2
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot interval" role="img" '
           f'aria-label="{escape(title)}" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" data-lo="{lo:g}" data-hi="{hi:g}">'
           f"<title>{escape(title)}</title>",
           f'<line class="scale" x1="{_f(pad)}" x2="{_f(width - pad)}" y1="{_f(mid)}" '
           f'y2="{_f(mid)}" stroke="{GRID}" stroke-width="2"/>']
    for mark, label in marks:
        if not _finite(mark):
            continue
        mx = px(float(mark))
        out.append(f'<line class="mark" data-value="{float(mark):g}" x1="{_f(mx)}" '
                   f'x2="{_f(mx)}" y1="1" y2="{_f(height - 1)}" stroke="{REF}" '
                   f'stroke-dasharray="2 2"><title>{escape(label)}</title></line>')
    if _finite(low) and _finite(high):
        a, b = sorted((float(low), float(high)))
        out.append(f'<rect class="ci" data-low="{a:g}" data-high="{b:g}" x="{_f(px(a))}" '
                   f'y="{_f(mid - 4)}" width="{_f(max(px(b) - px(a), 1.0))}" height="8" '
                   f'rx="2" fill="{PALETTE[5]}" fill-opacity="0.55"/>')
    if _finite(value):
        clipped = " clipped" if not lo <= value <= hi else ""
        out.append(f'<circle class="value{clipped}" data-value="{float(value):g}" '
                   f'cx="{_f(px(float(value)))}" cy="{_f(mid)}" r="3.5" fill="{PALETTE[0]}"/>')
    out.append("</svg>")
    return Markup("".join(out))
