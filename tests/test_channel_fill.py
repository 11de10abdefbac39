"""Missing sequences as the data set marks them: transforms.RandFillChannels and the LGG plan default.

kaggle_3m puts FLAIR in place of a missing pre- or post-contrast scan; a model that never trained on such
copies gave those patients an empty mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.errors import MedsegError
from medseg.planning.plan import Plan
from medseg.planning.planner import make_plan
from medseg.adapters import load_dataset
from medseg.transforms import IMAGE, LABEL, augmentation

from runs import train
from safetensors.torch import load_file

from conftest import write_lgg_replica


def _sample(slices: int = 3, per: int = 3) -> dict:
    """Channel c of neighbour slice s holds the constant 10 * s + c: any copy is visible in the values."""
    img = torch.stack([torch.full((8, 8), 10.0 * s + c) for s in range(slices) for c in range(per)])
    return {IMAGE: img, LABEL: torch.ones(1, 8, 8)}


def test_every_other_channel_becomes_a_copy_of_the_source_in_each_slice():
    aug = augmentation("none", {"source": 1, "prob": 1.0}, 3)
    aug.set_random_state(seed=0)
    out = aug(_sample())
    values = torch.as_tensor(out[IMAGE])[:, 0, 0].tolist()
    assert values == [1, 1, 1, 11, 11, 11, 21, 21, 21]  # slice s: every channel is 10 s + 1
    assert torch.equal(torch.as_tensor(out[LABEL]), torch.ones(1, 8, 8))


def test_with_probability_some_samples_lose_one_or_both_channels_and_the_source_stays():
    aug = augmentation("none", {"source": 1, "prob": 0.3}, 3)
    aug.set_random_state(seed=0)
    kinds = {}
    for _ in range(400):
        v = torch.as_tensor(aug(_sample(1))[IMAGE])[:, 0, 0].tolist()
        assert v[1] == 1  # the source channel is never replaced
        key = (v[0] == 1, v[2] == 1)
        kinds[key] = kinds.get(key, 0) + 1
    # each other channel independently with p = 0.3: none 49%, one of them 21% each, both 9%
    assert kinds[(False, False)] / 400 == pytest.approx(0.49, abs=0.08)
    assert kinds[(True, True)] / 400 == pytest.approx(0.09, abs=0.05)
    assert min(kinds[(True, False)], kinds[(False, True)]) / 400 > 0.12


def test_the_batched_set_fills_too_and_without_fill_nothing_is_copied():
    x = torch.stack([_sample(1)[IMAGE]] * 4) / 100
    y = torch.zeros(4, 1, 8, 8)
    filled = augmentation("fast", {"source": 1, "prob": 1.0}, 3)
    filled.set_random_state(seed=0)
    fx, _ = filled(x.clone(), y.clone())
    assert all(torch.equal(fx[b, 0], fx[b, 1]) and torch.equal(fx[b, 2], fx[b, 1]) for b in range(4))
    plain = augmentation("none", None, 3)
    assert torch.equal(torch.as_tensor(plain(_sample())[IMAGE]), _sample()[IMAGE])


def sig(v):
    return 1 / (1 + np.exp(-v))


class _Contrast(torch.nn.Module):
    """Logit 4 (c0 - c1) + c2 from the first neighbour's channels: a model that reads pre-contrast against FLAIR."""

    def forward(self, x):
        return 4 * (x[:, :1] - x[:, 1:2]) + x[:, 2:3]


ALL4 = ("as is", "pre", "post", "both")


@pytest.mark.parametrize("fill, tta, views", [({"source": 1, "prob": 0.15}, True, ALL4),
                                              ({"source": 1, "prob": 0.15}, False, ("as is",)),
                                              (None, True, ("as is",)), ({"source": 1, "prob": 0}, True, ("as is",))])
def test_tta_averages_every_fill_pattern_when_the_run_trained_with_a_fill(fill, tta, views):
    from types import SimpleNamespace

    from medseg.inference.engines import predict_probs

    img = np.random.default_rng(0).random((2, 6, 8, 8)).astype(np.float32)  # 2 neighbours x 3 channels each
    plan = SimpleNamespace(image_size=8, keep_aspect=False, mean=[0.0] * 6, std=[1.0] * 6, augmentation="none",
                           channel_fill=fill, channels=3, tta_scales=[])
    got = predict_probs(_Contrast(), torch.from_numpy(img.copy()), plan, tta=tta).numpy()
    c0, c1, c2 = img[:, 0], img[:, 1], img[:, 2]
    # expected, by hand: as it is 4 (c0 - c1) + c2; c0 a copy of FLAIR (c1): c2; c2 a copy: 4 (c0 - c1) + c1;
    # both copies: c1
    expected = {"as is": sig(4 * (c0 - c1) + c2), "pre": sig(c2), "post": sig(4 * (c0 - c1) + c1), "both": sig(c1)}
    np.testing.assert_allclose(got, np.mean([expected[v] for v in views], 0), atol=1e-6)


def test_lgg_plans_fill_from_flair_other_layouts_and_the_buda_preset_do_not(tmp_path):
    ds = load_dataset(write_lgg_replica(tmp_path / "kaggle_3m"))
    assert make_plan(ds).channel_fill == {"source": 1, "prob": 0.15}  # FLAIR is channel 1 of kaggle_3m
    assert make_plan(ds, preset="lgg").channel_fill is None  # Buda et al.'s recipe as published
    assert make_plan(ds, settings={"channel_fill": None}).channel_fill is None
    assert Plan().channel_fill is None


@pytest.mark.parametrize("bad", [{"source": 3, "prob": 0.1}, {"source": 1, "prob": 1.5}, {"source": 1}, [1, 0.1]])
def test_a_bad_channel_fill_is_one_line(bad):
    with pytest.raises(MedsegError, match="channel_fill must be"):
        Plan(channels=3, channel_fill=bad).validate()


def test_training_applies_the_plans_channel_fill(tmp_path):
    """The loop builds its augmentation with the plan's channel_fill: probability 0 trains exactly as without,
    probability 1 (every slice's channels all FLAIR) trains other weights."""
    data = write_lgg_replica(tmp_path / "data" / "kaggle_3m")
    tiny = {"model_args": {"features": [8, 16, 32], "res_units": 1}, "augmentation": "none"}
    runs = {}
    for name, fill in (("off", None), ("zero", {"source": 1, "prob": 0.0}), ("all", {"source": 1, "prob": 1.0})):
        train(data, tmp_path / name, epochs=1, image_size=32, batch_size=2, val_fraction=0.34, quiet=True,
              settings={**tiny, "channel_fill": fill})
        runs[name] = load_file(str(tmp_path / name / "last" / "model.safetensors"))
    assert all(torch.equal(runs["off"][k], runs["zero"][k]) for k in runs["off"])
    assert any(not torch.equal(runs["off"][k], runs["all"][k]) for k in runs["off"])


@pytest.mark.parametrize("fill", [{"source": 1, "prob": 0.15}, None])
def test_3d_tta_averages_the_volume_and_its_fill_patterns_too(fill):
    from types import SimpleNamespace

    from medseg.inference.predictor import Predictor

    vol = np.random.default_rng(1).random((4, 3, 8, 8)).astype(np.float32)  # 4 slices x 3 channels, voxel-wise model
    plan = SimpleNamespace(image_size=8, keep_aspect=False, mean=[0.0] * 3, std=[1.0] * 3, patch=(4, 8, 8),
                           classes=None, channel_fill=fill, channels=3)
    got = Predictor(_Contrast(), plan, tta=True)._volume_3d(list(vol), len(vol)).astype(np.float32)
    c0, c1, c2 = vol[:, 0], vol[:, 1], vol[:, 2]
    views = [sig(4 * (c0 - c1) + c2)]  # the flips change nothing voxel-wise
    views += [sig(c2), sig(4 * (c0 - c1) + c1), sig(c1)] if fill else []
    np.testing.assert_allclose(got, np.mean(views, 0), atol=2e-3)  # float16 probabilities
