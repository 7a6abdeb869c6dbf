"""The trainer's reporting: metrics, calibration, the threshold table, error analysis, plots and printed tables.

Imported by train_classifier.py, not a script. Pure functions over labels, predictions and probabilities, then the
few that write files (PNG and JSON, atomically through fileio) and those that print.

Writes into the trainer's --output-dir:
    training_curves.png, confusion_matrix.png
    error_analysis/epoch_XX/<true_class>_errors.json and contact_sheet.png (most confident mistakes of one epoch)
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

import classifier
import cli
import fileio
import training_data
from training_data import Datasets, ImageDataset

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # of training_metadata.json and the error-analysis files
ERRORS_PER_CLASS = 10  # most confident mistakes kept per true class and epoch
ERROR_ANALYSIS_NAME = "error_analysis"  # the folder in the output folder with each epoch's most confident mistakes
THRESHOLDS = tuple(round(0.50 + 0.05 * i, 2) for i in range(10))  # 0.50 ... 0.95, the confidence thresholds tried
ECE_BINS = 15  # the usual number of equal-width confidence bins for the expected calibration error
TEMPERATURE_SEARCH_RANGE = (0.25, 20.0)  # T tried by the fit; a val set with no mistakes would push T towards 0
TEMPERATURE_TOLERANCE = 1e-6  # on 1/T: far below what changes a probability in the third decimal
AUGMENTATION_NOTE = (
    "torchvision.transforms.v2 per class: RandomResizedCrop(crop_scale), RandomRotation(+/- rotation_degrees), "
    "flips with these probabilities, ColorJitter factors drawn in [1 - x, 1 + x], RandomGrayscale(grayscale)"
)
CONTACT_TILE = 128  # pixels per thumbnail in the error-analysis contact sheets


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions: metrics, calibration, thresholds, mistakes


def classification_metrics(labels: Sequence[int], predicted: Sequence[int], classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro F1 over the classes present (support > 0), and the
    confusion matrix (rows = true class, columns = predicted class), from scikit-learn.

    A class with no val images has no recall or F1: None (null in JSON), not 0; nor a precision unless it was
    predicted. A class with images that is never predicted has precision 0, as scikit-learn's zero_division=0."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # a second to import: only here

    indices = list(range(len(classes)))
    labels, predicted = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    matrix = confusion_matrix(labels, predicted, labels=indices) if len(labels) else np.zeros((len(classes),) * 2)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=np.nan
    )
    present = support > 0
    precision = np.where(present & np.isnan(precision), 0.0, precision)
    f1 = np.where(present, f1, np.nan)  # scikit-learn gives 0 to a class with no images that was predicted

    def defined(value: float) -> float | None:
        return None if np.isnan(value) else float(value)

    per_class = {
        name: {"precision": defined(p), "recall": defined(r), "f1": defined(f), "support": int(n)}
        for name, p, r, f, n in zip(classes, precision, recall, f1, support)
    }
    return {
        "accuracy": float((labels == predicted).mean()) if len(labels) else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": per_class,
        "confusion_matrix": np.asarray(matrix, dtype=np.int64).tolist(),
    }


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits.float() / temperature, labels.long()).item()) if len(labels) else 0.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the NLL of softmax(logits / T), within TEMPERATURE_SEARCH_RANGE.

    The NLL is convex in 1/T, so scipy's bounded scalar search over 1/T finds the optimum. T is kept within
    TEMPERATURE_SEARCH_RANGE: with no mistakes on val the NLL keeps falling as T shrinks, and a tiny T would make the
    classifier absurdly sure of itself.
    """
    from scipy.optimize import minimize_scalar  # comes with scikit-learn

    if len(labels) == 0:
        return 1.0
    logits, labels = logits.float(), labels.long()
    result = minimize_scalar(
        lambda inverse: float(F.cross_entropy(logits * inverse, labels).item()),
        bounds=(1.0 / TEMPERATURE_SEARCH_RANGE[1], 1.0 / TEMPERATURE_SEARCH_RANGE[0]),
        method="bounded",
        options={"xatol": TEMPERATURE_TOLERANCE},
    )
    return float(1.0 / result.x)


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


def calibrate(predictions: Predictions, classes: Sequence[str]) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """(calibration, threshold table, recommended threshold) of a model's val predictions: the temperature, NLL and
    ECE before and after it, and the threshold sweep on the calibrated probabilities.

    Calibration never makes things worse: a fitted temperature that does not lower the val ECE is not used (T = 1;
    ``fitted_temperature``, ``ece_fitted`` and ``is_fit_used`` say so)."""
    fitted = fit_temperature(predictions.logits, predictions.labels)
    if min(abs(fitted - bound) for bound in TEMPERATURE_SEARCH_RANGE) < 1e-3:
        logger.warning(
            "The fitted temperature %.2f is at the edge of the range searched %s: the val set is too small or too "
            "easy to calibrate on.",
            fitted,
            TEMPERATURE_SEARCH_RANGE,
        )
    labels = predictions.labels.tolist()
    ece_before = expected_calibration_error(predictions.probabilities(), labels)
    ece_fitted = expected_calibration_error(predictions.probabilities(fitted), labels)
    is_fit_used = ece_fitted < ece_before
    temperature = fitted if is_fit_used else 1.0
    table = threshold_table(predictions.probabilities(temperature), labels, classes)
    calibration = {
        "temperature": temperature,
        "fitted_temperature": fitted,
        "is_fit_used": is_fit_used,
        "val_images": len(labels),
        "nll_before": negative_log_likelihood(predictions.logits, predictions.labels),
        "nll_after": negative_log_likelihood(predictions.logits, predictions.labels, temperature),
        "ece_before": ece_before,
        "ece_after": ece_fitted if is_fit_used else ece_before,
        "ece_fitted": ece_fitted,
        "ece_bins": ECE_BINS,
    }
    return calibration, table, recommend_threshold(table)


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


@dataclasses.dataclass
class Predictions:
    """Per-image results of the trainer's ``evaluate``: rows follow ``indices`` (positions in the dataset's samples)."""

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


# ---------------------------------------------------------------------------------------------------------------------
# Writing and printing results


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
    names = [cli.printable(name) for name in classes]  # a non-UTF-8 folder name as \xff escapes, never a crash
    axis.set_xticks(range(len(classes)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, label="share of the true class")
    figure.tight_layout()
    save_figure(figure, path)


def fit_text(text: str, font: Any, width: float) -> str:
    """``text`` as it is when it fits in ``width`` pixels, else shortened with an ellipsis in the middle (the start
    and the extension of a file name both stay visible)."""
    if font.getlength(text) <= width:
        return text
    keep_start, keep_end = len(text) // 2, len(text) - len(text) // 2
    while keep_start + keep_end > 0:
        if keep_start >= keep_end:
            keep_start -= 1
        else:
            keep_end -= 1
        candidate = text[:keep_start] + "…" + text[len(text) - keep_end :]
        if font.getlength(candidate) <= width:
            return candidate
    return "…"


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
        draw.text((6, top + tile // 2), f"true: {cli.printable(name)}", fill="black", font=font)
        for c, item in enumerate(items):
            left = label_width + c * tile
            try:
                thumbnail = Image.fromarray(dataset.pixels(by_path[item["image_path"]]))
                sheet.paste(thumbnail.resize((tile - 4, tile - 4), Image.Resampling.BILINEAR), (left + 2, top + 2))
            except Exception as error:  # noqa: BLE001 - a thumbnail that cannot be shown must not stop training
                draw.text((left + 6, top + tile // 2), f"unreadable ({type(error).__name__})", fill="red", font=font)
            text = f"{cli.printable(item['predicted_label'])} {item['confidence']:.2f}"
            draw.text((left + 4, top + tile + 2), text, fill="firebrick", font=font)
            name_text = fit_text(cli.printable(Path(item["image_path"]).name), font, tile - 8)
            draw.text((left + 4, top + tile + 15), name_text, fill="dimgray", font=font)
    with fileio.atomic_write(path) as handle:
        sheet.save(handle, "PNG")


def save_figure(figure: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    try:
        with fileio.atomic_write(path) as handle:
            figure.savefig(handle, dpi=100, format="png")
    finally:
        figure.clear()
        _pyplot().close(figure)


def write_error_analysis(
    output_dir: Path, predictions: Predictions, val_dataset: ImageDataset, classes: Sequence[str], epoch: int
) -> dict[str, list[dict[str, Any]]]:
    """error_analysis/epoch_XX/<true_class>_errors.json and contact_sheet.png for one epoch (0-based ``epoch``)."""
    folder = output_dir / ERROR_ANALYSIS_NAME / f"epoch_{epoch + 1:02d}"
    mistakes = top_confident_mistakes(
        predictions.probabilities(), predictions.labels.tolist(), predictions.relpaths(val_dataset), classes
    )
    for name, items in mistakes.items():
        report = {
            "schema_version": SCHEMA_VERSION,
            "epoch": epoch + 1,
            "true_class": name,
            "split": "val",
            "errors": items,
        }
        fileio.write_json(folder / f"{name}_errors.json", report)
    write_contact_sheet(
        mistakes, val_dataset, f"epoch {epoch + 1}: most confident mistakes", folder / "contact_sheet.png"
    )
    return mistakes


def best_model_extras(record: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """The extras stored in best_model.pth beside classifier.py's fields: how the model was made (the run's
    arguments, class counts and augmentation from ``metadata``) and how good it is (the epoch's ``record``)."""
    return {
        "epoch": record["epoch"],
        "metrics": {k: v for k, v in record.items() if k != "confusion_matrix"},
        "confusion_matrix": record["confusion_matrix"],
        "arguments": metadata["arguments"],
        "class_counts": metadata["class_counts"],
        "augmentation_policy": metadata["augmentation"]["policy"],
        "created": fileio.utc_now(),
        "trainer": "train_classifier.py",
    }


def new_metadata(
    arguments: dict[str, Any],
    data: Datasets,
    model: torch.nn.Module,
    *,
    frozen: Sequence[str],
    device: Any,
    amp_dtype: Any,
    is_channels_last: bool,
    num_workers: int,
    world_size: int = 1,
    backend: str | None = None,
) -> dict[str, Any]:
    """training_metadata.json of a new run: settings, class counts, sampling and augmentation; results come later.

    ``world_size`` and ``backend``: the processes of a torchrun run (each takes --batch-size images per step) and
    their torch.distributed backend; 1 and None for a single process. ``device`` is rank 0's.
    """
    classes, counts, policies = data.classes, data.counts, data.policies
    is_weighted = not arguments["no_weighted_sampling"]
    config = {
        "arch": arguments["arch"],
        "weights": arguments["weights"],
        "image_size": arguments["image_size"],
        "resize_size": classifier.default_resize_size(arguments["image_size"]),
        "mean": list(classifier.IMAGENET_MEAN),
        "std": list(classifier.IMAGENET_STD),
        "freeze_until": arguments["freeze_until"],
        "frozen_blocks": list(frozen),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "amp_dtype": str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
        "channels_last": is_channels_last,
        "num_workers": num_workers,
        "world_size": world_size,
        "distributed_backend": backend,
        "images_per_step": arguments["batch_size"] * world_size,
        "optimizer": "AdamW",
        "schedule": f"linear warm-up {arguments['warmup_epochs']} epoch(s), then cosine to 0",
        "memory_cache_mb": round(data.memory_bytes / 1024**2, 1),
        "cache_dir": arguments["cache_dir"],
        "torch": torch.__version__,
    }
    usable_train = counts["train"]
    class_weights = training_data.class_sampling_weights(usable_train)
    shares = [(1 / len(classes)) if is_weighted else count / sum(usable_train) for count in usable_train]
    now = fileio.utc_now()
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "started": now,
        "updated": now,
        "dataset_dir": arguments["dataset_dir"],
        "output_dir": arguments["output_dir"],
        "arguments": arguments,
        "classes": list(classes),
        "config": config,
        "class_counts": {split: dict(zip(classes, split_counts)) for split, split_counts in counts.items()},
        "sampling": {
            "weighted": is_weighted,
            "class_weights": {c: float(w) for c, w in zip(classes, class_weights)},
            "expected_share_per_epoch": {c: float(s) for c, s in zip(classes, shares)},
        },
        "augmentation": {
            "uniform": bool(arguments["uniform_augmentation"]),
            "policy": {c: dataclasses.asdict(p) for c, p in policies.items()},
            "note": AUGMENTATION_NOTE,
        },
        "skipped_files": data.skipped_files,
        "epochs": [],
        "best_epoch": None,
        "best_macro_f1": None,
        "calibration": None,
        "thresholds": None,
        "recommended_threshold": None,
    }


def write_metadata(
    path: Path,
    metadata: dict[str, Any],
    status: str,
    history: Sequence[dict[str, Any]],
    skipped_files: Sequence[dict[str, str]],
) -> None:
    """Bring training_metadata.json up to date (status, epochs, skipped files, best epoch) and write it atomically."""
    metadata["status"] = status
    metadata["updated"] = fileio.utc_now()
    metadata["skipped_files"] = sorted(skipped_files, key=lambda item: (item["split"], item["path"]))
    metadata["epochs"] = list(history)
    best = best_record(history)
    metadata["best_epoch"] = best["epoch"] if best else None
    metadata["best_macro_f1"] = best["macro_f1"] if best else None
    fileio.write_json(path, metadata)


def print_setup(metadata: dict[str, Any], metadata_name: str) -> None:
    """What is about to be trained: model, classes, images per class, sampling weights and skipped files."""
    config, classes, skipped = metadata["config"], metadata["classes"], metadata["skipped_files"]
    processes = config.get("world_size", 1)
    kind = config["device"].split(":")[0]
    where = config["device"] if processes == 1 else f"{processes} processes ({kind}, {config['distributed_backend']})"
    print(
        f"Training {config['arch']} on {cli.printable(metadata['dataset_dir'])} "
        f"({cli.printable(', '.join(classes))}) on {where}, "
        f"{config['trainable_parameters']:,} of {config['total_parameters']:,} parameters trainable "
        f"(frozen: {', '.join(config['frozen_blocks']) or 'none'})."
    )
    print(f"{'class':<16}{'train':>7}{'val':>7}{'weight':>10}{'share/epoch':>13}")
    for name in classes:
        print(
            f"{cli.printable(name):<16}{metadata['class_counts']['train'][name]:>7}"
            f"{metadata['class_counts']['val'][name]:>7}"
            f"{metadata['sampling']['class_weights'][name]:>10.4f}"
            f"{metadata['sampling']['expected_share_per_epoch'][name]:>13.1%}"
        )
    if skipped:
        print(f"Skipping {len(skipped)} file(s) that cannot be used (listed in {metadata_name}).")
    no_val = [cli.printable(name) for name in classes if metadata["class_counts"]["val"][name] == 0]
    if no_val:
        print(
            f"No val images for {', '.join(no_val)}: training anyway; the val recall and F1 of "
            f"{'that class are' if len(no_val) == 1 else 'those classes are'} undefined (null in {metadata_name})."
        )


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
    metrics = classification_metrics(labels, predictions.logits.argmax(dim=1).tolist(), classes)
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
        "confusion_matrix": metrics["confusion_matrix"],
        "is_best": False,
        "seconds": round(seconds, 3),
        "images_per_second": round(train_stats["train_images"] / seconds, 2) if seconds > 0 else None,
    }


def format_epoch_line(record: dict[str, Any]) -> str:
    return (
        f"epoch {record['epoch']:>3}  train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.3f}  "
        f"val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.3f}  macro F1 {record['macro_f1']:.3f}"
        f"{'  *best*' if record['is_best'] else ''}  ({record['seconds']:.1f} s)"
    )


def print_summary(metadata: dict[str, Any], model_path: Path, metadata_path: Path) -> None:
    """The per-epoch table, the best epoch's per-class metrics, calibration and the threshold sweep."""
    history = metadata["epochs"]
    print()
    print(f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'val loss':>9} {'val acc':>8} {'macro F1':>9} {'lr':>9}")
    for record in history:
        print(
            f"{record['epoch']:>5} {record['train_loss']:>10.4f} {record['train_accuracy']:>9.3f} "
            f"{record['val_loss']:>9.4f} {record['val_accuracy']:>8.3f} {record['macro_f1']:>9.3f} "
            f"{record['learning_rate']:>9.2e}{'  best' if record['is_best'] else ''}"
        )
    best = best_record(history)
    if best is None:
        return
    print(f"\nBest epoch {best['epoch']}: val accuracy {best['val_accuracy']:.3f}, macro F1 {best['macro_f1']:.3f}")
    print(f"{'class':<16}{'precision':>10}{'recall':>8}{'F1':>7}{'support':>9}")
    for name, values in best["per_class"].items():
        p, r, f = (("-" if values[k] is None else f"{values[k]:.3f}") for k in ("precision", "recall", "f1"))
        print(f"{cli.printable(name):<16}{p:>10}{r:>8}{f:>7}{values['support']:>9}")
    calibration = metadata.get("calibration")
    if calibration:
        print(
            f"\nTemperature {calibration['temperature']:.3f}: ECE {calibration['ece_before']:.4f} -> "
            f"{calibration['ece_after']:.4f}, NLL {calibration['nll_before']:.4f} -> {calibration['nll_after']:.4f}"
        )
        if not calibration.get("is_fit_used", True):
            print(
                f"Temperature scaling (fitted T = {calibration['fitted_temperature']:.3f}) did not lower the val ECE "
                f"({calibration['ece_before']:.4f} -> {calibration['ece_fitted']:.4f}): keeping T = 1."
            )
        print(f"{'threshold':>9} {'accuracy':>9} {'to other':>9}")
        for row in metadata["thresholds"]:
            print(f"{row['threshold']:>9.2f} {row['accuracy']:>9.3f} {row['sent_to_other']:>9.1%}")
    print(f"\nModel: {cli.printable(model_path)}   metadata: {cli.printable(metadata_path)}")
    if calibration:
        print_threshold_advice(metadata, model_path)


def print_threshold_advice(metadata: dict[str, Any], model_path: Path) -> None:
    """The trainer's last lines: the confidence threshold the model stores, the one the val sweep recommends, and
    the one command that stores the recommendation."""
    recommended, stored = metadata["recommended_threshold"], metadata["confidence_threshold"]
    if recommended == stored:
        print(f"Confidence threshold stored in the model: {stored:.2f}, the one the val sweep recommends.")
        return
    print(f"Confidence threshold stored in the model: {stored:.2f}; the val sweep recommends {recommended:.2f}.")
    command = f"python classifier.py {shlex.quote(cli.printable(model_path))} --set-threshold {recommended:.2f}"
    print(f"To store it: {command}")


if __name__ == "__main__":
    cli.refuse_running_as_script(__file__, "run train_classifier.py")
