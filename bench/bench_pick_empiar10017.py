"""The EMPIAR-10017 protocol end to end, ours beside Topaz: preprocess, train, pick, evaluate.

Protocol (docs/design.md): 12 train / 3 val / 5 test micrographs; in each train micrograph a seeded (42)
70% of the particles are labels (preprocess_coco_full_dataset.py --labels complete --hide-ratio 0.3), the
rest unlabeled (the research protocol: the tool knows where the hidden particles are);
picks are matched one-to-one within 0.5 x diameter (54 px) to every test particle.
Ours: configs/cpu_benchmark.yaml (or --config), picking the 5 test micrographs with best.pt.
Topaz (where `topaz` is installed): the same labels, GE-binomial, 4x binning, --pi from the expected
particle count, extract radius 14 binned px, threshold -6; scored by OUR evaluator too.
Prints both AUPRCs, best F1s (with precision and recall there) and picking seconds per micrograph.

    python -m bench.bench_pick_empiar10017 --output-dir bench_runs/empiar10017 [--pickers ours topaz] [--topaz-epochs 10]

Both pickers learn from the same chunks (out/chunks: preprocessed once, resumed when present), so one
of them can be rerun alone with --pickers; the other's row is then read from out/bench_summary.json.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from bench.runner import REPO, sh
from bench.topaz import as_mrc, topaz_extract, topaz_preprocess, topaz_train
from common.flags import add_renamed_argument
from training.members import member_checkpoints, member_results

EMPIAR = REPO.parent / "shared" / "data" / "empiar10017"
TOPAZ_REFERENCE = {"auprc": 0.884, "best_f1": 0.865, "precision": 0.80, "recall": 0.94, "pick_s_per_mic": 41 / 5}


def prepare_chunks(args, out, log):
    """The PU split both pickers learn from (a rerun resumes, so finished chunks are kept)."""
    sh([sys.executable, "preprocess_coco_full_dataset.py", "--data-root", args.data_root, "--output-dir",
        out / "chunks", "--labels", "complete", "--hide-ratio", "0.3", "--seed", "42", "--num-workers", "2",
        *(["--set", *args.preprocess_set] if args.preprocess_set else [])], log)


def ours(args, out, log):
    chunks, runs = out / "chunks", out / "experiments"
    train = sh([sys.executable, "train_pu_fixed_full.py", "--config", args.config, "--data-dir", chunks,
                "--exp-name", args.exp_name, "--output-root", runs, "--use-data-prior", "--device", "cpu",
                *(["--set", *args.set] if args.set else [])], log)
    picks, checkpoints = out / "picks_ours", member_checkpoints(runs / args.exp_name)
    pick = sh([sys.executable, "pick_particles.py", "--checkpoint", *checkpoints,
               "--micrographs", Path(args.data_root) / "test", "--output-dir", picks, "--overlays", "1",
               "--device", "cpu"], log)
    summary = evaluate(picks, args.data_root, out / "eval_ours.json", log)
    results = member_results(checkpoints)
    return {"summary": summary, "train_s": sum(r["timings"]["train_seconds"] for r in results),
            "members": len(checkpoints), "train_wall_s": train,
            "pick_s_per_mic": pick / 5, "patch_test": results[0]["test"]}


def evaluate(picks, data_root, output, log):
    sh([sys.executable, "evaluate_picks.py", "--picks", picks, "--ground-truth",
        Path(data_root) / "annotations" / "instances_test.json", "--output", output], log)
    return json.loads(Path(output).read_text())


def topaz_targets(chunks, path):
    """The labeled 70% of train particles (our chunks' labeled positives), binned 4x, as Topaz targets."""
    meta = json.loads((chunks / "metadata.json").read_text())
    stems = [m["stem"] for m in meta["micrographs"]]
    rows = ["image_name\tx_coord\ty_coord"]
    for chunk in meta["splits"]["train"]["chunks"]:
        data = torch.load(chunks / chunk["file"], weights_only=True)
        keep = data["sample_type"] == 0
        for mic, (x, y) in zip(data["micrograph"][keep].tolist(), data["xy"][keep].tolist()):
            rows.append(f"{stems[mic]}\t{int(round(x / 4))}\t{int(round(y / 4))}")
    Path(path).write_text("\n".join(rows) + "\n")
    return len(rows) - 1


def topaz(args, out, log):
    if shutil.which("topaz") is None:
        print("topaz is not installed (pip install topaz-em): Topaz is not run")
        return None
    work = out / "topaz"
    for split in ("train", "test"):
        (work / split).mkdir(parents=True, exist_ok=True)
        mrcs = as_mrc(sorted((Path(args.data_root) / split).glob("*.jpg")), work / f"{split}_mrc")
        sh(topaz_preprocess(mrcs, work / split), log)
    n_targets = topaz_targets(out / "chunks", work / "targets.txt")
    pi = 645 * 29 / (1024 * 1024)  # expected particles per micrograph x pixels within radius 3, over binned pixels
    train = sh(topaz_train(work / "train", work / "targets.txt", pi=pi, epochs=args.topaz_epochs,
                           epoch_size=args.topaz_epoch_size, prefix=work / "model", log=work / "train_log.txt"), log)
    model = work / f"model_epoch{args.topaz_epochs}.sav"  # the last epoch's (a name sort would put 9 after 10)
    extract = sh(topaz_extract(model, sorted((work / "test").glob("*.mrc")), work / "picks.txt"), log)
    picks = out / "picks_topaz"
    picks.mkdir(exist_ok=True)
    shutil.copy(work / "picks.txt", picks / "picks.txt")
    summary = evaluate(picks, args.data_root, out / "eval_topaz.json", log)
    return {"summary": summary, "train_s": train, "pick_s_per_mic": extract / 5, "pi": pi, "labels": n_targets,
            "epochs": args.topaz_epochs, "epoch_size": args.topaz_epoch_size}


def row(name, r):
    s = r["summary"] if "summary" in r else r
    return (f"{name:30s} {s['auprc']:7.3f} {s['best_f1']:7.3f} {s['precision']:9.3f} {s['recall']:7.3f} "
            f"{r.get('train_s', float('nan')):9.0f} {r['pick_s_per_mic']:12.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(EMPIAR))
    add_renamed_argument(parser, "--output-dir", "--out", default="bench_runs/empiar10017")
    parser.add_argument("--config", default="configs/cpu_benchmark.yaml")
    parser.add_argument("--exp-name", default="cpu_benchmark")
    parser.add_argument("--set", nargs="+", default=[], help="config overrides for our training")
    parser.add_argument("--preprocess-set", nargs="+", default=[],
                        help="config overrides for the PU split, e.g. preprocessing.offcentre_per_pos=0")
    parser.add_argument("--pickers", nargs="+", choices=("ours", "topaz"), default=["ours", "topaz"],
                        help="which pickers to train and score now (the other's last result is reused)")
    parser.add_argument("--topaz-epochs", type=int, default=10)
    parser.add_argument("--topaz-epoch-size", type=int, default=500)
    args = parser.parse_args(argv)
    if args.topaz_epochs < 1 or args.topaz_epoch_size < 1:
        parser.error("--topaz-epochs and --topaz-epoch-size must be at least 1 (leave Topaz out with --pickers ours)")
    out = (REPO / args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench.log"
    summary_path = out / "bench_summary.json"
    results = json.loads(summary_path.read_text()) if summary_path.is_file() else {"ours": None, "topaz": None}
    prepare_chunks(args, out, log)
    if "ours" in args.pickers:
        results["ours"] = ours(args, out, log)
    if "topaz" in args.pickers:
        results["topaz"] = topaz(args, out, log)
    summary_path.write_text(json.dumps(results, indent=2, default=float))
    print_table(results, args.config)


def print_table(results, config):
    mine, theirs = results["ours"], results["topaz"]
    first = mine or theirs
    if first:
        print(f"\nEMPIAR-10017, 5 test micrographs, {first['summary']['n_targets']} particles, matched within "
              f"{first['summary']['radius']:g} px (our evaluator for both)")
    print(f"{'picker':30s} {'AUPRC':>7s} {'bestF1':>7s} {'precision':>9s} {'recall':>7s} {'train s':>9s} "
          f"{'pick s/mic':>12s}")
    if mine:
        print(row("ours (" + Path(config).stem + ")", mine))
    if theirs:
        print(row(f"Topaz GE-binomial ({theirs['epochs']}x{theirs['epoch_size']})", theirs))
    print(row("Topaz 0.3.20 reference run", {**TOPAZ_REFERENCE, "train_s": 2476}))


if __name__ == "__main__":
    main()
