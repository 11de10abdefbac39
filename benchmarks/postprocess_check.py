"""Offline post-processing checks on a cross-validated 2D binary run (BUSI): the fold models' probabilities on
their own validation images (the pooled set `medseg evaluate` scores, with the run's TTA, at each image's size),
computed once, then

1. a fallback for images left empty: where the mask at the run's threshold is empty, keep the largest component
   above a lower threshold t2; lesion Dice and normal images with a false mask for each t2;
2. whether the post-processing sweep's selection rule generalises: choose a setting on a random half of the
   images, score the other half (200 halves), for medseg's rule (evaluation.evaluate._choose itself: the best mean
   over all cases among settings that lower no case by more than MAX_CASE_LOSS, kept if it gains MIN_GAIN), the best
   mean without the per-case limit, and the best mean kept only where a one-sided 95% bootstrap bound on its
   gain is above 0.

    python -m benchmarks.postprocess_check RUN [RUN ...]

docs/results.md ("Lesion images left without a mask") reports its figures for two BUSI runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from medseg.adapters import load_dataset
from medseg.data.arrays import prep_of, read_item
from medseg.evaluation import metrics
from medseg.evaluation.evaluate import CANDIDATES, MIN_GAIN, _choose, _select_items
from medseg.inference import postprocess
from medseg.inference.checkpoint import fold_runs
from medseg.inference.predictor import Predictor

from .common import header, record

FALLBACKS = (0.4, 0.3, 0.2, 0.1)
HALVES = 200


def pooled_probabilities(run: Path) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Each image of the pooled validation set: (probabilities, ground truth), and the run's current setting."""
    probs, gts = [], []
    folds = fold_runs(run)
    if not folds:
        raise SystemExit(f"{run}: not a cross-validated run (no cv.json)")
    for fold in folds:
        predictor = Predictor.load(fold)
        plan = predictor.plan
        ds = load_dataset(Path(plan.data), plan.layout, plan.target_name)
        prep = prep_of(plan)
        for item in _select_items(ds, plan, "val", Path(plan.data)):
            image, gt = read_item(item, prep)
            probs.append(predictor.volume_probabilities(iter([image]), 1)[0].astype(np.float32))
            gts.append(gt.astype(bool))
    return probs, gts, postprocess.load(run, plan)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    return metrics.scores(metrics.counts(pred.astype(bool), gt))["dice"]  # both empty: 1.0, as evaluate counts


def fallback_rows(probs, gts, current: dict) -> list[dict]:
    lesion = [i for i, g in enumerate(gts) if g.any()]
    normal = [i for i, g in enumerate(gts) if not g.any()]
    base = [postprocess.apply(p, current).astype(bool) for p in probs]
    rows = []
    for t2 in (None, *FALLBACKS):
        masks = [m if m.any() or t2 is None else postprocess.keep_largest(p > t2) for m, p in zip(base, probs)]
        rows.append({"t2": t2, "lesion_dice": float(np.mean([dice(masks[i], gts[i]) for i in lesion])),
                     "false_masks": int(sum(masks[i].any() for i in normal)), "normals": len(normal),
                     "empty_lesions": int(sum(not masks[i].any() for i in lesion))})
    return rows


def _rule_medseg(scored: list[dict], table: np.ndarray, idx: np.ndarray, cur: int, candidates, rng) -> int:
    """medseg's own rule, evaluate._choose itself, on the chosen half's confusion counts."""
    chosen, _ = _choose([scored[i] for i in idx], candidates, candidates[cur])
    return candidates.index(chosen)


def _rule_mean(scored: list[dict], table: np.ndarray, idx: np.ndarray, cur: int, candidates, rng) -> int:
    mean = table[:, idx].mean(1)
    top = int(np.argmax(mean))
    return top if mean[top] >= mean[cur] + MIN_GAIN else cur


def _rule_bootstrap(scored: list[dict], table: np.ndarray, idx: np.ndarray, cur: int, candidates, rng) -> int:
    top = _rule_mean(scored, table, idx, cur, candidates, rng)
    gain = table[top, idx] - table[cur, idx]
    boots = [gain[rng.integers(0, len(gain), len(gain))].mean() for _ in range(500)]
    return top if top != cur and np.percentile(boots, 5) > 0 else cur


RULES = {"medseg's rule": _rule_medseg, "best mean": _rule_mean, "best mean, bootstrap bound > 0": _rule_bootstrap}


def rule_rows(probs, gts, current: dict) -> list[dict]:
    candidates = CANDIDATES if current in CANDIDATES else [current, *CANDIDATES]
    cur = candidates.index(current)
    keys = [json.dumps(s, sort_keys=True) for s in candidates]  # evaluate's per_setting keys
    counts = [[metrics.counts(postprocess.apply(p, s).astype(bool), g) for s in candidates] for p, g in zip(probs, gts)]
    scored = [{"per_setting": dict(zip(keys, row))} for row in counts]
    table = np.array([[metrics.scores(row[k])["dice"] for row in counts] for k in range(len(candidates))])
    lesion = np.array([g.any() for g in gts])
    rng = np.random.default_rng(0)
    out = {name: [] for name in RULES}
    for _ in range(HALVES):
        perm = rng.permutation(len(gts))
        choose, score = perm[: len(gts) // 2], perm[len(gts) // 2:]
        for name, rule in RULES.items():
            k = rule(scored, table, choose, cur, candidates, rng)
            les, nor = score[lesion[score]], score[~lesion[score]]
            out[name].append((table[k, score].mean(), table[k, les].mean(), (table[k, nor] < 1).mean(), k != cur))
    return [{"rule": name, "held_out_all": float(np.mean([r[0] for r in rs])),
             "held_out_lesion": float(np.mean([r[1] for r in rs])),
             "held_out_false_mask_rate": float(np.mean([r[2] for r in rs])),
             "changed_share": float(np.mean([r[3] for r in rs]))} for name, rs in out.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(header(1))
    for run in args.runs:
        probs, gts, current = pooled_probabilities(run)
        print(f"\n{run}: {len(gts)} pooled validation images, current setting {postprocess.describe(current)}")
        fb = fallback_rows(probs, gts, current)
        print("fallback t2   lesion Dice   false masks   lesion images empty")
        for r in fb:
            print(f"{'none' if r['t2'] is None else r['t2']:>11}   {r['lesion_dice']:11.4f}   "
                  f"{r['false_masks']:>4} of {r['normals']:<4}   {r['empty_lesions']:>5}")
        rules = rule_rows(probs, gts, current)
        print(f"selection rule (chosen on half, scored on the other half, {HALVES} halves)   all   lesion   "
              "false-mask rate   changed")
        for r in rules:
            print(f"{r['rule']:>40}   {r['held_out_all']:.4f}   {r['held_out_lesion']:.4f}   "
                  f"{r['held_out_false_mask_rate']:.3f}   {r['changed_share']:.2f}")
        record("postprocess_check", {"run": str(run), "images": len(gts), "fallback": fb, "rules": rules})


if __name__ == "__main__":
    main()
