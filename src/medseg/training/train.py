"""Plan + data -> checkpoints `RUN/best` and `RUN/last`, the log `RUN/log.csv` and TensorBoard events `RUN/tb`.

    plan = make_plan(load_dataset(folder), settings={...})      # planning.planner
    summary = train(plan, dataset, Path("runs/x"), Options())    # a new run
    summary = resume(Path("runs/x"), Options(), epochs=50)       # continue one exactly

(training.command.train_folder is the `medseg train` command as a call: it plans and calls these.)

Training is bounded by a wall-clock budget and/or an epoch count (training.loop). Both checkpoints carry the
whole training state, so a resumed run ends with the same weights as an uninterrupted one (epoch mode). Ctrl-C
(SIGINT) or SIGTERM saves `last` at the current step and stops; a lock file keeps two trainings out of one
folder. Under `torchrun --nproc_per_node N` the same call trains with DDP (training.dist).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as torch_dist
from rich.markup import escape

from ..adapters import DataSet, load_dataset
from ..data.arrays import Arrays, channel_stats, load_arrays, prep_of, with_neighbours
from ..errors import MedsegError, atomic_path
from ..inference.checkpoint import TRAINING_FILE
from ..models import SPATIAL_DIMS
from ..models.weights import encoder_settings
from ..planning.plan import Plan
from ..version import machine
from .callbacks import (Checkpoints, ConsoleStatus, CsvLog, EarlyStopping, TensorBoard, UserCallback, console,
                        print_summary)
from .dist import Dist
from .lock import RunLock
from .loop import Loop, Stopped, check_resumable
from .speed import DEFAULT_THREADS, compiles
from .state import recover_run


@dataclass
class Options:
    """How to run a training, not what it learns (that is the plan)."""

    quiet: bool = False
    threads: int | None = None  # CPU threads (default DEFAULT_THREADS on a CPU, torch's own on CUDA); saved in the plan
    callback: Callable[[str, dict], None] | None = None  # callback(event, info): see callbacks.UserCallback


def train(plan: Plan, data: DataSet, run: str | Path, options: Options | None = None) -> dict:
    """Train the plan on `data` into the new run folder `run`; returns the summary."""
    options = options or Options()
    d = Dist.from_env()
    try:
        with _run_folder(d, Path(run), resuming=False):
            plan = plan.replace(threads=options.threads or (DEFAULT_THREADS if d.device.type == "cpu" else None))
            return _train(d, plan, data, Path(run), options, resuming=False)
    finally:
        if d.owns_group:
            torch_dist.destroy_process_group()


def resume(run: str | Path, options: Options | None = None, epochs: int | None = None,
           time_budget_s: float | None = None, data: str | Path | None = None) -> dict:
    """Continue the run in `run` from its `last` checkpoint; `epochs` / `time_budget_s` replace its limits,
    `data` its data folder (default: the folder it was trained on)."""
    options, run = options or Options(), Path(run)
    d = Dist.from_env()
    try:
        with _run_folder(d, run, resuming=True):
            recover_run(run)
            plan = Plan.load(run / "plan.json")
            changes = {k: v for k, v in {"epochs": epochs, "time_budget_s": time_budget_s}.items() if v is not None}
            plan = plan.replace(**changes)
            ds = load_dataset(data or plan.data, plan.layout, plan.target_name)
            return _train(d, plan, ds, run, options, resuming=True)
    finally:
        if d.owns_group:
            torch_dist.destroy_process_group()


@contextlib.contextmanager
def _run_folder(d: Dist, run: Path, resuming: bool):
    """Hold RUN/.lock for the training (rank 0). A new run needs an empty or new folder; a folder created
    here is removed again if bad input stops the run before its plan was written."""
    lock, problem, created = RunLock(run) if d.main else None, None, False
    if d.main:
        try:
            if resuming and not (run / "plan.json").is_file():
                raise MedsegError(run, "not a medseg run folder (no plan.json): nothing to resume")
            created = not run.exists()
            run.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            if not resuming and any((run / n).exists() for n in ("plan.json", "last", "best")):
                lock.release()
                raise MedsegError(run, "this folder already holds a run: use --resume to continue it, or a new folder")
        except MedsegError as e:
            problem = (e.path, e.problem)
    problem = d.share(problem)
    if problem:
        raise MedsegError(*problem)
    try:
        yield
    except MedsegError:
        if d.main and created and not (run / "plan.json").exists():
            lock.release()
            shutil.rmtree(run, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.release()


def _train(d: Dist, plan: Plan, ds: DataSet, run: Path, options: Options, resuming: bool) -> dict:
    plan.validate(SPATIAL_DIMS.get(plan.model, 2))
    plan, tr, va = _arrays(plan, ds, resuming, options.quiet)
    if d.main:
        with atomic_path(run / "plan.json") as tmp:
            tmp.write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    quiet = options.quiet or not d.main
    if not quiet:
        train_n, val_n = len(plan.split["train"]), len(plan.split["val"])
        console.print(f"[bold]{ds.layout}[/] data at {ds.root}: {len(ds.items)} images of {len(ds.patients)} "
                      f"{ds.unit}s; training on {train_n} {ds.unit}s ({len(tr.items)} images), "
                      f"validating on {val_n} ({len(va.items)} images)" + (f"; {d.world} processes" if d.world > 1 else ""))
    with _engine_settings(plan, d):
        loop = Loop(plan, tr, va, run, d, quiet, resuming)
        if resuming:
            check_resumable(run / "last")
            if (run / "last").exists():  # (a run interrupted before its first checkpoint starts from scratch)
                loop.resume_from(run / "last")
        try:
            loop.fit(_callbacks(loop, options, quiet, resuming))
        except Stopped as s:
            if not quiet:
                console.print(f"[yellow]interrupted {s}: saved {run / 'last'} with its training state; continue "
                              f"with `medseg train --resume {run}`[/]", soft_wrap=True)
            raise KeyboardInterrupt(f"training interrupted {s}; resume with: medseg train --resume {run}") from None
    summary = {**loop.summary(), "threads": plan.threads, "device": str(d.device), "machine": machine()}
    if d.main:  # the epochs a time budget bought depend on the machine: evaluate's report names both
        with atomic_path(run / TRAINING_FILE) as tmp:
            tmp.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    if not quiet:
        print_summary(summary, ds.unit)
    return summary


def _arrays(plan: Plan, ds: DataSet, resuming: bool, quiet: bool) -> tuple[Plan, Arrays, Arrays]:
    """The training and validation arrays of the plan's split; a new run's plan gets the normalisation
    statistics, the encoder settings, the item counts and the images skipped (--skip-bad)."""
    train_set, val_set = set(plan.split["train"]), set(plan.split["val"])
    prep, k = prep_of(plan), int(plan.neighbours or 0)
    skipped: list[dict] | None = [] if plan.skip_bad else None
    tr = with_neighbours(load_arrays([it for it in ds.items if it.patient in train_set], prep,
                                     "reading training data", skipped=skipped), k)
    va = with_neighbours(load_arrays([it for it in ds.items if it.patient in val_set], prep,
                                     "reading validation data", skipped=skipped), k)
    if skipped:
        plan = plan.replace(skipped=skipped)
        if not quiet:
            console.print(f"[yellow]skipped {len(skipped)} unreadable images (--skip-bad):[/]")
            for s in skipped[:20]:
                console.print(f"  {escape(s['file'])}: {escape(s['problem'])}")
    if not bool(tr.masks.any()):
        raise MedsegError(ds.root, f"every mask of the {len(tr.items)} training images is empty: nothing to learn "
                                   "(wrong --target, or masks saved blank?)")
    if resuming and len(tr.items) != plan.n_items["train"]:
        raise MedsegError(ds.root, f"the data changed since the run started: {len(tr.items)} training images, "
                                   f"the run had {plan.n_items['train']}")
    if not resuming:
        mean, std = channel_stats(tr.images)
        plan = plan.replace(mean=mean, std=std)
        plan = plan.replace(**encoder_settings(plan, quiet), n_items={"train": len(tr.items), "val": len(va.items)})
    return plan, tr, va


@contextlib.contextmanager
def _engine_settings(plan: Plan, d: Dist):
    """Deterministic kernels on a CPU (exact resume; they cost nothing measurable there), the plan's thread
    count, and with compile "auto" inductor failures falling back to eager; all restored afterwards."""
    deterministic, n_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    if d.device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    if plan.threads:
        torch.set_num_threads(int(plan.threads))
    suppress = None
    if compiles(plan) and plan.compile == "auto":  # chosen for the user: an inductor failure
        from torch import _dynamo  # runs that step eagerly instead of stopping the run

        suppress, _dynamo.config.suppress_errors = _dynamo.config.suppress_errors, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(n_threads)
        if suppress is not None:
            _dynamo.config.suppress_errors = suppress


def _callbacks(loop: Loop, options: Options, quiet: bool, resuming: bool) -> list:
    plan, run = loop.plan, loop.run
    out = [CsvLog(run / "log.csv"), Checkpoints(run), TensorBoard(run, loop.state.epoch if resuming else 0)] \
        if loop.d.main else []
    limit = " / ".join(([f"{plan.epochs} epochs"] if plan.epochs else []) +
                       ([f"{plan.time_budget_s:.0f}s"] if plan.time_budget_s else []))
    out.append(ConsoleStatus(quiet, limit, loop.progress(0)))
    if options.callback:
        out.append(UserCallback(options.callback))
    out.append(EarlyStopping(plan.patience))
    return out
