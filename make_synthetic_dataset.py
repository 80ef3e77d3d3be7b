"""Write a synthetic cryo-EM dataset with exact ground truth (the bundled default data).

Input: only the options below (every one has a default).
Output under --out (CryoTransformer layout, read by the preprocessors without extra flags):
  {train,val,test}/<stem>.mrc|.jpg       micrographs (float32 electrons/pixel, or uint8 JPEG)
  annotations/instances_<split>.json     COCO: the labeled particles (train: --label-fraction of
                                         them; val/test: all, since they are for evaluation)
  particle_coordinates/<stem>.csv        CryoPPP csv, the same labeled particles
  ground_truth/<stem>.csv                CryoPPP csv, every particle
  dataset.json                           every parameter, seed, per-micrograph defocus and counts
The physics is described in datasets/synthetic.py. Example:
  python make_synthetic_dataset.py --out data/synthetic --num-workers 2
"""
import argparse
import time
from dataclasses import fields

from common.errors import exit_on_input_error
from common.flags import add_renamed_argument
from synthetic.simulator import SyntheticConfig, config_from_args, write_dataset

HELP = {
    "num_train": "train micrographs", "num_val": "val micrographs", "num_test": "test micrographs",
    "width": "micrograph width, px", "height": "micrograph height, px",
    "pixel_size": "pixel size, Angstrom/px", "diameter": "particle diameter, px",
    "density": "fraction of the micrograph area covered by particles (sets the count)",
    "num_species": "distinct particle species", "aggregate_fraction": "chance a particle touches another",
    "snr": "signal-to-noise ratio over the particle discs after the CTF, before any --denoised "
           "filter; default 0.1, or 0.2 with --denoised",
    "dose": "electrons per A^2 (sets the shot noise against contaminants, carbon, ice)",
    "defocus_min": "smallest underfocus, um", "defocus_max": "largest underfocus, um",
    "voltage": "accelerating voltage, kV", "cs": "spherical aberration, mm",
    "amplitude_contrast": "amplitude contrast fraction", "b_factor": "B-factor envelope, A^2",
    "label_fraction": "share of train particles written to the annotations",
    "contaminants": "mean ice contaminants per micrograph",
    "carbon_fraction": "share of micrographs with a carbon edge",
    "junk": "mean junk blobs per micrograph",
    "format": "mrc (float32) or jpg (uint8); default mrc, or jpg with --denoised",
    "seed": "random seed",
}


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_renamed_argument(parser, "--output-dir", "--out", default="data/synthetic",
                         help="output folder (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=1, help="parallel micrographs (default: 1)")
    defaults = SyntheticConfig()
    for field in fields(SyntheticConfig):
        option = "--" + field.name.replace("_", "-")
        if field.name == "diameter":
            add_renamed_argument(parser, "--particle-diameter", option, dest="diameter", type=float,
                                 default=defaults.diameter, help=HELP["diameter"] + " (default: %(default)s)")
        elif field.name == "denoised":
            parser.add_argument(option, action="store_true",
                                help="CryoPPP-like: higher SNR, low-pass filtered, JPEG")
        else:
            kind = {"format": str, "snr": float}.get(field.name, type(getattr(defaults, field.name)))
            default = getattr(defaults, field.name)
            shown = "" if default is None else " (default: %(default)s)"
            parser.add_argument(option, type=kind, default=default, help=HELP[field.name] + shown)
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    start = time.perf_counter()
    with exit_on_input_error():
        summary = write_dataset(config_from_args(args), args.output_dir, args.num_workers)
    seconds = time.perf_counter() - start
    for split, counts in summary["counts"].items():
        print(f"{split:5s}: {counts['micrographs']} micrographs, {counts['particles']} particles "
              f"({counts['labeled']} labeled), {counts['contaminants']} contaminants, {counts['junk']} junk")
    print(f"wrote {args.output_dir} ({summary['config']['format']}) in {seconds:.1f} s")
    return summary


if __name__ == "__main__":
    main()
