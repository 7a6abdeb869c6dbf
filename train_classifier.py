"""Fine-tune a ResNet on dataset/train/<class>/ and keep the model with the best validation macro F1.

Weighted sampling balances the classes, augmentation follows one per-class table, every epoch records metrics, the
confusion matrix and the most confident mistakes, and after training the probabilities are calibrated (temperature
scaling) and a confidence threshold is recommended.

    python train_classifier.py
    python train_classifier.py --epochs 15 --batch-size 32 --learning-rate 0.0001 --freeze-until layer3
    python train_classifier.py --resume                 # carries on after a crash or Ctrl-C
    python train_classifier.py --weights none --arch resnet18 --image-size 128 --device cpu

Writes into --output-dir (default models/):
    best_model.pth             classifier.py's checkpoint: best val macro F1, calibrated temperature
    last_checkpoint.pth        model, optimizer, scheduler, RNG states and history, for --resume
    training_metadata.json     config, class counts, sampling, augmentation policy, skipped files, per-epoch metrics,
                               calibration and the threshold table (rewritten atomically after every epoch)
    training_curves.png, confusion_matrix.png (best epoch)
    error_analysis/epoch_XX/<true_class>_errors.json and contact_sheet.png (most confident mistakes)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import classifier
import fileio
from training_data import (
    DEFAULT_CACHE_MAX_GB,
    AugmentationPolicy,
    DatasetError,
    EpochSampler,
    ImageDataset,
    UsableIndices,
    augmentation_policy_for,
    check_class_counts,
    class_counts,
    epoch_seed,
    load_dataset,
    make_loader,
    prepare_images,
    resolve_num_workers,
)
from training_report import (
    ECE_BINS,
    SCHEMA_VERSION,
    TEMPERATURE_RANGE,
    Predictions,
    best_record,
    epoch_record,
    expected_calibration_error,
    fit_temperature,
    format_epoch_line,
    negative_log_likelihood,
    plot_confusion_matrix,
    plot_training_curves,
    print_setup,
    print_summary,
    recommend_threshold,
    threshold_table,
    write_error_analysis,
)

logger = logging.getLogger(__name__)

BEST_MODEL_NAME = "best_model.pth"
LAST_CHECKPOINT_NAME = "last_checkpoint.pth"
METADATA_NAME = "training_metadata.json"
FREEZE_CHOICES = ("layer1", "layer2", "layer3", "none")  # freeze the stem and every stage up to this one
BACKBONE_BLOCKS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")  # ResNet stem and stages, input first
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C


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


def freeze_blocks(model: nn.Module, blocks: Sequence[str]) -> None:
    for name in blocks:
        for parameter in getattr(model, name).parameters():
            parameter.requires_grad_(False)


def set_train_mode(model: nn.Module, blocks: Sequence[str]) -> None:
    """Training mode, except BatchNorm layers in frozen blocks: their statistics are not retrained on small batches."""
    model.train()
    for name in blocks:
        for module in getattr(model, name).modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


# ----------------------------------------------------------------------------------------------------------------
# Training and evaluation


@dataclasses.dataclass
class TrainingContext:
    """Everything one run needs, built once in ``setup_training``; after-epoch hooks receive it."""

    args: argparse.Namespace
    dataset_dir: Path
    output_dir: Path
    classes: list[str]
    train_dataset: ImageDataset
    val_dataset: ImageDataset
    train_loader: DataLoader
    val_loader: DataLoader
    model: nn.Module
    frozen: list[str]
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    num_workers: int
    policies: dict[str, AugmentationPolicy]
    metadata: dict[str, Any]
    skipped_files: list[dict[str, str]] = dataclasses.field(default_factory=list)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    hook_state: dict[str, Any] = dataclasses.field(default_factory=dict)  # saved in last_checkpoint.pth for --resume

    def eval_loader(self, dataset: ImageDataset) -> DataLoader:
        """A loader over ``dataset`` in order, no augmentation (for per-image scores of any split)."""
        return make_loader(
            dataset, UsableIndices(dataset), self.args.batch_size, self.num_workers, self.device, drop_last=False
        )

    def train_images_eval_view(self) -> ImageDataset:
        """The training images as classifier.py sees them (no augmentation), reusing the training cache."""
        train = self.train_dataset
        dataset = ImageDataset(train.samples, "eval", train.image_size, train.resize_size, train.prepared)
        dataset.excluded = train.excluded
        return dataset


def model_input(batch: dict[str, Any], context: TrainingContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised NCHW float input on the device (uint8 travels, the device normalises) and the labels."""
    images = batch["images"].to(context.device, non_blocking=True)
    mean, std = classifier.IMAGENET_MEAN, classifier.IMAGENET_STD
    inputs = classifier.normalize_batch(images, mean, std)
    if not context.channels_last:
        inputs = inputs.contiguous()
    return inputs, batch["labels"].to(context.device, non_blocking=True)


def autocast(context: TrainingContext) -> torch.autocast:
    return torch.autocast(
        device_type=context.device.type,
        dtype=context.amp_dtype or torch.float32,
        enabled=context.amp_dtype is not None,
    )


@torch.no_grad()
def evaluate_dataset(model: nn.Module, loader: DataLoader, context: TrainingContext, description: str) -> Predictions:
    """Run ``model`` in eval mode over ``loader`` (no augmentation); per-image logits, labels and dataset indices."""
    was_training = model.training
    model.eval()
    logits, labels, indices, failures = [], [], [], []
    for batch in tqdm(loader, desc=description, leave=False, file=sys.stderr, disable=None):
        failures.extend(batch["failures"])
        if len(batch["labels"]) == 0:
            continue
        inputs, _ = model_input(batch, context)
        with autocast(context):
            logits.append(model(inputs).float().cpu())
        labels.append(batch["labels"])
        indices.append(batch["indices"])
    model.train(was_training)
    num_classes = len(context.classes)
    return Predictions(
        torch.cat(logits) if logits else torch.zeros((0, num_classes)),
        torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
        torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long),
        failures,
    )


def training_step(
    context: TrainingContext,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    inputs: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch (forward, loss, backward, optimizer and schedule); returns logits and loss."""
    with autocast(context):
        logits = context.model(inputs)
        loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return logits, loss


def train_one_epoch(
    context: TrainingContext,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    epoch: int,
) -> dict[str, Any]:
    """One pass over the epoch's weighted draw; returns loss, accuracy, image count and decode failures."""
    model = context.model
    set_train_mode(model, context.frozen)
    context.train_loader.sampler.set_epoch(epoch)
    total_loss = torch.zeros((), device=context.device)
    total_correct = torch.zeros((), device=context.device, dtype=torch.long)
    seen = 0
    failures: list[tuple[int, str]] = []
    bar = tqdm(context.train_loader, desc=f"epoch {epoch + 1} train", leave=False, file=sys.stderr, disable=None)
    for batch in bar:
        failures.extend(batch["failures"])
        if len(batch["labels"]) == 0:
            continue
        inputs, labels = model_input(batch, context)
        logits, loss = training_step(context, optimizer, scheduler, scaler, inputs, labels)
        total_loss += loss.detach().float() * len(labels)
        total_correct += (logits.detach().argmax(dim=1) == labels).sum()
        seen += len(labels)
    return {
        "train_loss": float(total_loss.item() / seen) if seen else float("nan"),
        "train_accuracy": float(total_correct.item() / seen) if seen else 0.0,
        "train_images": seen,
        "failures": failures,
    }


def record_failures(
    context: TrainingContext, dataset: ImageDataset, split: str, failures: Sequence[tuple[int, str]]
) -> None:
    """Exclude images that failed to decode from later epochs and list them in ``skipped_files`` (once each)."""
    known = {item["path"] for item in context.skipped_files}
    for index, reason in failures:
        dataset.excluded.add(index)
        sample = dataset.samples[index]
        if sample.relpath not in known:
            logger.warning("Skipping %s: %s", sample.relpath, reason)
            context.skipped_files.append({"path": sample.relpath, "split": split, "reason": reason})
            known.add(sample.relpath)


# ----------------------------------------------------------------------------------------------------------------
# Writing results


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def write_metadata(context: TrainingContext, status: str) -> None:
    metadata = context.metadata
    metadata["status"] = status
    metadata["updated"] = now_iso()
    metadata["skipped_files"] = sorted(context.skipped_files, key=lambda item: (item["split"], item["path"]))
    metadata["epochs"] = context.history
    best = best_record(context.history)
    metadata["best_epoch"] = best["epoch"] if best else None
    metadata["best_macro_f1"] = best["macro_f1"] if best else None
    fileio.write_json(context.output_dir / METADATA_NAME, metadata)


def rng_states() -> dict[str, Any]:
    """The global RNG states as plain types and tensors (loadable with weights_only=True)."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), int(numpy_state[2]), int(numpy_state[3]), numpy_state[4]],
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def checkpoint_fields(context: TrainingContext) -> dict[str, Any]:
    """The classifier.py checkpoint fields of this run (everything but the weights and the extras)."""
    return {
        "arch": context.args.arch,
        "classes": context.classes,
        "image_size": context.args.image_size,
        "resize_size": classifier.default_resize_size(context.args.image_size),
        "mean": classifier.IMAGENET_MEAN,
        "std": classifier.IMAGENET_STD,
        "confidence_threshold": context.args.confidence_threshold,
    }


def run_summary(context: TrainingContext, record: dict[str, Any] | None) -> dict[str, Any]:
    """The extras stored in best_model.pth: enough to know how the model was made and how good it is."""
    return {
        "epoch": record["epoch"] if record else None,
        "metrics": {k: v for k, v in record.items() if k != "confusion_matrix"} if record else None,
        "confusion_matrix": record["confusion_matrix"] if record else None,
        "arguments": plain_arguments(context.args),
        "class_counts": context.metadata["class_counts"],
        "augmentation_policy": context.metadata["augmentation"]["policy"],
        "created": now_iso(),
        "trainer": "train_classifier.py",
    }


def save_last_checkpoint(
    context: TrainingContext,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    epoch: int,
) -> None:
    """Everything --resume needs to continue after ``epoch`` exactly as if the run had not stopped."""
    extra = {
        "epoch": epoch + 1,
        "arguments": plain_arguments(context.args),
        "history": context.history,
        "skipped_files": context.skipped_files,
        "hook_state": context.hook_state,
        "metadata_started": context.metadata["started"],
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler.state_dict(),
        "scaler_state_dict": scaler.state_dict(),
        "rng_states": rng_states(),
    }
    classifier.save_checkpoint(
        context.output_dir / LAST_CHECKPOINT_NAME, context.model, **checkpoint_fields(context), extra=extra
    )


def plain_arguments(args: argparse.Namespace) -> dict[str, Any]:
    return {key: (str(value) if isinstance(value, Path) else value) for key, value in sorted(vars(args).items())}


# ----------------------------------------------------------------------------------------------------------------
# The run: setup, epochs, calibration


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW on the trainable parameters; no weight decay on biases and BatchNorm weights (as usual)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim > 1 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate, foreach=True)


def setup_training(args: argparse.Namespace, resume: dict[str, Any] | None) -> TrainingContext:
    """Scan and check the dataset, prepare the image cache, build the model and the loaders; no training yet."""
    dataset_dir, output_dir = Path(args.dataset_dir), Path(args.output_dir)
    classes, train_samples, val_samples, skipped = load_dataset(dataset_dir)
    if resume is not None and resume["classes"] != classes:
        raise DatasetError(
            f"The checkpoint to resume was trained on the classes {', '.join(resume['classes'])} but the dataset now "
            f"has {', '.join(classes)}; resume with the same class folders or train from scratch."
        )
    device = classifier.pick_device(args.device)
    image_size = args.image_size
    resize_size = classifier.default_resize_size(image_size)
    budget = int(args.cache_max_gb * 1024**3)
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    skipped_files = list(skipped)
    prepared_sets = {}
    for split, samples, view in (("train", train_samples, "train"), ("val", val_samples, "eval")):
        prepared, failures = prepare_images(
            samples, view, image_size, resize_size, budget, cache_dir, description=f"checking {split} images"
        )
        prepared_sets[split] = (prepared, failures)
        for index, reason in failures:
            logger.warning("Skipping %s: %s", samples[index].relpath, reason)
            skipped_files.append({"path": samples[index].relpath, "split": split, "reason": reason})
    if resume is not None:  # images that failed mid-epoch before the interruption stay skipped
        known = {item["path"] for item in skipped_files}
        skipped_files.extend(item for item in resume.get("skipped_files", []) if item["path"] not in known)
    bad = {item["path"] for item in skipped_files}

    policies = {name: augmentation_policy_for(name, args.uniform_augmentation) for name in classes}
    train_dataset = ImageDataset(
        train_samples, "train", image_size, resize_size, prepared_sets["train"][0], [policies[c] for c in classes]
    )
    val_dataset = ImageDataset(val_samples, "eval", image_size, resize_size, prepared_sets["val"][0])
    for dataset in (train_dataset, val_dataset):
        dataset.excluded.update(i for i, sample in enumerate(dataset.samples) if sample.relpath in bad)
    counts = {
        split: class_counts([s.label for i, s in enumerate(d.samples) if i not in d.excluded], len(classes))
        for split, d in (("train", train_dataset), ("val", val_dataset))
    }
    check_class_counts(classes, counts)

    torch.manual_seed(args.seed)
    model = classifier.build_model(args.arch, len(classes), weights=None if resume else args.weights)
    if resume is not None:
        model.load_state_dict(resume["model_state_dict"])
    frozen = frozen_blocks(args.freeze_until)
    freeze_blocks(model, frozen)
    if frozen and resume is None and str(args.weights).lower() == "none":
        logger.warning(
            "--weights none with --freeze-until %s: the frozen layers keep random weights.", args.freeze_until
        )
    channels_last = args.channels_last if args.channels_last is not None else True
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = args.amp if args.amp is not None else device.type == "cuda"
    amp_dtype = None
    if amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif amp:
        logger.warning("--amp is only used on CUDA; training in float32 on %s.", device)

    num_workers = resolve_num_workers(args.num_workers, device)
    sampler = EpochSampler(train_dataset, len(classes), not args.no_weighted_sampling, args.seed)
    drop_last = sum(counts["train"]) > args.batch_size  # a last batch of one or two images gives noisy BatchNorm
    train_loader = make_loader(train_dataset, sampler, args.batch_size, num_workers, device, drop_last)
    val_loader = make_loader(
        val_dataset, UsableIndices(val_dataset), args.batch_size, num_workers, device, drop_last=False
    )

    usable_train = counts["train"]
    class_weights = [1.0 / count for count in usable_train]  # what draw_epoch uses (check_class_counts: none is 0)
    weighted = not args.no_weighted_sampling
    expected_share = [(1 / len(classes)) if weighted else count / sum(usable_train) for count in usable_train]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    metadata = {
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "started": now_iso(),
        "updated": now_iso(),
        "dataset_dir": str(args.dataset_dir),
        "output_dir": str(args.output_dir),
        "arguments": plain_arguments(args),
        "classes": classes,
        "config": {
            "arch": args.arch,
            "weights": args.weights,
            "image_size": image_size,
            "resize_size": resize_size,
            "mean": list(classifier.IMAGENET_MEAN),
            "std": list(classifier.IMAGENET_STD),
            "freeze_until": args.freeze_until,
            "frozen_blocks": frozen,
            "trainable_parameters": trainable,
            "total_parameters": sum(p.numel() for p in model.parameters()),
            "device": str(device),
            "amp_dtype": str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
            "channels_last": channels_last,
            "num_workers": num_workers,
            "optimizer": "AdamW",
            "schedule": f"linear warm-up {args.warmup_epochs} epoch(s), then cosine to 0",
            "memory_cache_mb": round(
                (prepared_sets["train"][0].memory_bytes + prepared_sets["val"][0].memory_bytes) / 1024**2, 1
            ),
            "cache_dir": str(cache_dir) if cache_dir else None,
            "torch": torch.__version__,
        },
        "class_counts": {split: dict(zip(classes, split_counts)) for split, split_counts in counts.items()},
        "sampling": {
            "weighted": weighted,
            "class_weights": {c: float(w) for c, w in zip(classes, class_weights)},
            "expected_share_per_epoch": {c: float(s) for c, s in zip(classes, expected_share)},
        },
        "augmentation": {
            "uniform": bool(args.uniform_augmentation),
            "policy": {c: dataclasses.asdict(p) for c, p in policies.items()},
            "note": "colour jitter factors are drawn in [1 - x, 1 + x]; grayscale sets saturation to 0",
        },
        "skipped_files": [],
        "epochs": [],
        "best_epoch": None,
        "best_macro_f1": None,
        "calibration": None,
        "thresholds": None,
        "recommended_threshold": None,
    }
    if resume is not None and isinstance(resume.get("metadata_started"), str):
        metadata["started"] = resume["metadata_started"]
    return TrainingContext(
        args=args,
        dataset_dir=dataset_dir,
        output_dir=output_dir,
        classes=classes,
        train_dataset=train_dataset,
        val_dataset=val_dataset,
        train_loader=train_loader,
        val_loader=val_loader,
        model=model,
        frozen=frozen,
        device=device,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
        num_workers=num_workers,
        policies=policies,
        metadata=metadata,
        skipped_files=skipped_files,
    )


AfterEpochHook = Callable[[TrainingContext, dict[str, Any], Predictions], bool | None]


def run_epochs(
    context: TrainingContext,
    resume: dict[str, Any] | None,
    after_epoch_hooks: Sequence[AfterEpochHook] = (),
) -> None:
    """The epoch loop: train, evaluate, record, save; stops early after --patience epochs without a better F1."""
    args = context.args
    model = context.model
    optimizer = build_optimizer(model, args)
    steps_per_epoch = max(1, len(context.train_loader))
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = min(total_steps, steps_per_epoch * args.warmup_epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, warmup_steps, total_steps)
    )
    scaler = torch.amp.GradScaler(context.device.type, enabled=context.amp_dtype == torch.float16)
    start_epoch = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer_state_dict"])
        scheduler.load_state_dict(resume["scheduler_state_dict"])
        scaler.load_state_dict(resume["scaler_state_dict"])
        restore_rng_states(resume["rng_states"])
        context.history = list(resume["history"])
        context.hook_state = dict(resume.get("hook_state") or {})
        start_epoch = int(resume["epoch"])
        print(f"Resuming after epoch {start_epoch} of {args.epochs}.")
    write_metadata(context, "running")

    best = best_record(context.history)
    best_f1 = best["macro_f1"] if best else -1.0
    epochs_without_improvement = (len(context.history) - best["epoch"]) if best else 0
    if args.patience and epochs_without_improvement >= args.patience:
        print(f"Early stopping already reached ({args.patience} epochs without a better macro F1).")
        return
    for epoch in tqdm(range(start_epoch, args.epochs), desc="epochs", file=sys.stderr, disable=None):
        started = time.perf_counter()
        learning_rate = optimizer.param_groups[0]["lr"]
        train_stats = train_one_epoch(context, optimizer, scheduler, scaler, epoch)
        record_failures(context, context.train_dataset, "train", train_stats["failures"])
        predictions = evaluate_dataset(model, context.val_loader, context, f"epoch {epoch + 1} val")
        record_failures(context, context.val_dataset, "val", predictions.failures)
        record = epoch_record(
            epoch, train_stats, predictions, context.classes, learning_rate, time.perf_counter() - started
        )
        if record["macro_f1"] > best_f1:
            best_f1 = record["macro_f1"]
            record["is_best"] = True
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
        context.history.append(record)
        write_error_analysis(context.output_dir, predictions, context.val_dataset, context.classes, epoch)
        if record["is_best"]:
            classifier.save_checkpoint(
                context.output_dir / BEST_MODEL_NAME,
                model,
                **checkpoint_fields(context),
                extra=run_summary(context, record),
            )
            plot_confusion_matrix(
                record["confusion_matrix"],
                context.classes,
                f"val confusion matrix, epoch {record['epoch']} (best macro F1 {record['macro_f1']:.3f})",
                context.output_dir / "confusion_matrix.png",
            )
        plot_training_curves(context.history, context.output_dir / "training_curves.png")
        # After-epoch hooks (e.g. per-image loss tracking) run here: the epoch's record, model and val predictions
        # are final, and the checkpoint below makes --resume start after whatever they did.
        is_stop_requested = any([bool(hook(context, record, predictions)) for hook in after_epoch_hooks])
        write_metadata(context, "running")
        save_last_checkpoint(context, optimizer, scheduler, scaler, epoch)
        tqdm.write(format_epoch_line(record), file=sys.stdout)
        if is_stop_requested:
            break
        if args.patience and epochs_without_improvement >= args.patience:
            print(f"Stopping early: no better val macro F1 for {args.patience} epochs.")
            break


def calibrate_best_model(context: TrainingContext) -> dict[str, Any] | None:
    """Fit a temperature on the val logits of the best model, store it in best_model.pth, sweep the thresholds."""
    path = context.output_dir / BEST_MODEL_NAME
    if not path.is_file():
        return None
    checkpoint = classifier.load_checkpoint(path)
    model = classifier.model_from_checkpoint(checkpoint, str(path)).to(context.device)
    if context.channels_last:
        model = model.to(memory_format=torch.channels_last)
    predictions = evaluate_dataset(model, context.val_loader, context, "calibrating")
    record_failures(context, context.val_dataset, "val", predictions.failures)
    temperature = fit_temperature(predictions.logits, predictions.labels)
    if min(abs(temperature - bound) for bound in TEMPERATURE_RANGE) < 1e-3:
        logger.warning(
            "The fitted temperature %.2f is at the edge of the range searched %s: the val set is too small or too "
            "easy to calibrate on.",
            temperature,
            TEMPERATURE_RANGE,
        )
    labels = predictions.labels.tolist()
    calibrated = predictions.probabilities(temperature)
    table = threshold_table(calibrated, labels, context.classes)
    recommended = recommend_threshold(table)
    calibration = {
        "temperature": temperature,
        "val_images": len(labels),
        "nll_before": negative_log_likelihood(predictions.logits, predictions.labels),
        "nll_after": negative_log_likelihood(predictions.logits, predictions.labels, temperature),
        "ece_before": expected_calibration_error(predictions.probabilities(), labels),
        "ece_after": expected_calibration_error(calibrated, labels),
        "ece_bins": ECE_BINS,
    }
    core = set(checkpoint_fields(context)) | {"format_version", "num_classes", "temperature", "model_state_dict"}
    extra = {k: v for k, v in checkpoint.items() if k not in core}
    extra.update({"calibration": calibration, "thresholds": table, "recommended_confidence_threshold": recommended})
    classifier.save_checkpoint(path, model, **checkpoint_fields(context), temperature=temperature, extra=extra)
    context.metadata["calibration"] = calibration
    context.metadata["thresholds"] = table
    context.metadata["recommended_threshold"] = recommended
    return calibration


# ================================================================================================================
# Problematic-image analysis (--detect-problematic): BEGIN
# Pure functions over per-image losses and probabilities, the after-epoch hook that collects them with the trainer's
# own evaluation pass (evaluate_dataset over train_images_eval_view), and the optional out-of-fold version. Writes
# the report described in review_problematic_images.py (schema 1), read by that script.

PROBLEMATIC_REPORT_SCHEMA_VERSION = 1  # the version review_problematic_images.py reads
PROBLEMATIC_REPORT_NAME = (
    "problematic_images_report.json"  # default: inside the dataset folder, where the reviewer looks
)
ANALYSIS_OUTPUT_SUBDIR = "problematic_analysis"  # --stop-after-analysis writes its short run's model here, never over
# <output-dir>/best_model.pth of a full training
ANALYSIS_STATE_KEY = "problematic_analysis"  # key in context.hook_state: the losses so far survive --resume
REPORT_PREVIEW_PER_CLASS = 3  # images per class printed after the report is written


def loss_statistics(loss_history: np.ndarray) -> dict[str, np.ndarray]:
    """Per image, the mean, max, min and (population) standard deviation of an (images, epochs) array of losses."""
    return {
        "mean_loss": loss_history.mean(axis=1),
        "max_loss": loss_history.max(axis=1),
        "min_loss": loss_history.min(axis=1),
        "std_loss": loss_history.std(axis=1),
    }


def class_thresholds(probabilities: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Confident learning's per-class threshold: the mean probability of class j over the images labelled j (its
    average self-confidence); NaN for a class without images, so no image is ever at or above it."""
    thresholds = np.full(num_classes, np.nan)
    for class_index in range(num_classes):
        mask = labels == class_index
        if mask.any():
            thresholds[class_index] = probabilities[mask, class_index].mean()
    return thresholds


def find_label_issues(
    probabilities: np.ndarray, labels: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(is_label_issue, other_class) per image: the confident-learning rule of cleanlab's find_label_issues.

    An image is a likely label issue when the probability of its given label is below that class's threshold while
    another class is at or above its own threshold; other_class is the most probable such class (-1 when none).
    """
    rows = np.arange(len(labels))
    with np.errstate(invalid="ignore"):  # NaN thresholds of empty classes compare False
        above = probabilities >= thresholds[None, :]
        below_own = probabilities[rows, labels] < thresholds[labels]
    above[rows, labels] = False
    has_other = above.any(axis=1)
    other_class = np.where(has_other, np.where(above, probabilities, -1.0).argmax(axis=1), -1)
    return below_own & has_other, other_class


def assign_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold index per image, stratified (each class spread evenly over the folds), the same for the same seed."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    position = 0
    for class_index in np.unique(labels):
        members = np.flatnonzero(labels == class_index)
        rng.shuffle(members)
        fold_of[members] = (np.arange(len(members)) + position) % folds
        position += len(members)  # the next class starts where this one stopped, so the fold sizes stay balanced
    return fold_of


def build_problematic_report(
    *,
    relative_paths: Sequence[str],
    labels: np.ndarray,
    classes: Sequence[str],
    loss_history: np.ndarray,
    probabilities: np.ndarray,
    top_n: int,
    method: str,
    arguments: dict[str, Any],
    dataset_dir: str,
    folds: np.ndarray | None = None,
    errors: Sequence[str] = (),
) -> dict[str, Any]:
    """The problematic-images report (schema 1) in plain types.

    ``loss_history`` is (images, analysis epochs); ``probabilities`` (images, classes) is from the last analysis epoch
    or out of fold. Within a class images are ranked by mean loss, highest first (ties by path); the report keeps the
    top ``top_n`` plus every other image the confident-learning rule flags, so no likely label issue is left out.
    ``folds``: the fold that scored each image (cross-validation), written per entry.
    """
    stats = loss_statistics(loss_history)
    thresholds = class_thresholds(probabilities, labels, len(classes))
    is_issue, issue_class = find_label_issues(probabilities, labels, thresholds)
    rows = np.arange(len(labels))
    others = probabilities.copy()
    others[rows, labels] = -np.inf
    suggested, predicted = others.argmax(axis=1), probabilities.argmax(axis=1)

    def entry(index: int, rank: int) -> dict[str, Any]:
        own = int(labels[index])
        item = {
            "rank": rank,
            "path": relative_paths[index],
            "class": classes[own],
            **{key: float(values[index]) for key, values in stats.items()},
            "losses": [float(value) for value in loss_history[index]],
            "predicted_class": classes[int(predicted[index])],
            "given_label_probability": float(probabilities[index, own]),
            "suggested_class": classes[int(suggested[index])] if len(classes) > 1 else None,
            "probabilities": {name: float(probabilities[index, j]) for j, name in enumerate(classes)},
            "is_label_issue": bool(is_issue[index]),
            "label_issue_reason": None,
        }
        if is_issue[index]:
            other = int(issue_class[index])
            item["label_issue_reason"] = (
                f"p({classes[own]})={probabilities[index, own]:.2f} < {classes[own]} threshold {thresholds[own]:.2f} "
                f"while p({classes[other]})={probabilities[index, other]:.2f} >= {classes[other]} threshold "
                f"{thresholds[other]:.2f}"
            )
        if folds is not None:
            item["fold"] = int(folds[index])
        return item

    problematic: dict[str, list[dict[str, Any]]] = {}
    summary: dict[str, dict[str, Any]] = {}
    for class_index, class_name in enumerate(classes):
        members = sorted(
            np.flatnonzero(labels == class_index).tolist(), key=lambda i: (-stats["mean_loss"][i], relative_paths[i])
        )
        problematic[class_name] = [
            entry(index, rank) for rank, index in enumerate(members, start=1) if rank <= top_n or is_issue[index]
        ]
        means = stats["mean_loss"][members]
        summary[class_name] = {
            "count": len(members),
            "reported": len(problematic[class_name]),
            "label_issues": int(is_issue[members].sum()),
            "highest_mean_loss": float(means.max()) if members else None,
            "lowest_mean_loss": float(means.min()) if members else None,
            "average_mean_loss": float(means.mean()) if members else None,
        }
    return {
        "schema_version": PROBLEMATIC_REPORT_SCHEMA_VERSION,
        "report_type": "problematic_images",
        "created": now_iso(),
        "dataset_dir": dataset_dir,
        "arguments": arguments,
        "classes": list(classes),
        "analysis_epochs": int(loss_history.shape[1]),
        "method": method,
        "cross_val_folds": int(folds.max()) + 1 if folds is not None and len(folds) else None,
        "num_images": len(labels),
        "class_thresholds": {name: None if np.isnan(t) else float(t) for name, t in zip(classes, thresholds)},
        "summary_by_class": summary,
        "problematic_images": problematic,
        "errors": list(errors),
    }


def problematic_report_path(args: argparse.Namespace) -> Path:
    return (
        Path(args.problematic_report) if args.problematic_report else Path(args.dataset_dir) / PROBLEMATIC_REPORT_NAME
    )


def write_problematic_report(
    context: TrainingContext,
    loss_history: np.ndarray,
    probabilities: np.ndarray,
    method: str,
    folds: np.ndarray | None = None,
) -> Path:
    """Build the report from per-sample scores (NaN rows: not scored), write it atomically and print a summary.

    Rows follow context.train_dataset.samples; an image missing a score in any analysis epoch is left out (it failed
    to decode and is listed under errors).
    """
    args, samples = context.args, context.train_dataset.samples
    scored = np.flatnonzero(np.isfinite(loss_history).all(axis=1) & np.isfinite(probabilities).all(axis=1))
    report = build_problematic_report(
        relative_paths=[samples[i].relpath for i in scored],
        labels=np.array([samples[i].label for i in scored], dtype=np.int64),
        classes=context.classes,
        loss_history=loss_history[scored],
        probabilities=probabilities[scored],
        top_n=args.top_n_problematic,
        method=method,
        arguments=plain_arguments(args),
        dataset_dir=str(args.dataset_dir),
        folds=folds[scored] if folds is not None else None,
        errors=[f"{item['path']}: {item['reason']}" for item in context.skipped_files if item["split"] == "train"],
    )
    path = problematic_report_path(args)
    fileio.write_json(path, report)
    issues = {name: stats["label_issues"] for name, stats in report["summary_by_class"].items()}
    context.metadata["problematic_analysis"] = {
        "report": str(path),
        "method": method,
        "analysis_epochs": report["analysis_epochs"],
        "label_issues": issues,
    }
    print(
        f"\nProblematic-images report ({method.replace('_', ' ')}, {report['analysis_epochs']} analysis epoch(s), "
        f"{report['num_images']} train images): {path}"
    )
    print(f"{'class':<16}{'images':>7}{'label issues':>14}   highest mean losses")
    for name, stats in report["summary_by_class"].items():
        print(f"{name:<16}{stats['count']:>7}{stats['label_issues']:>14}")
        for item in report["problematic_images"][name][:REPORT_PREVIEW_PER_CLASS]:
            flag = f"  (likely label issue: {item['suggested_class']}?)" if item["is_label_issue"] else ""
            print(f"{'':<37}   {item['mean_loss']:.3f} {item['path']}{flag}")
    review = ["python review_problematic_images.py"]
    if path.resolve().parent != Path(args.dataset_dir).resolve():
        review += ["--report-path", str(path), "--dataset-dir", str(args.dataset_dir)]
    elif path != Path("dataset") / PROBLEMATIC_REPORT_NAME:
        review += ["--report-path", str(path)]
    print(f"Review them with: {' '.join(review)}")
    return path


class ProblematicImageTracker:
    """After-epoch hook of --detect-problematic (in sample).

    After each of the first --analysis-epochs epochs it runs the trainer's evaluation pass over the training images
    (no augmentation, eval mode), so each image gets exactly one loss per analysis epoch; after the last it writes
    the report and, with --stop-after-analysis, asks run_epochs to stop. The losses so far live in
    context.hook_state, so --resume continues an interrupted analysis.
    """

    def __init__(self, context: TrainingContext) -> None:
        self.dataset = context.train_images_eval_view()
        self.loader: DataLoader | None = context.eval_loader(self.dataset)
        self.relpaths = [sample.relpath for sample in self.dataset.samples]

    def __call__(self, context: TrainingContext, record: dict[str, Any], predictions: Predictions) -> bool:
        args = context.args
        state = context.hook_state.setdefault(
            ANALYSIS_STATE_KEY, {"relpaths": self.relpaths, "epochs": [], "losses": [], "report": None}
        )
        if state["report"] is not None or len(state["epochs"]) >= args.analysis_epochs:
            return False
        if state["epochs"] != list(range(1, record["epoch"])) or state["relpaths"] != self.relpaths:
            if not state.get("warned"):
                logger.warning(
                    "The per-image losses of the epochs before %d are missing (the dataset changed, or the run was "
                    "resumed from a checkpoint without them); no problematic-images report this run. Start a new run "
                    "with --detect-problematic.",
                    record["epoch"],
                )
                state["warned"] = True
            return False
        scores = evaluate_dataset(context.model, self.loader, context, f"epoch {record['epoch']} scoring train images")
        record_failures(context, context.train_dataset, "train", scores.failures)
        losses = torch.full((len(self.relpaths),), float("nan"), dtype=torch.float64)
        losses[scores.indices] = scores.losses.double()
        state["losses"].append(losses)
        state["epochs"].append(record["epoch"])
        if len(state["epochs"]) < args.analysis_epochs:
            return False
        probabilities = np.full((len(self.relpaths), len(context.classes)), np.nan)
        probabilities[scores.indices.numpy()] = scores.probabilities()
        history = torch.stack(state["losses"], dim=1).numpy()
        state["report"] = str(write_problematic_report(context, history, probabilities, "in_sample"))
        self.loader = None  # its worker processes are not needed for the rest of the training
        if args.stop_after_analysis:
            print(f"Stopping after the {args.analysis_epochs} analysis epoch(s) (--stop-after-analysis).")
        return bool(args.stop_after_analysis)


def cross_validation_scores(context: TrainingContext, folds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold (losses per analysis epoch, last-epoch probabilities, fold) per training sample; NaN when unscored.

    The usable training images are split into ``folds`` stratified folds; for each, a fresh model (same arch,
    weights, freezing, optimizer and schedule as the main run) trains on the other folds for --analysis-epochs epochs
    with the trainer's own train_one_epoch, and evaluate_dataset scores the held-out fold after every epoch. The
    global RNG states are restored afterwards, so the main training that may follow is unchanged.
    """
    args, train = context.args, context.train_dataset
    num_samples, num_classes, epochs = len(train.samples), len(context.classes), args.analysis_epochs
    usable = np.array([i for i in range(num_samples) if i not in train.excluded], dtype=np.int64)
    fold_of = np.full(num_samples, -1, dtype=np.int64)
    fold_of[usable] = assign_folds(np.array([train.samples[i].label for i in usable]), folds, args.seed)
    losses = np.full((num_samples, epochs), np.nan)
    probabilities = np.full((num_samples, num_classes), np.nan)
    saved_rng = rng_states()
    for fold in range(folds):
        held_out = set(np.flatnonzero(fold_of == fold).tolist())
        fold_train = ImageDataset(
            train.samples, "train", train.image_size, train.resize_size, train.prepared, train.policies
        )
        fold_train.excluded = set(train.excluded) | held_out
        fold_eval = ImageDataset(train.samples, "eval", train.image_size, train.resize_size, train.prepared)
        fold_eval.excluded = set(range(num_samples)) - held_out
        torch.manual_seed(epoch_seed(args.seed, fold + 1))
        model = classifier.build_model(args.arch, num_classes, weights=args.weights)
        freeze_blocks(model, context.frozen)
        model = model.to(context.device)
        if context.channels_last:
            model = model.to(memory_format=torch.channels_last)
        sampler = EpochSampler(fold_train, num_classes, not args.no_weighted_sampling, epoch_seed(args.seed, fold + 1))
        drop_last = len(train.samples) - len(fold_train.excluded) > args.batch_size
        fold_context = dataclasses.replace(
            context,
            model=model,
            train_dataset=fold_train,
            train_loader=make_loader(
                fold_train, sampler, args.batch_size, context.num_workers, context.device, drop_last
            ),
            history=[],
            hook_state={},
        )
        optimizer = build_optimizer(model, args)
        steps_per_epoch = max(1, len(fold_context.train_loader))
        total_steps = steps_per_epoch * args.epochs  # the main run's schedule, so fold epochs match its first epochs
        warmup_steps = min(total_steps, steps_per_epoch * args.warmup_epochs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step, warmup=warmup_steps, total=total_steps: learning_rate_factor(step, warmup, total)
        )
        scaler = torch.amp.GradScaler(context.device.type, enabled=context.amp_dtype == torch.float16)
        eval_loader = context.eval_loader(fold_eval)
        for epoch in range(epochs):
            stats = train_one_epoch(fold_context, optimizer, scheduler, scaler, epoch)
            record_failures(context, train, "train", stats["failures"])
            scores = evaluate_dataset(model, eval_loader, fold_context, f"fold {fold + 1}/{folds} epoch {epoch + 1}")
            record_failures(context, train, "train", scores.failures)
            losses[scores.indices.numpy(), epoch] = scores.losses.double().numpy()
            if epoch == epochs - 1:
                probabilities[scores.indices.numpy()] = scores.probabilities()
        print(
            f"fold {fold + 1}/{folds}: trained {epochs} epoch(s) on {num_samples - len(fold_train.excluded)} images, "
            f"scored {len(held_out)} held-out images"
        )
        del model, optimizer, fold_context
    restore_rng_states(saved_rng)
    return losses, probabilities, fold_of


def check_problematic_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """parser.error (exit 2) for --detect-problematic settings no run can use."""
    if not args.detect_problematic:
        for flag, value in (
            ("--stop-after-analysis", args.stop_after_analysis),
            ("--cross-val-folds", args.cross_val_folds),
        ):
            if value:
                parser.error(f"{flag} only works with --detect-problematic")
        return
    for name, minimum in (("analysis_epochs", 1), ("top_n_problematic", 1)):
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be at least {minimum}, got {getattr(args, name)}")
    if args.cross_val_folds is not None and args.cross_val_folds < 2:
        parser.error(f"--cross-val-folds must be at least 2, got {args.cross_val_folds}")
    if args.cross_val_folds is None and args.epochs < args.analysis_epochs:
        parser.error(
            f"--analysis-epochs {args.analysis_epochs} needs --epochs of at least {args.analysis_epochs}: the analysis "
            "scores the images during the first epochs of training"
        )
    if args.cross_val_folds is None and args.patience and args.patience + 1 < args.analysis_epochs:
        parser.error(
            f"--patience {args.patience} could stop training before the {args.analysis_epochs} analysis epochs; "
            f"use --patience 0 or at least {args.analysis_epochs - 1}"
        )


# Problematic-image analysis (--detect-problematic): END
# ================================================================================================================


# ----------------------------------------------------------------------------------------------------------------
# Command line


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fine-tune a ResNet on dataset/train/<class>/ with weighted sampling, class-specific "
        "augmentation, per-epoch metrics and error analysis, then calibrate it.",
        add_help=add_help,
    )
    parser.add_argument(
        "--dataset-dir", default="dataset", help="folder with train/<class>/ and val/<class>/ (default: dataset)"
    )
    parser.add_argument("--output-dir", default="models", help="where models, metadata and plots go (default: models)")
    parser.add_argument("--epochs", type=int, default=15, help="number of epochs (default: 15)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per training step (default: 32)")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="peak AdamW learning rate (default: 0.0001)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    parser.add_argument(
        "--warmup-epochs", type=int, default=1, help="linear warm-up epochs before the cosine decay (default: 1)"
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=5,
        help="stop after this many epochs without a better val macro F1; 0 never stops early (default: 5)",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=classifier.DEFAULT_CONFIDENCE_THRESHOLD,
        help="stored in the checkpoint: predictions below it become 'other' (default: 0.7)",
    )
    parser.add_argument(
        "--freeze-until",
        choices=FREEZE_CHOICES,
        default="layer3",
        help="freeze the stem and every stage up to this one; 'none' trains everything (default: layer3)",
    )
    parser.add_argument(
        "--arch", choices=classifier.SUPPORTED_ARCHS, default=classifier.DEFAULT_ARCH, help="ResNet (default: resnet50)"
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="starting weights: imagenet (torchvision, downloaded once), none (random), or a local file "
        "(default: imagenet)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=classifier.DEFAULT_IMAGE_SIZE,
        help="model input size in pixels (default: 224)",
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="data loader processes (default: up to 8 with a GPU, 0 on a CPU with 4 cores or fewer)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda, then mps, then cpu)")
    parser.add_argument(
        "--seed", type=int, default=42, help="seed for initialisation, sampling and augmentation (default: 42)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from <output-dir>/last_checkpoint.pth with its settings; flags given now override them "
        "(default: off)",
    )
    parser.add_argument(
        "--no-weighted-sampling",
        action="store_true",
        help="draw images uniformly instead of balancing the classes (default: off, classes balanced)",
    )
    parser.add_argument(
        "--uniform-augmentation",
        action="store_true",
        help="give every class the same augmentation policy instead of the per-class table (default: off)",
    )
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision (bfloat16, or float16 with loss scaling) (default: on with CUDA, off elsewhere)",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format, faster convolutions on GPUs and recent CPUs (default: on)",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="also keep the downsized copies of the images here, reused by later runs (default: none, memory only)",
    )
    parser.add_argument(
        "--cache-max-gb",
        type=float,
        default=DEFAULT_CACHE_MAX_GB,
        help="memory for downsized copies of the images; 0 decodes every file every epoch (default: 4.0)",
    )
    analysis = parser.add_argument_group("problematic images (see review_problematic_images.py)")
    analysis.add_argument(
        "--detect-problematic",
        action="store_true",
        help="score every training image in the first --analysis-epochs epochs and write a report of the hardest and "
        "likely mislabeled ones (default: off)",
    )
    analysis.add_argument(
        "--analysis-epochs", type=int, default=3, help="epochs whose per-image losses are recorded (default: 3)"
    )
    analysis.add_argument(
        "--top-n-problematic",
        type=int,
        default=50,
        help="images per class kept in the report, by mean loss; likely label issues are always kept (default: 50)",
    )
    analysis.add_argument(
        "--stop-after-analysis",
        action="store_true",
        help=f"stop once the report is written; the short run's model goes to <output-dir>/{ANALYSIS_OUTPUT_SUBDIR}/ "
        "(default: off, training continues to --epochs)",
    )
    analysis.add_argument(
        "--cross-val-folds",
        type=int,
        default=None,
        metavar="K",
        help="score each image out of sample: K models each train --analysis-epochs epochs on K-1 folds and score "
        "the fold they never saw, before the main training; costs about K-1 times the analysis epochs of training "
        "(default: off, in-sample scores from the main run)",
    )
    analysis.add_argument(
        "--problematic-report",
        default=None,
        metavar="PATH",
        help=f"where the report goes (default: <dataset-dir>/{PROBLEMATIC_REPORT_NAME})",
    )
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """parser.error (exit 2) for values no run can use."""
    for name, minimum in (("epochs", 1), ("batch_size", 1), ("image_size", 32), ("warmup_epochs", 0), ("patience", 0)):
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be at least {minimum}, got {getattr(args, name)}")
    if not args.learning_rate > 0:
        parser.error(f"--learning-rate must be positive, got {args.learning_rate}")
    if args.weight_decay < 0:
        parser.error(f"--weight-decay must not be negative, got {args.weight_decay}")
    if not 0.0 <= args.confidence_threshold <= 1.0:
        parser.error(f"--confidence-threshold must be between 0 and 1, got {args.confidence_threshold}")
    if args.num_workers is not None and args.num_workers < 0:
        parser.error(f"--num-workers must not be negative, got {args.num_workers}")
    if args.cache_max_gb < 0:
        parser.error(f"--cache-max-gb must not be negative, got {args.cache_max_gb}")
    try:
        classifier.pick_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}")
    check_problematic_arguments(parser, args)


def load_resume_checkpoint(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, args: argparse.Namespace
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The last checkpoint and the run's settings: those stored in it, overridden by the flags given now."""
    path = Path(args.output_dir) / LAST_CHECKPOINT_NAME
    if not path.is_file():
        raise DatasetError(f"There is no {path} to resume from; run without --resume to start training.")
    checkpoint = classifier.load_checkpoint(path)
    stored = dict(checkpoint.get("arguments") or {})
    # argparse sets a default only for attributes missing from the namespace, so the stored settings survive unless
    # a flag is given on this command line; flags added since the checkpoint was written get their defaults.
    merged = parser.parse_args(argv, namespace=argparse.Namespace(**stored))
    merged.output_dir = args.output_dir
    merged.resume = True
    for name, key in (("arch", "arch"), ("image_size", "image_size")):
        if getattr(merged, name) != checkpoint[key]:
            raise DatasetError(
                f"The checkpoint in {path} was trained with --{name.replace('_', '-')} {checkpoint[key]}, not "
                f"{getattr(merged, name)}; resume with the same setting or train from scratch."
            )
    return merged, checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    check_arguments(parser, args)
    if args.detect_problematic and args.stop_after_analysis:  # a 3-epoch model must never replace a trained one
        args.output_dir = str(Path(args.output_dir) / ANALYSIS_OUTPUT_SUBDIR)
    context = None
    try:
        resume = None
        if args.resume:
            args, resume = load_resume_checkpoint(parser, argv, args)
            check_arguments(parser, args)
        context = setup_training(args, resume)
        context.metadata["skipped_files"] = context.skipped_files
        print_setup(context.metadata, METADATA_NAME)
        hooks: list[AfterEpochHook] = []
        if args.detect_problematic and args.cross_val_folds:
            if resume is None:  # a resumed run did its cross-validation before its first epoch
                losses, probabilities, folds = cross_validation_scores(context, args.cross_val_folds)
                write_problematic_report(context, losses, probabilities, "cross_validation", folds)
            if args.stop_after_analysis:
                return 1 if context.skipped_files else 0
        elif args.detect_problematic:
            hooks.append(ProblematicImageTracker(context))
        run_epochs(context, resume, hooks)
        calibrate_best_model(context)
        write_metadata(context, "completed")
        print_summary(context.metadata, context.output_dir / BEST_MODEL_NAME, context.output_dir / METADATA_NAME)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except classifier.CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except classifier.WeightsUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if context is not None and context.history:
            write_metadata(context, "interrupted")
        done = len(context.history) if context is not None else 0
        print(
            f"\nInterrupted after {done} finished epoch(s); {args.output_dir}/{BEST_MODEL_NAME} and "
            f"{METADATA_NAME} are intact. Run again with --resume to continue.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 1 if context.skipped_files else 0


if __name__ == "__main__":
    raise SystemExit(main())
