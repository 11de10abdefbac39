"""Each sequence its own contrast curve (transforms.RandSequenceGamma, the plan's sequence_gamma)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.errors import MedsegError
from medseg.planning.plan import Plan
from medseg.transforms import IMAGE, LABEL, RandFillChannels, RandSequenceGamma, augmentation


def _stack(slices: int = 3, per: int = 3, seed: int = 0) -> torch.Tensor:
    """slices * per channels of 6 x 6 values in [0, 1), different in every channel."""
    return torch.from_numpy(np.random.default_rng(seed).random((slices * per, 6, 6)).astype(np.float32))


def _expected(img: np.ndarray, per: int, on: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """What the transform should do, in numpy: sequence c (channels c, c + per, ...) mapped by
    ((v - lo) / (hi - lo)) ** g * (hi - lo) + lo over its own range, the others unchanged."""
    out = img.copy()
    for c in range(per):
        if on[c]:
            seq = img[c::per]
            lo, hi = seq.min(), seq.max()
            out[c::per] = ((seq - lo) / (hi - lo)) ** gamma[c] * (hi - lo) + lo
    return out


def test_each_sequence_gets_its_own_gamma_in_every_neighbour_slice_alike():
    img = _stack()
    t, twin = RandSequenceGamma(3, 1.0), RandSequenceGamma(3, 1.0)
    t.set_random_state(seed=3)
    twin.set_random_state(seed=3)
    on, gamma = twin.randomize(1)  # the draws t will make
    assert on.all() and len(set(np.round(gamma[0], 6))) == 3  # three different curves
    out = torch.as_tensor(t({IMAGE: img.clone(), LABEL: torch.ones(1, 6, 6)})[IMAGE]).numpy()
    np.testing.assert_allclose(out, _expected(img.numpy(), 3, on[0], gamma[0]), atol=1e-5)
    assert not np.allclose(out, img.numpy())


def test_the_batched_set_bends_each_sample_and_sequence_on_its_own_and_leaves_labels():
    x = torch.stack([_stack(2, 3, seed) for seed in range(4)])
    y = (torch.rand(4, 1, 6, 6) > 0.5).float()
    t = RandSequenceGamma(3, 0.5)
    t.set_random_state(seed=1)
    twin = RandSequenceGamma(3, 0.5)
    twin.set_random_state(seed=1)
    on, gamma = twin.randomize(4)
    assert 0 < on.sum() < on.size  # some sequences bent, some not
    fx, fy = t(x.clone(), y.clone())
    for b in range(4):
        np.testing.assert_allclose(fx[b].numpy(), _expected(x[b].numpy(), 3, on[b], gamma[b]), atol=1e-5)
    assert torch.equal(fy, y)


def test_off_by_default_and_the_fill_keeps_its_place_last():
    assert Plan().sequence_gamma == 0.0
    assert not any(isinstance(t, RandSequenceGamma) for t in augmentation("robust", None, 3).transforms)
    kinds = [type(t) for t in augmentation("robust", {"source": 1, "prob": 0.15}, 3, 0.3).transforms[-2:]]
    assert kinds == [RandSequenceGamma, RandFillChannels]


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_probability_outside_0_1_is_refused(value):
    with pytest.raises(MedsegError, match="sequence_gamma"):
        Plan(sequence_gamma=value).validate()
