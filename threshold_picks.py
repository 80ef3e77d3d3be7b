"""Rewrite a picks folder's files at a new threshold or pick count, from its kept candidates, without the network.

Inputs: --output-dir, a folder pick_particles.py wrote (its manifest.json and candidates/<stem>.npy);
--threshold (a logit), or --expected-particles per micrograph (the threshold keeping that many on
average), or --picks-per-micrograph (the best N of each), or none of them (the valley of the score
histogram); --formats and --overlays as in pick_particles.py (default: what the folder had).

Outputs, in the same folder: every pick file (RELION job layout and autopick.star, particles.star,
.csv, .box, .txt, picks.json), score_histogram.png with the threshold drawn, the overlays the folder
had, and manifest.json's "outputs" (threshold, how it was chosen, formats, pick count).

    python threshold_picks.py --output-dir runs/picks --threshold 1.5
    python threshold_picks.py --output-dir runs/picks --expected-particles 300
"""
import argparse
import time

from common.errors import exit_on_input_error
from common.files import folder_lock
from picking.rethreshold import add_output_flags, output_choice, print_outputs, write_at_threshold
from picking.writers import read_manifest


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True, help="the folder pick_particles.py wrote")
    return add_output_flags(parser)


def run(args) -> dict:
    started = time.perf_counter()
    with folder_lock(args.output_dir, "threshold_picks"):
        manifest = read_manifest(args.output_dir)
        choice = output_choice(args, manifest.get("outputs"))
        written = write_at_threshold(args.output_dir, manifest, choice)
    return {**written, "output_dir": args.output_dir, "seconds": time.perf_counter() - started}


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    with exit_on_input_error():
        summary = run(args)
    print(f"\n{summary['output_dir']}: {summary['n_micrographs']} micrographs rewritten in "
          f"{summary['seconds']:.2f} s")
    print_outputs(summary)
    return summary


if __name__ == "__main__":
    main()
