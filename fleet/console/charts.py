"""Inline SVG charts rendered on the server (no JavaScript, no CDN)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

LEVEL_COLOURS = {"ok": "var(--ok)", "warn": "var(--warn)", "alert": "var(--bad)", "insufficient": "var(--muted)"}


def psi_bars(features: Sequence[dict], warn: float, alert: float, width: int = 760) -> Markup:
    """Horizontal bars: PSI per feature, coloured by level, with warn/alert threshold lines."""
    if not features:
        return Markup('<p class="empty">No features.</p>')
    row, label_w, pad = 22, 120, 8
    height = row * len(features) + 30
    vmax = max([alert * 1.5] + [float(f["psi"]) for f in features])
    plot_w = width - label_w - 70

    def x(v: float) -> float:
        return label_w + plot_w * min(v, vmax) / vmax

    parts = [f'<svg class="chart psi-chart" role="img" aria-label="PSI per feature" viewBox="0 0 {width} {height}" '
             f'width="100%" xmlns="http://www.w3.org/2000/svg">']
    for i, f in enumerate(features):
        y = 10 + i * row
        colour = LEVEL_COLOURS.get(f.get("level", "ok"), "var(--accent)")
        has_data = bool(f.get("n_current", 1) and f.get("n_reference", 1))
        value = f"{float(f['psi']):.3f}" if has_data else "no data"
        title = f"PSI {float(f['psi']):.4f}, JS {float(f.get('js', 0)):.4f}" if has_data else "no data"
        parts.append(f'<text x="{label_w - pad}" y="{y + 14}" text-anchor="end" class="lbl">{escape(str(f["name"]))}'
                     "</text>")
        parts.append(f'<rect class="bar" data-feature="{escape(str(f["name"]))}" x="{label_w}" y="{y + 3}" '
                     f'width="{max(1.0, x(float(f["psi"])) - label_w):.1f}" height="{row - 8}" rx="3" '
                     f'fill="{colour}"><title>{escape(str(f["name"]))}: {title}</title></rect>')
        parts.append(f'<text x="{x(float(f["psi"])) + 6:.1f}" y="{y + 14}" class="val">{value}</text>')
    for v, cls, name in ((warn, "thr-warn", "warn"), (alert, "thr-alert", "alert")):
        parts.append(f'<line class="{cls}" x1="{x(v):.1f}" x2="{x(v):.1f}" y1="4" y2="{height - 18}"/>'
                     f'<text x="{x(v):.1f}" y="{height - 4}" text-anchor="middle" class="axis">{name} {v:g}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def histogram_pair(reference: Sequence[int], current: Sequence[int], width: int = 240, height: int = 90) -> Markup:
    """Reference vs current proportions per bin (grey outline vs filled accent)."""
    rt, ct = sum(reference) or 1, sum(current) or 1
    rp = [r / rt for r in reference]
    cp = [c / ct for c in current]
    n = max(1, len(rp))
    vmax = max(rp + cp + [1e-9])
    bw = (width - 8) / n
    parts = [f'<svg class="chart hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             'xmlns="http://www.w3.org/2000/svg">']
    for i, (r, c) in enumerate(zip(rp, cp, strict=False)):
        x0 = 4 + i * bw
        hc = (height - 8) * c / vmax
        hr = (height - 8) * r / vmax
        parts.append(f'<rect x="{x0 + 1:.1f}" y="{height - 4 - hc:.1f}" width="{bw - 2:.1f}" height="{hc:.1f}" '
                     f'class="cur"><title>bin {i}: current {c:.1%}, reference {r:.1%}</title></rect>')
        parts.append(f'<rect x="{x0 + 1:.1f}" y="{height - 4 - hr:.1f}" width="{bw - 2:.1f}" height="{hr:.1f}" '
                     'class="ref"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def spark(values: Sequence[float], width: int = 160, height: int = 32) -> Markup:
    if len(values) < 2:
        return Markup("")
    vmax, vmin = max(values), min(values)
    span = (vmax - vmin) or 1.0
    pts = " ".join(f"{i * (width - 4) / (len(values) - 1) + 2:.1f},{height - 3 - (v - vmin) / span * (height - 6):.1f}"
                   for i, v in enumerate(values))
    return Markup(f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
                  f'<polyline points="{pts}"/></svg>')


def share_bar(parts: Sequence[tuple[str, int]]) -> Markup:
    total = sum(n for _, n in parts) or 1
    segs = "".join(f'<span style="width:{100 * n / total:.2f}%" title="{escape(lbl)}: {n}"></span>'
                   for lbl, n in parts)
    return Markup(f'<div class="sharebar">{segs}</div>')
