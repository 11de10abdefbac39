"""Training and inference images/s at 256 x 256, batch 8, for medseg's default 2D U-Net and, in the same
run, a plain eager U-Net of the classic milesial shape (base 32 and 64), MONAI's BasicUNet and nnU-Net's
2D PlainConvUNet; with forward GFLOPs per image and the share of this machine's measured 3x3-conv peak.
`python -m benchmarks.throughput [--threads N] [--device cuda --amp --batch B]`: on a GPU, with bf16 autocast
(AMP) as medseg trains there, each timing synchronised with the device."""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .common import machine, rate, record
from .plain_unet import PlainUNet

SIZE, BATCH = 256, 8


def _models() -> dict:
    from medseg.models import build_model
    from medseg.planning.plan import DEFAULTS
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


def _synced(fn, device: torch.device):
    if device.type != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize()
    return run


def _conv_peak(device: torch.device, dtype: torch.dtype) -> float:
    b, c, hw = (8, 64, 128) if device.type == "cpu" else (64, 256, 128)
    x = torch.randn(b, c, hw, hw, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, c, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return rate(_synced(lambda: F.conv2d(x, w, padding=1), device), 1, warmup=3) * 2 * b * c * c * 9 * hw * hw / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA), as medseg trains on a GPU")
    ap.add_argument("--batch", type=int, default=BATCH)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, batch = torch.device(args.device), args.batch
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else contextlib.nullcontext
    peak = _conv_peak(device, torch.bfloat16 if args.amp else torch.float32)
    x = torch.rand(batch, 1, SIZE, SIZE, device=device).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 1, SIZE, SIZE, device=device) > 0.9).float()
    rows = []
    for name, make in _models().items():
        model = make().to(device=device, memory_format=torch.channels_last)
        params = sum(p.numel() for p in model.parameters())
        model.eval()
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            model(x[:1])
        gflop = fc.get_total_flops() / 1e9

        def infer_step():
            with amp():
                model(x)

        with torch.inference_mode():
            infer = rate(_synced(infer_step, device), batch, warmup=1 if device.type == "cpu" else 3)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), 1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            with amp():
                out = model(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
            F.binary_cross_entropy_with_logits(out.float(), y).backward()
            opt.step()

        trainr = rate(_synced(step, device), batch, warmup=1 if device.type == "cpu" else 3,
                      repeats=2 if device.type == "cpu" else 5)
        rows.append({"model": name, "params": params, "gflop_per_image": round(gflop, 2),
                     "infer_img_s": round(infer, 2), "train_img_s": round(trainr, 2),
                     "infer_peak_share": round(infer * gflop / peak, 3),
                     "train_peak_share": round(trainr * 3 * gflop / peak, 3)})
        print(f"  measured {name}", flush=True)
    ref = next(r for r in rows if r["model"].startswith("plain U-Net base 32"))
    m = machine()
    where = (f"{torch.cuda.get_device_name(device)}{', bf16 autocast' if args.amp else ', fp32'}"
             if device.type == "cuda" else f"{m['cpu']} ({m['cores']} cores), {args.threads} threads")
    print(f"{where}, torch {m['torch']}, {m['date']}; 3x3-conv peak {peak:.1f} GFLOP/s; {SIZE}x{SIZE}, batch {batch}, "
          f"channels_last")
    print(f"{'model':34} {'params':>10} {'GFLOP/img':>9} {'infer/s':>8} {'x ref':>6} {'train/s':>8} {'x ref':>6} "
          f"{'%peak inf':>9} {'%peak trn':>9}")
    for r in rows:
        print(f"{r['model']:34} {r['params']:>10,} {r['gflop_per_image']:>9} {r['infer_img_s']:>8} "
              f"{r['infer_img_s'] / ref['infer_img_s']:>6.2f} {r['train_img_s']:>8} "
              f"{r['train_img_s'] / ref['train_img_s']:>6.2f} {r['infer_peak_share']:>9.1%} {r['train_peak_share']:>9.1%}")
    record("throughput", {"threads": args.threads, "device": where, "batch": batch, "amp": args.amp,
                          "conv_peak_gflops": round(peak, 1), "rows": rows})


if __name__ == "__main__":
    main()
