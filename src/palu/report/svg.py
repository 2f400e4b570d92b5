"""Inline SVG charts drawn in Python, so a report opens anywhere, offline, with no script or library."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7",
           "#bab0ac")
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


@dataclass
class Axis:
    """A value range mapped onto a pixel range; ``log`` maps log10 of the value."""

    lo: float
    hi: float
    ticks: list[float]
    log: bool = False

    def to_px(self, value: float, start: float, end: float) -> float:
        v, lo, hi = (math.log10(value), math.log10(self.lo), math.log10(self.hi)) if self.log else \
            (value, self.lo, self.hi)
        return start + (v - lo) / (hi - lo) * (end - start)

    def label(self, value: float) -> str:
        if self.log:
            return f"{value:g}"
        text = f"{round(value, 12):.4g}"
        return "0" if text == "-0" else text


def axis(values: list[float], log: bool = False, integer: bool = False) -> Axis:
    """Round ticks around ``values``: powers of ten on a log axis, 1/2/5 steps otherwise."""
    if log:
        lo_e, hi_e = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
        hi_e = max(hi_e, lo_e + 1)
        every = math.ceil((hi_e - lo_e) / 6)  # at most about 6 labels, however many decades
        hi_e = lo_e + every * math.ceil((hi_e - lo_e) / every)
        return Axis(10.0 ** lo_e, 10.0 ** hi_e, [10.0 ** e for e in range(lo_e, hi_e + 1, every)], log=True)
    lo, hi = min(values), max(values)
    if lo == hi:
        pad = 1.0 if integer or lo == 0 else abs(lo) * 0.1
        lo, hi = lo - pad, hi + pad
    step = _nice_step((hi - lo) / 5)
    if integer:
        step = max(1.0, float(round(step)))
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    return Axis(lo, hi, [lo + i * step for i in range(round((hi - lo) / step) + 1)])


def _nice_step(raw: float) -> float:
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


def _frame(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" {FONT}><title>{escape(title)}</title>'
            f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" font-size="13" font-weight="600">'
            f'{escape(title)}</text>{"".join(body)}</svg>')


def _axes(x: Axis, y: Axis, box: tuple[float, float, float, float], x_label: str, y_label: str) -> list[str]:
    """Grid lines, tick labels and axis titles inside ``box`` = (left, top, right, bottom)."""
    left, top, right, bottom = box
    out = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#999"/>']
    for t in x.ticks:
        px = x.to_px(t, left, right)
        out.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{bottom}" stroke="#eee"/>'
                   f'<text x="{px:.1f}" y="{bottom + 14}" text-anchor="middle">{escape(x.label(t))}</text>')
    for t in y.ticks:
        py = y.to_px(t, bottom, top)
        out.append(f'<line x1="{left}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{py + 4:.1f}" text-anchor="end">{escape(y.label(t))}</text>')
    mid_y = (top + bottom) / 2
    out.append(f'<text x="{(left + right) / 2:.1f}" y="{bottom + 30}" text-anchor="middle">{escape(x_label)}</text>'
               f'<text x="12" y="{mid_y:.1f}" text-anchor="middle" transform="rotate(-90 12 {mid_y:.1f})">'
               f'{escape(y_label)}</text>')
    return out


def line_chart(title: str, series: list[tuple[str, list[tuple[float, float | None]]]], log_y: bool = False,
               x_label: str = "epoch") -> str:
    """One line per (name, [(x, value)]) series; missing values (None) and, on a log axis,
    values <= 0 are left out and counted under the chart, so a gap is never silent."""
    kept = [(name, [(x, y) for x, y in pts if y is not None and (y > 0 or not log_y)]) for name, pts in series]
    dropped = sum(len([p for p in pts if p[1] is not None]) for _, pts in series) - sum(len(p) for _, p in kept)
    kept = [(name, pts) for name, pts in kept if pts]
    legend = len(kept) > 1
    width, height = 380 + (130 if legend else 0), max(230, (40 + 16 * len(kept)) if legend else 0)
    box = (70, 28, 370, height - 42)
    title += " (log scale)" if log_y else ""
    if not kept:
        return _frame(width, height, title, [f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">'
                                             'no values to plot</text>'])
    xs = axis([x for _, pts in kept for x, _ in pts], integer=True)
    ys = axis([y for _, pts in kept for _, y in pts], log=log_y)
    body = _axes(xs, ys, box, x_label, "")
    for i, (name, pts) in enumerate(kept):
        color = PALETTE[i % len(PALETTE)]
        coords = [(xs.to_px(x, box[0], box[2]), ys.to_px(y, box[3], box[1]), x, y) for x, y in sorted(pts)]
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                    + " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in coords) + '"/>')
        body += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}"><title>{escape(name)}, {x_label} '
                 f'{x:g}: {y:.4g}</title></circle>' for px, py, x, y in coords]
        if legend:
            ly = box[1] + 10 + 16 * i
            body.append(f'<rect x="{box[2] + 12}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
                        f'<text x="{box[2] + 27}" y="{ly + 1}">{escape(name)}</text>')
    if dropped:
        body.append(f'<text x="{box[2]}" y="{height - 4}" text-anchor="end" fill="#a00">{dropped} value(s) '
                    f'&lt;= 0 not shown on the log scale</text>')
    return _frame(width, height, title, body)


def scatter(title: str, points: list[tuple[str, float, float, str]], x_label: str, y_label: str,
            log_x: bool = True) -> str:
    """Labelled points (label, x, y, css colour); a label that would overlap another moves down, tied to
    its point by a thin line."""
    width, height = 860, 480
    box = (74, 28, 700, height - 46)
    xs = axis([x for _, x, _, _ in points], log=log_x)
    ys = axis([y for _, _, y, _ in points])
    body = _axes(xs, ys, box, x_label, y_label)
    placed: list[tuple[float, float, float]] = []  # (left, right, baseline) of the labels drawn
    pixels = sorted(((xs.to_px(x, box[0], box[2]), ys.to_px(y, box[3], box[1]), label, x, y, color)
                     for label, x, y, color in points), key=lambda p: p[1])
    for px, py, label, x, y, color in pixels:
        body.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="5" fill="{color}" stroke="#333">'
                    f'<title>{escape(label)}: {x:.4g}, {y:.4g}</title></circle>')
        left, right, base = px + 8, px + 8 + 6.5 * len(label), py + 4
        while any(lft < right and left < rgt and abs(b - base) < 12 for lft, rgt, b in placed):
            base += 12
        placed.append((left, right, base))
        if base != py + 4:
            body.append(f'<line x1="{px:.1f}" y1="{py:.1f}" x2="{left - 1:.1f}" y2="{base - 4:.1f}" stroke="#aaa"/>')
        body.append(f'<text x="{left:.1f}" y="{base:.1f}">{escape(label)}</text>')
    return _frame(width, height, title, body)
