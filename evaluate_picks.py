"""Score particle picks against ground truth: precision, recall, F1 across thresholds, and AUPRC.

Inputs: --picks, a coordinate file or a folder (pick_particles.py's output folder, or any picker's);
--ground-truth, a COCO json, a folder of CryoPPP csv files, or any coordinate format the repo reads.
From pick_particles.py's folder its candidates are read (every candidate with its score: the whole
curve; the precision and recall at the threshold its files were written at are reported too); from
another picker's folder, RELION .star, else Topaz .txt (--format chooses). The micrographs scored are those of the picks folder's manifest.json, or of --micrographs
(one stem or path per line), else every ground-truth micrograph; a scored micrograph without picks
counts its particles as misses, and picks on micrographs without ground truth are ignored and counted.
Matching is one-to-one within --radius px, or --radius-fraction x each particle's diameter (0.5 by
default; --diameter where the ground truth has none), the way Topaz's precision_recall_curve matches
(see picking/evaluate.py).

Outputs: --output summary.json (top-level auprc, best_f1, precision, recall, threshold, n_targets,
n_picks, the radius, a per-micrograph table and the curve, at most 1000 points) and pr_curve.png
beside it.

    python evaluate_picks.py --picks runs/picks --ground-truth data/empiar10017/annotations/instances_test.json \\
        --output runs/pick_eval/summary.json       # beside the picks folder: picking owns that one
"""
import argparse
import json
import math
import warnings
from pathlib import Path

import numpy as np

from common.errors import InputError, exit_on_input_error
from common.files import atomic_write_json
from common.flags import add_renamed_argument
from datasets.io.coordinates import micrograph_stem, read_coordinates
from picking.evaluate import precision_recall, save_pr_curve_png
from picking.writers import (CANDIDATES, COMBINED, OLD_FORMAT_NAMES, manifest_files, read_candidates,
                             read_manifests)

FORMATS = {"relion": (".star",), "topaz": (".txt", ".tsv"), "csv": (".csv",), "coco": (".json",), "box": (".box",)}
CURVE_POINTS = 1000


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--picks", required=True, help="pick file, or folder of pick files (+ manifest.json)")
    parser.add_argument("--ground-truth", required=True, help="COCO json, folder of CryoPPP csv, or any format")
    parser.add_argument("--output", required=True, help="summary JSON to write; pr_curve.png goes beside it")
    radius = parser.add_mutually_exclusive_group()
    radius.add_argument("--radius", type=float, help="match radius in original micrograph px")
    radius.add_argument("--radius-fraction", type=float, default=0.5,
                        help="match radius as a fraction of each particle's diameter (default %(default)s)")
    add_renamed_argument(parser, "--particle-diameter", "--diameter", type=float,
                         help="particle diameter in px where the ground truth has none")
    parser.add_argument("--micrographs", help="file listing the micrographs to score, one stem or path per line")
    parser.add_argument("--format", choices=sorted({*FORMATS, CANDIDATES, *OLD_FORMAT_NAMES}),
                        help="which pick format to read from a folder (default: candidates where present)")
    return parser


def pick_files(folder: Path, fmt: str | None) -> tuple[str, list[Path]]:
    """The format to read from a picks folder and its files: --format, else the first scored format present."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith("manifest")
             and p.name != COMBINED["cryosparc"]]  # our particles.star repeats autopick.star's picks
    by_format = {name: [p for p in files if p.suffix.lower() in ext] for name, ext in FORMATS.items()}
    if fmt is None:
        fmt = next((name for name in FORMATS if by_format[name]), None)
    if fmt is None or not by_format[fmt]:
        wanted = ", ".join(FORMATS[fmt]) if fmt else ", ".join(e for ext in FORMATS.values() for e in ext)
        raise InputError(f"no pick files ({wanted}) in {folder}; pass the folder pick_particles.py wrote "
                         "or choose another --format")
    return fmt, by_format[fmt]


def read_picks(path: Path, fmt: str | None) -> tuple[str, dict]:
    """(format read, pick table) from a pick file or folder; files of one folder are merged."""
    if not path.exists():
        raise InputError(f"picks {path} not found; pass a pick file or the folder pick_particles.py wrote")
    if path.is_file():
        name = next((n for n, ext in FORMATS.items() if path.suffix.lower() in ext), path.suffix)
        return name, read_coordinates(path)
    if fmt in (None, CANDIDATES) and (path / CANDIDATES).is_dir():
        return CANDIDATES, {p.stem: read_candidates(path, p.stem) for p in sorted((path / CANDIDATES).glob("*.npy"))}
    fmt, files = pick_files(path, fmt)
    table = {}
    for file in files:
        for stem, picks in read_coordinates(file).items():
            table[stem] = np.concatenate([table[stem], picks]) if stem in table else picks
    return fmt, table


def written_threshold(picks_path: Path) -> tuple[bool, float | None]:
    """(whether pick_particles.py wrote files at a threshold, that threshold) from the folder's manifest."""
    manifest = read_manifests(picks_path) if picks_path.is_dir() else None
    outputs = (manifest or {}).get("outputs")
    return (outputs is not None), (outputs or {}).get("threshold")


def read_manifest(folder: Path) -> tuple[list[str], list[str]] | None:
    """(stems, failed stems) from a picks folder's manifest.json and its shards' manifests; None where
    there is none. A stem done in any manifest counts as done."""
    files = manifest_files(folder)
    if not files:
        return None
    entries = []
    for path in files:
        try:
            entries += [(micrograph_stem(e["stem"]), e.get("status", "done")) for e in json.loads(path.read_text())[
                "micrographs"]]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"cannot read {path}: {error}; it needs {{\"micrographs\": [{{\"stem\": ...}}]}} "
                             "(or delete it and pass --micrographs)") from error
    stems = sorted(dict.fromkeys(stem for stem, _ in entries))
    done = {stem for stem, status in entries if status == "done"}
    return stems, [stem for stem in stems if stem not in done]


def read_micrograph_list(path: str) -> list[str]:
    """Stems from a list file: one micrograph stem or path per line; blank lines and # comments skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise InputError(f"cannot read micrograph list {path}: {error.strerror}; check the path") from error
    return [micrograph_stem(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def scored_micrographs(args, picks_path: Path) -> tuple[list[str] | None, list[str]]:
    """(stems to score, stems whose picking failed): --micrographs, else the manifest, else (None, [])."""
    if args.micrographs:
        return read_micrograph_list(args.micrographs), []
    manifest = read_manifest(picks_path) if picks_path.is_dir() else None
    return manifest or (None, [])


def subsample(n: int, keep: int | None) -> np.ndarray:
    """At most CURVE_POINTS indices spread over 0..n-1, always holding `keep`."""
    spread = np.linspace(0, n - 1, min(n, CURVE_POINTS - 1)).round().astype(np.int64)
    return np.unique(np.append(spread, [] if keep is None else [keep]).astype(np.int64))


def finite(value):
    """JSON-safe: NaN and infinities become null, numpy numbers plain floats, recursively."""
    if isinstance(value, dict):
        return {key: finite(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def summarise(evaluation, picks_format, args, failed, missing_ground_truth) -> dict:
    curve, best = evaluation.curve, evaluation.curve.at_best()
    index = subsample(len(curve.threshold), curve.best)
    return finite({
        "auprc": curve.auprc, "best_f1": best["f1"], "precision": best["precision"], "recall": best["recall"],
        "threshold": best["threshold"], "n_targets": curve.n_targets, "n_picks": curve.n_picks,
        "n_matched": best["n_matched"], "radius": float(np.median(evaluation.radius)),
        "radius_range": [float(evaluation.radius.min()), float(evaluation.radius.max())],
        "radius_rule": f"{args.radius} px" if args.radius is not None else f"{args.radius_fraction} x diameter",
        "n_micrographs": len(evaluation.per_micrograph), "picks": str(args.picks), "picks_format": picks_format,
        "ground_truth": str(args.ground_truth), "failed_micrographs": failed,
        "missing_ground_truth": missing_ground_truth, "ignored_micrographs": evaluation.ignored_micrographs,
        "n_ignored_picks": evaluation.n_ignored_picks, "per_micrograph": evaluation.per_micrograph,
        "curve": {"threshold": curve.threshold[index].tolist(), "precision": curve.precision[index].tolist(),
                  "recall": curve.recall[index].tolist(), "f1": curve.f1[index].tolist()},
    })


def run(args) -> dict:
    if args.format in OLD_FORMAT_NAMES:
        warnings.warn(f"--format {args.format} is now called {OLD_FORMAT_NAMES[args.format]}; the old name goes in "
                      f"the next release", FutureWarning)
        args.format = OLD_FORMAT_NAMES[args.format]
    picks_path, targets = Path(args.picks), read_coordinates(args.ground_truth, default_diameter=args.particle_diameter)
    picks_format, picks = read_picks(picks_path, args.format)
    micrographs, failed = scored_micrographs(args, picks_path)
    missing = sorted(set(micrographs or []) - set(targets))
    evaluation = precision_recall(picks, targets, radius=args.radius, radius_fraction=args.radius_fraction,
                                  micrographs=micrographs)
    summary = summarise(evaluation, picks_format, args, sorted(set(failed) & set(targets)), missing)
    written, threshold = written_threshold(picks_path) if picks_format == CANDIDATES else (False, None)
    summary["at_written_threshold"] = finite(evaluation.curve.at_threshold(threshold)) if written else None
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    summary["pr_curve_png"] = str(output.with_name("pr_curve.png"))
    atomic_write_json(output, summary)
    label = (f"AUPRC {summary['auprc']:.3f}   best F1 {summary['best_f1']:.3f} "
             f"(P {summary['precision']:.2f}, R {summary['recall']:.2f})   {summary['n_targets']} particles")
    save_pr_curve_png(summary["pr_curve_png"], evaluation.curve.recall, evaluation.curve.precision, label)
    return summary


def print_summary(summary: dict, output: str) -> None:
    threshold = "-" if summary["threshold"] is None else f"{summary['threshold']:.4g}"
    print(f"scored {summary['n_micrographs']} micrographs: {summary['n_targets']} particles, "
          f"{summary['n_picks']} picks ({summary['picks_format']}), match radius {summary['radius_rule']} "
          f"(median {summary['radius']:.1f} px)")
    print(f"AUPRC {summary['auprc']:.4f}   best F1 {summary['best_f1']:.4f} at threshold {threshold}: "
          f"precision {summary['precision']:.4f}, recall {summary['recall']:.4f} ({summary['n_matched']} matched)")
    written = summary["at_written_threshold"]
    if written:
        shown = "all candidates" if written["threshold"] is None else f"threshold {written['threshold']:.4g}"
        print(f"at the files' {shown}: precision {written['precision']:.4f}, recall {written['recall']:.4f}, "
              f"F1 {written['f1']:.4f}")
    if summary["failed_micrographs"]:
        print(f"note: {len(summary['failed_micrographs'])} micrographs failed to pick; their particles count as misses")
    if summary["missing_ground_truth"]:
        print(f"warning: {len(summary['missing_ground_truth'])} listed micrographs have no ground truth; not scored")
    if summary["n_ignored_picks"]:
        print(f"warning: {summary['n_ignored_picks']} picks on {len(summary['ignored_micrographs'])} micrographs "
              "without ground truth (or not listed) were ignored")
    print(f"wrote {output} and {summary['pr_curve_png']}")


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    with exit_on_input_error():
        summary = run(args)
    print_summary(summary, args.output)
    return summary


if __name__ == "__main__":
    main()
