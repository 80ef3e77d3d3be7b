"""The training loop shared by both training scripts: config, steps, evaluation, checkpoints."""
