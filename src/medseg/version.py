"""The package version and the machine it runs on, in a module of its own so that every layer can name them
without importing the rest."""

from __future__ import annotations

import os
import platform

__version__ = "0.1.0"


def cpu_field(key: str) -> str:
    """The first `key` line of /proc/cpuinfo ("model name", "flags"); "" where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key)), "")
    except OSError:
        return ""


def machine() -> dict:
    """The CPU, its cores, Python and torch of this process. A run trained for a time budget records it
    (RUN/training.json): how many epochs a budget buys, and so the Dice it reaches, depends on the machine."""
    import torch  # here, not at import: this module is imported by every layer, torch is slow to load
    cpu = cpu_field("model name")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "medseg": __version__}


def machine_text(m: dict, threads: int | None = None, device: str | None = None, bf16: bool = False) -> str:
    """One line for a report: 'Intel(R) Xeon(R) Processor, 2 cores (1 thread), torch 2.13.0+cpu, bf16 autocast'."""
    where = m.get("gpu") if device and device.startswith("cuda") and m.get("gpu") else m.get("cpu") or "unknown CPU"
    used = f" ({threads} thread{'s' if threads != 1 else ''})" if threads else ""
    return f"{where}, {m.get('cores')} cores{used}, torch {m.get('torch')}" + (", bf16 autocast" if bf16 else "")
