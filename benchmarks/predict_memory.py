"""Peak memory and time of `medseg predict` on a CT-sized NIfTI volume (512 x 512 x 200).

    python -m benchmarks.predict_memory RUN [--slices 200] [--engine torch|onnx]

RUN is any trained 1-channel run. The volume is synthetic (random HU in a body-shaped disc), written to a
temp folder; `medseg predict` runs in a child process whose peak resident set size (ru_maxrss) is reported with
the time, the machine and the versions. Target: peak <= 4 GB.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--engine", default="torch")
    args = ap.parse_args()

    import SimpleITK as sitk
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:args.size, :args.size]
        body = np.hypot(yy - args.size / 2, xx - args.size / 2) < args.size * 0.45
        vol = np.full((args.slices, args.size, args.size), -1000, np.int16)
        vol[:, body] = rng.integers(-100, 200, (args.slices, int(body.sum())), dtype=np.int16)
        img = sitk.GetImageFromArray(vol)
        img.SetSpacing((0.7, 0.7, 1.5))
        src = Path(tmp) / "ct.nii.gz"
        sitk.WriteImage(img, str(src), True)
        del vol, img
        # `medseg predict` in a fresh process, so that its peak RSS is its own (RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "from medseg.cli import main; main()", "predict", args.run, str(src),
                        "--out", str(Path(tmp) / "out"), "--engine", args.engine], check=True)
        seconds = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        out = sitk.ReadImage(str(Path(tmp) / "out" / "ct.nii.gz"))
        assert out.GetSize() == (args.size, args.size, args.slices)
    record = {"benchmark": "predict_memory", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
              "python": platform.python_version(), "torch": torch.__version__, "engine": args.engine,
              "volume": [args.size, args.size, args.slices], "seconds": round(seconds, 1),
              "slices_per_s": round(args.slices / seconds, 1), "peak_rss_mb": round(peak)}
    print(json.dumps(record, indent=2))
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    with (results / "predict_memory.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
