"""Model registry: every 2D model trains on channels_last input of any channel count, the milesial and Buda
shapes match their originals' parameter counts, and bad names or args are MedsegErrors."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet

from medseg.errors import MedsegError
from medseg.models import MODELS, SPATIAL_DIMS, build_model, models

MODELS_2D = [name for name in models() if SPATIAL_DIMS[name] == 2]

# Reference counts, computed by instantiating the original code (3 input channels, 1 output):
# milesial/Pytorch-UNet unet/unet_model.py UNet(3, 1, bilinear=False) -> 31,037,633, bilinear=True -> 17,262,977;
# mateuszbuda/brain-segmentation-pytorch unet.py UNet(3, 1, init_features=32) -> 7,763,041.
REFERENCE_COUNTS = [
    ("unet-milesial", {"bilinear": False}, 31_037_633),
    ("unet-milesial", {"bilinear": True}, 17_262_977),
    ("unet-buda", {}, 7_763_041),
]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_step(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model = model.to(memory_format=torch.channels_last).train()
    out = model(x.contiguous(memory_format=torch.channels_last))
    out.float().square().mean().backward()
    return out


def test_registry_lists_every_model_with_a_description():
    assert set(MODELS) == set(models()) == set(SPATIAL_DIMS)
    assert {"unet", "unet2d", "unet-milesial", "unet-buda", "unet3d"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS_2D)
def test_2d_model_forward_backward_channels_last(name):
    torch.manual_seed(0)
    model = build_model(name, 3, 1)
    out = train_step(model, torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1, 64, 64)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("name", MODELS_2D)
@pytest.mark.parametrize("channels", [1, 7])  # grey images; 2.5D stacks (3 slices x ... ) are just more channels
def test_2d_model_takes_any_channel_count(name, channels):
    with torch.no_grad():
        out = build_model(name, channels, 1).eval()(torch.rand(1, channels, 32, 32))
    assert out.shape == (1, 1, 32, 32)


@pytest.mark.parametrize("name,kwargs,reference", REFERENCE_COUNTS)
def test_parameter_counts_match_the_originals(name, kwargs, reference):
    count = n_params(build_model(name, 3, 1, **kwargs))
    assert abs(count - reference) <= 0.01 * reference, (name, kwargs, count, reference)


@pytest.mark.parametrize("depth", [1, 4])
@pytest.mark.parametrize("upsampling", ["transposed", "bilinear"])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_unet2d_depth_width_norm_upsampling(depth, upsampling, norm):
    model = build_model("unet2d", 2, 1, features=4, depth=depth, norm=norm, upsampling=upsampling, dropout=0.1)
    size = 2 ** depth * 2
    out = train_step(model, torch.rand(2, 2, size, size))
    assert out.shape == (2, 1, size, size)
    has_norm = any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) for m in model.modules())
    assert has_norm == (norm != "none")


def test_unet2d_width_and_depth_change_the_network():
    small, deep, wide = (n_params(build_model("unet2d", 3, 1, **kw))
                         for kw in ({"features": 8, "depth": 3}, {"features": 8, "depth": 4}, {"features": 16, "depth": 3}))
    assert small < deep and small < wide
    # Doubling the width of a conv-only network multiplies the weights by ~4.
    assert 3.5 < wide / small < 4.1


def test_unet2d_pads_sides_not_divisible_by_two_to_the_depth():
    with torch.no_grad():
        out = build_model("unet2d", 3, 1, features=4, depth=3).eval()(torch.rand(1, 3, 60, 44))
    assert out.shape == (1, 1, 60, 44)


def test_dropout_is_active_in_training_only():
    model = build_model("unet2d", 1, 1, features=4, depth=2, dropout=0.5)
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))


def test_unet_keeps_the_checkpointed_layout():
    """Checkpoints saved before the registry grew store ("unet", {"features", "res_units"}): the same call
    must rebuild the same MONAI network, so their state dicts still load."""
    args = {"features": [16, 32, 64, 128, 256], "res_units": 2}
    old = UNet(spatial_dims=2, in_channels=3, out_channels=1, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
               num_res_units=2, norm="batch", dropout=0.0)
    new = build_model("unet", 3, 1, **args)
    new.load_state_dict(old.state_dict(), strict=True)
    assert n_params(new) == n_params(old)


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_unet_norm_options(norm):
    out = train_step(build_model("unet", 3, 1, features=[8, 16, 32], norm=norm, dropout=0.2), torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 1, 32, 32)


def test_unet3d_forward_on_a_patch():
    model = build_model("unet3d", 1, 1)
    out = model(torch.rand(1, 1, 32, 32, 32))
    out.mean().backward()
    assert out.shape == (1, 1, 32, 32, 32)


@pytest.mark.parametrize("name,kwargs,needle", [
    ("resnet", {}, "unknown model 'resnet'"),
    ("unet2d", {"widht": 3}, "bad model_args"),
    ("unet2d", {"norm": "layer"}, "unknown norm 'layer'"),
    ("unet2d", {"upsampling": "pixelshuffle"}, "unknown upsampling"),
    ("unet2d", {"depth": 0}, "depth >= 1"),
    ("unet", {"features": [16]}, "at least 2 levels"),
    ("unet-buda", {"dropout": 1.5}, "dropout"),
])
def test_bad_model_requests_are_medseg_errors(name, kwargs, needle):
    with pytest.raises(MedsegError, match=needle):
        build_model(name, 3, 1, **kwargs)


@pytest.mark.parametrize("name", [n for n in models()])
def test_folding_batchnorm_keeps_the_function_and_removes_every_foldable_norm(name):
    """predict folds eval BatchNorms into the convolutions before them (models.fold_batchnorm): the same
    logits up to fp32 rounding, and no BatchNorm left that follows a convolution."""
    from medseg.models import fold_batchnorm

    torch.manual_seed(0)
    model = build_model(name, 3, 1)
    three_d = SPATIAL_DIMS[name] == 3
    x = torch.rand(2, 3, 16, 32, 32) if three_d else torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        model.train()(x * 3 - 1)  # running statistics away from (0, 1), so that folding has work to do
        ref = model.eval()(x)
        norms = sum(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)) for m in model.modules())
        folded = fold_batchnorm(model)
        left = sum(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)) for m in model.modules())
        assert folded == norms and left == 0
        assert torch.allclose(model(x), ref, atol=1e-4 * float(ref.abs().max()) + 1e-5)


def test_deep_supervision_adds_smaller_outputs_in_training_only():
    """Training: the full-size logits, then one output per supervised decoder stage at 1/2, 1/4 of the size;
    eval: the full-size logits alone, the wrapped MONAI UNet's own output (so predict sees a plain UNet)."""
    model = build_model("unet", 3, 1, features=[8, 16, 32, 64], res_units=1, deep_supervision=2)
    x = torch.rand(2, 3, 32, 32)
    out = model.train()(x)
    assert [tuple(o.shape) for o in out] == [(2, 1, 32, 32), (2, 1, 16, 16), (2, 1, 8, 8)]
    sum(o.square().mean() for o in out).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads.parameters())
    model.eval()
    assert torch.equal(model(x), model.unet(x))


@pytest.mark.parametrize("levels", [0.5, 3, -1, True, "2"])
def test_deep_supervision_needs_a_level_count_the_net_has(levels):
    with pytest.raises(MedsegError, match="deep_supervision must be 1..2"):
        build_model("unet", 3, 1, features=[8, 16, 32, 64], deep_supervision=levels)


def test_a_deep_copy_of_a_deeply_supervised_net_keeps_its_own_outputs():
    """The EMA (torch's AveragedModel) deep-copies the net: the copy's hooks must fill the copy, not the original."""
    import copy
    model = build_model("unet", 3, 1, features=[8, 16, 32, 64], res_units=1, deep_supervision=2)
    twin = copy.deepcopy(model).train()
    model.eval()
    assert [tuple(o.shape[2:]) for o in twin(torch.rand(2, 3, 32, 32))] == [(32, 32), (16, 16), (8, 8)]
    assert model._features == {}
