"""Training-step speed of medseg's default network at its default training shape (LGG: 2.5D, 9 channels,
128 x 128, batch 16), each variant against the eager reference of the same network (fp32, NCHW), all
measured in this run on the same thread count; then where the time of the default step goes
(torch.profiler, top operators by self CPU time).

    python -m benchmarks.train_step [--threads 1] [--steps 8]

Variants: eager channels_last (medseg's default step); bf16 autocast on the CPU (needs AVX512-BF16 or
AMX; weights, optimizer and loss stay fp32); torch.compile (inductor) of the model, NCHW and
channels_last. The Dice a variant reaches is measured separately (benchmarks.time_to_dice --set).
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from .common import header, rate, record

SIZE, BATCH, CHANNELS = 128, 16, 9


def _step_fn(model, opt, loss_fn, x, y, amp: bool):
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from medseg.training.losses import build_loss
    from medseg.models import build_model
    from medseg.planning.plan import DEFAULTS

    torch.manual_seed(0)
    x = torch.rand(BATCH, CHANNELS, SIZE, SIZE)
    y = (torch.rand(BATCH, 1, SIZE, SIZE) > 0.95).float()
    loss_fn = build_loss(DEFAULTS["loss"])
    bf16_ok = any(f in open("/proc/cpuinfo").read() for f in ("avx512_bf16", "amx_bf16"))
    variants = {"eager fp32 NCHW (reference)": ("nchw", False, False),
                "eager channels_last (medseg default)": ("cl", False, False),
                "torch.compile NCHW": ("nchw", False, True),
                "torch.compile channels_last": ("cl", False, True)}
    if bf16_ok:
        variants["eager channels_last + bf16 autocast"] = ("cl", True, False)
        variants["torch.compile channels_last + bf16 autocast"] = ("cl", True, True)
    rows = []
    for name, (fmt, amp, compiled) in variants.items():
        torch.manual_seed(0)
        model = build_model(DEFAULTS["model"], CHANNELS, 1, **DEFAULTS["model_args"])
        mf = torch.channels_last if fmt == "cl" else torch.contiguous_format
        model = model.to(memory_format=mf).train()
        xin = x.contiguous(memory_format=mf)
        opt = torch.optim.AdamW(model.parameters(), 2e-3)
        net = torch.compile(model) if compiled else model
        step = _step_fn(net, opt, loss_fn, xin, y, amp)
        try:
            speed = rate(lambda: [step() for _ in range(args.steps)], BATCH * args.steps, warmup=1, repeats=3)
        except Exception as e:  # a compiler missing or failing: say so, keep measuring the rest
            print(f"  {name}: failed ({str(e).splitlines()[0][:120]})")
            continue
        rows.append({"variant": name, "img_s": round(speed, 1)})
        print(f"  measured {name}", flush=True)
    ref = rows[0]["img_s"]
    for r in rows:
        r["x_ref"] = round(r["img_s"] / ref, 2)

    # where the default step's time goes
    torch.manual_seed(0)
    model = build_model(DEFAULTS["model"], CHANNELS, 1, **DEFAULTS["model_args"]).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    step = _step_fn(model, opt, loss_fn, x.contiguous(memory_format=torch.channels_last), y, False)
    step()
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    top = [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 3 / 1000, 1),
            "share": round(e.self_cpu_time_total / total, 3)} for e in events[:12]]

    print(header(args.threads))
    print(f"default network {DEFAULTS['model']} {DEFAULTS['model_args']}, {CHANNELS} x {SIZE} x {SIZE}, batch {BATCH}, "
          f"{DEFAULTS['loss']}, AdamW")
    print(f"{'variant':46} {'img/s':>7} {'x ref':>6}")
    for r in rows:
        print(f"{r['variant']:46} {r['img_s']:>7} {r['x_ref']:>6}")
    print(f"\ntorch.profiler, default step (eager channels_last), self CPU time per step ({total / 3 / 1000:.0f} ms):")
    for t in top:
        print(f"  {t['op']:44} {t['self_ms_per_step']:>8} ms {t['share']:>7.1%}")
    record("train_step", {"threads": args.threads, "rows": rows, "profile_top": top})


if __name__ == "__main__":
    main()
