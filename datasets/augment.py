"""Batched augmentation of micrograph patches on the device (CPU or CUDA), no per-sample Python.

Order in the training step: `models.input.network_input` (uint8 -> normalised float [B, 1, s, s] at
the network's input size), then `weak_augment` / `strong_augment`.

- weak: each patch gets one of the 8 symmetries of the square (rot90 by k = 0..3, with or without a
  mirror flip), then an integer shift of up to `max_shift` px per axis (default S // 16) with
  reflect padding (the border is mirrored, as F.pad(mode="reflect"), rather than wrapped around).
  Both are one gather through a per-sample index map.
- strong: weak, then a Gaussian blur (low-pass) with a random sigma per patch, contrast and
  brightness jitter, Gaussian noise with a random sigma per patch (lower SNR), and cutout (one random
  square per patch, filled with the patch mean).

Magnitudes are in units of the normalised patch (about one robust sigma of the micrograph). Every
random draw comes from the optional `generator`, which must live on the device of `x`; a seeded
generator makes results reproducible.
"""
import functools
import math

import torch
import torch.nn.functional as F

DIHEDRAL_TRANSFORMS = 8


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
