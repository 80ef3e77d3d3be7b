"""Write a picks folder's outputs at one threshold from its kept candidates: no network, seconds for thousands.

Shared by pick_particles.py (at the end of picking) and threshold_picks.py (any time later). The
threshold is the user's logit, else suggested without ground truth (`picking.threshold`); the
overlays and score_histogram.png show the same threshold as the files.
"""
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.errors import InputError
from datasets.io.micrographs import read_micrograph
from picking.overlay import save_overlay_png
from picking.threshold import save_score_histogram_png, suggest_threshold
from picking.writers import DEFAULT_FORMATS, FORMATS, HISTOGRAM, OLD_FORMAT_NAMES, done_entries, read_candidates, write_outputs


@dataclass(frozen=True)
class OutputChoice:
    """What the outputs are written at: a logit threshold (None: suggested, unless a count per
    micrograph alone is asked for), the expected particles per micrograph the suggestion uses, a cap
    per micrograph, the formats, and how many micrographs get an overlay."""
    threshold: float | None
    expected_particles: float | None
    picks_per_micrograph: int | None
    formats: tuple
    overlays: int = 0


def add_output_flags(parser):
    """The flags that choose what the pick files hold; threshold_picks.py takes the same ones."""
    parser.add_argument("--threshold", type=float,
                        help="lowest logit written to the pick files (default: suggested from --expected-particles, "
                             "else the valley of the candidates' score histogram)")
    parser.add_argument("--expected-particles", type=float,
                        help="particles per micrograph (as for pi): the threshold keeps this many on average")
    parser.add_argument("--picks-per-micrograph", type=int, help="write at most the best N picks per micrograph")
    parser.add_argument("--formats", nargs="+", choices=(*FORMATS, *OLD_FORMAT_NAMES),
                        help=f"output formats (default: {' '.join(DEFAULT_FORMATS)}; also coco)")
    parser.add_argument("--overlays", type=int, help="PNG overlays of the picks written, for the first N micrographs")
    return parser


def output_formats(formats) -> tuple:
    """--formats with the old names (star, txt) taken for one release, with a warning."""
    for old in sorted(set(formats or ()) & set(OLD_FORMAT_NAMES)):
        warnings.warn(f"--formats {old} is now called {OLD_FORMAT_NAMES[old]}; the old name goes in the next release",
                      FutureWarning)
    return tuple(dict.fromkeys(OLD_FORMAT_NAMES.get(name, name) for name in formats)) if formats else DEFAULT_FORMATS


def output_choice(args, previous: dict | None = None, keep_threshold: bool = False) -> OutputChoice:
    """The outputs asked for on the command line (bad numbers and a threshold beside a count refused); what
    it does not say about formats and overlays (and, with `keep_threshold`, about the threshold) is kept from
    `previous`, the folder's last outputs."""
    for name in ("expected_particles", "picks_per_micrograph", "overlays"):
        value = getattr(args, name)
        if value is not None and (value < 0 if name == "overlays" else value <= 0):
            raise InputError(f"--{name.replace('_', '-')} {value:g} must be "
                             f"{'zero or more' if name == 'overlays' else 'positive'}")
    if args.threshold is not None and args.expected_particles is not None:
        raise InputError(f"--threshold {args.threshold:g} and --expected-particles {args.expected_particles:g} both "
                         f"choose the threshold; pass one of them")
    previous = previous or {}
    formats = output_formats(args.formats) if args.formats else tuple(previous.get("formats", DEFAULT_FORMATS))
    overlays = args.overlays if args.overlays is not None else previous.get("overlays", 0)
    asked = (args.threshold, args.expected_particles, args.picks_per_micrograph)
    if keep_threshold and asked == (None, None, None):
        asked = tuple(previous.get(key) for key in ("requested_threshold", "expected_particles",
                                                     "picks_per_micrograph"))
    return OutputChoice(*asked, formats, overlays)


def chosen_threshold(choice: OutputChoice, scores: np.ndarray, n_micrographs: int) -> tuple[float | None, str]:
    if choice.threshold is not None:
        return choice.threshold, "given"
    if choice.picks_per_micrograph is not None and choice.expected_particles is None:
        return None, "picks_per_micrograph"
    suggestion = suggest_threshold(scores, n_micrographs, choice.expected_particles)
    return suggestion.threshold, suggestion.method


def draw_overlays(output_dir, entries: list[dict], picks: dict, count: int) -> None:
    """overlays/<stem>.png: the written picks of the first `count` entries on their micrographs (skipped where
    one is unreadable); the overlays of the others are removed, so none shows an older threshold."""
    for entry in entries[count:]:
        (Path(output_dir) / "overlays" / f"{entry['stem']}.png").unlink(missing_ok=True)
    for entry in entries[:count]:
        try:
            image = read_micrograph(entry["path"])
        except InputError as error:
            warnings.warn(f"no overlay for {entry['stem']}: {error}")
            continue
        path = Path(output_dir) / "overlays" / f"{entry['stem']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_overlay_png(image, picks[entry["stem"]][:, :2], entry["diameter_px"], path)


def written_with(manifest: dict, choice: OutputChoice) -> bool:
    """True where the folder's files were last written at exactly `choice`."""
    outputs = manifest.get("outputs") or {}
    asked = {**asdict(choice), "formats": sorted(set(choice.formats)), "requested_threshold": choice.threshold}
    asked.pop("threshold")
    return bool(outputs) and all(outputs.get(key) == value for key, value in asked.items())


def write_at_threshold(output_dir, manifest: dict, choice: OutputChoice) -> dict:
    """Every output of the folder at `choice`; returns what was written (threshold, how, counts, files)."""
    entries = done_entries(manifest)
    if not entries:
        raise InputError(f"{output_dir} has no picked micrograph with candidates; pick into it first")
    candidates = {entry["stem"]: read_candidates(output_dir, entry["stem"]) for entry in entries}
    scores = np.concatenate([c[:, 3] for c in candidates.values()])
    threshold, method = chosen_threshold(choice, scores, len(entries))
    outputs = {**asdict(choice), "formats": sorted(set(choice.formats)), "requested_threshold": choice.threshold,
               "threshold": threshold, "threshold_method": method}
    picks = write_outputs(output_dir, manifest, candidates, outputs)
    n_picks = int(sum(len(p) for p in picks.values()))
    shown = threshold if threshold is not None else float(scores.min(initial=0.0))
    label = (f"{len(scores):,} candidates, {len(entries)} micrographs: threshold {shown:.2f} ({method}), "
             f"{n_picks:,} picks")
    save_score_histogram_png(Path(output_dir) / HISTOGRAM, scores, shown, label)
    draw_overlays(output_dir, entries, picks, choice.overlays)
    return {"threshold": threshold, "threshold_method": method, "n_candidates": int(len(scores)),
            "n_picks": n_picks, "n_micrographs": len(entries), "picks_per_micrograph_mean": n_picks / len(entries),
            "histogram": str(Path(output_dir) / HISTOGRAM), "formats": outputs["formats"]}


def print_outputs(written: dict) -> None:
    threshold = "none (top N per micrograph)" if written["threshold"] is None else f"{written['threshold']:.3f}"
    print(f"  threshold {threshold} ({written['threshold_method']}): {written['n_picks']:,} picks of "
          f"{written['n_candidates']:,} candidates, {written['picks_per_micrograph_mean']:.1f} per micrograph")
    print(f"  formats: {', '.join(written['formats'])}; score histogram: {written['histogram']}")
