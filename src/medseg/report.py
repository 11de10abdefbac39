"""Self-contained HTML evaluation report for a segmentation run.

`render_report` turns a run summary, per-case metrics, overlay images, the
training log and free-text notes into one HTML page. Every image is embedded
as a base64 PNG and the page uses no external CSS, JS or fonts, so the file
opens offline. `write_report` writes it atomically.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from .errors import atomic_path  # noqa: E402

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 color:#1f2328;background:#fff;max-width:1100px;margin:2rem auto;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.5rem}h2{font-size:1.2rem;margin-top:2rem;
 border-bottom:1px solid #e5e7eb;padding-bottom:.3rem}
table{border-collapse:collapse;font-size:.9rem}
th,td{border:1px solid #e5e7eb;padding:.3rem .6rem;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f6f8fa}
.kv th{width:14rem}
.scroll{max-height:32rem;overflow:auto;border:1px solid #e5e7eb}
.scroll table{width:100%}.scroll th{position:sticky;top:0;cursor:pointer;user-select:none}
.scroll th:hover{background:#eaeef2}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(256px,1fr));gap:1rem}
figure{margin:0}figure img{width:256px;max-width:100%;image-rendering:pixelated;
 image-rendering:crisp-edges;border:1px solid #e5e7eb}
figcaption{font-size:.8rem;color:#57606a;word-break:break-all}
img.plot{max-width:100%}
"""

_SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(function(th,i){
 th.addEventListener("click",function(){
  var tb=th.closest("table").tBodies[0],asc=th.dataset.dir!=="asc";
  th.closest("tr").querySelectorAll("th").forEach(function(h){delete h.dataset.dir;});
  th.dataset.dir=asc?"asc":"desc";
  var key=function(r){var v=r.cells[i].dataset.v;return v===undefined?r.cells[i].textContent:v;};
  Array.from(tb.rows).sort(function(a,b){
   var x=key(a),y=key(b),nx=parseFloat(x),ny=parseFloat(y),c;
   if(!isNaN(nx)&&!isNaN(ny))c=nx-ny;else if(!isNaN(nx))c=-1;else if(!isNaN(ny))c=1;
   else c=x.localeCompare(y);
   return asc?c:-c;}).forEach(function(r){tb.appendChild(r);});
 });
});
"""


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _fmt(value: object) -> str:
    """Format a cell value: floats with 3 decimals, NaN as n/a, all escaped."""
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return html.escape(str(value))


def _to_float(value: object) -> float | None:
    """Parse a number from a log/metric value; None when missing or not finite."""
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _png_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fig_uri(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img class="plot" src="{uri}" alt="{html.escape(alt)}">'


def _summary_table(summary: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>"
                   for k, v in summary.items())
    return f'<table class="kv">{rows}</table>'


def _cases_table(cases: list[dict]) -> str:
    keys = list(cases[0].keys())
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
    body = []
    for case in cases:
        cells = []
        for k in keys:
            v = case.get(k, "")
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
                sort_key = "" if _is_nan(float(v)) else repr(float(v))
                cells.append(f'<td class="num" data-v="{sort_key}">{_fmt(v)}</td>')
            else:
                cells.append(f"<td>{_fmt(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _dice_plots(cases: list[dict]) -> list[str]:
    if not cases or "dice" not in cases[0]:
        return []
    pairs = [(c.get("group"), _to_float(c.get("dice"))) for c in cases]
    pairs = [(g, d) for g, d in pairs if d is not None]
    if not pairs:
        return []
    out = []
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist([d for _, d in pairs], bins=20, range=(0, 1), color="#4c78a8", edgecolor="white")
    ax.set(xlim=(0, 1), xlabel="Dice", ylabel="cases", title="Dice per case")
    out.append(_img(_fig_uri(fig), "Dice histogram"))
    groups = sorted({str(g) for g, _ in pairs if g is not None})
    if "group" in cases[0] and len(groups) > 1:
        data = [[d for g, d in pairs if str(g) == name] for name in groups]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.boxplot(data)
        ax.set_xticks(range(1, len(groups) + 1), groups)
        ax.set(ylim=(0, 1), ylabel="Dice", title="Dice per group")
        out.append(_img(_fig_uri(fig), "Dice per group"))
    return out


def _curves(log_rows: list[dict]) -> str:
    series = {}
    for name in ("train_loss", "val_dice"):
        pts = []
        for i, row in enumerate(log_rows):
            y = _to_float(row.get(name))
            x = _to_float(row.get("epoch"))
            if y is not None:
                pts.append((x if x is not None else float(i + 1), y))
        if pts:
            series[name] = pts
    if not series:
        return ""
    fig, axes = plt.subplots(1, len(series), figsize=(6, 3), squeeze=False)
    for ax, (name, pts), color in zip(axes[0], series.items(), ("#e45756", "#4c78a8")):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", markersize=3, color=color)
        ax.set(xlabel="epoch", title=name)
        ax.grid(alpha=0.3)
    return _img(_fig_uri(fig), "Learning curves")


def _overlay_grid(overlays: list[tuple[str, np.ndarray]]) -> str:
    figs = "".join(
        f'<figure><img src="{_png_uri(img)}" alt="{html.escape(cap)}">'
        f"<figcaption>{html.escape(cap)}</figcaption></figure>"
        for cap, img in overlays)
    return (f'<p>Ground truth in green, prediction in red.</p><div class="grid">{figs}</div>')


def render_report(title: str, summary: dict, cases: list[dict],
                  overlays: list[tuple[str, "np.ndarray"]], log_rows: list[dict],
                  notes: list[str]) -> str:
    """Return the HTML text."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if summary:
        parts.append(_summary_table(summary))
    if cases:
        parts.append(f"<h2>Cases ({len(cases)})</h2>")
        parts.append("<p>Click a column header to sort.</p>")
        parts.append(_cases_table(cases))
        parts.extend(_dice_plots(cases))
    if overlays:
        parts.append("<h2>Overlays</h2>")
        parts.append(_overlay_grid(overlays))
    curves = _curves(log_rows) if log_rows else ""
    if curves:
        parts.append("<h2>Learning curves</h2>")
        parts.append(curves)
    if notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        parts.append(f"<h2>Notes</h2><ul>{items}</ul>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n"
            f"<body>\n{body}\n<script>{_SORT_JS}</script>\n</body></html>\n")


def write_report(path: Path, html_text: str) -> None:
    """Write atomically: write to a temp file in the same folder, then os.replace."""
    with atomic_path(path) as tmp:
        tmp.write_text(html_text, encoding="utf-8")
