"""Batched augmentation of micrograph patches on the device (CPU or CUDA), no per-sample Python.

Order in the training step: `to_float` (uint8 -> float [B, 1, S, S], standardised per patch or per
micrograph), then
`resize` where a configuration trains at a smaller size, then `weak_augment` / `strong_augment`.

- weak: each patch gets one of the 8 symmetries of the square (rot90 by k = 0..3, with or without a
  mirror flip), then an integer shift of up to `max_shift` px per axis (default S // 16) with
  reflect padding (the border is mirrored, as F.pad(mode="reflect"), rather than wrapped around).
  Both are one gather through a per-sample index map.
- strong: weak, then a Gaussian blur (low-pass) with a random sigma per patch, contrast and
  brightness jitter, Gaussian noise with a random sigma per patch (lower SNR), and cutout (one random
  square per patch, filled with the patch mean).

Magnitudes are in units of the standardised patch (std 1). Every random draw comes from the optional
`generator`, which must live on the device of `x`; a seeded generator makes results reproducible.
"""
import functools
import math

import torch
import torch.nn.functional as F

DIHEDRAL_TRANSFORMS = 8


NORMALIZATIONS = ("patch", "patch_mean", "micrograph")
MICROGRAPH_CENTRE, MICROGRAPH_LEVELS = 127.5, 32.0


def to_float(patches, normalization="patch"):
    """uint8 patches [B, S, S] or [B, 1, S, S] -> float32 [B, 1, S, S].

    "patch": zero mean, unit std per patch (equal to (x/255 - mean)/std per patch), blind to intensity
    offsets between micrographs and between ice and carbon; the std is floored at one grey level, so a
    flat patch maps to zeros instead of amplified quantisation noise.
    "micrograph": the per-micrograph normalisation of preprocessing kept as it is, (x - 127.5) / 32:
    the median grey maps to 0 and, with the default clip of 4 robust sigmas to 0..255, one sigma to 1.
    A faint blob in a quiet window then stays faint instead of being stretched to a patch's full contrast.
    "patch_mean": each patch's mean subtracted, the micrograph's grey scale (32 levels per unit) kept:
    blind to offsets (ice gradients, carbon), not to contrast.
    Picking must normalise each window the same way, by calling this function.
    """
    x = patches.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return normalise(x, normalization)


def normalise(x, normalization, mean=None, std=None):
    """float windows [B, 1, s, s] -> `to_float`'s normalisation, with each window's `mean` and `std`
    ([B, 1, 1, 1], grey levels) given, or else taken from `x` itself. Picking passes them when it sees
    the windows shrunk but their statistics come from full resolution."""
    if normalization == "micrograph":
        return (x - MICROGRAPH_CENTRE) / MICROGRAPH_LEVELS
    if normalization == "patch_mean":
        mean = x.mean(dim=(1, 2, 3), keepdim=True) if mean is None else mean
        return (x - mean) / MICROGRAPH_LEVELS
    if normalization != "patch":
        raise ValueError(f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
    if mean is None:
        std, mean = torch.std_mean(x, dim=(1, 2, 3), keepdim=True, correction=0)
    return (x - mean) / std.clamp(min=1.0)


def resize(x, size):
    """Resample [B, C, S, S] to [B, C, size, size] (bilinear, antialiased when shrinking)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@functools.lru_cache(maxsize=8)
def dihedral_index_maps(size, device):
    """[8, S, S] flat source indices; map k gives rot90(patch, k % 4), of the mirrored patch if k >= 4."""
    base = torch.arange(size * size, device=device).view(size, size)
    views = [torch.rot90(image, k, dims=(0, 1)) for image in (base, base.flip(1)) for k in range(4)]
    return torch.stack(views)


def reflect_index(index, size):
    """Indices in (-size, 2 size - 1) mirrored into [0, size), the edge pixel not repeated."""
    return (size - 1) - ((size - 1) - index.abs()).abs()


def uniform(low, high, batch, generator, like):
    """[B, 1, 1, 1] uniform draws in [low, high) on the device and dtype of `like`."""
    draw = torch.rand(batch, 1, 1, 1, generator=generator, device=like.device, dtype=like.dtype)
    return low + (high - low) * draw


def weak_augment(x, generator=None, max_shift=None):
    """A random square symmetry and a reflect-padded integer shift (|dy|, |dx| <= max_shift) per patch."""
    batch, channels, size, width = x.shape
    if size != width:
        raise ValueError(f"weak_augment needs square patches, got {size}x{width}")
    max_shift = size // 16 if max_shift is None else max_shift
    transform = torch.randint(DIHEDRAL_TRANSFORMS, (batch,), generator=generator, device=x.device)
    shift = torch.randint(-max_shift, max_shift + 1, (batch, 2), generator=generator, device=x.device)
    grid = torch.arange(size, device=x.device)
    rows = reflect_index(grid - shift[:, :1], size)
    cols = reflect_index(grid - shift[:, 1:], size)
    index = dihedral_index_maps(size, x.device)[transform[:, None, None], rows[:, :, None], cols[:, None, :]]
    flat = x.reshape(batch, channels, size * size)
    return flat.gather(2, index.view(batch, 1, -1).expand(-1, channels, -1)).view_as(x)


def gaussian_blur(x, sigma, max_sigma):
    """Separable Gaussian blur with its own sigma [B, 1, 1, 1] per patch (sigma 0 leaves it as is)."""
    batch, channels, size, _ = x.shape
    radius = max(1, math.ceil(3.0 * max_sigma))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-taps.square() / (2.0 * sigma.reshape(batch, 1).clamp(min=1e-3).square()))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    planes = F.pad(x.reshape(1, batch * channels, size, size), (radius,) * 4, mode="reflect")
    planes = F.conv2d(planes, kernel[:, None, :, None], groups=batch * channels)
    planes = F.conv2d(planes, kernel[:, None, None, :], groups=batch * channels)
    return planes.view_as(x)


def cutout(x, max_fraction, generator):
    """Fill one random square per patch (side 0..max_fraction * S) with the patch mean."""
    batch, _, size, _ = x.shape
    side = torch.randint(0, int(max_fraction * size) + 1, (batch, 1), generator=generator, device=x.device)
    corner = (torch.rand(batch, 2, generator=generator, device=x.device) * (size - side + 1)).floor()
    grid = torch.arange(size, device=x.device)
    inside_rows = (grid >= corner[:, :1]) & (grid < corner[:, :1] + side)
    inside_cols = (grid >= corner[:, 1:]) & (grid < corner[:, 1:] + side)
    square = (inside_rows[:, :, None] & inside_cols[:, None, :]).unsqueeze(1)
    return torch.where(square, x.mean(dim=(1, 2, 3), keepdim=True), x)


def strong_augment(x, generator=None, max_shift=None, blur_sigma=(0.0, 1.5), contrast=(0.7, 1.3),
                   brightness=0.2, noise_sigma=(0.0, 0.5), cutout_fraction=0.25):
    """Weak augmentation followed by blur, contrast/brightness jitter, noise and cutout, per patch."""
    batch = x.shape[0]
    x = weak_augment(x, generator, max_shift)
    x = gaussian_blur(x, uniform(*blur_sigma, batch, generator, x), blur_sigma[1])
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(*contrast, batch, generator, x) + mean
    x = x + uniform(-brightness, brightness, batch, generator, x)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x = x + noise * uniform(*noise_sigma, batch, generator, x)
    return cutout(x, cutout_fraction, generator)
