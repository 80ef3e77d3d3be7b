"""Checkpoints: everything a run needs to resume, and everything picking needs to prepare micrographs.

A checkpoint is a dict saved with torch.save through `common.files.atomic_write` (never half a file)
and loaded with `weights_only=True`, so loading one never runs code from it. Keys: `format`, `model`,
`optimizer`, `scheduler`, `ema` (or None), `consistency`, `average` (model.average_from's weight
average, or None) with `averaged_epochs`, `epoch`, `step`, `step_in_epoch`, `best_metric`,
`best_epoch`, `progress`, `config`, `prior` ({value, source}), `rng`, `git_sha`, and what picking
reads: `preprocessing` (the data's `PreprocessingFacts`) and `network_input` (`NetworkInput`).
"""
import pickle
from pathlib import Path

import torch

from common.errors import InputError
from common.files import atomic_path
from models.input import NetworkInput
from models.resnet import build_model

FORMAT = "cryopu-checkpoint-v2"
V1_FORMAT = "cryopu-checkpoint-v1"
V1_GREY_LEVELS = 32.0  # what v1 checkpoints normalised "micrograph" and "patch_mean" windows by


def save_checkpoint(path, state):
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(path, map_location="cpu"):
    """Load one of our checkpoints without running code from it; anything else is a one-line InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} not found; pass the best.pt or last.pt of a training run")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # not a forbidden object, just bytes that are no pickle
            raise InputError(f"checkpoint {path} cannot be read (not a PyTorch file); use a best.pt/last.pt "
                             f"written by the training scripts") from exc
        raise InputError(f"checkpoint {path} holds objects other than tensors and plain values, so it was not "
                         f"loaded (loading it could run code); use a best.pt/last.pt written by this repo") from exc
    except Exception as exc:  # a damaged or foreign file can break the unpickler anywhere
        raise InputError(f"checkpoint {path} cannot be read ({type(exc).__name__}); it is corrupt or not "
                         f"a PyTorch file: use a best.pt/last.pt written by the training scripts") from exc
    if isinstance(state, dict) and state.get("format") == V1_FORMAT:
        return _upgraded_v1(state)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise InputError(f"{path} is not a checkpoint of this repo (format {found!r}, this version reads "
                         f"'{FORMAT}' and '{V1_FORMAT}'); use a best.pt/last.pt written by train_pu_fixed_full.py")
    return state


def _upgraded_v1(state):
    """A v1 checkpoint in v2 terms: its flat `preprocessing` dict split into the facts and the network
    input (v1 used 32 grey levels per unit and called per-patch standardisation 'per_patch_standardise')."""
    flat = state.get("preprocessing") or {}
    normalization = flat.get("normalization")
    facts = {key: flat[key] for key in ("patch_size", "particle_diameter_px", "scale", "clip_sigma") if key in flat}
    network_input = None
    if "input_size" in flat and normalization is not None:
        network_input = {"input_size": flat["input_size"], "grey_levels": V1_GREY_LEVELS,
                         "normalization": "patch" if normalization == "per_patch_standardise" else normalization}
    prior = state.get("prior")
    source = state.get("config", {}).get("loss", {}).get("prior_source", "unknown")
    return {**state, "format": FORMAT, "preprocessing": facts, "network_input": network_input,
            "prior": {"value": prior, "source": source} if prior is not None else None}


def checkpoint_network_input(checkpoint, path) -> NetworkInput:
    spec = checkpoint.get("network_input")
    if not isinstance(spec, dict) or set(spec) != {"input_size", "normalization", "grey_levels"}:
        raise InputError(f"checkpoint {path} lacks its network input (input size, normalisation); use a "
                         f"best.pt/last.pt written by the current training scripts")
    return NetworkInput(**spec)


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
