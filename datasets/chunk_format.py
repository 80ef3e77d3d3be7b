"""The chunk contract shared by the chunk writer and the chunk loader (see DESIGN.md).

A chunk file `{split}_chunk_{k:04d}.pt` is a dict of tensors with the keys in `CHUNK_KEYS`;
`label` holds what training may see (`LABEL_*`), `sample_type` the provenance (`SAMPLE_TYPES`).
`metadata.json` beside the chunks records `schema_version`, `complete` and the resume cursor
`resume.micrographs_done` (read by `preprocessing_progress`).
"""

SCHEMA_VERSION = 1

# "unlabeled": an unlabeled sample whose truth is unknown (sliding windows on real, partial labels).
SAMPLE_TYPES = {"labeled_positive": 0, "hidden_positive": 1, "background": 2, "known_negative": 3,
                "unlabeled": 4}

LABEL_POSITIVE = 1
LABEL_UNLABELED = 0
LABEL_NEGATIVE = -1

CHUNK_KEYS = ("patches", "label", "sample_type", "true_label", "micrograph", "xy")


def chunk_name(split, index):
    """File name of chunk `index` of `split`, e.g. train_chunk_0003.pt."""
    return f"{split}_chunk_{index:04d}.pt"


def preprocessing_progress(metadata):
    """(micrographs done, micrographs in the run) of a possibly unfinished preprocessing run."""
    return metadata.get("resume", {}).get("micrographs_done", 0), len(metadata.get("micrographs", []))
