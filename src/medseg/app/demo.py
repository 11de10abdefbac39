"""`medseg demo`: a deterministic synthetic data set, then train -> evaluate -> predict on it.

The images imitate ultrasound: a smooth tissue texture under multiplicative speckle, with dark,
irregular lesions whose edge is blurred; a share of the cases has no lesion at all.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from scipy import ndimage

from ..errors import atomic_path, check_output

console = Console(stderr=True)


def synthetic_case(rng: np.random.Generator, size: int, empty: bool) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 image and its bool mask."""
    texture = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 12)
    texture = 0.55 + 0.15 * texture / (np.abs(texture).max() + 1e-6)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    mask = np.zeros((size, size), bool)
    if not empty:
        cy, cx = rng.uniform(0.25, 0.75, 2) * size
        r0 = rng.uniform(0.08, 0.2) * size
        angle = np.arctan2(yy - cy, xx - cx)
        radius = r0 * (1 + sum(rng.uniform(0, 0.15) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)))
        mask = np.hypot(yy - cy, xx - cx) < radius
    darkness = ndimage.gaussian_filter(mask.astype(float), 0.8)
    clean = texture * (1 - 0.65 * darkness)
    speckle = rng.gamma(4.0, 1 / 4.0, (size, size))
    img = ndimage.gaussian_filter(clean * speckle, 0.7)
    return (img.clip(0, 1) * 255).astype(np.uint8), mask


def make_synthetic(folder: Path, n: int = 160, size: int = 128, empty_share: float = 0.2, seed: int = 0) -> Path:
    """Write `case_###.png` + `case_###_mask.png` pairs (the generic folder layout) and return the folder."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, mask = synthetic_case(rng, size, empty=rng.random() < empty_share)
        for name, arr in ((f"case_{i:03d}.png", img), (f"case_{i:03d}_mask.png", mask.astype(np.uint8) * 255)):
            with atomic_path(folder / name) as tmp:
                Image.fromarray(arr).save(tmp, format="PNG")
    return folder


def run_demo(out: Path, n: int = 160, size: int = 128, time_budget_s: float | None = 150.0, quiet: bool = False,
             epochs: int | None = None) -> dict:
    from ..evaluation.evaluate import evaluate
    from ..inference.predictor import predict_files
    from ..training.command import Options, train_folder

    check_output(out)
    data = make_synthetic(Path(out) / "data", n=n, size=size)
    run = Path(out) / "run"
    # the demo starts afresh each time: its own run and predictions from an earlier demo are replaced
    if (run / "plan.json").is_file():
        shutil.rmtree(run)
    shutil.rmtree(Path(out) / "predictions", ignore_errors=True)
    train_folder(data, run, time_budget_s=time_budget_s, epochs=epochs, val_fraction=0.25, image_size=size,
                 options=Options(quiet=quiet))
    result = evaluate(run, quiet=quiet)
    val = [data / f"{case}.png" for case in sorted(__import__("json").loads((run / "plan.json").read_text())["split"]["val"])]
    predict_files(run, val, Path(out) / "predictions", quiet=quiet)
    if not quiet:
        console.print(f"[bold]demo Dice (validation cases with a lesion, mean): {result['dice']['mean']:.3f}[/]; "
                      f"report: {run / 'eval' / 'report.html'}; masks: {Path(out) / 'predictions'}")
    return result
