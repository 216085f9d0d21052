"""The run page (``GET /runs/{id}``): a run's fields, its gate, and its metrics as curves.

Plain HTML with inline SVG, no script: each series (the loss curve, the eval loss) is a
polyline over its steps, scaled to its own range; a null value (NaN or an infinity the
trainer reported) breaks the line.
"""

from __future__ import annotations

import html
from typing import Any

WIDTH, HEIGHT, PAD = 560, 160, 28


def _svg(points: list[dict[str, Any]]) -> str:
    steps = [p["step"] for p in points]
    values = [p["value"] for p in points if p["value"] is not None]
    if not values:
        return "<p><small>no finite values</small></p>"
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(values), max(values)
    xs = (x1 - x0) or 1
    ys = (y1 - y0) or 1.0
    lines, current = [], []
    for point in points:
        if point["value"] is None:
            if current:
                lines.append(current)
            current = []
            continue
        x = PAD + (point["step"] - x0) / xs * (WIDTH - 2 * PAD)
        y = HEIGHT - PAD - (point["value"] - y0) / ys * (HEIGHT - 2 * PAD)
        current.append(f"{x:.1f},{y:.1f}")
    if current:
        lines.append(current)
    paths = "".join(f'<polyline fill="none" stroke="#1565c0" stroke-width="1.5" '
                    f'points="{" ".join(line)}"/>' if len(line) > 1 else
                    f'<circle r="2" fill="#1565c0" cx="{line[0].split(",")[0]}" '
                    f'cy="{line[0].split(",")[1]}"/>' for line in lines)
    return (f'<svg width="{WIDTH}" height="{HEIGHT}" role="img">'
            f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#fafafa"/>{paths}'
            f'<text x="2" y="{PAD - 8}" font-size="11">{y1:.4g}</text>'
            f'<text x="2" y="{HEIGHT - 6}" font-size="11">{y0:.4g}</text>'
            f'<text x="{PAD}" y="{HEIGHT - 6}" font-size="11" dx="20">step {x0}</text>'
            f'<text x="{WIDTH - PAD - 60}" y="{HEIGHT - 6}" font-size="11">step {x1}</text>'
            f"</svg>")


def render_run_page(run: dict[str, Any], series: dict[str, list[dict[str, Any]]],
                    gate: dict[str, Any] | None) -> str:
    """The page of one run (``run`` as the API gives it)."""
    esc = html.escape
    fields = "".join(f"<tr><th>{esc(key)}</th><td>{esc(str(run.get(key)))}</td></tr>"
                     for key in ("id", "external_id", "name", "dataset", "model", "status",
                                 "origin", "predictions_uri", "error", "created_at",
                                 "completed_at") if run.get(key) is not None)
    metrics = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>"
                      for k, v in sorted((run.get("metrics") or {}).items()))
    gate_text = (f"{esc(gate['decision'])} under {esc(gate['judge'])}: "
                 f"{esc(gate['reason'])}" if gate else "no gate result yet")
    curves = "".join(
        f"<h3>{esc(name)} <small>({len(points)} points)</small></h3>{_svg(points)}"
        for name, points in sorted(series.items())) or "<p>no metrics over steps</p>"
    title = esc(run.get("name") or run["id"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Run · {title}</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222 }}
th, td {{ padding: .2rem .6rem; text-align: left; vertical-align: top }}
small {{ color: #777 }}
</style></head>
<body><p><a href="/">leaderboards</a></p><h1>Run: {title}</h1>
<table>{fields}</table>
<h2>Gate</h2><p>{gate_text}</p>
<h2>Metrics over steps</h2>{curves}
<h2>Last values</h2><table>{metrics}</table>
<p><small>JSON: /api/runs/{esc(run["id"])} · /api/runs/{esc(run["id"])}/metrics</small></p>
</body></html>"""
