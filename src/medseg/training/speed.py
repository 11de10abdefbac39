"""How the training step runs (not what it learns): threads, torch.compile, the prefetch thread, bf16 autocast."""

from __future__ import annotations

import os
import shutil

import torch

from ..models import SPATIAL_DIMS
from ..planning.plan import Plan
from ..version import cpu_field

# CPU threads per training process. Measured on the 2-core machine (default UNet, 128 px, batch 16, samples/s):
# nearly idle, 2 threads 48-70 vs 1 thread 37; with one other busy process, 2 threads 4-7 vs 1 thread 30-40
# (OpenMP threads spin-wait for the busy core; at 32 px 0.4-1.4 vs 45-59). One thread never collapses, so it is
# the default; `--threads 2` on a machine of one's own. The count is saved in the plan: a resume keeps it.
# Re-measured 2026-12-04 (benchmarks.threads, LGG dev, AMD EPYC 2 cores, docs/benchmarks.md "threads"): 2 threads
# 1.24x alone, 0.26x of 1 thread two trainings at once; OMP_WAIT_POLICY=PASSIVE 0.76x alone (inference 0.59x),
# GOMP_SPINCOUNT=3000 1.04x alone and 0.72x two at once: none wins both, so 1 thread stays.
DEFAULT_THREADS = 1
# torch.compile (inductor) of the training step ("compile": "auto", the default, for 2D runs with a budget
# of at least COMPILE_MIN_BUDGET_S in one process; true forces it). benchmarks.train_loop (LGG dev, default
# plan, 90 s per variant, one run, idle machine, samples/s): eager reference 69.4, medseg eager 82.3,
# eager + prefetch 98.2, compile inline 93.4, compile + prefetch 121.5. Compiling takes 10-30 s (a few
# seconds once inductor's on-disk cache holds the graph: the folds of a cross-validated run after the first).
# Threshold 300 s (was 600 s, which left every fold of a `--folds 5` run under 50 minutes eager): two
# 240-s BUSI dev runs side by side, one thread each, 2026-11-30: compiled 10224 samples, eager 9232 (1.11x).
COMPILE_MIN_BUDGET_S = 300
PREFETCH_DEPTH = 3  # batches made ahead of the step (data.sampling.Prefetch)


def compiles(plan: Plan) -> bool:
    """"auto": a 2D model, a budget of at least COMPILE_MIN_BUDGET_S (compiling takes 10-30 s) and a C++
    compiler on the PATH (inductor's CPU code is C++); anything inductor then fails on runs eagerly."""
    if plan.compile == "auto":
        cxx = os.environ.get("CXX") or next((n for n in ("g++", "c++", "clang++") if shutil.which(n)), None)
        return (plan.time_budget_s or 0) >= COMPILE_MIN_BUDGET_S and SPATIAL_DIMS.get(plan.model, 2) == 2 \
            and cxx is not None
    return bool(plan.compile)


def prefetches(plan: Plan, device: torch.device, world: int) -> bool:
    """Augment in a background thread: "auto" when the step leaves a CPU core free (its threads times the
    processes on this machine are fewer than the cores this process may use) or runs on a GPU."""
    if plan.prefetch == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return device.type == "cuda" or int(plan.threads or torch.get_num_threads()) * world < cores
    return bool(plan.prefetch)


def has_amx() -> bool:
    """The CPU multiplies bf16 on AMX tiles (Intel Xeon since Sapphire Rapids): the amx_bf16 flag of /proc/cpuinfo."""
    return "amx_bf16" in cpu_field("flags").split()


def uses_bf16(plan: Plan, device: torch.device) -> bool:
    """bf16 autocast for the forward pass (weights, optimizer, loss and EMA stay fp32). "auto": on CUDA, and on
    a CPU with AMX when the run has a time budget (more epochs in the same time: benchmarks.train_loop on a Xeon
    with AMX, LGG dev, one run: 50.6 samples/s against 34.8 fp32, 1.45x; on an AMD EPYC with AVX512-BF16 and no
    AMX the step gained 1.02x, so not there). A run of fixed epochs stays fp32, its weights the same on any
    CPU. "bf16": on any device; "fp32": never."""
    precision = plan.precision or "auto"
    if precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and bool(plan.time_budget_s) and has_amx())
    return precision == "bf16"
