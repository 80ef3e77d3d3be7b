"""Seconds per synthetic micrograph, on one core, at a few sizes.

Run from the repository root: python -m bench.bench_synthetic [--sizes 1024 4096] [--repeats 3]

Input: the default generator parameters (datasets/synthetic.py), with --sizes and --repeats.
Output: one printed line per size: seconds to render a micrograph (physics only), seconds to also
write it as float32 MRC, and the particle count, e.g.
  1024 x 1024: 0.21 s render, 0.22 s with MRC write, 125 particles (goal < 1 s at 1024)
"""
import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from synthetic.simulator import SPECIES_STREAM, SyntheticConfig, generate_micrograph, make_species, save_micrograph


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="square sizes, px")
    parser.add_argument("--repeats", type=int, default=3, help="micrographs timed per size (default: 3)")
    return parser


def time_size(size, repeats, folder):
    """(render seconds, render + write seconds, particles) per micrograph at `size` x `size`."""
    config = replace(SyntheticConfig(), width=size, height=size)
    species = make_species(np.random.default_rng([config.seed, SPECIES_STREAM]), config)
    generate_micrograph(config, species, 0, 0)
    render = write = 0.0
    for index in range(repeats):
        start = time.perf_counter()
        micrograph = generate_micrograph(config, species, 0, index)
        middle = time.perf_counter()
        save_micrograph(Path(folder) / f"bench_{size}_{index}.mrc", micrograph.image, config)
        render += middle - start
        write += time.perf_counter() - start
    return render / repeats, write / repeats, len(micrograph.centres)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            results[size] = time_size(size, args.repeats, folder)
            render, write, particles = results[size]
            print(f"{size} x {size}: {render:.2f} s render, {write:.2f} s with MRC write, "
                  f"{particles} particles" + (" (goal < 1 s at 1024)" if size == 1024 else ""))
    return results


if __name__ == "__main__":
    main()
