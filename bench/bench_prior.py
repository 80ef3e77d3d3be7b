"""π without ground truth beside the π the truth counts: on synthetic data and on real sets with truth.

A research protocol (it reads truth to score the estimates). Each case is a dataset folder whose train
labels are partial and whose `ground_truth/` holds every particle, preprocessed three times with the
same seed:
- `--labels complete --hide-ratio 0 --expected-particles E` reads the truth and counts π over the
  unlabeled windows (E only sets how many are drawn: per expected particle, as below);
- `--labels partial --expected-particles E` (E = the true mean count per train micrograph, what a user
  would estimate) never reads the truth, and draws the same windows;
- `--labels partial` with no count: the π of BBE's suggested count (training/prior_estimate.py),
  which preprocessing records but does not use. With no count its windows are drawn per labeled
  particle, so that π is over other windows than the counted one (fewer random windows, each far from
  a labeled particle as likely to hold an unlabeled one): compare it as a rough figure.
Synthetic cases are generated (density, labeled fraction); with `--data-root` a real set's train labels
are cut to each `--label-fractions` F as the blind benchmark cuts them, its complete labels becoming
the truth. Prints one row per case with both estimates and their ratio to the counted π.

    python -m bench.bench_prior [--num-train 12 --size 1024]
    python -m bench.bench_prior --data-root ../shared/data/empiar10146 --label-fractions 0.7 0.3 0.1
"""
import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np

import make_synthetic_dataset
import preprocess_coco_full_dataset
from bench.bench_pick import truth_folder, write_blind_dataset
from datasets.io.coordinates import read_cryoppp_csv
from datasets.io.layout import load_dataset

CASES = ((0.2, 0.6, 8), (0.1, 0.3, 3), (0.3, 0.7, 5), (0.15, 0.1, 11))  # density, labeled fraction, seed


def mean_train_particles(root):
    files = sorted((root / "ground_truth").glob("*.csv"))
    train = {r.stem for r in load_dataset(root, read_truth=False)[0] if r.split == "train"}
    return float(np.mean([len(read_cryoppp_csv(path, micrograph=path.stem)[path.stem]) for path in files
                          if path.stem in train]))


def priors(root, work, base, bbe=True):
    """(counted, from the expected count, BBE or None) π of one dataset folder with ground_truth/."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        count = ["--expected-particles", str(mean_train_particles(root))]  # also the windows' basis: the same in both
        counted = preprocess_coco_full_dataset.main(base + ["--output-dir", str(work / "counted"), "--labels",
                                                            "complete", *count])
        expected = preprocess_coco_full_dataset.main(base + ["--output-dir", str(work / "expected"), *count])
        estimated = preprocess_coco_full_dataset.main(base + ["--output-dir", str(work / "bbe")]) if bbe else None
    return [counted["priors"]["prior_unlabeled"], expected["priors"]["prior_unlabeled"],
            estimated and estimated["priors"].get("bbe_prior_unlabeled")]


def synthetic_case(work, args, density, labeled, seed):
    with contextlib.redirect_stdout(io.StringIO()):
        make_synthetic_dataset.main(["--output-dir", str(work / "data"), "--num-train", str(args.num_train),
                                     "--num-val", "1", "--num-test", "1", "--width", str(args.size), "--height",
                                     str(args.size), "--particle-diameter", str(args.particle_diameter),
                                     "--density", str(density), "--label-fraction", str(labeled), "--seed", str(seed)])
    return priors(work / "data", work, ["--data-root", str(work / "data"), "--patch-size", "64",
                                        "--target-diameter", "32"], bbe=not args.skip_bbe)


def real_case(work, data_root, fraction, bbe=True):
    """The blind benchmark's folder at `fraction`, with the set's complete train labels as ground_truth/."""
    write_blind_dataset(data_root, work / "blind", fraction)
    data = truth_folder(data_root, work / "blind", work / "data")
    return priors(data, work, ["--data-root", str(data), "--num-workers", "2"], bbe=bbe)


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-train", type=int, default=12, help="synthetic train micrographs")
    parser.add_argument("--size", type=int, default=1024, help="synthetic micrograph side, px")
    parser.add_argument("--particle-diameter", type=float, default=32.0, help="synthetic particle diameter, px")
    parser.add_argument("--data-root", help="a real set with complete labels instead of synthetic cases")
    parser.add_argument("--label-fractions", type=float, nargs="+", default=[0.7, 0.3, 0.1],
                        help="with --data-root: the train labels kept")
    parser.add_argument("--skip-bbe", action="store_true", help="score the count's π only (BBE takes minutes a case)")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.data_root:
        cases = [(f"{Path(args.data_root).name} F={f:g}",
                  lambda work, f=f: real_case(work, args.data_root, f, bbe=not args.skip_bbe))
                 for f in args.label_fractions]
    else:
        cases = [(f"synthetic {d:g} F={f:g}", lambda work, c=(d, f, s): synthetic_case(work, args, *c))
                 for d, f, s in CASES]
    rows = []
    print(f"{'case':>24s} {'counted':>8s} {'count E':>8s} {'ratio':>6s} {'BBE':>8s} {'ratio':>6s}")
    for name, run in cases:
        counted, expected, estimated = run(Path(tempfile.mkdtemp(prefix="bench_prior_")))
        rows.append((name, counted, expected, estimated))
        bbe = f"{estimated:8.4f} {estimated / counted:6.2f}" if estimated is not None else f"{'none':>8s} {'':6s}"
        print(f"{name:>24s} {counted:8.4f} {expected:8.4f} {expected / counted:6.2f} {bbe}", flush=True)
    return rows


if __name__ == "__main__":
    main()
