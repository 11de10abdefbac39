"""Data-set adapters, one module per published layout; importing this package registers them all."""

from . import busi, cbis, folder, ircadb, lgg, nifti  # noqa: F401  (registration)
from .base import Adapter, DataSet, Item, adapters, load_dataset, register

__all__ = ["Adapter", "DataSet", "Item", "adapters", "load_dataset", "register"]
