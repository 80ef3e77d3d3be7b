"""The blind benchmark: pick from partial labels as a user has them, on any data set with complete labels.

For each label fraction F, a new dataset folder is written first (`write_blind_dataset`, the research
protocol's only contact with the complete labels): its train label file keeps a seeded round(F x n)
of each micrograph's n particles and nothing else; val and test keep every particle, for scoring.
Then the user's path runs on that folder alone: `preprocess_coco_full_dataset.py --labels partial
--expected-particles E` (E = the mean particle count of a train micrograph, the one number a user
estimates, as for Topaz's -n), training with the data's pi, picking the test micrographs, and
`evaluate_picks.py` against the complete test labels. Topaz 0.3.20 (where installed) runs first on
the same blind folder: the same kept train labels as targets, GE-binomial with --pi from the same
expected count, micrographs binned to a particle of about 27 px; our training then gets no more CPU
seconds than Topaz's training took (training.max_minutes). Both are scored by OUR evaluator. After our
run, and apart from it, the complete labels count the pi of the same windows (`counted_prior`). Prints
one row per (data set, F, picker): AUPRC, best F1 with its precision and recall, pi used and counted,
training and picking seconds; `bench_summary.json` gathers the rows of every run into one output dir.

    python -m bench.bench_pick --data-root ../shared/data/empiar10017 --label-fractions 0.7 0.3 0.1 \
        --output-dir bench_runs/blind_empiar10017
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from bench.runner import sh
from bench.topaz import as_mrc, topaz_extract, topaz_preprocess, topaz_train
from common.flags import add_renamed_argument
from datasets.io.coordinates import write_coco, write_cryoppp_csv
from datasets.io.layout import SPLITS, dataset_diameter, load_dataset
from datasets.io.micrographs import read_micrograph
from training.members import member_checkpoints, member_results


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


def truth_folder(root, data, out):
    """Research protocol only: `out` = the blind folder `data` (linked) plus a ground_truth/ holding every
    particle of `root`, for counting the pi the truth gives. The blind folder itself never gets one."""
    out.mkdir(parents=True, exist_ok=True)
    for child in data.iterdir():
        if not (out / child.name).exists():
            (out / child.name).symlink_to(child.resolve())
    (out / "ground_truth").mkdir(exist_ok=True)
    for record in load_dataset(root, read_truth=False)[0]:
        write_cryoppp_csv(out / "ground_truth" / f"{record.stem}.csv", record.particles)
    return out


def preprocess(data_root, output_dir, args, log, *labels):
    """The case's COCO PU split with `labels` flags: one call for our run and the truth count, so both draw
    the same windows (same settings and seed)."""
    preprocess_set = ["--set", *args.preprocess_set] if args.preprocess_set else []
    sh([sys.executable, "preprocess_coco_full_dataset.py", "--data-root", data_root, "--output-dir", output_dir,
        *labels, "--num-workers", "2", *preprocess_set], log)


def counted_prior(root, case, expected, args, log):
    """The pi the complete labels count over the windows the user's path drew (the same seed and expected
    count draw the same windows; the truth only marks which are centred on a particle). Run after ours; its
    chunks are deleted."""
    counted = case / "counted"
    shutil.rmtree(counted, ignore_errors=True)
    preprocess(truth_folder(root, case / "data", case / "truth"), counted, args, log, "--labels", "complete",
               "--expected-particles", f"{expected:.1f}")
    prior = json.loads((counted / "metadata.json").read_text())["priors"]["prior_unlabeled"]
    shutil.rmtree(counted)
    return prior


def ours(data, out, expected, args, minutes, log):
    """The user's path on the blind folder, as run_full_training.sh runs it: preprocess (partial), train, pick
    the test split with the same count (it only sets the written threshold), evaluate."""
    preprocess(data, out / "chunks", args, log, "--labels", "partial", "--expected-particles", f"{expected:.1f}")
    overrides = [*args.set, *([f"training.max_minutes={minutes:.3f}"] if minutes else [])]
    sh([sys.executable, "train_pu_fixed_full.py", "--config", args.config, "--data-dir", out / "chunks", "--exp-name",
        "ours", "--output-root", out / "runs", "--use-data-prior", "--device", "cpu",
        *(["--set", *overrides] if overrides else [])], log)
    checkpoints = member_checkpoints(out / "runs" / "ours")
    pick = sh([sys.executable, "pick_particles.py", "--checkpoint", *checkpoints,
               "--micrographs", data / args.score_split, "--output-dir", out / "picks", "--expected-particles",
               f"{expected:.1f}", "--device", "cpu"], log)
    results = member_results(checkpoints)
    return {**evaluate(out / "picks", data, args.score_split, out / "eval.json", log), "prior": results[0]["prior"],
            "train_s": sum(r["timings"]["train_seconds"] for r in results), "members": len(checkpoints),
            "pick_s_per_mic": pick / split_count(data, args.score_split)}


def evaluate(picks, data, split, output, log):
    sh([sys.executable, "evaluate_picks.py", "--picks", picks, "--ground-truth",
        data / "annotations" / f"instances_{split}.json", "--output", output], log)
    return json.loads(Path(output).read_text())


def split_count(data, split):
    return len(list((data / split).iterdir()))


def topaz_binning(diameter):
    """Topaz's downsampling: a particle of about 27 binned px (EMPIAR-10017's 108 px at 4x, as Topaz's
    tutorial bins), never below 1."""
    return max(1, int(round(diameter / 27)))


def topaz(data, out, expected, args, log):
    """Topaz on the blind folder: the kept train labels, GE-binomial at the expected count's pi."""
    records, _ = load_dataset(data, read_truth=False)
    binning = topaz_binning(dataset_diameter(records))
    work = out / "topaz"
    for split in ("train", args.score_split):
        (work / split).mkdir(parents=True, exist_ok=True)
        mrcs = as_mrc(sorted(Path(r.path) for r in records if r.split == split), work / f"{split}_mrc")
        sh(topaz_preprocess(mrcs, work / split, binning=binning), log)
    rows = ["image_name\tx_coord\ty_coord"]
    for r in (r for r in records if r.split == "train"):
        rows += [f"{r.stem}\t{int(round(x / binning))}\t{int(round(y / binning))}" for x, y in r.particles[:, :2]]
    (work / "targets.txt").write_text("\n".join(rows) + "\n")
    height, width = read_micrograph(records[0].path).shape
    pi = expected * 29 / ((height // binning) * (width // binning))  # pixels within Topaz's radius 3 per particle
    train = sh(topaz_train(work / "train", work / "targets.txt", pi=pi, epochs=args.topaz_epochs,
                           epoch_size=args.topaz_epoch_size, prefix=work / "model", log=work / "train_log.txt"), log)
    model = work / f"model_epoch{args.topaz_epochs}.sav"
    radius = max(1, int(round(dataset_diameter(records) / binning / 2)))
    extract = sh(topaz_extract(model, sorted((work / args.score_split).glob("*.mrc")), work / "picks.txt",
                               radius=radius, binning=binning), log)
    picks = out / "picks_topaz"
    picks.mkdir(exist_ok=True)
    shutil.copy(work / "picks.txt", picks / "picks.txt")
    return {**evaluate(picks, data, args.score_split, out / "eval_topaz.json", log), "prior": pi, "train_s": train,
            "pick_s_per_mic": extract / split_count(data, args.score_split), "binning": binning}


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="a data set with complete labels (CryoTransformer layout)")
    parser.add_argument("--label-fractions", type=float, nargs="+", default=[0.7, 0.3, 0.1])
    add_renamed_argument(parser, "--output-dir", "--out", required=True,
                         help="folder for the blind datasets, runs and results")
    parser.add_argument("--config", default="configs/cpu_benchmark.yaml", help="our training config")
    parser.add_argument("--seed", type=int, default=42, help="seed of the label dropping")
    parser.add_argument("--pickers", nargs="+", choices=("ours", "topaz"), default=["ours", "topaz"],
                        help="Topaz is skipped with a message where `topaz` is not installed")
    parser.add_argument("--topaz-epochs", type=int, default=10)
    parser.add_argument("--topaz-epoch-size", type=int, default=500)
    parser.add_argument("--score-split", choices=("test", "val"), default="test",
                        help="the split picked and scored: val to choose settings, test to report them")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides of our training config")
    parser.add_argument("--preprocess-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides of the PU split, e.g. preprocessing.random_per_pos=1")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if "topaz" in args.pickers and shutil.which("topaz") is None:
        print("topaz is not installed (pip install topaz-em): Topaz is not run")
        args.pickers = [p for p in args.pickers if p != "topaz"]
    out, rows = Path(args.output_dir).resolve(), []
    for fraction in args.label_fractions:
        case = out / f"F{fraction:g}"
        counts, expected = write_blind_dataset(args.data_root, case / "data", fraction, args.seed)
        print(f"F {fraction:g}: train labels {counts['train'][1]} of {counts['train'][0]} kept; "
              f"expected particles {expected:.1f} per micrograph", flush=True)
        log, minutes = case / "bench.log", None
        if "topaz" in args.pickers:
            rows.append((fraction, "topaz", topaz(case / "data", case, expected, args, log)))
            minutes = rows[-1][2]["train_s"] / 60  # ours trains no longer than Topaz did
        if "ours" in args.pickers:
            rows.append((fraction, "ours", ours(case / "data", case, expected, args, minutes, log)))
            rows[-1][2]["prior_counted"] = counted_prior(args.data_root, case, expected, args, log)
        print(format_row(*rows[-1]), flush=True)
    print(f"\n{Path(args.data_root).name}, {args.score_split} split: ours with {args.config}; "
          f"Topaz 0.3.20 GE-binomial, "
          f"{args.topaz_epochs} x {args.topaz_epoch_size} minibatches")
    print(f"{'F':>5s} {'picker':>6s} {'AUPRC':>7s} {'bestF1':>7s} {'precision':>9s} {'recall':>7s} {'pi':>7s} "
          f"{'counted':>7s} {'train s':>8s} {'pick s/mic':>10s}")
    for row in rows:
        print(format_row(*row))
    summary_path = out / "bench_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}  # F by F runs add up
    summary.update({f"{f:g}/{picker}": r for f, picker, r in rows})
    summary_path.write_text(json.dumps(summary, indent=2, default=float))
    return rows


def format_row(fraction, picker, r):
    counted = f"{r['prior_counted']:7.4f}" if "prior_counted" in r else f"{'':7s}"
    return (f"{fraction:5.2f} {picker:>6s} {r['auprc']:7.3f} {r['best_f1']:7.3f} {r['precision']:9.3f} "
            f"{r['recall']:7.3f} {r['prior']:7.4f} {counted} {r['train_s']:8.0f} {r['pick_s_per_mic']:10.2f}")


if __name__ == "__main__":
    main()
