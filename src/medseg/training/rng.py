"""Every random state a training step consumes, captured into a checkpoint and restored from one (exact resume)."""

from __future__ import annotations

import random

import numpy as np
import torch


def random_states(obj, seen: set | None = None):
    """Every numpy RandomState inside a MONAI (or medseg) transform tree, in a fixed order (construction order)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.random.RandomState):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from random_states(x, seen)
    elif type(obj).__module__.startswith(("monai", "medseg.")) and hasattr(obj, "__dict__"):
        for v in vars(obj).values():
            yield from random_states(v, seen)


def capture_rng(rng: np.random.Generator, augment) -> dict:
    """All random state a training step consumes: torch (CPU, and CUDA), python, the sampler, augmentation."""
    py = random.getstate()
    out = {"tensors": {"torch": torch.get_rng_state(), "python": torch.tensor(py[1], dtype=torch.int64)},
           "json": {"python": [py[0], py[2]], "numpy": rng.bit_generator.state, "monai": []}}
    if torch.cuda.is_available():
        out["tensors"]["cuda"] = torch.cuda.get_rng_state()
    for i, r in enumerate(random_states(augment)):
        name, keys, pos, has_gauss, cached = r.get_state()
        out["tensors"][f"monai.{i}"] = torch.from_numpy(keys.astype(np.int64))
        out["json"]["monai"].append([name, int(pos), int(has_gauss), float(cached)])
    return out


def augmenter_state(augment) -> list:
    """The augmenter's random state alone (what data.Prefetch rewinds): cheap enough to take every batch."""
    return [r.get_state() for r in random_states(augment)]


def set_augmenter_state(augment, state: list) -> None:
    for r, st in zip(random_states(augment), state):
        r.set_state(st)


def restore_rng(tensors: dict, state: dict, prefix: str, rng: np.random.Generator, augment) -> None:
    torch.set_rng_state(tensors[f"{prefix}torch"])
    if f"{prefix}cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"{prefix}cuda"])
    version, gauss = state["python"]
    random.setstate((version, tuple(tensors[f"{prefix}python"].tolist()), gauss))
    rng.bit_generator.state = state["numpy"]
    for i, (r, (name, pos, has_gauss, cached)) in enumerate(zip(random_states(augment), state["monai"])):
        r.set_state((name, tensors[f"{prefix}monai.{i}"].numpy().astype(np.uint32), pos, has_gauss, cached))
