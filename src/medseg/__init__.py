"""medseg: U-Net segmentation for medical image data sets in their published layouts.

    import medseg
    result = medseg.load("runs/lgg").predict("patient_slice.tif")   # .mask, .prob, geometry
"""

from .version import __version__  # noqa: F401


def load(run, **kwargs):
    """A trained run ready to predict (see medseg.inference.api); torch is imported only here, not on `import medseg`."""
    from .inference.api import load as _load
    return _load(run, **kwargs)
