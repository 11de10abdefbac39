"""Tests for the self-contained HTML report."""

import numpy as np

from medseg.evaluation.report import render_report, write_report


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


CHROMIUM = "/usr/bin/chromium"


def _chromium(args: list[str], tmp_path):
    import subprocess

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(tmp_path):
    """Every embedded figure decodes in a real browser, and the page is not blank."""
    import os
    import re

    import pytest
    from PIL import Image

    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("Debian's chromium is not installed (`make test` installs it when it runs as root)")
    summary, cases, overlays, log_rows, notes = _inputs()
    prob = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    overlays = overlays + [("with probability", overlays[0][1], prob)]
    subgroups = {"class": {"benign": {"n": 1, "dice_mean": 0.83, "iou_mean": 0.71, "iou_0.4_share": 1.0, "dice": [0.83]},
                           "malignant": {"n": 1, "dice_mean": 0.62, "iou_mean": 0.45, "iou_0.4_share": 1.0,
                                         "dice": [0.62]}}}
    sweep = [{"setting": "threshold 0.5", "dice_mean": 0.7, "iou_mean": 0.6, "dice_mean_all": 0.75, "current": True},
             {"setting": "threshold 0.4", "dice_mean": 0.72, "iou_mean": 0.61, "dice_mean_all": 0.78, "chosen": True}]
    text = render_report("browser check", summary, cases, overlays, log_rows, notes, subgroups=subgroups, sweep=sweep,
                         lesion_summary={"gt_lesions": 3, "detected": 2}, config={"model": "unet"},
                         fingerprint={"cases": 3})
    n_img = text.count("<img ")
    probe = ("<script>window.addEventListener('load',function(){var ok=Array.from(document.images).filter("
             "function(i){return i.complete&&i.naturalWidth>0;}).length;document.body.setAttribute('data-ok',ok);"
             "document.body.setAttribute('data-rows',document.querySelectorAll('table.sortable tbody tr').length);"
             "document.querySelector('table.sortable th').click();});</script></body>")
    page = tmp_path / "report.html"
    write_report(page, text.replace("</body>", probe))
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", page.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    ok = re.search(r'data-ok="(\d+)"', dom.stdout)
    assert ok and int(ok.group(1)) == n_img >= 6, (ok and ok.group(1), n_img)
    assert 'data-rows="3"' in dom.stdout and 'data-dir="asc"' in dom.stdout  # the table sorted on click
    shot = tmp_path / "report.png"
    r = _chromium([f"--screenshot={shot}", "--window-size=1280,3000", page.as_uri()], tmp_path)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    colored = (pixels.max(1) - pixels.min(1)) > 60  # plot lines, bars, probability colours
    assert colored.mean() > 0.005, f"screenshot is nearly blank ({colored.mean():.4f} coloured)"
