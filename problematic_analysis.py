"""The problematic-images analysis of the trainer (--detect-problematic): which training images are likely
mislabelled, and which are merely hard, from out-of-sample probabilities and one loss per image per analysis epoch.

Imported by train_classifier.py, not a script; it never imports the trainer. The default analysis: the trainer
scores the training images after each of the first --analysis-epochs epochs (``ProblematicImageTracker``: one loss
per image, state in last_checkpoint.pth for --resume); at the last one an ``AnalysisScorer`` also returns each
image's features that do not depend on the labels (the pretrained backbone's embedding when --weights gives one,
and ``pixel_features``: HOG, a tiny image and a colour histogram). A logistic
regression fitted by scikit-learn's cross_val_predict on the other folds gives each image its probabilities
(``out_of_fold_probabilities``), and cleanlab's rule (``find_label_issues``, written here with numpy and checked
against cleanlab by a test) flags the likely label issues. With --cross-val-folds K the trainer's
``cross_validate`` trains K fold networks instead and their held-out probabilities are used. Under torchrun the
scores reach this module already gathered from all processes (each image once, in index order).

``label_issues_from_features(feature_blocks, labels)`` is the analysis on plain arrays (features in, flags out), for
benchmarks. Pure functions first, then the scorer and the tracker, then building, writing and printing the report
(schema: problematic_report.py, read by review_problematic_images.py and html_report.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from torch import nn

import classifier
import cli
import fileio
import problematic_report
from training_report import Predictions

logger = logging.getLogger(__name__)

OUT_OF_FOLD = "out-of-fold"  # --cross-val-folds K: each image scored by a fold network that never trained on it
LINEAR_OUT_OF_FOLD = problematic_report.LINEAR_OUT_OF_FOLD  # the default: a logistic regression's out-of-fold scores
ANALYSIS_OUTPUT_SUBDIR = "problematic_analysis"  # --stop-after-analysis: the short run's model goes here, never over
# <output-dir>/best_model.pth of a full training
REPORT_PREVIEW_PER_CLASS = 3  # images per class printed after the report is written

LABEL_ISSUE_RULES = ("prune_by_noise_rate", "confident_learning")  # cleanlab's names; the first is its default
DEFAULT_RULE = LABEL_ISSUE_RULES[0]
MIN_EXAMPLES_PER_CLASS = 1  # cleanlab's default: a class of one image is never emptied
ABSENT_CLASS_THRESHOLD = 2.0  # cleanlab's: above any probability, so nothing is counted towards a class nobody carries
THRESHOLD_FLOOR = 2e-6  # cleanlab's lower bound on a threshold
TOLERANCE = 1e-6  # cleanlab's floating-point slack: in the threshold test, the rounding loop and the argmax tie-break
TINY = 1e-100  # cleanlab's guard against dividing by an empty row
LINEAR_FOLDS = 5  # the logistic regression of the default analysis: each fit sees 80 % of the images
REGULARISATION = 1.0  # inverse L2 strength of that regression on standardised features (scikit-learn's default): on
# real photos with 5 % flips, 0.1 trades recall for precision and 0.3 flags about as C=1 (BENCHMARKS.md, quality)
LOGISTIC_ITERATIONS = 1000  # lbfgs iterations; enough for C=1 on 1,435 photos to converge
PIXEL_FEATURE_SIZE = 64  # px the label-independent pixel features are computed at: 8 x 8 HOG cells of 8 px
ORIENTATIONS = 9  # HOG's unsigned gradient orientation bins (Dalal and Triggs)
PIXEL_FEATURE_WIDTH = ORIENTATIONS * 8 * 8 + 8 * 8 * 3 + 4 * 4 * 4  # HOG cells, tiny RGB image, colour histogram


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions


def loss_statistics(loss_history: np.ndarray) -> dict[str, np.ndarray]:
    """Per image, the mean, max, min and (population) standard deviation of an (images, epochs) array of losses."""
    return {
        "mean_loss": loss_history.mean(axis=1),
        "max_loss": loss_history.max(axis=1),
        "min_loss": loss_history.min(axis=1),
        "std_loss": loss_history.std(axis=1),
    }


def confident_thresholds(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per class, the mean probability of that class over the images labelled with it (its average
    self-confidence); ABSENT_CLASS_THRESHOLD for a class no image carries, so no probability reaches it."""
    thresholds = np.full(probabilities.shape[1], ABSENT_CLASS_THRESHOLD)
    for class_index in np.unique(labels):
        thresholds[class_index] = probabilities[labels == class_index, class_index].mean()
    return np.clip(thresholds, THRESHOLD_FLOOR, None)


def round_keeping_total(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to integers whose sum is the rounded sum of ``values``: the ones rounded furthest from
    their value move first, one step each, until the total matches."""
    floats = np.asarray(values, dtype=np.float64)
    ints = floats.round()
    target, total = floats.sum().round(), ints.sum().round()
    while abs(total - target) > TOLERANCE:
        step = 1 if target > total else -1
        changes = min(int(abs(np.round(target - total))), len(floats))
        ints[np.argsort(floats - ints)[::-step][:changes]] += step
        total = ints.sum().round()
    return ints.astype(np.int64)


def confident_joint(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(joint, counted_elsewhere): the calibrated confident joint, a (given label, likely true class) count matrix
    whose rows sum to the class counts, and the images counted off its diagonal.

    An image counts towards the class whose threshold its probability reaches (the most probable such class when
    several do; not at all when none does); every diagonal cell is at least 1. Calibration rescales each row to the
    class's image count, then the whole matrix to the number of images, and rounds each row keeping its total.
    """
    num_classes = probabilities.shape[1]
    is_confident = probabilities >= confident_thresholds(probabilities, labels) - TOLERANCE
    confident_count = is_confident.sum(axis=1)
    guess = np.where(confident_count > 1, probabilities.argmax(axis=1), is_confident.argmax(axis=1))
    counted = confident_count > 0
    by_guess = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(by_guess, (guess[counted], labels[counted]), 1)
    joint = by_guess.T  # (given, guess); the transposed layout, like cleanlab's, makes np.sum below add in its order
    np.fill_diagonal(joint, joint.diagonal().clip(min=1))
    class_sizes = np.bincount(labels, minlength=num_classes)
    # Scaled through the transpose, as cleanlab does, so a row that lands on x.5 rounds the same way: a last-bit
    # difference in the total flips it.
    calibrated = (joint.T / np.clip(joint.sum(axis=1), TINY, None) * class_sizes).T
    calibrated = calibrated / np.clip(np.sum(calibrated), TINY, None) * class_sizes.sum()
    calibrated = np.stack([round_keeping_total(row) for row in calibrated])
    counted_elsewhere = np.flatnonzero(counted)[guess[counted] != labels[counted]]
    return calibrated, counted_elsewhere


def removal_counts(joint: np.ndarray, min_examples_per_class: int) -> np.ndarray:
    """(likely true class, given label) -> how many images to flag: the confident joint transposed, each column's
    diagonal raised to ``min_examples_per_class`` by taking the difference evenly from its non-zero off-diagonal
    cells (never below 0), then truncated to integers."""
    counts = joint.T.astype(np.float64)
    diagonal = counts.diagonal().copy()
    kept = np.maximum(diagonal, min_examples_per_class)
    spread_over = np.maximum(np.count_nonzero(counts, axis=0) - 1.0, 1.0)
    counts = np.clip(counts - (kept - diagonal) / spread_over, 0, None)
    np.fill_diagonal(counts, kept)
    return counts.astype(np.int64)


def find_label_issues(
    probabilities: np.ndarray,
    labels: np.ndarray,
    rule: str = DEFAULT_RULE,
    min_examples_per_class: int = MIN_EXAMPLES_PER_CLASS,
) -> np.ndarray:
    """True per image whose label is likely wrong; the same flags as cleanlab 2.x's
    ``cleanlab.filter.find_label_issues(labels, probabilities, filter_by=rule)`` (a test keeps them equal).

    ``probabilities`` should be out of sample. "confident_learning" flags the images the confident joint counts
    off its diagonal: the given class's probability is below its threshold and another class's reaches its own.
    "prune_by_noise_rate" (cleanlab's default) takes the confident joint's estimate of how many images of given
    label k truly belong to class j and flags that many of the images labelled k, those with the largest margin
    p(j) - p(k); a class of at most ``min_examples_per_class`` images is never flagged. Either way an image whose
    most probable class is its given label (ties go to the label) is never flagged.
    """
    if rule not in LABEL_ISSUE_RULES:
        raise ValueError(f"unknown label-issue rule {rule!r}; choose one of {', '.join(LABEL_ISSUE_RULES)}")
    joint, counted_elsewhere = confident_joint(probabilities, labels)
    is_issue = np.zeros(len(labels), dtype=bool)
    if rule == "confident_learning":
        is_issue[counted_elsewhere] = True
    else:
        to_flag = removal_counts(joint, min_examples_per_class)
        for given in range(probabilities.shape[1]):
            members = np.flatnonzero(labels == given)
            if len(members) <= max(min_examples_per_class, 1):
                continue
            for other in np.flatnonzero(to_flag[:, given]):
                if other != given:
                    margin = probabilities[members, other] - probabilities[members, given]
                    is_issue[members[np.argsort(-margin)[: to_flag[other, given]]]] = True
    nudged = probabilities.copy()
    nudged[np.arange(len(labels)), labels] += TOLERANCE
    return is_issue & (nudged.argmax(axis=1) != labels)


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) floats in [0, 1] -> (N, 832) float32 features that do not depend on any label: at
    PIXEL_FEATURE_SIZE px, a histogram of oriented gradients (8 px cells, 9 unsigned orientations, each cell
    L2-normalised), the image shrunk to 8 x 8 RGB, and a 4 x 4 x 4 colour histogram; all of them square-rooted
    (the Hellinger map of RootSIFT: a linear model on it compares histograms better; higher recall of planted flips
    at the same precision on real photos, BENCHMARKS.md)."""
    with torch.autocast(device_type=images.device.type, enabled=False):
        x = F.interpolate(images.float(), size=(PIXEL_FEATURE_SIZE, PIXEL_FEATURE_SIZE), mode="area").clamp(0, 1)
        tiny = F.adaptive_avg_pool2d(x, 8).flatten(1)
        levels = (x * 3.999).long()  # 4 levels per channel
        colour = levels[:, 0] * 16 + levels[:, 1] * 4 + levels[:, 2]
        histogram = F.one_hot(colour.flatten(1), 64).float().mean(dim=1)
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        dx = F.pad(grey, (1, 1, 0, 0), mode="replicate")
        dy = F.pad(grey, (0, 0, 1, 1), mode="replicate")
        gx, gy = dx[..., 2:] - dx[..., :-2], dy[..., 2:, :] - dy[..., :-2, :]
        angle = torch.remainder(torch.atan2(gy, gx), math.pi)
        orientation = (angle / math.pi * ORIENTATIONS).long().clamp(max=ORIENTATIONS - 1).squeeze(1)
        weighted = F.one_hot(orientation, ORIENTATIONS).permute(0, 3, 1, 2) * torch.hypot(gx, gy)
        cells = F.avg_pool2d(weighted, 8)
        cells = cells / (cells.norm(dim=1, keepdim=True) + 1e-6)
        return torch.cat([cells.flatten(1), tiny, histogram], dim=1).sqrt()


def standardised_blocks(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """The feature blocks side by side, each column standardised and each block scaled to the same total weight,
    so a 2,048-wide embedding does not drown an 832-wide pixel block; one block is plainly standardised."""
    total_width, scaled = sum(block.shape[1] for block in blocks), []
    for block in blocks:
        block = np.asarray(block, dtype=np.float64)
        spread = block.std(axis=0)
        block = (block - block.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
        scaled.append(block * math.sqrt(total_width / len(blocks) / block.shape[1]))
    return np.hstack(scaled)


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(N, classes) probabilities of each image from a logistic regression fitted on the other folds only
    (scikit-learn's cross_val_predict over stratified folds); classes are the columns 0..labels.max(). Fewer folds
    when a class has fewer images than ``folds``; a class absent from a fold's training part gets probability 0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    smallest = np.bincount(labels)[np.bincount(labels) > 0].min()
    splitter = StratifiedKFold(n_splits=int(max(2, min(folds, smallest))), shuffle=True, random_state=seed)
    model = LogisticRegression(C=REGULARISATION, max_iter=LOGISTIC_ITERATIONS)
    with warnings.catch_warnings():  # a class smaller than the folds, or lbfgs stopping at max_iter: still usable
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        return cross_val_predict(model, features, labels, cv=splitter, method="predict_proba")


def label_issues_from_features(
    feature_blocks: Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    rule: str = DEFAULT_RULE,
    folds: int = LINEAR_FOLDS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(is_label_issue, out-of-fold probabilities): the default analysis on arrays, for the trainer and benchmarks.

    ``feature_blocks``: (N, d_i) arrays per image, such as ``pixel_features`` and a pretrained network's embeddings;
    ``labels``: (N,) given class indices 0..K-1 (every class present). A logistic regression on the standardised
    blocks scores each image out of fold; ``find_label_issues`` applies ``rule`` to those probabilities.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = linear_probabilities(feature_blocks, labels, int(labels.max()) + 1, seed, folds)
    return find_label_issues(probabilities, labels, rule), probabilities


def assign_folds(labels: np.ndarray, folds: int, seed: int, excluded: Collection[int] = ()) -> np.ndarray:
    """A fold index per image, stratified (each class spread evenly over the folds), the same for the same seed;
    -1 for the ``excluded`` indices (images that failed to decode)."""
    rng = np.random.default_rng(seed)
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    is_usable = np.ones(len(labels), dtype=bool)
    is_usable[list(excluded)] = False
    position = 0
    for class_index in np.unique(labels[is_usable]):
        members = np.flatnonzero((labels == class_index) & is_usable)
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
    rule: str = DEFAULT_RULE,
    folds: np.ndarray | None = None,
    errors: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """The problematic-images report (problematic_report.py's schema) in plain types.

    ``loss_history`` is (images, analysis epochs) of the network's per-image losses; ``probabilities`` (images,
    classes) the out-of-fold ones the label-issue ``rule`` reads (``method`` says whose). Per class the report keeps
    every likely label issue and, as hard examples, the other images among the ``top_n`` highest mean losses
    (ranked by mean loss, ties by path); ``all_images`` keeps every image's probabilities. ``suggested_class`` is set
    only when that class is more probable than the given one. ``folds``: the fold that scored each image
    (--cross-val-folds). ``errors``: {path, reason} of the training images that could not be read.
    """
    stats = loss_statistics(loss_history)
    thresholds = confident_thresholds(probabilities, labels)
    joint, _ = confident_joint(probabilities, labels)
    is_issue = find_label_issues(probabilities, labels, rule)
    rows = np.arange(len(labels))
    others = probabilities.copy()
    others[rows, labels] = -np.inf
    best_other, predicted = others.argmax(axis=1), probabilities.argmax(axis=1)
    margin = others.max(axis=1) - probabilities[rows, labels] if len(classes) > 1 else np.full(len(labels), -1.0)

    def entry(index: int, rank: int) -> dict[str, Any]:
        own, other = int(labels[index]), int(best_other[index])
        item = {
            "rank": rank,
            "path": relative_paths[index],
            "class": classes[own],
            **{key: float(values[index]) for key, values in stats.items()},
            "losses": [float(value) for value in loss_history[index]],
            "predicted_class": classes[int(predicted[index])],
            "given_label_probability": float(probabilities[index, own]),
            "suggested_class": classes[other] if margin[index] > 0 else None,
            "margin": float(margin[index]),
            "probabilities": {name: float(probabilities[index, j]) for j, name in enumerate(classes)},
            "is_label_issue": bool(is_issue[index]),
            "is_hard_example": not is_issue[index],
            "label_issue_reason": None,
        }
        if is_issue[index]:
            item["label_issue_reason"] = (
                f"p({classes[other]})={probabilities[index, other]:.2f} > p({classes[own]})="
                f"{probabilities[index, own]:.2f}, and {rule} counts it among the {joint[own, other]} images labelled "
                f"{classes[own]} that are likely {classes[other]}"
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
            "hard_examples": sum(item["is_hard_example"] for item in problematic[class_name]),
            "highest_mean_loss": float(means.max()) if members else None,
            "lowest_mean_loss": float(means.min()) if members else None,
            "average_mean_loss": float(means.mean()) if members else None,
        }
    return {
        "schema_version": problematic_report.SCHEMA_VERSION,
        "report_type": problematic_report.REPORT_TYPE,
        "created": fileio.utc_now(),
        "dataset_dir": dataset_dir,
        "arguments": arguments,
        "classes": list(classes),
        "analysis_epochs": int(loss_history.shape[1]),
        "method": method,
        "evidence_note": problematic_report.evidence_note(method),
        "check_agreement": float((probabilities.argmax(axis=1) == labels).mean()) if len(labels) else None,
        "label_issue_rule": rule,
        "cross_val_folds": int(folds.max()) + 1 if folds is not None and len(folds) else None,
        "num_images": len(labels),
        "class_thresholds": {name: float(t) if t <= 1 else None for name, t in zip(classes, thresholds)},
        "confident_joint": joint.tolist(),
        "summary_by_class": summary,
        "problematic_images": problematic,
        "all_images": [
            {"path": path, "class": classes[int(label)], "probabilities": [round(float(p), 6) for p in row]}
            for path, label, row in zip(relative_paths, labels, probabilities)
        ],
        "errors": list(errors),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Collecting the scores


class AnalysisScorer(nn.Module):
    """What the trainer's ``evaluate`` runs at the last analysis epoch: per image the model's logits, then the
    features that do not depend on the labels, side by side in one row (``ScoreTable.add`` takes them apart): the
    pretrained backbone's pooled features (when --weights gives one) and ``pixel_features``. The trained model's own
    embeddings are left out on purpose: it has fitted the noisy labels, and with them the flags found fewer of the
    planted mislabels (USAGE_EXAMPLES.md, "How it works"). ``widths``: the feature blocks' widths, in order."""

    def __init__(self, model: nn.Module, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.model, self.backbone = model, backbone
        self.widths = ([backbone.fc.in_features] if backbone is not None else []) + [PIXEL_FEATURE_WIDTH]
        self.register_buffer("mean", torch.tensor(classifier.IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(classifier.IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        parts = [self.model(inputs)]
        if self.backbone is not None:
            parts.append(classifier.pooled_features(self.backbone, inputs))
        parts.append(pixel_features(inputs.float() * self.std + self.mean))  # back to [0, 1] pixels
        return torch.cat([part.float() for part in parts], dim=1)


def pretrained_backbone(arch: str, num_classes: int, weights: str, device: torch.device) -> nn.Module | None:
    """The network as --weights gives it, before any training (None for --weights none), in eval mode on
    ``device``: its embeddings join the default analysis's features. The global RNG states are left as they were
    (its new head is drawn from a forked generator), so the training that follows is unchanged."""
    if str(weights).lower() == "none":
        return None
    with torch.random.fork_rng(devices=[]):
        backbone = classifier.build_model(arch, num_classes, weights=weights)
    return backbone.requires_grad_(False).eval().to(device)


class ScoreTable:
    """One loss per training image per analysis epoch, the probabilities of the last one and, from an
    ``AnalysisScorer``, the feature blocks of the last one; NaN where unscored.

    Rows follow the training samples (dataset indices), so an image that failed to decode keeps a NaN row and is
    left out of the report.
    """

    def __init__(self, num_images: int, num_classes: int, epochs: int) -> None:
        self.losses = np.full((num_images, epochs), np.nan)
        self.probabilities = np.full((num_images, num_classes), np.nan)
        self.features: np.ndarray | None = None  # (images, sum of widths) float32
        self.widths: list[int] = []

    def add(self, epoch_index: int, scores: Predictions, widths: Sequence[int] = ()) -> None:
        """The per-image losses of one analysis epoch (0-based); the probabilities are kept from the last one, and
        the features when ``scores`` came from an AnalysisScorer whose blocks are ``widths`` wide."""
        rows, num_classes = scores.indices.numpy(), self.probabilities.shape[1]
        if widths:
            if self.features is None:
                self.features = np.full((len(self.losses), sum(widths)), np.nan, dtype=np.float32)
            self.features[rows] = scores.logits[:, num_classes:].numpy()
            self.widths = list(widths)
            scores = dataclasses.replace(scores, logits=scores.logits[:, :num_classes])
        self.losses[rows, epoch_index] = scores.losses.double().numpy()
        if epoch_index == self.losses.shape[1] - 1:
            self.probabilities[rows] = scores.probabilities()

    def scored_rows(self) -> np.ndarray:
        """The images with a loss in every analysis epoch, final probabilities and (when kept) features."""
        is_scored = np.isfinite(self.losses).all(axis=1) & np.isfinite(self.probabilities).all(axis=1)
        if self.features is not None:
            is_scored &= np.isfinite(self.features).all(axis=1)
        return np.flatnonzero(is_scored)

    def feature_blocks(self, rows: np.ndarray) -> list[np.ndarray]:
        """The kept features of ``rows``, one array per block (embeddings, backbone embeddings, pixel features)."""
        assert self.features is not None, "no AnalysisScorer scored these images"
        return np.split(self.features[rows], np.cumsum(self.widths)[:-1], axis=1)


class ProblematicImageTracker:
    """The default analysis: the training images' scores after each of the first ``analysis_epochs`` epochs.

    The trainer asks ``wants(epoch)`` after an epoch, scores the training images as classifier.py sees them (no
    augmentation, eval mode) with ``scorer(model, epoch)`` and passes the scores to ``after_epoch``; the last
    analysis epoch also keeps the images' features for the out-of-fold logistic regression. ``state_dict`` /
    ``load_state_dict`` carry the losses so far through last_checkpoint.pth; a resumed run whose dataset changed,
    or whose checkpoint lacks the earlier epochs, writes no report (a warning says so) rather than one built from a
    partial record. ``backbone``: the pretrained network before training, whose embeddings join the features.
    """

    def __init__(
        self, relpaths: Sequence[str], num_classes: int, analysis_epochs: int, backbone: nn.Module | None = None
    ) -> None:
        self.relpaths = list(relpaths)
        self.analysis_epochs = analysis_epochs
        self.scores = ScoreTable(len(relpaths), num_classes, analysis_epochs)
        self.backbone = backbone
        self.epochs: list[int] = []  # 1-based epochs scored so far
        self.report_path: str | None = None  # set once the report is written
        self.is_broken = False  # epochs are missing: no report this run

    @property
    def is_complete(self) -> bool:
        return len(self.epochs) >= self.analysis_epochs

    def wants(self, epoch: int) -> bool:
        """True when the 1-based ``epoch`` just trained is one to score."""
        if self.is_broken or self.is_complete:
            return False
        if self.epochs != list(range(1, epoch)):
            logger.warning(
                "The per-image losses of the epochs before %d are missing (the dataset changed, or the run was resumed "
                "from a checkpoint without them); no problematic-images report this run. Start a new run with "
                "--detect-problematic.",
                epoch,
            )
            self.is_broken = True
            return False
        return True

    def scorer(self, model: nn.Module, epoch: int) -> nn.Module:
        """What scores the images after the 1-based ``epoch``: the model, or at the last analysis epoch an
        AnalysisScorer around it (and the backbone)."""
        return AnalysisScorer(model, self.backbone) if epoch == self.analysis_epochs else model

    def after_epoch(self, epoch: int, scores: Predictions, scorer: nn.Module | None = None) -> None:
        """Record the training images' scores of the 1-based ``epoch`` (one loss per image; features when
        ``scorer`` is an AnalysisScorer)."""
        widths = scorer.widths if isinstance(scorer, AnalysisScorer) else ()
        self.scores.add(len(self.epochs), scores, widths)
        self.epochs.append(epoch)
        if self.is_complete:
            self.backbone = None  # its memory is not needed any more

    def state_dict(self) -> dict[str, Any]:
        """Plain types and arrays for last_checkpoint.pth (loadable with weights_only=True)."""
        return {
            "relpaths": self.relpaths,
            "epochs": list(self.epochs),
            "losses": self.scores.losses[:, : len(self.epochs)].T.tolist(),  # per epoch, one loss per image
            "probabilities": self.scores.probabilities.tolist() if self.is_complete else None,
            "report": self.report_path,
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue from a checkpoint's state; one from another dataset (other images) is ignored, with a warning."""
        if not isinstance(state, dict) or not isinstance(state.get("epochs"), list) or not state["epochs"]:
            return
        if state.get("relpaths") != self.relpaths or len(state["epochs"]) > self.analysis_epochs:
            return  # wants() warns at the next epoch: the earlier losses are missing for these images
        try:  # a damaged or crafted checkpoint: the same as none (the analysis epochs are scored again)
            epochs = [int(epoch) for epoch in state["epochs"]]
            per_epoch = np.asarray(state["losses"], dtype=np.float64)  # (epochs, images), as lists or tensors
            self.scores.losses[:, : len(epochs)] = per_epoch.reshape(len(epochs), len(self.relpaths)).T
            if state.get("probabilities") is not None:
                self.scores.probabilities[:] = np.asarray(state["probabilities"], dtype=np.float64)
        except (TypeError, ValueError, KeyError, OverflowError):
            self.scores.losses[:], self.scores.probabilities[:] = np.nan, np.nan
            return
        self.epochs = epochs
        self.report_path = state["report"] if isinstance(state.get("report"), str) else None  # only ever printed


def saved_state(checkpoint: dict[str, Any] | None) -> dict[str, Any] | None:
    """The tracker's state in a last checkpoint, or None; checkpoints written before the trainer was split into
    modules keep it under ``hook_state``."""
    if checkpoint is None:
        return None
    return checkpoint.get("problematic_analysis") or (checkpoint.get("hook_state") or {}).get("problematic_analysis")


def start_tracker(
    samples: Sequence[Any], classes: Sequence[str], args: argparse.Namespace, device: torch.device, resume: Any
) -> ProblematicImageTracker:
    """The default analysis's tracker for the training ``samples``, carrying on from a ``resume`` checkpoint, with
    the pretrained backbone while the analysis still needs it. Backbone weights that cannot be loaded now (a resumed
    run whose --weights file is gone, ImageNet weights without network) leave the analysis to the pixel features,
    with a warning: the training itself does not need them."""
    relpaths = [sample.relpath for sample in samples]
    tracker = ProblematicImageTracker(relpaths, len(classes), args.analysis_epochs)
    tracker.load_state_dict(saved_state(resume))
    if not tracker.is_complete:
        try:
            tracker.backbone = pretrained_backbone(args.arch, len(classes), args.weights, device)
        except (classifier.WeightsUnavailableError, ValueError, OSError) as error:
            logger.warning("The analysis goes on without the pretrained backbone's features: %s", error)
    return tracker


# ---------------------------------------------------------------------------------------------------------------------
# The report


def report_path(args: argparse.Namespace) -> Path:
    """--report, or the default inside the dataset folder, where the reviewer looks."""
    return Path(args.report) if args.report else Path(args.dataset_dir) / problematic_report.DEFAULT_NAME


def analysis_output_dir(output_dir: str | Path) -> Path:
    """Where --stop-after-analysis puts its short run's model and metadata: never over a trained best_model.pth."""
    return Path(output_dir) / ANALYSIS_OUTPUT_SUBDIR


def linear_probabilities(
    blocks: Sequence[np.ndarray], labels: np.ndarray, num_classes: int, seed: int, folds: int = LINEAR_FOLDS
) -> np.ndarray:
    """``out_of_fold_probabilities`` of the standardised ``blocks`` with a column per class of the model: a class
    none of these images carries gets probability 0. A class of one image has nothing to be compared with out of
    fold: it is left out of the regression and its image keeps its label (probability 1, never flagged)."""
    counts = np.bincount(labels, minlength=num_classes)
    present, is_fitted = np.flatnonzero(counts >= 2), counts[labels] >= 2
    probabilities = np.zeros((len(labels), num_classes))
    probabilities[~is_fitted, labels[~is_fitted]] = 1.0
    if len(present) < 2:  # nothing to tell apart
        probabilities[is_fitted, labels[is_fitted]] = 1.0
        return probabilities
    widths = "+".join(str(block.shape[1]) for block in blocks)
    print(f"Fitting the label-issue logistic regression: {len(labels)} images, {widths} features, {folds} folds")
    fitted = standardised_blocks([np.asarray(block)[is_fitted] for block in blocks])
    partial = out_of_fold_probabilities(fitted, np.searchsorted(present, labels[is_fitted]), folds, seed)
    probabilities[np.ix_(is_fitted, present)] = partial
    return probabilities


def make_report(
    scores: ScoreTable,
    samples: Sequence[Any],
    classes: Sequence[str],
    args: argparse.Namespace,
    arguments: dict[str, Any],
    method: str,
    skipped_files: Sequence[dict[str, str]],
    folds: np.ndarray | None = None,
) -> dict[str, Any]:
    """The report of the training ``samples`` scored in ``scores``; unscored images are listed under errors.

    LINEAR_OUT_OF_FOLD: the probabilities the rule reads come from ``linear_probabilities`` over the kept feature
    blocks; OUT_OF_FOLD: from the fold networks.
    """
    scored = scores.scored_rows()
    labels = np.array([samples[i].label for i in scored], dtype=np.int64)
    probabilities = scores.probabilities[scored]
    if method == LINEAR_OUT_OF_FOLD and len(np.unique(labels)) > 1:
        probabilities = linear_probabilities(scores.feature_blocks(scored), labels, len(classes), args.seed)
    return build_problematic_report(
        relative_paths=[samples[i].relpath for i in scored],
        labels=labels,
        classes=classes,
        loss_history=scores.losses[scored],
        probabilities=probabilities,
        top_n=args.top_n_problematic,
        method=method,
        arguments=arguments,
        dataset_dir=str(args.dataset_dir),
        rule=args.label_issue_rule,
        folds=folds[scored] if folds is not None else None,
        errors=[{"path": item["path"], "reason": item["reason"]} for item in skipped_files if item["split"] == "train"],
    )


def write_report(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    """Write the report (validated against the schema) where ``report_path`` says, and return the summary the
    training metadata keeps."""
    path = report_path(args)
    problematic_report.write_report(path, report)
    return {
        "report": str(path),
        "method": report["method"],
        "label_issue_rule": report["label_issue_rule"],
        "analysis_epochs": report["analysis_epochs"],
        "label_issues": {name: stats["label_issues"] for name, stats in report["summary_by_class"].items()},
    }


def print_report(report: dict[str, Any], path: Path, dataset_dir: str) -> None:
    """The per-class table, the hardest images, how far to trust the flags, and the command that reviews them."""
    print(
        f"\nProblematic-images report ({report['method']}, {report['analysis_epochs']} analysis epoch(s), "
        f"{report['num_images']} train images): {cli.printable(path)}"
    )
    print(f"{'class':<16}{'images':>7}{'label issues':>14}   likely label issues first, then the hardest examples")
    for name, stats in report["summary_by_class"].items():
        print(f"{name:<16}{stats['count']:>7}{stats['label_issues']:>14}")
        entries = sorted(report["problematic_images"][name], key=lambda item: not item["is_label_issue"])
        for item in entries[:REPORT_PREVIEW_PER_CLASS]:
            if item["is_label_issue"]:
                flag = f"label issue: more likely {item['suggested_class']}"
            else:
                flag = f"hard example, mean loss {item['mean_loss']:.3f}"
            print(f"{'':<37}   {cli.printable(item['path'])}  ({flag})")
    print(f"Note: {problematic_report.report_evidence_note(report)}.")
    review = ["python review_problematic_images.py"]
    if path.resolve().parent != Path(dataset_dir).resolve():
        review += ["--report", str(path), "--dataset-dir", str(dataset_dir)]
    elif path != Path("dataset") / problematic_report.DEFAULT_NAME:
        review += ["--report", str(path)]
    print(f"Review them with: {cli.printable(' '.join(review))}")


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The --detect-problematic flags, as one group of the trainer's parser."""
    group = parser.add_argument_group("problematic images (see review_problematic_images.py)")
    group.add_argument(
        "--detect-problematic",
        action="store_true",
        help="score every training image in the first --analysis-epochs epochs, then flag likely label issues from "
        "out-of-fold probabilities (a logistic regression over features that do not depend on the labels: pixel "
        "gradients and colours, and the pretrained backbone's embeddings) and list the hardest examples "
        "(default: off)",
    )
    group.add_argument(
        "--analysis-epochs", type=int, default=3, help="epochs whose per-image losses are recorded (default: 3)"
    )
    group.add_argument(
        "--label-issue-rule",
        choices=LABEL_ISSUE_RULES,
        default=DEFAULT_RULE,
        help="cleanlab's rule that flags an image: prune_by_noise_rate flags as many images per class pair as the "
        "confident joint estimates are mislabelled, largest margin first; confident_learning flags every image the "
        f"confident joint counts off its diagonal (default: {DEFAULT_RULE})",
    )
    group.add_argument(
        "--top-n-problematic",
        type=int,
        default=50,
        help="images per class kept in the report, by mean loss; likely label issues are always kept (default: 50)",
    )
    group.add_argument(
        "--stop-after-analysis",
        action="store_true",
        help=f"stop once the report is written; the short run's model goes to <output-dir>/{ANALYSIS_OUTPUT_SUBDIR}/ "
        "and no calibration is run for it (default: off, training continues to --epochs)",
    )
    group.add_argument(
        "--cross-val-folds",
        type=int,
        default=None,
        metavar="K",
        help="the expensive alternative: K networks each train --analysis-epochs epochs on K-1 folds and score the "
        "fold they never saw, before the main training (about K-1 times the analysis epochs of training) "
        "(default: off, the logistic regression's out-of-fold probabilities)",
    )
    cli.add_report_flag(
        group,
        f"where the problematic-images report goes (default: <dataset-dir>/{problematic_report.DEFAULT_NAME})",
        aliases=["--problematic-report"],
        default=None,
        metavar="PATH",
    )


def argument_problem(args: argparse.Namespace) -> str | None:
    """One sentence for --detect-problematic settings no run can use, or None."""
    if not args.detect_problematic:
        for flag, value in (
            ("--stop-after-analysis", args.stop_after_analysis),
            ("--cross-val-folds", args.cross_val_folds),
        ):
            if value:
                return f"{flag} only works with --detect-problematic"
        return None
    for name, minimum in (("analysis_epochs", 1), ("top_n_problematic", 1)):
        if getattr(args, name) < minimum:
            return f"--{name.replace('_', '-')} must be at least {minimum}, got {getattr(args, name)}"
    if args.cross_val_folds is not None and args.cross_val_folds < 2:
        return f"--cross-val-folds must be at least 2, got {args.cross_val_folds}"
    report = report_path(args)
    try:
        if report.is_dir():  # found only when the report is written, after the training, as a traceback
            return f"--report {cli.printable(report)} is a folder; name the JSON file to write"
        if problem := fileio.file_name_problem(report):
            return f"--report: {problem}"
        if report.exists() and not problematic_report.is_report_file(report):  # never replace a file of the user's
            return f"--report {cli.printable(report)} exists and is not a problematic-images report; name another file"
    except OSError as error:
        return f"--report {cli.shown(report)} cannot be used ({error.strerror or error})"
    if args.cross_val_folds is None and args.epochs < args.analysis_epochs:
        return (
            f"--analysis-epochs {args.analysis_epochs} needs --epochs of at least {args.analysis_epochs}: the analysis "
            "scores the images during the first epochs of training"
        )
    if args.cross_val_folds is None and args.patience and args.patience + 1 < args.analysis_epochs:
        return (
            f"--patience {args.patience} could stop training before the {args.analysis_epochs} analysis epochs; "
            f"use --patience 0 or at least {args.analysis_epochs - 1}"
        )
    return None


if __name__ == "__main__":
    cli.refuse_running_as_script(__file__, "run train_classifier.py")
