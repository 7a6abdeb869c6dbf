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
import hashlib
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler
from tqdm import tqdm

import classifier

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # of training_metadata.json and the error-analysis files
BEST_MODEL_NAME = "best_model.pth"
LAST_CHECKPOINT_NAME = "last_checkpoint.pth"
METADATA_NAME = "training_metadata.json"
FREEZE_CHOICES = ("layer1", "layer2", "layer3", "none")  # freeze the stem and every stage up to this one
BACKBONE_BLOCKS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")  # ResNet stem and stages, input first
ERRORS_PER_CLASS = 10  # most confident mistakes kept per true class and epoch
THRESHOLDS = tuple(round(0.50 + 0.05 * i, 2) for i in range(10))  # 0.50 ... 0.95, the confidence thresholds tried
ECE_BINS = 15  # the usual number of equal-width confidence bins for the expected calibration error
TEMPERATURE_RANGE = (0.25, 20.0)  # searched temperatures; a perfectly separated val set would push T towards 0
GOLDEN_SECTION_STEPS = 80  # shrinks the temperature search interval by 0.618**80, far below float precision
CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratios of random crops, torchvision's RandomResizedCrop default
TRAINING_COPY_MAX_ASPECT = 2.0  # cached training copies keep at most a 2:1 centre band of a panorama
ROTATION_FILL = (124, 116, 104)  # ImageNet mean colour: corners uncovered by a rotation normalise to about zero
DEFAULT_CACHE_MAX_GB = 4.0  # downsized copies kept in memory; a 4:3 photo at 224 px takes 0.26 MB
PREPARE_THREADS = max(1, min(8, os.cpu_count() or 1))  # Pillow releases the GIL while decoding and resizing
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
CONTACT_TILE = 128  # pixels per thumbnail in the error-analysis contact sheets


@dataclasses.dataclass(frozen=True)
class AugmentationPolicy:
    """What random changes a training image of one class may get (probabilities, degrees, +/- factors)."""

    horizontal_flip: float
    vertical_flip: float
    rotation_degrees: float
    crop_scale: tuple[float, float]  # share of the image area a random crop keeps
    brightness: float
    contrast: float
    saturation: float
    grayscale: float


# The one table of class-specific augmentation. Birds and planes never fly upside down, so they are never flipped
# vertically; Superman strikes comic poses at any angle; "other" is anything, so it gets the full suite. A class name
# not in the table gets DEFAULT_AUGMENTATION. Flipping only some classes can teach the model that "upside down means
# superman or other": --uniform-augmentation gives every class DEFAULT_AUGMENTATION instead.
DEFAULT_AUGMENTATION = AugmentationPolicy(0.5, 0.0, 10.0, (0.5, 1.0), 0.2, 0.2, 0.2, 0.05)
AUGMENTATION_TABLE: dict[str, AugmentationPolicy] = {
    "bird": AugmentationPolicy(0.5, 0.0, 15.0, (0.5, 1.0), 0.3, 0.3, 0.3, 0.05),
    "plane": AugmentationPolicy(0.5, 0.0, 10.0, (0.5, 1.0), 0.3, 0.3, 0.2, 0.05),
    "superman": AugmentationPolicy(0.5, 0.2, 25.0, (0.4, 1.0), 0.3, 0.3, 0.3, 0.05),
    "other": AugmentationPolicy(0.5, 0.5, 30.0, (0.3, 1.0), 0.4, 0.4, 0.4, 0.1),
}


class DatasetError(ValueError):
    """The dataset cannot be trained on as it is; the message is one sentence saying why and what to do."""


class Sample(NamedTuple):
    """One image of the dataset: where it is, its class index, and its path relative to the dataset folder."""

    path: Path
    label: int
    relpath: str


class LoadedSample(NamedTuple):
    pixels: np.ndarray  # HWC uint8, image_size square
    label: int
    index: int


class FailedSample(NamedTuple):
    index: int
    reason: str


# ----------------------------------------------------------------------------------------------------------------
# Pure functions: classes, sampling, augmentation


def compare_class_sets(train_classes: Sequence[str], val_classes: Sequence[str]) -> str | None:
    """One sentence naming how val's class folders differ from train's, or None when they match."""
    missing = sorted(set(train_classes) - set(val_classes))
    extra = sorted(set(val_classes) - set(train_classes))
    parts = []
    if missing:
        parts.append(f"val/ lacks the class folder(s) {', '.join(missing)} that train/ has")
    if extra:
        parts.append(f"val/ has the class folder(s) {', '.join(extra)} that train/ lacks")
    if not parts:
        return None
    return "The class folders differ: " + "; ".join(parts) + "; give val/ exactly the class folders of train/."


def class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(int).tolist()


def inverse_frequency_weights(labels: Sequence[int], num_classes: int) -> tuple[list[float], list[float]]:
    """(per-class weight 1/count, per-sample weight): sampling by these gives every class the same expected share."""
    counts = class_counts(labels, num_classes)
    class_weights = [1.0 / count if count else 0.0 for count in counts]
    return class_weights, [class_weights[label] for label in labels]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything random in one epoch: an epoch replays exactly, whether resumed or not."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**63 - 1)


def draw_epoch(
    labels: Sequence[int],
    num_classes: int,
    is_weighted: bool,
    seed: int,
    epoch: int,
    excluded: frozenset[int] = frozenset(),
) -> list[tuple[int, int]]:
    """The (sample index, augmentation seed) pairs of one epoch, as many as there are usable samples.

    Weighted: a WeightedRandomSampler with inverse class frequency (with replacement), so the classes come about
    equally often. Otherwise a random permutation. Excluded indices (images that failed to decode) never come.
    """
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    usable = [i for i in range(len(labels)) if i not in excluded]
    if not usable:
        return []
    if is_weighted:
        _, weights = inverse_frequency_weights([labels[i] for i in usable], num_classes)
        picks = list(WeightedRandomSampler(weights, len(usable), replacement=True, generator=generator))
        indices = [usable[p] for p in picks]
    else:
        indices = [usable[p] for p in torch.randperm(len(usable), generator=generator).tolist()]
    augmentation_seeds = torch.randint(0, 2**62, (len(indices),), generator=generator).tolist()
    return list(zip(indices, augmentation_seeds))


def augmentation_policy_for(class_name: str, is_uniform: bool = False) -> AugmentationPolicy:
    """The table's row for the class, DEFAULT_AUGMENTATION for unknown names or with --uniform-augmentation."""
    return DEFAULT_AUGMENTATION if is_uniform else AUGMENTATION_TABLE.get(class_name, DEFAULT_AUGMENTATION)


def random_resized_crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A random box covering ``scale`` of the area with aspect ``ratio`` (torchvision's RandomResizedCrop rule)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = int(rng.integers(0, width - crop_w + 1))
            top = int(rng.integers(0, height - crop_h + 1))
            return left, top, left + crop_w, top + crop_h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        crop_w, crop_h = int(round(height * ratio[1])), height
    else:
        crop_w, crop_h = width, height
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + max(1, crop_w), top + max(1, crop_h)


def augment_image(
    pixels: np.ndarray, policy: AugmentationPolicy, image_size: int, rng: np.random.Generator
) -> np.ndarray:
    """A random ``image_size`` square view (HWC uint8) of an HWC uint8 image, following ``policy``.

    Crop, rotation and flips are one affine resampling (a single pass over the output pixels), then the colours
    change in one more pass: each image costs a few milliseconds from the cached copy.
    """
    height, width = pixels.shape[:2]
    left, top, right, bottom = random_resized_crop_box(width, height, policy.crop_scale, CROP_RATIO, rng)
    angle = math.radians(rng.uniform(-policy.rotation_degrees, policy.rotation_degrees))
    scale_x = (right - left) / image_size * (-1.0 if rng.random() < policy.horizontal_flip else 1.0)
    scale_y = (bottom - top) / image_size * (-1.0 if rng.random() < policy.vertical_flip else 1.0)
    # Output pixel (u, v) samples the input at centre + rotation @ (scale * ((u, v) - half)).
    a, b = math.cos(angle) * scale_x, -math.sin(angle) * scale_y
    d, e = math.sin(angle) * scale_x, math.cos(angle) * scale_y
    half = image_size / 2
    c = (left + right) / 2 - (a + b) * half
    f = (top + bottom) / 2 - (d + e) * half
    image = Image.fromarray(pixels).transform(
        (image_size, image_size),
        Image.Transform.AFFINE,
        (a, b, c, d, e, f),
        resample=Image.Resampling.BILINEAR,
        fillcolor=ROTATION_FILL,
    )
    brightness = rng.uniform(1 - policy.brightness, 1 + policy.brightness)
    contrast = rng.uniform(1 - policy.contrast, 1 + policy.contrast)
    saturation = 0.0 if rng.random() < policy.grayscale else rng.uniform(1 - policy.saturation, 1 + policy.saturation)
    return np.asarray(jitter_colors(image, brightness, contrast, saturation), dtype=np.uint8)


def jitter_colors(image: Image.Image, brightness: float, contrast: float, saturation: float) -> Image.Image:
    """Colour changes by factors (1 = unchanged; saturation 0 = grey), as torchvision's ColorJitter in fixed order.

    Saturation blends with the grey image; brightness and contrast are then one lookup table, as both are affine in
    the pixel value (contrast pulls towards the mean grey). Only the clipping between the steps is left out.
    """
    gray = image.convert("L")
    if saturation != 1.0:
        image = Image.blend(gray.convert("RGB"), image, saturation)
    mean_gray = float(np.asarray(gray).mean())
    values = np.arange(256) * (brightness * contrast) + (1 - contrast) * brightness * mean_gray
    table = np.clip(np.rint(values), 0, 255).astype(np.uint8).tolist()
    return image.point(table * 3)


def training_copy_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centre band of the image kept in the training copy: all of it unless it is wider than 2:1 (or taller)."""
    if width > TRAINING_COPY_MAX_ASPECT * height:
        band = int(math.ceil(TRAINING_COPY_MAX_ASPECT * height))
        left = (width - band) // 2
        return left, 0, left + band, height
    if height > TRAINING_COPY_MAX_ASPECT * width:
        band = int(math.ceil(TRAINING_COPY_MAX_ASPECT * width))
        top = (height - band) // 2
        return 0, top, width, top + band
    return 0, 0, width, height


def training_copy_size(box_width: int, box_height: int, resize_size: int) -> tuple[int, int]:
    """Size of the training copy: the shorter side becomes ``resize_size``, the aspect ratio is kept."""
    scale = resize_size / min(box_width, box_height)
    return max(resize_size, int(round(box_width * scale))), max(resize_size, int(round(box_height * scale)))


# ----------------------------------------------------------------------------------------------------------------
# Pure functions: metrics, calibration, thresholds, schedule


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def classification_metrics(matrix: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and macro F1 over the classes present (support > 0)."""
    matrix = np.asarray(matrix, dtype=np.int64)
    true_positive = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    per_class: dict[str, dict[str, float | int]] = {}
    f1_present = []
    for i, name in enumerate(classes):
        precision = true_positive[i] / predicted[i] if predicted[i] else 0.0
        recall = true_positive[i] / support[i] if support[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(support[i]),
        }
        if support[i]:
            f1_present.append(f1)
    total = int(matrix.sum())
    return {
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "macro_f1": float(np.mean(f1_present)) if f1_present else 0.0,
        "per_class": per_class,
    }


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits.float() / temperature, labels.long()).item()) if len(labels) else 0.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the NLL of softmax(logits / T).

    The NLL is convex in 1/T, so a golden-section search over 1/T finds the optimum exactly. T is kept within
    TEMPERATURE_RANGE: with no mistakes on val the NLL keeps falling as T shrinks, and a tiny T would make the
    classifier absurdly sure of itself.
    """
    if len(labels) == 0:
        return 1.0
    logits, labels = logits.float(), labels.long()
    low, high = 1.0 / TEMPERATURE_RANGE[1], 1.0 / TEMPERATURE_RANGE[0]
    golden = (math.sqrt(5) - 1) / 2

    def nll(inverse_temperature: float) -> float:
        return float(F.cross_entropy(logits * inverse_temperature, labels).item())

    a, b = low, high
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(GOLDEN_SECTION_STEPS):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - golden * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + golden * (b - a)
            fd = nll(d)
    return float(1.0 / ((a + b) / 2))


def expected_calibration_error(probabilities: np.ndarray, labels: Sequence[int], bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of (share of images) x |accuracy - mean confidence|."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    bin_index = np.minimum((confidence * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        members = bin_index == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def threshold_table(
    probabilities: np.ndarray, labels: Sequence[int], classes: Sequence[str], thresholds: Sequence[float] = THRESHOLDS
) -> list[dict[str, Any]]:
    """Per threshold: accuracy when predictions below it become FALLBACK_LABEL, and the share sent there.

    Without a FALLBACK_LABEL class a rejected image counts as wrong. ``accepted_accuracy`` is the accuracy of the
    predictions that were kept.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    predicted = probabilities.argmax(axis=1) if len(labels) else np.zeros(0, dtype=int)
    confidence = probabilities.max(axis=1) if len(labels) else np.zeros(0)
    fallback = list(classes).index(classifier.FALLBACK_LABEL) if classifier.FALLBACK_LABEL in classes else -1
    rows = []
    for threshold in thresholds:
        rejected = confidence < threshold
        final = np.where(rejected, fallback, predicted)
        kept = ~rejected
        rows.append(
            {
                "threshold": float(threshold),
                "accuracy": float((final == labels).mean()) if len(labels) else 0.0,
                "sent_to_other": float(rejected.mean()) if len(labels) else 0.0,
                "accepted_accuracy": float((predicted[kept] == labels[kept]).mean()) if kept.any() else None,
            }
        )
    return rows


def recommend_threshold(table: Sequence[dict[str, Any]]) -> float:
    """The threshold with the best accuracy; ties go to the lowest (fewest images sent to "other")."""
    best = max(table, key=lambda row: (round(row["accuracy"], 9), -row["threshold"]))
    return float(best["threshold"])


def top_confident_mistakes(
    probabilities: np.ndarray,
    labels: Sequence[int],
    relpaths: Sequence[str],
    classes: Sequence[str],
    per_class: int = ERRORS_PER_CLASS,
) -> dict[str, list[dict[str, Any]]]:
    """For every true class, its ``per_class`` wrong predictions with the highest confidence, most confident first."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    mistakes: dict[str, list[dict[str, Any]]] = {name: [] for name in classes}
    for row, (label, relpath) in enumerate(zip(labels, relpaths)):
        predicted = int(probabilities[row].argmax())
        if predicted != int(label):
            mistakes[classes[int(label)]].append(
                {
                    "image_path": relpath,
                    "true_label": classes[int(label)],
                    "predicted_label": classes[predicted],
                    "confidence": float(probabilities[row, predicted]),
                    "all_probabilities": {c: float(p) for c, p in zip(classes, probabilities[row])},
                }
            )
    for name in classes:
        mistakes[name].sort(key=lambda item: (-item["confidence"], item["image_path"]))
        del mistakes[name][per_class:]
    return mistakes


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


def history_for_comparison(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Epoch records without the timing fields, which differ between otherwise identical runs."""
    return [{k: v for k, v in record.items() if k not in ("seconds", "images_per_second")} for record in history]


# ----------------------------------------------------------------------------------------------------------------
# Images on disk: scanning, decoding, caching


def discover_classes(split_dir: Path) -> list[str]:
    """The class folders of a split (sorted, hidden folders skipped)."""
    if not split_dir.is_dir():
        return []
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_image_header(path: Path) -> str | None:
    """A cheap check (header only, no decoding): None when the file looks usable, else the reason it is not."""
    try:
        classifier.open_image(path).close()
    except classifier.ImageLoadError as error:
        return str(error)
    return None


def scan_split(dataset_dir: Path, split: str, classes: Sequence[str]) -> tuple[list[Sample], list[dict[str, str]]]:
    """The image files of ``dataset_dir/split/<class>/`` (found by content) and the files there that are not images."""
    samples: list[Sample] = []
    skipped: list[dict[str, str]] = []
    for label, name in enumerate(classes):
        folder = dataset_dir / split / name
        images = classifier.find_image_files(folder)
        image_set = set(images)
        for path in images:
            samples.append(Sample(path, label, path.relative_to(dataset_dir).as_posix()))
        for directory, subdirs, names in os.walk(folder):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            for file_name in names:
                path = Path(directory) / file_name
                if not file_name.startswith(".") and path not in image_set:
                    reason = f"not an image: {classifier.describe_content(path)}"
                    skipped.append(skip_record(dataset_dir, path, split, reason))
    return samples, skipped


def skip_record(dataset_dir: Path, path: Path, split: str, reason: str) -> dict[str, str]:
    return {"path": path.relative_to(dataset_dir).as_posix(), "split": split, "reason": reason}


def decode_training_copy(path: Path, resize_size: int) -> np.ndarray:
    """HWC uint8: the image with its shorter side at ``resize_size`` (what random crops are cut from)."""
    image = classifier.load_image(path, draft_size=(resize_size, resize_size))
    box = training_copy_box(image.width, image.height)
    size = training_copy_size(box[2] - box[0], box[3] - box[1], resize_size)
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR, box=box), dtype=np.uint8)


def decode_eval_view(path: Path, image_size: int, resize_size: int) -> np.ndarray:
    """HWC uint8: exactly the model input classifier.py makes of the file, before normalisation."""
    image = classifier.load_image(path, draft_size=(resize_size, resize_size))
    return classifier.image_to_uint8(image, image_size, resize_size)


def decode_view(path: Path, view: str, image_size: int, resize_size: int) -> np.ndarray:
    if view == "train":
        return decode_training_copy(path, resize_size)
    return decode_eval_view(path, image_size, resize_size)


def disk_cache_path(cache_dir: Path, path: Path, view: str, image_size: int, resize_size: int) -> Path:
    """Where the cached copy of one file lives; the name changes when the file or the sizes change."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{view}|{image_size}|{resize_size}"
    return cache_dir / f"{hashlib.sha1(key.encode('utf-8')).hexdigest()}.npy"


def save_array_atomically(path: Path, array: np.ndarray) -> None:
    with classifier.atomic_file(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


@dataclasses.dataclass
class PreparedImages:
    """Per sample: the cached copy in memory (ndarray), on disk (Path) or not cached (None), for one view."""

    view: str
    entries: list[np.ndarray | Path | None]
    memory_bytes: int = 0


def prepare_images(
    samples: Sequence[Sample],
    view: str,
    image_size: int,
    resize_size: int,
    memory_budget_bytes: int,
    cache_dir: Path | None,
    description: str,
) -> tuple[PreparedImages, list[tuple[int, str]]]:
    """Check every file once before training and keep downsized copies, so later epochs skip JPEG decoding.

    With a memory budget or a cache folder each file is decoded (draft mode: only at the size needed) and resized
    once; without either, only the header is checked and bad data shows up when the file is read in an epoch.
    Returns the cache and the (index, reason) of every file that cannot be used.
    """
    is_decoding = memory_budget_bytes > 0 or cache_dir is not None
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)

    def prepare(sample: Sample) -> tuple[np.ndarray | Path | None, str | None]:
        try:
            if not is_decoding:
                return None, check_image_header(sample.path)
            cached = disk_cache_path(cache_dir, sample.path, view, image_size, resize_size) if cache_dir else None
            if cached is not None and cached.is_file():
                return (np.load(cached, allow_pickle=False) if memory_budget_bytes > 0 else cached), None
            pixels = decode_view(sample.path, view, image_size, resize_size)
            if cached is not None:
                save_array_atomically(cached, pixels)
            return pixels, None
        except classifier.ImageLoadError as error:
            return None, str(error)
        except Exception as error:  # noqa: BLE001 - one bad file must never stop the run
            return None, f"{type(error).__name__}: {error}"

    prepared = PreparedImages(view, [None] * len(samples))
    failures: list[tuple[int, str]] = []
    with ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="prepare") as pool:
        results = pool.map(prepare, samples)
        for index, (entry, reason) in enumerate(
            tqdm(results, total=len(samples), desc=description, leave=False, file=sys.stderr, disable=None)
        ):
            if reason is not None:
                failures.append((index, reason))
            elif isinstance(entry, np.ndarray):
                if prepared.memory_bytes + entry.nbytes <= memory_budget_bytes:
                    prepared.entries[index] = entry
                    prepared.memory_bytes += entry.nbytes
                elif cache_dir is not None:
                    prepared.entries[index] = disk_cache_path(
                        cache_dir, samples[index].path, view, image_size, resize_size
                    )
            else:
                prepared.entries[index] = entry
    return prepared, failures


_LOADER_THREADS: tuple[int, ThreadPoolExecutor] | None = None


def loader_threads() -> ThreadPoolExecutor:
    """This process's pool for loading batches; a loader worker forked from a process with a pool makes its own."""
    global _LOADER_THREADS
    if _LOADER_THREADS is None or _LOADER_THREADS[0] != os.getpid():
        _LOADER_THREADS = (os.getpid(), ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="load"))
    return _LOADER_THREADS[1]


class ImageDataset(Dataset):
    """Images of one split as HWC uint8 squares: augmented (view "train") or as classifier.py sees them ("eval").

    Keys are a sample index (eval) or (index, augmentation seed) pairs from EpochSampler (train), so the random
    changes depend only on the seed, never on which worker process loads the image. An image that cannot be read
    comes back as a FailedSample, which ``collate_samples`` sets aside.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        view: str,
        image_size: int,
        resize_size: int,
        prepared: PreparedImages | None = None,
        policies: Sequence[AugmentationPolicy] | None = None,
    ) -> None:
        if view not in ("train", "eval"):
            raise ValueError(f"view must be 'train' or 'eval', got {view!r}")
        if prepared is not None and prepared.view == "eval" and view == "train":
            raise ValueError("training images cannot be cut from eval-view copies")
        if view == "train" and policies is None:
            raise ValueError("the train view needs one augmentation policy per class")
        self.samples = list(samples)
        self.view = view
        self.image_size = image_size
        self.resize_size = resize_size
        self.prepared = prepared
        self.policies = list(policies) if policies is not None else []
        self.excluded: set[int] = set()  # images that failed to decode; the samplers leave them out

    def __len__(self) -> int:
        return len(self.samples)

    def pixels(self, index: int) -> np.ndarray:
        """The image in this dataset's view, from the cache when there is a copy, else decoded from the file."""
        entry = self.prepared.entries[index] if self.prepared is not None else None
        if isinstance(entry, Path):
            entry = np.load(entry, allow_pickle=False)
        if entry is None:
            return decode_view(self.samples[index].path, self.view, self.image_size, self.resize_size)
        if self.view == "eval" and self.prepared.view == "train":
            # The training copy already has its shorter side at resize_size, so this is classifier.py's centre crop
            # (up to a half-pixel resampling difference) without decoding the file again.
            return classifier.image_to_uint8(Image.fromarray(entry), self.image_size, self.resize_size)
        return entry

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[LoadedSample | FailedSample]:
        """A batch (the DataLoader asks for whole batches), loaded in threads: Pillow releases the GIL while it
        resamples, so both cores work even with num_workers=0. Same order as ``keys``, and each image's random
        changes come from its own seed, so the result does not depend on the threads."""
        if len(keys) < 2:
            return [self[key] for key in keys]
        return list(loader_threads().map(self.__getitem__, keys))

    def __getitem__(self, key: int | tuple[int, int]) -> LoadedSample | FailedSample:
        index, augmentation_seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        try:
            pixels = self.pixels(index)
            if self.view == "train":
                rng = np.random.default_rng(augmentation_seed)
                pixels = augment_image(pixels, self.policies[sample.label], self.image_size, rng)
            return LoadedSample(pixels, sample.label, index)
        except classifier.ImageLoadError as error:
            return FailedSample(index, str(error))
        except Exception as error:  # noqa: BLE001 - a file that breaks mid-epoch is skipped, never a crash
            return FailedSample(index, f"{type(error).__name__}: {error}")


class EpochSampler(Sampler):
    """Yields the (index, augmentation seed) pairs of ``draw_epoch`` for the epoch set with ``set_epoch``."""

    def __init__(self, dataset: ImageDataset, num_classes: int, is_weighted: bool, seed: int) -> None:
        self.dataset = dataset
        self.labels = [sample.label for sample in dataset.samples]
        self.num_classes = num_classes
        self.is_weighted = is_weighted
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels) - len(self.dataset.excluded)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        excluded = frozenset(self.dataset.excluded)
        return iter(draw_epoch(self.labels, self.num_classes, self.is_weighted, self.seed, self.epoch, excluded))


class UsableIndices(Sampler):
    """Every index of the dataset in order, except the excluded ones (for evaluation)."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset) - len(self.dataset.excluded)

    def __iter__(self) -> Iterator[int]:
        return iter([i for i in range(len(self.dataset)) if i not in self.dataset.excluded])


def collate_samples(items: Sequence[LoadedSample | FailedSample]) -> dict[str, Any]:
    """Stack the images that loaded (NHWC uint8) and set the failures aside as (index, reason)."""
    loaded = [item for item in items if isinstance(item, LoadedSample)]
    failures = [(item.index, item.reason) for item in items if isinstance(item, FailedSample)]
    if loaded:
        images = torch.from_numpy(np.stack([item.pixels for item in loaded]))
    else:
        images = torch.zeros((0, 1, 1, 3), dtype=torch.uint8)
    return {
        "images": images,
        "labels": torch.tensor([item.label for item in loaded], dtype=torch.long),
        "indices": torch.tensor([item.index for item in loaded], dtype=torch.long),
        "failures": failures,
    }


def make_loader(
    dataset: ImageDataset, sampler: Sampler, batch_size: int, num_workers: int, device: torch.device, drop_last: bool
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_samples,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )


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


@dataclasses.dataclass
class Predictions:
    """Per-image results of ``evaluate_dataset``: rows follow ``indices`` (positions in the dataset's samples)."""

    logits: torch.Tensor  # (N, C) float32, CPU
    labels: torch.Tensor  # (N,)
    indices: torch.Tensor  # (N,)
    failures: list[tuple[int, str]]

    @property
    def losses(self) -> torch.Tensor:
        """Per-image cross-entropy loss."""
        return F.cross_entropy(self.logits, self.labels, reduction="none")

    def probabilities(self, temperature: float = 1.0) -> np.ndarray:
        return classifier.softmax_with_temperature(self.logits, temperature).numpy()

    def relpaths(self, dataset: ImageDataset) -> list[str]:
        return [dataset.samples[i].relpath for i in self.indices.tolist()]


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
    classifier.write_json_atomically(context.output_dir / METADATA_NAME, metadata)


def best_record(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    best = [record for record in history if record["is_best"]]
    return best[-1] if best else None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Loss, accuracy and macro F1 per epoch, train against val, as one PNG."""
    plt = _pyplot()
    epochs = [record["epoch"] for record in history]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (
        ("loss", [("train_loss", "train"), ("val_loss", "val")]),
        ("accuracy", [("train_accuracy", "train"), ("val_accuracy", "val")]),
        ("macro F1", [("macro_f1", "val")]),
    )
    for axis, (title, series) in zip(axes, panels):
        for key, label in series:
            axis.plot(epochs, [record[key] for record in history], marker="o", label=label)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
        axis.legend()
    best = best_record(history)
    if best:
        axes[2].axvline(best["epoch"], color="grey", linestyle="--", linewidth=1)
    figure.subplots_adjust(left=0.05, right=0.98, bottom=0.14, top=0.9, wspace=0.25)
    save_figure(figure, path)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str, path: Path) -> None:
    plt = _pyplot()
    matrix = np.asarray(matrix)
    size = 1.2 + 0.9 * len(classes)
    figure, axis = plt.subplots(figsize=(size + 1.5, size))
    row_share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = axis.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            colour = "white" if row_share[i, j] > 0.5 else "black"
            axis.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=colour)
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, label="share of the true class")
    figure.tight_layout()
    save_figure(figure, path)


def write_contact_sheet(
    mistakes: dict[str, list[dict[str, Any]]], dataset: ImageDataset, title: str, path: Path
) -> None:
    """One row of thumbnails per true class: its most confident mistakes, captioned with prediction and confidence.

    Composed with Pillow rather than matplotlib: the thumbnails stay pixel-exact and it costs milliseconds per epoch.
    """
    by_path = {sample.relpath: i for i, sample in enumerate(dataset.samples)}
    rows = [(name, items) for name, items in mistakes.items() if items]
    tile, caption, label_width, header = CONTACT_TILE, 30, 110, 28
    columns = max((len(items) for _, items in rows), default=1)
    sheet = Image.new("RGB", (label_width + columns * tile, header + max(1, len(rows)) * (tile + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    draw.text((6, 6), title if rows else f"{title}: no mistakes", fill="black", font=font)
    for r, (name, items) in enumerate(rows):
        top = header + r * (tile + caption)
        draw.text((6, top + tile // 2), f"true: {name}", fill="black", font=font)
        for c, item in enumerate(items):
            left = label_width + c * tile
            try:
                thumbnail = Image.fromarray(dataset.pixels(by_path[item["image_path"]]))
                sheet.paste(thumbnail.resize((tile - 4, tile - 4), Image.Resampling.BILINEAR), (left + 2, top + 2))
            except Exception as error:  # noqa: BLE001 - a thumbnail that cannot be shown must not stop training
                draw.text((left + 6, top + tile // 2), f"unreadable ({type(error).__name__})", fill="red", font=font)
            text = f"{item['predicted_label']} {item['confidence']:.2f}"
            draw.text((left + 4, top + tile + 2), text, fill="firebrick", font=font)
            draw.text((left + 4, top + tile + 15), Path(item["image_path"]).name[:18], fill="dimgray", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        sheet.save(tmp_name, "PNG")
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def save_figure(figure: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        figure.savefig(tmp_name, dpi=100, format="png")
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
        figure.clear()
        _pyplot().close(figure)


def write_error_analysis(
    context: TrainingContext, predictions: Predictions, epoch: int
) -> dict[str, list[dict[str, Any]]]:
    """error_analysis/epoch_XX/<true_class>_errors.json and contact_sheet.png for one epoch."""
    folder = context.output_dir / "error_analysis" / f"epoch_{epoch + 1:02d}"
    mistakes = top_confident_mistakes(
        predictions.probabilities(),
        predictions.labels.tolist(),
        predictions.relpaths(context.val_dataset),
        context.classes,
    )
    for name, items in mistakes.items():
        report = {
            "schema_version": SCHEMA_VERSION,
            "epoch": epoch + 1,
            "true_class": name,
            "split": "val",
            "errors": items,
        }
        classifier.write_json_atomically(folder / f"{name}_errors.json", report)
    write_contact_sheet(
        mistakes, context.val_dataset, f"epoch {epoch + 1}: most confident mistakes", folder / "contact_sheet.png"
    )
    return mistakes


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


def load_dataset(dataset_dir: Path) -> tuple[list[str], list[Sample], list[Sample], list[dict[str, str]]]:
    """Classes, train and val samples, and non-image files; DatasetError when the layout cannot be trained on."""
    if not dataset_dir.is_dir():
        raise DatasetError(f"The dataset folder {dataset_dir} does not exist; pass --dataset-dir with train/ and val/.")
    classes = discover_classes(dataset_dir / "train")
    if not classes:
        raise DatasetError(f"{dataset_dir / 'train'} has no class folders; expected train/<class>/ with images.")
    if len(classes) < 2:
        raise DatasetError(f"{dataset_dir / 'train'} has only the class {classes[0]!r}; a classifier needs two.")
    val_classes = discover_classes(dataset_dir / "val")
    if not val_classes:
        raise DatasetError(f"{dataset_dir / 'val'} has no class folders; expected val/<class>/ like train/.")
    difference = compare_class_sets(classes, val_classes)
    if difference:
        raise DatasetError(difference)
    train_samples, skipped = scan_split(dataset_dir, "train", classes)
    val_samples, val_skipped = scan_split(dataset_dir, "val", classes)
    return classes, train_samples, val_samples, skipped + val_skipped


def check_class_counts(classes: Sequence[str], counts: dict[str, list[int]]) -> None:
    """DatasetError naming the empty splits or classes (after bad files are set aside)."""
    for split, split_counts in counts.items():
        if sum(split_counts) == 0:
            raise DatasetError(f"The {split}/ split has no usable images; add images to {split}/<class>/.")
        empty = [name for name, count in zip(classes, split_counts) if count == 0]
        if empty:
            raise DatasetError(
                f"The class folder(s) {', '.join(f'{split}/{name}' for name in empty)} have no usable images; "
                "add images or remove the class from train/ and val/."
            )


def resolve_num_workers(requested: int | None, device: torch.device) -> int:
    """Data loader processes: as asked, else enough to feed a GPU, and none on a small CPU machine.

    With the downsized cache an augmented image costs about 1 ms, while a CPU training step costs tens of ms per
    image: extra processes on a few cores would only take CPU time from the model.
    """
    if requested is not None:
        return requested
    cpus = os.cpu_count() or 1
    if device.type == "cpu":
        return 0 if cpus <= 4 else min(2, cpus // 8)
    return max(1, min(8, cpus - 1))


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


def print_setup(context: TrainingContext) -> None:
    metadata = context.metadata
    config = metadata["config"]
    print(
        f"Training {config['arch']} on {context.dataset_dir} ({', '.join(context.classes)}) on {config['device']}, "
        f"{config['trainable_parameters']:,} of {config['total_parameters']:,} parameters trainable "
        f"(frozen: {', '.join(config['frozen_blocks']) or 'none'})."
    )
    print(f"{'class':<16}{'train':>7}{'val':>7}{'weight':>10}{'share/epoch':>13}")
    for name in context.classes:
        print(
            f"{name:<16}{metadata['class_counts']['train'][name]:>7}{metadata['class_counts']['val'][name]:>7}"
            f"{metadata['sampling']['class_weights'][name]:>10.4f}"
            f"{metadata['sampling']['expected_share_per_epoch'][name]:>13.1%}"
        )
    if context.skipped_files:
        print(f"Skipping {len(context.skipped_files)} file(s) that cannot be used (listed in {METADATA_NAME}).")


def epoch_record(
    epoch: int,
    train_stats: dict[str, Any],
    predictions: Predictions,
    classes: Sequence[str],
    learning_rate: float,
    seconds: float,
) -> dict[str, Any]:
    """The history entry of one epoch: train and val loss/accuracy, per-class metrics and the confusion matrix."""
    labels = predictions.labels.tolist()
    predicted = predictions.logits.argmax(dim=1).tolist() if len(labels) else []
    matrix = confusion_matrix(labels, predicted, len(classes))
    metrics = classification_metrics(matrix, classes)
    return {
        "epoch": epoch + 1,
        "learning_rate": float(learning_rate),
        "train_loss": train_stats["train_loss"],
        "train_accuracy": train_stats["train_accuracy"],
        "train_images": train_stats["train_images"],
        "val_loss": negative_log_likelihood(predictions.logits, predictions.labels),
        "val_accuracy": metrics["accuracy"],
        "val_images": len(labels),
        "macro_f1": metrics["macro_f1"],
        "per_class": metrics["per_class"],
        "confusion_matrix": matrix.tolist(),
        "is_best": False,
        "seconds": round(seconds, 3),
        "images_per_second": round(train_stats["train_images"] / seconds, 2) if seconds > 0 else None,
    }


# Called after every epoch with the context, the epoch's record and its val predictions; may keep what it needs in
# context.hook_state (plain types and tensors: saved for --resume). Returning True stops training after this epoch.
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
        write_error_analysis(context, predictions, epoch)
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


def format_epoch_line(record: dict[str, Any]) -> str:
    return (
        f"epoch {record['epoch']:>3}  train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.3f}  "
        f"val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.3f}  macro F1 {record['macro_f1']:.3f}"
        f"{'  *best*' if record['is_best'] else ''}  ({record['seconds']:.1f} s)"
    )


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


def print_summary(context: TrainingContext) -> None:
    """The per-epoch table, the best epoch's per-class metrics, calibration and the threshold sweep."""
    print()
    print(f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'val loss':>9} {'val acc':>8} {'macro F1':>9} {'lr':>9}")
    for record in context.history:
        print(
            f"{record['epoch']:>5} {record['train_loss']:>10.4f} {record['train_accuracy']:>9.3f} "
            f"{record['val_loss']:>9.4f} {record['val_accuracy']:>8.3f} {record['macro_f1']:>9.3f} "
            f"{record['learning_rate']:>9.2e}{'  best' if record['is_best'] else ''}"
        )
    best = best_record(context.history)
    if best is None:
        return
    print(f"\nBest epoch {best['epoch']}: val accuracy {best['val_accuracy']:.3f}, macro F1 {best['macro_f1']:.3f}")
    print(f"{'class':<16}{'precision':>10}{'recall':>8}{'F1':>7}{'support':>9}")
    for name, values in best["per_class"].items():
        print(
            f"{name:<16}{values['precision']:>10.3f}{values['recall']:>8.3f}{values['f1']:>7.3f}{values['support']:>9}"
        )
    calibration = context.metadata.get("calibration")
    if calibration:
        print(
            f"\nTemperature {calibration['temperature']:.3f}: ECE {calibration['ece_before']:.4f} -> "
            f"{calibration['ece_after']:.4f}, NLL {calibration['nll_before']:.4f} -> {calibration['nll_after']:.4f}"
        )
        print(f"{'threshold':>9} {'accuracy':>9} {'to other':>9}")
        for row in context.metadata["thresholds"]:
            print(f"{row['threshold']:>9.2f} {row['accuracy']:>9.3f} {row['sent_to_other']:>9.1%}")
        print(
            f"Recommended confidence threshold: {context.metadata['recommended_threshold']:.2f} "
            f"(stored in the checkpoint: {context.args.confidence_threshold:.2f}; change it with "
            "BirdPlaneSupermanClassifier(..., confidence_threshold=...))"
        )
    print(f"\nModel: {context.output_dir / BEST_MODEL_NAME}   metadata: {context.output_dir / METADATA_NAME}")


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
    classifier.write_json_atomically(path, report)
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
        print_setup(context)
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
        print_summary(context)
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
