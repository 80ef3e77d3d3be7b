"""What both training scripts share: flags, config resolution, the prior and the run dir."""
import argparse
import json
from pathlib import Path

from common.config import resolve_config
from common.errors import InputError, exit_on_input_error
from datasets.chunks.format import read_facts
from datasets.prior import ClassPrior, read_prior
from training.engine import fit, process_group
from training.members import member_runs

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


def class_prior(loss_cfg, data_dirs):
    """π for the PU losses (None for the PN baseline): the data's, or loss.prior."""
    if loss_cfg["mode"] == "pn":
        return None
    if loss_cfg["use_data_prior"]:
        return read_prior(data_dirs)
    return ClassPrior(float(loss_cfg["prior"]), "config loss.prior")


def prepare(args, flags):
    """Resolve the config, the data's facts and π, create the run dir."""
    if flags.get("loss.use_data_prior") and flags.get("loss.prior") is not None:
        raise InputError("give either --prior or --use-data-prior, not both")
    config = resolve_config(DEFAULT_CONFIG, args.config, flags, args.set)
    data_dir = config["data"]["data_dir"]
    dirs = [str(data_dir)] if isinstance(data_dir, (str, Path)) else [str(d) for d in data_dir]
    config["data"]["data_dir"] = dirs
    facts, prior = read_facts(dirs), class_prior(config["loss"], dirs)
    return config, Path(args.output_root) / (args.exp_name or Path(args.config).stem), facts, prior


def run_training(args, flags):
    with exit_on_input_error():
        config, run_dir, facts, prior = prepare(args, flags)
        about_prior = f"prior pi = {prior.value:.4f} ({prior.source})" if prior else "no prior (PN baseline)"
        print(f"run dir {run_dir}; {about_prior}")
        members, results = member_runs(config, run_dir), []
        with process_group(args.device):  # under torchrun, one group for every member
            for number, (member_config, member_dir) in enumerate(members, start=1):
                if len(members) > 1:
                    print(f"ensemble member {number} of {len(members)}: {member_dir} "
                          f"(training.seed {member_config['training']['seed']})")
                results.append(fit(member_config, member_dir, facts, prior, args.device, args.num_workers))
    if results[-1] is not None:
        print_results(results, run_dir, [member_dir for _, member_dir in members])
    return results[0]


def print_results(member_results, run_dir, member_dirs):
    """The run's test patch metrics (its first member's, in its results.json), each other member's AUCs, what to
    pick with, and a JSON line of the seconds and steps of all members."""
    results = member_results[0]
    test = results["test"]
    print(f"\nBest epoch {results['best_epoch']} (val AUC {results['best_val_auc']:.4f}); test patches:")
    print(f"  AUC {test['auc']:.4f}  AP {test['ap']:.4f}  precision {test['precision']:.4f}  "
          f"recall {test['recall']:.4f}  F1 {test['f1']:.4f} (at 0.5)")
    best = test["at_best_f1_threshold"]
    print(f"  at val's best-F1 threshold {best['threshold']:.3f}: precision {best['precision']:.4f}  "
          f"recall {best['recall']:.4f}  F1 {best['f1']:.4f}")
    print(f"results: {run_dir / 'results.json'}\ncheckpoints: {run_dir / 'best.pt'}, {run_dir / 'last.pt'}\n"
          f"TensorBoard: tensorboard --logdir {run_dir.parent}")
    for member_dir, member in zip(member_dirs[1:], member_results[1:]):
        print(f"  {member_dir.name}: val AUC {member['best_val_auc']:.4f}, test patch AUC {member['test']['auc']:.4f}")
    if len(member_dirs) > 1:
        print(f"ensemble of {len(member_dirs)}, picked as one: pick_particles.py --checkpoint "
              + " ".join(str(d / "best.pt") for d in member_dirs))
    print(json.dumps({"train_seconds": round(sum(r["timings"]["train_seconds"] for r in member_results), 1),
                      "steps": sum(r["steps"] for r in member_results), "precision": results["precision"],
                      "members": len(member_results)}))


def new_parser(description):
    return add_common_flags(argparse.ArgumentParser(description=description))
