"""The class prior π: every formula that gives it, and the one reader training uses.

π is the fraction of particles among the unlabeled training samples, the number nnPU needs
(p_U = π p_P + (1 - π) p_N). Preprocessing records it in metadata.json's `priors` as a ratio of
two counts, `positives_in_unlabeled / unlabeled`, and how it got them (`method`):
- "counted": the COCO PU split hid the positives itself, so it counts them;
- "expected_particles": the user's expected particle count per micrograph, converted to the
  unlabeled windows those missing particles make positive (partial labels; with no count given,
  preprocessing records BBE's estimate of the count as a suggestion, training/prior_estimate.py).
Keeping the two counts lets shards combine exactly: π of several chunk dirs is the sum of their
numerators over the sum of their denominators. `positive_fraction` (positives over all training
patches) is the number the original training guide called the prior; it is kept for comparison only.
"""
import math
from dataclasses import asdict, dataclass

from common.errors import InputError
from datasets.chunks.format import METADATA, chunk_dir_list, metadata_field, read_metadata

METHODS = ("counted", "expected_particles")


@dataclass(frozen=True)
class ClassPrior:
    """π and where it came from; training resolves it once, hands it to the losses and saves it once."""
    value: float
    source: str

    def __post_init__(self):
        if not 0 < self.value < 1:
            raise InputError(f"class prior {self.value:.4g} ({self.source}) is outside (0, 1); set loss.prior to the "
                             f"fraction of particles among the unlabeled patches, or use --use-data-prior")

    def to_dict(self) -> dict:
        return asdict(self)


def positive_fraction(train_counts) -> float:
    """Positives (labeled + hidden) over all training patches: not π."""
    total = sum(train_counts.values())
    positives = train_counts.get("labeled_positive", 0) + train_counts.get("hidden_positive", 0)
    return positives / total if total else float("nan")


def prior_record(method, positives_in_unlabeled, unlabeled, **extra) -> dict:
    """metadata.json's `priors`: π, the two counts it is the ratio of, and how they were obtained."""
    value = positives_in_unlabeled / unlabeled if unlabeled else float("nan")
    return {"prior_unlabeled": value, "method": method, "positives_in_unlabeled": positives_in_unlabeled,
            "unlabeled": unlabeled, **extra}


def counted_prior(train_counts, **extra) -> dict:
    """π counted where preprocessing knows the hidden positives: hidden / (hidden + background)."""
    hidden, background = train_counts.get("hidden_positive", 0), train_counts.get("background", 0)
    return prior_record("counted", hidden, hidden + background, positive_fraction=positive_fraction(train_counts),
                        **extra)


def expected_particles_windows(micrographs, expected, radius, stride):
    """(windows the unlabeled particles make positive, unlabeled windows) over the done train micrographs.

    A micrograph with `expected` particles of which `n_labeled` are labeled has expected - n_labeled
    particles in its unlabeled windows; each makes about pi r^2 / stride^2 windows positive (r the
    positive radius), capped by the micrograph's unlabeled windows.
    """
    windows_per_particle = math.pi * radius ** 2 / stride ** 2
    positives = unlabeled = 0.0
    for entry in micrographs:
        if entry.get("split") != "train" or entry.get("status") != "done":
            continue
        missing = max(expected - entry["n_labeled"], 0.0)
        positives += min(entry["unlabeled_windows"], missing * windows_per_particle)
        unlabeled += entry["unlabeled_windows"]
    return positives, unlabeled


def partial_labels_windows(micrographs, missing, diameter, centre_radius):
    """(unlabeled windows that hold an unlabeled particle, unlabeled windows) of a partial-labels COCO
    PU split, from `missing(entry)` = (m, m_free): the particles nobody labeled on a micrograph, all of
    them and those in its free area F, the pixels at least a diameter from every labeled particle
    (`expected_missing` for --expected-particles, as Topaz's -n; density x free area twice for an
    estimate made on that area).

    The m_free are taken as spread uniformly over F, the m over the whole area A. A window is a particle
    when one is centred within r = centre_radius x diameter of its centre (the rule that marks every
    window of a complete split), which happens with probability min(1, m_free pi r^2 / F) for windows
    inside the free area (the far negatives) and m pi r^2 / A for the random windows, drawn over A.
    Windows known to be centred on a labeled particle count as positives as they are.
    """
    positives = unlabeled = 0.0
    disk = math.pi * (centre_radius * diameter) ** 2
    for entry in micrographs:
        if entry.get("split") != "train" or entry.get("status") != "done":
            continue
        m, m_free = missing(entry)
        far = min(1.0, m_free * disk / max(entry["free_area_px"], 1.0))
        near = min(1.0, m * disk / entry["area_px"])
        positives += entry["unlabeled_known_positive"] + far * entry["unknown_far"] + near * entry["unknown_random"]
        unlabeled += entry["unlabeled_known_positive"] + entry["unknown_far"] + entry["unknown_random"]
    return positives, unlabeled


def expected_missing(expected):
    """`missing` for partial_labels_windows from the expected count E per micrograph: m = E - n_labeled,
    and m_free = m x the share of the labeled particles that lie in the free area of the others (a
    leave-one-out look at where particles sit; a packed micrograph's unlabeled particles sit mostly
    between labeled ones, outside it). The share is 1 with under two labels, and for micrographs
    preprocessed before it was recorded (`labeled_isolated`)."""
    def missing(entry):
        m = max(expected - entry["n_labeled"], 0.0)
        isolated = entry.get("labeled_isolated")
        share = isolated / entry["n_labeled"] if isolated is not None and entry["n_labeled"] >= 2 else 1.0
        return m, m * share
    return missing


def read_prior(chunk_dirs) -> ClassPrior:
    """π over one or more chunk dirs and how it was obtained; InputError unless 0 < π < 1."""
    dirs = chunk_dir_list(chunk_dirs)
    priors = [metadata_field(read_metadata(d), d / METADATA, "priors") for d in dirs]
    source = ", ".join(map(str, dirs))
    methods = {p.get("method") for p in priors}
    if len(methods) > 1:
        raise InputError(f"{source}: shards disagree on how the prior was obtained ({', '.join(map(str, methods))}); "
                         f"preprocess every shard with the same settings")
    method = methods.pop()
    if method not in METHODS:
        raise InputError(f"{source}: no usable prior in metadata (method {method!r}); set loss.prior in the config "
                         f"or preprocess with --expected-particles")
    unlabeled = sum(p["unlabeled"] for p in priors)
    value = sum(p["positives_in_unlabeled"] for p in priors) / unlabeled if unlabeled else math.nan
    if not 0 < value < 1:
        raise InputError(f"{source}: prior_unlabeled {value:.4g} ({method}) is outside (0, 1); set loss.prior "
                         f"in the config instead of --use-data-prior")
    return ClassPrior(float(value), f"{method}, metadata of {source}")
