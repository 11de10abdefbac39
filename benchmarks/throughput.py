"""Training and inference images/s at 256 x 256, batch 8, for medseg's default 2D U-Net and, in the same
run, a plain eager U-Net of the classic milesial shape (base 32 and 64), MONAI's BasicUNet and nnU-Net's
2D PlainConvUNet; with forward GFLOPs per image and the share of this machine's measured 3x3-conv peak.
`python -m benchmarks.throughput [--threads N]`"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .common import machine, rate, record
from .plain_unet import PlainUNet

SIZE, BATCH = 256, 8


def _models() -> dict:
    from medseg.models import build_model
    from medseg.plan import DEFAULTS
    out = {"medseg default unet": lambda: build_model(DEFAULTS["model"], 1, 1, **DEFAULTS["model_args"]),
           "plain U-Net base 32 (eager ref)": lambda: PlainUNet(1, 1, 32),
           "plain U-Net base 64 (eager ref)": lambda: PlainUNet(1, 1, 64)}
    from monai.networks.nets import BasicUNet
    out["MONAI BasicUNet"] = lambda: BasicUNet(spatial_dims=2, in_channels=1, out_channels=1)
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
        out["nnU-Net PlainConvUNet 2D"] = lambda: PlainConvUNet(
            1, 7, [32, 64, 128, 256, 512, 512, 512], torch.nn.Conv2d, 3, [1, 2, 2, 2, 2, 2, 2], 2, 1,
            [2] * 6, True, torch.nn.InstanceNorm2d, {"eps": 1e-5, "affine": True}, None, None, torch.nn.LeakyReLU,
            {"inplace": True})
    except ImportError:
        print("dynamic-network-architectures not installed: nnU-Net's PlainConvUNet left out")
    return out


def _conv_peak() -> float:
    x = torch.randn(8, 64, 128, 128).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return rate(lambda: F.conv2d(x, w, padding=1), 1) * 2 * 8 * 64 * 64 * 9 * 128 * 128 / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = _conv_peak()
    x = torch.rand(BATCH, 1, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(BATCH, 1, SIZE, SIZE) > 0.9).float()
    rows = []
    for name, make in _models().items():
        model = make().to(memory_format=torch.channels_last)
        params = sum(p.numel() for p in model.parameters())
        model.eval()
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            model(x[:1])
        gflop = fc.get_total_flops() / 1e9
        with torch.inference_mode():
            infer = rate(lambda: model(x), BATCH)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), 1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            out = model(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
            F.binary_cross_entropy_with_logits(out, y).backward()
            opt.step()

        trainr = rate(step, BATCH, repeats=2)
        rows.append({"model": name, "params": params, "gflop_per_image": round(gflop, 2),
                     "infer_img_s": round(infer, 2), "train_img_s": round(trainr, 2),
                     "infer_peak_share": round(infer * gflop / peak, 3),
                     "train_peak_share": round(trainr * 3 * gflop / peak, 3)})
        print(f"  measured {name}", flush=True)
    ref = next(r for r in rows if r["model"].startswith("plain U-Net base 32"))
    m = machine()
    print(f"{m['cpu']} ({m['cores']} cores), torch {m['torch']}, {args.threads} threads, {m['date']}; "
          f"3x3-conv peak {peak:.1f} GFLOP/s; 256x256, batch 8, channels_last")
    print(f"{'model':34} {'params':>10} {'GFLOP/img':>9} {'infer/s':>8} {'x ref':>6} {'train/s':>8} {'x ref':>6} "
          f"{'%peak inf':>9} {'%peak trn':>9}")
    for r in rows:
        print(f"{r['model']:34} {r['params']:>10,} {r['gflop_per_image']:>9} {r['infer_img_s']:>8} "
              f"{r['infer_img_s'] / ref['infer_img_s']:>6.2f} {r['train_img_s']:>8} "
              f"{r['train_img_s'] / ref['train_img_s']:>6.2f} {r['infer_peak_share']:>9.1%} {r['train_peak_share']:>9.1%}")
    record("throughput", {"threads": args.threads, "conv_peak_gflops": round(peak, 1), "rows": rows})


if __name__ == "__main__":
    main()
