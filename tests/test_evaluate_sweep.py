"""Threshold / post-processing selection: a setting must win on average and hurt no case badly."""

from __future__ import annotations

import json

from medseg.evaluation import evaluate as ev


def _case(per_setting: dict[str, tuple[int, int, int]]) -> dict:
    return {"per_setting": {json.dumps(s, sort_keys=True): {"tp": tp, "fp": fp, "fn": fn, "n": 1000}
                            for s, (tp, fp, fn) in per_setting.items()}}


BASE = {"threshold": 0.5, "largest": False, "min_area": 0.0}
LCC = {"threshold": 0.5, "largest": True, "min_area": 0.0}


def _settings(base, lcc):
    return {json.dumps(BASE, sort_keys=True): base, json.dumps(LCC, sort_keys=True): lcc}


def _scored(rows):
    return [{"per_setting": {k: {"tp": v[0], "fp": v[1], "fn": v[2], "n": 1000} for k, v in _settings(*r).items()}}
            for r in rows]


def test_uniform_gain_is_chosen():
    # the largest component removes false positives in every case
    scored = _scored([((80, 40, 20), (80, 5, 20)), ((50, 30, 10), (50, 2, 10)), ((60, 10, 10), (60, 10, 10))])
    chosen, sweep = ev._choose(scored, [BASE, LCC], BASE)
    assert chosen == LCC and sum(r["chosen"] for r in sweep) == 1


def test_gain_on_average_that_erases_one_case_is_refused():
    # seven cases gain, one loses its lesion (its largest component was a false positive): better on average
    scored = _scored([((80, 40, 20), (80, 0, 20))] * 7 + [((60, 10, 10), (0, 70, 70))])
    chosen, sweep = ev._choose(scored, [BASE, LCC], BASE)
    lcc_row = next(r for r in sweep if r["largest"])
    base_row = next(r for r in sweep if not r["largest"])
    assert lcc_row["dice_mean_all"] > base_row["dice_mean_all"] + ev.MIN_GAIN
    assert lcc_row["worst_case_loss"] > ev.MAX_CASE_LOSS
    assert chosen == BASE and base_row["chosen"]


def test_tiny_gain_is_not_worth_a_change():
    scored = _scored([((80, 20, 20), (80, 19, 20))])
    assert ev._choose(scored, [BASE, LCC], BASE)[0] == BASE
