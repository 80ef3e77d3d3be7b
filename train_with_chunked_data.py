"""The chunked-data training example: the same loop as train_pu_fixed_full.py, with its own flags.

Inputs: chunk dir(s) from preprocess_chunked.py or preprocess_coco_full_dataset.py. Uses the data's
prior (metadata.json priors.prior_unlabeled) unless --prior is given. Outputs as train_pu_fixed_full.py.

    python train_with_chunked_data.py --data-dir data/chunks/sliding --batch-size 64 \
        --positive-ratio 0.2 --epochs 100 --load-to-memory
"""
from common.errors import InputError, exit_on_input_error
from training.cli import new_parser, run_training


def get_args_parser():
    parser = new_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, help="training.batch_size")
    parser.add_argument("--positive-ratio", type=float, help="positives per batch (0.2 = batch_ratio [1, 4])")
    parser.add_argument("--epochs", type=int, help="training.epochs")
    parser.add_argument("--load-to-memory", action="store_true", help="data.loader_mode = memory")
    parser.add_argument("--on-demand", action="store_true", help="data.loader_mode = on_demand (HDD)")
    parser.add_argument("--prior", type=float, help="pi; default: the prior preprocessing measured")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    ratio = args.positive_ratio
    with exit_on_input_error():
        if args.load_to_memory and args.on_demand:
            raise InputError("give either --load-to-memory or --on-demand, not both")
        if ratio is not None and not 0 < ratio < 1:
            raise InputError(f"--positive-ratio {ratio} must be between 0 and 1")
    mode = "memory" if args.load_to_memory else ("on_demand" if args.on_demand else None)
    flags = {"data.data_dir": args.data_dir, "training.batch_size": args.batch_size, "training.epochs": args.epochs,
             "data.batch_ratio": [ratio, 1 - ratio] if ratio is not None else None, "data.loader_mode": mode,
             "loss.prior": args.prior, "loss.use_data_prior": args.prior is None}
    return run_training(args, flags)


if __name__ == "__main__":
    main()
