"""Training and prediction on a CUDA GPU with bf16 autocast (AMP). Skipped where no GPU is present (CI):
run on a GPU machine with `pytest tests/test_cuda.py`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medseg.evaluation.evaluate import evaluate
from medseg.inference.predictor import Predictor
from runs import train

from conftest import write_lgg_replica

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
KW = dict(image_size=64, batch_size=4, val_fraction=0.34, quiet=True)


@pytest.fixture(scope="module")
def lgg(tmp_path_factory):
    return write_lgg_replica(tmp_path_factory.mktemp("data") / "kaggle_3m", patients=3, slices=9)


def test_amp_training_on_cuda_learns_and_its_checkpoint_predicts_on_cpu(tmp_path, lgg):
    run = tmp_path / "run"
    summary = train(lgg, run, epochs=15, settings={"lr": 5e-3, "time_budget_s": None}, **KW)
    assert math.isfinite(summary["best_val_dice"]) and summary["best_val_dice"] > 0.6, summary
    weights = load_file(str(run / "best" / "model.safetensors"))
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in weights.values())  # AMP keeps fp32 weights
    result = evaluate(run, quiet=True)  # evaluate runs on the CPU from the same checkpoint
    assert result["dice"]["mean"] > 0.6, result["dice"]
    # the same checkpoint on the GPU (bf16 autocast off: plain fp32) gives the CPU's probabilities
    p = Predictor.load(run)
    img = np.random.default_rng(0).random((3 * 3, 64, 64), dtype=np.float32)
    cpu = p.probabilities(img)
    p.model = p.model.cuda()
    x = torch.from_numpy(img)[None].cuda()
    from medseg.inference.engines import predict_probs
    gpu = predict_probs(p.model, x, p.plan).cpu().numpy()[0]
    assert np.abs(cpu - gpu).max() < 1e-3


def test_3d_patch_training_on_cuda(tmp_path, lgg):
    settings = {"model": "unet3d", "model_args": {"features": [8, 16, 32], "res_units": 1, "norm": "instance"},
                "patch_size": [8, 32, 32], "time_budget_s": None}
    summary = train(lgg, tmp_path / "run3d", epochs=3, settings=settings, **KW)
    assert math.isfinite(summary["best_val_dice"]), summary
