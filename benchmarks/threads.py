"""CPU threads of the training step, and OpenMP's wait policy, on LGG dev: each variant in fresh processes
(the policy is read once, when torch's OpenMP runtime loads), alone and two at once, one after another.

    python -m benchmarks.threads [--data .../kaggle_3m] [--seconds 100] [--warmup 15]

Variants (OpenMP's environment unset = its defaults, which spin while they wait; torch's Linux wheels use GNU
OpenMP, which reads OMP_WAIT_POLICY and GOMP_SPINCOUNT):
  1 thread + prefetch, OMP default      medseg's default (the step on one thread, the augmentation in a thread
                                        on the other core): the reference, in every run
  2 threads, inline, OMP default        what `--threads 2` gives (prefetch "auto" is then off on 2 cores)
  2 threads, inline, OMP PASSIVE        threads that sleep while they wait
  2 threads, inline, GOMP_SPINCOUNT=N   threads that spin N times, then sleep
"Alone": one training on the machine; "two at once": two identical trainings started together (a user
running two jobs, or medseg beside another program), each one's figure. Columns as benchmarks.train_loop:
steady samples/s step to step after the first `--warmup` steps (compiling happens there). Then inference:
images/s of the default network's forward pass (eval, no grad, batch 8, torch's own thread count) under each
policy, as `medseg evaluate` and `predict` run it. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import header, rate, record, variant_parser

VARIANTS = {  # name -> (threads, OpenMP environment; {} = OpenMP's defaults)
    "1 thread + prefetch, OMP default (medseg default)": (1, {}),
    "2 threads, inline, OMP default": (2, {}),
    "2 threads, inline, OMP PASSIVE": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "2 threads, inline, GOMP_SPINCOUNT=30000": (2, {"GOMP_SPINCOUNT": "30000"}),
    "2 threads, inline, GOMP_SPINCOUNT=3000": (2, {"GOMP_SPINCOUNT": "3000"}),
}
OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _child(args) -> dict:
    """In this process: a training's steady samples/s, or the forward pass's images/s."""
    if args.what == "infer":
        import torch
        from medseg.models import build_model
        from medseg.planning.plan import Plan
        plan = Plan()
        model = build_model(plan.model, 3 * (2 * 1 + 1), 1, **plan.model_args).eval()
        x = torch.randn(8, 9, plan.image_size, plan.image_size)
        with torch.no_grad():
            return {"images_per_s": rate(lambda: model(x), 8, warmup=2, repeats=5), "threads": torch.get_num_threads()}
    from .train_loop import medseg_loop
    steady, whole, _ = medseg_loop(args.data, args.seconds, args.warmup, {"compile": True}, threads=args.threads)
    return {"steady": steady, "whole": whole}


def _spawn(args, what: str, threads: int, omp: dict, copies: int) -> list[dict]:
    env = {**{k: v for k, v in os.environ.items() if k not in OMP_VARS}, **omp}
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"{i}.json" for i in range(copies)]
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.threads", "--child", str(o), "--what", what,
                                  "--threads", str(threads), "--data", args.data, "--seconds", str(args.seconds),
                                  "--warmup", str(args.warmup)], env=env, cwd=Path(__file__).parents[1])
                 for o in outs]
        for p in procs:
            if p.wait():
                raise SystemExit(f"a child process failed (exit {p.returncode})")
        return [json.loads(o.read_text()) for o in outs]


def main() -> None:
    ap = variant_parser(100, "the first")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--what", default="train", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        Path(args.child).write_text(json.dumps(_child(args)))
        return
    rows = []
    for i, (name, (threads, omp)) in enumerate(VARIANTS.items(), 1):
        if args.only and str(i) not in args.only and i != 1:
            continue
        alone = _spawn(args, "train", threads, omp, 1)[0]
        pair = _spawn(args, "train", threads, omp, 2)
        rows.append({"variant": name, "threads": threads, "omp_env": omp,
                     "alone": round(alone["steady"], 1), "two_at_once": [round(p["steady"], 1) for p in pair]})
        print(f"  measured {name}: alone {rows[-1]['alone']}, two at once {rows[-1]['two_at_once']}")
    infer = {r["variant"]: _spawn(args, "infer", 0, r["omp_env"], 1)[0] for r in rows}
    ref = rows[0]["alone"]
    print(header("threads per variant below"))
    print(f"LGG dev, default plan, torch.compile, {args.seconds:.0f} s per training; training samples/s, steady")
    print(f"{'variant':48} {'alone':>6} {'x dflt':>6} {'two at once (each)':>19}")
    for r in rows:
        r["x_default_alone"] = round(r["alone"] / ref, 2)
        both = " / ".join(f"{v:.1f}" for v in r["two_at_once"])
        print(f"{r['variant']:48} {r['alone']:>6} {r['x_default_alone']:>6} {both:>19}")
    print("inference, default network, batch 8, torch's own threads, images/s, under each variant's OpenMP environment:")
    for name, r in infer.items():
        print(f"  {name:48} {r['images_per_s']:>6.1f}  ({r['threads']} threads)")
    record("threads", {"data": args.data, "seconds": args.seconds, "warmup": args.warmup, "rows": rows,
                       "inference_images_per_s": infer})


if __name__ == "__main__":
    main()
