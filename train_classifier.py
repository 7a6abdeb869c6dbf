"""Fine-tune a ResNet on dataset/train/<class>/ and keep the model with the best validation macro F1.

Weighted sampling balances the classes, augmentation follows one per-class table, every epoch records metrics, the
confusion matrix and the most confident mistakes, and after training the probabilities are calibrated (temperature
scaling) and a confidence threshold is recommended. --detect-problematic also reports the hardest and likely
mislabelled training images for review_problematic_images.py.

    python train_classifier.py
    python train_classifier.py --epochs 15 --batch-size 32 --learning-rate 0.0001 --freeze-until layer3
    python train_classifier.py --resume                 # carries on after a crash or Ctrl-C
    python train_classifier.py --weights none --arch resnet18 --image-size 128 --device cpu
    python train_classifier.py --detect-problematic --cross-val-folds 5 --stop-after-analysis
    torchrun --nproc_per_node=4 train_classifier.py --epochs 15     # DistributedDataParallel, one process per GPU

Writes into --output-dir (default models/):
    best_model.pth             classifier.py's checkpoint: best val macro F1, calibrated temperature; one left by an
                               earlier run stays until this run finishes (meanwhile: best_model.pending.pth)
    last_checkpoint.pth        model, optimizer, scheduler, RNG states, history and analysis state, for --resume
    training_metadata.json     config, class counts, sampling, augmentation policy, skipped files, per-epoch metrics,
                               calibration and the threshold table (rewritten atomically after every epoch)
    training_curves.png, confusion_matrix.png (best epoch)
    error_analysis/epoch_XX/<true_class>_errors.json and contact_sheet.png (most confident mistakes)
    .train_classifier.lock     while a run trains there: a second trainer on the same folder is refused
With --detect-problematic, the report goes to <dataset-dir>/problematic_images_report.json (or --report PATH).

This file is the story: arguments, set-up, the train/evaluate loop, checkpoints and resume. Beside it:
training_data.py (scan, cached copies, augmentation, sampling), training_report.py (metrics, calibration, plots,
tables), training_checkpoint.py (the output folder's lock, what --resume restores), problematic_analysis.py
(--detect-problematic: the label-issue rule, features, report; the fold networks of --cross-val-folds train here, in
``cross_validate``) and distributed.py (torchrun).

Under torchrun each process trains a DistributedDataParallel copy of the model on its share of every epoch (of
--batch-size images a step), ``evaluate`` gathers the per-image results of all processes, so metrics, the best model,
calibration and the analysis see the whole set, and only rank 0 writes files (``save_epoch_outputs``,
``save_last_checkpoint``, ``write_analysis_report``, ``calibrate_best_model``, ``finish_run``) or reads the output
folder (``distributed.from_main``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import classifier
import cli
import distributed
import fileio
import problematic_analysis
import training_checkpoint
import training_data
import training_report

logger = logging.getLogger(__name__)

BEST_MODEL_NAME = "best_model.pth"
PENDING_BEST_NAME = "best_model.pending.pth"  # a new run's best while an earlier run's best_model.pth stays in place
LAST_CHECKPOINT_NAME = "last_checkpoint.pth"
MAX_SEED = 2**63 - 1  # torch.manual_seed and the epoch seeds take a signed 64-bit integer
METADATA_NAME = "training_metadata.json"
OWN_FILE_NAMES = (BEST_MODEL_NAME, PENDING_BEST_NAME, LAST_CHECKPOINT_NAME, METADATA_NAME, "training_curves.png",
                  "confusion_matrix.png", "best_model.onnx")  # fmt: skip  # a killed run's temp files go at start
FREEZE_CHOICES = ("layer1", "layer2", "layer3", "none")  # freeze the stem and every stage up to this one
BACKBONE_BLOCKS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")  # ResNet stem and stages, input first


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to zero at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def frozen_blocks(freeze_until: str) -> list[str]:
    """The ResNet blocks whose weights stay fixed: the stem and every stage up to ``freeze_until`` ("none": none)."""
    if freeze_until == "none":
        return []
    return list(BACKBONE_BLOCKS[: BACKBONE_BLOCKS.index(freeze_until) + 1])


def default_freeze_until(weights: str) -> str:
    """--freeze-until when none is given: layer3 keeps pretrained stages fixed, but with --weights none every layer
    trains (random layers kept frozen never learn)."""
    return "none" if str(weights).lower() == "none" else "layer3"


def threshold_setting(text: str) -> float | str:
    """--confidence-threshold: a number from 0 to 1, or "auto" (the threshold the val sweep recommends)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN (or not a number) fails this too
        raise argparse.ArgumentTypeError(f"a number from 0 to 1, or auto, is needed, got {text}")
    return value


def stored_threshold(args: argparse.Namespace, recommended: float | None = None) -> float:
    """The confidence threshold a checkpoint of this run stores: --confidence-threshold, or with auto the
    recommended one (classifier.py's default until calibration has recommended one)."""
    if args.confidence_threshold != "auto":
        return float(args.confidence_threshold)
    return recommended if recommended is not None else classifier.DEFAULT_CONFIDENCE_THRESHOLD


def plain_arguments(args: argparse.Namespace) -> dict[str, Any]:
    return {key: (str(value) if isinstance(value, Path) else value) for key, value in sorted(vars(args).items())}


# ---------------------------------------------------------------------------------------------------------------------
# The model and its optimizer: one definition for training, cross-validation and calibration


def make_model(
    args: argparse.Namespace,
    num_classes: int,
    device: torch.device,
    *,
    seed: int | None = None,
    weights: str | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """The run's ResNet on ``device``: from ``weights`` (imagenet, none, a file) or a checkpoint's ``state_dict``,
    the --freeze-until blocks frozen, channels_last unless --no-channels-last. ``seed`` seeds the new head."""
    if seed is not None:
        torch.manual_seed(seed)
    model = classifier.build_model(args.arch, num_classes, weights=None if state_dict is not None else weights)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    for name in frozen_blocks(args.freeze_until):
        for parameter in getattr(model, name).parameters():
            parameter.requires_grad_(False)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if uses_channels_last(args) else model


def uses_channels_last(args: argparse.Namespace) -> bool:
    return args.channels_last if args.channels_last is not None else True


class Optimization(NamedTuple):
    """What a training step changes besides the weights, saved in last_checkpoint.pth for --resume."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR  # stepped after every batch
    scaler: torch.amp.GradScaler  # float16's gradient scaling (a no-op otherwise)


def make_optimizer(
    model: nn.Module, args: argparse.Namespace, steps_per_epoch: int, device: torch.device, amp_dtype: Any
) -> Optimization:
    """AdamW on the trainable parameters (no weight decay on biases and BatchNorm weights), a linear warm-up of
    --warmup-epochs then cosine decay over --epochs, and the gradient scaler float16 needs."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim > 1 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, foreach=True)
    steps_per_epoch = max(1, steps_per_epoch)
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = min(total_steps, steps_per_epoch * args.warmup_epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, warmup_steps, total_steps)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return Optimization(optimizer, scheduler, scaler)


def set_train_mode(model: nn.Module, blocks: Sequence[str]) -> None:
    """Training mode, except BatchNorm layers in frozen blocks: their statistics are not retrained on small batches."""
    model.train()
    for name in blocks:
        for module in getattr(model, name).modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


# ---------------------------------------------------------------------------------------------------------------------
# One run: its data, model and records


@dataclasses.dataclass
class TrainingRun:
    """Everything one run needs, built once by ``setup_training``."""

    args: argparse.Namespace
    output_dir: Path
    classes: list[str]
    train_dataset: training_data.ImageDataset
    val_dataset: training_data.ImageDataset
    model: nn.Module
    frozen: list[str]
    device: torch.device
    amp_dtype: torch.dtype | None
    num_workers: int
    metadata: dict[str, Any]
    best_model_path: Path
    skipped_files: list[dict[str, str]] = dataclasses.field(default_factory=list)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    ranks: distributed.Ranks = distributed.SINGLE_PROCESS
    train_model: nn.Module = dataclasses.field(init=False)  # ``model`` as it trains: in DDP under torchrun
    train_loader: DataLoader = dataclasses.field(init=False)  # the epochs' draws of train_dataset from --seed
    val_loader: DataLoader = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.train_model = distributed.wrap_for_training(self.model, self.ranks, self.device)
        self.train_loader = self.epoch_loader(self.train_dataset, self.args.seed)
        self.val_loader = self.loader(self.val_dataset)

    def loader(self, dataset: training_data.ImageDataset) -> DataLoader:
        """A loader over ``dataset`` in order, no augmentation (for per-image scores of any split); under torchrun
        over this process's share, which ``evaluate`` gathers."""
        ranks = self.ranks
        return training_data.make_eval_loader(
            dataset, self.args.batch_size, self.num_workers, self.device, ranks.rank, ranks.world_size
        )

    def epoch_loader(self, dataset: training_data.ImageDataset, seed: int) -> DataLoader:
        """The loader of ``dataset``'s weighted, augmented epoch draws from ``seed`` (``set_epoch`` picks the epoch);
        under torchrun this process's share."""
        args, ranks = self.args, self.ranks
        return training_data.make_train_loader(
            dataset, len(self.classes), seed, args, self.num_workers, self.device, ranks.rank, ranks.world_size
        )


def model_input(batch: dict[str, Any], run: TrainingRun) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised NCHW float input on the device (uint8 travels, the device normalises) and the labels."""
    images = batch["images"].to(run.device, non_blocking=True)
    inputs = classifier.normalize_batch(images, classifier.IMAGENET_MEAN, classifier.IMAGENET_STD)
    if not uses_channels_last(run.args):
        inputs = inputs.contiguous()
    return inputs, batch["labels"].to(run.device, non_blocking=True)


def autocast(run: TrainingRun) -> torch.autocast:
    dtype = run.amp_dtype or torch.float32
    return torch.autocast(device_type=run.device.type, dtype=dtype, enabled=run.amp_dtype is not None)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, run: TrainingRun, description: str) -> training_report.Predictions:
    """Run ``model`` in eval mode over ``loader`` (no augmentation); per-image logits, labels and dataset indices.

    Every per-image result of the trainer (validation, calibration, the analysis scores) comes through here. Under
    torchrun ``loader`` holds this process's share and the results of all processes are gathered, each image once,
    in index order: the whole set, on every process, as one process would have it. ``model`` is never the
    DistributedDataParallel wrapper (the shares differ in size; evaluation needs no synchronisation).
    """
    was_training = model.training
    model.eval()
    logits, labels, indices, failures = [], [], [], []
    for batch in cli.progress(loader, desc=description, leave=False):
        failures.extend(batch["failures"])
        if len(batch["labels"]) == 0:
            continue
        inputs, _ = model_input(batch, run)
        with autocast(run):
            logits.append(model(inputs).float().cpu())
        labels.append(batch["labels"])
        indices.append(batch["indices"])
    model.train(was_training)
    predictions = training_report.Predictions(
        torch.cat(logits) if logits else torch.zeros((0, len(run.classes))),
        torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
        torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long),
        failures,
    )
    return distributed.gather_predictions(predictions, run.ranks)


def training_step(
    model: nn.Module,
    run: TrainingRun,
    optimization: Optimization,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    loss_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch (forward, loss, backward, optimizer and schedule); returns logits and loss."""
    with autocast(run):
        logits = model(inputs)
        loss = F.cross_entropy(logits, labels) * loss_weight
    optimization.optimizer.zero_grad(set_to_none=True)
    optimization.scaler.scale(loss).backward()
    optimization.scaler.step(optimization.optimizer)
    optimization.scaler.update()
    optimization.scheduler.step()
    return logits, loss


def train_one_epoch(
    run: TrainingRun, model: nn.Module, loader: DataLoader, optimization: Optimization, epoch: int
) -> dict[str, Any]:
    """One pass over the epoch's weighted draw; returns loss, accuracy, image count and decode failures.

    Under torchrun ``model`` is the DistributedDataParallel wrapper and ``loader`` this process's share; the
    returned figures and failures are those of all processes, and every process ends with rank 0's BatchNorm
    statistics (``distributed.share_buffers``), so all hold the same model.
    """
    module = distributed.unwrap(model)
    set_train_mode(module, run.frozen)
    loader.sampler.set_epoch(epoch)
    totals = torch.zeros(3, device=run.device)  # loss sum, correct, images (float32: exact counts up to 2**24)
    failures: list[tuple[int, str]] = []
    for batch in cli.progress(loader, desc=f"epoch {epoch + 1} train", leave=False):
        failures.extend(batch["failures"])
        if len(batch["labels"]) == 0:
            if run.ranks.is_distributed:  # every process takes part in every step's gradient all-reduce
                idle_step(model, run, optimization)
            continue
        inputs, labels = model_input(batch, run)
        logits, loss = training_step(model, run, optimization, inputs, labels)
        totals[0] += loss.detach().float() * len(labels)
        totals[1] += (logits.detach().argmax(dim=1) == labels).sum()
        totals[2] += len(labels)
    total_loss, total_correct, seen = distributed.sum_over_processes(totals, run.ranks).tolist()
    failures = distributed.gather_failures(failures, run.ranks)
    distributed.share_buffers(module, run.ranks)
    return {
        "train_loss": float(total_loss / seen) if seen else float("nan"),
        "train_accuracy": float(total_correct / seen) if seen else 0.0,
        "train_images": int(seen),
        "failures": failures,
    }


def idle_step(model: nn.Module, run: TrainingRun, optimization: Optimization) -> None:
    """A step that adds nothing, for a process whose whole batch failed to decode: DistributedDataParallel needs
    every process in every step's all-reduce, and the schedule stays in step. Two blank images, a zero loss, and
    BatchNorm in eval mode, so its statistics do not see them."""
    module = distributed.unwrap(model)
    module.eval()
    size = run.args.image_size
    blank = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    inputs, labels = model_input({"images": blank, "labels": torch.zeros(2, dtype=torch.long)}, run)
    training_step(model, run, optimization, inputs, labels, loss_weight=0.0)
    set_train_mode(module, run.frozen)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints: classifier.py's format, written here; --resume reads the last one


def save_checkpoint(
    path: Path, model: nn.Module, run: TrainingRun, extra: dict[str, Any], temperature: float = 1.0
) -> None:
    """A checkpoint in classifier.py's format (``classifier.make_checkpoint``: plain types and CPU tensors, loadable
    with weights_only=True; its own fields win over ``extra``'s), written atomically: readers see the old file or the
    new one, never half of one. Its threshold: --confidence-threshold, or with auto the one ``extra`` recommends."""
    checkpoint = classifier.make_checkpoint(
        distributed.unwrap(model),
        arch=run.args.arch,
        classes=run.classes,
        image_size=run.args.image_size,
        resize_size=classifier.default_resize_size(run.args.image_size),
        mean=classifier.IMAGENET_MEAN,
        std=classifier.IMAGENET_STD,
        confidence_threshold=stored_threshold(run.args, extra.get("recommended_confidence_threshold")),
        temperature=temperature,
        extra=extra,
    )
    with fileio.atomic_write(path) as handle:
        torch.save(checkpoint, handle)


def save_last_checkpoint(
    run: TrainingRun,
    optimization: Optimization,
    epoch: int,
    tracker: problematic_analysis.ProblematicImageTracker | None,
) -> None:
    """Everything --resume needs to continue after ``epoch`` exactly as if the run had not stopped (rank 0 writes it;
    nothing in it depends on the number of processes)."""
    if not run.ranks.is_main:
        return
    extra = {
        "epoch": epoch + 1,
        "arguments": plain_arguments(run.args),
        "history": run.history,
        "skipped_files": run.skipped_files,
        "problematic_analysis": tracker.state_dict() if tracker is not None else None,
        "metadata_started": run.metadata["started"],
        "best_model_name": run.best_model_path.name,
        "optimizer_state_dict": optimization.optimizer.state_dict(),
        "scheduler_state_dict": optimization.scheduler.state_dict(),
        "scaler_state_dict": optimization.scaler.state_dict(),
        "rng_states": training_data.rng_states(),
    }
    save_checkpoint(run.output_dir / LAST_CHECKPOINT_NAME, run.model, run, extra)


# ---------------------------------------------------------------------------------------------------------------------
# Set-up


def best_model_name(output_dir: Path, resume: dict[str, Any] | None) -> str:
    """Where this run keeps its best model: best_model.pth, unless the folder holds one from an earlier run, which
    stays in place until this run finishes (``finish_run``); a resumed run keeps the name it started with."""
    if resume is not None:  # only one of the two names: a checkpoint never chooses where the trainer writes
        return PENDING_BEST_NAME if resume.get("best_model_name") == PENDING_BEST_NAME else BEST_MODEL_NAME
    return PENDING_BEST_NAME if (output_dir / BEST_MODEL_NAME).exists() else BEST_MODEL_NAME


def setup_training(
    args: argparse.Namespace,
    resume: dict[str, Any] | None,
    output_dir: Path,
    ranks: distributed.Ranks = distributed.SINGLE_PROCESS,
    device: torch.device | None = None,
    backend: str | None = None,
) -> TrainingRun:
    """Scan and check the dataset, prepare the image cache, build the model and the loaders; no training yet.

    Under torchrun every process does this on its own (rank 0 alone writes the --cache-dir copies); they agree on
    the files to skip, and refuse together a process count larger than the batches of an epoch. ``device``: the
    process's (default: --device).
    """
    device = device if device is not None else classifier.pick_device(args.device)
    data = training_data.build_datasets(
        Path(args.dataset_dir),
        args.image_size,
        args.cache_max_gb,
        Path(args.cache_dir) if args.cache_dir else None,
        args.uniform_augmentation,
        expected_classes=resume["classes"] if resume is not None else None,
        earlier_skips=resume.get("skipped_files", []) if resume is not None else (),
        is_writing_cache=ranks.is_main,
        agree=distributed.skipped_files_agreement(ranks),
    )
    classes, train_dataset, val_dataset = data.classes, data.train, data.val
    if ranks.is_main and (small := training_data.small_class_warning(dict(zip(classes, data.counts["train"])))):
        logger.warning(small)
    problem = distributed.rank_count_problem(ranks.world_size, sum(data.counts["train"]), args.batch_size)
    if problem:
        raise training_data.DatasetError(problem)
    state = resume["model_state_dict"] if resume is not None else None
    model = distributed.first_on_each_machine(
        ranks, lambda: make_model(args, len(classes), device, seed=args.seed, weights=args.weights, state_dict=state)
    )
    frozen = frozen_blocks(args.freeze_until)
    if frozen and resume is None and str(args.weights).lower() == "none":
        logger.warning(
            "--weights none with --freeze-until %s: the frozen layers keep random weights and never learn; "
            "add --freeze-until none to train every layer from scratch.",
            args.freeze_until,
        )
    amp = args.amp if args.amp is not None else device.type == "cuda"
    amp_dtype = None
    if amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif amp:
        logger.warning("--amp is only used on CUDA; training in float32 on %s.", device)

    num_workers = training_data.resolve_num_workers(args.workers, device)

    metadata = training_report.new_metadata(
        plain_arguments(args), data, model, frozen=frozen, device=device, amp_dtype=amp_dtype,
        is_channels_last=uses_channels_last(args), num_workers=num_workers, world_size=ranks.world_size,
        backend=backend,
    )  # fmt: skip
    if resume is not None and isinstance(resume.get("metadata_started"), str):
        metadata["started"] = resume["metadata_started"]
    return TrainingRun(
        args=args,
        output_dir=output_dir,
        classes=classes,
        train_dataset=train_dataset,
        val_dataset=val_dataset,
        model=model,
        frozen=frozen,
        device=device,
        amp_dtype=amp_dtype,
        num_workers=num_workers,
        metadata=metadata,
        best_model_path=output_dir / best_model_name(output_dir, resume),
        skipped_files=data.skipped_files,
        ranks=ranks,
    )


# ---------------------------------------------------------------------------------------------------------------------
# The loop: train, evaluate, record, save


def save_epoch_outputs(run: TrainingRun, record: dict[str, Any], predictions: training_report.Predictions) -> None:
    """The files of one finished epoch: error analysis, the best model (when this epoch is best), plots, metadata.
    Rank 0 writes them; the other processes never write a file."""
    if not run.ranks.is_main:
        return
    epoch = record["epoch"] - 1
    training_report.write_error_analysis(run.output_dir, predictions, run.val_dataset, run.classes, epoch)
    if record["is_best"]:
        save_checkpoint(run.best_model_path, run.model, run, training_report.best_model_extras(record, run.metadata))
        training_report.plot_confusion_matrix(
            record["confusion_matrix"],
            run.classes,
            f"val confusion matrix, epoch {record['epoch']} (best macro F1 {record['macro_f1']:.3f})",
            run.output_dir / "confusion_matrix.png",
        )
    training_report.plot_training_curves(run.history, run.output_dir / "training_curves.png")
    write_metadata(run, "running")


def write_metadata(run: TrainingRun, status: str) -> None:
    if not run.ranks.is_main:
        return
    run.metadata["best_model"] = run.best_model_path.name  # best_model.pending.pth until an earlier run's is replaced
    training_report.write_metadata(run.output_dir / METADATA_NAME, run.metadata, status, run.history, run.skipped_files)


def write_analysis_report(
    run: TrainingRun, scores: problematic_analysis.ScoreTable, method: str, folds: np.ndarray | None = None
) -> tuple[dict[str, Any], Path]:
    """Build and write (rank 0) the problematic-images report; the training metadata keeps where it went."""
    dataset, arguments = (run.train_dataset.samples, run.classes, run.args), run.metadata["arguments"]
    report = problematic_analysis.make_report(scores, *dataset, arguments, method, run.skipped_files, folds)
    if run.ranks.is_main:
        run.metadata["problematic_analysis"] = problematic_analysis.write_report(run.args, report)
    return report, problematic_analysis.report_path(run.args)


def run_epochs(
    run: TrainingRun,
    resume: dict[str, Any] | None,
    tracker: problematic_analysis.ProblematicImageTracker | None,
) -> None:
    """The epoch loop: train, evaluate, record, save; stops early after --patience epochs without a better F1, or
    after the analysis epochs with --stop-after-analysis."""
    args, model = run.args, run.model
    optimization = make_optimizer(model, args, len(run.train_loader), run.device, run.amp_dtype)
    start_epoch = 0
    if resume is not None:
        training_checkpoint.restore_state(optimization, resume)  # optimizer, schedule, loss scaler, RNG states
        run.history = list(resume["history"])
        start_epoch = int(resume["epoch"])
        # The schedule goes by steps, and an epoch has fewer of them with more processes: it carries on from the
        # epochs done, so a run resumed with another number of processes keeps its learning-rate curve.
        optimization.scheduler.last_epoch = start_epoch * len(run.train_loader) - 1
        optimization.scheduler.step()
        print(f"Resuming after epoch {start_epoch} of {args.epochs}.")
    write_metadata(run, "running")

    best = training_report.best_record(run.history)
    best_f1 = best["macro_f1"] if best else -1.0
    epochs_without_improvement = (len(run.history) - best["epoch"]) if best else 0
    if args.patience and epochs_without_improvement >= args.patience:
        print(f"Early stopping already reached ({args.patience} epochs without a better macro F1).")
        return
    if tracker is not None and tracker.is_complete and args.stop_after_analysis:
        print(f"The analysis epochs are done and the report written ({cli.shown(tracker.report_path)}).")
        return
    score_loader = run.loader(run.train_dataset.with_view("eval")) if tracker is not None else None
    for epoch in cli.progress(range(start_epoch, args.epochs), desc="epochs"):
        started = time.perf_counter()
        learning_rate = optimization.optimizer.param_groups[0]["lr"]
        train_stats = train_one_epoch(run, run.train_model, run.train_loader, optimization, epoch)
        training_data.record_failures(run.skipped_files, run.train_dataset, "train", train_stats["failures"])
        predictions = evaluate(model, run.val_loader, run, f"epoch {epoch + 1} val")
        training_data.record_failures(run.skipped_files, run.val_dataset, "val", predictions.failures)
        seconds = time.perf_counter() - started
        record = training_report.epoch_record(epoch, train_stats, predictions, run.classes, learning_rate, seconds)
        record["is_best"] = record["macro_f1"] > best_f1
        if record["is_best"]:
            best_f1, epochs_without_improvement = record["macro_f1"], 0
        else:
            epochs_without_improvement += 1
        run.history.append(record)

        report = None
        if tracker is not None and tracker.wants(epoch + 1):  # one loss per training image, as classifier.py sees it
            scorer = tracker.scorer(model, epoch + 1)  # at the last analysis epoch also the images' features
            scores = evaluate(scorer, score_loader, run, f"epoch {epoch + 1} scoring train images")
            training_data.record_failures(run.skipped_files, run.train_dataset, "train", scores.failures)
            tracker.after_epoch(epoch + 1, scores, scorer)
            if tracker.is_complete:
                method = problematic_analysis.LINEAR_OUT_OF_FOLD
                report, report_file = write_analysis_report(run, tracker.scores, method)
                tracker.report_path, score_loader = str(report_file), None  # its workers are not needed any more
        save_epoch_outputs(run, record, predictions)
        save_last_checkpoint(run, optimization, epoch, tracker)
        tqdm.write(training_report.format_epoch_line(record), file=sys.stdout)
        if report is not None:
            problematic_analysis.print_report(report, report_file, args.dataset_dir)
            if args.stop_after_analysis:
                print(f"Stopping after the {args.analysis_epochs} analysis epoch(s) (--stop-after-analysis).")
                break
        if args.patience and epochs_without_improvement >= args.patience:
            print(f"Stopping early: no better val macro F1 for {args.patience} epochs.")
            break


def cross_validate(run: TrainingRun) -> tuple[problematic_analysis.ScoreTable, np.ndarray]:
    """--cross-val-folds K: per stratified fold a fresh model (the run's settings) trains --analysis-epochs epochs on
    the other folds and scores the held-out one after each; the scores, and the fold of each image (-1: unscored).
    The global RNG states are restored afterwards, so the main training is unchanged; torchrun as for the main run."""
    args, train, folds = run.args, run.train_dataset, run.args.cross_val_folds
    num_samples, labels = len(train.samples), np.array([sample.label for sample in train.samples])
    fold_of = problematic_analysis.assign_folds(labels, folds, args.seed, excluded=train.excluded)
    scores = problematic_analysis.ScoreTable(num_samples, len(run.classes), args.analysis_epochs)
    saved_rng = training_data.rng_states()
    for fold in range(folds):
        held_out = set(np.flatnonzero(fold_of == fold).tolist())
        fold_train = train.with_view("train", set(train.excluded) | held_out)
        fold_seed = training_data.epoch_seed(args.seed, fold + 1)
        model = make_model(args, len(run.classes), run.device, seed=fold_seed, weights=args.weights)
        train_model = distributed.wrap_for_training(model, run.ranks, run.device)
        loader = run.epoch_loader(fold_train, fold_seed)
        optimization = make_optimizer(model, args, len(loader), run.device, run.amp_dtype)
        held_out_loader = run.loader(train.with_view("eval", set(range(num_samples)) - held_out))
        for epoch in range(args.analysis_epochs):
            stats = train_one_epoch(run, train_model, loader, optimization, epoch)
            fold_scores = evaluate(model, held_out_loader, run, f"fold {fold + 1}/{folds} epoch {epoch + 1}")
            for failures in (stats["failures"], fold_scores.failures):
                training_data.record_failures(run.skipped_files, train, "train", failures)
            scores.add(epoch, fold_scores)
        print(f"fold {fold + 1}/{folds}: trained on {num_samples - len(fold_train.excluded)}, scored {len(held_out)}")
    training_data.restore_rng_states(saved_rng)
    return scores, fold_of


def calibrate_best_model(run: TrainingRun) -> dict[str, Any] | None:
    """Fit a temperature on the val logits of the best model, store it in its checkpoint, sweep the thresholds.
    Under torchrun rank 0 reads the checkpoint and passes it on, all processes score their share of val."""
    path = run.best_model_path
    checkpoint = distributed.from_main(run.ranks, lambda: classifier.load_checkpoint(path) if path.is_file() else None)
    if checkpoint is None:
        return None
    model = make_model(run.args, len(run.classes), run.device, state_dict=checkpoint["model_state_dict"])
    predictions = evaluate(model, run.val_loader, run, "calibrating")
    training_data.record_failures(run.skipped_files, run.val_dataset, "val", predictions.failures)
    calibration, table, recommended = training_report.calibrate(predictions, run.classes)
    # Its extras stay (summary, metrics); save_checkpoint writes the format's own fields over the stored ones.
    extra = {**checkpoint, "calibration": calibration, "thresholds": table}
    extra["recommended_confidence_threshold"] = recommended
    threshold = stored_threshold(run.args, recommended)
    if run.ranks.is_main:
        save_checkpoint(path, model, run, extra, temperature=calibration["temperature"])
    run.metadata.update({"calibration": calibration, "thresholds": table, "recommended_threshold": recommended})
    run.metadata["confidence_threshold"] = threshold  # the one best_model.pth stores
    return calibration


def finish_run(run: TrainingRun) -> None:
    """The run is complete: its best model becomes best_model.pth (replacing an earlier run's only now) and the
    metadata says so (rank 0)."""
    if not run.ranks.is_main:
        return
    if run.best_model_path.name != BEST_MODEL_NAME and run.best_model_path.is_file():
        final = run.output_dir / BEST_MODEL_NAME
        run.best_model_path.replace(final)
        run.best_model_path = final
        print(f"This run's best model replaces the previous one: {cli.printable(final)}")
    write_metadata(run, "completed")


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fine-tune a ResNet on dataset/train/<class>/ with weighted sampling, class-specific "
        "augmentation, per-epoch metrics and error analysis, then calibrate it. Started by torchrun "
        "(torchrun --nproc_per_node=N train_classifier.py ...) it trains on N GPUs, or on several machines, with "
        "DistributedDataParallel; --batch-size is then per process.",
        epilog=cli.EXIT_CODES_HELP,
        add_help=add_help,
    )
    add = parser.add_argument
    add("--dataset-dir", default="dataset", help="folder with train/<class>/ and val/<class>/ (default: dataset)")
    add("--output-dir", default="models", help="where models, metadata and plots go (default: models)")
    add("--epochs", type=int, default=15, help="number of epochs (default: 15)")
    add("--batch-size", type=int, default=32, help="images per training step (default: 32)")
    add("--learning-rate", type=float, default=1e-4, help="peak AdamW learning rate (default: 0.0001)")
    add("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    add("--warmup-epochs", type=int, default=1, help="linear warm-up epochs before the cosine decay (default: 1)")
    add("--patience", type=int, default=5, help="epochs without a better val macro F1 before stopping (default: 5)")
    add(
        "--confidence-threshold",
        type=threshold_setting,
        default=classifier.DEFAULT_CONFIDENCE_THRESHOLD,
        help="stored in the checkpoint: the minimum softmax confidence (0-1) below which classifier.py's prediction "
        "becomes 'other'; auto stores the one the val sweep recommends (default: 0.7)",
    )
    add(
        "--freeze-until",
        choices=FREEZE_CHOICES,
        default=None,
        help="freeze the stem and stages up to (default: layer3; none with --weights none, as random layers kept "
        "frozen never learn)",
    )
    add("--arch", choices=classifier.SUPPORTED_ARCHS, default=classifier.DEFAULT_ARCH, help="(default: resnet50)")
    add("--weights", default="imagenet", help="imagenet, none (random) or a file (default: imagenet)")
    add("--image-size", type=int, default=classifier.DEFAULT_IMAGE_SIZE, help="model input pixels (default: 224)")
    add("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda, then mps, then cpu)")
    add("--seed", type=int, default=42, help="seed for initialisation, sampling and augmentation (default: 42)")
    add(
        "--resume",
        action="store_true",
        help="continue from <output-dir>/last_checkpoint.pth, with its settings unless given now",
    )
    add("--amp", action=argparse.BooleanOptionalAction, help="mixed precision (default: on with CUDA, off elsewhere)")
    add("--channels-last", action=argparse.BooleanOptionalAction, help="channels_last memory format (default: on)")
    add("--export-onnx", action="store_true", help="at the end also write best_model.onnx (onnxruntime) (default: off)")
    cli.add_output_flags(parser)
    training_data.add_arguments(parser)
    problematic_analysis.add_arguments(parser)
    return parser


def argument_problem(args: argparse.Namespace, ranks: distributed.Ranks = distributed.SINGLE_PROCESS) -> str | None:
    """One sentence for values no run can use, or None."""
    for name, minimum in (("epochs", 1), ("batch_size", 1), ("warmup_epochs", 0), ("patience", 0)):
        if getattr(args, name) < minimum:
            return f"--{name.replace('_', '-')} must be at least {minimum}, got {getattr(args, name)}"
    low, high = classifier.IMAGE_SIZE_RANGE
    if not low <= args.image_size <= high:
        return f"--image-size must be {low} to {high} pixels (classifier.py refuses other sizes), got {args.image_size}"
    if not 0 < args.learning_rate < math.inf:  # inf or nan would train NaN weights and break the JSON metadata
        return f"--learning-rate must be a positive number, got {args.learning_rate}"
    if not 0 <= args.weight_decay < math.inf:
        return f"--weight-decay must be a number that is not negative, got {args.weight_decay}"
    if not 0 <= args.seed <= MAX_SEED:
        return f"--seed must be from 0 to {MAX_SEED} (torch's seed range), got {args.seed}"
    if args.export_onnx and classifier.onnx_export_problem():  # said before training, not after it
        return f"--export-onnx: {classifier.onnx_export_problem()}"
    data_problem = training_data.argument_problem(args)  # --workers, --cache-max-gb
    if data_problem:
        return data_problem
    try:
        distributed.process_device(args.device, ranks)
    except ValueError as error:
        return f"--device: {error}"
    return problematic_analysis.argument_problem(args)


def interruption_message(run: TrainingRun | None, output_dir: Path, cause: str) -> str:
    """What an interrupted run leaves: the epochs done, the files that are intact, how to carry on."""
    done = len(run.history) if run is not None else 0
    pending = run is not None and run.best_model_path.name != BEST_MODEL_NAME
    kept = f" (the previous {BEST_MODEL_NAME} stays until this run finishes; its best so far: {PENDING_BEST_NAME})"
    if done == 0:  # no epoch finished, so no last checkpoint: --resume would have nothing to read
        earlier = f"; the previous {BEST_MODEL_NAME} is untouched" if pending else ""
        return f"{cause} before the first epoch ended: nothing to resume yet{earlier}. Run the same command again."
    return (
        f"{cause} after {done} finished epoch(s); {cli.printable(output_dir / BEST_MODEL_NAME)} and "
        f"{METADATA_NAME} are intact{kept if pending else ''}. {cli.CARRY_ON_ADVICE}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    cli.apply_output_flags(args)
    try:
        ranks = distributed.ranks_from_environment(os.environ)
    except ValueError as error:
        return cli.error(str(error))
    with distributed.quiet_unless_main(ranks):
        code = run_process(parser, argv, args, ranks)
    # Under torchrun only rank 0's exit code tells how the run went: torchrun ends every other process as soon as
    # one exits with a code other than 0, which could cut short what rank 0 still prints or writes.
    return code if ranks.is_main or code == cli.EXIT_INTERRUPTED else cli.EXIT_OK


def run_process(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, args: argparse.Namespace, ranks: distributed.Ranks
) -> int:
    """This process's part of the run: alone, or in torchrun's process group (left in every case)."""
    args.freeze_until = args.freeze_until or default_freeze_until(args.weights)
    problem = argument_problem(args, ranks)
    if problem:
        return cli.error(problem) if ranks.is_main else cli.EXIT_USAGE
    device = distributed.process_device(args.device, ranks)
    if not ranks.is_distributed:
        return train(parser, argv, args, ranks, device)
    try:
        with distributed.process_group(ranks, device) as backend:
            return train(parser, argv, args, ranks, device, backend)
    except KeyboardInterrupt:  # before the training began
        return cli.EXIT_INTERRUPTED


def train(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    args: argparse.Namespace,
    ranks: distributed.Ranks,
    device: torch.device,
    backend: str | None = None,
) -> int:
    """The run after its arguments are checked: set-up, the analysis, the epochs, calibration; the exit code."""
    fail = cli.error if ranks.is_main else (lambda message: cli.EXIT_USAGE)  # rank 0 says it for all
    is_analysis_run = args.detect_problematic and args.stop_after_analysis  # a short run: its model is thrown away
    output_dir = problematic_analysis.analysis_output_dir(args.output_dir) if is_analysis_run else Path(args.output_dir)
    held = contextlib.ExitStack()  # rank 0's lock on the output folder, released when the run ends
    claim = training_checkpoint.claim_output_folder
    problem = distributed.from_main(ranks, lambda: claim(args, output_dir, OWN_FILE_NAMES, held))
    if problem:
        return fail(cli.printable(problem))
    run = None
    try:
        resume = None
        if args.resume:
            device_flag, last = args.device, output_dir / LAST_CHECKPOINT_NAME
            args, resume = distributed.from_main(ranks, lambda: training_checkpoint.resume_settings(parser, argv, last))
            args.freeze_until = args.freeze_until or default_freeze_until(args.weights)
            if ranks.is_distributed:  # each process's device comes from torchrun, never from the checkpoint
                args.device = device_flag
            problem = argument_problem(args, ranks)
            if problem:
                return fail(problem)
        run = setup_training(args, resume, output_dir, ranks, device, backend)
        training_report.print_setup(run.metadata, METADATA_NAME)
        if run.best_model_path.name == PENDING_BEST_NAME and resume is None:
            print(
                f"{cli.printable(output_dir / BEST_MODEL_NAME)} of an earlier run stays until this run finishes; "
                f"meanwhile this run's best model is {PENDING_BEST_NAME}."
            )
        tracker = None
        if args.detect_problematic and args.cross_val_folds:
            if resume is None:  # a resumed run did its cross-validation before its first epoch
                scores, folds = cross_validate(run)
                report, path = write_analysis_report(run, scores, problematic_analysis.OUT_OF_FOLD, folds)
                problematic_analysis.print_report(report, path, args.dataset_dir)
            if args.stop_after_analysis:
                return cli.EXIT_PARTIAL if run.skipped_files else cli.EXIT_OK
        elif args.detect_problematic:
            tracker = problematic_analysis.start_tracker(
                run.train_dataset.samples, run.classes, args, run.device, resume
            )
        run_epochs(run, resume, tracker)
        if not is_analysis_run:
            calibrate_best_model(run)
        finish_run(run)
        if not is_analysis_run:
            training_report.print_summary(run.metadata, run.best_model_path, run.output_dir / METADATA_NAME)
            if args.export_onnx and ranks.is_main:  # classifier.py --export-onnx, beside best_model.pth
                onnx_path = run.output_dir / Path(BEST_MODEL_NAME).with_suffix(".onnx")
                try:
                    difference = classifier.export_onnx(run.output_dir / BEST_MODEL_NAME, onnx_path)
                except Exception as error:  # noqa: BLE001 - the trained model stands; only its export failed
                    command = f"python classifier.py {run.best_model_path} --export-onnx {onnx_path}"
                    logger.warning("ONNX export failed (%s); best_model.pth is fine: %s", error, cli.printable(command))
                else:
                    print(
                        f"ONNX model: {cli.printable(onnx_path)} (within {difference:.1g} of the .pth's probabilities)"
                    )
    except distributed.SHARED_ERRORS as error:  # one sentence: unusable data, checkpoint or weights; nothing trained
        return fail(cli.printable(error))
    except KeyboardInterrupt as interruption:
        distributed.ignore_sigterm(ranks)  # torchrun's stop must not cut this short
        if ranks.is_main:
            cause = distributed.interruption_cause(interruption)
            print("\n" + interruption_message(run, output_dir, cause), file=sys.stderr, flush=True)
        if run is not None and run.history:
            write_metadata(run, "interrupted")
        return cli.EXIT_INTERRUPTED
    except RuntimeError as error:
        cause = distributed.lost_contact_cause(error, ranks)
        if cause is None:
            raise
        distributed.ignore_sigterm(ranks)  # torchrun stops the others next: this one says why first
        cli.error(interruption_message(run, output_dir, cause))
        if run is not None and run.history:
            write_metadata(run, "interrupted")
        return cli.EXIT_INTERRUPTED
    finally:
        held.close()
    return cli.EXIT_PARTIAL if run.skipped_files else cli.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
