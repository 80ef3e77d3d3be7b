"""The command-line flags both preprocessors share, the shard spec and the shard's output folder."""
from pathlib import Path

from common.config import resolve_config
from common.errors import InputError

SHARED_FLAG_KEYS = {"data_root": "data.data_root", "annotations": "data.annotations", "output_dir": "data.output_dir",
                    "patch_size": "preprocessing.patch_size", "target_diameter": "preprocessing.target_diameter",
                    "particle_diameter": "preprocessing.particle_diameter",
                    "particle_diameter_angstrom": "preprocessing.particle_diameter_angstrom",
                    "pixel_size": "preprocessing.pixel_size",
                    "native_resolution": "preprocessing.native_resolution", "chunk_size": "preprocessing.chunk_size",
                    "seed": "preprocessing.seed"}


def resolve_preprocessing_config(args, default_config, flag_keys):
    """The config of a preprocessing run: `default_config` <- --config <- the named flags of `flag_keys`
    (argparse name -> dotted key) <- --set; sizes that cannot work are refused (a chunk size of 0
    would write empty chunks forever)."""
    flags = {dotted: getattr(args, name) for name, dotted in flag_keys.items()}
    config = resolve_config(default_config, args.config, flags, args.set)
    pre = config["preprocessing"]
    for key in ("patch_size", "chunk_size", "target_diameter", "clip_sigma"):
        if not pre[key] > 0:
            raise InputError(f"preprocessing.{key} {pre[key]} must be positive (--{key.replace('_', '-')})")
    return config


def add_preprocessing_flags(parser, default_config):
    """The flags both preprocessors share (data, scale, chunks, workers, shards, resume)."""
    parser.add_argument("--config", default=str(default_config), help="YAML config (defaults: %(default)s)")
    parser.add_argument("--data-root", help="dataset root (micrograph folders + annotations)")
    parser.add_argument("--output-dir", help="where chunks and metadata.json go (your big disk)")
    parser.add_argument("--annotations", help="labels in any format (file or folder) instead of the layout's")
    parser.add_argument("--patch-size", type=int)
    parser.add_argument("--target-diameter", type=float, help="particle diameter after rescaling, px")
    parser.add_argument("--particle-diameter", type=float, help="particle diameter in original px")
    parser.add_argument("--particle-diameter-angstrom", type=float,
                        help="particle diameter in Å (needs the pixel size: MRC headers or --pixel-size)")
    parser.add_argument("--pixel-size", type=float,
                        help="Å per pixel of the micrographs (default: their MRC headers; unknown for JPEG/PNG)")
    parser.add_argument("--native-resolution", action="store_true", default=None,
                        help="keep original pixels (no rescaling)")
    parser.add_argument("--chunk-size", type=int, help="patches per chunk file")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--num-workers", type=int, default=1, help="processes (output is identical for any)")
    parser.add_argument("--shard", help="i/N: process every N-th micrograph into <output-dir>/shard-i-of-N")
    parser.add_argument("--no-resume", action="store_true", help="delete this tool's chunks and start over")
    parser.add_argument("--strict", action="store_true", help="fail on an unreadable micrograph")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override any config key")
    return parser


def shard_dir(output_dir, shard):
    """Where shard (i, N) writes: <output_dir>/shard-i-of-N (output_dir itself without sharding)."""
    return Path(output_dir) if shard is None else Path(output_dir) / f"shard-{shard[0]}-of-{shard[1]}"
