"""GPU suite: training step, loader, picking speed and peak GPU memory side by side, in one command.

Self-contained (no data, no network): it writes everything into a temporary folder, removed at the end:
synthetic micrographs (`make_synthetic_dataset.main`) cut into chunks (`preprocess_coco_full_dataset.main`,
the demo's research split) for the training and loader parts, larger synthetic micrographs for picking, and
random-weight checkpoints. Output, on stdout (and as JSON with --output FILE):
- the full training step (`training.engine.train_step`: weak + strong views through the student, weak
  through the EMA teacher, losses, backward, optimizer and EMA updates) in samples/s and in images through
  the network/s, beside a bare torchvision-style forward + backward at the same shape
  (`bench.bench_train.bare_model_seconds`), for configs/pu_full_fixed.yaml at its batch size and a larger one;
- the loader's samples/s in each mode (`bench.bench_loader.bench_loader_modes`) over that step's consumption;
- picking micrographs/s (`picking.score.prepare_for_picking` + `pick_prepared`, pick_particles.py's
  defaults) for resnet_tiny and resnet18 on 4096 px micrographs with EMPIAR-10017's geometry, with and
  without the reading (pick_particles.py reads the next micrograph while scoring one, so it lies between);
- peak GPU memory (torch.cuda.max_memory_allocated) of each part (null on the CPU);
- one epoch of the guides' full set (2.7 M train patches) at the measured step rate.
Ratios are printed, nothing is asserted. About 0.3 GB of disk (printed first); minutes on one GPU.
--quick runs tiny shapes (resnet_tiny at 32 px, batch 8, 2 steps, 512 px micrographs) in seconds on a CPU.

    python -m bench.gpu_suite [--device cuda] [--quick] [--output gpu.json]
"""
import argparse
import contextlib
import gc
import io
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import make_synthetic_dataset
import pick_particles
import preprocess_coco_full_dataset
from bench.bench_loader import bench_loader_modes
from bench.bench_train import bare_model_seconds, timed
from common.config import load_yaml, resolve_config
from datasets.chunks.format import PreprocessingFacts, read_facts
from datasets.io.micrographs import list_micrographs
from datasets.prior import read_prior
from models import build_model
from models.checkpoint import save_checkpoint
from models.input import NetworkInput
from models.precision import native_bf16
from picking.score import default_stride, load_picker, pick_distances, pick_prepared, prepare_for_picking
from synthetic.simulator import SyntheticConfig
from training.cli import DEFAULT_CONFIG
from training.engine import build_run, new_progress, train_step, uses_bf16

GUIDE_EPOCH_PATCHES = 2_700_000  # train patches in one epoch of the guides' full data set
PREPROCESSING = load_yaml(preprocess_coco_full_dataset.DEFAULT_CONFIG)["preprocessing"]  # its defaults


@dataclass(frozen=True)
class Plan:
    """The shapes of one suite run."""
    overrides: dict          # dotted config keys over configs/pu_full_fixed.yaml
    batch_sizes: tuple       # the config's, then a larger one
    steps: int               # timed training steps per measurement (after one warm-up)
    loader_batches: int      # batches timed per loader mode
    chunk_micrographs: int   # train micrographs (plus one val, one test) cut into chunks
    chunk_size_px: int
    patch_size: int          # preprocessing patch size and particle diameter after rescaling
    target_diameter: float
    pick_micrographs: int
    pick_size_px: int
    pick_diameter_px: float  # particle diameter of the picked micrographs
    pick_inputs: dict        # backbone -> network input px


FULL = Plan(overrides={}, batch_sizes=(64, 256), steps=50, loader_batches=200, chunk_micrographs=8,
            chunk_size_px=1024, patch_size=128, target_diameter=64.0, pick_micrographs=4, pick_size_px=4096,
            pick_diameter_px=108.0,  # EMPIAR-10017; inputs: configs/cpu_benchmark.yaml's, pu_full_fixed.yaml's
            pick_inputs={"resnet_tiny": 64, "resnet18": 128})
QUICK = Plan(overrides={"model.backbone": "resnet_tiny", "data.input_size": 32}, batch_sizes=(8, 16), steps=2,
             loader_batches=20, chunk_micrographs=3, chunk_size_px=512, patch_size=64, target_diameter=32.0,
             pick_micrographs=2, pick_size_px=512, pick_diameter_px=40.0,
             pick_inputs={"resnet_tiny": 32, "resnet18": 32})


def disk_estimate_mb(plan):
    """MB the temporary folder will hold at most: float32 micrographs, uint8 patches, checkpoints."""
    per_particle = 1 + sum(PREPROCESSING[key] for key in ("neg_per_pos", "offcentre_per_pos", "random_per_pos"))
    side = plan.chunk_size_px
    particles = SyntheticConfig(width=side, height=side).particles_per_micrograph()
    chunk_mics = plan.chunk_micrographs + 2
    chunks = chunk_mics * particles * per_particle * plan.patch_size ** 2
    micrographs = 4 * (chunk_mics * side ** 2 + plan.pick_micrographs * plan.pick_size_px ** 2)
    return (chunks + micrographs) / 1e6 + 50  # + the two checkpoints (resnet18: 45 MB)


def folder_mb(folder):
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6


def quietly(function, argv):
    """function(argv) with its stdout swallowed (the generators' summaries)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return function([str(a) for a in argv])


def make_chunks(plan, root, workers):
    """Synthetic micrographs preprocessed into chunks (the demo's split: 30% of the labels hidden)."""
    side = plan.chunk_size_px
    quietly(make_synthetic_dataset.main, ["--output-dir", root / "synthetic", "--num-train", plan.chunk_micrographs,
                                          "--num-val", 1, "--num-test", 1, "--width", side, "--height", side,
                                          "--num-workers", workers])
    quietly(preprocess_coco_full_dataset.main, ["--data-root", root / "synthetic", "--output-dir", root / "chunks",
                                                "--patch-size", plan.patch_size, "--target-diameter",
                                                plan.target_diameter, "--labels", "complete", "--hide-ratio", 0.3,
                                                "--num-workers", workers])
    return root / "chunks"


def make_pick_micrographs(plan, root, workers):
    side = plan.pick_size_px
    quietly(make_synthetic_dataset.main, ["--output-dir", root / "pick", "--num-train", plan.pick_micrographs,
                                          "--num-val", 0, "--num-test", 0, "--width", side, "--height", side,
                                          "--particle-diameter", plan.pick_diameter_px, "--num-workers", workers])
    return list_micrographs(root / "pick" / "train")


def with_peak_memory(device, function):
    """(function(), the MB of GPU memory allocated at most while it ran; None off CUDA)."""
    if device.type != "cuda":
        return function(), None
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    result = function()
    return result, torch.cuda.max_memory_allocated(device) / 2 ** 20


def train_config(plan, chunks, batch_size):
    return resolve_config(DEFAULT_CONFIG, None, {"data.data_dir": [str(chunks)], "training.batch_size": batch_size,
                                                 **plan.overrides})


def step_figures(config, chunks, steps, device, run_dir):
    """The full training step on one batch, repeated: seconds, views per sample, network input px."""
    run = build_run(config, run_dir, device, read_facts([chunks]), read_prior([chunks]))
    run.progress = new_progress()
    sample = next(run.batches.epoch(0))
    seconds = timed(lambda: train_step(run, sample), steps, device)
    views = 2 if run.consistency is not None else 1
    teacher = 1 if (run.ema is not None and run.consistency is not None) else 0
    return {"seconds": seconds, "student_views": views, "teacher_views": teacher,
            "input_px": run.network_input.input_size, "bf16": uses_bf16(run)}


def train_part(plan, chunks, batch_size, device, root):
    """Step and bare network at one batch size, the loader modes against the step, the epoch estimate."""
    config = train_config(plan, chunks, batch_size)
    step, step_peak = with_peak_memory(device, lambda: step_figures(config, chunks, plan.steps, device, root))
    views, images = step["student_views"], step["student_views"] + step["teacher_views"]
    bare_images = views * batch_size
    bare_s, bare_peak = with_peak_memory(device, lambda: timed(
        bare_model_seconds(config, bare_images, step["input_px"], device, step["bf16"]), plan.steps, device))
    consumed = batch_size / step["seconds"]
    loader = bench_loader_modes([chunks], "train", batch_size=batch_size, n_batches=plan.loader_batches)
    return {"batch_size": batch_size, "backbone": config["model"]["backbone"], "input_px": step["input_px"],
            "step": {"samples_per_s": consumed, "images_per_s": images * batch_size / step["seconds"],
                     "images_per_sample": images, "peak_memory_mb": step_peak},
            "bare": {"images_per_s": bare_images / bare_s, "peak_memory_mb": bare_peak},
            "step_over_bare": (images * batch_size / step["seconds"]) / (bare_images / bare_s),
            "loader": {mode: {"samples_per_s": stats["samples_per_s"], "over_step": stats["samples_per_s"] / consumed}
                       for mode, stats in loader["modes"].items()},
            "epoch_hours": GUIDE_EPOCH_PATCHES / consumed / 3600}


def random_picker_checkpoint(path, backbone, facts, spec):
    """A checkpoint of `backbone` with seeded random weights and the facts picking needs."""
    torch.manual_seed(0)
    save_checkpoint(path, {"model": build_model(backbone, 0.0).state_dict(), "ema": None,
                           "preprocessing": facts.to_dict(), "network_input": spec.to_dict(),
                           "config": {"model": {"backbone": backbone, "dropout": 0.0}}})
    return path


def pick_options(facts, spec, device):
    """pick_prepared's settings as pick_particles.py's defaults resolve them."""
    defaults = pick_particles.get_args_parser()
    min_distance, edge_margin = pick_distances(facts.particle_diameter_px)
    return {"stride": default_stride(facts, spec), "threshold": pick_particles.DEFAULT_CANDIDATE_THRESHOLD,
            "min_distance_px": min_distance, "edge_margin_px": edge_margin,
            "device": device, "batch_size": defaults.get_default("batch_size"),
            "bf16": native_bf16(device)}


def pick_figures(plan, backbone, micrographs, device, root):
    """Seconds per micrograph preparing (read, rescale: CPU) and picking (score, peaks), after one warm-up."""
    clip_sigma = PREPROCESSING["clip_sigma"]
    facts = PreprocessingFacts(plan.patch_size, plan.pick_diameter_px, plan.target_diameter / plan.pick_diameter_px,
                               clip_sigma)
    normalization = resolve_config(DEFAULT_CONFIG)["data"]["normalization"]
    spec = NetworkInput.for_patches(plan.pick_inputs[backbone], normalization, plan.patch_size, clip_sigma)
    picker = load_picker(random_picker_checkpoint(root / f"{backbone}.pt", backbone, facts, spec), device)
    options = pick_options(facts, spec, device)
    pick_prepared(picker, prepare_for_picking(micrographs[0], facts), **options)
    prepare_s = pick_s = 0.0
    for path in micrographs:
        start = time.perf_counter()
        prepared = prepare_for_picking(path, facts)
        middle = time.perf_counter()
        pick_prepared(picker, prepared, **options)  # returns numpy picks: synchronised
        prepare_s, pick_s = prepare_s + middle - start, pick_s + time.perf_counter() - middle
    n = len(micrographs)
    return {"input_px": spec.input_size, "stride": options["stride"], "bf16": options["bf16"],
            "micrographs_per_s": n / (prepare_s + pick_s), "pick_only_micrographs_per_s": n / pick_s,
            "prepare_s_per_micrograph": prepare_s / n}


def pick_part(plan, micrographs, device, root):
    figures = {}
    for backbone in plan.pick_inputs:
        result, peak = with_peak_memory(device, lambda: pick_figures(plan, backbone, micrographs, device, root))
        figures[backbone] = {**result, "peak_memory_mb": peak}
    return figures


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"


def print_plan(plan, device, root):
    side, pick = plan.chunk_size_px, plan.pick_size_px
    print(f"gpu_suite on {device} ({device_name(device)}), torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"  data: {plan.chunk_micrographs} + 2 synthetic micrographs of {side} px cut into {plan.patch_size} px "
          f"chunks; {plan.pick_micrographs} of {pick} px (particles {plan.pick_diameter_px:g} px) to pick")
    overrides = "".join(f" {key}={value}" for key, value in plan.overrides.items())
    print(f"  train: configs/pu_full_fixed.yaml{overrides} at batch {' and '.join(map(str, plan.batch_sizes))}, "
          f"{plan.steps} steps each; loader: {plan.loader_batches} batches per mode; pick: "
          f"{', '.join(f'{b} at {px} px' for b, px in plan.pick_inputs.items())}")
    print(f"  disk: about {disk_estimate_mb(plan):.0f} MB in {root} (removed at the end)", flush=True)


def cell(value):
    return f"{value:14.3f}" if value is not None else f"{'-':>14s}"


def train_rows(parts):
    """(label, one value per batch size) of the training table; None where there is no figure."""
    rows = [("full step, samples/s", [p["step"]["samples_per_s"] for p in parts]),
            ("full step, images/s through the network", [p["step"]["images_per_s"] for p in parts]),
            ("bare fwd+bwd same shape, images/s", [p["bare"]["images_per_s"] for p in parts]),
            ("step / bare, images/s", [p["step_over_bare"] for p in parts])]
    for mode in parts[0]["loader"]:
        rows += [(f"loader {mode}, samples/s", [p["loader"][mode]["samples_per_s"] for p in parts]),
                 (f"loader {mode} / step consumption", [p["loader"][mode]["over_step"] for p in parts])]
    return rows + [("peak GPU MB, full step", [p["step"]["peak_memory_mb"] for p in parts]),
                   ("peak GPU MB, bare", [p["bare"]["peak_memory_mb"] for p in parts]),
                   (f"one epoch of {GUIDE_EPOCH_PATCHES / 1e6:g}M patches, hours", [p["epoch_hours"] for p in parts])]


PICK_COLUMNS = {"micrographs/s": "micrographs_per_s", "pick only /s": "pick_only_micrographs_per_s",
                "read s each": "prepare_s_per_micrograph", "peak GPU MB": "peak_memory_mb"}


def print_results(results):
    parts, plan = results["train"], results["plan"]
    first = parts[0]
    print(f"\ntraining step: {first['backbone']} at {first['input_px']} px, {first['step']['images_per_sample']} "
          f"images through the network per sample")
    print(f"{'':44s}" + "".join(f"{'batch ' + str(p['batch_size']):>14s}" for p in parts))
    for label, values in train_rows(parts):
        print(f"{label:44s}" + "".join(cell(v) for v in values))
    print(f"\npicking: {plan['pick_micrographs']} micrographs of {plan['pick_size_px']} px, particles "
          f"{plan['pick_diameter_px']:g} px, random weights")
    print(f"{'':44s}" + "".join(f"{name:>14s}" for name in PICK_COLUMNS))
    for backbone, pick in results["pick"].items():
        label = f"pick {backbone} at {pick['input_px']} px, stride {pick['stride']}{', bf16' * pick['bf16']}"
        print(f"{label:44s}" + "".join(cell(pick[key]) for key in PICK_COLUMNS.values()))
    print(f"\ndisk used {results['disk_mb']:.0f} MB, wall {results['wall_s']:.0f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes for a CPU (seconds)")
    parser.add_argument("--output", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    device, plan = torch.device(args.device), QUICK if args.quick else FULL
    started, workers = time.perf_counter(), min(8, len(os.sched_getaffinity(0)))
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        root = Path(tmp)
        print_plan(plan, device, root)
        chunks, micrographs = make_chunks(plan, root, workers), make_pick_micrographs(plan, root, workers)
        print(f"  data written in {time.perf_counter() - started:.0f} s", flush=True)
        results = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
                   "cuda": torch.version.cuda, "quick": args.quick, "plan": asdict(plan),
                   "epoch_patches": GUIDE_EPOCH_PATCHES,
                   "train": [train_part(plan, chunks, batch, device, root) for batch in plan.batch_sizes],
                   "pick": pick_part(plan, micrographs, device, root), "disk_mb": folder_mb(root)}
    results["wall_s"] = time.perf_counter() - started
    print_results(results)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
