"""Checkpoint + inputs -> masks in each input's own format and geometry.

    2D images (PNG/JPG/BMP/TIFF, single-frame DICOM)  -> DIR/<relative path>.png (or .tif), uint8 0/255
                                                          (multi-class runs: the classes' values)
    volumes (NIfTI/NRRD/MHA)                           -> DIR/<name>.nii.gz: uint8 labels, the input's shape,
                                                          spacing, origin and direction
    DICOM series (a folder of one series)              -> DIR/<folder>.seg.dcm, a DICOM Segmentation that
                                                          references every source instance (or NIfTI)

A 2D model runs slice by slice in batches; a volume is held once as uint8 labels plus float16
probabilities, never as float32 copies. Threshold and post-processing come from the run
(RUN/postprocess.json, chosen by `medseg evaluate`); post-processing acts in 3D on volumes. A multi-class
run's probabilities carry a class axis (background first) and its labels are their argmax (no threshold);
files get each class's value (plan.classes), the DICOM SEG one segment per class.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from . import postprocess
from .checkpoint import fold_runs, load_checkpoint, resolve_run
from ..errors import MedsegError, atomic_path, check_output, writing
from ..io.images import (IMAGE_SUFFIXES, is_dicom, is_mask_name, is_volume, overlay, overlay_labels, read_image,
                         volume_stem, write_label_png, write_mask_png)
from .engines import Bf16Autocast, Ensemble, predict_probs, squeeze_binary, volume_probs
from ..data.arrays import stream_with_neighbours
from ..models import SPATIAL_DIMS, fold_batchnorm
from ..planning.plan import Plan
from ..io.intensity import scale_case
from ..transforms import fill_views, resize_image, unfit


console = Console(stderr=True)
FORMATS = ("auto", "png", "tif", "nifti", "dicom-seg")
ENGINES = ("torch", "torch-bf16", "onnx")


@dataclass
class Predictor:
    """A trained model with its plan and post-processing: `Predictor.load(run).mask(image)`."""

    model: torch.nn.Module
    plan: Plan
    tta: bool = False
    setting: dict = field(default_factory=dict)
    batch_size: int = 8

    @classmethod
    def load(cls, run: str | Path, tta: bool | None = None, engine: str = "torch", onnx_path: str | Path | None = None,
             threshold: float | None = None, batch_size: int = 8) -> "Predictor":
        """A run's best checkpoint; a cross-validated run (RUN/cv.json): its fold models as one ensemble.
        `tta` None: on for 2D models (left-right flips, as nnU-Net mirrors by default: +0.012 mean Dice on the
        pooled LGG folds, -0.002 on BUSI lesions with 2 fewer false masks of 24 normal images, for twice the
        forward passes; with the plan's tta_scales, engines.tta_sizes, 3x that; a run trained with a channel fill
        also averages its filled views, transforms.tta_fills),
        off for 3D ones (three sliding-window passes over a whole volume on a CPU)."""
        folds = fold_runs(run)
        if folds is not None:
            if engine == "onnx":
                raise MedsegError(run, "--engine onnx takes one model; this cross-validated run is an ensemble "
                                       "of its folds: use --engine torch (or predict with RUN/fold<i>)")
            loaded = [load_checkpoint(resolve_run(f)) for f in folds]
            plan, run_folder = _same_preprocessing(loaded, Path(run)), Path(run)
            model = Ensemble([_engine(m, p, engine) for m, p in loaded], [p.mean for _, p in loaded],
                             [p.std for _, p in loaded])
        else:
            folder = resolve_run(Path(run))
            model, plan = load_checkpoint(folder)
            run_folder = folder.parent if folder.name in ("best", "last") else folder
            if engine == "onnx":
                if SPATIAL_DIMS.get(plan.model, 2) == 3:
                    raise MedsegError(None, "--engine onnx is for 2D models; this run's model is 3D: use --engine torch")
                from .onnx import OnnxNet
                model = OnnxNet(Path(onnx_path) if onnx_path else run_folder / "model.onnx")
            else:
                model = _engine(model, plan, engine)
        setting = postprocess.load(run_folder, plan)
        if threshold is not None:
            if not 0 < threshold < 1:
                raise MedsegError(None, f"--threshold must lie between 0 and 1, got {threshold}")
            setting = {**setting, "threshold": float(threshold)}
        if tta is None:
            tta = SPATIAL_DIMS.get(plan.model, 2) == 2
        return cls(model, plan, tta, setting, batch_size)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """C x H x W float image in [0, 1] (channels as trained), a case of its own -> H x W foreground
        probability; scaled by the plan's per-case intensity rule first, as in training."""
        return self.probabilities_batch(self.scale_case([image])[0][None])[0]

    def scale_case(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """One case's images (a 2D image, or every slice of a stack) by the plan's intensity rule."""
        return scale_case(images, self.plan.intensity_norm, self.plan.body_mask)

    @property
    def three_d(self) -> bool:
        return SPATIAL_DIMS.get(self.plan.model, 2) == 3

    def probabilities_batch(self, images: np.ndarray) -> np.ndarray:
        """B x C x H x W images of one size, already scaled (scale_case) -> B x H x W probabilities."""
        if self.three_d:
            raise MedsegError(None, f"this run's model ({self.plan.model}) is 3D: it segments volumes, DICOM "
                                    "series and slice stacks, not single 2D images")
        return predict_probs(self.model, torch.from_numpy(np.ascontiguousarray(images)), self.plan, tta=self.tta,
                             batch_size=self.batch_size).numpy()

    def mask(self, image: np.ndarray) -> np.ndarray:
        return self.hard(self.probabilities(image))

    def hard(self, prob: np.ndarray) -> np.ndarray:
        """Probabilities -> the hard result: a binary run's bool mask (threshold and post-processing), a
        multi-class run's uint8 class indices (the argmax over the class axis, third from the end)."""
        if not self.plan.classes:
            return postprocess.apply(prob, self.setting)
        return np.asarray(prob).argmax(-3).astype(np.uint8)

    def values(self, hard: np.ndarray) -> np.ndarray:
        """A hard result -> the uint8 values written to files: 0/255 (binary; NIfTI and SEG take 0/1), or
        each class's value (multi-class)."""
        if not self.plan.classes:
            return np.where(hard, 255, 0).astype(np.uint8)
        return np.asarray(self.plan.class_values(), dtype=np.uint8)[hard]

    def foreground(self, prob: np.ndarray) -> np.ndarray:
        """The foreground probability: a binary run's own, a multi-class run's 1 - P(background)."""
        return np.asarray(prob) if not self.plan.classes else 1 - np.asarray(prob)[..., 0, :, :]

    def describe(self) -> str:
        if self.plan.classes:
            return f"labels: argmax over background + {', '.join(self.plan.class_names())}"
        return postprocess.describe(self.setting)

    def volume_probabilities(self, slices, n: int, bar=None, task=None) -> np.ndarray:
        """Slices in order (an iterable of C x H x W arrays, n of them) -> n x H x W float16 probabilities,
        in batches, so only one batch of float32 images exists at a time. 2.5D runs get each slice with
        its neighbours as channels, as in training; a 3D model gets the whole stack, by sliding window."""
        if self.plan.intensity_norm != "none":  # the statistics span the whole stack: read it first
            slices = self.scale_case(list(slices))
        if self.three_d:
            return self._volume_3d(slices, n, bar, task)
        out, batch = None, []
        slices = stream_with_neighbours(slices, int(self.plan.neighbours or 0), n)
        first = None
        for i, img in enumerate(slices):
            first = img.shape if first is None else first
            if img.shape != first:
                raise MedsegError(None, f"slice {i} is {img.shape[2]}x{img.shape[1]} but the first slice is "
                                        f"{first[2]}x{first[1]}: the slices of one stack must have one size")
            batch.append(img)
            if len(batch) == self.batch_size or i == n - 1:
                p = self.probabilities_batch(np.stack(batch)).astype(np.float16)
                if out is None:
                    out = np.empty((n, *p.shape[1:]), dtype=np.float16)

                out[i + 1 - len(batch):i + 1] = p
                batch = []
                if bar is not None:
                    bar.advance(task, len(p))
        return out


    def series_probabilities(self, folder: Path, bar=None, task=None) -> tuple[np.ndarray, list, float]:
        """A DICOM series folder -> (n x H x W probabilities in anatomical order, the ordered slices as
        (position, file, header, size), the slice spacing): the one path every front end predicts a series by."""
        from ..adapters.ircadb import ordered_series
        slices, spacing_z = ordered_series(folder)
        ch, intensity = self.plan.channels, self.plan.intensity
        probs = self.volume_probabilities((read_image(s[1], ch, intensity) for s in slices), len(slices), bar, task)
        return probs, slices, spacing_z

    def _volume_3d(self, slices, n: int, bar=None, task=None) -> np.ndarray:
        """All n slices at once (the 3D model needs the stack): resized in-plane to the training size, as in
        training, then sliding-window probabilities resized back slice by slice."""
        shrunk, hw = [], None
        for img in slices:
            hw = hw or img.shape[1:]
            if img.shape[1:] != hw:
                raise MedsegError(None, "the slices of one stack must have one size")
            shrunk.append(resize_image(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None],
                                       self.plan.image_size, self.plan.keep_aspect)[0])
        volume = torch.stack(shrunk, 1)  # C x D x S x S
        views = [v[0] for v in fill_views(volume[None], self.plan)] if self.tta else [volume]
        probs = sum(self._volume_views(v) for v in views) / len(views)
        probs = probs if self.plan.classes else probs[:, None]  # D x C x S x S, C = 1 or K + 1
        out = np.empty((len(shrunk), *(probs.shape[1:-2] if self.plan.classes else ()), *hw), dtype=np.float16)
        for z in range(0, len(shrunk), 32):
            out[z:z + 32] = squeeze_binary(unfit(probs[z:z + 32], tuple(hw), self.plan.keep_aspect)).numpy()
        if bar is not None:
            bar.advance(task, len(shrunk))
        return out

    def _volume_views(self, volume: torch.Tensor) -> torch.Tensor:
        """Sliding-window probabilities of a C x D x S x S volume; with TTA averaged with its in-plane flips,
        in probability space as for 2D models."""
        probs = volume_probs(self.model, volume, self.plan)
        if self.tta:
            probs = (probs + volume_probs(self.model, volume.flip(-1), self.plan).flip(-1)
                     + volume_probs(self.model, volume.flip(-2), self.plan).flip(-2)) / 3
        return probs


def _engine(model: torch.nn.Module, plan: Plan, engine: str) -> torch.nn.Module:
    """The torch engines: BatchNorm folded (same masks, one pass less per layer: benchmarks.inference),
    channels_last for 2D models, and for torch-bf16 the bf16 autocast wrapper."""
    if engine not in ("torch", "torch-bf16"):
        raise MedsegError(None, f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    fold_batchnorm(model.eval())
    if SPATIAL_DIMS.get(plan.model, 2) == 2:
        model = model.to(memory_format=torch.channels_last)
    return Bf16Autocast(model) if engine == "torch-bf16" else model


def _same_preprocessing(loaded: list, run: Path) -> Plan:
    """Fold 0's plan, once every fold is checked to take its input the same way (size, channels, context)."""
    keys = ("model", "image_size", "channels", "neighbours", "intensity", "intensity_norm", "body_mask", "keep_aspect")
    first = loaded[0][1]
    for _, p in loaded[1:]:
        if any(getattr(p, k) != getattr(first, k) for k in keys):
            raise MedsegError(run, "the folds of this run were trained with different preprocessing: predict "
                                   "with one fold (RUN/fold<i>)")
    return first


@dataclass
class Input:
    kind: str  # "image", "volume", "series", "stack"
    path: Path
    stem: Path  # relative output stem
    members: list["Input"] = field(default_factory=list)  # a stack's slices, in order


def _slice_number(path: Path) -> tuple:
    """Order of slice files in a folder: by the last number in the name (`TCGA_..._12.tif` -> 12)."""
    nums = re.findall(r"\d+", path.stem)
    return (int(nums[-1]) if nums else -1, path.name)


def as_stacks(found: list[Input]) -> list[Input]:
    """For runs trained on slice stacks (LGG patients): the 2D images of one folder form one stack, ordered
    by slice number, so that 2.5D input and 3D post-processing see the patient as in evaluation."""
    out, groups = [], {}
    for inp in found:
        if inp.kind == "image":
            groups.setdefault(inp.path.parent, []).append(inp)
        else:
            out.append(inp)
    for folder, members in groups.items():
        members.sort(key=lambda m: _slice_number(m.path))
        out.append(Input("stack", folder, members[0].stem, members))
    return out


def _series_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_dicom(p)]


def collect_inputs(inputs: list[Path]) -> list[Input]:
    """Every input to predict: image files, volume files and DICOM series folders (a folder whose files
    are DICOM slices of one series); other folders are searched recursively. `*_mask*` files are skipped."""
    found: list[Input] = []
    for inp in inputs:
        if inp.is_file():
            if is_volume(inp):
                found.append(Input("volume", inp, Path(volume_stem(inp))))
            elif inp.suffix.lower() in IMAGE_SUFFIXES or is_dicom(inp):
                found.append(Input("image", inp, Path(inp.stem)))
            else:
                raise MedsegError(inp, f"not an image or volume file (known: {', '.join(IMAGE_SUFFIXES)}, "
                                       ".dcm, .nii.gz, .nrrd, .mha)")
        elif inp.is_dir():
            found += _walk(inp, inp)
            if not found:
                raise MedsegError(inp, "no images, volumes or DICOM series found in this folder")
        else:
            raise MedsegError(inp, "input not found")
    stems = [str(f.stem) for f in found]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise MedsegError(dup, "two inputs would write the same output (same name, different extension?)")
    return found


def _walk(folder: Path, root: Path) -> list[Input]:
    rel = folder.relative_to(root)
    dicoms = _series_files(folder)
    if len(dicoms) > 1 and not any(p.is_dir() for p in folder.iterdir()):
        return [Input("series", folder, rel if str(rel) != "." else Path(folder.name))]
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            out += _walk(p, root)
        elif is_volume(p):
            out.append(Input("volume", p, p.relative_to(root).parent / volume_stem(p)))
        elif (p.suffix.lower() in IMAGE_SUFFIXES or (p.suffix.lower() == ".dcm")) and not is_mask_name(p):
            out.append(Input("image", p, p.relative_to(root).with_suffix("")))
    return out


def _write_png16(path: Path, prob: np.ndarray) -> None:
    from PIL import Image
    with atomic_path(path) as tmp:
        Image.fromarray((np.clip(prob, 0, 1) * 65535).round().astype(np.uint16)).save(tmp, format="PNG")


def _write_tif(path: Path, values: np.ndarray) -> None:
    import tifffile
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, values.astype(np.uint8))


def _overlay_png(path: Path, image: np.ndarray, mask: np.ndarray, multiclass: bool = False) -> None:
    from PIL import Image
    side = max(mask.shape)
    pic = overlay_labels(image, mask, max_side=side) if multiclass else overlay(image, np.zeros_like(mask), mask,
                                                                                 max_side=side)
    with atomic_path(path) as tmp:
        Image.fromarray(pic).save(tmp, format="PNG")


class Writer:
    """Writes one input's outputs into the staging folder and lists them (relative paths)."""

    def __init__(self, predictor: Predictor, staging: Path, fmt: str, prob: bool, overlay: bool):
        self.p, self.staging, self.fmt, self.prob, self.overlay = predictor, staging, fmt, prob, overlay

    def _read(self, inp: Input) -> np.ndarray:
        return read_image(inp.path, self.p.plan.channels, self.p.plan.intensity)

    def image(self, inp: Input) -> list[Path]:
        img = self._read(inp)
        prob = self.p.probabilities(img)
        return self._write2d(inp, img, prob, self.p.hard(prob))

    def stack(self, inp: Input) -> list[Path]:
        members = inp.members
        probs = self._probs((self._read(m) for m in members), len(members), inp.path.name)
        labels = self.p.hard(probs)  # in 3D over the stack, as evaluate scores it
        out = []
        for m, prob, mask in zip(members, probs, labels):
            out += self._write2d(m, self._read(m) if self.overlay else None, prob.astype(np.float32), mask)
        return out

    def _write2d(self, inp: Input, img, prob: np.ndarray, mask: np.ndarray) -> list[Path]:
        fmt = "png" if self.fmt in ("auto", "png") else self.fmt
        if fmt not in ("png", "tif"):
            raise MedsegError(inp.path, f"--format {fmt} is for volumes and DICOM series; a 2D image takes png or tif")
        out = [inp.stem.with_name(inp.stem.name + (".png" if fmt == "png" else ".tif"))]
        (self.staging / out[0]).parent.mkdir(parents=True, exist_ok=True)
        if fmt == "png" and not self.p.plan.classes:
            write_mask_png(self.staging / out[0], mask)
        else:  # a multi-class run's label map with its classes' values, or a TIF of either
            (write_label_png if fmt == "png" else _write_tif)(self.staging / out[0], self.p.values(mask))
        if self.prob:
            out.append(inp.stem.with_name(inp.stem.name + "_prob.png"))
            _write_png16(self.staging / out[-1], self.p.foreground(prob))
        if self.overlay:
            out.append(inp.stem.with_name(inp.stem.name + "_overlay.png"))
            _overlay_png(self.staging / out[-1], img, mask, bool(self.p.plan.classes))
        return out

    def _probs(self, slices, n: int, label: str) -> np.ndarray:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(label, total=n)
            return self.p.volume_probabilities(slices, n, bar, task)

    def volume(self, inp: Input) -> list[Path]:
        import SimpleITK as sitk
        if self.fmt not in ("auto", "nifti"):
            raise MedsegError(inp.path, f"--format {self.fmt} does not fit a volume: volumes are written as NIfTI")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(inp.path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            raise MedsegError(inp.path, f"cannot read volume ({str(e).strip().splitlines()[-1][:200]})") from e
        if reader.GetDimension() != 3:
            raise MedsegError(inp.path, f"expected a 3D volume, this one has {reader.GetDimension()} dimensions")
        nz = reader.GetSize()[2]
        ch, intensity = self.p.plan.channels, self.p.plan.intensity
        probs = self._probs((read_image(inp.path, ch, intensity, z) for z in range(nz)), nz, inp.path.name)
        labels = self.p.hard(probs).astype(np.uint8)
        if self.p.plan.classes:
            labels = self.p.values(labels)  # each class's value (a binary run's NIfTI holds 0/1)
        del probs
        ref = sitk.Image(reader.GetSize(), sitk.sitkUInt8)
        ref.SetSpacing(reader.GetSpacing())
        ref.SetOrigin(reader.GetOrigin())
        ref.SetDirection(reader.GetDirection())
        out_img = sitk.GetImageFromArray(labels)
        out_img.CopyInformation(ref)
        rel = inp.stem.with_name(inp.stem.name + ".nii.gz")
        (self.staging / rel).parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(out_img, str(self.staging / rel), True)  # the staging folder makes it atomic
        return [rel]

    def series(self, inp: Input) -> list[Path]:
        with Progress(console=console, transient=True) as bar:
            probs, slices, spacing_z = self.p.series_probabilities(inp.path, bar, bar.add_task(inp.path.name))
        labels = self.p.hard(probs)  # a multi-class run's class indices: the SEG's segment numbers
        del probs
        fmt = "dicom-seg" if self.fmt == "auto" else self.fmt
        (self.staging / inp.stem).parent.mkdir(parents=True, exist_ok=True)
        if fmt == "dicom-seg":
            from ..io.dicomseg import write_seg
            rel = inp.stem.with_name(inp.stem.name + ".seg.dcm")
            write_seg(self.staging / rel, [s[1] for s in slices], labels, self.p.plan)
        elif fmt == "nifti":
            from ..io.dicomseg import write_series_nifti
            rel = inp.stem.with_name(inp.stem.name + ".nii.gz")
            write_series_nifti(self.staging / rel, [s[2] for s in slices],
                               self.p.values(labels) if self.p.plan.classes else labels, spacing_z)
        else:
            raise MedsegError(inp.path, f"--format {fmt} does not fit a DICOM series: use dicom-seg or nifti")
        return [rel]


def predict_files(run: str | Path, inputs: list[str | Path], out: str | Path, tta: bool | None = None,
                  quiet: bool = False, fmt: str = "auto", prob: bool = False, overlay: bool = False,
                  threshold: float | None = None, batch_size: int = 8, engine: str = "torch") -> list[Path]:
    if fmt not in FORMATS:
        raise MedsegError(None, f"unknown --format {fmt!r}; known: {', '.join(FORMATS)}")
    if batch_size < 1:
        raise MedsegError(None, f"--batch-size must be at least 1, got {batch_size}")
    check_output(out)
    predictor = Predictor.load(run, tta=tta, engine=engine, threshold=threshold, batch_size=batch_size)
    return predict_with(predictor, inputs, out, quiet, fmt, prob, overlay)


def predict_with(predictor: Predictor, inputs: list[str | Path], out: str | Path, quiet: bool = False,
                 fmt: str = "auto", prob: bool = False, overlay: bool = False) -> list[Path]:
    """`predict_files` with a loaded predictor (the service keeps one for all its requests)."""
    if fmt not in FORMATS:
        raise MedsegError(None, f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    todo = collect_inputs([Path(p) for p in inputs])
    if predictor.plan.unit == "patient" or predictor.plan.neighbours:
        todo = as_stacks(todo)
    out = Path(out)
    created = not out.exists()
    # Outputs go to a staging folder first and move into place only when every input succeeded, so a
    # failed run (a full disk included) leaves the output folder as it was.
    try:
        with writing(out, "the folder was left as it was"):
            out.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".medseg-predict-", dir=out))
            try:
                written = _write_all(Writer(predictor, staging, fmt, prob, overlay), todo, quiet)
                for rel in written:  # every folder first, so that the renames cannot stop half-way
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                for rel in written:
                    os.replace(staging / rel, out / rel)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    written = [out / rel for rel in written]
    if not quiet:
        console.print(f"wrote {len(written)} files for {len(todo)} inputs to {out} ({predictor.describe()})")
    return written


def _write_all(writer: Writer, todo: list[Input], quiet: bool) -> list[Path]:
    """Each input's outputs into the writer's staging folder; their paths relative to it."""
    written: list[Path] = []
    with Progress(console=console, disable=quiet, transient=True) as bar:
        task = bar.add_task("predicting", total=len(todo))
        for inp in todo:
            written += getattr(writer, inp.kind)(inp)
            bar.advance(task)
    return written
