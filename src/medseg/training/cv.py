"""Cross-validation as one run: `medseg train DATA --out RUN --folds K` trains the K folds one after another.

RUN/cv.json names the folds; RUN/fold<i>/ is an ordinary run folder each (plan, checkpoints, log). The K
validation sets partition the patients (planning.split), so `medseg evaluate RUN` scores every patient once by
a model that never saw it, and `medseg predict RUN` averages the K models' probabilities (an ensemble, as
nnU-Net does). One time budget covers all folds: fold i gets what is left divided by the folds still to train,
so time a fold leaves unused (early stopping, epochs) goes to the next ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..adapters import DataSet
from ..errors import MedsegError, atomic_path
from ..inference.checkpoint import CV_FILE
from ..planning.planner import make_plan
from .callbacks import console
from .train import Options, resume, train

def is_cv_run(run: str | Path) -> bool:
    return (Path(run) / CV_FILE).is_file()


def read_cv(run: str | Path) -> dict:
    path = Path(run) / CV_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MedsegError(path, f"cannot read the cross-validation record ({type(e).__name__}: {e})") from e


def _write_cv(run: Path, info: dict) -> None:
    with atomic_path(run / CV_FILE) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")


def train_folds(ds: DataSet, run: str | Path, folds: int, options: Options | None = None, **plan_args) -> dict:
    """Train folds 0..K-1 of `ds` into RUN/fold<i>; `plan_args` go to planning.planner.make_plan (seed,
    preset, settings, flags). Returns {"run", "folds": [each fold's summary]}."""
    options, run = options or Options(), Path(run)
    if run.exists() and any(run.iterdir()):
        raise MedsegError(run, "this folder already holds files: use --resume to continue it, or a new folder")
    plans = [make_plan(ds, folds=folds, fold=i, **plan_args) for i in range(folds)]  # bad settings stop here
    run.mkdir(parents=True, exist_ok=True)
    info = {"folds": folds, "runs": [f"fold{i}" for i in range(folds)], "done": [], "data": str(ds.root.resolve()),
            "budget_s": plans[0].time_budget_s, "spent_s": 0.0, "seed": plans[0].seed}
    _write_cv(run, info)
    return _train_remaining(run, info, ds, plans, options)


def resume_folds(run: str | Path, options: Options | None = None, data: str | Path | None = None) -> dict:
    """Continue a cross-validated run: the interrupted fold from its `last` checkpoint, then the folds not
    yet started."""
    from ..adapters import load_dataset
    from ..planning.plan import Plan
    run, options = Path(run), options or Options()
    info = read_cv(run)
    first = Plan.load(run / info["runs"][0] / "plan.json") if (run / info["runs"][0] / "plan.json").is_file() else None
    if first is None:
        raise MedsegError(run, "no fold of this cross-validated run has started: train it anew")
    ds = load_dataset(data or info["data"], first.layout, first.target_name)
    settings = {k: v for k, v in first.settings().items()}
    plans = [make_plan(ds, first.val_fraction, first.seed, folds=info["folds"], fold=i, settings=settings)
             for i in range(info["folds"])]
    return _train_remaining(run, info, ds, plans, options)


def _train_remaining(run: Path, info: dict, ds: DataSet, plans: list, options: Options) -> dict:
    summaries = []
    for i, plan in enumerate(plans):
        name = info["runs"][i]
        if name in info["done"]:
            continue
        left = len(plans) - len(info["done"])
        budget = None if info["budget_s"] is None else max(1.0, (info["budget_s"] - info["spent_s"]) / left)
        if not options.quiet:
            console.print(f"[bold]fold {i + 1} of {len(plans)}[/]" + (f" ({budget:.0f} s)" if budget else ""))
        t0 = time.perf_counter()
        if (run / name / "plan.json").is_file():
            summary = resume(run / name, options, time_budget_s=budget, data=ds.root)
        else:
            summary = train(plan.replace(time_budget_s=budget), ds, run / name, options)
        info["spent_s"] += time.perf_counter() - t0
        info["done"].append(name)
        _write_cv(run, info)
        summaries.append(summary)
    return {"run": str(run), "folds": summaries}
