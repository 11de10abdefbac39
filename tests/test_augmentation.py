"""Augmentation sets: labels stay binary and on the image, shapes are kept, set_random_state reproduces a
run, and "default" is still the set the measured runs used."""

from __future__ import annotations

import hashlib
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai import transforms as mt

from medseg.errors import MedsegError
from medseg.transforms import AUGMENTATIONS, IMAGE, LABEL, augmentation


# per-sample 2D sets (dict in, dict out); "fast" works on whole batches and "3d" on C x D x H x W patches:
# their own tests are below and in test_volume3d.py
SAMPLE_SETS = [n for n in AUGMENTATIONS if n not in ("fast", "3d")]


def square(size: int = 64, channels: int = 3) -> dict:
    """A bright off-centre rectangle (so a flip of the image alone would leave the mask behind) and its mask."""
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, size, size)
    mask[:, size // 8: size // 2, size // 6: size * 5 // 8] = 1
    image = (0.1 + 0.7 * mask + 0.05 * torch.rand(channels, size, size, generator=g)).clamp(0, 1)
    return {IMAGE: image, LABEL: mask}


def test_every_set_is_described_and_builds():
    assert {"none", "default", "flips", "busi", "lgg", "liver-ct", "cbis", "strong"} <= set(AUGMENTATIONS)
    for name, description in AUGMENTATIONS.items():
        assert description and (isinstance(augmentation(name), mt.Compose) or getattr(augmentation(name), "batched"))


@pytest.mark.parametrize("name", SAMPLE_SETS)
def test_labels_stay_binary_aligned_and_shapes_kept(name):
    aug = augmentation(name)
    aug.set_random_state(seed=1)
    sample = square()
    moved = 0
    for _ in range(12):
        out = aug({k: v.clone() for k, v in sample.items()})
        img, lab = torch.as_tensor(out[IMAGE]), torch.as_tensor(out[LABEL])
        assert img.shape == sample[IMAGE].shape and lab.shape == sample[LABEL].shape
        assert set(lab.unique().tolist()) <= {0.0, 1.0}
        assert lab.sum() > 0.5 * sample[LABEL].sum()
        # Aligned: the mask covers the bright pixels. Threshold the image halfway between its dark and bright
        # levels (after any brightness/contrast change) and compare with the mask.
        grey = img.mean(0)
        lo, hi = np.percentile(grey.numpy(), [10, 90])
        overlap = ((grey > (lo + hi) / 2) & (lab[0] > 0)).sum() / lab.sum()
        assert overlap > 0.85, (name, float(overlap))
        assert grey[lab[0] > 0].mean() > grey[lab[0] == 0].mean() + 0.3
        moved += not torch.equal(lab, sample[LABEL])
    geometric = name not in ("none", "liver-ct")
    assert (moved > 0) == geometric


@pytest.mark.parametrize("name", SAMPLE_SETS)
def test_set_random_state_reproduces(name):
    runs = []
    for seed in (5, 5, 6):
        aug = augmentation(name)
        aug.set_random_state(seed=seed)
        runs.append([torch.as_tensor(aug(square(32))[IMAGE]) for _ in range(16)])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    differs = any(not torch.equal(a, b) for a, b in zip(runs[0], runs[2]))
    assert differs == (name != "none")


# SHA-256 of the 8 samples below, recorded with medseg 31ad044 (the default set the measured runs used), not
# with the code under test: a changed transform, order, parameter or random stream changes it.
# The second: the same code (c0c95a1) on the AMD EPYC machine of 2026-12-01, whose float kernels round differently.
DEFAULT_SAMPLES_SHA256 = ("12c57e2f40e63ac4e1237a7841fe52bf14ebb255b54c7a300fca7eda50f9bb1a",
                          "056e7a658e428ec91dbbd1cc32146228c13f221a7ce34cc8c0ed0168bb78e408")


def test_default_is_unchanged():
    """The measured runs used this exact composition; the same seed must give the same samples."""
    new = augmentation("default")
    new.set_random_state(seed=3)
    h = hashlib.sha256()
    for _ in range(8):
        b = new(square(32))
        h.update(torch.as_tensor(b[IMAGE]).numpy().astype(np.float32).tobytes())
        h.update(torch.as_tensor(b[LABEL]).numpy().astype(np.float32).tobytes())
    assert h.hexdigest() in DEFAULT_SAMPLES_SHA256


def test_unknown_set_is_a_medseg_error():
    with pytest.raises(MedsegError, match="unknown augmentation 'heavy'"):
        augmentation("heavy")


def test_per_sample_cost(capsys):
    """Printed, not asserted (shared CPU): the cost of each set per 3-channel sample at 128 and 256 pixels."""
    rows = []
    for name in SAMPLE_SETS:
        aug = augmentation(name)
        aug.set_random_state(seed=0)
        costs = []
        for size in (128, 256):
            sample = square(size)
            aug(sample)  # warm-up
            t0 = time.perf_counter()
            for _ in range(10):
                out = aug(sample)
            costs.append((time.perf_counter() - t0) / 10 * 1e3)
            assert out[IMAGE].shape == sample[IMAGE].shape
        rows.append(f"{name:10s} {costs[0]:7.2f} ms {costs[1]:7.2f} ms")
    with capsys.disabled():
        print("\naugmentation cost per sample (128x128, 256x256):\n" + "\n".join(rows))


def test_fast_batched_set_is_seeded_keeps_labels_binary_and_its_state_is_checkpointed():
    import numpy as np
    import torch

    from medseg.training.rng import random_states as _random_states
    from medseg.transforms import augmentation

    x = torch.rand(32, 3, 48, 48)
    y = torch.zeros(32, 1, 48, 48)
    y[:, :, 12:36, 16:30] = 1
    a, b = augmentation("fast"), augmentation("fast")
    a.set_random_state(seed=5)
    b.set_random_state(seed=5)
    xa, ya = a(x.clone(), y.clone())
    xb, yb = b(x.clone(), y.clone())
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert set(ya.unique().tolist()) <= {0.0, 1.0}
    moved = (ya != y).flatten(1).any(1)
    assert 0 < int(moved.sum()) < 32  # some samples flipped/rotated, not all (probabilities 0.5 and 0.7)
    # the image moved with its label: where the label moved, the image changed too
    assert bool(((xa != x).flatten(1).any(1) | ~moved).all())
    assert [id(r) for r in _random_states(a)] == [id(a.R)]  # the RandomState a checkpoint saves
    state = a.R.get_state()
    x1, _ = a(x.clone(), y.clone())
    a.R.set_state(state)
    x2, _ = a(x.clone(), y.clone())
    assert torch.equal(x1, x2)
    assert np.isfinite(xa.numpy()).all()


def test_robust_is_the_default_set_with_a_wider_gamma():
    """Same transforms in the same order as "default"; only the contrast step's gamma range is 0.5-2, and its
    draws reach beyond 0.7-1.5 on both sides."""
    default, robust = augmentation("default"), augmentation("robust")
    assert [type(t) for t in default.transforms] == [type(t) for t in robust.transforms]
    contrast = next(t for t in robust.transforms if isinstance(t, mt.RandAdjustContrastd))
    adjuster = contrast.adjuster  # the array transform (prob 1) that draws gamma when the step applies
    adjuster.set_random_state(seed=0)
    drawn = []
    for _ in range(400):
        adjuster.randomize(None)
        drawn.append(adjuster.gamma_value)
    assert 0.5 <= min(drawn) < 0.6 and 1.9 < max(drawn) <= 2.0


@pytest.mark.parametrize("rule", ["median", "case"])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_anchored_gamma_is_what_a_contrast_curve_on_the_stored_values_becomes_after_case_scaling(rule, gamma):
    """A gamma on a case's stored grey values, then the case's own scaling (io.intensity, the plan's rule), gives
    the image the "anchored" set's gamma makes of the scaled case: its contrast step shows the model what
    another scanner's contrast curve would. MONAI's gamma about the image's own range does not."""
    from medseg.io.intensity import scale_case
    from medseg.transforms import RandAnchoredGamma, plan_augmentation

    rng = np.random.default_rng(0)
    raw = np.zeros((3, 40, 40), np.float32)  # a zero background around a body of grey values
    raw[:, 5:35, 5:35] = rng.uniform(0.3, 0.9, (3, 30, 30))
    expected = scale_case([raw ** gamma], rule)[0]
    plan = SimpleNamespace(augmentation="anchored", channel_fill=None, channels=3, sequence_gamma=0.0,
                           intensity_norm=rule)  # what the training loop hands on
    step = next(t for t in plan_augmentation(plan).transforms if isinstance(t, RandAnchoredGamma))
    step.prob, step.gamma = 1.0, (gamma, gamma)
    scaled = torch.from_numpy(scale_case([raw], rule)[0])
    got = step({IMAGE: scaled, LABEL: torch.zeros(1, 40, 40)})[IMAGE].numpy()
    assert np.abs(got - expected).max() < 2e-3  # percentiles interpolate between neighbouring grey values
    assert np.abs(scaled.numpy() - expected).max() > 0.05  # the curve does change the scaled case


def test_the_mri_set_never_offsets_an_image_the_anchored_set_does():
    """An MR image's zero is air: the "mri" set scales, bends and adds zero-mean noise, but never lifts or lowers a
    whole image. An all-zero image keeps a median of 0 (the noise moves a 64 x 64 image's median by ~0.001)
    under every draw; under the "anchored" set the +-0.1 shift moves it on about half the draws."""
    zero = {IMAGE: torch.zeros(3, 64, 64), LABEL: torch.zeros(1, 64, 64)}

    def medians(name: str) -> np.ndarray:
        aug = augmentation(name, intensity_norm="median")
        aug.set_random_state(seed=0)
        return np.array([float(aug(dict(zero))[IMAGE].median()) for _ in range(40)])

    assert np.abs(medians("mri")).max() < 0.01
    assert (np.abs(medians("anchored")) > 0.01).sum() >= 10


@pytest.mark.parametrize("name, elastic", [("robust", False), ("elastic", True), ("anchored", False),
                                           ("anchored-elastic", True)])
def test_elastic_set_deforms_beyond_any_affine_map(name, elastic):
    """The elastic sets' geometry bends the image: moved pixel coordinates that no affine map reproduces
    (least-squares residual), where the robust set's rotation and scaling leave none."""
    aug = augmentation(name)
    (geo,) = [t for t in aug.transforms if isinstance(t, (mt.RandAffined, mt.Rand2DElasticd))]
    geo.prob = 1.0
    geo.set_random_state(seed=0)
    size = 96
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    inner = (slice(24, -24), slice(24, -24))  # away from the zero padding the border pulls in
    design = torch.stack([yy[inner].flatten(), xx[inner].flatten(), torch.ones_like(xx[inner].flatten())], 1)
    residuals = []
    for _ in range(5):
        out = geo({IMAGE: torch.stack([yy, xx]), LABEL: torch.zeros(1, size, size)})
        moved = torch.as_tensor(out[IMAGE])[(slice(None), *inner)].reshape(2, -1).T  # where each pixel came from
        fit = torch.linalg.lstsq(design, moved).solution
        residuals.append(float((design @ fit - moved).norm(dim=1).mean()))
    assert (min(residuals) > 0.3) == elastic, residuals


def test_coarse_batches_keep_what_the_masks_mean():
    """The coarse start's batch resize (training.loop, `coarse_share`): images shrink smoothly (as the cache
    shrinks them: antialiased); a 0/1 mask stays 0/1 and a label map keeps its class values; soft labels keep
    fractional shares; a batch already at the size is returned as it is."""
    from medseg.transforms import coarse_batch
    x = torch.full((2, 3, 8, 8), 5.0)
    x[:, :, :, 4:] = 1.0
    labels = torch.zeros(2, 1, 8, 8)
    labels[:, :, :4, :4], labels[:, :, 4:, 4:] = 1, 2
    xs, ys = coarse_batch(x, labels, 4, n_classes=2)
    assert xs.shape == (2, 3, 4, 4) and ys.shape == (2, 1, 4, 4)
    assert ys[0, 0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]]
    assert xs[..., 0].eq(5).all() and xs[..., 3].eq(1).all() and ((xs[..., 1] > 1) & (xs[..., 1] < 5)).all()
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 1:4, 1:4] = 1
    _, m = coarse_batch(torch.zeros(1, 1, 8, 8), mask, 4, n_classes=0)
    _, soft = coarse_batch(torch.zeros(1, 1, 8, 8), mask, 4, n_classes=0, soft=True)
    assert set(m.unique().tolist()) == {0.0, 1.0} and m[0, 0, 1, 1] == 1 and m[0, 0, 3, 3] == 0
    assert ((soft > 0.05) & (soft < 0.95)).any() and soft.min() >= 0 and soft.max() <= 1
    same = coarse_batch(x, labels, 8, n_classes=2)
    assert same[0] is x and same[1] is labels
