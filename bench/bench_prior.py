"""π from the expected particle count beside the π the truth counts, on synthetic data with known truth.

For each (density, labeled fraction) a synthetic dataset is generated (its ground_truth/ holds every
particle), then preprocessed twice with the same seed, so the same windows are drawn:
`--labels complete --hide-ratio 0` reads the truth and counts π over the unlabeled windows;
`--labels partial --expected-particles E` (E = the true mean count per train micrograph, what a user
would estimate) never reads the truth and estimates it. Prints one row per case and the ratio.

    python -m bench.bench_prior [--num-train 12 --size 1024]
"""
import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np

import make_synthetic_dataset
import preprocess_coco_full_dataset
from datasets.io.coordinates import read_cryoppp_csv

CASES = ((0.2, 0.6, 8), (0.1, 0.3, 3), (0.3, 0.7, 5), (0.15, 0.1, 11))  # density, labeled fraction, seed


def mean_train_particles(root):
    files = sorted((root / "ground_truth").glob("*train_*.csv"))
    return float(np.mean([len(read_cryoppp_csv(path, micrograph=path.stem)[path.stem]) for path in files]))


def priors(root, work, expected):
    base = ["--data-root", str(root), "--patch-size", "64", "--target-diameter", "32"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        counted = preprocess_coco_full_dataset.main(base + ["--output-dir", str(work / "counted"), "--labels",
                                                            "complete"])
        estimated = preprocess_coco_full_dataset.main(base + ["--output-dir", str(work / "estimated"),
                                                              "--expected-particles", str(expected)])
    return counted["priors"]["prior_unlabeled"], estimated["priors"]["prior_unlabeled"]


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-train", type=int, default=12)
    parser.add_argument("--size", type=int, default=1024, help="micrograph side, px")
    parser.add_argument("--particle-diameter", type=float, default=32.0)
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    rows = []
    print(f"{'density':>8s} {'labeled':>8s} {'counted':>8s} {'estimate':>9s} {'ratio':>6s}")
    for density, labeled, seed in CASES:
        work = Path(tempfile.mkdtemp(prefix="bench_prior_"))
        with contextlib.redirect_stdout(io.StringIO()):
            make_synthetic_dataset.main(["--output-dir", str(work / "data"), "--num-train", str(args.num_train),
                                         "--num-val", "1", "--num-test", "1", "--width", str(args.size), "--height",
                                         str(args.size), "--particle-diameter", str(args.particle_diameter),
                                         "--density", str(density),
                                         "--label-fraction", str(labeled), "--seed", str(seed)])
        counted, estimated = priors(work / "data", work, mean_train_particles(work / "data"))
        rows.append((density, labeled, counted, estimated))
        print(f"{density:8.2f} {labeled:8.0%} {counted:8.4f} {estimated:9.4f} {estimated / counted:6.2f}")
    return rows


if __name__ == "__main__":
    main()
