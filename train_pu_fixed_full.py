"""nnPU + FixMatch training on the full chunked dataset.

Inputs: chunk dir(s) from preprocess_coco_full_dataset.py (or preprocess_chunked.py) and a YAML config
(configs/pu_full_fixed.yaml; named flags and --set section.key=value override any key).
Outputs in experiments/<exp-name>/: config.yaml (resolved), TensorBoard events, metrics.jsonl,
last.pt / best.pt, results.json (val and test metrics of the best checkpoint). A rerun resumes last.pt.

    python train_pu_fixed_full.py --config configs/pu_full_fixed.yaml --exp-name pu_full_fixed \
        --device cuda:0 --num-workers 8 --use-data-prior
"""
from training.cli import new_parser, run_training


def get_args_parser():
    parser = new_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--use-data-prior", action="store_true", default=None,
                        help="loss.use_data_prior: pi = metadata.json's priors.prior_unlabeled instead of loss.prior")
    parser.add_argument("--backbone", help="model.backbone: resnet18 | resnet34 | resnet50 | resnet_tiny")
    parser.add_argument("--epochs", type=int, help="training.epochs")
    parser.add_argument("--batch-size", type=int, help="training.batch_size")
    parser.add_argument("--lr", type=float, help="optimizer.lr")
    parser.add_argument("--prior", type=float, help="loss.prior (pi); not with --use-data-prior")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    flags = {"data.data_dir": args.data_dir, "model.backbone": args.backbone, "training.epochs": args.epochs,
             "training.batch_size": args.batch_size, "optimizer.lr": args.lr, "loss.prior": args.prior,
             "loss.use_data_prior": args.use_data_prior}
    return run_training(args, flags)


if __name__ == "__main__":
    main()
