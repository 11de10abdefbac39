"""What the data pipeline delivers against what the training step consumes, with the default settings on
LGG dev (the cached uint8 arrays of the 24 training patients, 2.5D, the default augmentation), measured in
this run on 1 thread each (the training default):

    python -m benchmarks.pipeline [--data ../shared/data/lgg-kaggle_3m-dev/kaggle_3m] [--batches 40]

  cache only       samples/s of batches() with no augmentation (memory-mapped cache -> float batches)
  cached+augmented samples/s of batches() with the default augmentation (what training draws), and with
                   the other of "default" (MONAI, per sample) and "fast" (the same set, batched, vectorised)
  training step    samples/s of forward + loss + backward + AdamW step of the default model at that size,
                   compiled as in the default plan
Target: the augmented pipeline >= 10x the training step's demand.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from .common import LGG_DEV, default_training_arrays, machine, record


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(LGG_DEV))
    ap.add_argument("--batches", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from medseg.data.sampling import batches, sample_indices
    from medseg.training.losses import build_loss
    from medseg.models import build_model
    from medseg.training.speed import compiles
    from medseg.transforms import augmentation, normalize

    plan, tr = default_training_arrays(args.data)
    bs = plan.batch_size
    rng = np.random.default_rng(0)
    idx = sample_indices(tr.masks, bs * args.batches, plan.lesion_fraction, rng)

    def loader_rate(aug) -> tuple[float, list]:
        t = time.perf_counter()
        out = list(batches(tr, idx, bs, aug))
        return len(idx) / (time.perf_counter() - t), out

    plain, _ = loader_rate(augmentation("none"))
    aug = augmentation(plan.augmentation)
    aug.set_random_state(seed=0)
    augmented, drawn = loader_rate(aug)
    other = "fast" if plan.augmentation != "fast" else "default"
    aug2 = augmentation(other)
    aug2.set_random_state(seed=0)
    augmented2, _ = loader_rate(aug2)

    module = build_model(plan.model, plan.in_channels, 1, **plan.model_args).to(memory_format=torch.channels_last)
    loss_fn = build_loss(plan.loss)
    opt = torch.optim.AdamW(module.parameters(), plan.lr)
    module.train()
    model = torch.compile(module) if compiles(plan) else module  # the default step (compiled for budgets >= 10 min)

    def step(x, y):
        x = normalize(x, plan.mean, plan.std).contiguous(memory_format=torch.channels_last)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for x, y in drawn[:2]:
        step(x, y)
    t = time.perf_counter()
    timed = drawn[2:12]
    for x, y in timed:
        step(x, y)
    demand = len(timed) * bs / (time.perf_counter() - t)
    m = machine()
    print(f"\n{m['cpu']} ({m['cores']} cores), 1 thread, torch {m['torch']}, {m['date']}")
    print(f"LGG dev, {len(tr.items)} training slices at {plan.image_size} px, {plan.in_channels} channels "
          f"(2.5D), batch {bs}, augmentation {plan.augmentation!r}, model {plan.model}")
    print(f"training step: {'torch.compile' if compiles(plan) else 'eager'}, channels_last")
    print(f"{'stage':28} {'samples/s':>10} {'x step demand':>14}")
    for name, r in (("cache only", plain), (f"cached + augmented ({plan.augmentation})", augmented),
                    (f"cached + augmented ({other})", augmented2), ("training step (demand)", demand)):
        print(f"{name:28} {r:>10.1f} {r / demand:>14.1f}")
    record("pipeline", {"data": args.data, "image_size": plan.image_size, "batch": bs,
                        "augmentation": plan.augmentation, "cache_only_per_s": round(plain, 1),
                        "augmented_per_s": round(augmented, 1), f"augmented_{other}_per_s": round(augmented2, 1),
                        "step_demand_per_s": round(demand, 1)})


if __name__ == "__main__":
    main()
