"""The guide's launcher: preprocess_chunked.py with a sampling profile picked by its negative ratio.

    python run_chunked_preprocessing.py --ratio 0.3 [--data-root DIR] [--output-root DIR] [--output-dir DIR]

Each ratio writes to its own folder `<output-root>/ratio_<R>` (output-root defaults to the parent of
the config's output_dir) unless --output-dir says otherwise. Flags after `--` go to preprocess_chunked.py
unchanged. At the end it prints the size measured on disk, per split, not an estimate.
"""
import argparse
from pathlib import Path

import preprocess_chunked
from datasets.errors import InputError, exit_on_input_error
from utils.config import load_yaml
from utils.files import human_bytes


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratio", type=float, required=True, help="negative ratio of a sampling profile")
    parser.add_argument("--config", default=str(preprocess_chunked.DEFAULT_CONFIG))
    parser.add_argument("--data-root")
    parser.add_argument("--output-root", help="parent folder of the per-ratio output folders")
    parser.add_argument("--output-dir", help="exact output folder (overrides --output-root)")
    parser.add_argument("extra", nargs="*", help="after --: flags passed to preprocess_chunked.py")
    return parser


def profile_for(config_path, ratio):
    profiles = load_yaml(config_path).get("sampling_profiles", {})
    for name, profile in profiles.items():
        if abs(profile.get("ratio", -1) - ratio) < 1e-9:
            return name
    known = ", ".join(f"{p['ratio']} ({n})" for n, p in profiles.items())
    raise InputError(f"no sampling profile with ratio {ratio} in {config_path}; choose one of {known}")


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    with exit_on_input_error():
        name = profile_for(args.config, args.ratio)
        default_out = Path(load_yaml(args.config).get("data", {}).get("output_dir") or "data/chunks")
        output_dir = args.output_dir or str(Path(args.output_root or default_out.parent) / f"ratio_{args.ratio:g}")
    forwarded = ["--config", args.config, "--ratio", str(args.ratio), "--output-dir", output_dir]
    forwarded += ["--data-root", args.data_root] if args.data_root else []
    print(f"profile '{name}': negative ratio {args.ratio:g} -> {output_dir}")
    summary = preprocess_chunked.main(forwarded + args.extra)
    print(f"\nMeasured size for ratio {args.ratio:g}: {human_bytes(summary['bytes'])} on disk, "
          + ", ".join(f"{s} {c['count']:,} patches / {c['chunks']} chunks" for s, c in summary["splits"].items()))
    return summary


if __name__ == "__main__":
    main()
