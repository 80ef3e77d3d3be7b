"""Read micrographs (MRC, JPEG, PNG, TIFF), resample them and normalise them to uint8.

`prepare_micrograph` is the one step that preprocessing and picking both apply after reading, so a
micrograph seen at picking time is byte-for-byte the micrograph the model was trained on:
float32 (H, W) -> resample by `scale` (anti-aliased when shrinking) -> clip to median +-
clip_sigma robust sigmas and map to 0..255.

Arrays are indexed [row, column]: x = column, y = row, row 0 is the first row of the file as read.
"""
import warnings
from pathlib import Path

import mrcfile
import numpy as np
from PIL import Image

from common.errors import InputError

MICROGRAPH_EXTENSIONS = (".mrc", ".mrcs", ".jpg", ".jpeg", ".png", ".tif", ".tiff")
MRC_EXTENSIONS = (".mrc", ".mrcs")
DECODE_ERRORS = (OSError, ValueError, EOFError, Image.DecompressionBombError)
STATS_SAMPLES = 1 << 18  # pixels used for the median/MAD; a fixed stride keeps it deterministic


def list_micrographs(folder):
    """Sorted micrograph files (any case of MICROGRAPH_EXTENSIONS) directly inside `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"micrograph folder {folder} not found; pass the folder that holds the "
                         f"{'/'.join(MICROGRAPH_EXTENSIONS)} files")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in MICROGRAPH_EXTENSIONS)


def _unreadable(path, reason):
    reason = " ".join(str(reason).split())
    return InputError(f"cannot read micrograph {path}: {reason}; re-export it or remove it from the folder")


def _open_mrc(path):
    """mrcfile.open in permissive mode; on failure, mrcfile's first header complaint is the reason.

    Complaints about a file that still opens are passed on as warnings.
    """
    with warnings.catch_warnings(record=True) as complaints:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.open(path, permissive=True)
        except (OSError, ValueError, EOFError) as error:
            raise ValueError(_first_complaint(complaints, error)) from error
    if mrc.data is None:
        mrc.close()
        raise ValueError(_first_complaint(complaints, "its data block does not match its header"))
    for complaint in complaints:
        warnings.warn(complaint.message, stacklevel=4)
    return mrc


def _first_complaint(complaints, error):
    return f"{complaints[0].message} ({error})" if complaints else str(error)


def _read_mrc(path):
    with _open_mrc(path) as mrc:
        data = mrc.data
    if data.ndim == 3:
        warnings.warn(f"{path} is a stack of {data.shape[0]} frames; using the first frame only",
                      stacklevel=3)
        data = data[0]
    return np.array(data, dtype=np.float32)


def _read_image(path):
    with Image.open(path) as image:
        if getattr(image, "n_frames", 1) > 1:
            warnings.warn(f"{path} holds {image.n_frames} frames; using the first frame only",
                          stacklevel=3)
        if image.mode == "P" or len(image.getbands()) > 1:
            image = image.convert("L")
        return np.asarray(image).astype(np.float32)


def read_pixel_size(path):
    """Å per pixel from an MRC header (mrcfile's voxel size), or None: not an MRC file, 0 (unset), exactly 1
    with the cell equal to the grid (what writers put when they know no pixel size), or a header that cannot
    be read (reading the pixels then names the damage)."""
    path = Path(path)
    if path.suffix.lower() not in MRC_EXTENSIONS:
        return None
    try:  # strict: a damaged header raises instead of warning (warning filters are not thread-safe)
        with mrcfile.open(path, header_only=True) as mrc:
            size = float(mrc.voxel_size.x)
            placeholder = float(mrc.header.cella.x) == float(mrc.header.mx) and size == 1.0
    except DECODE_ERRORS + (AttributeError,):
        return None
    if placeholder:
        return None
    return size if np.isfinite(size) and size > 0 else None


def dataset_pixel_size(paths, override=None):
    """The Å/px of a set of micrographs: `override` (the user's), else their MRC headers, which must
    agree within 1%; None where no header gives one (JPEG/PNG, or a header with 0)."""
    if override is not None:
        if not override > 0:
            raise InputError(f"--pixel-size {override} must be positive (Å per pixel of the micrographs)")
        return float(override)
    sizes = {str(path): size for path in paths if (size := read_pixel_size(path)) is not None}
    if not sizes:
        return None
    low, high = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
    if sizes[high] > 1.01 * sizes[low]:
        raise InputError(f"micrographs have different pixel sizes ({low}: {sizes[low]:g} Å/px, {high}: "
                         f"{sizes[high]:g} Å/px); preprocess each pixel size separately, or pass --pixel-size")
    return float(np.median(list(sizes.values())))


def read_micrograph(path):
    """The micrograph at `path` as float32 (H, W); the first frame of a stack, with a warning."""
    path = Path(path)
    reader = _read_mrc if path.suffix.lower() in MRC_EXTENSIONS else _read_image
    try:
        pixels = reader(path)
    except DECODE_ERRORS as error:
        raise _unreadable(path, error) from error
    if pixels.ndim != 2 or min(pixels.shape) == 0:
        raise _unreadable(path, f"expected a 2-D image, found shape {pixels.shape}")
    if not np.isfinite(pixels).all():
        raise _unreadable(path, "it contains NaN or infinite pixels")
    return pixels


def rescale(image, scale):
    """`image` resampled to round(size * scale) on each axis, anti-aliased when shrinking.

    Pillow's BILINEAR on float32: a triangle filter widened by 1/scale when shrinking, so fine
    noise averages out instead of aliasing. (torch's antialiased interpolate gives the same pixels
    about 3x faster but deadlocks in workers forked after the parent has used torch's threads.)
    Rounding makes the exact scale of each axis new_size / size; the pixel at index c lands at
    (c + 0.5) * that - 0.5, within half a resampled pixel of c * scale.
    """
    if scale == 1:
        return image
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    height, width = image.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    pixels = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    return np.array(pixels.resize(size, Image.Resampling.BILINEAR))


def _robust_centre_and_sigma(image):
    stride = max(1, int(np.sqrt(image.size / STATS_SAMPLES)))
    sample = image[::stride, ::stride].astype(np.float64).ravel()
    median = np.median(sample)
    sigma = 1.4826 * np.median(np.abs(sample - median))
    if sigma == 0:
        sigma = sample.std()
    return median, sigma


def normalize_to_uint8(image, clip_sigma=4.0):
    """`image` clipped to median +- clip_sigma robust sigmas (1.4826 MAD) and mapped to 0..255.

    Falls back to the standard deviation when the MAD is 0; a constant image becomes all 128.
    The statistics come from a fixed strided subsample, so the result is deterministic.
    """
    median, sigma = _robust_centre_and_sigma(image)
    if sigma == 0:
        return np.full(image.shape, 128, dtype=np.uint8)
    gain = 255.0 / (2 * clip_sigma * sigma)
    offset = 127.5 - median * gain
    mapped = np.multiply(image, np.float32(gain), dtype=np.float32)
    mapped += np.float32(offset)
    np.clip(mapped, 0, 255, out=mapped)
    return np.rint(mapped, out=mapped).astype(np.uint8)


def prepare_micrograph(image, scale, clip_sigma):
    """Rescale then normalise to uint8: what preprocessing and picking both do to a micrograph.

    Returns (uint8 image, (scale_x, scale_y)) with the exact per-axis scales of the resampled grid.
    """
    height, width = image.shape
    prepared = normalize_to_uint8(rescale(image, scale), clip_sigma=clip_sigma)
    return prepared, (prepared.shape[1] / width, prepared.shape[0] / height)
