"""The one training loop both training scripts use: nnPU (+ FixMatch) on chunked patches.

`fit(config, run_dir, ...)` builds the run from the resolved config, resumes from run_dir/last.pt when
it exists, trains epoch by epoch (exact-ratio PU batches, augmentation on the device, bf16 autocast on
CUDA and on CPUs with native bf16, channels_last on CUDA, DDP under torchrun), evaluates on val after
each epoch, keeps best.pt by val AUC with early stopping, checks the warning signs of training/health.py,
and writes TensorBoard events, metrics.jsonl and, at the end, results.json with the best checkpoint's val
and test metrics; rank 0 also logs training/visuals.py's PR curve, patch grids and picks preview, and
shows a progress bar per epoch.
"""
import json
import math
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from common.config import diff_keys, get_dotted, override_item, save_config
from common.errors import InputError
from common.files import LOCK_FILE, atomic_write_json, atomic_write_text, folder_lock, git_sha
from datasets.augment import strong_augment, weak_augment
from datasets.chunks.format import PreprocessingFacts
from datasets.chunks.loader import verify_checksums
from datasets.prior import ClassPrior
from losses import ConsistencyLoss, PNLoss, PULoss
from models import ModelEMA, build_model
from models.checkpoint import evaluated_model, load_checkpoint, load_model_weights, save_checkpoint
from models.ema import unwrap
from models.input import NetworkInput, network_input
from models.precision import native_bf16
from training.data import TrainBatches, eval_subset
from training.health import TrainingDiverged, check_finite, health_warnings
from training.metrics import best_f1_threshold, patch_metrics, threshold_metrics
from training.visuals import (Visuals, build_visuals, check_visual_settings, log_picks_preview, log_pr_curve,
                              log_unlabeled_grids)

RESUMABLE_CHANGES = {"training.epochs", "training.max_minutes", "training.members", "training.early_stopping_patience",
                     "training.unlabeled_grid_size", "training.unlabeled_grid_pool", "training.picks_preview_every"}
# keys added to the config since runs were trained without them -> the value that trains as those runs did
ADDED_KEYS = {"data.known_negative_share": None}
MISSING = object()  # resume_hint: a key the saved config lacks and ADDED_KEYS does not name
POSTFIX_EVERY = 10  # steps between updates of the progress bar's loss and mask rate (each one a host sync)


@dataclass
class Run:
    config: dict
    run_dir: object
    device: torch.device
    model: torch.nn.Module
    ema: ModelEMA | None
    average: AveragedModel | None  # model.average_from: the teacher's epoch-end weights averaged (SWA)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    pu_loss: torch.nn.Module
    consistency: ConsistencyLoss | None
    batches: TrainBatches
    prior: ClassPrior | None  # None for the PN baseline
    facts: PreprocessingFacts
    network_input: NetworkInput
    generator: torch.Generator
    eval_sets: dict  # split -> (mmap dataset, the fixed seeded subset of its indices that is evaluated)
    clock: dict  # {"budget_used": fraction of the time budget spent}, read by the LR schedule
    rank: int = 0
    world_size: int = 1
    writer: SummaryWriter | None = None
    visuals: Visuals | None = None  # rank 0's
    progress: dict = field(default_factory=dict)

    @property
    def main(self):
        return self.rank == 0

    @property
    def teacher(self):
        return self.ema.module if self.ema is not None else unwrap(self.model)

    @property
    def averaged_epochs(self):
        """Epoch-end teachers in the weight average (0 without model.average_from, or before it)."""
        return int(self.average.n_averaged) if self.average is not None else 0

    @property
    def evaluated(self):
        """The network val judges and best.pt keeps: the weight average once it holds an epoch, else the teacher."""
        return self.average.module if self.averaged_epochs else self.teacher


def build_losses(loss_cfg, prior):
    """The PU (or PN) loss and the FixMatch term, π given to each at construction."""
    mode = loss_cfg["mode"]
    if mode == "pn":
        pu_loss = PNLoss()
    elif mode in ("nnpu", "upu"):
        pu_loss = PULoss(prior.value, loss=loss_cfg["surrogate"], beta=loss_cfg["beta"], gamma=loss_cfg["gamma"],
                         nnpu=mode == "nnpu", negative_weight=loss_cfg["negative_weight"])
    else:
        raise InputError(f"loss.mode '{mode}' is not one of nnpu, upu, pn")
    aligned_to = prior.value if loss_cfg["align_to_prior"] and mode != "pn" else None
    consistency = ConsistencyLoss(loss_cfg["consistency_threshold"], loss_cfg["lambda_consistency"],
                                  loss_cfg["selective"], prior=aligned_to) if loss_cfg["use_consistency"] else None
    return pu_loss, consistency


def build_optimizer(model, opt_cfg, total_steps, steps_per_epoch, budget_used=None):
    """AdamW; linear warmup, then cosine to 0 at the last step or, when `budget_used` is given (the
    fraction of training.max_minutes spent), at the deadline if that comes first, so a run the time
    budget stops still ends with an annealed learning rate."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt_cfg["lr"], weight_decay=opt_cfg["weight_decay"])
    warmup = opt_cfg["warmup_epochs"] * steps_per_epoch
    if opt_cfg["scheduler"] not in ("cosine", "constant"):
        raise InputError(f"optimizer.scheduler '{opt_cfg['scheduler']}' is not one of cosine, constant")

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        if opt_cfg["scheduler"] == "constant":
            return 1.0
        done = (step - warmup) / max(1, total_steps - warmup)
        if budget_used is not None:
            done = max(done, budget_used())
        return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_run(config, run_dir, device, facts, prior, rank=0, world_size=1, num_workers=0):
    data_cfg, train_cfg = config["data"], config["training"]
    check_visual_settings(train_cfg)
    spec = NetworkInput.for_patches(data_cfg["input_size"], data_cfg["normalization"], facts.patch_size,
                                    facts.clip_sigma)
    eval_sets = {split: eval_subset(data_cfg["data_dir"], split, data_cfg["max_eval_samples"], train_cfg["seed"])
                 for split in ("val", "test")}  # opened now: a missing split fails before training, not after
    batches = TrainBatches(data_cfg, train_cfg, rank, world_size, num_workers, pin_memory=device.type == "cuda")
    torch.manual_seed(train_cfg["seed"])  # the same initial weights (and EMA teacher) on every rank
    model = build_model(config["model"]["backbone"], config["model"]["dropout"]).to(device)
    torch.manual_seed(train_cfg["seed"] + rank)
    if device.type == "cuda" and train_cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEMA(model, config["model"]["ema_decay"]) if config["model"]["use_ema"] else None
    average = weight_average(config["model"]["average_from"], ema.module if ema is not None else model)
    clock = {"budget_used": 0.0}  # fraction of training.max_minutes spent; train_epoch keeps it current
    optimizer, scheduler = build_optimizer(model, config["optimizer"], train_cfg["epochs"] * batches.steps,
                                           batches.steps,
                                           (lambda: clock["budget_used"]) if train_cfg["max_minutes"] else None)
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(  # static graph: weak and strong views are two forwards
            model, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True)
    pu_loss, consistency = build_losses(config["loss"], prior)
    consistency = consistency.to(device) if consistency is not None else None  # its alignment buffer
    generator = torch.Generator(device=device).manual_seed(train_cfg["seed"] * 1000 + rank)
    return Run(config, run_dir, device, model, ema, average, optimizer, scheduler, pu_loss, consistency, batches, prior,
               facts, spec, generator, eval_sets, clock, rank, world_size)


def weight_average(average_from, teacher):
    """The uniform average of the teacher's weights and BatchNorm statistics at the epoch ends from
    `average_from` (a fraction of the schedule) on, or None when model.average_from is null."""
    if average_from is None:
        return None
    if isinstance(average_from, bool) or not isinstance(average_from, (int, float)) or not 0 <= average_from < 1:
        raise InputError(f"model.average_from {average_from!r} must be a fraction of the schedule in [0, 1) "
                         f"(0.5: average the second half) or null (no averaging)")
    return AveragedModel(teacher, use_buffers=True).eval().requires_grad_(False)


def schedule_done(run):
    """The fraction of the schedule behind us: of training.epochs' steps, or of the time budget if further."""
    return max(run.progress["step"] / (run.config["training"]["epochs"] * run.batches.steps),
               run.clock["budget_used"])


def fold_into_average(run):
    """At an epoch end past model.average_from: add the teacher's weights to the average. Returns True at
    the first epoch averaged, from which on best.pt and early stopping follow the average."""
    if run.average is None or schedule_done(run) < run.config["model"]["average_from"]:
        return False
    run.average.update_parameters(run.teacher)
    return run.averaged_epochs == 1


def uses_bf16(run):
    """training.amp on a device where bf16 pays (CUDA, a CPU with native bf16); fp32 elsewhere."""
    return run.config["training"]["amp"] and native_bf16(run.device)


def autocast(run):
    if uses_bf16(run):
        return torch.autocast(run.device.type, dtype=torch.bfloat16)
    return nullcontext()


def channels_last(run, x):
    if run.device.type == "cuda" and run.config["training"]["channels_last"]:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def consistency_ramp(run):
    """Weight of the FixMatch term: 0 -> 1 linearly over loss.consistency_warmup_epochs (then 1)."""
    warmup_steps = run.config["loss"]["consistency_warmup_epochs"] * run.batches.steps
    return min(1.0, run.progress["step"] / warmup_steps) if warmup_steps else 1.0


@contextmanager
def frozen_batchnorm_statistics(model):
    """BatchNorm still normalises with batch statistics but its running statistics stay as they are.

    The strong view passes through the network under this: mixed into the running statistics, its
    noise and blur would shift every eval-mode logit (the EMA teacher's too) towards one class, and the
    pseudo labels would then drag the model along (seen here: val AUC 0.99 while calling no patch a particle).
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


def model_input(run, patches):
    """uint8 patches -> the network's float input on the run's device (data.input_size, data.normalization)."""
    return network_input(patches, run.network_input, run.device)


def train_step(run, batch):
    """One optimisation step; returns the loss parts as detached tensors (no host sync here)."""
    x = model_input(run, batch["patches"])
    labels = batch["label"].to(run.device, non_blocking=True).long()
    true_label = batch["true_label"].to(run.device, non_blocking=True).long()
    weak = channels_last(run, weak_augment(x, generator=run.generator))
    run.model.train()
    with autocast(run):
        weak_logits = run.model(weak).float()
    loss, parts = run.pu_loss(weak_logits, labels)
    parts["pu_loss"] = parts.pop("risk")
    if run.consistency is not None:
        strong = channels_last(run, strong_augment(x, generator=run.generator))
        with autocast(run), frozen_batchnorm_statistics(unwrap(run.model)):
            strong_logits = run.model(strong).float()
        with torch.no_grad(), autocast(run):
            teacher_logits = run.teacher(weak).float() if run.ema is not None else weak_logits.detach()
        consistency, cparts = run.consistency(teacher_logits, strong_logits, labels, true_label)
        loss = loss + consistency_ramp(run) * consistency
        parts.update(cparts)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(unwrap(run.model))
    parts["loss"] = loss.detach()
    return parts


def _mean_parts(accumulated, n):
    return {k: float(v) / n for k, v in accumulated.items()}


def progress_bar(run, epoch, skip):
    """Rank 0's tqdm bar over the epoch's steps (steps/s); redrawn each second on a terminal, each minute
    into a log file."""
    return tqdm(total=run.batches.steps, initial=skip, desc=f"epoch {epoch + 1}", unit="step",
                disable=not run.main, mininterval=1.0 if sys.stderr.isatty() else 60.0, dynamic_ncols=True)


def show_epoch_means(bar, epoch_sum, n):
    """The epoch's mean loss and mask rate so far as the bar's postfix, every POSTFIX_EVERY steps."""
    if bar.disable or n % POSTFIX_EVERY:
        return
    means = {"loss": f"{float(epoch_sum['loss']) / n:.4f}"}
    if "mask_rate" in epoch_sum:
        means["mask_rate"] = f"{float(epoch_sum['mask_rate']) / n:.1%}"
    bar.set_postfix(means, refresh=False)


def train_epoch(run, epoch, skip, budget):
    """Steps of one epoch (from `skip`); returns the epoch's mean parts and whether time ran out."""
    log_every, ckpt_every = run.config["training"]["log_every"], run.config["training"]["checkpoint_every"]
    epoch_sum, window_sum, window_n, n = {}, {}, 0, 0
    step_in_epoch = skip
    with progress_bar(run, epoch, skip) as bar:
        for batch in run.batches.epoch(epoch, skip):
            parts = train_step(run, batch)
            for key, value in parts.items():
                epoch_sum[key] = epoch_sum.get(key, 0) + value
                window_sum[key] = window_sum.get(key, 0) + value
            n, window_n, step_in_epoch = n + 1, window_n + 1, step_in_epoch + 1
            run.progress["step"] += 1
            bar.update()
            show_epoch_means(bar, epoch_sum, n)
            if window_n == log_every:
                log_train_window(run, _mean_parts(window_sum, window_n))
                window_sum, window_n = {}, 0
            if ckpt_every and run.progress["step"] % ckpt_every == 0:
                check_finite(float(parts["loss"]), run.progress["step"])
                run.progress["train_seconds"] += time.time() - run.progress.pop("epoch_started")
                run.progress["epoch_started"] = time.time()
                save_state(run, "last.pt", epoch, step_in_epoch)
            if math.isfinite(budget) and budget_used(run, budget) >= 1.0:
                return _mean_parts(epoch_sum, max(n, 1)), True
    return _mean_parts(epoch_sum, max(n, 1)), False


def budget_used(run, budget):
    """The fraction of the time budget spent (rank 0's figure on every rank), also kept in run.clock."""
    used = (run.progress["train_seconds"] + time.time() - run.progress["epoch_started"]) / budget
    if run.world_size > 1:
        shared = torch.tensor([used], dtype=torch.float64, device=run.device if run.device.type == "cuda" else "cpu")
        dist.broadcast(shared, src=0)
        used = float(shared.item())
    run.clock["budget_used"] = used
    return used


def agreed(run, flag):
    """Rank 0's decision, on every rank (a decision taken apart would leave one rank waiting)."""
    if run.world_size == 1:
        return flag
    decision = torch.tensor([float(flag)], device=run.device if run.device.type == "cuda" else "cpu")
    dist.broadcast(decision, src=0)
    return bool(decision.item())


def log_train_window(run, means):
    check_finite(means["loss"], run.progress["step"])
    if run.writer is None:
        return
    step = run.progress["step"]
    for key in ("loss", "pu_loss", "consistency_loss", "mask_rate", "pseudo_label_accuracy",
                "pseudo_positive_rate", "unlabeled_positive_rate", "positive_risk", "negative_risk",
                "nn_correction", "known_negative_risk"):
        if key in means:
            run.writer.add_scalar(f"train/{key}", means[key], step)
    if run.prior is not None:
        run.writer.add_scalar("train/prior", run.prior.value, step)
    run.writer.add_scalar("lr", run.optimizer.param_groups[0]["lr"], step)


def batch_logits(run, model, patches):
    """float32 logits [B] of uint8 patches, through the network input path of training (eval mode, no grad
    assumed: under `predict` or `patch_logits`)."""
    x = channels_last(run, model_input(run, patches))
    with autocast(run):
        return model(x).float()


@torch.inference_mode()
def predict(run, model, dataset, indices):
    """Particle probabilities of the samples `indices`, and their true labels."""
    model.eval()
    batch_size, scores, truth = run.config["training"]["eval_batch_size"], [], []
    for start in range(0, len(indices), batch_size):
        batch = dataset.get_batch(indices[start:start + batch_size])
        scores.append(torch.sigmoid(batch_logits(run, model, batch["patches"])).cpu())
        truth.append(batch["true_label"].long())
    return torch.cat(scores).numpy(), torch.cat(truth).numpy()


@torch.inference_mode()
def patch_logits(run, model, patches):
    """float32 logits [N] (on the CPU) of uint8 patches [N, S, S] held in memory, in eval batches."""
    model.eval()
    batch_size = run.config["training"]["eval_batch_size"]
    return torch.cat([batch_logits(run, model, patches[start:start + batch_size]).cpu()
                      for start in range(0, len(patches), batch_size)])


def log_visuals(run, epoch, val_scores, val_truth):
    """Rank 0, after each evaluation, of the evaluated network: val's PR curve (from the scores just
    computed), the unlabeled patch grids and, every training.picks_preview_every epochs, the picks preview."""
    cfg, step, model = run.config["training"], run.progress["step"], run.evaluated
    log_pr_curve(run.writer, val_scores, val_truth, step)
    if run.visuals.pool is not None:
        logits = patch_logits(run, model, run.visuals.pool.patches)
        log_unlabeled_grids(run.writer, run.visuals.pool, logits, cfg["unlabeled_grid_size"],
                            run.network_input.input_size, step)
    if run.visuals.preview is not None and (epoch + 1) % cfg["picks_preview_every"] == 0:
        log_picks_preview(run.writer, run.visuals.preview, model, run.facts, run.network_input, run.device,
                          uses_bf16(run), step)


def evaluate(run, model, split, best_threshold=None):
    dataset, indices = run.eval_sets[split]
    scores, truth = predict(run, model, dataset, indices)
    return patch_metrics(scores, truth, best_threshold), scores, truth


def write_metrics(run):
    """metrics.jsonl, one line per finished epoch, rewritten from the history last.pt holds: a run killed
    anywhere and resumed has each epoch's line exactly once."""
    lines = "".join(json.dumps(record) + "\n" for record in run.progress.get("history", []))
    atomic_write_text(run.run_dir / "metrics.jsonl", lines)


def save_state(run, name, epoch, step_in_epoch):
    if not run.main:
        return
    save_checkpoint(run.run_dir / name, {
        "model": unwrap(run.model).state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "ema": run.ema.state_dict() if run.ema else None,
        "consistency": run.consistency.state_dict() if run.consistency else None,
        "average": run.average.module.state_dict() if run.averaged_epochs else None,
        "averaged_epochs": run.averaged_epochs,
        "epoch": epoch, "step": run.progress["step"], "step_in_epoch": step_in_epoch,
        "best_metric": run.progress["best_metric"], "best_epoch": run.progress["best_epoch"],
        "progress": run.progress, "config": run.config, "preprocessing": run.facts.to_dict(),
        "network_input": run.network_input.to_dict(), "prior": run.prior.to_dict() if run.prior else None,
        "rng": {"torch": torch.get_rng_state(), "augment": run.generator.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else None},
        "git_sha": git_sha()})
    if name == "last.pt":
        write_metrics(run)


def resume_hint(saved_config, config, differing):
    """The --set that resumes a run as it was trained: each differing key at its saved value, or at the value
    that trains as runs from before the key did (ADDED_KEYS); empty where a key has neither, or where `config`
    (the run's now) has no such key to set."""
    values = {dotted: get_dotted(saved_config, dotted, ADDED_KEYS.get(dotted, MISSING)) for dotted in differing}
    if any(v is MISSING or get_dotted(config, k, MISSING) is MISSING for k, v in values.items()):
        return ""
    return f"resume it as it was with --set {' '.join(override_item(k, v) for k, v in values.items())}, or "


def restore_state(run, path):
    """Continue a run from last.pt: same step, optimizer, scheduler, EMA, RNG and history."""
    state = load_checkpoint(path, map_location=run.device)
    changed = diff_keys(state["config"], run.config)
    differing = [k for k in changed if k not in RESUMABLE_CHANGES]
    if differing:
        hint = resume_hint(state["config"], run.config, differing)
        raise InputError(f"{path} was trained with a different config ({', '.join(differing)}); "
                         f"{hint}use another --exp-name or delete {run.run_dir}")
    saved_prior = (state.get("prior") or {}).get("value")
    if saved_prior != (run.prior.value if run.prior else None):
        raise InputError(f"{path} was trained with prior {saved_prior}, the run now has {run.prior}; use another "
                         f"--exp-name or delete {run.run_dir}")
    load_model_weights(unwrap(run.model), state["model"], path)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    if run.consistency is not None:
        run.consistency.load_state_dict(state["consistency"])
    if run.average is not None and state.get("average") is not None:
        run.average.module.load_state_dict(state["average"])
        run.average.n_averaged.fill_(state["averaged_epochs"])
    run.progress = state["progress"]
    if run.rank == 0:  # the saved streams are rank 0's; other ranks re-derive theirs from the step
        torch.set_rng_state(state["rng"]["torch"].cpu())
        run.generator.set_state(state["rng"]["augment"].cpu())
        if state["rng"].get("cuda") is not None and run.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    else:
        torch.manual_seed(run.config["training"]["seed"] + run.rank + run.progress["step"])
        run.generator.manual_seed(run.config["training"]["seed"] * 1000 + run.rank + run.progress["step"])
    epoch = state["epoch"]
    if changed and run.progress["stopped"]:  # more epochs or time than the stopped run had: go on
        run.progress["stopped"], epoch = None, min(epoch, run.progress["epochs_done"])
    return epoch, state["step_in_epoch"]


def new_progress():
    return {"step": 0, "best_metric": -1.0, "best_epoch": -1, "auc_history": [], "train_seconds": 0.0,
            "stopped": None, "epochs_done": 0, "history": []}


def print_epoch(epoch, epochs, parts, val, prior, is_best, warnings, averaged_epochs):
    print(f"\nEpoch {epoch + 1}/{epochs}")
    print(f"  Train Loss: {parts.get('loss', float('nan')):.4f}")
    print(f"    - PU Loss: {parts.get('pu_loss', float('nan')):.4f}")
    if "consistency_loss" in parts:
        print(f"    - Consistency Loss: {parts['consistency_loss']:.4f}")
        print(f"  Consistency Mask Rate: {parts['mask_rate']:.1%}")
        print(f"  Unlabeled called positive: {parts['unlabeled_positive_rate']:.1%} (pi = {prior:.3f})")
    if averaged_epochs:
        print(f"\n  Evaluated: the average of the teacher's weights at {averaged_epochs} epoch ends")
    print(f"\n  Val AUC: {val['auc']:.4f}")
    print(f"  Val Precision: {val['precision']:.4f}")
    print(f"  Val Recall: {val['recall']:.4f}")
    for _, message in warnings:
        print(f"  WARNING: {message}")
    if is_best:
        print(f"  *** New best model! AUC: {val['auc']:.4f} ***")


def end_epoch(run, epoch, parts, val, averaging_started=False):
    """Log the epoch, keep best.pt, check health; returns True when early stopping says stop. The first
    averaged epoch is best whatever its AUC: from then on only averages compete for best.pt."""
    progress, cfg = run.progress, run.config["training"]
    progress["auc_history"].append(val["auc"])
    progress["epochs_done"] = epoch + 1
    is_best = averaging_started or val["auc"] > progress["best_metric"]
    if is_best:
        progress["best_metric"], progress["best_epoch"] = val["auc"], epoch
    prior = run.prior.value if run.prior else None
    consistency_on = run.consistency is not None and consistency_ramp(run) >= 1.0
    warnings = health_warnings(parts, val, progress["auc_history"], consistency_on, prior)
    if run.main:
        step = progress["step"]
        for key in ("auc", "ap", "precision", "recall", "f1", "predicted_positive_rate"):
            run.writer.add_scalar(f"val/{key}", val[key], step)
        run.writer.add_scalar("val/averaged_epochs", run.averaged_epochs, step)
        for tag, _ in warnings:
            run.writer.add_scalar(f"health/{tag}", 1.0, step)
        run.writer.flush()
        record = {"epoch": epoch + 1, "step": step, "lr": run.optimizer.param_groups[0]["lr"],
                  "train": parts, "val": {k: v for k, v in val.items() if not isinstance(v, dict)},
                  "warnings": [t for t, _ in warnings], "train_seconds": progress["train_seconds"],
                  "averaged_epochs": run.averaged_epochs}
        progress.setdefault("history", []).append(record)
        print_epoch(epoch, cfg["epochs"], parts, val, prior if prior else math.nan, is_best, warnings,
                    run.averaged_epochs)
        if is_best:
            save_state(run, "best.pt", epoch + 1, 0)
    save_state(run, "last.pt", epoch + 1, 0)
    return epoch - progress["best_epoch"] >= cfg["early_stopping_patience"]


def member_budget_seconds(training_cfg) -> float:
    """This network's share of training.max_minutes (the whole ensemble's), in seconds; inf without one."""
    if not training_cfg["max_minutes"]:
        return float("inf")
    return training_cfg["max_minutes"] * 60 / training_cfg["members"]


def train(run, start_epoch, skip):
    """Epochs from start_epoch until done, early stopping, or the time budget."""
    cfg = run.config["training"]
    budget = member_budget_seconds(cfg)
    for epoch in range(start_epoch, cfg["epochs"]):
        run.progress["epoch_started"] = time.time()
        if math.isfinite(budget):
            budget_used(run, budget)  # a resumed run's schedule starts from the time already spent
        parts, out_of_time = train_epoch(run, epoch, skip, budget)
        skip = 0
        check_finite(parts.get("loss", 0.0), run.progress["step"])
        run.progress["train_seconds"] += time.time() - run.progress.pop("epoch_started")
        averaging_started = fold_into_average(run)
        val, val_scores, val_truth = evaluate(run, run.evaluated, "val")
        if math.isnan(val["auc"]):
            raise InputError("the val split holds only one class of true labels, so val AUC is undefined; "
                             "preprocess with val micrographs that have particles and background")
        if run.main:
            log_visuals(run, epoch, val_scores, val_truth)
        if agreed(run, end_epoch(run, epoch, parts, val, averaging_started)):
            run.progress["stopped"] = f"early stopping after epoch {epoch + 1}"
            break
        if out_of_time:
            run.progress["stopped"] = f"time budget of {budget / 60:.4g} min reached in epoch {epoch + 1}"
            break
    if run.progress["stopped"] and run.main:
        print(f"\n{run.progress['stopped']}")
        save_state(run, "last.pt", cfg["epochs"], 0)
    if run.average is not None and not run.averaged_epochs and run.main:
        print(f"model.average_from={run.config['model']['average_from']} was never reached (the run ended at "
              f"{schedule_done(run):.2f} of its schedule), so no weights were averaged; lower it to average")


def final_results(run):
    """results.json: the best checkpoint's val and test metrics (at 0.5 and at val's best-F1 threshold)."""
    best = load_checkpoint(run.run_dir / "best.pt", map_location=run.device)
    model = evaluated_model(best, run.run_dir / "best.pt").to(run.device)
    started = time.time()
    val, val_scores, val_truth = evaluate(run, model, "val")
    known = val_truth >= 0
    threshold = best_f1_threshold(val_scores[known], val_truth[known])
    val["at_best_f1_threshold"] = threshold_metrics(val_scores[known], val_truth[known], threshold)
    test, _, _ = evaluate(run, model, "test", best_threshold=threshold)
    results = {"exp_name": run.run_dir.name, "best_epoch": best["best_epoch"] + 1, "best_val_auc": best["best_metric"],
               "averaged_epochs": best.get("averaged_epochs", 0),
               "val": val, "test": test, "prior": run.prior.value if run.prior else None,
               "prior_source": run.prior.source if run.prior else None,
               "loss_mode": run.config["loss"]["mode"], "consistency": run.config["loss"]["use_consistency"],
               "steps": run.progress["step"], "stopped": run.progress["stopped"],
               "precision": "bf16" if uses_bf16(run) else "fp32",
               "timings": {"train_seconds": run.progress["train_seconds"],
                           "final_eval_seconds": time.time() - started}, "git_sha": git_sha()}
    atomic_write_json(run.run_dir / "results.json", results)
    return results


def setup_distributed(device_name):
    """(rank, world_size, device) under torchrun (NCCL on GPU, gloo on CPU), else (0, 1, device)."""
    import os
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if world_size == 1:
        return 0, 1, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # an ensemble's members share the group their caller holds
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


@contextmanager
def process_group(device_name=None):
    """(rank, world_size, device), holding the torchrun process group until the block ends when this call
    created it (so several fits, an ensemble's members, run in one group: a group torn down and made
    again on the same store can hang); outside torchrun (0, 1, device)."""
    created = not dist.is_initialized()
    rank, world_size, device = setup_distributed(device_name)
    try:
        yield rank, world_size, device
    finally:
        if world_size > 1 and created:
            dist.destroy_process_group()


def fit(config, run_dir, facts, prior, device_name=None, num_workers=0):
    """Train (or resume) the run in run_dir on data with `facts`, π `prior` (a ClassPrior, or None for
    the PN baseline); returns results.json's dict on rank 0. Rank 0 holds the run dir's lock."""
    with process_group(device_name) as (rank, world_size, device):
        with folder_lock(run_dir, "training") if rank == 0 else nullcontext():
            try:
                return _fit(config, run_dir, facts, prior, device, rank, world_size, num_workers)
            except InputError:
                if rank == 0:  # while the lock is ours: a failed start leaves no empty run folder behind
                    remove_if_unused(run_dir)
                raise


def remove_if_unused(run_dir):
    """Remove a run dir that holds nothing but its lock file (a run that failed before writing anything)."""
    if {p.name for p in run_dir.iterdir()} == {LOCK_FILE}:
        (run_dir / LOCK_FILE).unlink()
        run_dir.rmdir()


def _fit(config, run_dir, facts, prior, device, rank, world_size, num_workers):
    resuming = (run_dir / "last.pt").exists()
    if not resuming and config["data"]["verify_checksums"]:  # each rank its share, so all finish together
        checked, unchecked = verify_checksums(config["data"]["data_dir"], rank, world_size)
        if rank == 0:
            share = f" (rank 0's share of {world_size})" if world_size > 1 else ""
            print(f"{checked} chunk(s) match their checksums{share}"
                  + (f"; {unchecked} written without one" if unchecked else ""))
    run = build_run(config, run_dir, device, facts, prior, rank, world_size, num_workers)
    run.progress = new_progress()
    start_epoch, skip = 0, 0
    if rank == 0:
        for stale in run_dir.glob("*.tmp"):  # a save a kill interrupted (rank 0 holds the lock: nobody writes them)
            stale.unlink(missing_ok=True)
    if resuming:
        start_epoch, skip = restore_state(run, run_dir / "last.pt")
        if run.main:
            print(f"resuming {run_dir} at epoch {start_epoch + 1}, step {run.progress['step']}")
    if run.main:
        run.visuals = build_visuals(config, facts)
        save_config(config, run_dir / "config.yaml")
        run.writer = SummaryWriter(str(run_dir), purge_step=run.progress["step"] or None)
    try:
        if not run.progress["stopped"]:
            train(run, start_epoch, skip)
        return final_results(run) if run.main else None
    except TrainingDiverged as exc:
        raise InputError(str(exc)) from exc
    finally:
        if run.writer is not None:
            run.writer.close()
