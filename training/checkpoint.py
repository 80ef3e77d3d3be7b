"""Checkpoints: everything a run needs to resume, and everything picking needs to reproduce preprocessing.

A checkpoint is a dict saved with torch.save, written to `<name>.tmp` and moved into place with
os.replace (never half a file). Keys: `format`, `model`, `optimizer`, `scheduler`, `ema` (or None),
`epoch`, `step`, `step_in_epoch`, `best_metric`, `best_epoch`, `config`, `preprocessing`, `prior`,
`rng`, `git_sha`, and `average` (model.average_from's weight average, or None) with `averaged_epochs`.
`preprocessing` holds what picking needs: patch_size, input_size (the size the network
sees), target_diameter, particle_diameter_px, scale, native_resolution, clip_sigma and the patch
normalisation ("per_patch_standardise").
"""
import os
import pickle
from pathlib import Path

import torch

from datasets.errors import InputError
from models.resnet import build_model

FORMAT = "cryopu-checkpoint-v1"


def save_checkpoint(path, state):
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save({"format": FORMAT, **state}, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path, map_location="cpu"):
    """Load one of our checkpoints; anything else is an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} not found; pass the best.pt or last.pt of a training run")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise InputError(f"checkpoint {path} cannot be read ({type(exc).__name__}); it is corrupt or not "
                         f"a PyTorch file: use a best.pt/last.pt written by the training scripts") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path} is not a checkpoint of this repo (no '{FORMAT}' marker); "
                         f"use a best.pt/last.pt written by train_pu_fixed_full.py")
    return state


def load_model_weights(model, state_dict, path):
    """Load weights, turning an architecture mismatch into a one-line InputError."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise InputError(f"checkpoint {path} was trained with another architecture than "
                         f"model.backbone here; use the same backbone or another --exp-name") from exc


def evaluated_model(checkpoint, path):
    """The checkpoint's network (its config's model.backbone and dropout) with the weights that were
    evaluated: the weight average's where it holds one, else the EMA teacher's, else the trained model's."""
    settings = checkpoint["config"]["model"]
    model = build_model(settings["backbone"], settings["dropout"])
    load_model_weights(model, checkpoint.get("average") or checkpoint["ema"] or checkpoint["model"], path)
    return model
