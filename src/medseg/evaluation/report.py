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
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ..errors import atomic_path  # noqa: E402

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
.swatch{display:inline-block;width:1em;height:1em;margin:0 .3em 0 .8em;vertical-align:middle}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(256px,1fr));gap:1rem}
figure{margin:0}figure img{width:256px;max-width:100%;image-rendering:pixelated;
 image-rendering:crisp-edges;border:1px solid #e5e7eb}
figcaption{font-size:.8rem;color:#57606a;word-break:break-all}
img.plot{max-width:100%}
figure.pair img{width:49%}.grid:has(figure.pair){grid-template-columns:repeat(auto-fill,minmax(360px,1fr))}
tr.chosen td{background:#dafbe1;font-weight:600}
.scroll.short{max-height:20rem}
.side{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
details pre{font-size:.8rem;background:#f6f8fa;padding:.6rem;overflow:auto;max-height:30rem}
h3{font-size:1rem;margin:1.2rem 0 .4rem}
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
    if value is None:
        return "n/a"
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


def _dice_plots(cases: list[dict], by_group: bool = True) -> list[str]:
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
    if by_group and "group" in cases[0] and len(groups) > 1:
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


def _prob_rgb(prob: np.ndarray) -> np.ndarray:
    """Probability map in [0, 1] -> RGB through matplotlib's 'magma' colormap (dark = 0, yellow = 1)."""
    return (plt.get_cmap("magma")(np.clip(prob, 0, 1))[..., :3] * 255).astype(np.uint8)


def _legend(legend: list[tuple[str, tuple[int, int, int]]]) -> str:
    """Colour swatches with the classes' names (multi-class overlays)."""
    items = "".join(f'<span class="swatch" style="background:rgb{tuple(c)}"></span>{html.escape(n)} '
                    for n, c in legend)
    return f'<p class="legend">{items}</p>'


def _overlay_grid(overlays: list[tuple], legend: list | None = None) -> str:
    figs = []
    for pic in overlays:
        cap, img = pic[0], pic[1]
        imgs = f'<img src="{_png_uri(img)}" alt="{html.escape(cap)}">'
        if len(pic) > 2 and pic[2] is not None:
            imgs += f'<img src="{_png_uri(_prob_rgb(pic[2]))}" alt="{html.escape(cap)} probability">'
        figs.append(f'<figure class="{"pair" if len(pic) > 2 else ""}">{imgs}<figcaption>{html.escape(cap)}'
                    "</figcaption></figure>")
    if legend:
        return ("<p>Prediction filled, ground truth outlined, each class in its colour:</p>" + _legend(legend)
                + f'<div class="grid">{"".join(figs)}</div>')
    return ('<p>Ground truth outlined in green, prediction in red; beside it the predicted probability '
            f'(dark = 0, yellow = 1).</p><div class="grid">{"".join(figs)}</div>')


def _kv_table(rows: dict) -> str:
    return _summary_table(rows)


def _subgroups(subgroups: dict[str, dict[str, dict]]) -> str:
    parts = []
    for key, table in subgroups.items():
        head = "<tr><th>" + html.escape(key) + "</th><th>cases</th><th>Dice mean</th><th>IoU mean</th>" \
               "<th>share IoU &ge; 0.4</th></tr>"
        body = "".join(f"<tr><td>{html.escape(str(g))}</td><td class='num'>{s['n']}</td>"
                       f"<td class='num'>{_fmt(s['dice_mean'])}</td><td class='num'>{_fmt(s['iou_mean'])}</td>"
                       f"<td class='num'>{s['iou_0.4_share']:.0%}</td></tr>" for g, s in table.items())
        parts.append(f"<h3>By {html.escape(key)}</h3><div class='side'><table>{head}{body}</table>")
        values = {g: [d for d in s.get("dice", []) if d == d] for g, s in table.items()}
        values = {g: v for g, v in values.items() if v}
        if values:
            fig, ax = plt.subplots(figsize=(max(3.0, 1.1 * len(values) + 1.5), 2.8))
            ax.boxplot(list(values.values()))
            ax.set_xticks(range(1, len(values) + 1), [f"{g}\n(n={len(v)})" for g, v in values.items()],
                          fontsize=8)
            ax.set(ylim=(0, 1.02), ylabel="Dice", title=f"Dice by {key}")
            ax.grid(alpha=0.3, axis="y")
            parts.append(_img(_fig_uri(fig), f"Dice by {key}"))
        parts.append("</div>")
    return "\n".join(parts)


def _sweep(rows: list[dict]) -> str:
    head = "<tr><th>setting</th><th>Dice mean (lesion cases)</th><th>IoU mean</th><th>Dice mean (all cases)</th></tr>"
    body = []
    for r in rows:
        mark = " (chosen)" if r.get("chosen") else (" (before)" if r.get("current") else "")
        cls = ' class="chosen"' if r.get("chosen") else ""
        body.append(f"<tr{cls}><td>{html.escape(r['setting'] + mark)}</td><td class='num'>{_fmt(r.get('dice_mean'))}"
                    f"</td><td class='num'>{_fmt(r.get('iou_mean'))}</td>"
                    f"<td class='num'>{_fmt(r.get('dice_mean_all'))}</td></tr>")
    return f'<div class="scroll short"><table>{head}{"".join(body)}</table></div>'


def _stress(rows: list[dict]) -> str:
    """The stress-test table: one row per input shift, its mean Dice, the change against the unshifted input
    and the worst case."""
    head = ("<tr><th>shift</th><th>what</th><th>Dice mean (all cases)</th><th>change</th>"
            "<th>Dice mean (lesion cases)</th><th>worst case</th><th>its Dice</th></tr>")
    body = []
    for r in rows:
        change = "reference" if r["shift"] == "none" else f"{r['change']:+.3f}"
        body.append(f"<tr><td>{_fmt(r['shift'])}</td><td>{_fmt(r.get('description', ''))}</td>"
                    f"<td class='num'>{_fmt(r['dice_mean'])}</td><td class='num'>{html.escape(change)}</td>"
                    f"<td class='num'>{_fmt(r.get('dice_mean_lesion'))}</td><td>{_fmt(r['worst_case'])}</td>"
                    f"<td class='num'>{_fmt(r['worst_dice'])}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _details(title: str, doc: dict) -> str:
    text = html.escape(json.dumps(doc, indent=2, default=str))
    return f"<details><summary>{html.escape(title)}</summary><pre>{text}</pre></details>"


def render_report(title: str, summary: dict, cases: list[dict], overlays: list[tuple], log_rows: list[dict],
                  notes: list[str], *, subgroups: dict | None = None, sweep: list[dict] | None = None,
                  lesion_summary: dict | None = None, config: dict | None = None,
                  fingerprint: dict | None = None, stress: list[dict] | None = None,
                  per_class: list[dict] | None = None, legend: list | None = None) -> str:
    """Return the HTML text: summary, learning curves, distribution, subgroups, threshold sweep, lesions,
    stress test, best / median / worst cases, the sortable per-case table, configuration and notes. `overlays` items
    are (caption, RGB overlay) or (caption, RGB overlay, probability map). A multi-class run adds `per_class`
    (one row per class and their mean) and `legend` ((class name, RGB) for the overlays' colours)."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if summary:
        parts.append(_summary_table(summary))
    if per_class:
        parts += ["<h2>Per class</h2><p>Each class scored as its own binary segmentation (cases where the class "
                  "is in the ground truth; lesion-wise detection for lesion classes).</p>", _cases_table(per_class)]
    curves = _curves(log_rows) if log_rows else ""
    if curves:
        parts += ["<h2>Learning curves</h2>", curves]
    plots = _dice_plots([c for c in cases if _to_float(c.get("gt_pixels", 1)) != 0],
                        by_group=not subgroups) if cases else []
    if plots:
        parts += ["<h2>Distribution</h2>", *plots]
    if subgroups:
        parts += ["<h2>Subgroups</h2><p>Cases with a lesion. The share with IoU &ge; 0.4 is the mammography "
                  "workflow's 'accurate' rule.</p>", _subgroups(subgroups)]
    if sweep:
        parts += ["<h2>Threshold and post-processing</h2><p>Every setting tried on this split; the chosen one "
                  "is saved into the run and used by <code>medseg predict</code>.</p>", _sweep(sweep)]
    if lesion_summary:
        parts += ["<h2>Lesions</h2><p>Connected components (3D for volumes): a lesion is detected when a "
                  "predicted component overlaps it; over-share is the fraction of wrong pixels that are false "
                  "positives.</p>", _kv_table(lesion_summary)]
    if stress:
        parts += ["<h2>Stress test</h2><p>The same cases predicted again with each input shift, scored as above "
                  "(Dice per case, 3D over a patient's slices) at the run's threshold and post-processing; change: "
                  "the mean Dice over all cases minus that of the unshifted input.</p>", _stress(stress)]
    if overlays:
        parts += ["<h2>Best / median / worst cases</h2>", _overlay_grid(overlays, legend)]
    if cases:
        parts += [f"<h2>All cases ({len(cases)})</h2>", "<p>Click a column header to sort.</p>", _cases_table(cases)]
    if config or fingerprint:
        parts.append("<h2>Configuration</h2>")
        if config:
            parts.append(_details("Plan (every training setting, the split and the preprocessing)", config))
        if fingerprint:
            parts.append(_details("Data fingerprint (what was evaluated)", fingerprint))
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
