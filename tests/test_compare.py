"""`medseg compare`: paired comparison of evaluated runs on their shared cases."""

from __future__ import annotations

import csv

import pytest

from conftest import run_cli
from medseg.evaluation.compare import compare


def _run(folder, dice: dict[str, float]):
    (folder / "eval").mkdir(parents=True)
    with (folder / "eval" / "cases.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case", "dice", "gt_pixels"])
        w.writeheader()
        for case, d in dice.items():
            w.writerow({"case": case, "dice": d, "gt_pixels": 100 if case != "empty" else 0})
    return folder


def test_clear_difference_is_significant_and_shared_cases_only(tmp_path):
    a = _run(tmp_path / "a", {f"c{i}": 0.6 + 0.01 * i for i in range(15)} | {"empty": 1.0})
    b = _run(tmp_path / "b", {f"c{i}": 0.7 + 0.01 * i + (0.002 if i % 2 else 0) for i in range(15)} | {"only_b": 0.1})
    r = compare([a, b], quiet=True)
    assert r["cases"] == 15  # 'empty' has no lesion, 'only_b' is not in a
    vs = r["runs"][1]["vs_first"]
    assert vs["p_value"] < 0.001 and vs["mean_diff"] == pytest.approx(0.101, abs=1e-3)
    same = compare([a, a], quiet=True)["runs"][1]["vs_first"]
    assert same["p_value"] == 1.0


def test_cli_errors(tmp_path, capsys):
    a = _run(tmp_path / "a", {"c1": 0.5})
    (tmp_path / "b").mkdir()
    assert run_cli("compare", str(a), str(tmp_path / "b")) == 2
    assert "no evaluation" in capsys.readouterr().err
    assert run_cli("compare", str(a), str(a), "--metric", "nope") == 2
    c = _run(tmp_path / "c", {"other": 0.5})
    assert run_cli("compare", str(a), str(c)) == 2
    assert run_cli("compare", str(a), str(a)) == 0


def test_median_and_counts_show_a_mean_carried_by_one_case(tmp_path, capsys):
    # b - a per case: +0.1, +0.1, -0.1, 0, +1.0 -> mean +0.22, median +0.1, 3 better, 1 worse (1 equal)
    a = _run(tmp_path / "a", {"c1": 0.5, "c2": 0.5, "c3": 0.5, "c4": 0.5, "c5": 0.0})
    b = _run(tmp_path / "b", {"c1": 0.6, "c2": 0.6, "c3": 0.4, "c4": 0.5, "c5": 1.0})
    vs = compare([a, b], quiet=True)["runs"][1]["vs_first"]
    assert vs["mean_diff"] == pytest.approx(0.22)
    assert vs["median_diff"] == pytest.approx(0.1)
    assert (vs["better"], vs["worse"]) == (3, 1)
    assert run_cli("compare", str(a), str(b)) == 0
    out = capsys.readouterr().out
    assert "+0.100" in out and "3 / 1" in out
