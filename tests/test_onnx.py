"""ONNX export: the graph normalises by itself, and its masks equal PyTorch's on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_cli, write_busi_replica
from medseg.inference.checkpoint import load_checkpoint, resolve_run
from medseg.io.images import read_image
from medseg.inference.engines import predict_probs
from medseg.inference.onnx import Normalised, OnnxNet, export_onnx
from runs import train


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = write_busi_replica(tmp_path_factory.mktemp("busi") / "Dataset_BUSI_with_GT")
    run = tmp_path_factory.mktemp("runs") / "busi"
    train(root, run, epochs=1, image_size=64, batch_size=8, quiet=True)
    path, diff = export_onnx(run)
    return run, path, diff


def test_logits_match_pytorch_at_any_batch_size(exported):
    run, path, diff = exported
    assert path == run / "model.onnx" and diff < 1e-4
    model, plan = load_checkpoint(resolve_run(run))
    net, onnx_net = Normalised(model, plan.mean, plan.std).eval(), OnnxNet(path)
    for batch in (1, 3):
        x = torch.rand(batch, 1, 64, 64)
        with torch.inference_mode():
            ref = net(x)
        assert torch.allclose(onnx_net(x), ref, atol=1e-4)
    bigger = torch.rand(2, 1, 96, 128)  # height and width are dynamic (multiples of 16)
    with torch.inference_mode():
        assert torch.allclose(onnx_net(bigger), net(bigger), atol=1e-4)


def test_masks_agree_with_pytorch_on_real_images(exported, busi_real):
    run, path, _ = exported
    model, plan = load_checkpoint(resolve_run(run))
    onnx_net = OnnxNet(path)
    files = sorted(busi_real.glob("*/*).png"))[::10]
    inter = total = 0
    for f in files:
        img = torch.from_numpy(read_image(f, 1, plan.intensity))[None]
        a = predict_probs(model, img, plan) >= 0.5
        b = predict_probs(onnx_net, img, plan) >= 0.5
        inter += int((a & b).sum())
        total += int(a.sum() + b.sum())
    assert len(files) >= 10 and total > 0
    assert 2 * inter / total >= 0.999


def test_predict_with_onnx_engine_and_bad_file(exported, busi_real, tmp_path, capsys):
    run, _, _ = exported
    img = sorted(busi_real.glob("benign/*).png"))[0]
    assert run_cli("predict", str(run), str(img), "--out", str(tmp_path / "t")) == 0
    assert run_cli("predict", str(run), str(img), "--out", str(tmp_path / "o"), "--engine", "onnx") == 0
    from PIL import Image
    a = np.asarray(Image.open(tmp_path / "t" / f"{img.stem}.png")) > 0
    b = np.asarray(Image.open(tmp_path / "o" / f"{img.stem}.png")) > 0
    assert (a != b).mean() < 0.001
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    assert run_cli("export", str(run), "--onnx", str(tmp_path / "x.onnx")) == 0
    from medseg.errors import MedsegError
    with pytest.raises(MedsegError, match="bad.onnx"):
        OnnxNet(bad)


def test_torch_bf16_engine_masks_agree_with_fp32(exported, busi_real, tmp_path):
    """`--engine torch-bf16` (bf16 autocast): the masks of real images agree with the fp32 engine's."""
    run, _, _ = exported
    from PIL import Image
    files = sorted(busi_real.glob("*/*).png"))[::20]
    inter = total = 0
    for engine in ("torch", "torch-bf16"):
        assert run_cli("predict", str(run), *map(str, files), "--out", str(tmp_path / engine), "--engine", engine) == 0
    for f in files:
        a = np.asarray(Image.open(tmp_path / "torch" / f"{f.stem}.png")) > 0
        b = np.asarray(Image.open(tmp_path / "torch-bf16" / f"{f.stem}.png")) > 0
        inter += int((a & b).sum())
        total += int(a.sum() + b.sum())
    assert len(files) >= 5 and total > 0 and 2 * inter / total >= 0.99
