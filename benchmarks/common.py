"""What every benchmark prints and records: the machine, the versions, the date; results appended as
one JSON line to benchmarks/results/<name>.jsonl. Figures are measured in the run that prints them."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

LGG_DEV = Path(__file__).resolve().parents[1].parent / "shared/data/lgg-kaggle_3m-dev/kaggle_3m"


def variant_parser(seconds: float, reference: str) -> argparse.ArgumentParser:
    """The options every variant-against-reference training benchmark takes (train_loop, threads)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(LGG_DEV))
    ap.add_argument("--seconds", type=float, default=seconds)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--only", nargs="*", help=f"run only these variant numbers (1-based), besides {reference}")
    return ap


def machine() -> dict:
    """medseg's own record of the machine (medseg.version.machine), with the date and torch's thread count."""
    import torch
    from medseg.version import machine as medseg_machine
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **medseg_machine(),
            "threads": torch.get_num_threads()}


def header(threads: int | str) -> str:
    """The line every table starts with: this machine, the thread count (or a word on it), torch, the date."""
    m = machine()
    count = f"{threads} thread(s)" if isinstance(threads, int) else threads
    return f"\n{m['cpu']} ({m['cores']} cores), {count}, torch {m['torch']}, {m['date']}"


def record(name: str, payload: dict) -> None:
    folder = Path(__file__).parent / "results"
    folder.mkdir(exist_ok=True)
    with (folder / f"{name}.jsonl").open("a") as f:
        f.write(json.dumps({"benchmark": name, **machine(), **payload}) + "\n")


def rate(fn, items: int, warmup: int = 1, repeats: int = 3) -> float:
    """items per second of fn(), best of `repeats` after `warmup` calls (best: least disturbed by others)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return items / best


def default_training_arrays(data: str | Path):
    """(plan, training arrays) of `medseg train DATA` with the default settings: the split, the cached uint8
    arrays of the training patients with their 2.5D neighbours, and the plan's mean/std from them."""
    from medseg.adapters import load_dataset
    from medseg.data.arrays import channel_stats, load_arrays, prep_of, with_neighbours
    from medseg.planning.planner import make_plan

    ds = load_dataset(data)
    plan = make_plan(ds)
    train = set(plan.split["train"])
    tr = with_neighbours(load_arrays([it for it in ds.items if it.patient in train], prep_of(plan)),
                         int(plan.neighbours))
    mean, std = channel_stats(tr.images)
    return plan.replace(mean=mean, std=std), tr
