"""Data-set adapters, one module per published layout; importing this package registers them all."""

from pathlib import Path

from . import busi, cbis, folder, ircadb, lgg, nifti  # noqa: F401  (registration)
from .base import Adapter, DataSet, Item, adapters, load_dataset, register
from ..errors import MedsegError

__all__ = ["CHANNEL_NAMES", "Adapter", "DataSet", "Item", "adapters", "channel_names", "load_dataset", "register"]

# nnU-Net normalises by channel name: "CT" -> dataset-wide CT clipping and z-score; anything else -> per-image z-score
CHANNEL_NAMES: dict[str, tuple[str, ...]] = {
    "lgg": ("pre-contrast", "FLAIR", "post-contrast"),
    "busi": ("ultrasound",),
    "ircadb": ("CT",),
    "cbis": ("mammography",),
}


def channel_names(ds: DataSet) -> list[str]:
    """Names of the input channels: the layout's own, or an MSD / nnU-Net folder's dataset.json
    ("channel_names" or "modality"); generic names when neither fits the channel count."""
    names = CHANNEL_NAMES.get(ds.layout)
    json_path = Path(ds.root) / "dataset.json"
    if names is None and json_path.is_file():
        try:
            names = nifti.channel_names(nifti.read_json(json_path), json_path)
        except MedsegError:
            names = None
    if names and len(names) == ds.channels:
        return list(names)
    return ["image"] if ds.channels == 1 else [f"image{i}" for i in range(ds.channels)]
