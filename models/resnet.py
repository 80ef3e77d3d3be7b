"""Patch classifiers that return one particle logit per patch (shape [B]).

`build_model` gives a torchvision ResNet-18/34/50 whose stem takes single-channel micrograph patches
and whose head is Dropout + Linear(features, 1), or `resnet_tiny`: the same residual design at a
quarter of ResNet-18's widths (16-32-64-128, two BasicBlocks per stage, ~0.7 M parameters) with a
5x5 stride-2 stem and no max-pool, sized to train on a 2-core CPU at 64 px. All models end in
adaptive average pooling, so they take any patch size; channels_last and bf16 autocast work.
"""
import torch
from torch import nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, conv1x1

TORCHVISION_BACKBONES = {"resnet18": models.resnet18, "resnet34": models.resnet34, "resnet50": models.resnet50}
BACKBONES = (*TORCHVISION_BACKBONES, "resnet_tiny")


def logit_head(in_features, dropout):
    """Dropout + one output unit, flattened to a logit per patch."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, 1), nn.Flatten(0))


def single_channel_stem(conv, in_channels=1):
    """`conv` rebuilt for `in_channels` inputs (micrographs are grey), He-initialised as torchvision's."""
    stem = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     bias=conv.bias is not None)
    nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
    return stem


class TinyResNet(nn.Module):
    """ResNet-18's layout at widths 16-32-64-128 for fast CPU training on small patches."""

    def __init__(self, in_channels=1, dropout=0.3, widths=(16, 32, 64, 128), blocks_per_stage=2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 5, stride=2, padding=2, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, in_width = [], widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or in_width != width:
                downsample = nn.Sequential(conv1x1(in_width, width, stride), nn.BatchNorm2d(width))
            blocks = [BasicBlock(in_width, width, stride, downsample)]
            blocks += [BasicBlock(width, width) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_width = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = logit_head(in_width, dropout)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def build_model(backbone="resnet18", dropout=0.3, in_channels=1):
    """A patch classifier returning logits [B], trained from scratch (micrographs are not ImageNet)."""
    if backbone == "resnet_tiny":
        return TinyResNet(in_channels=in_channels, dropout=dropout)
    if backbone not in TORCHVISION_BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    net = TORCHVISION_BACKBONES[backbone](weights=None)
    net.conv1 = single_channel_stem(net.conv1, in_channels)
    net.fc = logit_head(net.fc.in_features, dropout)
    return net
