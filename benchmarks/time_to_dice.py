"""Wall time until the LGG dev validation split (6 of the 30 patients, seed 0) reaches per-patient Dice
0.70 / 0.75 / 0.80 with the default settings, and the curve (validation Dice after each epoch).

    python -m benchmarks.time_to_dice [--data ../shared/data/lgg-kaggle_3m-dev/kaggle_3m] [--budget 45m]
                                      [--reference] [--out runs/ttd]

The default run is `medseg train DATA` with nothing else but the budget. With --reference, the same
budget is spent at the same time, in a second process (each trains on 1 thread, the default; this
machine has 2 cores), on the eager plain U-Net of the classic milesial shape trained by the same
loop (model unet2d, base 32, 4 downs, BN, transposed up, single slices), so that the ratio of the times
to each Dice level is measured on this machine in this run. Times count training and validation (the
Dice is the loop's own validation at the training size, counts summed per patient, empty masks: see
docs/evaluation). The curve is printed and appended with the thresholds to results/time_to_dice.jsonl.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .common import LGG_DEV, machine, record

LEVELS = (0.70, 0.75, 0.80)
REFERENCE = {"model": "unet2d", "model_args": {"features": 32, "depth": 4, "norm": "batch",
                                               "upsampling": "transposed"}, "neighbours": 0}


def _curve(run: Path) -> list[dict]:
    import csv
    with open(run / "log.csv") as f:
        return [{"epoch": int(r["epoch"]), "time_s": float(r["time_s"]), "val_dice": float(r["val_dice"])}
                for r in csv.DictReader(f)]


def _reached(curve: list[dict]) -> dict[str, float | None]:
    return {f"{lv:.2f}": next((c["time_s"] for c in curve if c["val_dice"] >= lv), None) for lv in LEVELS}


def _train(data: Path, out: Path, budget: float, settings: dict | None) -> None:
    from medseg.training.command import Options, train_folder
    shutil.rmtree(out, ignore_errors=True)
    train_folder(data, out, time_budget_s=budget, settings=settings, options=Options(quiet=True))


def main() -> None:
    from medseg.app.cli import parse_duration
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(LGG_DEV))
    ap.add_argument("--budget", default="45m")
    ap.add_argument("--reference", action="store_true")
    ap.add_argument("--out", default="runs/ttd")
    args = ap.parse_args()
    budget = parse_duration(args.budget)
    runs = {"medseg default": None}
    if args.reference:
        runs["plain U-Net base 32 (eager ref)"] = REFERENCE
    import multiprocessing as mp
    folders = {name: Path(args.out) / name.split(" (")[0].replace(" ", "_") for name in runs}
    procs = [mp.get_context("spawn").Process(target=_train, args=(Path(args.data), folders[n], budget, s))
             for n, s in runs.items()]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    results = {}
    for name in runs:
        curve = _curve(folders[name])
        results[name] = {"curve": curve, "reached_s": _reached(curve),
                         "best": max((c["val_dice"] for c in curve), default=float("nan"))}
    m = machine()
    print(f"\ntime to validation Dice on LGG dev ({m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
          f"budget {budget:.0f}s)")
    ref = results.get("plain U-Net base 32 (eager ref)")
    print(f"{'run':34s} " + " ".join(f"{'to ' + k:>16s}" for k in results["medseg default"]["reached_s"]) + "   best")
    for name, r in results.items():
        cells = []
        for k, t in r["reached_s"].items():
            cell = "not reached" if t is None else f"{t / 60:.1f} min"
            if ref is not None and name != "plain U-Net base 32 (eager ref)" and t is not None:
                rt = ref["reached_s"][k]
                cell += f" ({'ref n/r' if rt is None else f'{rt / t:.1f}x'})"
            cells.append(f"{cell:>16s}")
        print(f"{name:34s} " + " ".join(cells) + f"   {r['best']:.3f}")
    print("\ncurve (minutes: val Dice)")
    for name, r in results.items():
        print(f"  {name}: " + "  ".join(f"{c['time_s'] / 60:.1f}: {c['val_dice']:.3f}" for c in r["curve"]))
    record("time_to_dice", {"data": args.data, "budget_s": budget, "levels": LEVELS, "results": results})


if __name__ == "__main__":
    main()
