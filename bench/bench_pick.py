"""The blind benchmark: pick from partial labels as a user has them, on any data set with complete labels.

For each label fraction F, a new dataset folder is written first (`write_blind_dataset`, the research
protocol's only contact with the complete labels): its train label file keeps a seeded round(F x n)
of each micrograph's n particles and nothing else; val and test keep every particle, for scoring.
Then the user's path runs on that folder alone: `preprocess_coco_full_dataset.py --labels partial
--expected-particles E` (E = the mean particle count of a train micrograph, the one number a user
estimates, as for Topaz's -n), training with the data's pi, picking the test micrographs, and
`evaluate_picks.py` against the complete test labels. Prints one row per (data set, F): AUPRC, best
F1 with its precision and recall, pi used, training and picking seconds.

    python -m bench.bench_pick --data-root ../shared/data/empiar10017 --label-fractions 0.7 0.3 0.1 \
        --output-dir bench_runs/blind_empiar10017
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.runner import sh
from common.flags import add_renamed_argument
from datasets.io.coordinates import write_coco
from datasets.io.layout import SPLITS, load_dataset
from datasets.io.micrographs import read_micrograph


def kept_particles(particles, fraction, rng):
    """A seeded round(fraction x n) of one micrograph's particles (rows kept in their order)."""
    keep = int(round(fraction * len(particles)))
    return particles[np.sort(rng.choice(len(particles), size=keep, replace=False))]


def write_blind_dataset(root, out, fraction, seed=42):
    """`out` in the CryoTransformer layout: the micrographs of `root` (linked), train labels cut to a
    seeded `fraction` of each micrograph's particles, val and test labels complete. No ground truth and
    no other label file is written, so nothing downstream can learn where the dropped particles are.
    Returns (label counts per split before and after, the mean train particle count)."""
    records, _ = load_dataset(root, read_truth=False)
    out = Path(out)
    counts = {split: [0, 0] for split in SPLITS}
    for split in SPLITS:
        table, images = {}, {}
        for record in (r for r in records if r.split == split):
            (out / split).mkdir(parents=True, exist_ok=True)
            link = out / split / Path(record.path).name
            if not link.exists():
                link.symlink_to(Path(record.path).resolve())
            rng = np.random.default_rng([seed, record.index])
            table[record.stem] = (kept_particles(record.particles, fraction, rng) if split == "train"
                                  else record.particles)
            height, width = read_micrograph(record.path).shape
            images[record.stem] = {"file_name": link.name, "width": width, "height": height}
            counts[split][0] += len(record.particles)
            counts[split][1] += len(table[record.stem])
        if images:
            write_coco(out / "annotations" / f"instances_{split}.json", table, images)
    train = [len(r.particles) for r in records if r.split == "train"]
    return counts, float(np.mean(train))


def ours(data, out, expected, config, log):
    """The user's path on the blind folder: preprocess (partial), train, pick the test split, evaluate."""
    sh([sys.executable, "preprocess_coco_full_dataset.py", "--data-root", data, "--output-dir", out / "chunks",
        "--labels", "partial", "--expected-particles", expected, "--num-workers", "2"], log)
    sh([sys.executable, "train_pu_fixed_full.py", "--config", config, "--data-dir", out / "chunks", "--exp-name",
        "ours", "--output-root", out / "runs", "--use-data-prior", "--device", "cpu"], log)
    pick = sh([sys.executable, "pick_particles.py", "--checkpoint", out / "runs" / "ours" / "best.pt",
               "--micrographs", data / "test", "--output-dir", out / "picks", "--device", "cpu"], log)
    sh([sys.executable, "evaluate_picks.py", "--picks", out / "picks", "--ground-truth",
        data / "annotations" / "instances_test.json", "--output", out / "eval.json"], log)
    results = json.loads((out / "runs" / "ours" / "results.json").read_text())
    n_test = len(list((data / "test").iterdir()))
    return {**json.loads((out / "eval.json").read_text()), "prior": results["prior"],
            "train_s": results["timings"]["train_seconds"], "pick_s_per_mic": pick / n_test}


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="a data set with complete labels (CryoTransformer layout)")
    parser.add_argument("--label-fractions", type=float, nargs="+", default=[0.7, 0.3, 0.1])
    add_renamed_argument(parser, "--output-dir", "--out", required=True,
                         help="folder for the blind datasets, runs and results")
    parser.add_argument("--config", default="configs/cpu_benchmark.yaml", help="our training config")
    parser.add_argument("--seed", type=int, default=42, help="seed of the label dropping")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    out, rows = Path(args.output_dir).resolve(), []
    for fraction in args.label_fractions:
        case = out / f"F{fraction:g}"
        counts, expected = write_blind_dataset(args.data_root, case / "data", fraction, args.seed)
        print(f"F {fraction:g}: train labels {counts['train'][1]} of {counts['train'][0]} kept; "
              f"expected particles {expected:.1f} per micrograph", flush=True)
        rows.append((fraction, ours(case / "data", case, f"{expected:.1f}", args.config, case / "bench.log")))
    print(f"\n{Path(args.data_root).name}: ours, {args.config}")
    print(f"{'F':>5s} {'AUPRC':>7s} {'bestF1':>7s} {'precision':>9s} {'recall':>7s} {'pi':>7s} {'train s':>8s} "
          f"{'pick s/mic':>10s}")
    for fraction, r in rows:
        print(f"{fraction:5.2f} {r['auprc']:7.3f} {r['best_f1']:7.3f} {r['precision']:9.3f} {r['recall']:7.3f} "
              f"{r['prior']:7.4f} {r['train_s']:8.0f} {r['pick_s_per_mic']:10.2f}")
    (out / "bench_summary.json").write_text(json.dumps({f"{f:g}": r for f, r in rows}, indent=2, default=float))
    return rows


if __name__ == "__main__":
    main()
