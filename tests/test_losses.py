"""Loss registry: every loss is finite and falls as logits move toward the targets; Dice and pos_weight
agree with hand computations; bad names and arguments are MedsegErrors."""

from __future__ import annotations

import pytest
import torch

from medseg.errors import MedsegError
from medseg.training.losses import LOSSES, build_loss
from medseg.planning.plan import DEFAULTS, MULTICLASS_LOSSES


def case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(3, 1, 16, 16, generator=g) > 0.7).float()
    y[1] = 0  # an empty slice in the batch, as training sees
    return torch.randn(3, 1, 16, 16, generator=g), y


@pytest.mark.parametrize("name", sorted(set(LOSSES) - set(MULTICLASS_LOSSES)))
def test_finite_and_falls_toward_the_targets(name):
    logits, y = case()
    loss_fn = build_loss(name)
    assert torch.isfinite(loss_fn(logits, y))
    toward = [loss_fn(t * (2 * y - 1) + (1 - t) * logits, y).item() for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(a > b for a, b in zip(toward, toward[1:])), toward
    logits.requires_grad_(True)
    loss_fn(logits, y).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_multiclass_loss_falls_toward_the_labels():
    """ce+dice takes B x (K+1) x H x W logits and B x 1 x H x W class indices (softmax, one-hot inside)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (3, 1, 16, 16), generator=g).float()
    logits = torch.randn(3, 3, 16, 16, generator=g)
    target = 4 * torch.nn.functional.one_hot(y[:, 0].long(), 3).permute(0, 3, 1, 2).float() - 2
    loss_fn = build_loss("ce+dice")
    toward = [loss_fn(t * target + (1 - t) * logits, y).item() for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(a > b for a, b in zip(toward, toward[1:])), toward
    swapped = torch.where(y == 1, 2.0, torch.where(y == 2, 1.0, y))  # two classes exchanged: a worse loss
    assert loss_fn(target, swapped).item() > loss_fn(target, y).item() + 0.5


def test_dice_is_one_minus_soft_dice_by_hand():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]], [[[-2.0, 1.0], [0.0, 4.0]]]])
    y = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 0.0], [1.0, 1.0]]]])
    p = torch.sigmoid(logits)
    nr, dr = 1e-3, 2e-3
    by_hand = 1 - (2 * (p * y).sum() + nr) / (p.sum() + y.sum() + dr)  # pooled over the batch
    assert build_loss("dice", smooth_nr=nr, smooth_dr=dr)(logits, y).item() == pytest.approx(by_hand.item(), rel=1e-6)
    per_image = 1 - (2 * (p * y).sum((1, 2, 3)) + nr) / (p.sum((1, 2, 3)) + y.sum((1, 2, 3)) + dr)
    assert build_loss("dice", smooth_nr=nr, smooth_dr=dr, batch=False)(logits, y).item() == pytest.approx(
        per_image.mean().item(), rel=1e-6)


def test_pos_weight_scales_the_positive_terms_of_bce():
    logits, y = case(1)
    p = torch.sigmoid(logits)
    w = 3.0
    by_hand = -(w * y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert build_loss("bce", pos_weight=w)(logits, y).item() == pytest.approx(by_hand.item(), rel=1e-5)
    ones, zeros = torch.ones_like(y), torch.zeros_like(y)
    assert build_loss("bce", pos_weight=w)(logits, ones).item() == pytest.approx(
        w * build_loss("bce")(logits, ones).item(), rel=1e-6)
    assert build_loss("bce", pos_weight=w)(logits, zeros).item() == pytest.approx(
        build_loss("bce")(logits, zeros).item(), rel=1e-6)


def test_bce_dice_pos_weight_weights_only_the_bce_term():
    logits, y = case(2)
    plain, weighted = build_loss("bce+dice"), build_loss("bce+dice", pos_weight=4.0)
    dice = build_loss("dice")(logits, y)
    assert plain(logits, y).item() == pytest.approx((dice + build_loss("bce")(logits, y)).item(), rel=1e-6)
    assert weighted(logits, y).item() == pytest.approx((dice + build_loss("bce", pos_weight=4.0)(logits, y)).item(),
                                                       rel=1e-6)


def test_focal_with_gamma_zero_is_bce():
    logits, y = case(3)
    assert build_loss("focal", gamma=0.0)(logits, y).item() == pytest.approx(build_loss("bce")(logits, y).item(), rel=1e-5)
    assert build_loss("focal")(logits, y) < build_loss("bce")(logits, y)  # easy pixels are down-weighted


def test_tversky_weighs_false_negatives_by_beta():
    y = torch.zeros(1, 1, 8, 8)
    y[..., 2:6, 2:6] = 1
    missed = torch.full_like(y, -5.0)
    missed[..., 2:6, 2:4] = 5.0  # finds 8 of the 16 foreground pixels: 8 false negatives
    extra = torch.where(y > 0, 5.0, -5.0)
    extra[..., 0, 0:8] = 5.0  # finds all, plus 8 false positives
    recall = build_loss("tversky", alpha=0.3, beta=0.7)
    assert recall(missed, y) > recall(extra, y)
    precision = build_loss("tversky", alpha=0.7, beta=0.3)
    assert precision(missed, y) < precision(extra, y)
    logits, yy = case(4)
    assert build_loss("tversky")(logits, yy).item() == pytest.approx(build_loss("dice")(logits, yy).item(), rel=1e-6)


def test_default_plan_builds():
    assert isinstance(build_loss(DEFAULTS["loss"], **DEFAULTS["loss_args"]), torch.nn.Module)


@pytest.mark.parametrize("name,kwargs,needle", [
    ("iou", {}, "unknown loss 'iou'"),
    ("dice", {"pos_weight": 2.0}, "bad loss_args"),
    ("bce", {"pos_weight": -1}, "pos_weight must be > 0"),
    ("bce+dice", {"pos_weight": "heavy"}, "must be a number"),
    ("focal", {"alpha": 2.0}, "focal alpha"),
    ("tversky", {"alpha": 0, "beta": 0}, "alpha \\+ beta > 0"),
    ("dice", {"smooth_dr": -1e-5}, "smooth_dr must be >= 0"),
    ("ce+dice", {"empty_weight": 1.0}, "binary losses"),
    ("bce", {"empty_weight": 1.0, "empty_top": 2.0}, "empty_top must be a share"),
])
def test_bad_loss_requests_are_medseg_errors(name, kwargs, needle):
    with pytest.raises(MedsegError, match=needle):
        build_loss(name, **kwargs)


def test_empty_penalty_is_softplus_of_the_top_logits_mean_by_hand():
    """Two 4x4 images, top share 1/8 (2 pixels): image 0 has foreground (adds nothing), image 1 none. The
    term is weight x mean over the batch of softplus(mean of image 1's 2 largest logits)."""
    logits = torch.zeros(2, 1, 4, 4)
    logits[0, 0, 0, :2] = torch.tensor([3.0, 1.0])
    logits[1, 0, 2, 1:4] = torch.tensor([4.0, 2.0, -1.0])  # top 2 of image 1: 4, 2 -> 3.0
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, 3, 3] = 1.0
    plain = build_loss("bce", empty_weight=0.0)(logits, target)
    with_term = build_loss("bce", empty_weight=0.5, empty_top=1 / 8)(logits, target)
    by_hand = 0.5 * float(torch.log1p(torch.exp(torch.tensor(3.0)))) / 2
    assert float(with_term - plain) == pytest.approx(by_hand, rel=1e-6)


def test_empty_penalty_pushes_down_the_false_blob_of_an_empty_image_only():
    """On an image without foreground the per-image Dice term barely moves a large confident blob; the
    penalty gives its pixels a clearly larger gradient. An image with foreground gets the same gradient
    with and without it."""
    args = {"batch": False, "smooth_nr": 1.0, "smooth_dr": 1.0}
    logits = torch.full((2, 1, 32, 32), -6.0)
    logits[:, 0, 8:24, 8:24] = 6.0  # a confident blob, a quarter of the image: false on image 0, true on 1
    target = torch.zeros(2, 1, 32, 32)
    target[1, 0, 8:24, 8:24] = 1.0
    grads = []
    for weight in (0.0, 1.0):
        x = logits.clone().requires_grad_(True)
        build_loss("bce+dice", empty_weight=weight, **args)(x, target).backward()
        grads.append(x.grad.clone())
    blob = (slice(None), 0, slice(8, 24), slice(8, 24))
    assert float(grads[0][0][blob[1:]].sum()) > 0
    assert float(grads[1][0][blob[1:]].sum()) > 2 * float(grads[0][0][blob[1:]].sum())
    assert torch.equal(grads[0][1], grads[1][1])


def test_presets_lists_every_loss_and_its_arguments(capsys):
    from conftest import run_cli
    assert run_cli("presets") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert all(name in out for name in LOSSES) and "empty_weight" in out and "pos_weight" in out


def test_a_list_of_deeply_supervised_outputs_is_weighed_against_the_resized_mask():
    """models.unet.DeepSupervisedUNet's training outputs: the loss of each against the mask taken at its size
    (nearest: pixel 2i+1 of 2, 4i+2 of 4), weighed 1, 0.5, 0.25; a single tensor is the plain loss."""
    torch.manual_seed(0)
    y = (torch.rand(2, 1, 16, 16) > 0.7).float()
    outs = [torch.randn(2, 1, 16, 16), torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4)]
    loss = build_loss("bce+dice")
    by_hand = (loss(outs[0], y) + 0.5 * loss(outs[1], y[..., 1::2, 1::2])
               + 0.25 * loss(outs[2], y[..., 2::4, 2::4]))
    assert loss(outs, y).item() == pytest.approx(by_hand.item(), rel=1e-6)
