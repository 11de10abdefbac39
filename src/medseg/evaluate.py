"""Run + data -> `RUN/eval/`: metrics.json, cases.csv (per patient/case), slices.csv, report.html.

Metrics are computed at each image's own resolution. For slice data sets (LGG) the case is the patient
and its Dice is the 3D Dice over all of its slices, as Buda et al. report it.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from scipy import ndimage

from . import metrics
from .adapters import load_dataset
from .errors import MedsegError, atomic_path
from .data import neighbour_index, prep_of, read_item
from .predict import Predictor
from .report import render_report, write_report

console = Console(stderr=True)


def evaluate(run: str | Path, data: str | Path | None = None, split: str | None = None,
             layout: str | None = None, tta: bool = False, quiet: bool = False) -> dict:
    run = Path(run)
    predictor = Predictor.load(run, tta=tta)
    plan = predictor.plan
    data = Path(data) if data else Path(plan["data"])
    same = data.resolve() == Path(plan["data"]).resolve()
    split = split or ("val" if same else "all")
    if split not in ("val", "all"):
        raise MedsegError(None, f"--split must be 'val' or 'all', got {split!r}")
    ds = load_dataset(data, layout or (plan["layout"] if same else "auto"), plan.get("target_name"))
    wanted = set(plan["split"]["val"]) if split == "val" else set(ds.patients)
    items = [it for it in ds.items if it.patient in wanted]
    if not items:
        raise MedsegError(data, f"no cases of the {split!r} split found in this data")

    prep = prep_of(plan)
    per_case: dict[str, dict] = defaultdict(lambda: {"tp": 0, "fp": 0, "fn": 0, "n": 0})
    slices, shown = [], {}
    with Progress(console=console, disable=quiet, transient=True) as bar:
        task = bar.add_task(f"evaluating {len(items)} images", total=len(items))
        k = int(plan.get("neighbours") or 0)
        around = neighbour_index(items, k) if k else None
        recent: dict[int, np.ndarray] = {}  # 2.5D: the last slices read, each needed by up to 2k + 1 items
        for i, it in enumerate(items):
            img, gt = read_item(it, prep)
            if around:
                recent[i] = img
                for j in around[i]:
                    if j not in recent:
                        recent[j] = read_item(items[j], prep)[0]
                net_input = np.concatenate([recent[j] for j in around[i]])
                recent = {j: v for j, v in recent.items() if j >= i - k}
            prob = predictor.probabilities(net_input if around else img)
            pred = prob >= plan["threshold"]
            c = {**metrics.counts(pred, gt), **metrics.soft_counts(prob, gt)}
            per_case[it.case] = metrics.add(per_case[it.case], c)
            slices.append({"case": it.case, "image": str(it.image), "slice": it.index,
                           "gt_pixels": int(gt.sum()), "pred_pixels": int(pred.sum()), **metrics.scores(c)})
            area = int(gt.sum()) * 4 + int(pred.sum())  # the slice that best shows the case
            if area >= shown.get(it.case, (-1,))[0]:
                shown[it.case] = (area, img, gt, pred, it.index)
            bar.advance(task)

    group_key = ds.stratify_key
    keys = list(dict.fromkeys(([group_key] if group_key else []) + list(ds.subgroup_keys)))
    meta_of = {it.case: it.meta for it in items}
    cases = []
    for case, c in sorted(per_case.items()):
        row = {"case": case}
        if group_key:
            row["group"] = str(meta_of[case].get(group_key, ""))
        row.update({k: str(meta_of[case].get(k, "")) for k in keys if k != group_key})
        row.update(metrics.scores(c))
        row.update(metrics.soft_scores(c))
        row.update({"gt_pixels": c["fn"] + c["tp"], "pred_pixels": c["tp"] + c["fp"],
                    "images": sum(1 for s in slices if s["case"] == case)})
        cases.append(row)
    lesion = [r for r in cases if r["gt_pixels"] > 0]
    empty = [r for r in cases if r["gt_pixels"] == 0]
    result = {
        "data": str(data.resolve()), "layout": ds.layout, "split": split, "unit": ds.unit,
        "checkpoint_epoch": plan.get("epoch"), "threshold": plan["threshold"], "tta": tta,
        "level": "patient: 3D Dice over all slices" if ds.unit == "patient" else "case: Dice of the 2D image",
        "empty_policy": metrics.EMPTY_POLICY,
        "n_cases": len(cases), "n_lesion_cases": len(lesion), "n_empty_cases": len(empty),
        "dice": metrics.summarize([r["dice"] for r in lesion]),
        "iou": metrics.summarize([r["iou"] for r in lesion]),
        "iou_soft": metrics.summarize([r["soft_iou"] for r in lesion]),
        "headline": plan.get("headline_metric", "dice"),
        "precision": metrics.summarize([r["precision"] for r in lesion]),
        "recall": metrics.summarize([r["recall"] for r in lesion]),
        "dice_all_cases": metrics.summarize([r["dice"] for r in cases]),
        "empty_cases_predicted_empty": (sum(r["pred_pixels"] == 0 for r in empty) / len(empty)) if empty else None,
        "by_group": {g: metrics.summarize([r["dice"] for r in lesion if r.get("group") == g])
                     for g in sorted({r.get("group") for r in cases if r.get("group")})},
        "subgroups": {k: subgroup_table(lesion, "group" if k == group_key else k) for k in keys},
    }
    _write_outputs(run / "eval", result, cases, slices, shown, run)
    if not quiet:
        _print_summary(result)
    return result


def subgroup_table(rows: list[dict], column: str) -> dict[str, dict]:
    """Per value of `column`: cases, Dice and IoU means, and the share of cases with IoU >= 0.4 (the
    "accurate" rule of the mammography workflow's analysis)."""
    out = {}
    for g in sorted({r[column] for r in rows}):
        sel = [r for r in rows if r[column] == g]
        out[g] = {"n": len(sel), "dice_mean": float(np.mean([r["dice"] for r in sel])),
                  "iou_mean": float(np.mean([r["iou"] for r in sel])),
                  "iou_0.4_share": float(np.mean([r["iou"] >= 0.4 for r in sel]))}
    return out


def overlay(img: np.ndarray, gt: np.ndarray, pred: np.ndarray, max_side: int = 320) -> np.ndarray:
    """RGB uint8 picture: the image, ground-truth outline green, prediction outline red."""
    rgb = img if img.shape[0] == 3 else np.repeat(img, 3, axis=0)
    rgb = (np.moveaxis(rgb, 0, -1) * 255).clip(0, 255).astype(np.uint8).copy()
    for mask, color in ((gt, (0, 255, 0)), (pred, (255, 40, 40))):
        edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, max(mask.shape) // 256))
        rgb[edge] = color
    step = max(1, int(np.ceil(max(rgb.shape[:2]) / max_side)))
    return rgb[::step, ::step]


def _write_outputs(folder: Path, result: dict, cases: list[dict], slices: list[dict], shown: dict, run: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    for name, rows in (("cases.csv", cases), ("slices.csv", slices)):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        with atomic_path(folder / name) as tmp:
            tmp.write_text(buf.getvalue())
    ranked = sorted((r for r in cases if r["gt_pixels"] > 0), key=lambda r: r["dice"]) or cases
    picks = {"worst": ranked[0], "median": ranked[len(ranked) // 2], "best": ranked[-1]}
    pics = []
    for label, r in picks.items():
        _, img, gt, pred, index = shown[r["case"]]
        where = f" (slice {index})" if result["unit"] == "patient" else ""
        pics.append((f"{label}: {r['case']}{where} Dice {r['dice']:.3f}", overlay(img, gt, pred)))
    for r in cases[:24]:
        if r not in picks.values():
            _, img, gt, pred, index = shown[r["case"]]
            pics.append((f"{r['case']} Dice {r['dice']:.3f}", overlay(img, gt, pred)))
    log_rows = []
    if (run / "log.csv").is_file():
        with (run / "log.csv").open(newline="") as f:
            log_rows = list(csv.DictReader(f))
    d = result["dice"]
    summary = {"Data": result["data"], "Layout": result["layout"], "Split": f"{result['split']} ({result['n_cases']} {result['unit']}s)",
               "Level": result["level"], "Lesion cases": result["n_lesion_cases"],
               **({"IoU mean (headline metric)": result["iou"].get("mean"), "IoU median": result["iou"].get("median")}
                  if result["headline"] == "iou" else {}),
               "Dice mean (lesion cases)": d.get("mean"), "Dice median": d.get("median"),
               "Dice IQR": f"{d.get('q1', float('nan')):.3f} to {d.get('q3', float('nan')):.3f}",
               "Dice 95% CI of mean": f"{d.get('ci95_low', float('nan')):.3f} to {d.get('ci95_high', float('nan')):.3f}",
               "IoU mean": result["iou"].get("mean"),
               "IoU mean of soft masks (probabilities, as the Keras seeds score)": result["iou_soft"].get("mean"),
               "Precision mean": result["precision"].get("mean"),
               "Recall mean": result["recall"].get("mean"), "Dice mean (all cases)": result["dice_all_cases"].get("mean"),
               "Empty cases": result["n_empty_cases"],
               "Empty cases predicted empty": result["empty_cases_predicted_empty"],
               "Threshold": result["threshold"], "Checkpoint epoch": result["checkpoint_epoch"]}
    for g, s in result["by_group"].items():
        if s.get("n"):
            summary[f"Dice mean, {g} ({s['n']})"] = s["mean"]
    for key, table in result.get("subgroups", {}).items():
        for g, s in table.items():
            summary[f"{key} = {g} ({s['n']}): IoU mean / share IoU >= 0.4"] = f"{s['iou_mean']:.3f} / {s['iou_0.4_share']:.0%}"
    html_text = render_report(f"medseg evaluation: {run.name}", summary, cases, pics, log_rows,
                              [metrics.EMPTY_POLICY, "Headline Dice is over cases with a non-empty ground truth. "
                               + ("Per patient: true/false positives summed over all slices (3D Dice)."
                                  if result["unit"] == "patient" else "Per image, at the image's own size.")])
    write_report(folder / "report.html", html_text)


def _print_summary(result: dict) -> None:
    t = Table(title=f"{result['layout']} · split {result['split']} · {result['level']}")
    for col in ("metric", "mean", "median", "q1", "q3", "n"):
        t.add_column(col, justify="right" if col != "metric" else "left")
    keys = ["dice", "iou", "iou_soft", "precision", "recall", "dice_all_cases"]
    if result.get("headline") == "iou":
        keys = ["iou", "iou_soft", "dice", "precision", "recall", "dice_all_cases"]
    for key in keys:
        s = result[key]
        if s.get("n"):
            t.add_row(key, *(f"{s[k]:.3f}" for k in ("mean", "median", "q1", "q3")), str(s["n"]))
    for g, s in result["by_group"].items():
        if s.get("n"):
            t.add_row(escape(f"dice [{g}]"), *(f"{s[k]:.3f}" for k in ("mean", "median", "q1", "q3")), str(s["n"]))
    Console().print(t)
    for key, table in result.get("subgroups", {}).items():
        st = Table(title=f"by {key} (cases with a lesion)")
        for col in (key, "n", "Dice mean", "IoU mean", "IoU >= 0.4"):
            st.add_column(col, justify="left" if col == key else "right")
        for g, s in table.items():
            st.add_row(escape(g), str(s["n"]), f"{s['dice_mean']:.3f}", f"{s['iou_mean']:.3f}", f"{s['iou_0.4_share']:.0%}")
        Console().print(st)
    if result["n_empty_cases"]:
        Console().print(f"{result['n_empty_cases']} cases with empty ground truth: "
                        f"{result['empty_cases_predicted_empty']:.0%} predicted empty (not in the headline Dice)")
