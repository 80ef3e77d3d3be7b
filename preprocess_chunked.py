"""Sliding-window patches of every micrograph -> chunked .pt files.

Inputs: a dataset root (CryoTransformer layout `{train,val,test}/` + `annotations/instances_<split>.json`
or `particle_coordinates/<stem>.csv`; or one folder of micrographs with --annotations) and
configs/preprocessing_config.yaml (every key overridable by a flag or --set section.key=value).
Outputs, in --output-dir: `{train,val,test}_chunk_0000.pt ...` (the chunk contract of docs/data.md) and
metadata.json (config, preprocessing facts, micrograph table with scales, counts per split and sample
type, priors, resume cursor, `complete`). Rerunning the same command resumes; --no-resume starts over
(this tool's files only).

Each micrograph is rescaled so particles are `target_diameter` px (or kept native), normalised to uint8,
and cut into windows (patch 128, stride 64). A window is positive when a labeled particle centre lies
within `positive_radius` x diameter of its centre; all positives and a seeded `ratio` of the other windows
are kept. pi (prior_unlabeled) is counted where the truth is known (synthetic ground_truth/), else
estimated from --expected-particles per micrograph (datasets/prior.py).

    python preprocess_chunked.py --data-root data/synthetic --output-dir data/chunks/sliding --ratio 0.3
"""
import argparse
from functools import partial
from pathlib import Path

from common.errors import InputError, exit_on_input_error
from common.flags import parse_shard
from datasets.io.layout import load_dataset
from datasets.preprocessing.flags import (SHARED_FLAG_KEYS, add_preprocessing_flags, resolve_preprocessing_config,
                                          shard_dir)
from datasets.preprocessing.run import describe_facts, preprocessing_facts, print_summary, run_preprocessing
from datasets.prior import counted_prior, expected_particles_windows, positive_fraction, prior_record
from datasets.sampling.windows import sliding_window_samples

TOOL = "preprocess_chunked"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "preprocessing_config.yaml"
FLAG_KEYS = {**SHARED_FLAG_KEYS, "stride": "preprocessing.stride", "positive_radius": "preprocessing.positive_radius",
             "ratio": "preprocessing.ratio", "expected_particles": "preprocessing.expected_particles"}


def get_args_parser():
    parser = add_preprocessing_flags(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), DEFAULT_CONFIG)
    parser.add_argument("--stride", type=int)
    parser.add_argument("--positive-radius", type=float, help="x diameter; labeled centre this close = positive")
    parser.add_argument("--ratio", type=float, help="fraction of non-positive windows kept (0.1 0.3 0.5 1.0)")
    parser.add_argument("--expected-particles", type=float, help="particles per micrograph, for pi")
    return parser


def resolve(args):
    config = resolve_preprocessing_config(args, DEFAULT_CONFIG, FLAG_KEYS)
    pre = config["preprocessing"]
    if not 0.0 <= pre["ratio"] <= 1.0:
        raise InputError(f"--ratio {pre['ratio']} must be between 0 and 1")
    if pre["stride"] <= 0:
        raise InputError(f"--stride {pre['stride']} must be positive")
    return config


def make_priors_fn(pre, radius_px):
    def priors(metadata):
        counts = metadata["splits"]["train"]["counts"]
        if counts["hidden_positive"] + counts["background"] > 0:
            return counted_prior(counts)
        if pre["expected_particles"]:
            positives, unlabeled = expected_particles_windows(metadata["micrographs"], pre["expected_particles"],
                                                              radius_px, pre["stride"])
            return prior_record("expected_particles", positives, unlabeled,
                                positive_fraction=positive_fraction(counts))
        return {"prior_unlabeled": None, "method": "unknown: pass --expected-particles",
                "positive_fraction": positive_fraction(counts)}
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
    facts = preprocessing_facts(pre, records)
    if shard is not None:
        records = [r for r in records if r.index % shard[1] == shard[0]]
    radius_px = pre["positive_radius"] * facts.particle_diameter_px * facts.scale
    sampler = partial(sliding_sampler, size=pre["patch_size"], stride=pre["stride"], radius=radius_px,
                      ratio=pre["ratio"])
    stored = {**pre, "data_root": str(Path(data["data_root"]).resolve()), "annotations": data["annotations"],
              "shard": args.shard, "label_source": report["label_source"]}
    print(f"{len(records)} micrographs, {describe_facts(facts)}, labels from {report['label_source']}")
    return run_preprocessing(TOOL, stored, records, sampler, facts=facts,
                             output_dir=shard_dir(data["output_dir"], shard), resume=not args.no_resume,
                             num_workers=args.num_workers, strict=args.strict,
                             priors_fn=make_priors_fn(pre, radius_px))


if __name__ == "__main__":
    main()
