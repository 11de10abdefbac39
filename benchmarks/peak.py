"""This machine's measured fp32 peak: GEMM and 3x3 convolution GFLOP/s (NCHW and channels_last), at 1 and
all threads. `python -m benchmarks.peak`"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import machine, rate, record


def main() -> None:
    rows = []
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        n = 2048
        a, b = torch.randn(n, n), torch.randn(n, n)
        gemm = rate(lambda: a @ b, 1, repeats=5) * 2 * n ** 3 / 1e9
        x = torch.randn(8, 64, 128, 128)
        w = torch.randn(64, 64, 3, 3)
        flops = 2 * 8 * 64 * 64 * 9 * 128 * 128
        with torch.inference_mode():
            nchw = rate(lambda: F.conv2d(x, w, padding=1), 1) * flops / 1e9
            xc, wc = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
            cl = rate(lambda: F.conv2d(xc, wc, padding=1), 1) * flops / 1e9
        rows.append({"threads": threads, "gemm_gflops": round(gemm, 1), "conv3x3_nchw_gflops": round(nchw, 1),
                     "conv3x3_channels_last_gflops": round(cl, 1)})
    m = machine()
    print(f"{m['cpu']} ({m['cores']} cores), torch {m['torch']}, {m['date']}")
    print(f"{'threads':>7} {'GEMM 2048^2':>12} {'conv3x3 NCHW':>13} {'conv3x3 NHWC':>13}   GFLOP/s")
    for r in rows:
        print(f"{r['threads']:>7} {r['gemm_gflops']:>12} {r['conv3x3_nchw_gflops']:>13} {r['conv3x3_channels_last_gflops']:>13}")
    record("peak", {"rows": rows})


if __name__ == "__main__":
    main()
