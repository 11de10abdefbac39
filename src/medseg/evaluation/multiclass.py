"""Multi-class evaluation: every metric per class, and their mean over the classes.

Each class is scored as the binary segmentation it is (prediction: the argmax is that class; truth: the
label map is that class) by the code that scores binary runs (evaluate.score), so Dice, IoU, HD95, ASD,
volume difference and lesion-wise detection mean per class what they mean for a binary run. The model runs
once per case: its argmax label map (uint8) is kept, keyed by the case's pixels, while the classes are
scored. There is no threshold or post-processing sweep: the labels are the argmax (the report says so).

RUN/eval/metrics.json holds {"classes", "per_class": {name: the binary result}, "mean": {metric: the mean of
the classes' means}, ...}; cases.csv and slices.csv one row per class and case (column "class"); the
report a per-class table and pictures with each class in its own colour (prediction filled, truth outlined).
The binary scorer is handed in by evaluate.evaluate (`core`: evaluate.BINARY) rather than imported, so that
the two modules do not import each other.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import metrics
from ..data.arrays import prep_of, read_item
from ..io.images import class_colour, overlay_labels
from .report import render_report, write_report

ARGMAX = {"threshold": 0.5, "largest": False, "min_area": 0.0}  # 1.0 where the argmax is the class, else 0.0
ARGMAX_TEXT = "labels: argmax over background + classes (no threshold or post-processing sweep for multi-class runs)"
METRICS = ("dice", "iou", "precision", "recall", "hd95", "asd", "rel_volume_diff")
# class names that are lesions, for which lesion-wise detection is reported (organs are one component)
LESION = re.compile(r"tumou?r|lesion|cancer|metasta|nodule|mass|cyst|polyp|edema|necro|enhanc", re.I)


class ClassView:
    """A multi-class predictor seen as the binary predictor of class k: its "probability" is 1 where the
    argmax is k, its ground truth (prep's class_index) the label map == k. Label maps are shared between
    the views of one evaluation (`labels`), so each case is predicted once; `order` lists their keys in the
    order the cases were scored (the same for every class)."""

    def __init__(self, predictor, k: int, labels: dict, order: list):
        self.predictor, self.k, self.labels, self.order = predictor, k, labels, order
        self.plan = predictor.plan
        self.prep = {**prep_of(predictor.plan), "class_index": k}

    def volume_probabilities(self, slices, n: int, bar=None, task=None) -> np.ndarray:
        images = list(slices)
        key = hashlib.sha256(b"".join(np.ascontiguousarray(im).tobytes() for im in images)).hexdigest()
        if key not in self.labels:
            self.labels[key] = self.predictor.hard(self.predictor.volume_probabilities(iter(images), n, bar, task))
            self.order.append(key)
        return (self.labels[key] == self.k).astype(np.float16)


def evaluate_classes(scope, predictor, core) -> dict:
    """`medseg evaluate` of a multi-class run: RUN/eval/ with per-class metrics and their mean. `scope`:
    evaluate.Scope; `core`: evaluate.BINARY, the binary scoring steps."""
    plan, labels, order = predictor.plan, {}, []
    per_class, rows, slice_rows, items = {}, [], [], []
    for k, c in enumerate(plan.classes, 1):
        view = lambda p, k=k: ClassView(p, k, labels, order)  # noqa: E731
        scored, items, skipped = core.score(scope, predictor, ARGMAX, [], view=view)
        cases, slices, lesion_rows, _ = core.collect(scored)
        result = core.summarise(cases, lesion_rows, scope.ds, scope.data, scope.split, plan, scope.tta, ARGMAX,
                                ARGMAX, [])
        result.update({"value": c["value"], "lesion_class": bool(LESION.search(c["name"])), "skipped": skipped})
        result["fingerprint"] = core.fingerprint(items, scored, scope.ds)
        per_class[c["name"]] = result
        rows += [{"class": c["name"], **r} for r in cases]
        slice_rows += [{"class": c["name"], **r} for r in slices]
    result = {**_combine(per_class, plan), "training": core.training(scope.run_folder)}
    folder = scope.run_folder / "eval"
    core.write_tables(folder, result, rows, slice_rows)
    pictures = _pictures(scope, predictor, rows, slice_rows, labels, order, items)
    notes = [ARGMAX_TEXT + ".", *core.notes({**next(iter(per_class.values())), "tuned": False})]
    write_report(folder / "report.html", render_report(
        f"medseg evaluation: {scope.run_folder.name}", _summary(result), rows, pictures,
        core.read_log(scope.run_folder / "log.csv"), notes, config=plan, per_class=_table(result),
        legend=[(c["name"], class_colour(k)) for k, c in enumerate(plan.classes, 1)]))
    if not scope.quiet:
        _print(result)
        Console().print(f"report: {escape(str(folder / 'report.html'))}", soft_wrap=True)
    return result


def _combine(per_class: dict, plan) -> dict:
    """metrics.json: the classes' results and, per metric, the mean over the classes of their means."""
    first = next(iter(per_class.values()))
    mean = {m: _mean([r[m].get("mean") for r in per_class.values()]) for m in METRICS}
    keep = ("data", "layout", "split", "unit", "checkpoint_epoch", "tta", "level", "empty_policy", "surface_policy",
            "distance_unit", "n_cases", "headline")
    return {**{k: first[k] for k in keep}, "classes": [{"name": c["name"], "value": c["value"]} for c in plan.classes],
            "postprocess_text": ARGMAX_TEXT, "tuned": False, "mean": mean,
            "dice": {"mean": mean["dice"], "median": _mean([r["dice"].get("mean") for r in per_class.values()], np.median),
                     "n": len(per_class), "of": "the classes' mean Dice"}, "per_class": per_class}


def _mean(values: list, how=np.mean) -> float:
    """The mean (or `how`) of the defined values (a class without cases has none)."""
    v = [x for x in values if x is not None and not np.isnan(x)]
    return float(how(v)) if v else float("nan")


def _table(result: dict) -> list[dict]:
    """The report's per-class rows, the mean last."""
    out = []
    for name, r in result["per_class"].items():
        les = r.get("lesions") or {}
        row = {"class": name, "value": r["value"], "cases with it": r["n_lesion_cases"]}
        row.update({m: r[m].get("mean") for m in METRICS})
        if r["lesion_class"] and les:
            row["lesions detected"] = f"{les['detected']}/{les['gt_lesions']}"
            row["false-positive components"] = les["false_positive_components"]
        out.append(row)
    out.append({"class": "mean over classes", **result["mean"]})
    return out


def _summary(result: dict) -> dict:
    u = result["distance_unit"]
    return {"Data": result["data"], "Layout": result["layout"],
            "Split": f"{result['split']} ({result['n_cases']} {result['unit']}s)", "Level": result["level"],
            "Classes": ", ".join(f"{c['name']} ({c['value']})" for c in result["classes"]),
            "Dice, mean over classes": result["mean"]["dice"], "IoU, mean over classes": result["mean"]["iou"],
            f"HD95 ({u}), mean over classes": result["mean"]["hd95"],
            f"ASD ({u}), mean over classes": result["mean"]["asd"],
            "Labels": ARGMAX_TEXT, "Checkpoint epoch": result["checkpoint_epoch"],
            **({"Training": result["training"]["text"]} if result.get("training") else {})}


def _pictures(scope, predictor, rows: list, slice_rows: list, labels: dict, order: list, items: list) -> list:
    """The worst, median and best cases by their mean Dice over the classes, then up to 12 more: at the slice
    with the most ground truth of any class, the predicted classes filled, the truth outlined."""
    by_case: dict[str, list[float]] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r["dice"])
    ranked = sorted(by_case, key=lambda c: float(np.nanmean(by_case[c])))
    picks: dict[str, str] = {}  # case -> its caption's label; a case is shown once
    for label, case in (("worst", ranked[0]), ("median", ranked[len(ranked) // 2]), ("best", ranked[-1]),
                        *((c, c) for c in ranked[:12])):
        picks.setdefault(case, label)
    cases = list(dict.fromkeys(it.case for it in items))
    prep = prep_of(predictor.plan)
    out = []
    for case, label in picks.items():
        pos = _best_slice([r for r in slice_rows if r["case"] == case])
        member = [it for it in items if it.case == case][pos]
        img, gt = read_item(member, prep)
        pred = labels[order[cases.index(case)]][pos] if len(order) == len(cases) else np.zeros_like(gt)
        where = f" (slice {member.index})" if scope.ds.unit == "patient" else ""
        title = f"{label}: {case}" if label != case else case
        out.append((f"{title}{where} mean Dice {np.nanmean(by_case[case]):.3f}", overlay_labels(img, pred, outline=gt)))
    return out


def _best_slice(rows: list[dict]) -> int:
    """The position (in the case) of the slice with the most ground truth over all classes."""
    totals: dict[int, int] = {}
    order: list[int] = []
    for r in rows:
        if r["slice"] not in totals:
            order.append(r["slice"])
        totals[r["slice"]] = totals.get(r["slice"], 0) + int(r["gt_pixels"])
    return order.index(max(order, key=lambda s: totals[s]))


def _print(result: dict) -> None:
    t = Table(title=f"{result['layout']} · split {result['split']} · per class ({ARGMAX_TEXT.split(' (')[0]})")
    cols = ("dice", "iou", "hd95", "asd")
    for col in ("class", "cases with it", *cols):
        t.add_column(col, justify="left" if col == "class" else "right")
    for name, r in result["per_class"].items():
        t.add_row(escape(name), str(r["n_lesion_cases"]), *(_f(r[m].get("mean")) for m in cols))
    t.add_row("mean over classes", "", *(_f(result["mean"][m]) for m in cols))
    Console().print(t)


def _f(v) -> str:
    return "n/a" if v is None or np.isnan(v) else f"{v:.3f}"
