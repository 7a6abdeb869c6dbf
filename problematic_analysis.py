"""The problematic-images analysis of the trainer (--detect-problematic): which training images are hardest and
which are likely mislabelled, from one loss per image per analysis epoch.

Imported by train_classifier.py, not a script. The trainer calls it directly: ``ProblematicImageTracker.after_epoch``
with the scores of the training images after each of the first --analysis-epochs epochs (in-sample), whose state
goes into last_checkpoint.pth so --resume continues an interrupted analysis; or, with --cross-val-folds K,
``cross_validate``, which trains K fold models with the trainer's own make_model / make_optimizer / train_one_epoch /
evaluate (passed in, so this module never imports the trainer) and keeps their held-out scores (out-of-fold). Under
torchrun the scores reach it already gathered from all processes by train_classifier.evaluate (each image once, in
index order). Pure functions (loss statistics, confident learning, stratified folds, the report dict) come first,
then the tracker and the cross-validation, then writing and printing the report (schema: problematic_report.py,
read by review_problematic_images.py).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

import cli
import distributed
import fileio
import problematic_report
import training_data
from training_report import Predictions

if TYPE_CHECKING:
    from train_classifier import TrainingRun  # not imported at run time: the trainer imports this module

logger = logging.getLogger(__name__)

IN_SAMPLE = "in-sample"  # report "method": the model being trained scored the images it trains on (weak evidence)
OUT_OF_FOLD = "out-of-fold"  # each image scored by a fold model that never trained on it (--cross-val-folds)
ANALYSIS_OUTPUT_SUBDIR = "problematic_analysis"  # --stop-after-analysis: the short run's model goes here, never over
# <output-dir>/best_model.pth of a full training
REPORT_PREVIEW_PER_CLASS = 3  # images per class printed after the report is written
RECOMMENDED_FOLDS = 5  # what the in-sample warning recommends: each fold model trains on 80 % of the images
SMALL_DATASET_IMAGES = 2_000  # up to here, --cross-val-folds costs minutes on a GPU: the warning says so plainly


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
    errors: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """The problematic-images report (schema 1) in plain types.

    ``loss_history`` is (images, analysis epochs); ``probabilities`` (images, classes) is from the last analysis epoch
    or out of fold. Within a class images are ranked by mean loss, highest first (ties by path); the report keeps the
    top ``top_n`` plus every other image the confident-learning rule flags, so no likely label issue is left out.
    ``method``: IN_SAMPLE or OUT_OF_FOLD. ``folds``: the fold that scored each image (cross-validation), written
    per entry. ``errors``: {path, reason} of the training images that could not be read.
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
        "schema_version": problematic_report.SCHEMA_VERSION,
        "report_type": problematic_report.REPORT_TYPE,
        "created": fileio.utc_now(),
        "dataset_dir": dataset_dir,
        "arguments": arguments,
        "classes": list(classes),
        "analysis_epochs": int(loss_history.shape[1]),
        "method": method,
        "evidence_note": problematic_report.evidence_note(method),
        "cross_val_folds": int(folds.max()) + 1 if folds is not None and len(folds) else None,
        "num_images": len(labels),
        "class_thresholds": {name: None if np.isnan(t) else float(t) for name, t in zip(classes, thresholds)},
        "summary_by_class": summary,
        "problematic_images": problematic,
        "errors": list(errors),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Collecting the scores


class ScoreTable:
    """One loss per training image per analysis epoch, and the probabilities of the last one; NaN where unscored.

    Rows follow the training samples (dataset indices), so an image that failed to decode keeps a NaN row and is
    left out of the report.
    """

    def __init__(self, num_images: int, num_classes: int, epochs: int) -> None:
        self.losses = np.full((num_images, epochs), np.nan)
        self.probabilities = np.full((num_images, num_classes), np.nan)

    def add(self, epoch_index: int, scores: Predictions) -> None:
        """The per-image losses of one analysis epoch (0-based); the probabilities are kept from the last one."""
        rows = scores.indices.numpy()
        self.losses[rows, epoch_index] = scores.losses.double().numpy()
        if epoch_index == self.losses.shape[1] - 1:
            self.probabilities[rows] = scores.probabilities()

    def scored_rows(self) -> np.ndarray:
        """The images with a loss in every analysis epoch and final probabilities."""
        return np.flatnonzero(np.isfinite(self.losses).all(axis=1) & np.isfinite(self.probabilities).all(axis=1))


class ProblematicImageTracker:
    """The in-sample analysis: the training images' scores after each of the first ``analysis_epochs`` epochs.

    The trainer asks ``wants(epoch)`` after an epoch, scores the training images as classifier.py sees them (no
    augmentation, eval mode) and passes the scores to ``after_epoch``. ``state_dict`` / ``load_state_dict`` carry the
    scores so far through last_checkpoint.pth; a resumed run whose dataset changed, or whose checkpoint lacks the
    earlier epochs, writes no report (a warning says so) rather than one built from a partial record.
    """

    def __init__(self, relpaths: Sequence[str], num_classes: int, analysis_epochs: int) -> None:
        self.relpaths = list(relpaths)
        self.analysis_epochs = analysis_epochs
        self.scores = ScoreTable(len(relpaths), num_classes, analysis_epochs)
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

    def after_epoch(self, epoch: int, scores: Predictions) -> None:
        """Record the training images' scores of the 1-based ``epoch`` (one loss per image)."""
        self.scores.add(len(self.epochs), scores)
        self.epochs.append(epoch)

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
        if not state or not state.get("epochs"):
            return
        if state.get("relpaths") != self.relpaths or len(state["epochs"]) > self.analysis_epochs:
            return  # wants() warns at the next epoch: the earlier losses are missing for these images
        self.epochs = [int(epoch) for epoch in state["epochs"]]
        per_epoch = np.asarray(state["losses"], dtype=np.float64)  # (epochs, images), as lists or tensors
        self.scores.losses[:, : len(self.epochs)] = per_epoch.reshape(len(self.epochs), len(self.relpaths)).T
        if state.get("probabilities") is not None:
            self.scores.probabilities[:] = np.asarray(state["probabilities"], dtype=np.float64)
        self.report_path = state.get("report")


def saved_state(checkpoint: dict[str, Any] | None) -> dict[str, Any] | None:
    """The tracker's state in a last checkpoint, or None; checkpoints written before the trainer was split into
    modules keep it under ``hook_state``."""
    if checkpoint is None:
        return None
    return checkpoint.get("problematic_analysis") or (checkpoint.get("hook_state") or {}).get("problematic_analysis")


def cross_validate(
    run: TrainingRun,
    folds: int,
    make_model: Callable[..., nn.Module],
    make_optimizer: Callable[..., Any],
    train_one_epoch: Callable[..., dict[str, Any]],
    evaluate: Callable[..., Predictions],
) -> tuple[ScoreTable, np.ndarray]:
    """Out-of-fold scores of every usable training image, and the fold that scored it (-1: not scored).

    The images are split into ``folds`` stratified folds; for each, a fresh model (the trainer's ``make_model`` and
    ``make_optimizer``, passed in: the main run's arch, weights, freezing, optimizer and schedule) trains on the
    other folds for --analysis-epochs epochs with the trainer's ``train_one_epoch``, and its ``evaluate`` scores the
    held-out fold after every epoch. The global RNG states are restored afterwards, so the main training that may
    follow is unchanged. Under torchrun each fold model trains like the main one (DistributedDataParallel, a share
    of each epoch per process) and the scores are gathered.
    """
    args, train = run.args, run.train_dataset
    num_samples, num_classes = len(train.samples), len(run.classes)
    usable = np.array([i for i in range(num_samples) if i not in train.excluded], dtype=np.int64)
    fold_of = np.full(num_samples, -1, dtype=np.int64)
    labels = np.array([train.samples[i].label for i in usable], dtype=np.int64)
    fold_of[usable] = assign_folds(labels, folds, args.seed)
    scores = ScoreTable(num_samples, num_classes, args.analysis_epochs)
    saved_rng = training_data.rng_states()
    for fold in range(folds):
        held_out = set(np.flatnonzero(fold_of == fold).tolist())
        fold_train = train.with_view("train", set(train.excluded) | held_out)
        fold_seed = training_data.epoch_seed(args.seed, fold + 1)
        model = make_model(args, num_classes, run.device, seed=fold_seed, weights=args.weights)
        train_model = distributed.wrap_for_training(model, run.ranks, run.device)
        loader = run.epoch_loader(fold_train, fold_seed)
        optimization = make_optimizer(model, args, len(loader), run.device, run.amp_dtype)
        held_out_loader = run.loader(train.with_view("eval", set(range(num_samples)) - held_out))
        for epoch in range(args.analysis_epochs):
            stats = train_one_epoch(run, train_model, loader, optimization, epoch)
            training_data.record_failures(run.skipped_files, train, "train", stats["failures"])
            fold_scores = evaluate(model, held_out_loader, run, f"fold {fold + 1}/{folds} epoch {epoch + 1}")
            training_data.record_failures(run.skipped_files, train, "train", fold_scores.failures)
            scores.add(epoch, fold_scores)
        print(
            f"fold {fold + 1}/{folds}: trained {args.analysis_epochs} epoch(s) on "
            f"{num_samples - len(fold_train.excluded)} images, scored {len(held_out)} held-out images"
        )
        del model, train_model, optimization, loader
    training_data.restore_rng_states(saved_rng)
    return scores, fold_of


# ---------------------------------------------------------------------------------------------------------------------
# The report


def report_path(args: argparse.Namespace) -> Path:
    """--report, or the default inside the dataset folder, where the reviewer looks."""
    return Path(args.report) if args.report else Path(args.dataset_dir) / problematic_report.DEFAULT_NAME


def analysis_output_dir(output_dir: str | Path) -> Path:
    """Where --stop-after-analysis puts its short run's model and metadata: never over a trained best_model.pth."""
    return Path(output_dir) / ANALYSIS_OUTPUT_SUBDIR


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
    """The report of the training ``samples`` scored in ``scores``; unscored images are listed under errors."""
    scored = scores.scored_rows()
    return build_problematic_report(
        relative_paths=[samples[i].relpath for i in scored],
        labels=np.array([samples[i].label for i in scored], dtype=np.int64),
        classes=classes,
        loss_history=scores.losses[scored],
        probabilities=scores.probabilities[scored],
        top_n=args.top_n_problematic,
        method=method,
        arguments=arguments,
        dataset_dir=str(args.dataset_dir),
        folds=folds[scored] if folds is not None else None,
        errors=[{"path": item["path"], "reason": item["reason"]} for item in skipped_files if item["split"] == "train"],
    )


def write_report(path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write the report (validated against the schema) and return the summary the training metadata keeps."""
    problematic_report.write_report(path, report)
    return {
        "report": str(path),
        "method": report["method"],
        "analysis_epochs": report["analysis_epochs"],
        "label_issues": {name: stats["label_issues"] for name, stats in report["summary_by_class"].items()},
    }


def print_report(report: dict[str, Any], path: Path, dataset_dir: str) -> None:
    """The per-class table, the hardest images, how far to trust the flags, and the command that reviews them."""
    print(
        f"\nProblematic-images report ({report['method']}, {report['analysis_epochs']} analysis epoch(s), "
        f"{report['num_images']} train images): {cli.printable(path)}"
    )
    print(f"{'class':<16}{'images':>7}{'label issues':>14}   highest mean losses")
    for name, stats in report["summary_by_class"].items():
        print(f"{name:<16}{stats['count']:>7}{stats['label_issues']:>14}")
        for item in report["problematic_images"][name][:REPORT_PREVIEW_PER_CLASS]:
            flag = f"  (likely label issue: {item['suggested_class']}?)" if item["is_label_issue"] else ""
            print(f"{'':<37}   {item['mean_loss']:.3f} {cli.printable(item['path'])}{flag}")
    if report["method"] == IN_SAMPLE:
        size = "small enough that it costs little" if report["num_images"] <= SMALL_DATASET_IMAGES else "large"
        print(
            f"Note: {report['evidence_note']}. With {report['num_images']} images the dataset is {size}: "
            f"add --cross-val-folds {RECOMMENDED_FOLDS} (about {RECOMMENDED_FOLDS - 1}x the analysis epochs of "
            "training) before relabelling or deleting anything."
        )
    else:
        print(f"Note: {report['evidence_note']}.")
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
        help="score every training image in the first --analysis-epochs epochs and write a report of the hardest and "
        "likely mislabeled ones (default: off)",
    )
    group.add_argument(
        "--analysis-epochs", type=int, default=3, help="epochs whose per-image losses are recorded (default: 3)"
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
        help="score each image out of sample: K models each train --analysis-epochs epochs on K-1 folds and score "
        "the fold they never saw, before the main training; costs about K-1 times the analysis epochs of training; "
        "recommended (K=5), as in-sample flags are weak evidence (default: off, in-sample scores from the main run)",
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
