"""COCO / CryoPPP particle annotations -> a PU split in chunked .pt files.

Inputs: --data-root in the CryoTransformer layout (`{train,val,test}/` micrographs,
`annotations/instances_<split>.json`, else `particle_coordinates/<stem>.csv`; `ground_truth/` when the
complete truth is known, as for make_synthetic_dataset.py output), configs/coco_pu_preprocessing.yaml.
Outputs, in --output-dir: `{train,val,test}_chunk_0000.pt ...` (the chunk contract of docs/data.md) and
metadata.json with the preprocessing facts, the micrograph table, counts and the priors.

Per train micrograph: a seeded `hide_ratio` of the particles is hidden (their particle-centred patches
go to the unlabeled set), the rest are labeled positives; `neg_per_pos` negatives per particle are cut at
distinct positions at least `neg_min_distance` diameters from every annotated particle (dense micrographs
may hold fewer: the achieved ratio is recorded), and `offcentre_per_pos` off-centre windows per particle
are cut `offcentre_distance` (low, high) diameters beside a particle and at least `low` from every
particle, so the classifier learns where a particle's centre is and picks do not ring each particle. With
`offcentre_label: known_negative` (the default) they lie beside the labeled particles and are known
negatives (label -1); with `unlabeled` they lie beside any particle and join the unlabeled set.
Val/test keep true labels for evaluation.
prior_unlabeled = hidden / (hidden + background) is the pi nnPU needs (datasets/prior.py);
positive_fraction, positives / all patches, is kept for comparison only.

    python preprocess_coco_full_dataset.py --data-root data/synthetic --output-dir data/chunks/coco_pu \
        --patch-size 128 --hide-ratio 0.3 --neg-per-pos 1.0 --seed 42
"""
import argparse
import warnings
from functools import partial
from pathlib import Path

from common.errors import InputError, exit_on_input_error
from common.flags import parse_shard
from datasets.io.layout import SPLITS, load_dataset
from datasets.preprocessing.flags import (SHARED_FLAG_KEYS, add_preprocessing_flags, resolve_preprocessing_config,
                                          shard_dir)
from datasets.preprocessing.run import describe_facts, preprocessing_facts, print_summary, run_preprocessing
from datasets.prior import counted_prior, expected_missing, partial_labels_windows, positive_fraction, prior_record
from datasets.sampling.coco_pu import LABEL_MODES, WINDOW_BASES, coco_pu_samples
from training.prior_estimate import CITATION, estimate_missing_density

TOOL = "preprocess_coco_full_dataset"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "coco_pu_preprocessing.yaml"
OFFCENTRE_LABELS = ("unlabeled", "known_negative")
FLAG_KEYS = {**SHARED_FLAG_KEYS, "known_negatives": "data.known_negatives", "labels": "preprocessing.labels",
             "expected_particles": "preprocessing.expected_particles", "hide_ratio": "preprocessing.hide_ratio",
             "neg_per_pos": "preprocessing.neg_per_pos", "neg_min_distance": "preprocessing.neg_min_distance",
             "offcentre_per_pos": "preprocessing.offcentre_per_pos",
             "offcentre_distance": "preprocessing.offcentre_distance",
             "offcentre_label": "preprocessing.offcentre_label",
             "random_per_pos": "preprocessing.random_per_pos", "centre_radius": "preprocessing.centre_radius",
             "max_images_train": "preprocessing.max_images_train"}


def get_args_parser():
    parser = add_preprocessing_flags(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), DEFAULT_CONFIG)
    parser.add_argument("--known-negatives", help="PUFP: rejected picks (file or folder, any format)")
    parser.add_argument("--labels", choices=LABEL_MODES,
                        help="partial (default: your labels are all there is, nothing is hidden, no truth is read) or "
                             "complete (a research split: --hide-ratio of them hidden, pi counted)")
    parser.add_argument("--expected-particles", type=float,
                        help="particles per micrograph (labeled or not): pi with --labels partial; the unlabeled "
                             "windows are drawn per expected particle (preprocessing.unlabeled_windows_per)")
    parser.add_argument("--hide-ratio", type=float, help="--labels complete: fraction of train particles hidden")
    parser.add_argument("--neg-per-pos", type=float, help="negatives per particle")
    parser.add_argument("--neg-min-distance", type=float, help="negatives at least this x diameter away")
    parser.add_argument("--offcentre-per-pos", type=float, help="off-centre negatives per particle (0 = none)")
    parser.add_argument("--offcentre-distance", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="off-centre negatives lie LOW..HIGH x diameter beside a particle")
    parser.add_argument("--offcentre-label", choices=OFFCENTRE_LABELS,
                        help="train: off-centre windows join the unlabeled set, or are known negatives "
                             "placed beside the labeled particles")
    parser.add_argument("--random-per-pos", type=float,
                        help="windows per particle at random positions anywhere on the micrograph, unlabeled")
    parser.add_argument("--centre-radius", type=float,
                        help="a random window within this x diameter of a particle centre is a positive")
    parser.add_argument("--max-images-train", type=int, help="use only the first N train micrographs")
    return parser


def resolve(args):
    config = resolve_preprocessing_config(args, DEFAULT_CONFIG, FLAG_KEYS)
    pre = config["preprocessing"]
    if not 0.0 <= pre["hide_ratio"] < 1.0:
        raise InputError(f"--hide-ratio {pre['hide_ratio']} must be in [0, 1)")
    if pre["labels"] not in LABEL_MODES:
        raise InputError(f"preprocessing.labels {pre['labels']!r} is not one of {', '.join(LABEL_MODES)}")
    if pre["unlabeled_windows_per"] not in WINDOW_BASES:
        raise InputError(f"preprocessing.unlabeled_windows_per {pre['unlabeled_windows_per']!r} is not one of "
                         f"{', '.join(WINDOW_BASES)}")
    if pre["labels"] == "partial" and pre["hide_ratio"]:
        raise InputError(f"--hide-ratio {pre['hide_ratio']} hides labels you gave, but with --labels partial they "
                         f"are all there is: drop --hide-ratio, or use --labels complete for a research split")
    if pre["expected_particles"] is not None and pre["expected_particles"] <= 0:
        raise InputError(f"--expected-particles {pre['expected_particles']} must be positive (particles per "
                         f"micrograph, labeled or not)")
    if min(pre["neg_per_pos"], pre["neg_min_distance"], pre["offcentre_per_pos"], pre["random_per_pos"]) < 0:
        raise InputError("--neg-per-pos, --neg-min-distance, --offcentre-per-pos and --random-per-pos "
                         "must not be negative")
    if not 0 < pre["centre_radius"] < 0.5:
        raise InputError(f"--centre-radius {pre['centre_radius']} must lie in (0, 0.5) diameters: a window "
                         f"counts as centred on a particle within it")
    distance = pre["offcentre_distance"]
    if not (isinstance(distance, (list, tuple)) and len(distance) == 2):
        raise InputError(f"offcentre_distance {distance!r} must be two numbers [LOW, HIGH] (diameters)")
    low, high = distance
    if pre["offcentre_label"] not in OFFCENTRE_LABELS:
        raise InputError(f"offcentre_label {pre['offcentre_label']!r} is not one of {', '.join(OFFCENTRE_LABELS)}")
    if not 0 < low < high:
        raise InputError(f"--offcentre-distance {low} {high} must satisfy 0 < LOW < HIGH (diameters)")
    return config


def coco_priors(metadata, *, output_dir):
    """prior_unlabeled (pi for nnPU) and how it was obtained, positive_fraction, the achieved negative ratio."""
    pre, counts = metadata["config"], metadata["splits"]["train"]["counts"]
    done = [m for m in metadata["micrographs"] if m.get("split") == "train" and m.get("status") == "done"]
    particles = sum(m["n_particles"] for m in done)
    achieved = {"neg_per_pos_requested": pre["neg_per_pos"],
                "neg_per_pos_achieved": sum(m["negatives_found"] for m in done) / particles if particles else 0.0,
                "offcentre_per_pos_achieved": sum(m["offcentre_found"] for m in done) / particles if particles else 0.0,
                "negatives_short": sum(m["negatives_wanted"] - m["negatives_found"] for m in done)}
    if pre["labels"] == "complete":
        return counted_prior(counts, **achieved)
    achieved["positive_fraction"] = positive_fraction(counts)
    diameter = metadata["facts"]["particle_diameter_px"] * metadata["facts"]["scale"]
    if pre["expected_particles"] is None:
        return estimated_prior(done, output_dir, metadata, diameter, achieved)
    below = [m["stem"] for m in done if m["n_labeled"] > pre["expected_particles"]]
    if below:
        warnings.warn(f"--expected-particles {pre['expected_particles']:g} is below the labeled count of "
                      f"{len(below)} train micrograph(s) (e.g. {below[0]}); there they count as fully labeled")
    positives, unlabeled = partial_labels_windows(done, expected_missing(pre["expected_particles"]), diameter,
                                                  pre["centre_radius"])
    return prior_record("expected_particles", positives, unlabeled, **achieved)


def estimated_prior(done, output_dir, metadata, diameter, achieved):
    """No count given: BBE's estimate of the unlabeled particles, recorded as a suggestion for
    --expected-particles but not used as pi (it measured 1.1-3.8x the counted pi, docs/method.md)."""
    pre = metadata["config"]
    print(f"no --expected-particles: estimating the particle count from the patches by {CITATION}")
    estimate = estimate_missing_density(output_dir, metadata, diameter, pre["neg_min_distance"], pre["seed"])
    if estimate.reason is not None:
        return {"prior_unlabeled": None, "method": f"unknown: {estimate.reason}", **achieved}
    positives, unlabeled = partial_labels_windows(
        done, lambda entry: (estimate.density_per_px * entry["free_area_px"],) * 2, diameter, pre["centre_radius"])
    expected = sum(m["n_labeled"] + estimate.density_per_px * m["free_area_px"] for m in done) / max(len(done), 1)
    return {"prior_unlabeled": None, "method": f"unknown: no --expected-particles (BBE suggests about {expected:.0f} "
                                               f"particles per micrograph; check it on a few micrographs)",
            "bbe_prior_unlabeled": positives / unlabeled if unlabeled else None, "estimator": CITATION,
            "far_windows_with_particle": estimate.alpha, "estimated_particles_per_micrograph": expected, **achieved}


def window_basis_count(pre):
    """The particle count far negatives and random windows are drawn per on a train micrograph, when it is
    not the labeled count: the expected count, with `unlabeled_windows_per: expected` (the default) and
    `--expected-particles`. With --labels complete the count only sets this basis (pi is counted from the
    truth), so a research protocol can count pi over the very windows a partial-labels run drew."""
    use_expected = pre["unlabeled_windows_per"] == "expected"
    return pre["expected_particles"] if use_expected else None


def select_train(records, max_images):
    if max_images is None:
        return records
    train = [r for r in records if r.split == "train"][:max_images]
    keep = {r.index for r in train} | {r.index for r in records if r.split != "train"}
    return [r for r in records if r.index in keep]


def run(config, args, shard):
    data, pre = config["data"], config["preprocessing"]
    records, report = load_dataset(data["data_root"], data["annotations"], pre["seed"], pre["split_fractions"],
                                   known_negatives=data["known_negatives"], read_truth=pre["labels"] == "complete")
    if report["truth_ignored"]:
        print(f"labels partial: {Path(data['data_root']) / 'ground_truth'} is ignored (only the annotations are read)")
    records = select_train(records, pre["max_images_train"])
    facts = preprocessing_facts(pre, records)
    if shard is not None:
        records = [r for r in records if r.index % shard[1] == shard[0]]
    window_particles = window_basis_count(pre)
    sampler = partial(coco_pu_samples, size=pre["patch_size"], diameter=facts.particle_diameter_px * facts.scale,
                      labels=pre["labels"], hide_ratio=pre["hide_ratio"], neg_per_pos=pre["neg_per_pos"],
                      neg_min_distance=pre["neg_min_distance"], offcentre_per_pos=pre["offcentre_per_pos"],
                      offcentre_distance=tuple(pre["offcentre_distance"]), offcentre_label=pre["offcentre_label"],
                      random_per_pos=pre["random_per_pos"], centre_radius=pre["centre_radius"],
                      window_particles=window_particles)
    stored = {**pre, "window_particles": window_particles,  # expected_particles alone only changes pi
              "data_root": str(Path(data["data_root"]).resolve()), "annotations": data["annotations"],
              "known_negatives": data["known_negatives"], "shard": args.shard, "label_source": report["label_source"]}
    for split in SPLITS:
        print(f"Processing {split} split: {sum(r.split == split for r in records)} micrographs")
    print(describe_facts(facts))
    output_dir = shard_dir(data["output_dir"], shard)
    summary = run_preprocessing(TOOL, stored, records, sampler, facts=facts, output_dir=output_dir,
                                resume=not args.no_resume, num_workers=args.num_workers, strict=args.strict,
                                priors_fn=partial(coco_priors, output_dir=Path(output_dir)))
    if summary["priors"]["negatives_short"] > 0:
        warnings.warn(f"micrographs too dense for {pre['neg_per_pos']} negatives per particle at "
                      f"{pre['neg_min_distance']} diameters: achieved {summary['priors']['neg_per_pos_achieved']:.2f}")
    return summary


def print_prior_summary(summary, window_particles):
    train = summary["splits"].get("train", {})
    print(f"\nTrain micrographs: {summary['micrographs_per_split']['train']}")
    print(f"  Positive patches (labeled): {train.get('labeled_positive', 0):,}")
    unlabeled = sum(train.get(kind, 0) for kind in ("hidden_positive", "background", "unlabeled"))
    basis = (f"per expected particle, {window_particles:g} per micrograph" if window_particles
             else "per labeled particle")
    print(f"  Unlabeled patches: {unlabeled:,} (far and random windows drawn {basis})")
    prior = summary["priors"]["prior_unlabeled"]
    print("  prior_unlabeled (pi for nnPU): " + (f"{prior:.4f} ({summary['priors']['method']})" if prior is not None
                                                  else f"{summary['priors']['method']}: pass --expected-particles, "
                                                       f"or set loss.prior"))
    if "estimated_particles_per_micrograph" in summary["priors"]:
        print(f"  particles per train micrograph, estimated by BBE: "
              f"{summary['priors']['estimated_particles_per_micrograph']:.1f} (a suggestion for --expected-particles)")
    print(f"  positive_fraction (not pi; positives / all patches): {summary['priors']['positive_fraction']:.4f}")


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    with exit_on_input_error():
        config = resolve(args)
        summary = run(config, args, parse_shard(args.shard))
    print_summary(summary)
    print_prior_summary(summary, window_basis_count(config["preprocessing"]))
    return summary


if __name__ == "__main__":
    main()
