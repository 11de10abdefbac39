"""The `medseg train` command as one call: plan a new run (or all folds of one) from a data folder and
flags, or continue a run; the front ends (CLI, demo, tests) call this."""

from __future__ import annotations

from pathlib import Path

from ..adapters import load_dataset
from ..errors import MedsegError, check_output
from ..planning.planner import make_plan
from .cv import is_cv_run, resume_folds, train_folds
from .train import Options, resume, train


def train_folder(data: str | Path | None = None, out: str | Path | None = None, *, layout: str = "auto",
                 target: str | None = None, preset: str | None = None, settings: dict | None = None,
                 val_fraction: float = 0.2, seed: int = 0, folds: int | None = None, fold: int | None = None,
                 resume_run: str | Path | None = None, options: Options | None = None, **flags) -> dict:
    """The `medseg train` command as a call: a new run of the data folder `data` into `out` (planned from the
    layout, preset, `settings` and `flags`: epochs, time_budget_s, image_size, batch_size, lr), or, with
    `resume_run`, that run continued (only `epochs` and `time_budget_s` may then be given). `folds` without
    `fold`: all folds, one after another, into one cross-validated run (training.cv)."""
    options = options or Options()
    if resume_run is not None:
        if out is not None and Path(out).resolve() != Path(resume_run).resolve():
            raise MedsegError(out, f"--out and --resume name different folders ({resume_run}); "
                                   "--resume RUN alone continues RUN")
        given = {"--threads": options.threads, "--preset": preset, "--target": target, "--set": settings or None,
                 "--folds": folds, **{f"--{k.replace('_', '-')}": v for k, v in flags.items()
                                      if k not in ("epochs", "time_budget_s")}}
        changed = [k for k, v in given.items() if v is not None]
        if changed:
            raise MedsegError(resume_run, f"--resume continues the run's own plan; only --epochs and --time-budget "
                                          f"can change (got {', '.join(changed)})")
        check_output(resume_run)
        if is_cv_run(resume_run):
            return resume_folds(resume_run, options, data)
        return resume(resume_run, options, flags.get("epochs"), flags.get("time_budget_s"), data)
    if out is None or data is None:
        raise MedsegError(None, "train needs DATA and --out RUN (or --resume RUN to continue a run)")
    check_output(out)
    ds = load_dataset(data, layout, target)
    if folds is not None and fold is None:  # every fold, one after another: a cross-validated run
        return train_folds(ds, out, folds, options, val_fraction=val_fraction, seed=seed, preset=preset,
                           settings=settings, **flags)
    plan = make_plan(ds, val_fraction, seed, preset=preset, folds=folds, fold=fold, settings=settings, **flags)
    return train(plan, ds, out, options)
