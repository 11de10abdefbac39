"""The training loop: epochs of optimizer steps until the budget, the epoch count or a stop; side work in callbacks.

The learning rate follows the plan's schedule (optim.py) over the *fraction of the run done*, so a 5-minute and a
2-hour run both end fully annealed. With `ema_decay` an exponential moving average of the weights follows the
steps (training.ema): it is what is validated and saved as model.safetensors. After each epoch the validation
patients are scored (training.validation); `best` holds the final weights (select "last", the default) or the
epoch ending the best running mean of the last `select_window` validation Dice values ("window"). The callbacks
then log, checkpoint and decide about early stopping. Every random state is part of the checkpoint
(training.rng, training.state), so a resumed run continues exactly.
Under DDP each rank takes a disjoint share of every epoch's draws, rank 0 alone writes files, and every stop
decision is rank 0's.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from ..version import __version__
from ..data import volumes
from ..data.arrays import Arrays
from ..data.sampling import Prefetch, batches, class_presence, mask_areas, sample_balanced, sample_indices
from ..errors import MedsegError
from ..models import SPATIAL_DIMS, build_model
from ..models.weights import load_encoder_weights
from ..planning.plan import Plan
from ..transforms import coarse_batch, normalize, plan_augmentation
from .callbacks import Callback, Interrupt, console
from .dist import Dist
from .ema import Ema
from .losses import build_loss
from .optim import build_optimizer, build_schedule
from .rng import augmenter_state, capture_rng, restore_rng, set_augmenter_state
from .speed import PREFETCH_DEPTH, compiles, prefetches, uses_bf16
from .state import (RAW, load_training_state, optimizer_from_tensors, optimizer_to_tensors,
                    save_training_checkpoint)
from .validation import validate, validate_volumes


@dataclass
class LoopState:
    """Where the run is: what a checkpoint's state.json stores besides the optimizer, schedule and RNG."""

    epoch: int = 0
    step: int = 0
    best: float = -1.0  # the selected epoch's own validation Dice
    best_epoch: int = 0
    bad_epochs: int = 0
    elapsed0: float = 0.0  # seconds spent before this process started (a resumed run)
    log: list = field(default_factory=list)
    best_score: float = -1.0  # the best running mean of select_window validation Dice values so far


class SliceFeed:
    """2D (and 2.5D) training: an epoch draws image indices (data.sampling) and makes augmented batches."""

    def __init__(self, plan: Plan, tr: Arrays, va: Arrays, d: Dist):
        self.plan, self.tr, self.va = plan, tr, va
        self.bs = bs = min(plan.batch_size, len(tr.items))
        self.per_epoch = max(len(tr.items), 16 * bs, d.world * bs) // bs * bs
        self.areas = mask_areas(tr.masks if not plan.classes else tr.masks > 0)
        self.presence = class_presence(tr.masks, len(plan.classes)) if plan.classes else None
        self.show = int(np.argmax(mask_areas(va.masks))) if va.items else None  # TensorBoard's overlay

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        p = self.plan
        if self.presence is not None and p.sampling == "lesion":  # multi-class: balanced over the classes
            return sample_balanced(self.presence, self.per_epoch, p.lesion_fraction, rng, p.empty_drop)
        return sample_indices(self.areas, self.per_epoch, p.lesion_fraction, rng, p.sampling, p.empty_drop)

    def batches(self, share: np.ndarray, augment):
        return batches(self.tr, share, self.bs, augment)

    def validate(self, module, device, d: Dist) -> float:
        return validate(module, self.va, self.plan, device, d)


class PatchFeed(SliceFeed):
    """3D training: patches from whole volumes (data.volumes); an epoch is 4 patches per training case."""

    def __init__(self, plan: Plan, tr: Arrays, va: Arrays, d: Dist):
        self.plan, self.tr, self.va = plan, tr, va
        k = len(plan.classes)
        self.tr_vol, self.va_vol, self.size = volumes.to_volumes(tr, k), volumes.to_volumes(va), plan.patch
        self.bs = bs = plan.batch_size
        self.per_epoch = max(4 * len(self.tr_vol), 16 * bs, d.world * bs) // bs * bs
        self.show = None

    def draw(self, rng):
        return volumes.sample_patches(self.tr_vol, self.per_epoch, self.plan.lesion_fraction, rng)

    def batches(self, share, augment):
        return volumes.patch_batches(self.tr_vol, share, self.bs, self.size, augment)

    def validate(self, module, device, d):
        return validate_volumes(module, self.va_vol, self.plan, device, d)


class Stopped(Exception):
    """Internal: the loop saved `last` after a Ctrl-C/SIGTERM and unwinds to raise KeyboardInterrupt."""


class Loop:
    """One training process's loop. Built in the order the random streams are consumed (the model's
    initialisation, then the sampler and augmenter), so a fixed seed gives the same weights."""

    def __init__(self, plan: Plan, tr: Arrays, va: Arrays, run: Path, d: Dist, quiet: bool, resuming: bool):
        self.plan, self.run, self.d, self.device, self.quiet = plan, run, d, d.device, quiet
        seed = plan.seed if plan.init_seed is None else plan.init_seed
        torch.manual_seed(seed)
        random.seed(seed)
        module = build_model(plan.model, plan.in_channels, plan.out_channels, **plan.model_args)
        if plan.encoder_weights and not resuming:
            load_encoder_weights(module, plan.encoder_weights)
        self.three_d = SPATIAL_DIMS.get(plan.model, 2) == 3
        self.fmt = torch.contiguous_format if self.three_d else torch.channels_last  # channels_last: 4D only
        self.module = module.to(device=self.device, memory_format=self.fmt)
        self.ema = Ema(self.module, plan.ema_decay, plan.ema_buffers) if plan.ema_decay is not None else None
        if d.rank:  # ranks share the initial weights (DDP also broadcasts them) but not their dropout draws
            torch.manual_seed(seed + 7919 * d.rank)
        self.rng = np.random.default_rng(seed)  # the same on every rank: all draw one epoch, then take a share
        self.augment = plan_augmentation(plan)
        self.augment.set_random_state(seed=seed + 7919 * d.rank)
        self.loss_fn = build_loss(plan.loss, **(plan.loss_args or {})).to(self.device)
        self.opt = build_optimizer(plan, self.module.parameters())
        self.schedule = build_schedule(plan)
        self.state, self.pending = LoopState(), None
        self.feed = (PatchFeed if self.three_d else SliceFeed)(plan, tr, va, d)
        self.per_rank = self.feed.per_epoch // d.world // self.feed.bs * self.feed.bs
        self.steps = self.per_rank // self.feed.bs
        self.callbacks: list[Callback] = []
        self.stop_reason, self.improved, self.snap = None, False, None
        self.train_time = self.data_wait = 0.0
        self.total_seen = 0
        self.t_start = time.perf_counter()

    # -------------------------------------------------------------------------------------------- resume
    def resume_from(self, last: Path) -> None:
        """Weights, optimizer, schedule, loop state and random streams of the checkpoint `last`."""
        tensors, st, weights = load_training_state(last)
        raw = {k[len(RAW):]: v for k, v in tensors.items() if k.startswith(RAW)}
        self.module.load_state_dict(raw or weights)  # without raw.* (EMA off) the saved weights are the live ones
        if self.ema is not None and raw:
            self.ema.load(weights, st["ema_updates"])
        self.opt.load_state_dict(optimizer_from_tensors(tensors, st["optimizer"]))
        self.schedule.load_state_dict(st["schedule"])
        nan = float("nan")
        best = nan if st["best"] is None else st["best"]
        score = st.get("best_score", st["best"])  # older state.json: the single best epoch was selected
        self.state = LoopState(st["epoch"], st["step"], best, st["best_epoch"], st["bad_epochs"], st["elapsed_s"],
                               st["log"], nan if score is None else score)
        d = self.d
        if d.rank < len(st["rng"]):
            restore_rng(tensors, st["rng"][d.rank], f"rng.{d.rank}.", self.rng, self.augment)
        elif d.main or not self.quiet:
            console.print(f"[yellow]rank {d.rank}: the checkpoint has no RNG state for this rank (it ran with "
                          f"{len(st['rng'])} processes); resuming with fresh random streams[/]")
        if st["pos"]:
            self.pending = (tensors["epoch.indices"].numpy(), st["pos"], st["epoch_losses"], st["epoch_seen"])
        if not self.quiet:
            where = f"epoch {st['epoch']}" + (f", step {st['pos']} of epoch {st['epoch'] + 1}" if st["pos"] else "")
            console.print(f"resuming {self.run} after {where} ({st['elapsed_s']:.0f}s already spent)")

    # -------------------------------------------------------------------------------------------- clocks
    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start + self.state.elapsed0

    def progress(self, pos: int) -> float:
        """The share of the run done: the larger of time / budget and epochs / epoch limit."""
        budget, max_epochs = self.plan.time_budget_s, self.plan.epochs
        p_time = self.elapsed() / budget if budget else 0.0
        p_epoch = (self.state.epoch + pos / self.steps) / max_epochs if max_epochs else 0.0
        return min(1.0, max(p_time, p_epoch))

    # -------------------------------------------------------------------------------------------- snapshots
    @property
    def eval_module(self) -> torch.nn.Module:
        """The weights validated and saved as model.safetensors: the EMA when on, else the live module."""
        return self.module if self.ema is None else self.ema.module

    def snapshot(self, indices, pos: int, losses: list, seen: int):
        """(tensors, state) of this moment on rank 0 (None elsewhere); every rank must call it (RNG gather).
        With EMA the live weights are in it as raw.* (model.safetensors gets the averaged ones)."""
        d, s = self.d, self.state
        rngs = d.gather(capture_rng(self.rng, self.augment))
        if not d.main:
            return None
        tensors, index = optimizer_to_tensors(self.opt.state_dict())
        for r, part in enumerate(rngs):
            tensors.update({f"rng.{r}.{name}": t for name, t in part["tensors"].items()})
        if pos:
            tensors["epoch.indices"] = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        state = {"epoch": s.epoch, "step": s.step, "pos": pos, "best": None if s.best != s.best else s.best,
                 "best_epoch": s.best_epoch, "bad_epochs": s.bad_epochs, "elapsed_s": self.elapsed(), "log": s.log,
                 "schedule": self.schedule.state_dict(), "optimizer": index, "rng": [p["json"] for p in rngs],
                 "world_size": d.world, "epoch_losses": losses, "epoch_seen": seen, "seed": self.plan.seed,
                 "best_score": None if s.best_score != s.best_score else s.best_score}
        if self.ema is not None:
            tensors.update({f"{RAW}{k}": v for k, v in self.module.state_dict().items()})
            state["ema_updates"] = self.ema.updates
        return tensors, state

    def config(self, val_dice) -> Plan:
        """The plan as stored in a checkpoint: with the epoch and validation Dice it was saved at."""
        return self.plan.replace(epoch=self.state.epoch, val_dice=val_dice, medseg_version=__version__)

    # -------------------------------------------------------------------------------------------- the loop
    def fit(self, callbacks: list[Callback]) -> None:
        """Epochs until a stop; Ctrl-C saves `last` mid-epoch and raises Stopped."""
        self.callbacks = callbacks
        model = self._step_model()
        self.t_start = time.perf_counter()
        self.lr_now = self.plan.lr * self.schedule.factor(self.progress(0))
        self.interrupted = Interrupt()
        try:
            with self.interrupted:
                while self.stop_reason is None:
                    self._epoch(model)
        finally:
            for cb in callbacks:
                cb.close()

    def _step_model(self) -> torch.nn.Module:
        """The module the training step calls: DDP-wrapped, or compiled; validation and checkpoints use
        the plain module."""
        d = self.d
        if d.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        # dynamic=False: the coarse start (plan.coarse_share) changes the batches' image size once:
        # a static graph per size, not one generic graph for both
        return torch.compile(self.module, dynamic=False) if compiles(self.plan) else self.module

    def _epoch(self, model: torch.nn.Module) -> None:
        d = self.d
        if self.pending is not None:
            indices, pos, losses, seen = self.pending
            self.pending = None
        else:
            if d.max([self.progress(0) if d.main else 0.0])[0] >= 1.0:
                budget = self.plan.time_budget_s
                self.stop_reason = "time budget" if budget and self.elapsed() >= budget else "epochs"
                return
            indices, pos, losses, seen = self.feed.draw(self.rng), 0, [], 0
        share = np.asarray(indices)[d.rank::d.world][:self.per_rank]
        if hasattr(self.module, "set_encoder_trainable"):  # pretrained encoders: frozen for the first N epochs
            self.module.set_encoder_trainable(self.state.epoch >= int(self.plan.freeze_encoder_epochs or 0))
        model.train()
        t0, seen0 = time.perf_counter(), seen
        pos, seen, why = self._steps(model, share, pos, losses, seen)
        self.train_time += time.perf_counter() - t0
        if why == "interrupted" and pos < self.steps:
            snap = self.snapshot(indices, pos, losses, seen)
            if d.main:
                last = self.state.log[-1]["val_dice"] if self.state.log else None
                save_training_checkpoint(self.run / "last", self.eval_module, self.config(last), *snap)
            raise Stopped(f"at step {pos} of epoch {self.state.epoch + 1}")
        self._end_epoch(t0, seen0, seen, losses)
        if d.max([float(self.interrupted.flag)])[0]:
            raise Stopped(f"after epoch {self.state.epoch}")
        if why == "time budget":
            self.stop_reason = why

    def _steps(self, model, share: np.ndarray, pos: int, losses: list, seen: int) -> tuple[int, int, str | None]:
        """The optimizer steps of one epoch from step `pos`; returns (pos, seen, why it stopped early)."""
        d, plan, bs, device = self.d, self.plan, self.feed.bs, self.device
        amp = uses_bf16(plan, device)
        prog = d.max([self.progress(pos) if d.main else 0.0])[0]
        stream = self.feed.batches(share[pos * bs:], self.augment)
        if prefetches(plan, device, d.world):
            stream = Prefetch(stream, PREFETCH_DEPTH, lambda: augmenter_state(self.augment),
                              lambda st: set_augmenter_state(self.augment, st))
        ready = time.perf_counter()  # when the step became ready for its next batch
        with contextlib.closing(stream):  # Prefetch.close: the thread stops, the augmenter rewinds
            for x, y in stream:
                self.data_wait += time.perf_counter() - ready
                self.lr_now = self.schedule.apply(self.opt, plan.lr, prog)
                x = normalize(x, plan.mean, plan.std)
                if not self.three_d and prog < plan.coarse_share:
                    x, y = coarse_batch(x, y, plan.coarse_size, len(plan.classes), plan.soft_labels)
                x = x.to(device, non_blocking=True).contiguous(memory_format=self.fmt)
                y = y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = model(x)
                loss = self.loss_fn(logits, y)  # in fp32: build_loss's DeepSupervisionLoss casts
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                if self.ema is not None:
                    self.ema.update(self.module)
                losses.append(loss.item())
                seen += len(x)
                pos += 1
                self.state.step += 1
                over = d.main and bool(plan.time_budget_s) and self.elapsed() >= plan.time_budget_s
                prog, over, stop = d.max([self.progress(pos) if d.main else 0.0, float(over),
                                          float(self.interrupted.flag)])
                info = {"epoch": self.state.epoch + 1, "step": pos, "loss": losses[-1], "progress": prog}
                for cb in self.callbacks:
                    cb.on_step(self, info)
                stop = stop or d.max([float(self.interrupted.flag)])[0]  # a callback may have sent Ctrl-C
                if stop or over:
                    return pos, seen, "interrupted" if stop else "time budget"
                ready = time.perf_counter()
        return pos, seen, None

    def _end_epoch(self, t0: float, seen0: int, seen: int, losses: list) -> None:
        """Validation, the log row, best/bad-epoch counts, the schedule's epoch hook, then the callbacks."""
        d, s = self.d, self.state
        s.epoch += 1
        if d.world > 1:  # BatchNorm statistics drift apart per rank: validate rank 0's model everywhere
            averaged = list(self.ema.module.buffers()) if self.ema is not None else []
            for b in list(self.module.buffers()) + averaged:
                torch_dist.broadcast(b, 0)
        val_dice = self.feed.validate(self.eval_module, self.device, d) if self.feed.va.items else float("nan")
        loss_sum, n_loss, n_seen = d.sum([float(np.sum(losses)), float(len(losses)), float(seen)])
        dt = time.perf_counter() - t0
        new_samples = d.sum([float(seen - seen0)])[0]
        self.total_seen += new_samples
        row = {"epoch": s.epoch, "time_s": round(self.elapsed(), 1), "lr": self.lr_now,
               "train_loss": loss_sum / max(n_loss, 1), "val_dice": val_dice,
               "samples_per_s": new_samples / max(dt, 1e-9), "samples": int(n_seen)}
        s.log.append(row)
        self._select(val_dice)
        self.schedule.epoch_end(val_dice)
        self.snap = self.snapshot(None, 0, [], 0)
        for cb in self.callbacks:
            cb.on_epoch_end(self, row)

    def _select(self, val_dice: float) -> None:
        """The selection score is the mean of the last select_window validation Dice values (fewer in the first
        epochs), so a one-epoch peak alone does not win; the bad-epoch count (early stopping) restarts when it
        beats the best so far. `improved` (write `best`): with select "window" when it does, with "last" every
        epoch (the final weights are the ones kept)."""
        s = self.state
        score = float(np.mean([r["val_dice"] for r in s.log[-int(self.plan.select_window):]]))
        better = not self.feed.va.items or score > s.best_score
        s.best_score, s.bad_epochs = (score, 0) if better else (s.best_score, s.bad_epochs + 1)
        self.improved = better or self.plan.select == "last"
        if self.improved:
            s.best, s.best_epoch = val_dice, s.epoch

    def summary(self) -> dict:
        s, run = self.state, self.run
        return {"run": str(run), "epochs": s.epoch, "seconds": round(self.elapsed(), 1), "best_val_dice": s.best,
                "best_epoch": s.best_epoch, "last_val_dice": s.log[-1]["val_dice"] if s.log else float("nan"),
                "stopped": self.stop_reason, "samples_per_s": self.total_seen / max(self.train_time, 1e-9),
                "data_wait_share": self.data_wait / max(self.train_time, 1e-9),  # the step waiting for batches
                "best": str(run / "best"), "last": str(run / "last"), "processes": self.d.world,
                "bf16": uses_bf16(self.plan, self.device)}


def check_resumable(last: Path) -> None:
    if last.exists() and not (last / "state.json").is_file():
        raise MedsegError(last, "this checkpoint has no training state (written by an older medseg?): it cannot "
                                "be resumed; train into a new folder")
