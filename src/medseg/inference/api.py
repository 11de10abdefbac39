"""Python API: `medseg.load(RUN).predict(array_or_path)` -> masks with their geometry.

The same Predictor, threshold and post-processing as `medseg predict`, without writing files. A multi-class
run returns the label map (each class's value) and the per-class probabilities (class axis first,
background at 0), with the class names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MedsegError
from ..io.images import is_volume, read_image
from .predictor import Predictor


@dataclass
class Prediction:
    mask: np.ndarray  # bool, the input's shape (H x W, or Z x Y x X for volumes); multi-class: uint8 class values
    prob: np.ndarray  # float32 foreground probability, same shape; multi-class: (K + 1) x that shape, per class
    spacing: tuple[float, ...] | None = None  # volumes: SimpleITK order (x, y, z), mm
    origin: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None
    classes: list[dict] | None = None  # multi-class: [{"name", "value"}] of prob[1:], in order

    @property
    def shape(self) -> tuple[int, ...]:
        return self.mask.shape


class Model:
    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.plan = predictor.plan

    def predict(self, x: np.ndarray | str | Path) -> Prediction:
        """An image (H x W or C x H x W array, uint8 or float in [0, 1]), a stack of slices (Z x H x W, for
        1-channel runs), or a path: image file, volume file or DICOM series folder."""
        p = self.predictor
        if isinstance(x, (str, Path)):
            return self.predict_path(Path(x))
        arr = np.asarray(x)
        arr = arr.astype(np.float32) / 255 if arr.dtype == np.uint8 else arr.astype(np.float32)
        ch = int(p.plan.channels)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim == 3 and arr.shape[0] == ch:
            # 2.5D and 3D runs see one image as a stack of one slice (its edge repeated), as `medseg predict` does
            stacked = p.three_d or int(p.plan.neighbours or 0)
            prob = p.volume_probabilities(iter([arr]), 1)[0].astype(np.float32) if stacked else p.probabilities(arr)
        elif arr.ndim == 3 and ch == 1:
            prob = p.volume_probabilities(iter(arr[:, None]), arr.shape[0]).astype(np.float32)
        else:
            raise MedsegError(None, f"expected H x W, {ch} x H x W or Z x H x W input, got shape {arr.shape}")
        return self._result(prob)

    def _result(self, prob: np.ndarray, **geometry) -> Prediction:
        """Probabilities (a multi-class run's with the class axis third from the end) -> the Prediction."""
        p = self.predictor
        hard = p.hard(prob)
        if not p.plan.classes:
            return Prediction(hard, prob.astype(np.float32), **geometry)
        classes = [{"name": c["name"], "value": c["value"]} for c in p.plan.classes]
        per_class = np.moveaxis(np.asarray(prob, dtype=np.float32), -3, 0)
        return Prediction(p.values(hard), per_class, classes=classes, **geometry)

    def predict_path(self, path: Path) -> Prediction:
        import SimpleITK as sitk
        p = self.predictor
        ch, intensity = p.plan.channels, p.plan.intensity
        if not path.exists():
            raise MedsegError(path, "input not found")
        if path.is_dir():
            from ..io.dicomseg import series_geometry
            prob, slices, spacing_z = p.series_probabilities(path)
            return self._result(prob, **series_geometry([s[2] for s in slices], spacing_z))
        if is_volume(path):
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            nz = reader.GetSize()[2]
            prob = p.volume_probabilities((read_image(path, ch, intensity, z) for z in range(nz)), nz)
            return self._result(prob, spacing=reader.GetSpacing(), origin=reader.GetOrigin(),
                                direction=reader.GetDirection())
        return self.predict(read_image(path, ch, intensity))


def load(run: str | Path, tta: bool | None = None, engine: str = "torch", threshold: float | None = None) -> Model:
    return Model(Predictor.load(run, tta=tta, engine=engine, threshold=threshold))
