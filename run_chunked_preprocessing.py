"""The launcher of preprocess_chunked.py: a sampling profile picked by its negative ratio.

    python run_chunked_preprocessing.py --ratio 0.3 [--data-root DIR] [--output-root DIR] [--output-dir DIR]

Inputs: the profile's ratio, a dataset root, flags after `--` passed to preprocess_chunked.py unchanged.
Outputs: each ratio writes to its own folder `<output-root>/ratio_<R>` (output-root defaults to the
parent of the config's output_dir) unless --output-dir says otherwise. At the end it prints the size
measured on disk, per split, not an estimate.
"""
import argparse
import subprocess
import sys
from pathlib import Path

from common.config import load_yaml
from common.errors import InputError, exit_on_input_error
from common.files import bytes_on_disk, human_bytes
from datasets.chunks.format import read_metadata

REPO = Path(__file__).resolve().parent
PREPROCESSOR = REPO / "preprocess_chunked.py"
DEFAULT_CONFIG = REPO / "configs" / "preprocessing_config.yaml"


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratio", type=float, required=True, help="negative ratio of a sampling profile")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
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


def measured_size(output_dir):
    """{split: (patches, chunks)} and bytes on disk of a finished chunk dir, from its metadata.json."""
    splits = read_metadata(output_dir)["splits"]
    files = [Path(output_dir) / c["file"] for s in splits.values() for c in s["chunks"]]
    return {name: (s["count"], len(s["chunks"])) for name, s in splits.items()}, bytes_on_disk(files)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    with exit_on_input_error():
        name = profile_for(args.config, args.ratio)
        default_out = Path(load_yaml(args.config).get("data", {}).get("output_dir") or "data/chunks")
        output_dir = args.output_dir or str(Path(args.output_root or default_out.parent) / f"ratio_{args.ratio:g}")
    forwarded = ["--config", args.config, "--ratio", str(args.ratio), "--output-dir", output_dir]
    forwarded += ["--data-root", args.data_root] if args.data_root else []
    print(f"profile '{name}': negative ratio {args.ratio:g} -> {output_dir}", flush=True)
    done = subprocess.run([sys.executable, str(PREPROCESSOR), *forwarded, *args.extra])
    if done.returncode:
        raise SystemExit(done.returncode)
    with exit_on_input_error():
        splits, size = measured_size(output_dir)
    print(f"\nMeasured size for ratio {args.ratio:g}: {human_bytes(size)} on disk, "
          + ", ".join(f"{s} {n:,} patches / {c} chunks" for s, (n, c) in splits.items()))
    return splits, size


if __name__ == "__main__":
    main()
