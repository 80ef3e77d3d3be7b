"""Sliding-window patches of every micrograph -> chunked .pt files (the chunked preprocessing guide).

Inputs: a dataset root (CryoTransformer layout `{train,val,test}/` + `annotations/instances_<split>.json`
or `particle_coordinates/<stem>.csv`; or one folder of micrographs with --annotations) and
configs/preprocessing_config.yaml (every key overridable by a flag or --set section.key=value).
Outputs, in --output-dir: `{train,val,test}_chunk_0000.pt ...` (the chunk contract of DESIGN.md) and
metadata.json (config, micrograph table with scales, counts per split and sample type, priors, resume
cursor, `complete`). Rerunning the same command resumes; --no-resume starts over (this tool's files only).

Each micrograph is rescaled so particles are `target_diameter` px (or kept native), normalised to uint8,
and cut into windows (patch 128, stride 64). A window is positive when a labeled particle centre lies
within `positive_radius` x diameter of its centre; all positives and a seeded `ratio` of the other windows
are kept. pi (prior_unlabeled) is counted where the truth is known (synthetic ground_truth/), else
estimated from --expected-particles per micrograph.

    python preprocess_chunked.py --data-root data/synthetic --output-dir data/chunks/sliding --ratio 0.3
"""
import argparse
import math
from functools import partial
from pathlib import Path

from datasets.errors import InputError, exit_on_input_error
from datasets.layout import dataset_diameter, load_dataset
from datasets.patch_sampling import sliding_window_samples
from datasets.preprocess_run import (add_preprocessing_flags, counted_prior, parse_shard, positive_fraction,
                                     print_summary, run_preprocessing)
from utils.config import resolve_config

TOOL = "preprocess_chunked"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "preprocessing_config.yaml"
FLAG_KEYS = {"data_root": "data.data_root", "annotations": "data.annotations",
             "output_dir": "data.output_dir", "patch_size": "preprocessing.patch_size",
             "stride": "preprocessing.stride", "target_diameter": "preprocessing.target_diameter",
             "particle_diameter": "preprocessing.particle_diameter",
             "native_resolution": "preprocessing.native_resolution",
             "positive_radius": "preprocessing.positive_radius", "ratio": "preprocessing.ratio",
             "expected_particles": "preprocessing.expected_particles", "chunk_size": "preprocessing.chunk_size",
             "seed": "preprocessing.seed"}


def get_args_parser():
    parser = add_preprocessing_flags(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), DEFAULT_CONFIG)
    parser.add_argument("--stride", type=int)
    parser.add_argument("--positive-radius", type=float, help="x diameter; labeled centre this close = positive")
    parser.add_argument("--ratio", type=float, help="fraction of non-positive windows kept (0.1 0.3 0.5 1.0)")
    parser.add_argument("--expected-particles", type=float, help="particles per micrograph, for pi")
    return parser


def resolve(args):
    flags = {dotted: getattr(args, name) for name, dotted in FLAG_KEYS.items()}
    config = resolve_config(DEFAULT_CONFIG, args.config, flags, args.set)
    pre = config["preprocessing"]
    if not 0.0 <= pre["ratio"] <= 1.0:
        raise InputError(f"--ratio {pre['ratio']} must be between 0 and 1")
    if pre["stride"] <= 0 or pre["patch_size"] <= 0:
        raise InputError("--patch-size and --stride must be positive")
    return config


def shard_dir(output_dir, shard):
    return Path(output_dir) if shard is None else Path(output_dir) / f"shard-{shard[0]}-of-{shard[1]}"


def expected_particles_prior(metadata, expected, radius, stride):
    """pi from the expected particle count: hidden particles x windows each makes positive / unlabeled windows."""
    windows_per_particle = math.pi * radius ** 2 / stride ** 2
    hidden_windows = unlabeled = 0.0
    for entry in metadata["micrographs"]:
        if entry.get("split") != "train" or entry.get("status") != "done":
            continue
        missing = max(expected - entry["n_labeled"], 0.0)
        hidden_windows += min(entry["unlabeled_windows"], missing * windows_per_particle)
        unlabeled += entry["unlabeled_windows"]
    return hidden_windows, unlabeled


def make_priors_fn(pre, radius_px):
    def priors(metadata):
        counts = metadata["splits"]["train"]["counts"]
        result = {"positive_fraction": positive_fraction(counts)}
        if counts["hidden_positive"] + counts["background"] > 0:
            return {"prior_unlabeled": counted_prior(counts), "method": "counted", **result}
        if pre["expected_particles"]:
            hidden, unlabeled = expected_particles_prior(metadata, pre["expected_particles"], radius_px,
                                                         pre["stride"])
            return {"prior_unlabeled": hidden / unlabeled if unlabeled else float("nan"),
                    "method": "expected_particles", "hidden_windows_estimate": hidden,
                    "unlabeled_windows": unlabeled, **result}
        return {"prior_unlabeled": None, "method": "unknown: pass --expected-particles", **result}
    return priors


def sliding_sampler(image, particles_xy, truth_xy, known_negative_xy, rng, *, train, **kwargs):
    """Sliding windows of one micrograph, plus the labeled count the expected-particles prior needs."""
    samples, stats = sliding_window_samples(image, particles_xy, truth_xy, rng, train=train, **kwargs)
    stats["n_labeled"] = int(len(particles_xy))
    return samples, stats


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    with exit_on_input_error():
        config = resolve(args)
        shard = parse_shard(args.shard)
        summary = run(config, args, shard)
    print_summary(summary)
    return summary


def run(config, args, shard):
    data, pre = config["data"], config["preprocessing"]
    records, report = load_dataset(data["data_root"], data["annotations"], pre["seed"], pre["split_fractions"])
    diameter = dataset_diameter(records, pre["particle_diameter"])
    scale = 1.0 if pre["native_resolution"] else pre["target_diameter"] / diameter
    if shard is not None:
        records = [r for r in records if r.index % shard[1] == shard[0]]
    radius_px = pre["positive_radius"] * diameter * scale
    sampler = partial(sliding_sampler, size=pre["patch_size"], stride=pre["stride"], radius=radius_px,
                      ratio=pre["ratio"])
    stored = {**pre, "data_root": str(Path(data["data_root"]).resolve()), "annotations": data["annotations"],
              "shard": args.shard, "particle_diameter_px": diameter, "scale": scale,
              "label_source": report["label_source"]}
    print(f"{len(records)} micrographs, particle diameter {diameter:g} px, scale {scale:.4f} "
          f"(particles become {diameter * scale:.1f} px), labels from {report['label_source']}")
    return run_preprocessing(TOOL, stored, records, sampler, output_dir=shard_dir(data["output_dir"], shard),
                             resume=not args.no_resume, num_workers=args.num_workers, strict=args.strict,
                             priors_fn=make_priors_fn(pre, radius_px), scale=scale)


if __name__ == "__main__":
    main()
