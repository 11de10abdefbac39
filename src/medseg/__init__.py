"""medseg: U-Net segmentation for medical image data sets in their published layouts.

    import medseg
    result = medseg.load("runs/lgg").predict("patient_slice.tif")   # .mask, .prob, geometry
"""

__version__ = "0.1.0"


def load(run, **kwargs):
    """A trained run ready to predict (see medseg.api); torch is imported only here, not on `import medseg`."""
    from .api import load as _load
    return _load(run, **kwargs)
