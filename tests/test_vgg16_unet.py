"""VGG16-encoder U-Net: torchvision key mapping, grey input, offline weights, refusal of code-carrying pickles."""

from __future__ import annotations

import pickle

import pytest
import torch

from medseg.errors import MedsegError
from medseg.models.vgg16_unet import VGG16UNet
from medseg.models import weights

# torchvision.models.vgg16 / vgg16_bn: "features.<i>" indices of the 13 convolutions (cfg "D"), written out
# here independently of medseg's own layer list.
CONV_PLAIN = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
CONV_BN = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
WIDTHS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
          (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def torchvision_state(batch_norm: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, (cin, cout) in zip(CONV_BN if batch_norm else CONV_PLAIN, WIDTHS):
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        state[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.01
        if batch_norm:
            for name, value in (("weight", torch.ones(cout)), ("bias", torch.zeros(cout)),
                                ("running_mean", torch.randn(cout, generator=g)), ("running_var", torch.rand(cout, generator=g) + 0.5)):
                state[f"features.{i + 1}.{name}"] = value
            state[f"features.{i + 1}.num_batches_tracked"] = torch.tensor(0)
    state["classifier.6.bias"] = torch.zeros(1000)  # present in torchvision files, ignored
    return state


@pytest.mark.parametrize("batch_norm", [False, True])
def test_torchvision_keys_load_and_forward(tmp_path, batch_norm):
    state = torchvision_state(batch_norm)
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    model = VGG16UNet(3, 1, batch_norm)
    weights.load_encoder_weights(model, path)
    first = CONV_BN[0] if batch_norm else CONV_PLAIN[0]
    assert torch.equal(model.features[first].weight, state["features.0.weight"])
    last = (CONV_BN if batch_norm else CONV_PLAIN)[-1]
    assert torch.equal(model.features[last].bias, state[f"features.{last}.bias"])
    out = model(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 1, 64, 64)


def test_grey_input_equals_repeated_grey(tmp_path):
    state = torchvision_state(False)
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    grey, rgb = VGG16UNet(1, 1), VGG16UNet(3, 1)
    weights.load_encoder_weights(grey, path)
    weights.load_encoder_weights(rgb, path)
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(grey.features[0](x), rgb.features[0](x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_wrong_keys_are_listed(tmp_path):
    path = tmp_path / "bn.pth"
    torch.save(torchvision_state(True), path)
    with pytest.raises(MedsegError, match="missing keys.*unexpected keys"):
        weights.load_encoder_weights(VGG16UNet(3, 1, batch_norm=False), path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create the marker file if ever unpickled with code


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"features.0.weight": _Evil(marker)}, f)
    torch.save({"x": _Evil(marker)}, tmp_path / "evil2.pth")
    assert not marker.exists()  # writing the pickles ran nothing
    for p in (path, tmp_path / "evil2.pth"):
        with pytest.raises(MedsegError, match="refused"):
            weights.read_state_dict(p)
    assert not marker.exists()


def test_convert_to_safetensors_and_hub_cache_lookup(tmp_path, monkeypatch):
    src = tmp_path / "vgg16-397923af.pth"
    torch.save(torchvision_state(False), src)
    dst = weights.convert(src, tmp_path / "vgg16.safetensors")
    a, b = VGG16UNet(3, 1), VGG16UNet(3, 1)
    weights.load_encoder_weights(a, src)
    weights.load_encoder_weights(b, dst)
    assert all(torch.equal(x, y) for x, y in zip(a.features.state_dict().values(), b.features.state_dict().values()))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert weights.find_vgg16(False) is None
    (tmp_path / "th" / "hub" / "checkpoints").mkdir(parents=True)
    src.rename(tmp_path / "th" / "hub" / "checkpoints" / src.name)
    assert weights.find_vgg16(False) == tmp_path / "th" / "hub" / "checkpoints" / src.name


def test_weights_convert_command(tmp_path):
    from conftest import run_cli
    src = tmp_path / "vgg16.pth"
    torch.save(torchvision_state(False), src)
    assert run_cli("weights", "convert", str(src), str(tmp_path / "v.safetensors")) == 0
    assert (tmp_path / "v.safetensors").is_file()
    assert run_cli("weights", "convert", str(tmp_path / "absent.pth"), str(tmp_path / "w.safetensors")) == 2
    assert not (tmp_path / "w.safetensors").exists()
