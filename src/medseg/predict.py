"""Checkpoint + image files -> masks at each input's own size (`DIR/<relative path>.png`, uint8 0/255)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from .checkpoint import load_checkpoint, resolve_run
from .errors import MedsegError
from .imageio import IMAGE_SUFFIXES, is_mask_name, read_image, write_mask_png
from .inference import predict_probs

console = Console(stderr=True)


@dataclass
class Predictor:
    """A trained model with its plan: `Predictor.load(run).probabilities(image)`."""

    model: torch.nn.Module
    plan: dict
    tta: bool = False

    @classmethod
    def load(cls, run: str | Path, tta: bool = False) -> "Predictor":
        model, plan = load_checkpoint(resolve_run(Path(run)))
        return cls(model.to(memory_format=torch.channels_last), plan, tta)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """C x H x W float image in [0, 1] (channels as trained) -> H x W foreground probability."""
        return predict_probs(self.model, torch.from_numpy(image)[None], self.plan, tta=self.tta)[0].numpy()

    def mask(self, image: np.ndarray) -> np.ndarray:
        return self.probabilities(image) >= self.plan["threshold"]


def collect_inputs(inputs: list[Path]) -> list[tuple[Path, Path]]:
    """(file, relative output stem) for every image under the inputs; `*_mask*` files are skipped."""
    found: list[tuple[Path, Path]] = []
    for inp in inputs:
        if inp.is_file():
            if inp.suffix.lower() not in IMAGE_SUFFIXES:
                raise MedsegError(inp, f"not an image file (known: {', '.join(IMAGE_SUFFIXES)})")
            found.append((inp, Path(inp.stem)))
        elif inp.is_dir():
            files = sorted(p for p in inp.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not is_mask_name(p))
            if not files:
                raise MedsegError(inp, "no images found in this folder")
            found += [(p, p.relative_to(inp).with_suffix("")) for p in files]
        else:
            raise MedsegError(inp, "input not found")
    stems = [str(s) for _, s in found]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise MedsegError(dup, "two inputs would write the same output mask (same name, different extension?)")
    return found


def predict_files(run: str | Path, inputs: list[str | Path], out: str | Path, tta: bool = False,
                  quiet: bool = False) -> list[Path]:
    predictor = Predictor.load(run, tta=tta)
    if predictor.plan.get("neighbours"):
        raise MedsegError(run, "this run takes 2.5D input (neighbouring slices as channels), which per-file "
                               "prediction cannot assemble yet: use `medseg evaluate RUN DATA --split all`")
    todo = collect_inputs([Path(p) for p in inputs])
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    # Masks go to a staging folder first and move into place only when every input succeeded, so a
    # failed run leaves the output folder as it was.
    staging = Path(tempfile.mkdtemp(prefix=".medseg-predict-", dir=out))
    written = []
    try:
        with Progress(console=console, disable=quiet, transient=True) as bar:
            task = bar.add_task("predicting", total=len(todo))
            for path, stem in todo:
                mask = predictor.mask(read_image(path, predictor.plan["channels"], predictor.plan.get("intensity")))
                write_mask_png(staging / f"{stem}.png", mask)
                written.append(Path(f"{stem}.png"))
                bar.advance(task)
        for rel in written:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, out / rel)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    written = [out / rel for rel in written]
    if not quiet:
        console.print(f"wrote {len(written)} masks to {out}")
    return written
