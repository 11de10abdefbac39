"""Every preset runs one short epoch on a replica of its own workflow's layout, end to end with the report;
the cbis-mass preset with offline ImageNet-format VGG16 weights."""

from __future__ import annotations

import json

import pytest
import torch

from medseg.app.cli import main
from medseg.evaluation.evaluate import evaluate
from medseg.planning.planner import presets
from runs import train

from conftest import write_busi_replica, write_lgg_replica
from replica_cbis import write_cbis_replica
from replica_ircadb import write_ircadb_replica
from replica_nifti import write_msd_replica
from test_vgg16_unet import torchvision_state

REPLICAS = {
    "busi": lambda root: write_busi_replica(root / "Dataset_BUSI_with_GT", per_class=2),
    "lgg": lambda root: write_lgg_replica(root / "kaggle_3m", patients=2, slices=3),
    "liver-ct": lambda root: write_ircadb_replica(root / "3Dircadb1", patients=2, slices=4, size=32),
    "cbis-mass": lambda root: write_cbis_replica(root / "cbis"),
    "volume-3d": lambda root: write_msd_replica(root / "Task03_Liver", cases=2, slices=8, size=32),
}


def test_every_preset_has_a_replica_here():
    assert set(presets()) == set(REPLICAS)


# The heavy models' presets (milesial U-Net, 31 M parameters; VGG16) take 17-25 s here: `slow`, to keep CI under its
# 10 minutes. In the default suite the cbis-mass recipe still trains and evaluates end to end below (with local
# ImageNet weights), and every 2D model runs forward and backward in test_models.
HEAVY = {"busi", "cbis-mass"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
                                  for n in sorted(REPLICAS)])
def test_preset_one_short_epoch_end_to_end(tmp_path, name):
    data = REPLICAS[name](tmp_path)
    out = tmp_path / "run"
    # the preset's recipe with a small size and batch, so that each runs in seconds
    train(data, out, epochs=1, image_size=32, batch_size=2, val_fraction=0.5, quiet=True, preset=name,
          settings={"time_budget_s": None})
    plan = json.loads((out / "plan.json").read_text())
    settings = presets()[name]["settings"]
    assert plan["preset"] == name
    # (the MSD replica's labels 1 and 2 make a multi-class run, whose loss is the softmax ce+dice)
    flags = ("image_size", "batch_size") + (("loss",) if plan["classes"] else ())
    assert all(plan[k] == v for k, v in settings.items() if k not in flags)
    assert not plan["classes"] or plan["loss"] == "ce+dice"
    assert plan["image_size"] == 32 and plan["batch_size"] == 2  # flags win over the preset
    result = evaluate(out, quiet=True)
    assert (out / "eval" / "report.html").stat().st_size > 1000 and result["n_cases"] >= 1


def test_cbis_mass_with_local_imagenet_weights(tmp_path, capsys):
    weights = tmp_path / "vgg16-397923af.pth"
    torch.save(torchvision_state(False), weights)
    data = write_cbis_replica(tmp_path / "cbis")
    out = tmp_path / "run"
    train(data, out, epochs=1, image_size=32, batch_size=2, val_fraction=0.5, quiet=True, preset="cbis-mass",
          settings={"encoder_weights": str(weights), "freeze_encoder_epochs": 1})
    plan = json.loads((out / "plan.json").read_text())
    assert plan["normalization"] == "imagenet" and plan["encoder_weights"] == str(weights.resolve())
    assert plan["mean"] == pytest.approx([(0.485 + 0.456 + 0.406) / 3])  # grey input: mean of the three
    # frozen for the first epoch: the encoder's first convolution is still the file's (summed to grey)
    from safetensors.torch import load_file
    trained = load_file(str(out / "last" / "model.safetensors"))
    assert torch.allclose(trained["features.0.weight"], torchvision_state(False)["features.0.weight"].sum(1, keepdim=True))
    m = evaluate(out, quiet=True)
    assert set(m["subgroups"]) == {"pathology", "mass_shape", "size_bin"}
    assert m["headline"] == "iou" and m["iou_soft"]["n"] == m["iou"]["n"] > 0
    assert all("iou_0.4_share" in s for s in m["subgroups"]["mass_shape"].values())


def test_wrong_weights_file_is_bad_input_and_leaves_no_run(tmp_path, capsys):
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, bad)
    data = write_cbis_replica(tmp_path / "cbis")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["train", str(data), "--out", str(out), "--preset", "cbis-mass", "--epochs", "1",
              "--encoder-weights", str(bad)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnet.pth" in err and "missing keys" in err
    assert not out.exists()
