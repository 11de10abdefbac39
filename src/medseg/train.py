"""Plan + data -> checkpoints `RUN/best` and `RUN/last`, the log `RUN/log.csv` and TensorBoard events `RUN/tb`.

Training is bounded by a wall-clock budget and/or an epoch count. The learning rate follows the plan's schedule
(optim.py) over the *fraction of the run done*, so a 5-minute and a 2-hour run both end fully annealed. After
each epoch the validation patients are scored with per-patient Dice (3D over all slices of a patient) at the
training size; the best epoch is kept, and with `patience` the run stops when it stops improving.

Both checkpoints carry the whole training state (optimizer, schedule, RNG states, log, time spent), so
`medseg train --resume RUN` continues exactly: in epoch mode the resumed run ends with the same weights as an
uninterrupted one. Ctrl-C (SIGINT) or SIGTERM saves `last` at the current step and stops; a lock file keeps two
trainings out of one folder. Under `torchrun --nproc_per_node N` the same command trains with DDP: each rank
takes a disjoint share of every epoch's draws, rank 0 alone writes files, and every stop decision is rank 0's.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import shutil
import signal
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as torch_dist
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import metrics, volumes
from .adapters import load_dataset
from .checkpoint import (in_channels, load_training_state, optimizer_from_tensors, optimizer_to_tensors,
                         recover_checkpoint, save_training_checkpoint)
from .data import (SAMPLING, Arrays, Prefetch, batches, channel_stats, load_arrays, mask_areas, prep_of, sample_indices,
                   with_neighbours)
from .errors import MedsegError, atomic_path
from .losses import build_loss
from .models import SPATIAL_DIMS, build_model
from .optim import build_optimizer, build_schedule, lr_factor  # noqa: F401  (lr_factor: re-exported)
from .plan import make_plan
from .transforms import augmentation, normalize
from .weights import encoder_settings, load_encoder_weights

console = Console(stderr=True)
TB_IMAGE_EVERY = 5  # epochs between validation overlay images in TensorBoard (and the first epoch)
# CPU threads per training process. Measured on the 2-core machine (default UNet, 128 px, batch 16, samples/s):
# nearly idle, 2 threads 48-70 vs 1 thread 37; with one other busy process, 2 threads 4-7 vs 1 thread 30-40
# (OpenMP threads spin-wait for the busy core; at 32 px 0.4-1.4 vs 45-59). One thread never collapses, so it is
# the default; `--threads 2` on a machine of one's own. The count is saved in the plan: a resume keeps it.
DEFAULT_THREADS = 1
LOCK = ".lock"


# ----------------------------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run alone), and the few collectives used."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Dist":
        """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; gloo on CPU, nccl on CUDA."""
        cuda = torch.cuda.is_available()
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device=torch.device("cuda" if cuda else "cpu"))
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(device)
        owns = not torch_dist.is_initialized()
        if owns:
            torch_dist.init_process_group("nccl" if cuda else "gloo")
        return cls(rank, world, device, owns)

    def max(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return t.tolist()

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch_dist.all_gather_object(out, obj)
        return out

    def share(self, obj):
        """Rank 0's object on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]


# ----------------------------------------------------------------------------------------------- lock
class RunLock:
    """RUN/.lock holding `PID HOST`, created with O_EXCL. A lock whose process is gone (same host) is stale
    and taken over; a live one stops the second training with a MedsegError naming the folder."""

    def __init__(self, folder: Path):
        self.folder, self.path, self.held = folder, folder / LOCK, False
        self.mine = f"{os.getpid()} {socket.gethostname()}\n"

    def acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                owner = self._read() or "an unknown process"
                raise MedsegError(self.folder, f"another training ({owner.strip()}) is writing this run folder "
                                               f"(lock {self.path}); wait for it or use another --out") from None
            with os.fdopen(fd, "w") as f:
                f.write(self.mine)
            self.held = True
            return
        raise MedsegError(self.folder, f"could not take the lock {self.path}")

    def _read(self) -> str:
        try:
            return self.path.read_text()
        except OSError:
            return ""

    def _stale(self) -> bool:
        parts = self._read().split()
        if not parts:  # created but not yet written, or written by a process that died at once
            try:
                return time.time() - self.path.stat().st_mtime > 30
            except FileNotFoundError:
                return True
        if len(parts) > 1 and parts[1] != socket.gethostname():
            return False  # another machine's process: cannot tell, so it counts as alive
        try:
            os.kill(int(parts[0]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, OverflowError):
            return not parts[0].isdigit()
        return False

    def release(self) -> None:
        if self.held and self._read() == self.mine:
            self.path.unlink(missing_ok=True)
        self.held = False


# ----------------------------------------------------------------------------------------------- RNG state
def _random_states(obj, seen: set | None = None):
    """Every numpy RandomState inside a MONAI (or medseg) transform tree, in a fixed order (construction order)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.random.RandomState):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _random_states(x, seen)
    elif type(obj).__module__.startswith(("monai", "medseg.")) and hasattr(obj, "__dict__"):
        for v in vars(obj).values():
            yield from _random_states(v, seen)


def capture_rng(rng: np.random.Generator, augment) -> dict:
    """All random state a training step consumes: torch (CPU, and CUDA), python, the sampler, augmentation."""
    py = random.getstate()
    out = {"tensors": {"torch": torch.get_rng_state(), "python": torch.tensor(py[1], dtype=torch.int64)},
           "json": {"python": [py[0], py[2]], "numpy": rng.bit_generator.state, "monai": []}}
    if torch.cuda.is_available():
        out["tensors"]["cuda"] = torch.cuda.get_rng_state()
    for i, r in enumerate(_random_states(augment)):
        name, keys, pos, has_gauss, cached = r.get_state()
        out["tensors"][f"monai.{i}"] = torch.from_numpy(keys.astype(np.int64))
        out["json"]["monai"].append([name, int(pos), int(has_gauss), float(cached)])
    return out


def augmenter_state(augment) -> list:
    """The augmenter's random state alone (what data.Prefetch rewinds): cheap enough to take every batch."""
    return [r.get_state() for r in _random_states(augment)]


def set_augmenter_state(augment, state: list) -> None:
    for r, st in zip(_random_states(augment), state):
        r.set_state(st)


def restore_rng(tensors: dict, state: dict, prefix: str, rng: np.random.Generator, augment) -> None:
    torch.set_rng_state(tensors[f"{prefix}torch"])
    if f"{prefix}cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"{prefix}cuda"])
    version, gauss = state["python"]
    random.setstate((version, tuple(tensors[f"{prefix}python"].tolist()), gauss))
    rng.bit_generator.state = state["numpy"]
    for i, (r, (name, pos, has_gauss, cached)) in enumerate(zip(_random_states(augment), state["monai"])):
        r.set_state((name, tensors[f"{prefix}monai.{i}"].numpy().astype(np.uint32), pos, has_gauss, cached))


# ----------------------------------------------------------------------------------------------- validation
@torch.inference_mode()
def validate(model: torch.nn.Module, val: Arrays, plan: dict, device: torch.device | None = None,
             d: Dist | None = None) -> float:
    """Mean per-patient Dice (counts summed over each patient's slices) at the training size. Under DDP each
    rank scores a disjoint set of cases and the counts are gathered, so every rank gets the same number."""
    d = d or Dist()
    device = device or torch.device("cpu")
    model.eval()
    cases = sorted({it.case for it in val.items})
    mine = set(cases[d.rank::d.world])
    idx = [i for i, it in enumerate(val.items) if it.case in mine]
    per_case: dict[str, dict] = defaultdict(dict)
    for start in range(0, len(idx), 16):
        sel = idx[start:start + 16]
        x = normalize(val.images[sel].float() / 255, plan["mean"], plan["std"])
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        probs = torch.sigmoid(model(x))[:, 0].float().cpu().numpy()
        for i, p in zip(sel, probs):
            it = val.items[i]
            per_case[it.case] = metrics.add(per_case[it.case], metrics.counts(p >= plan["threshold"],
                                                                                val.masks[i, 0].numpy()))
    merged: dict[str, dict] = {}
    for part in d.gather(dict(per_case)):
        merged.update(part)
    return float(np.mean([metrics.scores(c)["dice"] for c in merged.values()]))


def overlay(image: torch.Tensor, gt: torch.Tensor, pred: np.ndarray) -> np.ndarray:
    """H x W x 3 float image for TensorBoard: grey image, ground truth in green, prediction in red."""
    g = image.float().mean(0).numpy() / 255
    rgb = np.stack([g, g, g], -1) * 0.6
    rgb[..., 0] += 0.4 * pred
    rgb[..., 1] += 0.4 * gt.numpy()
    return rgb.clip(0, 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------- train
def train(data: str | Path | None = None, out: str | Path | None = None, layout: str = "auto",
          epochs: int | None = None, time_budget_s: float | None = None, val_fraction: float = 0.2, seed: int = 0,
          image_size: int | None = None, batch_size: int | None = None, lr: float | None = None,
          quiet: bool = False, target: str | None = None, *, preset: str | None = None,
          settings: dict | None = None, folds: int | None = None, fold: int | None = None,
          resume: str | Path | None = None, threads: int | None = None,
          callback: Callable[[str, dict], None] | None = None) -> dict:
    """Train into the run folder `out`, or continue the run `resume` (then only `epochs` and `time_budget_s`
    may change: they replace the run's limits). `threads`: CPU threads (default DEFAULT_THREADS on a CPU,
    torch's own on CUDA; saved in the plan, so a resumed run uses the same). `callback(event, info)` is called
    after every optimizer step ("step") and epoch ("epoch": the log row and `model`, the unwrapped module), for
    other front ends and for tests."""
    d = Dist.from_env()
    try:
        return _train(d, data, out, layout, epochs, time_budget_s, val_fraction, seed, image_size, batch_size, lr,
                      quiet or not d.main, target, preset, settings, folds, fold, resume, threads, callback)
    finally:
        if d.owns_group:
            torch_dist.destroy_process_group()


def _train(d: Dist, data, out, layout, epochs, time_budget_s, val_fraction, seed, image_size, batch_size, lr,
           quiet, target, preset, settings, folds, fold, resume, threads, callback) -> dict:
    if resume is not None and out is not None and Path(out).resolve() != Path(resume).resolve():
        raise MedsegError(out, f"--out and --resume name different folders ({resume}); "
                               "--resume RUN alone continues RUN")
    if resume is None and (out is None or data is None):
        raise MedsegError(None, "train needs DATA and --out RUN (or --resume RUN to continue a run)")
    run = Path(resume if resume is not None else out)
    if resume is not None:
        changed = {k: v for k, v in {"--threads": threads, "--image-size": image_size, "--batch-size": batch_size,
                                     "--lr": lr,
                                     "--preset": preset, "--target": target, "--set": settings or None,
                                     "--folds": folds}.items() if v is not None}
        if changed:
            raise MedsegError(run, f"--resume continues the run's own plan; only --epochs and --time-budget can "
                                   f"change (got {', '.join(changed)})")

    lock = RunLock(run) if d.main else None
    problem, created = None, False
    if d.main:
        try:
            if resume is not None and not (run / "plan.json").is_file():
                raise MedsegError(run, "not a medseg run folder (no plan.json): nothing to resume")
            created = not run.exists()
            run.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            if resume is None and any((run / n).exists() for n in ("plan.json", "last", "best")):
                lock.release()
                raise MedsegError(run, "this folder already holds a run: use --resume to continue it, or a new folder")
        except MedsegError as e:
            problem = (e.path, e.problem)
    problem = d.share(problem)
    if problem:
        raise MedsegError(*problem)
    try:
        return _train_locked(d, run, data, layout, epochs, time_budget_s, val_fraction, seed, image_size,
                             batch_size, lr, quiet, target, preset, settings, folds, fold, resume is not None,
                             threads, callback)
    except MedsegError:
        # bad input found before the run began (data, settings, weights file): leave no folder behind
        if d.main and created and not (run / "plan.json").exists():
            lock.release()
            lock = None
            shutil.rmtree(run, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.release()


PRECISIONS = ("auto", "fp32", "bf16")
# torch.compile (inductor) of the training step ("compile": "auto", the default, for 2D runs with a budget
# of at least COMPILE_MIN_BUDGET_S in one process; true forces it). benchmarks.train_loop (LGG dev, default
# plan, 90 s per variant, one run, idle machine, samples/s): eager reference 69.4, medseg eager 82.3,
# eager + prefetch 98.2, compile inline 93.4, compile + prefetch 121.5. Compiling takes 10-30 s.
COMPILE_MIN_BUDGET_S = 600


def compiles(plan: dict) -> bool:
    """"auto": a 2D model, a budget of at least COMPILE_MIN_BUDGET_S (compiling takes 10-30 s) and a C++
    compiler on the PATH (inductor's CPU code is C++); anything inductor then fails on runs eagerly."""
    c = plan.get("compile", "auto")
    if c == "auto":
        cxx = os.environ.get("CXX") or next((n for n in ("g++", "c++", "clang++") if shutil.which(n)), None)
        return (plan.get("time_budget_s") or 0) >= COMPILE_MIN_BUDGET_S and SPATIAL_DIMS.get(plan["model"], 2) == 2 \
            and cxx is not None
    return bool(c)


PREFETCH_DEPTH = 3  # batches made ahead of the step (data.Prefetch)


def prefetches(plan: dict, device: torch.device, world: int) -> bool:
    """Augment in a background thread: "auto" when the step leaves a CPU core free (its threads times the
    processes on this machine are fewer than the cores this process may use) or runs on a GPU."""
    p = plan.get("prefetch", "auto")
    if p == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return device.type == "cuda" or int(plan.get("threads") or torch.get_num_threads()) * world < cores
    return bool(p)


def uses_bf16(plan: dict, device: torch.device) -> bool:
    """bf16 autocast for the forward pass (weights, optimizer and loss stay fp32): "auto" on CUDA only,
    "bf16" on any device (CPUs with AVX512-BF16 or AMX run it natively), "fp32" never."""
    precision = plan.get("precision") or "auto"
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def _check_plan(plan: dict) -> None:
    """Engine settings that would otherwise fail deep inside the loop: one clear line instead."""
    if plan.get("sampling", "lesion") not in SAMPLING:
        raise MedsegError(None, f"unknown sampling {plan.get('sampling')!r}; known: {', '.join(SAMPLING)}")
    for key in ("empty_drop", "lesion_fraction"):
        v = plan.get(key, 0.0)
        if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise MedsegError(None, f"{key} must be a number in [0, 1], got {v!r}")
    p = plan.get("patience")
    if p is not None and (not isinstance(p, int) or p < 1):
        raise MedsegError(None, f"patience must be a whole number of epochs >= 1 or null, got {p!r}")
    if not plan.get("time_budget_s") and not plan.get("epochs"):
        raise MedsegError(None, "no end for the run: give --epochs or --time-budget")
    if (plan.get("precision") or "auto") not in PRECISIONS:
        raise MedsegError(None, f"precision must be one of {', '.join(PRECISIONS)}, got {plan.get('precision')!r}")
    if SPATIAL_DIMS.get(plan["model"], 2) == 3:
        volumes.patch_size(plan)
        if plan.get("augmentation") not in ("3d", "none"):
            raise MedsegError(None, f"augmentation {plan.get('augmentation')!r} is for 2D images; the 3D model "
                                    f"takes '3d' or 'none'")


def _train_locked(d: Dist, run: Path, data, layout, epochs, time_budget_s, val_fraction, seed, image_size,
                  batch_size, lr, quiet, target, preset, settings, folds, fold, resuming, threads, callback) -> dict:
    if resuming:
        recover_checkpoint(run / "last")
        recover_checkpoint(run / "best")
        plan = json.loads((run / "plan.json").read_text())
        if epochs is not None:
            plan["epochs"] = epochs
        if time_budget_s is not None:
            plan["time_budget_s"] = time_budget_s
        ds = load_dataset(data or plan["data"], plan["layout"], plan.get("target_name"))
        seed = plan["seed"]
    else:
        ds = load_dataset(data, layout, target)
        given = {k: v for k, v in dict(image_size=image_size, batch_size=batch_size, lr=lr, epochs=epochs,
                                       time_budget_s=time_budget_s).items() if v is not None}
        plan = make_plan(ds, val_fraction, seed, preset=preset, folds=folds, fold=fold, settings=settings, **given)
        if plan.get("epochs") is not None and time_budget_s is None and "time_budget_s" not in (settings or {}):
            plan["time_budget_s"] = None  # an explicit epoch count alone is not cut short by the default budget
        plan["threads"] = threads or (DEFAULT_THREADS if d.device.type == "cpu" else None)
    _check_plan(plan)
    train_set, val_set = set(plan["split"]["train"]), set(plan["split"]["val"])
    prep = prep_of(plan)
    k = int(plan.get("neighbours") or 0)
    skipped: list[dict] | None = [] if plan.get("skip_bad") else None
    tr = with_neighbours(load_arrays([it for it in ds.items if it.patient in train_set], prep,
                                     "reading training data", skipped=skipped), k)
    va = with_neighbours(load_arrays([it for it in ds.items if it.patient in val_set], prep,
                                     "reading validation data", skipped=skipped), k)
    if skipped:
        plan["skipped"] = skipped
        if not quiet:
            console.print(f"[yellow]skipped {len(skipped)} unreadable images (--skip-bad):[/]")
            for s in skipped[:20]:
                console.print(f"  {escape(s['file'])}: {escape(s['problem'])}")
    if not bool(tr.masks.any()):
        raise MedsegError(ds.root, f"every mask of the {len(tr.items)} training images is empty: nothing to learn "
                                   "(wrong --target, or masks saved blank?)")
    if resuming and len(tr.items) != plan["n_items"]["train"]:
        raise MedsegError(ds.root, f"the data changed since the run started: {len(tr.items)} training images, "
                                   f"the run had {plan['n_items']['train']}")
    if not resuming:
        plan["mean"], plan["std"] = channel_stats(tr.images)
        plan.update(encoder_settings(plan, quiet))
        plan["n_items"] = {"train": len(tr.items), "val": len(va.items)}
    if d.main:
        with atomic_path(run / "plan.json") as tmp:
            tmp.write_text(json.dumps(plan, indent=2) + "\n")
    if not quiet:
        console.print(f"[bold]{ds.layout}[/] data at {ds.root}: {len(ds.items)} images of {len(ds.patients)} "
                      f"{ds.unit}s; training on {len(train_set)} {ds.unit}s ({len(tr.items)} images), "
                      f"validating on {len(val_set)} ({len(va.items)} images)"
                      + (f"; {d.world} processes" if d.world > 1 else ""))

    deterministic, n_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    if d.device.type == "cpu":  # exact resume needs reproducible kernels; on a CPU they cost nothing measurable
        torch.use_deterministic_algorithms(True, warn_only=True)
    if plan.get("threads"):
        torch.set_num_threads(int(plan["threads"]))
    suppress = None
    if compiles(plan) and plan.get("compile", "auto") == "auto":  # chosen for the user: an inductor failure
        from torch import _dynamo  # runs that step eagerly instead of stopping the run

        suppress, _dynamo.config.suppress_errors = _dynamo.config.suppress_errors, True
    try:
        return _loop(d, run, plan, ds, tr, va, seed, quiet, resuming, callback)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(n_threads)
        if suppress is not None:
            _dynamo.config.suppress_errors = suppress


def _loop(d: Dist, run: Path, plan: dict, ds, tr: Arrays, va: Arrays, seed: int, quiet: bool, resuming: bool,
          callback) -> dict:
    device = d.device
    torch.manual_seed(seed)
    random.seed(seed)
    module = build_model(plan["model"], in_channels(plan), 1, **plan["model_args"])
    if plan.get("encoder_weights") and not resuming:
        load_encoder_weights(module, plan["encoder_weights"])
    three_d = SPATIAL_DIMS.get(plan["model"], 2) == 3
    fmt = torch.contiguous_format if three_d else torch.channels_last  # channels_last is for 4D tensors
    module = module.to(device=device, memory_format=fmt)
    if d.rank:  # ranks share the initial weights (DDP also broadcasts them) but not their dropout draws
        torch.manual_seed(seed + 7919 * d.rank)
    rng = np.random.default_rng(seed)  # the same on every rank: all draw the same epoch, then take their share
    augment = augmentation(plan["augmentation"])
    augment.set_random_state(seed=seed + 7919 * d.rank)
    loss_fn = build_loss(plan["loss"], **(plan.get("loss_args") or {})).to(device)
    opt = build_optimizer(plan, module.parameters())
    schedule = build_schedule(plan)

    epoch = step = best_epoch = bad_epochs = 0
    best, elapsed0, log, pending = -1.0, 0.0, [], None
    last = run / "last"
    if resuming and last.exists() and not (last / "state.json").is_file():
        raise MedsegError(last, "this checkpoint has no training state (written by an older medseg?): it cannot "
                                "be resumed; train into a new folder")
    if resuming and last.exists():  # (a run interrupted before its first checkpoint starts from scratch)
        tensors, st, weights = load_training_state(last)
        module.load_state_dict(weights)
        opt.load_state_dict(optimizer_from_tensors(tensors, st["optimizer"]))
        schedule.load_state_dict(st["schedule"])
        epoch, step, best_epoch, bad_epochs = st["epoch"], st["step"], st["best_epoch"], st["bad_epochs"]
        best = float("nan") if st["best"] is None else st["best"]
        elapsed0, log = st["elapsed_s"], st["log"]
        if d.rank < len(st["rng"]):
            restore_rng(tensors, st["rng"][d.rank], f"rng.{d.rank}.", rng, augment)
        elif d.main or not quiet:
            console.print(f"[yellow]rank {d.rank}: the checkpoint has no RNG state for this rank (it ran with "
                          f"{len(st['rng'])} processes); resuming with fresh random streams[/]")
        if st["pos"]:
            pending = (tensors["epoch.indices"].numpy(), st["pos"], st["epoch_losses"], st["epoch_seen"])
        if not quiet:
            where = f"epoch {epoch}" + (f", step {st['pos']} of epoch {epoch + 1}" if st["pos"] else "")
            console.print(f"resuming {run} after {where} ({elapsed0:.0f}s already spent)")
    model = module
    if d.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
    elif compiles(plan):  # the training step only; validation and checkpoints use the plain module
        model = torch.compile(module)

    if three_d:  # patches from whole volumes (volumes.py); an epoch is 4 patches per training case
        tr_vol, va_vol, size = volumes.to_volumes(tr), volumes.to_volumes(va), volumes.patch_size(plan)
        bs = plan["batch_size"]
        per_epoch = max(4 * len(tr_vol), 16 * bs, d.world * bs) // bs * bs
        show = None

        def draw():
            return volumes.sample_patches(tr_vol, per_epoch, plan.get("lesion_fraction", 0.5), rng)

        def epoch_batches(share):
            return volumes.patch_batches(tr_vol, share, bs, size, augment)

        def run_validation():
            return volumes.validate(module, va_vol, plan, device, d)
    else:
        bs = min(plan["batch_size"], len(tr.items))
        per_epoch = max(len(tr.items), 16 * bs, d.world * bs) // bs * bs
        areas = mask_areas(tr.masks)
        show = int(np.argmax(mask_areas(va.masks))) if va.items else None

        def draw():
            return sample_indices(areas, per_epoch, plan.get("lesion_fraction", 0.5), rng,
                                  plan.get("sampling", "lesion"), plan.get("empty_drop", 0.0))

        def epoch_batches(share):
            return batches(tr, share, bs, augment)

        def run_validation():
            return validate(module, va, plan, device, d)
    per_rank = per_epoch // d.world // bs * bs
    steps = per_rank // bs
    budget, max_epochs, patience = plan.get("time_budget_s"), plan.get("epochs"), plan.get("patience")
    amp = uses_bf16(plan, device)
    prefetch = prefetches(plan, device, d.world)
    t_start = time.perf_counter() - elapsed0

    def elapsed() -> float:
        return time.perf_counter() - t_start

    def progress(pos: int) -> float:
        p_time = elapsed() / budget if budget else 0.0
        p_epoch = (epoch + pos / steps) / max_epochs if max_epochs else 0.0
        return min(1.0, max(p_time, p_epoch))

    def snapshot(indices, pos, losses, seen):
        """(tensors, state) of this moment on rank 0 (None elsewhere); every rank must call it (RNG gather)."""
        rngs = d.gather(capture_rng(rng, augment))
        if not d.main:
            return None
        tensors, index = optimizer_to_tensors(opt.state_dict())
        for r, part in enumerate(rngs):
            tensors.update({f"rng.{r}.{name}": t for name, t in part["tensors"].items()})
        if pos:
            tensors["epoch.indices"] = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        state = {"epoch": epoch, "step": step, "pos": pos, "best": None if best != best else best,
                 "best_epoch": best_epoch, "bad_epochs": bad_epochs, "elapsed_s": elapsed(), "log": log,
                 "schedule": schedule.state_dict(), "optimizer": index, "rng": [p["json"] for p in rngs],
                 "world_size": d.world, "epoch_losses": losses, "epoch_seen": seen, "seed": seed}
        return tensors, state

    def config(val_dice):
        return {**plan, "epoch": epoch, "val_dice": val_dice, "medseg_version": _version()}

    writer = _tensorboard(run, epoch if resuming else 0) if d.main else None
    interrupted = _Interrupt()
    stop_reason, lr_now, total_seen = None, plan["lr"] * schedule.factor(progress(0)), 0
    train_time = data_wait = 0.0
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    limit = " / ".join(([f"{max_epochs} epochs"] if max_epochs else []) + ([f"{budget:.0f}s"] if budget else []))
    try:
        with interrupted, Progress(*columns, console=console, disable=quiet) as bar:
            task = bar.add_task(f"training ({limit})", total=1.0, status="", completed=progress(0))
            while stop_reason is None:
                if pending is not None:
                    indices, pos, losses, seen = pending
                    pending = None
                else:
                    if d.max([progress(0) if d.main else 0.0])[0] >= 1.0:
                        stop_reason = "time budget" if budget and elapsed() >= budget else "epochs"
                        break
                    indices = draw()
                    pos, losses, seen = 0, [], 0
                share = np.asarray(indices)[d.rank::d.world][:per_rank]
                if hasattr(module, "set_encoder_trainable"):  # pretrained encoders: frozen for the first N epochs
                    module.set_encoder_trainable(epoch >= int(plan.get("freeze_encoder_epochs") or 0))
                model.train()
                t0, seen0, why = time.perf_counter(), seen, None
                prog = d.max([progress(pos) if d.main else 0.0])[0]
                stream = epoch_batches(share[pos * bs:])
                if prefetch:
                    stream = Prefetch(stream, PREFETCH_DEPTH, lambda: augmenter_state(augment),
                                      lambda st: set_augmenter_state(augment, st))
                ready = time.perf_counter()  # when the step became ready for its next batch
                with contextlib.closing(stream):  # Prefetch.close: the thread stops, the augmenter rewinds
                    for x, y in stream:
                        data_wait += time.perf_counter() - ready
                        lr_now = schedule.apply(opt, plan["lr"], prog)
                        x = normalize(x, plan["mean"], plan["std"]).to(device, non_blocking=True)
                        x = x.contiguous(memory_format=fmt)
                        y = y.to(device, non_blocking=True)
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                            logits = model(x)
                        loss = loss_fn(logits.float(), y)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        losses.append(loss.item())
                        seen += len(x)
                        pos += 1
                        step += 1
                        over = d.main and bool(budget) and elapsed() >= budget
                        prog, over, stop = d.max([progress(pos) if d.main else 0.0, float(over),
                                                  float(interrupted.flag)])
                        bar.update(task, completed=prog)
                        if callback:
                            callback("step", {"epoch": epoch + 1, "step": pos, "loss": losses[-1]})
                            stop = d.max([float(interrupted.flag)])[0] if not stop else stop
                        if stop or over:
                            why = "interrupted" if stop else "time budget"
                            break
                        ready = time.perf_counter()
                train_time += time.perf_counter() - t0
                if why == "interrupted" and pos < steps:
                    snap = snapshot(indices, pos, losses, seen)
                    if d.main:
                        save_training_checkpoint(last, module, config(log[-1]["val_dice"] if log else None), *snap)
                    raise _Stopped(f"at step {pos} of epoch {epoch + 1}")
                epoch += 1
                if d.world > 1:  # BatchNorm statistics drift apart per rank: validate rank 0's model everywhere
                    for b in module.buffers():
                        torch_dist.broadcast(b, 0)
                val_dice = run_validation() if va.items else float("nan")
                loss_sum, n_loss, n_seen = d.sum([float(np.sum(losses)), float(len(losses)), float(seen)])
                dt = time.perf_counter() - t0
                new_samples = d.sum([float(seen - seen0)])[0]
                total_seen += new_samples
                row = {"epoch": epoch, "time_s": round(elapsed(), 1), "lr": lr_now,
                       "train_loss": loss_sum / max(n_loss, 1), "val_dice": val_dice,
                       "samples_per_s": new_samples / max(dt, 1e-9), "samples": int(n_seen)}
                log.append(row)
                improved = not va.items or val_dice > best
                if improved:
                    best, best_epoch, bad_epochs = val_dice, epoch, 0
                else:
                    bad_epochs += 1
                schedule.epoch_end(val_dice)
                snap = snapshot(None, 0, [], 0)
                if d.main:
                    _write_log(run / "log.csv", log)
                    save_training_checkpoint(last, module, config(val_dice), *snap)
                    if improved:
                        save_training_checkpoint(run / "best", module, config(val_dice), *snap)
                    _tb_epoch(writer, row, module, va, plan, device, show)
                status = f"epoch {epoch}  loss {row['train_loss']:.3f}  val Dice {val_dice:.3f}  best {best:.3f}"
                bar.update(task, completed=progress(0), status=status)
                if not quiet and d.main and not console.is_terminal:  # a log file gets no live bar: one line an epoch
                    console.print(f"{status}  ({elapsed():.0f} s)", soft_wrap=True)
                if callback:
                    callback("epoch", {**row, "model": module})
                if d.max([float(interrupted.flag)])[0]:
                    raise _Stopped(f"after epoch {epoch}")
                if why == "time budget":
                    stop_reason = why
                elif patience is not None and va.items and bad_epochs >= patience:
                    stop_reason = f"early stop (no better validation Dice for {patience} epochs)"
    except _Stopped as s:
        if not quiet:
            console.print(f"[yellow]interrupted {s}: saved {last} with its training state; continue with "
                          f"`medseg train --resume {run}`[/]", soft_wrap=True)
        raise KeyboardInterrupt(f"training interrupted {s}; resume with: medseg train --resume {run}") from None
    finally:
        if writer is not None:
            writer.close()

    summary = {"run": str(run), "epochs": epoch, "seconds": round(elapsed(), 1), "best_val_dice": best,
               "best_epoch": best_epoch, "last_val_dice": log[-1]["val_dice"] if log else float("nan"),
               "stopped": stop_reason, "samples_per_s": total_seen / max(train_time, 1e-9),
               "data_wait_share": data_wait / max(train_time, 1e-9),  # the step waiting for its batches
               "best": str(run / "best"), "last": str(run / "last"), "processes": d.world}
    if not quiet:
        _print_summary(summary, ds.unit)
    return summary


class _Stopped(Exception):
    """Internal: the loop saved `last` after a Ctrl-C/SIGTERM and unwinds to raise KeyboardInterrupt."""


class _Interrupt:
    """SIGINT/SIGTERM set a flag that the loop reads between steps (so no step is cut in half and `last` is
    saved consistently); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.flag, self.old = False, {}

    def _handle(self, signum, frame):
        if self.flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        self.old = {}
        return False


def _tensorboard(run: Path, purge_after: int):
    """A SummaryWriter on RUN/tb (a resumed run drops events logged after its checkpoint); None if unavailable."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # tensorboard is a dependency, but a broken install should not stop training
        console.print(f"[yellow]no TensorBoard logging ({e})[/]")
        return None
    return SummaryWriter(str(run / "tb"), purge_step=purge_after + 1 if purge_after else None)


def _tb_epoch(writer, row: dict, module: torch.nn.Module, va: Arrays, plan: dict, device, show: int | None) -> None:
    if writer is None:
        return
    e = row["epoch"]
    writer.add_scalar("loss/train", row["train_loss"], e)
    writer.add_scalar("lr", row["lr"], e)
    writer.add_scalar("samples_per_s", row["samples_per_s"], e)
    if row["val_dice"] == row["val_dice"]:
        writer.add_scalar("dice/val", row["val_dice"], e)
    if show is not None and (e == 1 or e % TB_IMAGE_EVERY == 0):
        with torch.inference_mode():
            module.eval()
            x = normalize(va.images[show:show + 1].float() / 255, plan["mean"], plan["std"]).to(device)
            p = (torch.sigmoid(module(x.contiguous(memory_format=torch.channels_last)))[0, 0] >= plan["threshold"])
        writer.add_image("val/overlay", overlay(va.images[show], va.masks[show, 0], p.float().cpu().numpy()), e,
                         dataformats="HWC")
    writer.flush()


def _print_summary(s: dict, unit: str) -> None:
    t = Table(title=f"medseg train: {s['run']}", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    rows = [("epochs", str(s["epochs"])), ("stopped by", str(s["stopped"])), ("time", f"{s['seconds']:.0f} s"),
            ("best epoch", str(s["best_epoch"])),
            (f"best val Dice (per {unit}, training size)", f"{s['best_val_dice']:.3f}"),
            ("last val Dice", f"{s['last_val_dice']:.3f}"), ("samples/s", f"{s['samples_per_s']:.1f} ({s['data_wait_share']:.0%} of it waiting for data)"),
            ("checkpoints", f"{s['best']}  {s['last']}"), ("log", f"{s['run']}/log.csv, TensorBoard: {s['run']}/tb")]
    if s["processes"] > 1:
        rows.insert(3, ("processes", str(s["processes"])))
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)


def _write_log(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def _version() -> str:
    from . import __version__
    return __version__


def parse_duration(text: str) -> float:
    """'20m', '90s', '1h30m', '1200' -> seconds."""
    import re
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(a + b for a, b in parts) != t:
        raise MedsegError(None, f"cannot read duration {text!r} (examples: 20m, 90s, 1h30m)")
    return sum(float(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in parts)
