"""soft_labels: a 2D binary run trains on each pixel's share inside the mask at the training size (its
partial volume) instead of the mask halved to 0/1, and its geometric augmentation keeps those shares."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from medseg.adapters import load_dataset
from medseg.data import arrays as data
from medseg.data.sampling import batches
from medseg.errors import MedsegError
from medseg.planning.plan import Plan
from medseg.training import loop as loop_mod
from medseg.transforms import IMAGE, LABEL, BatchDefault, augmentation, plan_augmentation, soft_geometry
from runs import train

from conftest import LGG_PREP, write_lgg_replica

PREP = LGG_PREP


def test_shares_are_the_area_weighted_mask_and_are_cached_apart(tmp_path, private_cache):
    ds = load_dataset(write_lgg_replica(tmp_path / "k", patients=1, slices=3, size=64))
    soft = data.load_arrays(ds.items, {**PREP, "soft_labels": True})
    hard = data.load_arrays(ds.items, PREP)
    assert hard.shares is None and soft.shares is not None
    assert torch.equal(soft.masks, hard.masks)  # the 0/1 masks (validation, sampling) are the same
    for i, it in enumerate(ds.items):  # expected: PIL's antialiased bilinear shrink of the 0/1 mask
        mask = (tifffile.imread(it.masks[0]) > 0).astype(np.float32)
        expected = np.asarray(Image.fromarray(mask, mode="F").resize((32, 32), Image.BILINEAR))
        assert np.abs(soft.shares[i, 0].numpy() / 255 - expected).max() < 0.01
    assert ((soft.shares > 0) & (soft.shares < 255)).any()  # some pixels lie on the edge
    # a hard run's key is the key of before the setting; the soft one is its own entry and reads back the same
    assert data.cache_key(ds.items, {**PREP, "soft_labels": False}) == data.cache_key(ds.items, PREP)
    assert len(list(private_cache.iterdir())) == 2
    again = data.load_arrays(ds.items, {**PREP, "soft_labels": True})
    assert torch.equal(again.shares, soft.shares)
    kept = again.subset([True, False, True])
    assert torch.equal(kept.shares, soft.shares[[0, 2]])


def test_batches_carry_the_shares_as_targets(tmp_path, private_cache):
    ds = load_dataset(write_lgg_replica(tmp_path / "k", patients=1, slices=3, size=64))
    soft = data.load_arrays(ds.items, {**PREP, "soft_labels": True})
    idx = np.array([0, 1, 2, 1])
    per_sample = [y for _, y in batches(soft, idx, 2, lambda d: d)]
    batched = lambda x, y: (x, y)  # noqa: E731
    batched.batched = True
    whole = [y for _, y in batches(soft, idx, 2, batched)]
    expected = soft.shares[idx].float() / 255
    assert torch.equal(torch.cat(per_sample), expected) and torch.equal(torch.cat(whole), expected)
    hard = data.load_arrays(ds.items, PREP)
    assert torch.equal(torch.cat([y for _, y in batches(hard, idx, 2, lambda d: d)]), hard.masks[idx].float())


def _labels(aug, seed: int, batched: bool) -> tuple[torch.Tensor, torch.Tensor]:
    aug.set_random_state(seed=seed)
    y = torch.zeros(4, 1, 32, 32)
    y[:, :, 8:20, 10:24] = 1
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    if batched:
        return aug(x.clone(), y.clone())
    outs = [aug({IMAGE: x[i], LABEL: y[i]}) for i in range(4)]
    return tuple(torch.stack([torch.as_tensor(o[k]) for o in outs]) for k in (IMAGE, LABEL))


@pytest.mark.parametrize("name", ["robust", "anchored", "lgg", "fast"])
def test_soft_geometry_resamples_labels_bilinearly_with_the_same_draws(name):
    batched = name == "fast"
    x0, y0 = _labels(augmentation(name, intensity_norm="median"), 5, batched)
    x1, y1 = _labels(soft_geometry(augmentation(name, intensity_norm="median")), 5, batched)
    assert torch.equal(x0, x1)  # the same random draws: the images are untouched
    assert set(torch.unique(y0).tolist()) <= {0.0, 1.0}
    between = ((y1 > 0.01) & (y1 < 0.99)).sum()
    assert between > 0, "a rotated or scaled label kept only 0/1 values"
    assert (y1 - y0).abs().mean() < 0.1  # the same geometry, resampled another way


def test_batch_default_label_mode_is_nearest_unless_soft():
    assert BatchDefault().label_mode == "nearest"
    assert soft_geometry(BatchDefault()).label_mode == "bilinear"


@pytest.mark.parametrize("soft", [False, True])
def test_a_plans_augmentation_resamples_labels_as_its_soft_labels_say(soft):
    aug = plan_augmentation(Plan(augmentation="robust", soft_labels=soft))
    modes = [t.mode for t in aug.transforms if hasattr(t, "mode")]
    assert modes == [("bilinear", "bilinear" if soft else "nearest")]


@pytest.mark.parametrize("changes, dims, problem", [
    ({"soft_labels": "yes"}, 2, "soft_labels must be true or false"),
    ({"soft_labels": True, "classes": [{"name": "liver", "value": 1}], "loss": "ce+dice"}, 2,
     "soft_labels is for binary 2D runs; this run is multi-class"),
    ({"soft_labels": True, "augmentation": "3d"}, 3, "soft_labels is for binary 2D runs; this run is 3D"),
])
def test_soft_labels_is_for_binary_2d_runs(changes, dims, problem):
    plan = Plan().replace(**changes)
    plan.replace(soft_labels=False).validate(spatial_dims=dims)  # valid but for soft_labels
    with pytest.raises(MedsegError, match=problem):
        plan.validate(spatial_dims=dims)


def test_a_soft_labels_run_trains_on_the_shares(tmp_path, private_cache, monkeypatch):
    seen: list[torch.Tensor] = []
    build = loop_mod.build_loss

    def spying(*a, **kw):
        loss = build(*a, **kw)
        original = loss.forward

        def forward(logits, target):
            seen.append(target.detach().clone())
            return original(logits, target)
        loss.forward = forward
        return loss

    monkeypatch.setattr(loop_mod, "build_loss", spying)
    data_dir = write_lgg_replica(tmp_path / "k", patients=3, slices=5, size=64)
    # no augmentation: any target between 0 and 1 comes from the shares, not from a resampling
    train(data_dir, tmp_path / "run", epochs=1, image_size=32, batch_size=2, val_fraction=0.34, quiet=True,
          settings={"model_args": {"features": [8, 16, 32], "res_units": 1}, "soft_labels": True, "compile": False,
                    "augmentation": "none"})
    targets = torch.cat([t.flatten() for t in seen])
    assert ((targets > 0.01) & (targets < 0.99)).any(), "the loss saw only 0/1 targets"
    assert Plan.load(tmp_path / "run" / "plan.json").soft_labels is True
