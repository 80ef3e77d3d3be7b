"""What the network sees: uint8 patches -> normalised float windows at the network's input size.

Training and picking both go through `NetworkInput`, so a window scored at picking time is normalised
exactly as the training patches were. The spec travels in the checkpoint (`network_input`).

Normalisations (`data.normalization`):
- "micrograph": the per-micrograph normalisation of preprocessing kept as it is, (x - 127.5) / g with
  g = `grey_levels`, the grey levels of one robust sigma (255 / (2 clip_sigma): the uint8 range spans
  median +- clip_sigma sigmas). A faint blob in a quiet window stays faint instead of being stretched
  to a patch's full contrast.
- "patch_mean": each window's mean subtracted, the micrograph's grey scale (g levels per unit) kept:
  blind to offsets (ice gradients, carbon), not to contrast.
- "patch": zero mean, unit std per window, blind to intensity offsets between micrographs and between
  ice and carbon; the std is floored at one grey level, so a flat window maps to zeros.
"""
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from common.errors import InputError

NORMALIZATIONS = ("patch", "patch_mean", "micrograph")
MICROGRAPH_CENTRE = 127.5  # the median grey of a normalised micrograph


def grey_levels_per_sigma(clip_sigma: float) -> float:
    """Grey levels of one robust sigma in a micrograph normalised to median +- clip_sigma sigmas -> 0..255."""
    return 255.0 / (2.0 * clip_sigma)


@dataclass(frozen=True)
class NetworkInput:
    """How uint8 patches become the network's input: its size, the normalisation and its grey scale."""
    input_size: int
    normalization: str
    grey_levels: float

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise InputError(f"data.normalization {self.normalization!r} is not one of {', '.join(NORMALIZATIONS)}; "
                             f"'patch' standardises each patch, 'micrograph' keeps preprocessing's grey scale")

    @classmethod
    def for_patches(cls, input_size, normalization, patch_size, clip_sigma) -> "NetworkInput":
        """The spec of a run: `input_size` (None = the patch size) and the grey scale of `clip_sigma`."""
        return cls(int(input_size or patch_size), normalization, grey_levels_per_sigma(clip_sigma))

    def to_dict(self) -> dict:
        return asdict(self)


def to_float(patches):
    """uint8 patches [B, S, S] or [B, 1, S, S] -> float32 [B, 1, S, S], grey levels as they are."""
    x = patches.float()
    return x.unsqueeze(1) if x.dim() == 3 else x


def normalise(x, spec: NetworkInput, mean=None, std=None):
    """float windows [B, 1, s, s] in grey levels -> `spec`'s normalisation, with each window's `mean` and
    `std` ([B, 1, 1, 1], grey levels) given, or else taken from `x` itself. Picking passes them when it
    sees the windows shrunk but their statistics come from full resolution."""
    if spec.normalization == "micrograph":
        return (x - MICROGRAPH_CENTRE) / spec.grey_levels
    if spec.normalization == "patch_mean":
        mean = x.mean(dim=(1, 2, 3), keepdim=True) if mean is None else mean
        return (x - mean) / spec.grey_levels
    if mean is None:
        std, mean = torch.std_mean(x, dim=(1, 2, 3), keepdim=True, correction=0)
    return (x - mean) / std.clamp(min=1.0)


def resize(x, size):
    """Resample [B, C, S, S] to [B, C, size, size] (bilinear, antialiased when shrinking)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def network_input(patches, spec: NetworkInput, device):
    """uint8 patches -> the network's float input [B, 1, s, s] on `device`: normalised, then resized."""
    return resize(normalise(to_float(patches.to(device, non_blocking=True)), spec), spec.input_size)
