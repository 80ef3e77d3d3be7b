"""Picking speed on the same micrographs in one run: ours (pick_particles.py) beside Topaz `extract`.

Ours is timed end to end per micrograph (read, rescale, normalise, score, NMS, write) for each stride /
precision asked. Topaz is timed for `topaz preprocess -s 4` and `topaz extract -r 14 -x 4` separately; its
speed does not depend on how well its model is trained, so without --topaz-model a throwaway model is
trained for a few minibatches first (its picks are not scored). Optionally scores our picks (--ground-truth).

    python -m bench.bench_pick_speed --checkpoint RUN/best.pt --micrographs ../shared/data/empiar10017/test \
        --ground-truth ../shared/data/empiar10017/annotations/instances_test.json
"""
import argparse
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import evaluate_picks
import pick_particles
from bench.topaz import as_mrc, topaz_extract, topaz_preprocess, topaz_train
from datasets.io.micrographs import list_micrographs
from picking.score import DEFAULT_PEAK_SYMMETRIES, PEAK_SYMMETRIES


def peak_options(symmetries: int) -> list[str]:
    """pick_particles flags for peak rescoring with `symmetries` views (0: no rescoring)."""
    return ["--no-peak-rescore"] if symmetries == 0 else ["--peak-symmetries", str(symmetries)]


def time_ours(checkpoint, micrographs, out, stride, precision, symmetries, ground_truth):
    start = time.time()
    pick_particles.main(["--checkpoint", str(checkpoint), "--micrographs", str(micrographs), "--output-dir", str(out),
                         "--device", "cpu", "--precision", precision, *(["--stride", str(stride)] if stride else []),
                         *peak_options(symmetries)])
    seconds = time.time() - start
    scores = {}
    if ground_truth:
        scores = evaluate_picks.main(["--picks", str(out), "--ground-truth", str(ground_truth),
                                      "--output", str(out / "summary.json")])
    return seconds, scores


def throwaway_topaz_model(work, train_dir):
    """A Topaz model trained for 10 minibatches: enough to time extract, not to judge quality."""
    targets = work / "targets.txt"
    targets.write_text("image_name\tx_coord\ty_coord\n" + "".join(
        f"{p.stem}\t{200 + 7 * i}\t{300 + 5 * i}\n" for p in sorted(train_dir.glob("*.mrc")) for i in range(20)))
    subprocess.run(topaz_train(train_dir, targets, pi=0.0179, epochs=1, epoch_size=10, prefix=work / "model",
                               log=work / "train_log.txt"), check=True, capture_output=True)
    return sorted(work.glob("model_epoch*.sav"))[-1]


def time_topaz(micrographs, work, model):
    images = as_mrc(list_micrographs(micrographs), work / "mrc")
    binned = work / "binned"
    binned.mkdir()
    start = time.time()
    subprocess.run(topaz_preprocess(images, binned), check=True, capture_output=True)
    preprocess = time.time() - start
    model = model or throwaway_topaz_model(work, binned)
    start = time.time()
    subprocess.run(topaz_extract(model, sorted(binned.glob("*.mrc")), work / "picks.txt"),
                   check=True, capture_output=True)
    return preprocess, time.time() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--micrographs", required=True)
    parser.add_argument("--ground-truth")
    parser.add_argument("--strides", nargs="+", type=int, default=[0], help="0 = the default stride")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--peak-symmetries", nargs="+", type=int, default=[DEFAULT_PEAK_SYMMETRIES],
                        choices=[0, *PEAK_SYMMETRIES],
                        help="views averaged at each rescored peak (pick_particles.py --peak-symmetries); "
                             "0: no peak rescoring (default %(default)s)")
    parser.add_argument("--topaz-model", help="a trained Topaz .sav (else a throwaway one is trained)")
    parser.add_argument("--topaz-only", action="store_true", help="time Topaz only")
    args = parser.parse_args(argv)
    n = len(list_micrographs(args.micrographs))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stride in [] if args.topaz_only else args.strides:
            for precision, symmetries in itertools.product(args.precisions, args.peak_symmetries):
                out = Path(tmp) / f"ours_{stride}_{precision}_{symmetries}"
                seconds, scores = time_ours(args.checkpoint, args.micrographs, out, stride, precision, symmetries,
                                            args.ground_truth)
                peaks = f"{symmetries} views" if symmetries else "off"
                rows.append((f"ours stride {stride or 'default'} {precision} peaks {peaks}", seconds / n,
                             scores.get("auprc")))
        if shutil.which("topaz"):
            work = Path(tmp) / "topaz"
            work.mkdir()
            preprocess, extract = time_topaz(Path(args.micrographs), work, args.topaz_model)
            rows.append(("Topaz extract (-r 14, 4x binned)", extract / n, None))
            rows.append(("Topaz preprocess + extract", (preprocess + extract) / n, None))
    print(f"\n{n} micrographs from {args.micrographs}, CPU")
    print(f"{'picker':44s} {'s/micrograph':>12s} {'AUPRC':>7s}")
    for name, per, auprc in rows:
        print(f"{name:44s} {per:12.2f} {auprc if auprc is not None else float('nan'):7.3f}")
    print(json.dumps({name: {"s_per_micrograph": per, "auprc": auprc} for name, per, auprc in rows}))


if __name__ == "__main__":
    main()
