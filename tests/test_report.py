"""Tests for the self-contained HTML report."""

import numpy as np

from medseg.report import render_report, write_report


def _inputs():
    cases = [
        {"case": "TCGA_CS_4941", "group": "benign", "dice": 0.83, "iou": 0.71, "gt_pixels": 1234},
        {"case": "TCGA_CS_4942", "group": "malignant", "dice": float("nan"), "iou": float("nan"),
         "gt_pixels": 0},
        {"case": "TCGA_DU_5849", "group": "malignant", "dice": 0.62, "iou": 0.45, "gt_pixels": 88},
    ]
    overlay = np.zeros((32, 32, 3), dtype=np.uint8)
    overlay[8:16, 8:16, 1] = 255
    overlay[12:20, 12:20, 0] = 255
    log_rows = [
        {"epoch": "1", "time_s": "3.2", "lr": "0.001", "train_loss": "0.9", "val_dice": "0.4"},
        {"epoch": "2", "time_s": "3.1", "lr": "0.001", "train_loss": "0.6", "val_dice": ""},
        {"epoch": 3.0, "train_loss": 0.4, "val_dice": 0.7},
    ]
    summary = {"Data": "/data/lgg", "Split": "val (3 patients)", "Dice mean": 0.725}
    notes = ["Cases with empty ground truth & prediction count as <Dice 1>."]
    return summary, cases, [("TCGA_CS_4941 slice 12", overlay)], log_rows, notes


def test_render_report_contents():
    summary, cases, overlays, log_rows, notes = _inputs()
    text = render_report("LGG <val> report", summary, cases, overlays, log_rows, notes)
    assert text.startswith("<!DOCTYPE html>")
    assert "LGG &lt;val&gt; report" in text
    for case in cases:
        assert case["case"] in text
    assert text.count("data:image/png;base64,") >= 3  # overlay, histogram, curves
    assert "n/a" in text
    assert "0.725" in text
    assert "&lt;Dice 1&gt;" in text
    assert "http://" not in text and "https://" not in text  # fully offline


def test_render_report_handles_empty_inputs():
    text = render_report("Empty", {}, [], [], [], [])
    assert "Empty" in text
    assert "data:image/png" not in text
    # cases without a dice column still render a table but no plots
    text = render_report("No dice", {}, [{"case": "a", "iou": 0.5}], [], [{"epoch": ""}], [])
    assert "data:image/png" not in text


def test_write_report_is_atomic(tmp_path):
    target = tmp_path / "report.html"
    write_report(target, "<html>one</html>")
    write_report(target, "<html>two</html>")
    assert target.read_text(encoding="utf-8") == "<html>two</html>"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
