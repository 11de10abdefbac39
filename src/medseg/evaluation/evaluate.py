"""Run + data -> `RUN/eval/`: metrics.json, cases.csv (per patient/case), slices.csv, report.html.

Metrics are computed at each image's own resolution. For slice data sets (LGG) the case is the patient:
its slices are stacked into one volume, so Dice is the 3D Dice over the patient (as Buda et al. report
it), and surface distances, lesions and post-processing work in 3D.

Each case is predicted once; its probabilities (float16) are kept only while that case is scored, so
memory is bounded by the largest case. On the validation split the threshold and post-processing are
swept (see `CANDIDATES`), the best setting is saved into the run (RUN/postprocess.json, used by predict)
and the headline metrics use it; the sweep table shows every setting, the untuned one included.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.table import Table

from . import metrics
from ..inference import postprocess
from ..adapters import load_dataset
from ..adapters.base import spacing_xyz
from ..data.arrays import prep_of, read_item
from ..errors import MedsegError, atomic_path, check_output
from ..inference.checkpoint import TRAINING_FILE, fold_runs
from ..inference.predictor import Predictor
from ..io.images import overlay, thumb_step
from .multiclass import evaluate_classes
from .report import render_report, write_report
from . import stress as stress_shifts
from ..version import machine_text

if TYPE_CHECKING:
    from ..planning.plan import Plan

console = Console(stderr=True)

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# Post-processing variants tried with each threshold: none, removing components smaller than 0.1% of
# an image's area, and keeping the largest component only.
VARIANTS = ({"largest": False, "min_area": 0.0}, {"largest": False, "min_area": 0.001},
            {"largest": True, "min_area": 0.0})
CANDIDATES = [{"threshold": t, **v} for t in THRESHOLDS for v in VARIANTS]
# A tuned setting replaces the current one only if it raises the mean Dice over all validation cases by
# at least MIN_GAIN (with a handful of validation patients smaller gains are noise) and lowers no single
# case's Dice by more than MAX_CASE_LOSS: keeping the largest component, say, can win on average and
# still erase a patient whose largest component was a false positive; that does not generalise.
MIN_GAIN = 0.005
MAX_CASE_LOSS = 0.05


def evaluate(run: str | Path, data: str | Path | None = None, split: str | None = None,
             layout: str | None = None, tta: bool | None = None, quiet: bool = False,
             tune: bool | None = None, stress: bool = False) -> dict:
    run = Path(run)
    predictor = Predictor.load(run, tta=tta)
    plan, tta = predictor.plan, predictor.tta  # None: the predictor's default (on for 2D models)
    run_folder = run if (run / "plan.json").is_file() or not (run.parent / "plan.json").is_file() else run.parent
    data = Path(data) if data else Path(plan.data)
    same = data.resolve() == Path(plan.data).resolve()
    split = split or ("val" if same else "all")
    if split not in ("val", "all"):
        raise MedsegError(None, f"--split must be 'val' or 'all', got {split!r}")
    tune = (split == "val" and same) if tune is None else tune
    if plan.classes:  # per class, at the argmax: no threshold sweep, no stress test (evaluation.multiclass)
        if stress:
            raise MedsegError(None, "--stress is for binary runs; a multi-class run is evaluated per class without it")
        tune = False
    _check_outputs(run_folder, tune)
    ds = load_dataset(data, layout or (plan.layout if same else "auto"), plan.target_name)
    if plan.classes:
        return evaluate_classes(Scope(run, run_folder, ds, data, split, same, tta, quiet), predictor, BINARY)
    current = postprocess.load(run_folder, plan)
    candidates = CANDIDATES if tune else []
    if tune and current not in candidates:
        candidates = [current, *candidates]
    scope = Scope(run, run_folder, ds, data, split, same, tta, quiet)
    scored, items, skipped = score(scope, predictor, current, candidates)

    chosen, sweep = current, []
    if tune:
        chosen, sweep = _choose(scored, candidates, current)
        _save_setting(run_folder, chosen, sweep, split)
        for sc in scored:
            sc["done"] = _finish(sc, chosen, ds)
    cases, slices, lesion_rows, shown = _collect(scored)
    result = _summarise(cases, lesion_rows, ds, data, split, plan, tta, chosen, current, sweep)
    result["fingerprint"] = _fingerprint(items, scored, ds)
    result["skipped"] = skipped
    result["training"] = _training(run_folder)
    if stress:  # the same cases again under input shifts, at the chosen setting (stress.py)
        groups = _stress_groups(run, predictor, split, same, tta, ds, data, chosen)
        result["stress"] = stress_shifts.stress_test(groups, chosen, quiet)
    _write_outputs(run_folder, result, cases, slices, shown, plan)
    if not quiet:
        _print_summary(result)
        if stress:
            stress_shifts.print_table(result["stress"])
        Console().print(f"report: {escape(str(run_folder / 'eval' / 'report.html'))} (metrics.json, cases.csv, "
                        "slices.csv beside it)", soft_wrap=True)
    return result


@dataclass
class Scope:
    """What one evaluation covers: the run, the data set and split, and how it is predicted."""
    run: Path
    run_folder: Path
    ds: object
    data: Path
    split: str
    same: bool
    tta: bool
    quiet: bool


def score(scope: Scope, predictor, current: dict, candidates: list[dict], view=None) -> tuple[list, list, list]:
    """Every case of the scope predicted and scored (by each fold's own model in a cross-validated run):
    (scored cases, items, skipped). `view` wraps each predictor (evaluation.multiclass: one class of it)."""
    scored, items, skipped = [], [], []
    for fold_predictor in _pooled(scope.run, predictor, scope.split, scope.same, scope.tta):
        fold_items = _select_items(scope.ds, fold_predictor.plan, scope.split, scope.data)
        scan = _Scan.of(view(fold_predictor) if view else fold_predictor, fold_items, current, candidates)
        scored += _score_cases(scan, scope.ds, bool(candidates), scope.quiet)
        items += fold_items
        skipped += scan.skipped
    return scored, items, skipped


def _training(run_folder: Path) -> dict | None:
    """What training the evaluated model(s) got (RUN/training.json, each fold's for a cross-validated run):
    epochs and seconds per run and the machine, since the epochs a time budget buys depend on it. None when a
    run has no record (trained by an older medseg, or interrupted and not resumed to its end)."""
    records = []
    for folder in fold_runs(run_folder) or [run_folder]:
        try:
            records.append(json.loads((folder / TRAINING_FILE).read_text()))
        except (OSError, ValueError):
            return None
    try:
        epochs, seconds = [int(r["epochs"]) for r in records], [float(r["seconds"]) for r in records]
        first = records[0]
        where = machine_text(first["machine"], first.get("threads"), first.get("device"), bool(first.get("bf16")))
    except (KeyError, TypeError, ValueError):
        return None
    span = (f"{min(epochs)}-{max(epochs)}" if min(epochs) != max(epochs) else str(epochs[0])) \
        + (" epochs" if max(epochs) != 1 else " epoch")
    runs = f"{len(records)} folds, {span} each" if len(records) > 1 else span
    return {"runs": len(records), "epochs": epochs, "seconds": seconds, "machine": first["machine"],
            "threads": first.get("threads"), "device": first.get("device"), "bf16": bool(first.get("bf16")),
            "text": f"{runs}, {sum(seconds):.0f} s in all, on {where}"}


def _check_outputs(run_folder: Path, tune: bool) -> None:
    """Before any scoring: RUN/eval (and with tuning RUN/postprocess.json) can be written."""
    check_output(run_folder / "eval")
    for name in ("metrics.json", "cases.csv", "slices.csv", "report.html"):
        check_output(run_folder / "eval" / name, "file")
    if tune:
        check_output(run_folder / postprocess.FILE, "file")


def _pooled(run: Path, predictor: Predictor, split: str, same: bool, tta: bool) -> list[Predictor]:
    """A cross-validated run's validation split on its own data: each fold's model on its own validation
    patients, pooled, so every patient is scored once by a model that never saw it. Otherwise the run's model
    (for a cross-validated run on other data: the ensemble of its folds)."""
    folds = fold_runs(run)
    if folds is None or split != "val" or not same:
        return [predictor]
    return [Predictor.load(f, tta=tta) for f in folds]


def _stress_groups(run: Path, predictor: Predictor, split: str, same: bool, tta: bool, ds, data: Path,
                   chosen: dict) -> list[tuple[Predictor, list]]:
    """The evaluated cases read again for the stress test, with the model that scored them (each fold's own
    when pooled): (predictor, [(case id, images, truths), ...]); unreadable images left out as before."""
    groups = []
    for fold_predictor in _pooled(run, predictor, split, same, tta):
        scan = _Scan.of(fold_predictor, _select_items(ds, fold_predictor.plan, split, data), chosen, [])
        with Progress(disable=True) as bar:
            task = bar.add_task("", total=len(scan.items))
            read = [_read_case(scan, start, end, bar, task) for start, end in _case_spans(scan.items)]
        groups.append((fold_predictor, [(kept[0].case, images, gts) for images, gts, kept in read if kept]))
    return groups


def _select_items(ds, plan: Plan, split: str, data: Path) -> list:
    """The split's items, grouped by case (stable) so that a case's slices are scored together as one volume."""
    wanted = set(plan.split["val"]) if split == "val" else set(ds.patients)
    order: dict[str, int] = {}
    for it in ds.items:
        if it.patient in wanted:
            order.setdefault(it.case, len(order))
    items = sorted((it for it in ds.items if it.patient in wanted), key=lambda it: (order[it.case], it.index))
    if not items:
        raise MedsegError(data, f"no cases of the {split!r} split found in this data")
    return items


@dataclass
class _Scan:
    """What reading, predicting and scoring the cases one at a time shares: inputs, settings and running state."""
    predictor: Predictor
    items: list
    current: dict
    candidates: list[dict]
    prep: dict
    # unreadable images left out, when the run was trained with --skip-bad
    skipped: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, predictor: Predictor, items: list, current: dict, candidates: list[dict]) -> _Scan:
        """The scan of `items` with the plan's preprocessing (or the predictor's own: one class's view)."""
        return cls(predictor, items, current, candidates, getattr(predictor, "prep", None) or prep_of(predictor.plan))


def _score_cases(scan: _Scan, ds, tune: bool, quiet: bool) -> list[dict]:
    """Each case read, predicted and scored in turn; finished at once unless the setting is being tuned."""
    items, predictor, scored = scan.items, scan.predictor, []
    with Progress(console=console, disable=quiet, transient=True) as bar:
        task = bar.add_task(f"evaluating {len(items)} images", total=len(items))
        for start, end in _case_spans(items):
            images, gts, kept = _read_case(scan, start, end, bar, task)
            if not kept:
                continue
            # the whole case at once, as `medseg predict` sees it: scaled by its own intensity statistics,
            # 2.5D neighbours from its own slices, a 3D model by sliding window
            probs = list(predictor.volume_probabilities(iter(images), len(images)))
            sc = _score_case(kept, images, gts, probs, scan.current, scan.candidates)
            if not tune:
                sc["done"] = _finish(sc, scan.current, ds)
            scored.append(sc)
    return scored


def _case_spans(items: list):
    """(start, end) of each run of consecutive items of one case."""
    start = 0
    while start < len(items):
        end = start
        while end < len(items) and items[end].case == items[start].case:
            end += 1
        yield start, end
        start = end


def _read_case(scan: _Scan, start: int, end: int, bar: Progress, task: TaskID) -> tuple[list, list, list]:
    """Images, ground truths and items of items[start:end] (one case, in slice order), unreadable ones left out."""
    images, gts, kept = [], [], []
    for i in range(start, end):
        try:
            img, gt = read_item(scan.items[i], scan.prep)
        except MedsegError as e:
            if not scan.predictor.plan.skip_bad:
                raise
            scan.skipped.append({"file": e.path or str(scan.items[i].image), "problem": e.problem})
            bar.advance(task)
            continue
        images.append(img)
        gts.append(gt)
        kept.append(scan.items[i])
        bar.advance(task)
    return images, gts, kept


def _collect(scored: list[dict]) -> tuple[list[dict], list[dict], list[dict], dict]:
    """The finished cases' rows, slice rows, lesion rows and pictures (by case)."""
    cases = [sc["done"]["row"] for sc in scored]
    slices = [s for sc in scored for s in sc["done"]["slices"]]
    lesion_rows = [sc["done"]["lesion"] for sc in scored if sc["done"]["lesion"] is not None]
    shown = {sc["done"]["row"]["case"]: sc["done"]["shown"] for sc in scored}
    return cases, slices, lesion_rows, shown


def _spacing(it, ndim: int) -> tuple[tuple[float, ...], str]:
    """Spacing in array-axis order (z, y, x) and its unit; pixels when the data carry none."""
    sp = spacing_xyz(it)
    if sp is None:
        return (1.0,) * ndim, "px"
    return tuple(reversed(sp))[-ndim:], "mm"


def _score_case(items: list, images: list, gts: list, probs: list, current: dict, candidates: list[dict]) -> dict:
    """Everything needed about one case, computed while its probabilities are in memory."""
    stack = len(probs) > 1 and len({p.shape for p in probs}) == 1
    if stack:
        prob, gt = np.stack(probs), np.stack(gts)
    elif len(probs) == 1:
        prob, gt = probs[0], gts[0]
    else:  # slices of different sizes in one case: scored as separate images, summed
        prob, gt = None, None
    settings = {json.dumps(s, sort_keys=True): s for s in [current, *candidates]}
    per_setting = {}
    for key, s in settings.items():
        if prob is not None:
            pred = postprocess.apply(prob, s)
            c = metrics.counts(pred, gt)
        else:
            c = {"tp": 0, "fp": 0, "fn": 0, "n": 0}
            for p, g in zip(probs, gts):
                c = metrics.add(c, metrics.counts(postprocess.apply(p, s), g))
        per_setting[key] = c
    soft = {"soft_i": 0.0, "soft_p": 0.0, "soft_g": 0.0}
    for p, g in zip(probs, gts):
        soft = metrics.add(soft, metrics.soft_counts(p, g))
    # Pictures: the slice that best shows the case (the most ground truth, then the most prediction).
    areas = [int(g.sum()) * 4 + int((p >= current["threshold"]).sum()) for p, g in zip(probs, gts)]
    best = int(np.argmax(areas))
    out = {"items": items, "per_setting": per_setting, "soft": soft, "stack": stack,
           "picture": (images[best], gts[best], probs[best].astype(np.float32), items[best].index, best)}
    # Released by _finish once the chosen setting is known (at once unless the setting is being tuned).
    out["keep"] = (prob, gt, None, None) if prob is not None else (None, None, probs, gts)
    return out


def _choose(scored: list[dict], candidates: list[dict], current: dict) -> tuple[dict, list[dict]]:
    """The candidate with the best mean Dice over all cases (empty cases count: both empty = 1.0)."""
    sweep = []
    base_key = json.dumps(current, sort_keys=True)
    base_dice = [metrics.scores(c["per_setting"][base_key])["dice"] for c in scored]
    for s in candidates:
        key = json.dumps(s, sort_keys=True)
        sc = [metrics.scores(c["per_setting"][key]) for c in scored]
        lesion = [x for x, c in zip(sc, scored) if _gt_pixels(c["per_setting"][key]) > 0]
        sweep.append({"setting": postprocess.describe(s), **s,
                      "dice_mean_all": float(np.mean([x["dice"] for x in sc])),
                      "dice_mean": float(np.mean([x["dice"] for x in lesion])) if lesion else float("nan"),
                      "iou_mean": float(np.mean([x["iou"] for x in lesion])) if lesion else float("nan"),
                      "worst_case_loss": float(max(b - x["dice"] for b, x in zip(base_dice, sc)))})
    base = next(r for r in sweep if _same(r, current))
    safe = [r for r in sweep if r["worst_case_loss"] <= MAX_CASE_LOSS] or [base]
    top = max(safe, key=lambda r: r["dice_mean_all"])
    chosen = top if top["dice_mean_all"] >= base["dice_mean_all"] + MIN_GAIN else base
    for r in sweep:
        r["chosen"] = r is chosen
        r["current"] = r is base
    return {k: chosen[k] for k in ("threshold", "largest", "min_area")}, sweep


def _same(row: dict, s: dict) -> bool:
    return all(row[k] == s[k] for k in ("threshold", "largest", "min_area"))


def _gt_pixels(c: dict) -> int:
    return c["tp"] + c["fn"]


def _save_setting(run: Path, chosen: dict, sweep: list[dict], split: str) -> None:
    doc = {"setting": chosen, "chosen_on": f"{split} split", "rule": f"best mean Dice over all cases among settings "
           f"that lower no case's Dice by more than {MAX_CASE_LOSS}, kept only if it beats the current setting by "
           f">= {MIN_GAIN}", "sweep": sweep}
    with atomic_path(run / postprocess.FILE) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")


def _finish(sc: dict, chosen: dict, ds) -> dict:
    """One case's rows at the chosen setting; releases its probabilities."""
    key = json.dumps(chosen, sort_keys=True)
    group_key = ds.stratify_key
    keys = list(dict.fromkeys(([group_key] if group_key else []) + list(ds.subgroup_keys)))
    items = sc["items"]
    it = items[0]
    prob, gt, probs, gts = sc.pop("keep")
    row = {"case": it.case}
    if group_key:
        row["group"] = str(it.meta.get(group_key, ""))
    row.update({k: str(it.meta.get(k, "")) for k in keys if k != group_key})
    c = sc["per_setting"][key]
    row.update(metrics.scores(c))
    row.update(metrics.soft_scores(sc["soft"]))
    row.update({"gt_pixels": c["fn"] + c["tp"], "pred_pixels": c["tp"] + c["fp"], "images": len(items)})
    lesion = None
    if prob is not None:
        pred = postprocess.apply(prob, chosen)
        spacing, unit = _spacing(it, pred.ndim)
        row["gt_fraction"] = float(gt.mean())
        row["size_bin"] = metrics.size_bin(row["gt_fraction"]) if row["gt_pixels"] else "empty"
        row.update(metrics.surface(pred, gt, spacing))
        row.update(metrics.volume(pred, gt, spacing))
        lesion = metrics.lesions(pred, gt, spacing)
        row.update({k: lesion[k] for k in ("gt_lesions", "pred_lesions", "detected", "missed",
                                           "false_positive_components", "over_share", "under_share")})
        row["distance_unit"] = unit
        pairs = list(zip(pred, gt)) if sc["stack"] else [(pred, gt)]
    else:
        pairs = [(postprocess.apply(p, chosen), g) for p, g in zip(probs, gts)]
    slices = []
    for s_it, (p, g) in zip(items, pairs):
        slices.append({"case": s_it.case, "image": str(s_it.image), "slice": s_it.index,
                       "gt_pixels": int(g.sum()), "pred_pixels": int(p.sum()), **metrics.scores(metrics.counts(p, g))})
    img, g, p, index, pos = sc["picture"]
    return {"row": row, "slices": slices, "lesion": lesion, "shown": (img, g, pairs[pos][0], p, index)}


def _summarise(cases, lesion_rows, ds, data, split, plan, tta, chosen, current, sweep) -> dict:
    lesion = [r for r in cases if r["gt_pixels"] > 0]
    empty = [r for r in cases if r["gt_pixels"] == 0]
    group_key = ds.stratify_key
    keys = list(dict.fromkeys(([group_key] if group_key else []) + list(ds.subgroup_keys) + ["size_bin"]))
    units = {r.get("distance_unit") for r in cases} - {None}
    result = {
        "data": str(Path(data).resolve()), "layout": ds.layout, "split": split, "unit": ds.unit,
        "checkpoint_epoch": plan.epoch, "tta": tta,
        "threshold": chosen["threshold"], "postprocess": chosen, "postprocess_text": postprocess.describe(chosen),
        "postprocess_before": current, "tuned": bool(sweep),
        "level": "patient: 3D Dice over all slices" if ds.unit == "patient" else "case: Dice of the 2D image",
        "empty_policy": metrics.EMPTY_POLICY, "surface_policy": metrics.SURFACE_POLICY,
        "distance_unit": "mm" if units == {"mm"} else "px",
        "n_cases": len(cases), "n_lesion_cases": len(lesion), "n_empty_cases": len(empty),
        "headline": plan.headline_metric,
    }
    for name in ("dice", "iou", "precision", "recall", "specificity", "hd95", "asd", "rel_volume_diff"):
        result[name] = metrics.summarize([r[name] for r in lesion if name in r])
    result["iou_soft"] = metrics.summarize([r["soft_iou"] for r in lesion])
    result["dice_soft"] = metrics.summarize([r["soft_dice"] for r in lesion])
    result["dice_all_cases"] = metrics.summarize([r["dice"] for r in cases])
    result["empty_cases_predicted_empty"] = (sum(r["pred_pixels"] == 0 for r in empty) / len(empty)) if empty else None
    result["by_group"] = {g: metrics.summarize([r["dice"] for r in lesion if r.get("group") == g])
                          for g in sorted({r.get("group") for r in cases if r.get("group")})}
    result["subgroups"] = {k: subgroup_table(lesion, "group" if k == group_key else k)
                           for k in keys if any(r.get("group" if k == group_key else k) for r in lesion)}
    result["lesions"] = _lesion_summary(lesion_rows, cases)
    result["sweep"] = sweep
    return result


def _lesion_summary(lesion_rows: list[dict], cases: list[dict]) -> dict:
    if not lesion_rows:
        return {}
    tot = {k: int(sum(r[k] for r in lesion_rows)) for k in ("gt_lesions", "pred_lesions", "detected", "missed",
                                                             "false_positive_components")}
    per_lesion = [d for r in lesion_rows for d in r["lesion_dice"]]
    out = {**tot, "detection_rate": tot["detected"] / tot["gt_lesions"] if tot["gt_lesions"] else float("nan"),
           "lesion_dice": metrics.summarize(per_lesion)}
    over = [r["over_share"] for r in cases if not np.isnan(r.get("over_share", np.nan))]
    out["over_share_mean"] = float(np.mean(over)) if over else float("nan")
    out["cases_mostly_over"] = int(sum(v > 0.5 for v in over))
    out["cases_mostly_under"] = int(sum(v < 0.5 for v in over))
    return out


def subgroup_table(rows: list[dict], column: str) -> dict[str, dict]:
    """Per value of `column`: cases, Dice and IoU means, the share of cases with IoU >= 0.4 (the
    "accurate" rule of the mammography workflow's analysis) and the Dice values (for box plots)."""
    out = {}
    for g in sorted({r.get(column, "") for r in rows}):
        sel = [r for r in rows if r.get(column, "") == g]
        out[g] = {"n": len(sel), "dice_mean": float(np.mean([r["dice"] for r in sel])),
                  "iou_mean": float(np.mean([r["iou"] for r in sel])),
                  "iou_0.4_share": float(np.mean([r["iou"] >= 0.4 for r in sel])),
                  "dice": [float(r["dice"]) for r in sel]}
    return out


def _fingerprint(items: list, scored: list[dict], ds) -> dict:
    """What was evaluated, cheaply: counts, sizes, foreground, and a hash of the file list."""
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.image}|{it.z}|{','.join(map(str, it.masks))}\n".encode())
    shapes = sorted({tuple(sc["picture"][1].shape) for sc in scored})
    gt = [metrics.add({"tp": 0, "fp": 0, "fn": 0, "n": 0}, sc["per_setting"][next(iter(sc["per_setting"]))])
          for sc in scored]
    fg = sum(c["tp"] + c["fn"] for c in gt) / max(1, sum(c["n"] for c in gt))
    return {"layout": ds.layout, "root": str(ds.root), "cases": len(scored), "images": len(items),
            "patients": len({it.patient for it in items}), "channels": ds.channels,
            "image_sizes": [list(s) for s in shapes[:5]] + (["..."] if len(shapes) > 5 else []),
            "foreground_share": fg, "files_sha256": h.hexdigest()[:16]}


def _write_outputs(run: Path, result: dict, cases: list[dict], slices: list[dict], shown: dict, plan: Plan) -> None:
    """RUN/eval/: metrics.json, cases.csv, slices.csv and report.html."""
    folder = run / "eval"
    _write_tables(folder, result, cases, slices)
    pics = _pictures(result, cases, shown)
    log_rows = _read_log(run / "log.csv")
    summary = _report_summary(result)
    lesion_summary = {k: (v if not isinstance(v, dict) else _fmt(v)) for k, v in result["lesions"].items()}
    notes = _report_notes(result)
    html_text = render_report(f"medseg evaluation: {run.name}", summary, cases, pics, log_rows, notes,
                              subgroups=result["subgroups"], sweep=result["sweep"], lesion_summary=lesion_summary,
                              config=plan, fingerprint=result["fingerprint"], stress=result.get("stress"))
    write_report(folder / "report.html", html_text)


def _write_tables(folder: Path, result: dict, cases: list[dict], slices: list[dict]) -> None:
    """metrics.json, cases.csv and slices.csv into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    for name, rows in (("cases.csv", cases), ("slices.csv", slices)):
        buf = io.StringIO()
        fields = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
        with atomic_path(folder / name) as tmp:
            tmp.write_text(buf.getvalue())


def _pictures(result: dict, cases: list[dict], shown: dict) -> list[tuple]:
    """The report's pictures: the worst, median and best lesion cases by Dice, then the first 24 cases."""
    ranked = sorted((r for r in cases if r["gt_pixels"] > 0), key=lambda r: r["dice"]) or cases
    picks = {"worst": ranked[0], "median": ranked[len(ranked) // 2], "best": ranked[-1]}
    pics = []
    for label, r in picks.items():
        index = shown[r["case"]][4]
        where = f" (slice {index})" if result["unit"] == "patient" else ""
        pics.append(_picture(f"{label}: {r['case']}{where} Dice {r['dice']:.3f}", shown[r["case"]]))
    for r in cases[:24]:
        if r not in picks.values():
            pics.append(_picture(f"{r['case']} Dice {r['dice']:.3f}", shown[r["case"]]))
    return pics


def _picture(caption: str, shown: tuple) -> tuple:
    """(caption, overlay of ground truth and prediction, probability thumbnail) for one case."""
    img, gt, pred, prob, _ = shown
    step = thumb_step(prob.shape, 320)
    return (caption, overlay(img, gt, pred), prob[::step, ::step])


def _read_log(path: Path) -> list[dict]:
    """The training log's rows; none when the run has no log."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _fmt(s: dict) -> str:
    """A summary's mean and median, or n/a."""
    return f"{s['mean']:.3f} (median {s['median']:.3f})" if s.get("mean") is not None and s.get("n") else "n/a"


def _report_summary(result: dict) -> dict:
    """The report's summary table."""
    d, u = result["dice"], result["distance_unit"]
    summary = {"Data": result["data"], "Layout": result["layout"],
               "Split": f"{result['split']} ({result['n_cases']} {result['unit']}s)",
               "Level": result["level"], "Lesion cases": result["n_lesion_cases"],
               **({"IoU mean (headline metric)": result["iou"].get("mean")} if result["headline"] == "iou" else {}),
               "Dice mean (lesion cases)": d.get("mean"), "Dice median": d.get("median"),
               "Dice IQR": f"{d.get('q1', float('nan')):.3f} to {d.get('q3', float('nan')):.3f}",
               "Dice 95% CI of mean": f"{d.get('ci95_low', float('nan')):.3f} to {d.get('ci95_high', float('nan')):.3f}",
               "IoU mean": result["iou"].get("mean"),
               "IoU mean of soft masks (probabilities, as the Keras seeds score)": result["iou_soft"].get("mean"),
               "Precision mean": result["precision"].get("mean"), "Recall mean": result["recall"].get("mean"),
               f"HD95 ({u})": _fmt(result["hd95"]), f"Average surface distance ({u})": _fmt(result["asd"]),
               "Relative volume difference": _fmt(result["rel_volume_diff"]),
               "Dice mean (all cases)": result["dice_all_cases"].get("mean"),
               "Empty cases": result["n_empty_cases"],
               "Empty cases predicted empty": result["empty_cases_predicted_empty"],
               "Post-processing": result["postprocess_text"]
               + (" (chosen on this split: optimistic)" if result["tuned"] else ""),
               "Checkpoint epoch": result["checkpoint_epoch"],
               **({"Training": result["training"]["text"]} if result.get("training") else {})}
    for g, s in result["by_group"].items():
        if s.get("n"):
            summary[f"Dice mean, {g} ({s['n']})"] = s["mean"]
    return summary


def _report_notes(result: dict) -> list[str]:
    """The report's notes: metric policies, the level, distance units, skipped images and tuning."""
    notes = [metrics.EMPTY_POLICY, metrics.SURFACE_POLICY,
             "Headline Dice is over cases with a non-empty ground truth. "
             + ("Per patient: the slices stacked into one volume (3D Dice, 3D surface distances and components)."
                if result["unit"] == "patient" else "Per image, at the image's own size."),
             "Distances are in " + ("mm (spacing from the data)." if result["distance_unit"] == "mm" else
                                    "pixels: this data set carries no pixel spacing.")]
    if result.get("skipped"):
        notes.append(f"{len(result['skipped'])} unreadable images were left out (--skip-bad): "
                     + "; ".join(f"{s['file']}: {s['problem']}" for s in result["skipped"][:20]))
    if result["tuned"]:
        notes.append("The threshold and post-processing were chosen on this same split (see the sweep) and saved "
                     "into the run for predict; figures at the chosen setting are optimistic by up to the sweep's gain "
                     "over the untuned row.")
    return notes


def _print_summary(result: dict) -> None:
    t = Table(title=f"{result['layout']} · split {result['split']} · {result['level']}")
    for col in ("metric", "mean", "median", "q1", "q3", "n"):
        t.add_column(col, justify="right" if col != "metric" else "left")
    keys = ["dice", "iou", "iou_soft", "precision", "recall", "hd95", "asd", "dice_all_cases"]
    if result.get("headline") == "iou":
        keys = ["iou", "iou_soft", "dice", "precision", "recall", "hd95", "asd", "dice_all_cases"]
    for key in keys:
        s = result[key]
        if s.get("n") and s.get("mean") is not None:
            label = f"{key} ({result['distance_unit']})" if key in ("hd95", "asd") else key
            t.add_row(label, *(f"{s[k]:.3f}" for k in ("mean", "median", "q1", "q3")), str(s["n"]))
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
    les = result.get("lesions") or {}
    if les:
        Console().print(f"lesions: {les['detected']}/{les['gt_lesions']} detected, {les['missed']} missed, "
                        f"{les['false_positive_components']} false-positive components")
    Console().print(f"post-processing: {escape(result['postprocess_text'])}"
                    + (" (chosen on this split, saved into the run)" if result["tuned"] else ""))
    if result.get("training"):
        Console().print(f"training: {escape(result['training']['text'])}", soft_wrap=True)
    if result["n_empty_cases"]:
        what = "normal images (empty ground truth)" if result["layout"] == "busi" else "cases with empty ground truth"
        Console().print(f"{result['n_empty_cases']} {what}: "
                        f"{result['empty_cases_predicted_empty']:.0%} predicted empty (not in the headline Dice)")


# The binary scoring steps, handed to evaluation.multiclass (which scores each class as a binary segmentation).
BINARY = SimpleNamespace(score=score, collect=_collect, summarise=_summarise, fingerprint=_fingerprint,
                         write_tables=_write_tables, read_log=_read_log, notes=_report_notes, training=_training)
