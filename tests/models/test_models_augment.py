"""Backbones, the EMA teacher and the batched augmentations."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import InputError
from datasets.augment import cutout, gaussian_blur, strong_augment, weak_augment
from models import BACKBONES, ModelEMA, build_model
from models.input import NetworkInput, grey_levels_per_sigma, network_input, resize
from models.resnet import single_channel_stem


def dihedral_views(patch):
    """The 8 symmetries of a [C, S, S] patch, built independently of datasets.augment."""
    return [torch.rot90(image, k, dims=(-2, -1)) for image in (patch, patch.flip(-1)) for k in range(4)]


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbones_give_one_logit_per_patch(backbone):
    model = build_model(backbone, dropout=0.3)
    for size in (64, 128):
        assert model(torch.randn(2, 1, size, size)).shape == (2,)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match="resnet18, resnet34, resnet50, resnet_tiny"):
        build_model("vgg16")


def test_single_channel_stem_keeps_the_geometry_of_the_rgb_stem():
    rgb = nn.Conv2d(3, 4, 7, stride=2, padding=3, bias=False)
    stem = single_channel_stem(rgb)
    assert stem.weight.shape == (4, 1, 7, 7) and (stem.stride, stem.padding) == (rgb.stride, rgb.padding)
    assert stem(torch.randn(1, 1, 16, 16)).shape == (1, 4, 8, 8)


def test_compact_backbone_runs_channels_last_under_bf16_autocast():
    model = build_model("resnet_tiny").to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 64, 64).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    logits.float().sum().backward()
    assert logits.shape == (4,) and torch.isfinite(logits.float()).all()
    assert model.stem[0].weight.grad is not None


class Wrapped(nn.Module):
    """Stands in for DistributedDataParallel, which keeps the model as `.module`."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def test_ema_moves_by_the_decay_formula_and_copies_buffers():
    student = build_model("resnet_tiny")
    ema = ModelEMA(Wrapped(student), decay=0.9)
    teacher_before = ema.module.fc[1].weight.clone()
    with torch.no_grad():
        student.fc[1].weight.add_(1.0)
        student.stem[1].running_mean.fill_(2.0)
    ema.update(Wrapped(student))
    expected = 0.9 * teacher_before + 0.1 * student.fc[1].weight
    torch.testing.assert_close(ema.module.fc[1].weight, expected)
    assert torch.equal(ema.module.stem[1].running_mean, torch.full((16,), 2.0))
    assert not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())

    restored = ModelEMA(build_model("resnet_tiny"))
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.module.fc[1].weight, expected)


def spec(normalization, input_size=16, clip_sigma=4.0):
    return NetworkInput.for_patches(input_size, normalization, patch_size=16, clip_sigma=clip_sigma)


def test_patch_normalisation_standardises_each_patch_and_keeps_flat_patches_finite():
    patches = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    patches[2] = 7
    x = network_input(patches, spec("patch"), "cpu")
    assert x.shape == (3, 1, 16, 16) and x.dtype == torch.float32
    torch.testing.assert_close(x[:2].mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(x[:2].std(dim=(1, 2, 3), correction=0), torch.ones(2))
    assert torch.equal(x[2], torch.zeros(1, 16, 16))


def test_micrograph_normalisation_keeps_the_grey_scale_so_a_faint_patch_stays_faint():
    patches = torch.full((2, 16, 16), 128, dtype=torch.uint8)
    patches[1, 6:10, 6:10] = 120  # a faint dark blob in a quiet window
    x = network_input(patches, spec("micrograph"), "cpu")
    # clip_sigma 4: the uint8 range spans 8 robust sigmas, so one sigma is 255 / 8 grey levels
    torch.testing.assert_close(x, (patches.float()[:, None] - 127.5) / 31.875)
    assert x[1].min() == pytest.approx(-7.5 / 31.875) and x[1].max() == pytest.approx(0.5 / 31.875)
    assert network_input(patches, spec("patch"), "cpu")[1].min() < -3  # per-patch standardising stretches it
    assert grey_levels_per_sigma(2.0) == pytest.approx(63.75)  # a tighter clip: more grey levels per sigma
    with pytest.raises(InputError, match="data.normalization 'window' is not one of"):
        spec("window")


def test_network_input_resizes_after_normalising():
    patches = torch.randint(0, 256, (2, 16, 16), dtype=torch.uint8)
    x = network_input(patches, spec("patch_mean", input_size=8), "cpu")
    full = patches.float()[:, None]
    torch.testing.assert_close(x, resize((full - full.mean(dim=(1, 2, 3), keepdim=True)) / 31.875, 8))
    assert x.shape == (2, 1, 8, 8)


def test_resize_shrinks_and_keeps_a_constant_patch_constant():
    x = torch.full((2, 1, 128, 128), 3.0)
    small = resize(x, 64)
    assert small.shape == (2, 1, 64, 64)
    torch.testing.assert_close(small, torch.full_like(small, 3.0))
    assert resize(x, 128) is x


def test_weak_without_shift_is_exactly_the_dihedral_group():
    x = torch.randn(256, 1, 12, 12)
    out = weak_augment(x, seeded(), max_shift=0)
    assert out.shape == x.shape and out.dtype == x.dtype
    used = set()
    for patch, augmented in zip(x, out):
        matches = [k for k, view in enumerate(dihedral_views(patch)) if torch.equal(view, augmented)]
        assert len(matches) == 1
        used.add(matches[0])
    assert used == set(range(8))


def test_weak_with_shift_is_a_dihedral_view_shifted_by_at_most_max_shift():
    size, max_shift = 16, 2
    x = torch.randn(24, 1, size, size)
    out = weak_augment(x, seeded(1), max_shift=max_shift)
    shifts_seen = set()
    for patch, augmented in zip(x, out):
        found = []
        for view in dihedral_views(patch):
            padded = F.pad(view[None], (max_shift,) * 4, mode="reflect")[0]
            for dy in range(-max_shift, max_shift + 1):
                for dx in range(-max_shift, max_shift + 1):
                    top, left = max_shift - dy, max_shift - dx
                    if torch.equal(padded[:, top:top + size, left:left + size], augmented):
                        found.append((dy, dx))
        assert len(found) == 1
        shifts_seen.add(found[0])
    assert len(shifts_seen) > 5


def test_blur_with_zero_sigma_is_identity_and_blur_smooths():
    x = torch.randn(3, 1, 16, 16)
    sigma = torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1, 1)
    blurred = gaussian_blur(x, sigma, max_sigma=2.0)
    torch.testing.assert_close(blurred[0], x[0])
    assert blurred[2].std() < blurred[1].std() < x[1].std()


def test_cutout_fills_one_square_with_the_patch_mean():
    x = torch.randn(32, 1, 16, 16)
    out = cutout(x, 0.5, seeded(2))
    for patch, augmented in zip(x, out):
        changed = (patch != augmented)[0].nonzero()
        if len(changed):
            side = int(changed[:, 0].max() - changed[:, 0].min()) + 1
            assert side <= 8 and len(changed) <= side * side
            assert torch.allclose(augmented[0][(patch != augmented)[0]], patch.mean())


def test_strong_differs_from_weak_and_is_seeded():
    x = torch.randn(8, 1, 32, 32)
    strong = strong_augment(x, seeded(3))
    weak = weak_augment(x, seeded(3))
    assert strong.shape == x.shape and strong.dtype == x.dtype
    assert torch.isfinite(strong).all()
    assert (strong - weak).abs().mean() > 0.1
    assert torch.equal(strong, strong_augment(x, seeded(3)))
    assert torch.equal(weak, weak_augment(x, seeded(3)))
    assert not torch.equal(strong, strong_augment(x, seeded(4)))


def test_strong_with_all_jitter_off_reduces_to_weak():
    x = torch.randn(8, 1, 32, 32)
    strong = strong_augment(x, seeded(5), blur_sigma=(0.0, 0.0), contrast=(1.0, 1.0), brightness=0.0,
                            noise_sigma=(0.0, 0.0), cutout_fraction=0.0)
    torch.testing.assert_close(strong, weak_augment(x, seeded(5)))
