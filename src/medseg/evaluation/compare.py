"""`medseg compare RUN_A RUN_B ...`: runs side by side on the cases they were all evaluated on.

Reads each RUN/eval/cases.csv (written by `medseg evaluate`). Cases are matched by their id; when the
runs were evaluated on different case sets, only the shared cases are compared and the others are named
in a warning (comparing means over different cases would mislead). Each run is tested against the first
with a paired Wilcoxon signed-rank test (metrics.paired_test).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import metrics
from ..errors import MedsegError

console = Console(stderr=True)


def read_cases(run: Path, metric: str) -> dict[tuple[str, str], float]:
    """(class, case) -> the metric, for the cases with a non-empty ground truth (class "" for binary runs)."""
    path = Path(run) / "eval" / "cases.csv"
    if not path.is_file():
        raise MedsegError(run, "no evaluation: run `medseg evaluate RUN` first (RUN/eval/cases.csv is missing)")
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise MedsegError(path, f"cannot read ({e})") from e
    if not rows or metric not in rows[0] or "case" not in rows[0]:
        raise MedsegError(path, f"no 'case' and {metric!r} columns (known: {', '.join(rows[0]) if rows else 'none'})")
    out = {}
    for r in rows:
        if int(float(r.get("gt_pixels") or 1)) == 0:  # empty ground truth: not in the headline metric
            continue
        try:
            out[(r.get("class") or "", r["case"])] = float(r[metric])
        except ValueError as e:
            raise MedsegError(path, f"case {r['case']}: {metric} is not a number ({r[metric]!r})") from e
    return out


def compare(runs: list[Path], metric: str = "dice", quiet: bool = False) -> dict:
    if len(runs) < 2:
        raise MedsegError(None, "compare needs at least two runs")
    values = [read_cases(r, metric) for r in runs]
    shared = sorted(set.intersection(*(set(v) for v in values)))
    if not shared:
        raise MedsegError(runs[1], f"no case in common with {runs[0]}: were they evaluated on the same data?")
    for run, v in zip(runs, values):
        extra = sorted(set(v) - set(shared))
        if extra and not quiet:
            names = ["/".join(filter(None, k)) for k in extra[:5]]
            console.print(f"[yellow]warning:[/] {escape(str(run))}: {len(extra)} cases not in every run are left "
                          f"out ({escape(', '.join(names))}{', ...' if len(extra) > 5 else ''})")
    result = {"metric": metric, "cases": len(shared), "runs": _entries(runs, values, shared)}
    classes = list(dict.fromkeys(k[0] for k in shared if k[0]))
    if classes:
        result["per_class"] = {c: {"cases": len(keys), "runs": _entries(runs, values, keys)}
                               for c in classes for keys in [[k for k in shared if k[0] == c]]}
    if not quiet:
        _print(result)
        for c, r in result.get("per_class", {}).items():
            _print({**r, "metric": f"{metric} of class {c}"})
    return result


def _entries(runs: list[Path], values: list[dict], keys: list) -> list[dict]:
    """Each run's summary on `keys`, the others against the first with a paired test."""
    base = [values[0][k] for k in keys]
    out = []
    for i, (run, v) in enumerate(zip(runs, values)):
        xs = [v[k] for k in keys]
        entry = {"run": str(run), **metrics.summarize(xs)}
        if i:
            entry["vs_first"] = metrics.paired_test(base, xs)
        out.append(entry)
    return out


def _print(result: dict) -> None:
    t = Table(title=f"{result['metric']} on {result['cases']} shared cases with a lesion (paired tests vs the first run)")
    for col in ("run", "mean", "median", "q1", "q3", "mean diff vs first (95% CI)", "median diff",
                "better / worse", "Wilcoxon p"):
        t.add_column(col, justify="left" if col == "run" else "right")
    for e in result["runs"]:
        vs = e.get("vs_first")
        diff = f"{vs['mean_diff']:+.3f} ({vs['ci95_low']:+.3f} to {vs['ci95_high']:+.3f})" if vs else "reference"
        p = "" if not vs else ("n/a" if math.isnan(vs["p_value"]) else f"{vs['p_value']:.3g}")
        median = f"{vs['median_diff']:+.3f}" if vs else ""
        counts = f"{vs['better']} / {vs['worse']}" if vs else ""
        t.add_row(escape(e["run"]), *(f"{e[k]:.3f}" for k in ("mean", "median", "q1", "q3")), diff, median, counts, p)
    Console().print(t)
