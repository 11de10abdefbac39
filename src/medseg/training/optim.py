"""Optimisers and learning-rate schedules from the plan (`optimizer`, `schedule`, `warmup`, `lr`, `weight_decay`).

A schedule is a function of the *fraction of the run done* (0..1: the larger of the share of the time budget
spent and the share of the epochs done), not of a step count, because a time-budgeted run does not know how
many steps it will get: a 5-minute and a 2-hour run both end fully annealed. Each schedule sets the learning
rate (and for one-cycle the momentum) before every optimizer step, and has a JSON-able `state_dict` so that a
resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math

import torch

from ..errors import MedsegError

OPTIMIZERS = {
    "adamw": "AdamW (decoupled weight decay)",
    "adam": "Adam (weight decay as L2 in the gradient)",
    "sgd": "SGD, momentum 0.9, Nesterov",
}
SCHEDULES = {
    "cosine": "linear warm-up from 10% over the `warmup` share of the run, then cosine decay to 0",
    "onecycle": "one-cycle (torch OneCycleLR's shape): cosine rise from lr/25 over 30% of the run, cosine fall "
                "to lr/25e4; momentum (SGD) or Adam's beta1 cycles 0.95 -> 0.85 -> 0.95",
    "plateau": "warm-up, then the learning rate halves after 2 epochs without a better validation Dice "
               "(down to lr/1000)",
    "constant": "warm-up, then constant",
}
ONECYCLE = {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4, "momentum": (0.85, 0.95)}
PLATEAU = {"factor": 0.5, "patience": 2, "min_scale": 1e-3, "threshold": 1e-3}


def build_optimizer(plan: dict, params) -> torch.optim.Optimizer:
    name = plan.optimizer
    lr, wd = float(plan.lr), float(plan.weight_decay or 0.0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    raise MedsegError(None, f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def lr_factor(progress: float, warmup: float = 0.03) -> float:
    """Warm-up then cosine decay, as a function of the share of the run completed (0..1)."""
    if progress < warmup:
        return 0.1 + 0.9 * progress / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


def _warm(progress: float, warmup: float) -> float:
    return 0.1 + 0.9 * progress / warmup if progress < warmup else 1.0


def _cos(start: float, end: float, t: float) -> float:
    """Cosine interpolation from start (t=0) to end (t=1)."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


class Schedule:
    """The learning rate as plan lr x factor(progress); `epoch_end(val_dice)` feeds reduce-on-plateau."""

    def __init__(self, name: str, warmup: float = 0.03):
        if name not in SCHEDULES:
            raise MedsegError(None, f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
        if not 0.0 <= warmup < 1.0:
            raise MedsegError(None, f"warmup must be a share of the run in [0, 1), got {warmup}")
        self.name, self.warmup = name, warmup
        self.scale, self.best, self.bad_epochs = 1.0, -math.inf, 0  # plateau state

    def factor(self, progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        if self.name == "cosine":
            return lr_factor(p, self.warmup)
        if self.name == "onecycle":
            c, low = ONECYCLE, 1.0 / ONECYCLE["div_factor"]
            if p < c["pct_start"]:
                return _cos(low, 1.0, p / c["pct_start"])
            return _cos(1.0, low / c["final_div_factor"], (p - c["pct_start"]) / (1 - c["pct_start"]))
        return _warm(p, self.warmup) * (self.scale if self.name == "plateau" else 1.0)

    def momentum(self, progress: float) -> float | None:
        if self.name != "onecycle":
            return None
        lo, hi = ONECYCLE["momentum"]
        p, s = min(max(progress, 0.0), 1.0), ONECYCLE["pct_start"]
        return _cos(hi, lo, p / s) if p < s else _cos(lo, hi, (p - s) / (1 - s))

    def apply(self, optimizer: torch.optim.Optimizer, base_lr: float, progress: float) -> float:
        """Set every group's learning rate (and one-cycle momentum) for the next step; returns the lr."""
        lr = base_lr * self.factor(progress)
        m = self.momentum(progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
            if m is not None:
                if "betas" in group:
                    group["betas"] = (m, group["betas"][1])
                elif group.get("momentum"):
                    group["momentum"] = m
        return lr

    def epoch_end(self, val_dice: float) -> None:
        """Reduce-on-plateau: count epochs without a better validation Dice; halve after `patience`."""
        if self.name != "plateau" or val_dice != val_dice:  # NaN: no validation set
            return
        if val_dice > self.best + PLATEAU["threshold"]:
            self.best, self.bad_epochs = val_dice, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= PLATEAU["patience"]:
            self.scale = max(self.scale * PLATEAU["factor"], PLATEAU["min_scale"])
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"name": self.name, "warmup": self.warmup, "scale": self.scale,
                "best": None if self.best == -math.inf else self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise MedsegError(None, f"checkpoint has schedule {state.get('name')!r}, the plan {self.name!r}")
        self.warmup, self.scale, self.bad_epochs = state["warmup"], state["scale"], state["bad_epochs"]
        self.best = -math.inf if state["best"] is None else state["best"]


def build_schedule(plan: dict) -> Schedule:
    return Schedule(plan.schedule, float(plan.warmup))
