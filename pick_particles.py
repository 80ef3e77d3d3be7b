"""Pick particles on whole micrographs with a trained checkpoint, and write their coordinates.

Inputs: --checkpoint, a best.pt/last.pt of our training scripts (the weights that were evaluated are
used: the weight average, else the EMA teacher; the preprocessing that made the training patches
travels in it); --micrographs, a
folder, a glob pattern, a single micrograph, or a .txt list (one path per line, relative paths
taken from the list's folder). Micrographs of any size are rescaled by the checkpoint's scale, so
particles have the training diameter; unreadable micrographs are skipped and counted.

Each micrograph is scored densely (picking/score.py: windows every --stride rescaled px, batched on
the device; with --peak-rescore, the default, one more window per peak at its sub-cell position, so
particles do not rank by where the grid fell, its logit the mean over --peak-symmetries rotations of
the window), and the score map becomes picks by non-maximum
suppression at --min-distance-fraction x
the particle diameter (0.5 by default, Topaz's extract radius: particles often sit closer than one
diameter), above --threshold (a logit; default -6, sigmoid 0.0025, the threshold of the Topaz reference
run: low, so the precision-recall curve reaches far into recall, since AUPRC counts every particle)
or the best --expected-particles per micrograph. Picks whose centre lies closer than --edge-margin
original px to the border (default half a diameter: the particle would be cut by the edge) are dropped.

Outputs in --output-dir (picking/writers.py): per micrograph <stem>.star, .csv, .box, .txt (RELION,
CryoPPP, EMAN, Topaz; --formats), picks.json (COCO, all micrographs), manifest.json (rewritten after
every micrograph; a rerun skips micrographs already done), overlays/<stem>.png for the first
--overlays micrographs (picks scoring at least --overlay-threshold drawn on the rescaled micrograph).

    python pick_particles.py --checkpoint experiments/cpu_benchmark/best.pt \\
        --micrographs ../shared/data/empiar10017/test --output-dir runs/picks
"""
import argparse
import glob
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.errors import InputError, exit_on_input_error
from common.files import file_sha256, folder_lock
from datasets.geometry import to_scaled
from datasets.io.coordinates import micrograph_stem
from datasets.io.micrographs import list_micrographs
from picking.overlay import save_overlay_png
from picking.score import (DEFAULT_PEAK_SYMMETRIES, PEAK_SYMMETRIES, SCORING_METHODS, load_picker, pick_prepared,
                           prepare_for_picking, scoring_method)
from picking.writers import FORMATS, check_own_folder, is_done, open_manifest, record, write_combined_coco, write_picks

DEFAULT_THRESHOLD = -6.0
PICK_SETTINGS = ("checkpoint_sha256", "stride", "peak_rescore", "peak_symmetries", "min_distance_px", "threshold",
                 "expected_particles", "edge_margin_px", "scoring", "precision")


def fast_bf16(device):
    """bf16 autocast pays off on CUDA and on CPUs with native bf16 (oneDNN says so); elsewhere fp32.

    On EMPIAR-10017 bf16 picking gave the same AUPRC as fp32 (0.8241 vs 0.8240) at 2.7x the speed.
    """
    if device.type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a training run")
    parser.add_argument("--micrographs", required=True, help="folder, glob pattern, micrograph, or .txt list")
    parser.add_argument("--output-dir", required=True, help="folder for the coordinate files and manifest")
    parser.add_argument("--stride", type=int,
                        help="window spacing in rescaled px (default: a quarter of the particle diameter, "
                             "rounded to a multiple of patch_size / input_size)")
    parser.add_argument("--peak-rescore", action=argparse.BooleanOptionalAction, default=True,
                        help="score one more window per peak, at its sub-cell position, and keep the higher "
                             "logit (default on: +4%% windows, the ranking of a grid at half the stride)")
    parser.add_argument("--peak-symmetries", type=int, choices=PEAK_SYMMETRIES,
                        help="views of each rescored peak window averaged: 1 (as is), 4 (rotations by 90 degrees) "
                             f"or 8 (and their mirrors; the training augmentation's views) (default "
                             f"{DEFAULT_PEAK_SYMMETRIES}; with --no-peak-rescore, 1)")
    parser.add_argument("--min-distance-fraction", type=float, default=0.5,
                        help="minimum distance between picks, x particle diameter (default %(default)s)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="lowest logit kept (default %(default)s)")
    parser.add_argument("--expected-particles", type=int, help="keep at most this many picks per micrograph")
    parser.add_argument("--edge-margin", type=float,
                        help="drop picks closer than this to the border, original px (default: diameter / 2)")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS),
                        help="output formats (default: all; csv is always written)")
    parser.add_argument("--overlays", type=int, default=0, help="PNG overlays for the first N micrographs")
    parser.add_argument("--overlay-threshold", type=float, default=0.0,
                        help="lowest logit drawn on the overlays (default %(default)s, probability 0.5)")
    parser.add_argument("--scoring", choices=SCORING_METHODS,
                        help="downsample (default where patch_size / input_size divides the stride) or exact")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="network arithmetic (default: bf16 on CUDA and on CPUs with native bf16, else fp32)")
    parser.add_argument("--device", help="cuda, cuda:0 or cpu (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=1024, help="windows per network call")
    return parser


def resolve_micrographs(spec: str) -> list[Path]:
    """Micrograph paths from a folder, a .txt list, a single file or a glob pattern."""
    path = Path(spec)
    if path.is_dir():
        found = list_micrographs(path)
    elif path.is_file() and path.suffix.lower() == ".txt":
        lines = [line.strip() for line in path.read_text().splitlines()]
        found = [path.parent / line for line in lines if line and not line.startswith("#")]
    elif path.is_file():
        found = [path]
    else:
        found = [Path(p) for p in sorted(glob.glob(spec)) if Path(p).is_file()]
    if not found:
        raise InputError(f"no micrographs found at {spec}; pass a folder, a glob pattern in quotes, "
                         f"or a .txt list of micrograph paths")
    stems = [micrograph_stem(p) for p in found]
    repeated = sorted(stem for stem, count in Counter(stems).items() if count > 1)
    if repeated:
        raise InputError(f"micrographs share the name {repeated[0]} (their pick files would collide); "
                         f"pick them into separate --output-dir folders")
    return found


def read_ahead(paths, facts):
    """(path, PreparedMicrograph or InputError) in order; the next micrograph is read while the current
    one is scored."""
    def prepare(path):
        try:
            return prepare_for_picking(path, facts)
        except InputError as error:
            return error

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare, paths[0]) if paths else None
        for index, path in enumerate(paths):
            result = pending.result()
            if index + 1 < len(paths):
                pending = pool.submit(prepare, paths[index + 1])
            yield path, result


def check_options(args) -> None:
    """Refuse bad numbers before the model is loaded."""
    for name, value in (("--min-distance-fraction", args.min_distance_fraction), ("--batch-size", args.batch_size),
                        ("--expected-particles", 1 if args.expected_particles is None else args.expected_particles)):
        if value <= 0:
            raise InputError(f"{name} {value} must be positive")
    if args.peak_symmetries is not None and args.peak_symmetries > 1 and not args.peak_rescore:
        raise InputError(f"--peak-symmetries {args.peak_symmetries} averages views of the rescored peaks; "
                         f"drop --no-peak-rescore, or --peak-symmetries 1 to score the grid alone")


def pick_settings(args, picker, device) -> dict:
    """The resolved settings (distances in original px, stride in rescaled px) recorded in the manifest.

    The checkpoint's sha256 is among them: a model retrained into the same best.pt makes a rerun refuse
    the folder's old picks instead of counting them as done.
    """
    facts, input_size = picker.facts, picker.spec.input_size
    diameter = float(facts.particle_diameter_px)
    factor = max(1, facts.patch_size // input_size)
    rescaled_diameter = diameter * facts.scale
    stride = args.stride or max(factor, int(round(rescaled_diameter / 4 / factor)) * factor)
    precision = args.precision if args.precision != "auto" else ("bf16" if fast_bf16(device) else "fp32")
    edge_margin = diameter / 2 if args.edge_margin is None else args.edge_margin
    return {"checkpoint_sha256": file_sha256(args.checkpoint), "stride": stride, "peak_rescore": args.peak_rescore,
            "peak_symmetries": args.peak_symmetries or (DEFAULT_PEAK_SYMMETRIES if args.peak_rescore else 1),
            "min_distance_px": args.min_distance_fraction * diameter,
            "threshold": args.threshold, "expected_particles": args.expected_particles,
            "edge_margin_px": edge_margin, "diameter_px": diameter,
            "scoring": scoring_method(facts.patch_size, input_size, stride, args.scoring),
            "precision": precision, "device": str(device), "batch_size": args.batch_size,
            "formats": sorted(set(args.formats))}


def save_overlay(output_dir, stem, micrograph, particles, diameter, threshold):
    shown = particles[particles[:, 3] >= threshold]
    xy = to_scaled(shown[:, :2], micrograph.scale_xy)
    path = Path(output_dir) / "overlays" / f"{stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_overlay_png(micrograph.image, xy, diameter * float(np.mean(micrograph.scale_xy)), path)


def pick_one(args, picker, settings, path, micrograph, overlay):
    """Pick one prepared micrograph, write its files (and overlay); its manifest entry."""
    started = time.perf_counter()
    stem = micrograph_stem(path)
    particles = pick_prepared(picker, micrograph, stride=settings["stride"],
                              min_distance_px=settings["min_distance_px"], threshold=settings["threshold"],
                              device=settings["device"], expected_particles=settings["expected_particles"],
                              edge_margin_px=settings["edge_margin_px"], batch_size=settings["batch_size"],
                              method=settings["scoring"], bf16=settings["precision"] == "bf16",
                              rescore_peaks=settings["peak_rescore"], peak_symmetries=settings["peak_symmetries"])
    write_picks(args.output_dir, stem, path, particles, settings["diameter_px"], settings["formats"])
    if overlay:
        save_overlay(args.output_dir, stem, micrograph, particles, settings["diameter_px"], args.overlay_threshold)
    height, width = micrograph.original_shape
    return {"stem": stem, "path": str(Path(path).resolve()), "status": "done", "n_picks": len(particles),
            "width": width, "height": height, "seconds": time.perf_counter() - started}


def run(args) -> dict:
    check_options(args)
    paths = resolve_micrographs(args.micrographs)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    picker = load_picker(args.checkpoint, device)
    settings = pick_settings(args, picker, device)
    with folder_lock(args.output_dir, "pick_particles"):
        manifest = open_manifest(args.output_dir, Path(args.checkpoint).resolve(), settings, PICK_SETTINGS)
        check_own_folder(args.output_dir, manifest)
        return pick_all(args, picker, settings, manifest, paths)


def pick_all(args, picker, settings, manifest, paths) -> dict:
    """Pick every micrograph of `paths` not done yet, recording each in the manifest before and after."""
    output_dir = Path(args.output_dir)
    overlaid = {micrograph_stem(p) for p in paths[:args.overlays]}
    todo = [p for p in paths if not is_done(output_dir, manifest, micrograph_stem(p), settings["formats"])]
    counts = {"picked": 0, "failed": 0, "picks": 0}
    started = time.perf_counter()
    for path, micrograph in tqdm(read_ahead(todo, picker.facts), total=len(todo), desc="picking", unit="micrograph"):
        entry = {"stem": micrograph_stem(path), "path": str(Path(path).resolve())}
        if isinstance(micrograph, InputError):
            warnings.warn(str(micrograph))
            entry.update(status="failed", reason=str(micrograph))
        else:
            record(output_dir, manifest, {**entry, "status": "started"})  # its files are ours from here on
            entry = pick_one(args, picker, settings, path, micrograph, entry["stem"] in overlaid)
            counts["picks"] += entry["n_picks"]
        counts["picked" if entry["status"] == "done" else "failed"] += 1
        record(output_dir, manifest, entry)
    seconds = time.perf_counter() - started
    if "coco" in settings["formats"]:
        write_combined_coco(output_dir, manifest)
    if todo and not counts["picked"]:
        tried = {micrograph_stem(p) for p in todo}
        first = next(e for e in manifest["micrographs"] if e["status"] == "failed" and e["stem"] in tried)
        raise InputError(f"none of the {len(todo)} micrographs could be picked (e.g. {first['reason']})")
    return {"output_dir": str(output_dir), "micrographs": len(paths), "skipped": len(paths) - len(todo),
            **counts, "seconds": seconds,
            "seconds_per_micrograph": seconds / counts["picked"] if counts["picked"] else None,
            "settings": settings}


def print_summary(summary: dict) -> None:
    settings = summary["settings"]
    print(f"\n{summary['output_dir']}: {summary['micrographs']} micrographs: {summary['picked']} picked, "
          f"{summary['skipped']} skipped (already done), {summary['failed']} failed (unreadable)")
    print(f"  {summary['picks']:,} picks (threshold {settings['threshold']:g}, min distance "
          f"{settings['min_distance_px']:g} px, edge margin {settings['edge_margin_px']:g} px)")
    if summary["seconds_per_micrograph"] is not None:
        print(f"  {summary['seconds_per_micrograph']:.2f} s per micrograph on {settings['device']} "
              f"(stride {settings['stride']} rescaled px, {settings['scoring']} scoring, {settings['precision']})")


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    with exit_on_input_error():
        summary = run(args)
    print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
