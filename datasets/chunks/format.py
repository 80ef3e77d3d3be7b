"""The chunk contract shared by the chunk writer, the chunk loader and picking (docs/data.md).

A chunk file `{split}_chunk_{k:04d}.pt` is a dict of tensors with the keys and dtypes of
`CHUNK_DTYPES`; `label` holds what training may see (`LABEL_*`), `sample_type` the provenance
(`SAMPLE_TYPES`). `metadata.json` beside the chunks records `schema_version`, `complete`, the resume
cursor `resume.micrographs_done` (read by `preprocessing_progress`), the priors (datasets/prior.py)
and `facts`: the `PreprocessingFacts` picking needs to prepare a micrograph as the patches were.
"""
import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import torch

from common.errors import InputError

SCHEMA_VERSION = 2
METADATA = "metadata.json"

# "unlabeled": an unlabeled sample whose truth is unknown (sliding windows on real, partial labels).
SAMPLE_TYPES = {"labeled_positive": 0, "hidden_positive": 1, "background": 2, "known_negative": 3,
                "unlabeled": 4}
SAMPLE_TYPE_NAMES = {code: name for name, code in SAMPLE_TYPES.items()}

LABEL_POSITIVE = 1
LABEL_UNLABELED = 0
LABEL_NEGATIVE = -1

CHUNK_DTYPES = {"patches": torch.uint8, "label": torch.int8, "sample_type": torch.int8,
                "true_label": torch.int8, "micrograph": torch.int32, "xy": torch.int32}
CHUNK_KEYS = tuple(CHUNK_DTYPES)


def chunk_name(split, index):
    """File name of chunk `index` of `split`, e.g. train_chunk_0003.pt."""
    return f"{split}_chunk_{index:04d}.pt"


@dataclass(frozen=True)
class PreprocessingFacts:
    """How the patches were cut: what picking needs to prepare a whole micrograph the same way.

    Written by preprocessing into metadata.json, carried by training into the checkpoint, read by
    picking. Every shard of one data set must agree on them.
    """
    patch_size: int               # px of the rescaled micrograph
    particle_diameter_px: float   # px of the original micrographs
    scale: float                  # rescaled px per original px
    clip_sigma: float             # the robust clip of the uint8 normalisation (median +- clip_sigma sigmas)
    pixel_size_angstrom: float | None = None  # Å per original px of the training micrographs; None = unknown

    @property
    def particle_diameter_angstrom(self) -> float | None:
        return None if self.pixel_size_angstrom is None else self.particle_diameter_px * self.pixel_size_angstrom

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source) -> "PreprocessingFacts":
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [name for name in required if not isinstance(values, dict) or name not in values]
        if missing:
            raise InputError(f"{source} lacks the preprocessing facts {', '.join(missing)}; rerun the "
                             f"preprocessing command (or training) with this version of the repo")
        return cls(**{name: values[name] for name in names if name in values})


def load_metadata(path):
    """metadata.json as a dict, upgraded from schema 1; a one-line InputError when it is unreadable."""
    path = Path(path)
    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is unreadable or corrupt ({exc}); delete the folder {path.parent} (or choose "
                         f"another --output-dir) and preprocess again") from exc
    if not isinstance(metadata, dict):
        raise InputError(f"{path} is not a preprocessing metadata file; rerun the preprocessing command")
    return _upgraded(metadata) if metadata.get("schema_version") == 1 else metadata


def _upgraded(metadata):
    """A schema-1 metadata.json in schema 2 terms: facts from its config, the prior's two counts."""
    config = metadata.get("config", {})
    priors = dict(metadata.get("priors", {}))
    if priors.get("method") == "counted":
        counts = metadata.get("splits", {}).get("train", {}).get("counts", {})
        priors["positives_in_unlabeled"] = counts.get("hidden_positive", 0)
        priors["unlabeled"] = counts.get("hidden_positive", 0) + counts.get("background", 0)
    elif priors.get("method") == "expected_particles":
        priors["positives_in_unlabeled"] = priors.pop("hidden_windows_estimate", 0.0)
        priors["unlabeled"] = priors.pop("unlabeled_windows", 0.0)
    facts = {name: config.get(name) for name in ("patch_size", "scale", "clip_sigma")}
    facts["particle_diameter_px"] = config.get("particle_diameter_px")
    return {**metadata, "schema_version": SCHEMA_VERSION, "priors": priors,
            "facts": {k: v for k, v in facts.items() if v is not None}}


def metadata_field(metadata, path, *keys):
    """metadata[keys[0]][keys[1]]...; an InputError naming the entry when it is absent."""
    value = metadata
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise InputError(f"{path}: no '{'.'.join(keys)}' entry; rerun the preprocessing command "
                             f"with this version of the repo")
        value = value[key]
    return value


def preprocessing_progress(metadata):
    """(micrographs done, micrographs in the run) of a possibly unfinished preprocessing run."""
    return metadata.get("resume", {}).get("micrographs_done", 0), len(metadata.get("micrographs", []))


def read_metadata(chunk_dir):
    """metadata.json of a finished preprocessing run; InputError when missing, unreadable or unfinished."""
    path = Path(chunk_dir) / METADATA
    if not path.is_file():
        raise InputError(f"{chunk_dir}: no {METADATA}; run preprocess_chunked.py or "
                         f"preprocess_coco_full_dataset.py with --output-dir {chunk_dir} first")
    metadata = load_metadata(path)
    if metadata.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{path}: schema_version {metadata.get('schema_version')} but this loader reads "
                         f"{SCHEMA_VERSION}; preprocess again with this version of the repo")
    if not metadata.get("complete"):
        done, total = preprocessing_progress(metadata)
        raise InputError(f"{chunk_dir}: preprocessing incomplete ({done} of {total} micrographs done); "
                         f"rerun the same preprocessing command to resume it")
    return metadata


def chunk_dir_list(dirs) -> list[Path]:
    """One chunk dir or several (shards) as a list of Paths."""
    return [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]


def read_facts(chunk_dirs) -> PreprocessingFacts:
    """The PreprocessingFacts of one or more chunk dirs (shards); InputError unless all agree."""
    found = {str(d): PreprocessingFacts.from_dict(metadata_field(read_metadata(d), d / METADATA, "facts"),
                                                  d / METADATA)
             for d in chunk_dir_list(chunk_dirs)}
    if len(set(found.values())) > 1:
        listed = "; ".join(f"{d}: {facts}" for d, facts in found.items())
        raise InputError(f"chunk dirs were preprocessed differently ({listed}); preprocess every shard with "
                         f"the same settings")
    return next(iter(found.values()))
