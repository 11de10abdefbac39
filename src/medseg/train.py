"""Plan + data -> checkpoints `RUN/best` and `RUN/last` (safetensors + JSON) and the log `RUN/log.csv`.

Training is bounded by a wall-clock budget (and optionally an epoch count). The learning rate follows
a warm-up and a cosine decay over the *fraction of the budget spent*, so a 5-minute and a 2-hour run
both end with a fully annealed model. After each epoch the validation patients are scored with
per-patient Dice (3D over all slices of a patient) at the training size; the best epoch is kept.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from . import metrics
from .adapters import load_dataset
from .checkpoint import save_checkpoint
from .data import Arrays, batches, channel_stats, load_arrays, prep_of, sample_indices
from .errors import MedsegError, atomic_path
from .inference import predict_probs
from .losses import build_loss
from .models import build_model
from .plan import make_plan
from .transforms import augmentation, normalize

console = Console(stderr=True)


def lr_factor(progress: float, warmup: float = 0.03) -> float:
    """Warm-up then cosine decay, as a function of the share of the run completed (0..1)."""
    if progress < warmup:
        return 0.1 + 0.9 * progress / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


def validate(model: torch.nn.Module, val: Arrays, plan: dict) -> float:
    """Mean per-patient Dice (counts summed over each patient's slices) at the training size."""
    probs = predict_probs(model, val.float_images(), plan)
    per_case: dict[str, dict] = defaultdict(dict)
    for it, p, m in zip(val.items, probs.numpy(), val.masks[:, 0].numpy()):
        per_case[it.case] = metrics.add(per_case[it.case], metrics.counts(p >= plan["threshold"], m))
    return float(np.mean([metrics.scores(c)["dice"] for c in per_case.values()]))


def train(data: str | Path, out: str | Path, layout: str = "auto", epochs: int | None = None,
          time_budget_s: float | None = None, val_fraction: float = 0.2, seed: int = 0,
          image_size: int | None = None, batch_size: int | None = None, lr: float | None = None,
          quiet: bool = False, target: str | None = None) -> dict:
    out = Path(out)
    ds = load_dataset(data, layout, target)
    plan = make_plan(ds, val_fraction, seed, image_size=image_size, batch_size=batch_size, lr=lr,
                     epochs=epochs, time_budget_s=time_budget_s)
    if epochs is not None and time_budget_s is None:
        plan["time_budget_s"] = None  # an explicit epoch count alone is not cut short by the default budget
    train_set, val_set = set(plan["split"]["train"]), set(plan["split"]["val"])
    size, channels = plan["image_size"], plan["channels"]
    prep = prep_of(plan)
    tr = load_arrays([it for it in ds.items if it.patient in train_set], prep, "reading training data")
    va = load_arrays([it for it in ds.items if it.patient in val_set], prep, "reading validation data")
    plan["mean"], plan["std"] = channel_stats(tr.images)
    plan["n_items"] = {"train": len(tr.items), "val": len(va.items)}
    if not quiet:
        console.print(f"[bold]{ds.layout}[/] data at {ds.root}: {len(ds.items)} images of {len(ds.patients)} "
                      f"{ds.unit}s; training on {len(train_set)} {ds.unit}s ({len(tr.items)} images), "
                      f"validating on {len(val_set)} ({len(va.items)} images)")

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(plan["model"], channels, 1, **plan["model_args"]).to(memory_format=torch.channels_last)
    loss_fn = build_loss(plan["loss"])
    opt = torch.optim.AdamW(model.parameters(), lr=plan["lr"], weight_decay=plan["weight_decay"])
    augment = augmentation(plan["augmentation"])
    augment.set_random_state(seed=seed)
    bs = min(plan["batch_size"], len(tr.items))
    per_epoch = max(len(tr.items), 16 * bs) // bs * bs

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "plan.json") as tmp:
        tmp.write_text(json.dumps(plan, indent=2) + "\n")
    budget, max_epochs = plan["time_budget_s"], plan["epochs"]
    start, log, best, epoch = time.perf_counter(), [], -1.0, 0

    def progress() -> float:
        p_time = (time.perf_counter() - start) / budget if budget else 0.0
        p_epoch = epoch / max_epochs if max_epochs else 0.0
        return min(1.0, max(p_time, p_epoch))

    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=console, disable=quiet) as bar:
        task = bar.add_task("training", total=1.0, status="")
        while progress() < 1.0:
            model.train()
            losses, seen, t0 = [], 0, time.perf_counter()
            for x, y in batches(tr, sample_indices(tr.masks, per_epoch, plan["lesion_fraction"], rng), bs, augment):
                frac = progress()
                for group in opt.param_groups:
                    group["lr"] = plan["lr"] * lr_factor(frac)
                x = normalize(x, plan["mean"], plan["std"]).contiguous(memory_format=torch.channels_last)
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                seen += len(x)
                bar.update(task, completed=progress())
                if budget and time.perf_counter() - start >= budget:
                    break
            epoch += 1
            val_dice = validate(model, va, plan) if va.items else float("nan")
            row = {"epoch": epoch, "time_s": round(time.perf_counter() - start, 1),
                   "lr": plan["lr"] * lr_factor(min(1.0, progress())), "train_loss": float(np.mean(losses)),
                   "val_dice": val_dice, "samples_per_s": seen / max(time.perf_counter() - t0, 1e-9)}
            log.append(row)
            _write_log(out / "log.csv", log)
            config = {**plan, "epoch": epoch, "val_dice": val_dice, "medseg_version": _version()}
            save_checkpoint(out / "last", model, config)
            if not va.items or val_dice > best:
                best = val_dice
                save_checkpoint(out / "best", model, config)
            bar.update(task, completed=progress(),
                       status=f"epoch {epoch}  loss {row['train_loss']:.3f}  val Dice {val_dice:.3f}  best {best:.3f}")
    summary = {"run": str(out), "epochs": epoch, "seconds": round(time.perf_counter() - start, 1),
               "best_val_dice": best, "last_val_dice": log[-1]["val_dice"] if log else float("nan")}
    if not quiet:
        console.print(f"trained {epoch} epochs in {summary['seconds']:.0f}s; best validation Dice "
                      f"(per {ds.unit}, training size) {best:.3f}; checkpoints in {out}/best and {out}/last")
    return summary


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
