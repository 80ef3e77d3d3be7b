"""What both training scripts share: flags, config resolution, the prior and the run dir."""
import argparse
import json
from pathlib import Path

from datasets.cryoem_chunked_dataset import read_metadata, read_prior
from datasets.errors import exit_on_input_error
from training.engine import fit
from utils.config import resolve_config

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "pu_full_fixed.yaml"


def add_common_flags(parser):
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (defaults: %(default)s)")
    parser.add_argument("--data-dir", nargs="+", help="chunk dir(s) written by preprocessing (several for shards)")
    parser.add_argument("--exp-name", help="run name: experiments/<exp-name>/ (rerun resumes it)")
    parser.add_argument("--output-root", default="experiments", help="parent of the run dirs")
    parser.add_argument("--device", help="cuda, cuda:0 or cpu (default: cuda when available)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader worker processes (mmap/memory modes; on_demand reads in the main process)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override any config key")
    return parser


def preprocessing_facts(data_dirs, input_size, normalization):
    """What picking needs to cut and scale micrographs exactly as the training patches were."""
    config = read_metadata(data_dirs[0])["config"]
    return {"patch_size": config["patch_size"], "input_size": input_size or config["patch_size"],
            "target_diameter": config["target_diameter"], "particle_diameter_px": config["particle_diameter_px"],
            "scale": config["scale"], "native_resolution": config["native_resolution"],
            "clip_sigma": config["clip_sigma"], "normalization": normalization}


def prepare(args, flags, use_data_prior):
    """Resolve the config, fix the prior, create the run dir and save config.yaml there."""
    config = resolve_config(DEFAULT_CONFIG, args.config, flags, args.set)
    data_dir = config["data"]["data_dir"]
    dirs = [str(data_dir)] if isinstance(data_dir, (str, Path)) else [str(d) for d in data_dir]
    config["data"]["data_dir"] = dirs
    if use_data_prior and config["loss"]["mode"] != "pn":
        config["loss"]["prior"] = read_prior(dirs)
        config["loss"]["prior_source"] = "metadata prior_unlabeled of " + ", ".join(dirs)
    else:
        config["loss"]["prior_source"] = "config loss.prior"
    exp_name = args.exp_name or Path(args.config).stem
    run_dir = Path(args.output_root) / exp_name
    run_dir.mkdir(parents=True, exist_ok=True)
    return config, run_dir, preprocessing_facts(dirs, config["data"]["input_size"], config["data"]["normalization"])


def run_training(args, flags, use_data_prior):
    with exit_on_input_error():
        config, run_dir, preprocessing = prepare(args, flags, use_data_prior)
        print(f"run dir {run_dir}; prior pi = {config['loss']['prior']:.4f} ({config['loss']['prior_source']})")
        results = fit(config, run_dir, args.device, args.num_workers, config["loss"]["prior"], preprocessing)
    if results is not None:
        print_results(results, run_dir)
    return results


def print_results(results, run_dir):
    test = results["test"]
    print(f"\nBest epoch {results['best_epoch']} (val AUC {results['best_val_auc']:.4f}); test patches:")
    print(f"  AUC {test['auc']:.4f}  AP {test['ap']:.4f}  precision {test['precision']:.4f}  "
          f"recall {test['recall']:.4f}  F1 {test['f1']:.4f} (at 0.5)")
    best = test["at_best_f1_threshold"]
    print(f"  at val's best-F1 threshold {best['threshold']:.3f}: precision {best['precision']:.4f}  "
          f"recall {best['recall']:.4f}  F1 {best['f1']:.4f}")
    print(f"results: {run_dir / 'results.json'}\ncheckpoints: {run_dir / 'best.pt'}, {run_dir / 'last.pt'}\n"
          f"TensorBoard: tensorboard --logdir {run_dir.parent}")
    print(json.dumps({"train_seconds": round(results['timings']['train_seconds'], 1), "steps": results["steps"]}))


def new_parser(description):
    return add_common_flags(argparse.ArgumentParser(description=description))
