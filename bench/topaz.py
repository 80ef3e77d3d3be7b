"""Topaz 0.3.20 as the benchmarks run it: its command lines and the MRC copies it needs.

One place for the protocol both bench_pick_empiar10017.py and bench_pick_speed.py follow.
"""
from pathlib import Path

import mrcfile

from datasets.io.micrographs import read_micrograph


def as_mrc(paths, folder):
    """Topaz 0.3.20 cannot preprocess JPEGs: hand it float32 MRC copies (not timed)."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in paths:
        copy = folder / f"{Path(path).stem}.mrc"
        with mrcfile.new(copy, overwrite=True) as handle:
            handle.set_data(read_micrograph(path))
        copies.append(str(copy))
    return copies


def topaz_preprocess(images, output_dir, binning=4):
    """`topaz preprocess` as the benchmark protocol runs it: 4x binning on EMPIAR-10017."""
    return ["topaz", "preprocess", "-s", str(binning), "-o", str(output_dir), *map(str, images)]


def topaz_train(images_dir, targets, *, pi, epochs, epoch_size, prefix, log):
    """`topaz train` as the benchmark protocol runs it: GE-binomial at `pi`, minibatches of 256, on the CPU."""
    return ["topaz", "train", "--train-images", str(images_dir), "--train-targets", str(targets),
            "--method", "GE-binomial", "--pi", f"{pi:.4f}", "--num-epochs", str(epochs), "--epoch-size",
            str(epoch_size), "--minibatch-size", "256", "--num-workers", "0", "--device", "-1",
            "--save-prefix", str(prefix), "-o", str(log)]


def topaz_extract(model, images, output, radius=14, binning=4):
    """`topaz extract` as the benchmark protocol runs it: radius 14 binned px (56 px on EMPIAR-10017),
    threshold -6, picks scaled back up by the binning."""
    return ["topaz", "extract", "-r", str(radius), "-t", "-6", "-x", str(binning), "-m", str(model), "--device", "-1",
            "-o", str(output), *map(str, images)]
