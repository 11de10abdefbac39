"""medseg: U-Net segmentation for medical image data sets in their published layouts."""

__version__ = "0.1.0"
