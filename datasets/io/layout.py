"""Find the micrographs of a dataset, their split, their particle labels and (when known) the truth.

Layouts read:
- CryoTransformer: `<root>/{train,val,test}/*.{mrc,jpg,png,tif}` with labels in
  `<root>/annotations/instances_<split>.json` (COCO) or, failing that, `<root>/particle_coordinates/<stem>.csv`
  (CryoPPP). `<root>/ground_truth/<stem>.csv` (written by make_synthetic_dataset.py) holds every particle.
- One folder of micrographs (`<root>/*.mrc` ...) with `--annotations FILE|DIR` in any coordinate format the
  readers take; the split is a deterministic seeded split by `split_fractions`.
All coordinates stay in original micrograph pixels, particle centres.
"""
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import InputError
from datasets.io.coordinates import read_coco, read_coordinates, read_cryoppp_csv
from datasets.io.micrographs import list_micrographs

SPLITS = ("train", "val", "test")


@dataclass
class MicrographRecord:
    """One micrograph to preprocess: where it is, which split, its labels and (optional) its truth."""
    index: int
    path: str
    stem: str
    split: str
    particles: np.ndarray                      # (N, 4) x, y, diameter, score: the annotations
    truth: np.ndarray | None = None            # (M, 4) every particle, when known
    known_negatives: np.ndarray | None = None  # (K, 4) rejected picks (PUFP)


def _empty():
    return np.zeros((0, 4), dtype=np.float64)


def _split_labels(root, split, stems):
    """Labels of one split: COCO json first, else CryoPPP csv per micrograph, else none."""
    coco = root / "annotations" / f"instances_{split}.json"
    if coco.is_file():
        table, images = read_coco(coco)
        missing = sorted(set(images) - set(stems))
        if missing:
            warnings.warn(f"{coco}: {len(missing)} annotated image(s) not found in {root / split} "
                          f"(e.g. {missing[0]}); they are skipped")
        return table, "coco", len(missing)
    csv_dir = root / "particle_coordinates"
    table = {}
    for stem in stems:
        csv = csv_dir / f"{stem}.csv"
        if csv.is_file():
            table.update(read_cryoppp_csv(csv, micrograph=stem))
    return table, ("cryoppp_csv" if table else "none"), 0


def _truth_table(root, stems):
    truth_dir = root / "ground_truth"
    if not truth_dir.is_dir():
        return None
    return {stem: read_cryoppp_csv(truth_dir / f"{stem}.csv", micrograph=stem).get(stem, _empty())
            for stem in stems if (truth_dir / f"{stem}.csv").is_file()}


def _deterministic_split(paths, fractions, seed):
    """Seeded split of one folder: same micrographs, same fractions, same seed -> same split."""
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise InputError(f"split_fractions {fractions} must be three non-negative numbers (train val test)")
    order = np.random.default_rng(seed).permutation(len(paths))
    shares = np.asarray(fractions, dtype=float) / sum(fractions)
    n_train = int(round(shares[0] * len(paths)))
    n_val = int(round(shares[1] * len(paths)))
    split_of = {}
    for rank, i in enumerate(order):
        split_of[i] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return {split: [p for i, p in enumerate(paths) if split_of[i] == split] for split in SPLITS}


def find_micrographs(root, seed=42, split_fractions=(0.8, 0.1, 0.1)):
    """split -> sorted micrograph paths, from split folders or a seeded split of one folder."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data root {root} not found; pass --data-root pointing at your micrographs")
    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    if split_dirs:
        if "train" not in split_dirs:
            raise InputError(f"{root} has split folders {split_dirs} but no train/; add {root / 'train'}")
        return {s: list_micrographs(root / s) if (root / s).is_dir() else [] for s in SPLITS}, "folders"
    paths = list_micrographs(root)
    if not paths:
        raise InputError(f"no micrographs (.mrc .jpg .png .tif) in {root} nor train/ val/ test/ folders in it")
    return _deterministic_split(paths, split_fractions, seed), "seeded_split"


def load_dataset(root, annotations=None, seed=42, split_fractions=(0.8, 0.1, 0.1),
                 known_negatives=None, read_truth=True):
    """All micrographs of a dataset as MicrographRecords plus a report of what was found.

    `read_truth=False` (partial labels: the annotations are all a user has) never opens ground_truth/;
    the report's `truth_ignored` says whether one was there."""
    root = Path(root)
    by_split, how = find_micrographs(root, seed, split_fractions)
    user_table = read_coordinates(annotations) if annotations else None
    rejected = read_coordinates(known_negatives) if known_negatives else {}
    records, report = [], {"split_method": how, "label_source": {}, "missing_images": 0,
                           "truth_ignored": not read_truth and (root / "ground_truth").is_dir()}
    for split in SPLITS:
        stems = [p.stem for p in by_split[split]]
        if user_table is not None:
            table, source, missing = user_table, "user", 0
        else:
            table, source, missing = _split_labels(root, split, stems)
        report["label_source"][split] = source
        report["missing_images"] += missing
        truth = _truth_table(root, stems) if read_truth else None
        for path in by_split[split]:
            records.append(MicrographRecord(
                index=len(records), path=str(path), stem=path.stem, split=split,
                particles=table.get(path.stem, _empty()),
                truth=None if truth is None else truth.get(path.stem),
                known_negatives=rejected.get(path.stem) if split == "train" else None))
    if not any(r.split == "train" for r in records):
        raise InputError(f"no training micrographs found under {root}; check --data-root")
    if user_table is not None:
        unknown = sorted(set(user_table) - {r.stem for r in records})
        report["missing_images"] += len(unknown)
        if unknown:
            warnings.warn(f"{annotations}: {len(unknown)} annotated micrograph(s) not found under {root} "
                          f"(e.g. {unknown[0]}); they are skipped")
    return records, report


def dataset_diameter(records, override=None):
    """The particle diameter in original pixels: the user's value, else the annotations' median."""
    if override is not None:
        if override <= 0:
            raise InputError(f"--particle-diameter {override} must be positive")
        return float(override)
    diameters = np.concatenate([r.particles[:, 2] for r in records] + [np.zeros(0)])
    diameters = diameters[np.isfinite(diameters) & (diameters > 0)]
    if diameters.size == 0:
        raise InputError("the annotations give no particle diameter (e.g. STAR/Topaz files); "
                         "pass --particle-diameter PX")
    return float(np.median(diameters))
