"""The figures of a workflow guide, from a run that `medseg evaluate` has scored:

    .venv/bin/python docs/workflows/make_figures.py RUN OUT_PREFIX

writes OUT_PREFIX-curve.png (training loss and validation Dice per epoch, from RUN/log.csv) and
OUT_PREFIX-cases.png (best, median and worst case of RUN/eval/cases.csv among those with a lesion; for
slice data sets the slice with the most ground truth; ground truth outlined green, prediction red),
with the same predictor, threshold and post-processing as `medseg predict`.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medseg.inference import postprocess  # noqa: E402
from medseg.adapters import load_dataset  # noqa: E402
from medseg.data.arrays import prep_of, read_item  # noqa: E402
from medseg.io.images import overlay  # noqa: E402
from medseg.inference.predictor import Predictor  # noqa: E402


def curve(run: Path, out: Path) -> None:
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    t = [float(r["time_s"]) / 60 for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=110)
    ax.plot(t, [float(r["val_dice"]) for r in rows], color="tab:red", label="validation Dice (per case)")
    ax.set_xlabel("minutes of training")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax2 = ax.twinx()
    ax2.plot(t, [float(r["train_loss"]) for r in rows], color="tab:blue", alpha=0.6, label="training loss")
    ax2.set_ylabel("loss")
    fig.legend(loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out)
    plt.close(fig)


def cases(run: Path, out: Path) -> None:
    p = Predictor.load(run)
    plan = p.plan
    with open(run / "eval" / "cases.csv") as f:
        rows = sorted((r for r in csv.DictReader(f) if int(r["gt_pixels"]) > 0), key=lambda r: float(r["dice"]))
    picks = {"worst": rows[0], "median": rows[len(rows) // 2], "best": rows[-1]}
    ds = load_dataset(plan.data, plan.layout, plan.target_name)
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.6), dpi=90)
    for ax, (label, row) in zip(axes, picks.items()):
        items = sorted((it for it in ds.items if it.case == row["case"]), key=lambda it: it.index)
        read = [read_item(it, prep_of(plan)) for it in items]
        probs = p.volume_probabilities(iter([r[0] for r in read]), len(read)) if len(read) > 1 or \
            plan.neighbours else p.probabilities(read[0][0])[None]
        masks = postprocess.apply(probs, p.setting)
        masks = masks if masks.ndim == 3 else masks[None]
        k = int(np.argmax([r[1].sum() for r in read]))
        ax.imshow(overlay(read[k][0][:3] if read[k][0].shape[0] >= 3 else read[k][0][:1], read[k][1], masks[k] > 0))
        where = f", slice {items[k].index}" if len(items) > 1 else ""
        ax.set_title(f"{label}: {row['case']}{where}\nDice {float(row['dice']):.3f}", fontsize=8)
        ax.axis("off")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.text(0.5, 0.02, "ground truth outlined green, prediction red", ha="center", fontsize=8)
    fig.savefig(out, bbox_inches="tight", pad_inches=0.08)  # the two-line titles otherwise lose their top line
    plt.close(fig)


if __name__ == "__main__":
    run, prefix = Path(sys.argv[1]), sys.argv[2]
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    curve(run, Path(f"{prefix}-curve.png"))
    cases(run, Path(f"{prefix}-cases.png"))
    print(f"wrote {prefix}-curve.png and {prefix}-cases.png")
