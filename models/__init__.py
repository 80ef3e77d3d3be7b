"""Patch classifiers: torchvision ResNets with a 1-channel stem, a compact CPU backbone, EMA."""
from models.ema import ModelEMA
from models.resnet import BACKBONES, build_model

__all__ = ["BACKBONES", "ModelEMA", "build_model"]
