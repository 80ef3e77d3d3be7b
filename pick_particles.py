"""Pick particles on whole micrographs with a trained checkpoint, and write their coordinates.

Inputs: --checkpoint, a best.pt/last.pt of our training scripts (the weights that were evaluated are
used: the weight average, else the EMA teacher; the preprocessing that made the training patches,
pixel size included, travels in it; several checkpoints, runs on the same chunks with other seeds, pick as
one ensemble that scores the mean of their logits); --micrographs, a folder, a glob pattern, a single micrograph, a
.txt list (one path per line, relative paths taken from the list's folder) or a RELION
micrographs.star / micrographs_ctf.star. Micrographs of any size are rescaled by the checkpoint's
scale, so particles have the training diameter; where a micrograph's pixel size (--pixel-size, its
MRC header, or the STAR's optics group) differs from the training pixel size, it is rescaled by the
ratio too (refused beyond 2x without --force). Unreadable micrographs are skipped and counted.

Each micrograph is scored densely (picking/score.py: windows every --stride rescaled px, batched on
the device; with --peak-rescore, the default, one more window per peak at its sub-cell position, its
logit the mean over --peak-symmetries rotations), and the score map becomes candidate picks by
non-maximum suppression at --min-distance-fraction x the particle diameter (0.5 by default, Topaz's
extract radius), above --candidate-threshold (a logit, default -6: low, so the candidates reach far
into recall). Candidates closer than --edge-margin px to the border (default an eighth of a diameter) are
dropped. Every candidate is kept with its score (candidates/<stem>.npy).

The pick files are then written from the candidates at one threshold (--threshold, a logit; else
suggested without ground truth: from --expected-particles per micrograph, else the valley of the score
histogram; printed, and drawn in score_histogram.png), at most --picks-per-micrograph each.
threshold_picks.py rewrites them at another threshold in seconds, without the network.

Outputs in --output-dir (picking/writers.py; --formats): a RELION job layout (<subfolder>/<stem>_autopick.star
and autopick.star, paths relative to --relion-project-dir), particles.star for cryoSPARC, per micrograph
<stem>.csv (CryoPPP), .box (EMAN), .txt (Topaz), picks.json (COCO), manifest.json (rewritten after every
micrograph; a rerun skips micrographs already done), overlays/<stem>.png for the first --overlays
micrographs (the picks written, on the micrograph).

    python pick_particles.py --checkpoint experiments/cpu_benchmark/best.pt \\
        --micrographs ../shared/data/empiar10017/test --output-dir runs/picks
"""
import argparse
import glob
import os
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from common.errors import InputError, exit_on_input_error
from common.files import LOCK_FILE, FolderBusy, file_sha256, folder_lock
from common.flags import parse_shard
from datasets.io.coordinates import micrograph_stem
from datasets.io.micrographs import list_micrographs, read_pixel_size
from datasets.io.star_lists import micrographs_from_star
from models.precision import native_bf16
from picking.rethreshold import add_output_flags, output_choice, print_outputs, write_at_threshold, written_with
from picking.score import (DEFAULT_PEAK_SYMMETRIES, MIN_DISTANCE_FRACTION, PEAK_SYMMETRIES, SCORING_METHODS,
                           default_stride, load_picker, pick_distances, pick_prepared, pixel_size_ratio,
                           prepare_for_picking, scoring_method)
from picking.writers import check_own_folder, is_done, open_manifest, read_manifest, record, write_candidates

DEFAULT_CANDIDATE_THRESHOLD = -6.0
PICK_SETTINGS = ("checkpoint_sha256", "stride", "peak_rescore", "peak_symmetries", "min_distance_fraction",
                 "candidate_threshold", "edge_margin_px", "scoring", "precision", "pixel_size", "relion_project_dir")


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="best.pt or last.pt of a training run; several (runs on the same chunks with other "
                             "training.seed) pick as one ensemble, scoring the mean of their logits")
    parser.add_argument("--micrographs", required=True,
                        help="folder, glob pattern, micrograph, .txt list, or RELION micrographs(_ctf).star")
    parser.add_argument("--output-dir", required=True, help="folder for the coordinate files and manifest")
    parser.add_argument("--pixel-size", type=float,
                        help="Å per pixel of the micrographs (default: MRC header, else the STAR's optics group)")
    parser.add_argument("--force", action="store_true",
                        help="pick micrographs more than 2x off the training pixel size")
    parser.add_argument("--relion-project-dir", default=".",
                        help="RELION project folder the STAR paths are relative to (default: the current folder)")
    parser.add_argument("--shard", help="i/N: pick every N-th micrograph (from the i-th); N processes can share "
                                        "one --output-dir (under torchrun each rank takes its shard)")
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
    parser.add_argument("--min-distance-fraction", type=float, default=MIN_DISTANCE_FRACTION,
                        help="minimum distance between picks, x particle diameter (default %(default)s)")
    parser.add_argument("--candidate-threshold", type=float, default=DEFAULT_CANDIDATE_THRESHOLD,
                        help="lowest logit kept as a candidate (default %(default)s, sigmoid 0.0025)")
    parser.add_argument("--edge-margin", type=float,
                        help="drop picks closer than this to the border, micrograph px (default: diameter / 8)")
    add_output_flags(parser)
    parser.add_argument("--scoring", choices=SCORING_METHODS,
                        help="downsample (default where patch_size / input_size divides the stride) or exact")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="network arithmetic (default: bf16 on CUDA and on CPUs with native bf16, else fp32)")
    parser.add_argument("--device", help="cuda, cuda:0 or cpu (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=1024, help="windows per network call")
    return parser


def resolve_micrographs(spec: str) -> tuple[list[Path], float | None]:
    """Micrograph paths from a folder, a .txt list, a RELION micrographs STAR, a single file or a glob
    pattern; and the STAR's pixel size (None otherwise)."""
    path, pixel_size = Path(spec), None
    if path.is_dir():
        found = list_micrographs(path)
    elif path.is_file() and path.suffix.lower() == ".txt":
        lines = [line.strip() for line in path.read_text().splitlines()]
        found = [path.parent / line for line in lines if line and not line.startswith("#")]
    elif path.is_file() and path.suffix.lower() == ".star":
        listed = micrographs_from_star(path)
        found, pixel_size = list(listed.paths), listed.pixel_size
    elif path.is_file():
        found = [path]
    else:
        found = [Path(p) for p in sorted(glob.glob(spec)) if Path(p).is_file()]
    if not found:
        raise InputError(f"no micrographs found at {spec}; pass a folder, a glob pattern in quotes, "
                         f"a .txt list of micrograph paths or a RELION micrographs.star")
    stems = [micrograph_stem(p) for p in found]
    repeated = sorted(stem for stem, count in Counter(stems).items() if count > 1)
    if repeated:
        raise InputError(f"micrographs share the name {repeated[0]} (their pick files would collide); "
                         f"pick them into separate --output-dir folders")
    return found, pixel_size


def read_ahead(paths, facts, pixel_size, force):
    """(path, PreparedMicrograph or InputError) in order; the next micrograph is read while the current
    one is scored."""
    def prepare(path):
        try:
            return prepare_for_picking(path, facts, pixel_size, force)
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
    for name in ("min_distance_fraction", "batch_size", "pixel_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise InputError(f"--{name.replace('_', '-')} {value:g} must be positive")
    if args.edge_margin is not None and args.edge_margin < 0:
        raise InputError(f"--edge-margin {args.edge_margin:g} must be zero or more (micrograph px)")
    resolved = [Path(path).resolve() for path in args.checkpoint]
    twice = next((path for index, path in enumerate(args.checkpoint) if resolved[index] in resolved[:index]), None)
    if twice is not None:
        raise InputError(f"--checkpoint {twice} is given twice; pass each ensemble member once")
    if args.peak_symmetries is not None and args.peak_symmetries > 1 and not args.peak_rescore:
        raise InputError(f"--peak-symmetries {args.peak_symmetries} averages views of the rescored peaks; "
                         f"drop --no-peak-rescore, or --peak-symmetries 1 to score the grid alone")


def pick_settings(args, picker, device) -> dict:
    """The resolved settings recorded in the manifest (the candidates depend on them; distances in the
    training micrographs' px, stride in rescaled px).

    The checkpoint's sha256 is among them: a model retrained into the same best.pt makes a rerun refuse
    the folder's old picks instead of counting them as done.
    """
    facts, input_size = picker.facts, picker.spec.input_size
    stride = args.stride or default_stride(facts, picker.spec)
    precision = args.precision if args.precision != "auto" else ("bf16" if native_bf16(device) else "fp32")
    return {"checkpoint_sha256": one_or_list([file_sha256(path) for path in args.checkpoint]), "stride": stride,
            "peak_rescore": args.peak_rescore,
            "peak_symmetries": args.peak_symmetries or (DEFAULT_PEAK_SYMMETRIES if args.peak_rescore else 1),
            "min_distance_fraction": args.min_distance_fraction, "candidate_threshold": args.candidate_threshold,
            "edge_margin_px": args.edge_margin, "diameter_px": float(facts.particle_diameter_px),
            "training_pixel_size": facts.pixel_size_angstrom, "pixel_size": args.pixel_size,
            "scoring": scoring_method(facts.patch_size, input_size, stride, args.scoring),
            "precision": precision, "device": str(device), "batch_size": args.batch_size,
            "relion_project_dir": str(Path(args.relion_project_dir).absolute())}


def one_or_list(values: list):
    """The manifest's form: one checkpoint's value as itself (as before ensembles), several as a list."""
    return values[0] if len(values) == 1 else values


def pick_one(picker, settings, path, micrograph) -> tuple[dict, object]:
    """Score one prepared micrograph: its manifest entry and its candidates, distances in its own pixels."""
    started = time.perf_counter()
    diameter = settings["diameter_px"] / micrograph.size_ratio
    min_distance, edge_margin = pick_distances(diameter, settings["min_distance_fraction"], settings["edge_margin_px"])
    candidates = pick_prepared(picker, micrograph, stride=settings["stride"], min_distance_px=min_distance,
                               threshold=settings["candidate_threshold"], device=settings["device"],
                               edge_margin_px=edge_margin, batch_size=settings["batch_size"],
                               method=settings["scoring"], bf16=settings["precision"] == "bf16",
                               rescore_peaks=settings["peak_rescore"], peak_symmetries=settings["peak_symmetries"])
    height, width = micrograph.original_shape
    entry = {"stem": micrograph_stem(path), "path": str(Path(path).absolute()), "status": "done",
             "n_candidates": len(candidates), "width": width, "height": height, "pixel_size": micrograph.pixel_size,
             "size_ratio": micrograph.size_ratio, "diameter_px": diameter, "seconds": time.perf_counter() - started}
    return entry, candidates


def check_pixel_size(args, picker, paths, star_pixel_size) -> float | None:
    """The pixel size given for every micrograph (--pixel-size, else the STAR's); the first micrograph's
    header checked up front, so a model 2x off the micrographs is refused before anything is written."""
    given = args.pixel_size or star_pixel_size
    first = given or read_pixel_size(paths[0])
    pixel_size_ratio(picker.facts, first, f"micrograph {paths[0]}" if given is None else "--pixel-size", args.force)
    return given


def torchrun_shard() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) under torchrun: each rank picks its own shard, on its own GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ["RANK"]), world_size) if world_size > 1 else None


def pick_device(args) -> torch.device:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def run(args) -> dict:
    check_options(args)
    output_choice(args)  # bad output flags are refused before the model loads
    shard = parse_shard(args.shard) if args.shard else torchrun_shard()
    paths, star_pixel_size = resolve_micrographs(args.micrographs)
    mine = paths if shard is None else paths[shard[0]::shard[1]]
    device = pick_device(args)
    picker = load_picker(args.checkpoint, device)
    pixel_size = check_pixel_size(args, picker, paths, star_pixel_size)
    settings = pick_settings(args, picker, device)
    output_dir = Path(args.output_dir)
    shard_lock = folder_lock(output_dir, "pick_particles", name=f"{LOCK_FILE}.shard-{shard[0]}-of-{shard[1]}") \
        if shard else nullcontext()
    with folder_lock(output_dir, "pick_particles", shared=shard is not None), shard_lock:
        checkpoints = one_or_list([str(Path(path).resolve()) for path in args.checkpoint])
        manifest, merged = open_manifest(output_dir, checkpoints, settings, PICK_SETTINGS, shard)
        check_own_folder(output_dir, merged, [{"stem": micrograph_stem(path)} for path in paths])
        choice = output_choice(args, merged.get("outputs"), keep_threshold=True)
        summary = pick_all(args, picker, settings, (manifest, merged, shard), mine, pixel_size)
        if shard is None:
            check_something_picked(merged, mine)
        if shard is None and not (summary["picked"] == 0 and written_with(merged, choice)):
            summary["outputs"] = write_at_threshold(output_dir, merged, choice)
        elif shard is None:
            summary["outputs"] = None  # nothing new, and the files already hold this threshold
    if shard is not None:
        summary["outputs"] = write_if_every_shard_is_done(output_dir, paths, choice)
        check_something_picked(merged, mine)
    return {**summary, "shard": shard}


def check_something_picked(merged, paths) -> None:
    """Exit 2 when none of this process's micrographs has candidates (every one failed, now or before)."""
    stems = {micrograph_stem(path) for path in paths}
    entries = [e for e in merged["micrographs"] if e["stem"] in stems]
    if paths and not any(e["status"] == "done" for e in entries):
        first = next((e for e in entries if e["status"] == "failed"), None)
        reason = first["reason"] if first else "no micrograph was read"
        raise InputError(f"none of the {len(paths)} micrographs could be picked (e.g. {reason})")


def write_if_every_shard_is_done(output_dir, paths, choice) -> dict | None:
    """The pick files, written by whichever shard finds every micrograph of the run picked (or failed) and
    no other shard still at work; None (the files wait for the last shard) otherwise."""
    try:
        with folder_lock(output_dir, "pick_particles"):
            merged = read_manifest(output_dir)
            finished = {e["stem"] for e in merged["micrographs"] if e["status"] in ("done", "failed")}
            if all(micrograph_stem(path) in finished for path in paths):
                return write_at_threshold(output_dir, merged, choice)
    except FolderBusy:
        pass  # another shard holds the folder: it is still picking, and the last one writes the files
    return None


def pick_all(args, picker, settings, manifests, paths, pixel_size) -> dict:
    """Score every micrograph of `paths` not done yet, recording each in this process's manifest before
    and after; `manifests` = (this process's, the folder's merged one, the shard or None)."""
    manifest, merged, shard = manifests
    output_dir = Path(args.output_dir)
    todo = [p for p in paths if not is_done(output_dir, merged, micrograph_stem(p))]
    counts, ratios = {"picked": 0, "failed": 0, "candidates": 0}, Counter()
    started = time.perf_counter()
    prepared = read_ahead(todo, picker.facts, pixel_size, args.force)
    for path, micrograph in tqdm(prepared, total=len(todo), desc="picking", unit="micrograph"):
        entry = {"stem": micrograph_stem(path), "path": str(Path(path).absolute())}
        if isinstance(micrograph, InputError):
            warnings.warn(str(micrograph))
            entry.update(status="failed", reason=str(micrograph))
        else:
            record(output_dir, manifest, {**entry, "status": "started"}, shard, merged)  # its files are ours now
            entry, candidates = pick_one(picker, settings, path, micrograph)
            write_candidates(output_dir, entry["stem"], candidates)
            counts["candidates"] += entry["n_candidates"]
            ratios[(micrograph.pixel_size, round(micrograph.size_ratio, 4))] += 1
        counts["picked" if entry["status"] == "done" else "failed"] += 1
        record(output_dir, manifest, entry, shard, merged)
    seconds = time.perf_counter() - started
    return {"output_dir": str(output_dir), "micrographs": len(paths), "skipped": len(paths) - len(todo),
            **counts, "seconds": seconds, "pixel_sizes": ratios,
            "seconds_per_micrograph": seconds / counts["picked"] if counts["picked"] else None,
            "settings": settings}


def describe_pixel_sizes(pixel_sizes: Counter, training_pixel_size) -> list[str]:
    """One line per pixel size met: rescaled to the training pixel size, or sizes taken as trained."""
    lines = []
    for (pixel_size, ratio), count in sorted(pixel_sizes.items(), key=lambda item: str(item[0])):
        if pixel_size is None or training_pixel_size is None:
            known = "micrographs'" if training_pixel_size is not None else "training"
            lines.append(f"  {count} micrographs: {known} pixel size unknown, picked in pixels as trained")
        elif ratio != 1:
            lines.append(f"  {count} micrographs at {pixel_size:g} Å/px rescaled to the training {training_pixel_size:g} "
                         f"Å/px ({ratio:.3f}x); coordinates in their own pixels")
    return lines


def print_summary(summary: dict) -> None:
    settings = summary["settings"]
    print(f"\n{summary['output_dir']}: {summary['micrographs']} micrographs: {summary['picked']} picked, "
          f"{summary['skipped']} skipped (already done), {summary['failed']} failed (unreadable)")
    print(f"  {summary['candidates']:,} candidates (logit >= {settings['candidate_threshold']:g}, min distance "
          f"{settings['min_distance_fraction']:g} x {settings['diameter_px']:g} px)")
    for line in describe_pixel_sizes(summary["pixel_sizes"], settings["training_pixel_size"]):
        print(line)
    if summary["outputs"] is not None:
        print_outputs(summary["outputs"])
    elif summary["shard"] is None:
        print("  pick files unchanged: nothing new was picked and they already hold this threshold")
    else:
        print(f"  shard {summary['shard'][0]}/{summary['shard'][1]} done; the last shard to finish writes the pick "
              f"files (or run threshold_picks.py --output-dir {summary['output_dir']} once all are done)")
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
