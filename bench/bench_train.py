"""Training throughput side by side in one run: loader, augmentation, full step, bare network.

Prints samples/s for: the loader alone in each mode (with the on-demand MB/s beside the disk's
sequential read speed), the batched augmentation alone, a full training step of the given config
(weak + strong views through the student, weak through the EMA teacher, both losses, backward,
optimizer and EMA updates), and a bare torchvision-style forward+backward of the same backbone on
random input of the same shape, in fp32 and, where the device has native bf16, in bf16 autocast
(`training.amp`). Ratios: loader / step consumption (goal >= 10 in mmap and memory modes),
and full step / bare model in images through the network per second (goal >= 0.8 on a GPU).

    python -m bench.bench_train --data-dir data/chunks/coco_pu --config configs/cpu_benchmark.yaml [--device cuda]
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_loader import bench_loader_modes
from common.config import resolve_config
from datasets.augment import strong_augment, weak_augment
from datasets.chunks.format import read_facts
from datasets.prior import ClassPrior
from models import build_model
from models.input import network_input
from models.precision import native_bf16
from training.cli import DEFAULT_CONFIG
from training.engine import build_run, new_progress, train_step, uses_bf16


def timed(function, steps, device):
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def bare_model_seconds(config, n_images, size, device, bf16):
    model = build_model(config["model"]["backbone"], config["model"]["dropout"]).to(device)
    x = torch.randn(n_images, 1, size, size, device=device)
    optimizer = torch.optim.AdamW(model.parameters())
    if device.type == "cuda":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(x).float().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", nargs="+", required=True)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    config = resolve_config(DEFAULT_CONFIG, args.config, {"data.data_dir": args.data_dir})
    batch = config["training"]["batch_size"]
    loader = bench_loader_modes(args.data_dir, "train", batch_size=batch, n_batches=200)
    precisions = ("fp32", "bf16") if native_bf16(device) else ("fp32",)
    configured = "bf16" if config["training"]["amp"] and native_bf16(device) else "fp32"
    steps, bares = {}, {}
    for precision in precisions:
        config["training"]["amp"] = precision == "bf16"
        run = build_run(config, Path(tempfile.mkdtemp()), device, read_facts(args.data_dir), ClassPrior(0.3, "bench"))
        run.progress = new_progress()
        sample = next(run.batches.epoch(0))
        steps[precision] = timed(lambda: train_step(run, sample), args.steps, device)
        views = 2 if run.consistency is not None else 1
        bares[precision] = timed(bare_model_seconds(config, views * batch, run.network_input.input_size, device,
                                                    bf16=uses_bf16(run)), args.steps, device)
    x = network_input(sample["patches"], run.network_input, device)
    augment = timed(lambda: (weak_augment(x, generator=run.generator), strong_augment(x, generator=run.generator)),
                    args.steps, device)
    teacher = 1 if (run.ema is not None and run.consistency is not None) else 0
    step = steps[configured]
    consumed = batch / step
    print(f"\ndevice {device}, backbone {config['model']['backbone']}, batch {batch}, "
          f"network input {x.shape[-1]} px, torch threads {torch.get_num_threads()}, "
          f"the config trains in {configured} here")
    print(f"{'what':38s} {'samples/s':>10s} {'ratio':>24s}")
    for mode, stats in loader["modes"].items():
        extra = f" ({stats['disk_mb_per_s']:.0f} MB/s read; disk {loader['disk_sequential_mb_s']:.0f} MB/s)" \
            if mode == "on_demand" else ""
        print(f"{'loader ' + mode:38s} {stats['samples_per_s']:10.0f} {stats['samples_per_s'] / consumed:10.1f}x step"
              f"{extra}")
    print(f"{'augmentation (weak + strong)':38s} {batch / augment:10.0f} {step / augment:10.1f}x step")
    for precision in precisions:
        images = (views + teacher) * batch / steps[precision]
        print(f"{'full training step, ' + precision:38s} {batch / steps[precision]:10.1f} "
              f"{'images through the network/s: ' + format(images, '.0f')}")
        print(f"{'bare fwd+bwd, same shape, ' + precision:38s} {views * batch / bares[precision]:10.1f} "
              f"{'step/bare (images/s): ' + format(images / (views * batch / bares[precision]), '.2f')}")
    if len(precisions) == 2:
        print(f"{'full step, bf16 / fp32':38s} {steps['fp32'] / steps['bf16']:10.2f}x")


if __name__ == "__main__":
    main()
