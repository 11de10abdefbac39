"""Inference speed of one trained run, every engine measured in this run on the same real images, against
the eager reference of the same network (PyTorch eager, fp32, NCHW): images/s, the ratio, and the
masks' Dice against the reference's masks (target >= 0.999); then `medseg predict`'s time and peak
memory on a 512 x 512 x 200 CT-sized volume (each slice through the 2D model: a window sliding over z).

    python -m benchmarks.inference RUN [--batch 8] [--threads 1] [--no-volume] [--volume-run RUN1CH]

Engines: eager channels_last; medseg's `--engine torch` (BatchNorm folded into the convolutions,
channels_last) and `--engine torch-bf16` (the same under bf16 autocast); torch.compile (inductor); ONNX Runtime (the graph of
`medseg export --onnx`); eager with bf16 autocast (CPUs with AVX512-BF16 or AMX only). The images are the
run's validation slices at the training size, read through medseg's cache.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .common import header, rate, record


def _val_images(run: Path, plan) -> torch.Tensor:
    from medseg.adapters import load_dataset
    from medseg.data.arrays import load_arrays, prep_of, with_neighbours
    ds = load_dataset(plan.data, plan.layout, plan.target_name)
    val = set(plan.split["val"])
    arrays = load_arrays([it for it in ds.items if it.patient in val], prep_of(plan), "reading validation data")
    return with_neighbours(arrays, int(plan.neighbours or 0)).images.float() / 255


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    inter, total = np.count_nonzero(a & b), np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2 * inter / total


def _has_bf16() -> bool:
    flags = open("/proc/cpuinfo").read()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _engines(model, plan, run_folder: Path, batch: int, threads: int) -> dict:
    """name -> a function B x C x S x S images in [0, 1] -> logits; each built (and warmed) here."""
    from medseg.inference.onnx import Normalised, OnnxNet, export_onnx
    net = Normalised(model.eval(), plan.mean, plan.std).eval()
    out = {"eager fp32 NCHW (reference)": lambda x: net(x)}
    cl = Normalised(model.eval(), plan.mean, plan.std).eval().to(memory_format=torch.channels_last)
    out["eager channels_last"] = lambda x: cl(x.contiguous(memory_format=torch.channels_last))
    from medseg.inference.predictor import Predictor
    for engine, label in (("torch", "medseg torch (BN folded, channels_last)"),
                          ("torch-bf16", "medseg torch-bf16 (BN folded, autocast)")):
        if engine == "torch-bf16" and not _has_bf16():
            continue
        m = Normalised(Predictor.load(run_folder, engine=engine).model, plan.mean, plan.std).eval()
        out[label] = lambda x, m=m: m(x.contiguous(memory_format=torch.channels_last))
    try:
        # (inductor's weight freezing, which folds BN into the convolutions, failed on MONAI's transposed
        # convolutions in torch 2.13: "expected bias to be 1-dimensional with 1 elements"; not frozen here)
        compiled = torch.compile(cl, dynamic=False)
        out["torch.compile (inductor)"] = lambda x: compiled(x.contiguous(memory_format=torch.channels_last))
    except Exception as e:  # no C compiler, or an inductor limitation: report, do not stop the benchmark
        print(f"torch.compile unavailable: {str(e).splitlines()[0]}")
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        path, _ = export_onnx(run_folder, Path(tmp) / "model.onnx")
        onnx_net = OnnxNet(path, threads=threads)  # the session holds the graph; the file may go
    out["ONNX Runtime"] = onnx_net
    if _has_bf16():
        def bf16(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return cl(x.contiguous(memory_format=torch.channels_last)).float()
        out["eager channels_last bf16 autocast"] = bf16
        if "torch.compile (inductor)" in out:
            def compiled_bf16(x):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return compiled(x.contiguous(memory_format=torch.channels_last)).float()
            out["torch.compile + bf16 autocast"] = compiled_bf16
    return out


def _volume_memory(run: str, engine: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of `medseg predict RUN ct.nii.gz` on a 512 x 512 x 200 volume in a child."""
    import SimpleITK as sitk
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:512, :512]
        body = np.hypot(yy - 256, xx - 256) < 230
        vol = np.full((200, 512, 512), -1000, np.int16)
        vol[:, body] = rng.integers(-100, 200, (200, int(body.sum())), dtype=np.int16)
        img = sitk.GetImageFromArray(vol)
        img.SetSpacing((0.7, 0.7, 1.5))
        sitk.WriteImage(img, str(Path(tmp) / "ct.nii.gz"), True)
        del vol, img
        if engine == "onnx":  # `medseg export RUN --onnx` writes RUN/model.onnx, which --engine onnx reads
            with contextlib.redirect_stdout(io.StringIO()):
                from medseg.inference.onnx import export_onnx
                export_onnx(run)
        # one forward pass per slice, as measured before flip TTA became predict's default for 2D runs
        extra = ["--no-tta"] + (["--engine", "onnx"] if engine == "onnx" else [])
        # the child reports its own peak (RUSAGE_CHILDREN would keep the largest of all children so far)
        code = ("import resource, sys\nfrom medseg.app.cli import main\ntry:\n    main()\nfinally:\n"
                "    print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, "predict", run, str(Path(tmp) / "ct.nii.gz"), "--out",
                               str(Path(tmp) / "out"), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        dt = time.perf_counter() - t
        peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK ")]
        if done.returncode or not peak:
            raise SystemExit(f"medseg predict failed: {done.stderr[-500:]}")
    return dt, int(peak[-1].split()[1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-volume", action="store_true")
    ap.add_argument("--volume-only", action="store_true")
    ap.add_argument("--volume-run", help="a 1-channel run (e.g. liver CT) for the volume; default: RUN")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from medseg.inference.checkpoint import load_checkpoint, resolve_run
    folder = resolve_run(Path(args.run))
    model, plan = load_checkpoint(folder)
    images = _val_images(Path(args.run), plan)
    n = len(images) // args.batch * args.batch
    batches = [images[i:i + args.batch] for i in range(0, n, args.batch)]
    sample = batches[:4]
    rows, ref_masks, ref_rate = [], None, None
    engines = {} if args.volume_only else _engines(model, plan, folder, args.batch, args.threads)
    with torch.inference_mode():
        for name, fn in engines.items():
            try:
                for _ in range(2):  # compile / first-call costs out of the timing
                    fn(batches[0])
            except Exception as e:  # an engine that fails here is reported, the others still measured
                print(f"  {name}: failed ({str(e).splitlines()[0][:160]})")
                continue
            speed = rate(lambda: [fn(b) for b in sample], args.batch * len(sample), warmup=0, repeats=3)
            masks = np.concatenate([(torch.sigmoid(fn(b)) >= plan.threshold).numpy() for b in batches])
            if ref_masks is None:
                ref_masks, ref_rate = masks, speed
            rows.append({"engine": name, "img_s": round(speed, 1), "x_ref": round(speed / ref_rate, 2),
                         "mask_dice_vs_ref": round(_dice(masks, ref_masks), 5)})
            print(f"  measured {name}", flush=True)
    print(header(args.threads))
    print(f"run {args.run}: {plan.model} {plan.model_args}, {plan.image_size} px, "
          f"{images.shape[1]} channels; {n} validation slices, batch {args.batch}")
    print(f"{'engine':38} {'img/s':>8} {'x ref':>6} {'mask Dice vs ref':>17}")
    for r in rows:
        print(f"{r['engine']:38} {r['img_s']:>8} {r['x_ref']:>6} {r['mask_dice_vs_ref']:>17}")
    volume = {}
    if not args.no_volume:
        for engine in ("torch", "onnx"):
            dt, peak = _volume_memory(args.volume_run or args.run, engine)
            volume[engine] = {"seconds": round(dt, 1), "peak_rss_mb": round(peak)}
        print(f"\nmedseg predict {args.volume_run or args.run} on a 512 x 512 x 200 NIfTI volume (child process, "
              "ru_maxrss):")
        for engine, v in volume.items():
            print(f"  --engine {engine:6} {v['seconds']:>6} s   peak {v['peak_rss_mb']:>6} MB")
    record("inference", {"run": str(args.run), "threads": args.threads, "batch": args.batch, "rows": rows,
                         "volume_512x512x200": volume})


if __name__ == "__main__":
    main()
