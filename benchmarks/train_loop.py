"""The whole training loop's speed, the step fed by the real data pipeline, on LGG dev: medseg's loop in
several settings against the eager reference of the same network, one after another in this run.

    python -m benchmarks.train_loop [--data .../kaggle_3m] [--seconds 90] [--warmup 15]

reference        a plain PyTorch loop: the default network in fp32 NCHW, eager, fed in its own thread by
                 medseg's batches() with the default (MONAI, per-sample) augmentation
medseg ...       `medseg.training.train.train_folder()` on the same data with the default settings and --set prefetch=...,
                 compile=..., augmentation=... (1 thread for the step, as the default)
Columns: "steady" is training samples/s over the steps after the first `--warmup` (compiling happens in
those), timed step to step inside epochs, so validation and checkpoints are not counted; "whole" is
train()'s own figure (samples / training time, compile and epoch starts included); "data wait" the share
of that training time the step spent waiting for its next batch (making it, when inline). The second core is
what the prefetch thread uses: run it on an otherwise idle machine.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .common import default_training_arrays, header, record, variant_parser

VARIANTS = {  # name -> settings for train()
    "medseg eager, augmentation inline (old default)": {"prefetch": False, "compile": False},
    "medseg eager + prefetch thread": {"prefetch": True, "compile": False},
    "medseg compile, augmentation inline": {"prefetch": False, "compile": True},
    "medseg compile + prefetch thread": {"prefetch": True, "compile": True},
    "medseg compile + prefetch, 'fast' augmentation": {"prefetch": True, "compile": True, "augmentation": "fast"},
    "medseg compile + prefetch, bf16 autocast": {"prefetch": True, "compile": True, "precision": "bf16"},
}


def _steady(times: list[tuple[float, int]], warmup: int, batch: int) -> float:
    """samples/s from (time, epoch) of each step: intervals between consecutive steps of one epoch."""
    gaps = [b[0] - a[0] for a, b in zip(times[warmup:], times[warmup + 1:]) if a[1] == b[1]]
    return batch * len(gaps) / max(sum(gaps), 1e-9)


def reference(data: str, seconds: float, warmup: int) -> tuple[float, float]:
    from medseg.data.sampling import batches, sample_indices
    from medseg.training.losses import build_loss
    from medseg.models import build_model
    from medseg.transforms import augmentation, normalize

    plan, tr = default_training_arrays(data)
    mean, std = plan.mean, plan.std
    bs, rng = plan.batch_size, np.random.default_rng(0)
    aug = augmentation("default")
    aug.set_random_state(seed=0)
    torch.manual_seed(0)
    model = build_model(plan.model, plan.in_channels, 1, **plan.model_args).train()
    loss_fn, opt = build_loss(plan.loss), torch.optim.AdamW(model.parameters(), plan.lr)
    times, seen, t0 = [], 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        idx = sample_indices(tr.masks, 16 * bs, plan.lesion_fraction, rng)
        for x, y in batches(tr, idx, bs, aug):
            loss = loss_fn(model(normalize(x, mean, std)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(x)
            times.append((time.perf_counter(), 0))
            if time.perf_counter() - t0 >= seconds:
                break
    return _steady(times, warmup, bs), seen / (time.perf_counter() - t0)


def medseg_loop(data: str, seconds: float, warmup: int, settings: dict,
                threads: int | None = None) -> tuple[float, float, float]:
    from medseg.training.command import Options, train_folder

    times: list[tuple[float, int]] = []

    def on(event, info):
        if event == "step":
            times.append((time.perf_counter(), info["epoch"]))

    with tempfile.TemporaryDirectory() as tmp:
        out = train_folder(data, Path(tmp) / "run", time_budget_s=seconds, settings=settings,
                           options=Options(quiet=True, threads=threads, callback=on))
        batch = json.loads((Path(tmp) / "run" / "plan.json").read_text())["batch_size"]
    return _steady(times, warmup, batch), out["samples_per_s"], out["data_wait_share"]


def main() -> None:
    ap = variant_parser(90, "the reference")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    steady, whole = reference(args.data, args.seconds, args.warmup)
    rows.append({"variant": "reference: eager fp32 NCHW, augmentation inline", "steady": steady, "whole": whole})
    print(f"  measured reference: {steady:.1f} samples/s")
    for i, (name, settings) in enumerate(VARIANTS.items(), 1):
        if args.only and str(i) not in args.only:
            continue
        steady, whole, wait = medseg_loop(args.data, args.seconds, args.warmup, settings)
        rows.append({"variant": name, "settings": settings, "steady": steady, "whole": whole, "data_wait": wait})
        print(f"  measured {name}: {steady:.1f} samples/s")
    ref = rows[0]["steady"]
    print(header(1))
    print(f"LGG dev (default plan: 2.5D, 9 x 128 x 128, batch 16), {args.seconds:.0f} s per variant")
    print(f"{'variant':50} {'steady/s':>9} {'x ref':>6} {'whole/s':>8} {'data wait':>9}")
    for r in rows:
        r["x_ref"] = round(r["steady"] / ref, 2)
        r["steady"], r["whole"] = round(r["steady"], 1), round(r["whole"], 1)
        wait = f"{r['data_wait']:.0%}" if "data_wait" in r else ""
        print(f"{r['variant']:50} {r['steady']:>9} {r['x_ref']:>6} {r['whole']:>8} {wait:>9}")
    record("train_loop", {"data": args.data, "seconds": args.seconds, "warmup": args.warmup, "rows": rows})


if __name__ == "__main__":
    main()
