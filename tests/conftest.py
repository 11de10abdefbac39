"""Shared fixtures: the real data in ../shared (skipped with a reason where absent) and replicas that
tests write themselves in the exact native layouts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import settings as hypothesis_settings
from PIL import Image

SHARED = Path(os.environ.get("MEDSEG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
LGG = SHARED / "lgg-kaggle_3m-dev" / "kaggle_3m"
BUSI = SHARED / "busi-dev" / "Dataset_BUSI_with_GT"

# hypothesis (tests/test_fuzz.py, the service's schemathesis test): the same examples on every run, in CI and
# locally, so that a failure reproduces; no example database (it would replay a machine's own history).
# Outside CI, HYPOTHESIS_PROFILE=explore searches afresh with many more examples.
hypothesis_settings.register_profile("ci", derandomize=True, max_examples=100, deadline=None, database=None,
                                     print_blob=True)
hypothesis_settings.register_profile("explore", max_examples=2000, deadline=None)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") == "true" else os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# `make test` runs one pytest worker per core (pytest-xdist, -n auto). Each worker, and each process a test
# starts, computes on one thread: two workers of two threads each share two cores badly (tiny batches on a
# busy 2-core machine ran 5-10x slower with 2 threads than with 1, tests/test_ircadb.py).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests share one preprocessed-array cache of their own, never the user's ~/.cache/medseg."""
    os.environ["MEDSEG_CACHE"] = str(tmp_path_factory.mktemp("medseg-cache"))


def run_cli(*args: str) -> int:
    """Run `medseg ARGS` in-process; the exit code it would give."""
    from medseg.app.cli import main
    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def need(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} is absent (see ../shared/data/README.md)")
    return path


@pytest.fixture
def lgg_real() -> Path:
    return need(LGG)


@pytest.fixture
def busi_real() -> Path:
    return need(BUSI)


# the preprocessing settings of an RGB replica's arrays at 32 px (data.arrays.load_arrays)
LGG_PREP = {"channels": 3, "image_size": 32, "intensity": {"mode": "range"}, "target_values": [], "keep_aspect": False}


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """$MEDSEG_CACHE in the test's own folder: the cache entries a test writes are its own."""
    monkeypatch.setenv("MEDSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def blob(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.hypot(yy - cy, xx - cx) < r


def write_lgg_replica(root: Path, patients: int = 3, slices: int = 5, size: int = 64, compress: bool = False) -> Path:
    """kaggle_3m layout: <case>/<case>_<n>.tif (HxWx3 uint8) + <case>_<n>_mask.tif (0/255), unpadded numbers."""
    rng = np.random.default_rng(1)
    for p in range(patients):
        case = f"TCGA_XX_{1000 + p}_2001010{p}"
        (root / case).mkdir(parents=True)
        for n in range(1, slices + 1):
            mask = blob(size, size, size / 2, size / 2, size / 6 * (n % 3)) if n % 3 else np.zeros((size, size), bool)
            img = (rng.integers(0, 60, (size, size, 3)) + 150 * mask[..., None]).astype(np.uint8)
            kw = {"compression": "zlib"} if compress else {}
            tifffile.imwrite(root / case / f"{case}_{n}.tif", img, **kw)
            tifffile.imwrite(root / case / f"{case}_{n}_mask.tif", (mask * 255).astype(np.uint8), **kw)
    return root


def write_busi_replica(root: Path, per_class: int = 3, size: tuple[int, int] = (45, 52)) -> Path:
    """Dataset_BUSI_with_GT layout with RGB images and masks as 1-bit, 8-bit grey and RGB PNGs."""
    h, w = size
    rng = np.random.default_rng(2)
    for cls in ("benign", "malignant", "normal"):
        (root / cls).mkdir(parents=True)
        for n in range(1, per_class + 1):
            stem = f"{cls} ({n})"
            mask = np.zeros((h, w), bool) if cls == "normal" else blob(h, w, h / 2, w / 2, 8 + n)
            grey = (rng.integers(60, 200, (h, w)) * (1 - 0.6 * mask)).astype(np.uint8)
            Image.fromarray(np.stack([grey] * 3, -1)).save(root / cls / f"{stem}.png")
            m8 = (mask * 255).astype(np.uint8)
            kind = n % 3
            if kind == 0:
                Image.fromarray(m8).convert("1").save(root / cls / f"{stem}_mask.png")
            elif kind == 1:
                Image.fromarray(m8).save(root / cls / f"{stem}_mask.png")
            else:
                Image.fromarray(np.stack([m8] * 3, -1)).save(root / cls / f"{stem}_mask.png")
        if cls == "benign":  # a second lesion in its own file: the target is the union
            second = blob(h, w, 6, 6, 4)
            Image.fromarray((second * 255).astype(np.uint8)).save(root / cls / "benign (1)_mask_1.png")
    return root


@pytest.fixture
def lgg_replica(tmp_path) -> Path:
    return write_lgg_replica(tmp_path / "kaggle_3m")


@pytest.fixture
def busi_replica(tmp_path) -> Path:
    return write_busi_replica(tmp_path / "Dataset_BUSI_with_GT")
