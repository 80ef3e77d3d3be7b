"""Where patches are cut: sliding windows and the COCO PU split."""
