"""Original micrograph pixels <-> pixels of the rescaled micrograph that patches are cut from.

Pixel centres map onto pixel centres: original pixel c lies at (c + 0.5) * scale - 0.5 in the
rescaled micrograph, with each axis's exact scale (rescaled size / original size).
"""
import numpy as np


def to_scaled(xy, scale_xy):
    """Original-pixel coordinates -> rescaled-micrograph pixels (pixel centres map onto pixel centres)."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) * np.asarray(scale_xy) - 0.5


def to_original(xy, scale_xy):
    """Rescaled-micrograph pixels -> original-micrograph pixels (inverse of to_scaled)."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) / np.asarray(scale_xy) - 0.5
