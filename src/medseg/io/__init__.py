"""Image and mask files: readers, DICOM SEG and NIfTI writers."""
