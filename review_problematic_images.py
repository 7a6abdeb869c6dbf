"""Review the training images the trainer flagged as mislabelled or problematic, and fix them safely.

Reads the report of ``train_classifier.py --detect-problematic`` and shows the flagged images as a thumbnail grid, as
their loss across the analysis epochs, as text, or one by one in the terminal to keep, delete or relabel each.

    python review_problematic_images.py                                  # grid of all flagged images
    python review_problematic_images.py --class bird --limit 10 --mode summary
    python review_problematic_images.py --mode interactive               # keep / delete / relabel, then confirm
    python review_problematic_images.py --undo dataset/.trash/review_20261129_012345/move_log.json

Writes: PNG figures (to ``--save FILE``, or next to the report when there is no display); in interactive mode a
decisions file (default ``<report folder>/problematic_review_decisions.json``, rewritten after every answer) and, once
the changes are confirmed, ``move_log.json`` in the trash folder (default ``<dataset>/.trash/review_<timestamp>/``;
``move_log_1.json``, ... when a log is already there, never overwritten), which ``--undo`` reverses exactly, also
dropping the restored images' entries from the decisions file so a rerun shows them again. Nothing on disk changes
before that confirmation.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import cli
from fileio import (
    ReportError,
    atomic_write,
    class_folders,
    is_inside,
    is_safe_relative,
    read_json,
    utc_now,
    utc_stamp,
    write_json,
)
from problematic_report import DEFAULT_NAME, evidence_note, load_report
from problematic_report import validate_report as validate_report  # re-exported: older callers import it from here

LOGGER = logging.getLogger(__name__)

DEFAULT_REPORT_PATH = f"dataset/{DEFAULT_NAME}"  # where the trainer writes it by default
DECISIONS_FILE_NAME = "problematic_review_decisions.json"  # next to the report, so a rerun finds and resumes it
DECISIONS_SCHEMA_VERSION = 1  # version of the decisions file written here
DECISIONS_TYPE = "problematic_review_decisions"
MOVE_LOG_NAME = "move_log.json"  # inside the trash folder, so the log and the deleted files stay together
MOVE_LOG_SCHEMA_VERSION = 1  # version of the move log that --undo reads
MOVE_LOG_TYPE = "problematic_review_moves"
TRASH_FOLDER = ".trash"  # hidden, so the trainer and the duplicate detectors never scan deleted images
MODES = ("grid", "trajectory", "interactive", "summary")
OUT_OF_FOLD_METHODS = ("out-of-fold", "cross_validation")  # the schema's name, and the name older trainers wrote
THUMBNAIL_SIZE = 160  # pixels of the longer side in the grid: enough to judge a label, small enough for 40 a page
GRID_COLUMNS = 8  # thumbnails per grid row
GRID_IMAGES_PER_PAGE = 48  # more per figure makes the thumbnails too small to judge; extra pages go to more files
CAPTION_NAME_CHARACTERS = 24  # a longer file name under a thumbnail runs into its neighbour's
TRAJECTORY_LEGEND_MAX_LINES = 12  # above this a legend of file names hides the lines it labels
FIGURE_DPI = 100
# Severity colours: a likely label issue is the thing to fix first; a loss above ln(number of classes) means the
# model does worse on the image than a uniform guess would; everything else in the report is merely the hardest.
SEVERITY_COLOURS = {"label issue": "#d62728", "worse than chance": "#ff7f0e", "hard": "#bcbd22"}
PLACEHOLDER_GREY = 0.85  # background of a thumbnail that could not be read


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------------------------


def select_entries(
    report: dict[str, Any], classes: Sequence[str] | None = None, only_label_issues: bool = False
) -> list[dict[str, Any]]:
    """The report's entries of the chosen classes (all if None), class by class in report order, highest rank first."""
    chosen = [name for name in report["classes"] if classes is None or name in classes]
    selected = []
    for class_name in chosen:
        entries = report["problematic_images"].get(class_name, [])
        ordered = sorted(enumerate(entries), key=lambda pair: (pair[1].get("rank", pair[0] + 1), pair[0]))
        selected.extend(entry for _, entry in ordered if not only_label_issues or entry.get("is_label_issue"))
    return selected


def limit_per_class(entries: Iterable[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The first ``limit`` entries of each class, keeping the order; all of them when limit is None."""
    kept, seen = [], {}
    for entry in entries:
        seen[entry["class"]] = seen.get(entry["class"], 0) + 1
        if limit is None or seen[entry["class"]] <= limit:
            kept.append(entry)
    return kept


def severity_of(entry: dict[str, Any], num_classes: int) -> str:
    """One of SEVERITY_COLOURS' keys: likely label issue, loss worse than a uniform guess, or merely hard."""
    if entry.get("is_label_issue"):
        return "label issue"
    if num_classes > 1 and float(entry["mean_loss"]) >= math.log(num_classes):
        return "worse than chance"
    return "hard"


def format_number(value: Any, digits: int = 3) -> str:
    """A float with ``digits`` decimals, or '-' for a missing value."""
    return "-" if value is None else f"{float(value):.{digits}f}"


def is_out_of_fold(report: dict[str, Any]) -> bool:
    """True when each image was scored by a model that never trained on it (--cross-val-folds)."""
    return report.get("method") in OUT_OF_FOLD_METHODS


def report_evidence_note(report: dict[str, Any]) -> str:
    """problematic_report's sentence on how far the report's label-issue flags can be trusted."""
    return evidence_note("out-of-fold" if is_out_of_fold(report) else "in-sample")


def label_probability(entry: dict[str, Any]) -> Any:
    """The probability of the labelled class: at the last analysis epoch, or out of fold (None when absent)."""
    return entry.get("last_probability", entry.get("given_label_probability"))


def short_name(path: str, characters: int = CAPTION_NAME_CHARACTERS) -> str:
    """The file name of ``path``, printable and cut to ``characters`` so captions do not run into each other."""
    name = cli.printable(PurePosixPath(path).name)
    return name if len(name) <= characters else name[: characters - 3] + "..."


def grid_caption(entry: dict[str, Any], out_of_fold: bool) -> str:
    """The lines under a thumbnail: each figure says what it is (a mean over epochs, or one epoch's probability)."""
    when = "out of fold" if out_of_fold else "last epoch"
    return (
        f"{cli.printable(entry['class'])} -> {cli.printable(entry.get('suggested_class') or '?')}\n"
        f"mean loss {float(entry['mean_loss']):.2f} ({len(entry['losses'])} ep)\n"
        f"p({cli.printable(entry['class'])}) {format_number(label_probability(entry), 2)} {when}\n"
        f"{short_name(entry['path'])}"
    )


def format_summary(
    report: dict[str, Any], entries: Sequence[dict[str, Any]], report_path: str, notes: Sequence[str]
) -> str:
    """The text of ``--mode summary``: the report's header, the per-class summary and one line per chosen image."""
    classes = report["classes"]
    when = "out of fold" if is_out_of_fold(report) else "at the last analysis epoch"
    lines = [
        f"Problematic images report: {cli.printable(report_path)}",
        f"created {report.get('created', '?')}, method {report.get('method', '?')}"
        + (f" ({report['cross_val_folds']} folds)" if report.get("cross_val_folds") else "")
        + f", {report.get('analysis_epochs', '?')} analysis epochs"
        + f", {report.get('num_images', '?')} train images scored",
        f"Note: {report_evidence_note(report)}.",
        f"classes: {', '.join(cli.printable(name) for name in classes)}",
        "",
        f"{'class':<16} {'images':>7} {'reported':>9} {'label issues':>13} "
        f"{'highest':>9} {'lowest':>9} {'average':>9}   (mean loss per image)",
    ]
    for class_name in classes:
        stats = report.get("summary_by_class", {}).get(class_name, {})
        lines.append(
            f"{cli.printable(class_name):<16} {stats.get('count', '-')!s:>7} {stats.get('reported', '-')!s:>9} "
            f"{stats.get('label_issues', '-')!s:>13} {format_number(stats.get('highest_mean_loss')):>9} "
            f"{format_number(stats.get('lowest_mean_loss')):>9} {format_number(stats.get('average_mean_loss')):>9}"
        )
    by_class: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_class.setdefault(entry["class"], []).append(entry)
    if by_class:
        lines += ["", f"mean loss: mean over the analysis epochs; p(label): probability of the labelled class {when}"]
    for class_name, class_entries in by_class.items():
        lines += ["", f"{cli.printable(class_name)}: {len(class_entries)} image(s)"]
        lines.append(
            f"{'rank':>5} {'mean loss':>10} {'p(label)':>9} {'predicted':<12} {'suggested':<12} {'flag':<12} "
            f"{'loss per epoch':<24} path"
        )
        for entry in class_entries:
            losses = " ".join(format_number(value, 2) for value in entry["losses"])
            flag = "LABEL ISSUE" if entry.get("is_label_issue") else ""
            lines.append(
                f"{entry.get('rank', '-')!s:>5} {format_number(entry['mean_loss']):>10} "
                f"{format_number(label_probability(entry)):>9} "
                f"{cli.printable(entry.get('predicted_class', '-')):<12} "
                f"{cli.printable(entry.get('suggested_class', '-')):<12} {flag:<12} {losses:<24} "
                f"{cli.printable(entry['path'])}"
            )
            if entry.get("is_label_issue") and entry.get("label_issue_reason"):
                lines.append(f"{'':>6}{cli.printable(entry['label_issue_reason'])}")
    if not entries:
        lines += ["", "No images match the chosen classes and filters."]
    if notes:
        lines += ["", f"Skipped {len(notes)} image(s):"] + [f"  {cli.printable(note)}" for note in notes]
    return "\n".join(lines) + "\n"


def describe_entry(entry: dict[str, Any], position: int, total: int) -> str:
    """The lines shown above the interactive prompt for one image."""
    losses = " ".join(format_number(value, 2) for value in entry["losses"])
    label = cli.printable(entry["class"])
    lines = [
        f"[{position}/{total}] {cli.printable(entry['path'])}",
        f"  class {label} (rank {entry.get('rank', '-')}), predicted {cli.printable(entry.get('predicted_class', '-'))}"
        f", p({label})={format_number(label_probability(entry), 2)}, "
        f"suggested {cli.printable(entry.get('suggested_class', '-'))}",
        f"  mean loss {format_number(entry['mean_loss'])} (min {format_number(entry.get('min_loss'))}, "
        f"max {format_number(entry.get('max_loss'))}); per epoch: {losses}",
    ]
    if entry.get("is_label_issue"):
        lines.append(f"  LIKELY LABEL ISSUE: {cli.printable(entry.get('label_issue_reason') or '')}".rstrip())
    return "\n".join(lines)


def parse_answer(text: str, entry: dict[str, Any], valid_targets: Sequence[str]) -> tuple[str, str | None]:
    """Turn one typed answer into (action, target class); raises ValueError with a message to show the user.

    Actions: keep, delete, relabel (to a class folder that exists), next (no decision), skip_class, quit, help.
    A bare 'r' relabels to the suggested class.
    """
    words = text.strip().split()
    if not words:
        return "next", None
    command = words[0].lower()
    simple = {"k": "keep", "d": "delete", "n": "next", "s": "skip_class", "q": "quit", "?": "help", "h": "help"}
    simple.update({"keep": "keep", "delete": "delete", "next": "next", "skip": "skip_class", "quit": "quit"})
    if command in simple:
        return simple[command], None
    if command in {"r", "relabel"}:
        target = words[1] if len(words) > 1 else entry.get("suggested_class")
        if not target:
            raise ValueError("say which class: r CLASS")
        if target == entry["class"]:
            raise ValueError(f"the image is already in class {cli.printable(target)!r}")
        if target not in valid_targets:
            raise ValueError(
                f"there is no class folder {cli.printable(target)!r} to move it to; choose one of: "
                f"{', '.join(cli.printable(name) for name in valid_targets)}"
            )
        return "relabel", target
    raise ValueError(f"unknown answer {cli.printable(text.strip())!r}")


def unique_destination(destination: PurePosixPath, is_taken: Callable[[PurePosixPath], bool]) -> PurePosixPath:
    """``destination``, or ``stem_1.ext``, ``stem_2.ext``... the first name not taken: a move never overwrites."""
    candidate, number = destination, 1
    while is_taken(candidate):
        candidate = destination.with_name(f"{destination.stem}_{number}{destination.suffix}")
        number += 1
    return candidate


def plan_moves(
    decisions: Sequence[dict[str, Any]], trash_dir: PurePosixPath, exists: Callable[[PurePosixPath], bool]
) -> list[dict[str, Any]]:
    """One move per delete or relabel decision, in order; destinations never collide with a file or each other.

    Paths are relative to the dataset folder (``trash_dir`` may be absolute). A deleted image keeps its relative path
    inside the trash folder; a relabelled one goes to ``<split>/<target class>/<file name>``. ``exists`` says whether a
    path is taken on disk.
    """
    moves: list[dict[str, Any]] = []
    planned: set[PurePosixPath] = set()
    for decision in decisions:
        source = PurePosixPath(decision["path"])
        if decision["action"] == "delete":
            wanted = trash_dir / source
        elif decision["action"] == "relabel":
            wanted = PurePosixPath(source.parts[0], decision["target_class"], source.name)
        else:
            continue
        destination = unique_destination(wanted, lambda path: path in planned or exists(path))
        planned.add(destination)
        moves.append(
            {
                "action": decision["action"],
                "class": decision.get("class"),
                "target_class": decision.get("target_class"),
                "source": source.as_posix(),
                "destination": destination.as_posix(),
                "done": False,
            }
        )
    return moves


def grid_pages(count: int, per_page: int) -> list[range]:
    """Index ranges of the grid figures: ``count`` images, at most ``per_page`` a figure."""
    return [range(start, min(start + per_page, count)) for start in range(0, count, per_page)]


def page_paths(path: Path, pages: int) -> list[Path]:
    """``path`` for a single figure, else ``stem_page1.png``, ``stem_page2.png``, ..."""
    if pages <= 1:
        return [path]
    return [path.with_name(f"{path.stem}_page{number}{path.suffix or '.png'}") for number in range(1, pages + 1)]


# ---------------------------------------------------------------------------------------------------------------------
# The dataset on disk
# ---------------------------------------------------------------------------------------------------------------------


def path_is_present(path: Path) -> bool:
    """True for a file or a symlink (even a broken one, which the grid then shows as unreadable)."""
    return path.exists() or path.is_symlink()


def split_present(entries: Sequence[dict[str, Any]], dataset_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Entries whose file is still on disk, and one note per entry skipped (moved, deleted or an unsafe path)."""
    present, notes = [], []
    for entry in entries:
        if not is_safe_relative(entry["path"]):
            notes.append(f"{entry['path']}: not a path inside the dataset folder")
        elif not path_is_present(dataset_dir / entry["path"]):
            notes.append(f"{entry['path']}: no longer on disk (moved or deleted since the report was written)")
        else:
            present.append(entry)
    return present, notes


# ---------------------------------------------------------------------------------------------------------------------
# Figures: the grid of thumbnails and the loss trajectories (matplotlib imported only here)
# ---------------------------------------------------------------------------------------------------------------------


def has_display() -> bool:
    """Whether a window can be opened: always on macOS and Windows, elsewhere only with X11 or Wayland."""
    if sys.platform in {"darwin", "win32"}:
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def import_pyplot(headless: bool) -> Any:
    """matplotlib.pyplot, switched to the Agg backend when nothing is shown (imported here, never at module level)."""
    import matplotlib

    if headless:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_thumbnail(path: Path) -> tuple[Any, str | None]:
    """(RGB thumbnail as a PIL image, None), or (None, reason) for an image that cannot be read."""
    import classifier  # the one image reader; imported here so the summary never loads torch

    try:
        image = classifier.load_image(path, draft_size=(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    except (OSError, ValueError) as error:  # classifier.ImageLoadError is a ValueError
        return None, str(error) or type(error).__name__
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return image, None


def severity_handles(num_classes: int, with_uniform_line: bool = False) -> list[Any]:
    """Legend entries for the severity colours, and for the dashed uniform-guess line when the figure draws it."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(color=colour, label=name) for name, colour in SEVERITY_COLOURS.items()]
    if with_uniform_line and num_classes > 1:
        label = f"uniform guess: loss ln({num_classes}) = {math.log(num_classes):.2f}"
        handles.append(Line2D([], [], color="grey", linestyle="--", linewidth=1, label=label))
    return handles


def build_grid_figure(
    plt: Any,
    entries: Sequence[dict[str, Any]],
    thumbnails: Sequence[tuple[Any, str | None]],
    report: dict[str, Any],
    title: str,
) -> Any:
    """One grid figure: a thumbnail per image (or a grey placeholder with the reason), framed in its severity colour."""
    import numpy as np

    num_classes, out_of_fold = len(report["classes"]), is_out_of_fold(report)
    columns = max(1, min(GRID_COLUMNS, len(entries)))
    rows = max(1, math.ceil(len(entries) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 2.2, rows * 2.9 + 1.2), squeeze=False)
    for axis in axes.flat:
        axis.set_axis_off()
    for axis, entry, (image, reason) in zip(axes.flat, entries, thumbnails):
        colour = SEVERITY_COLOURS[severity_of(entry, num_classes)]
        if image is not None:
            axis.imshow(np.asarray(image))
        else:
            axis.imshow(np.full((THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3), PLACEHOLDER_GREY))
            wrapped = "\n".join(textwrap.wrap(f"unreadable: {cli.printable(reason)}", 22)[:6])
            axis.text(THUMBNAIL_SIZE / 2, THUMBNAIL_SIZE / 2, wrapped, ha="center", va="center", fontsize=6)
        axis.set_axis_on()
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(4)
        axis.set_title(grid_caption(entry, out_of_fold), fontsize=7, color=colour)
    figure.suptitle(title, fontsize=10)
    note = "\n".join(textwrap.wrap(f"Note: {report_evidence_note(report)}.", 150))
    figure.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=7, style="italic")
    legend = figure.legend(
        handles=severity_handles(num_classes), loc="lower center", ncol=len(SEVERITY_COLOURS), fontsize=7
    )
    legend.set_bbox_to_anchor((0.5, 0.035), transform=figure.transFigure)
    figure.tight_layout(rect=(0, 0.08, 1, 0.96))
    return figure


def build_trajectory_figure(plt: Any, entries: Sequence[dict[str, Any]], num_classes: int, title: str) -> Any:
    """Loss per analysis epoch, one line per image, one panel per class; a dashed line marks a uniform guess."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_class.setdefault(entry["class"], []).append(entry)
    figure, axes = plt.subplots(len(by_class), 1, figsize=(8, 3.2 * len(by_class) + 1.0), squeeze=False)
    for axis, (class_name, class_entries) in zip(axes[:, 0], by_class.items()):
        for entry in class_entries:
            severity = severity_of(entry, num_classes)
            axis.plot(
                range(1, len(entry["losses"]) + 1),
                entry["losses"],
                marker="o",
                color=SEVERITY_COLOURS[severity],
                linewidth=2 if severity == "label issue" else 1,
                alpha=0.9,
                label=short_name(entry["path"]),
            )
        if num_classes > 1:
            axis.axhline(math.log(num_classes), color="grey", linestyle="--", linewidth=1)
        axis.set_title(f"{cli.printable(class_name)}: {len(class_entries)} image(s)", fontsize=9)
        axis.set_xlabel("analysis epoch")
        axis.set_ylabel("loss")
        axis.set_xticks(range(1, max(len(entry["losses"]) for entry in class_entries) + 1))
        if len(class_entries) <= TRAJECTORY_LEGEND_MAX_LINES:
            axis.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.suptitle(title, fontsize=10)
    handles = severity_handles(num_classes, with_uniform_line=True)
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    return figure


def save_figure(plt: Any, figure: Any, path: Path) -> None:
    """Write the figure as PNG atomically (ordinary permissions) and close it."""
    try:
        with atomic_write(path, "wb") as handle:
            figure.savefig(handle, format="png", dpi=FIGURE_DPI)
    finally:
        plt.close(figure)


def output_figures(plt: Any, figures: Sequence[Any], save_path: Path | None) -> None:
    """Save the figures to PNG files (printing their paths) when ``save_path`` is given, else show them."""
    if save_path is None:
        plt.show()
        return
    for figure, path in zip(figures, page_paths(save_path, len(figures))):
        save_figure(plt, figure, path)
        print(f"wrote {cli.printable(path)}")


def run_grid(
    entries: Sequence[dict[str, Any]], dataset_dir: Path, report: dict[str, Any], save_path: Path | None
) -> list[str]:
    """Show or save the thumbnail grid; returns one error line per image that could not be read."""
    plt = import_pyplot(headless=save_path is not None)
    errors, figures = [], []
    pages = grid_pages(len(entries), GRID_IMAGES_PER_PAGE)
    for number, page in enumerate(pages, start=1):
        page_entries = [entries[index] for index in page]
        thumbnails = [load_thumbnail(dataset_dir / entry["path"]) for entry in page_entries]
        errors += [f"{entry['path']}: {reason}" for entry, (_, reason) in zip(page_entries, thumbnails) if reason]
        title = f"Flagged training images ({len(entries)}, {report.get('method', '?')})" + (
            f", page {number}/{len(pages)}" if len(pages) > 1 else ""
        )
        figures.append(build_grid_figure(plt, page_entries, thumbnails, report, title))
    output_figures(plt, figures, save_path)
    return errors


def run_trajectory(entries: Sequence[dict[str, Any]], report: dict[str, Any], save_path: Path | None) -> None:
    plt = import_pyplot(headless=save_path is not None)
    title = f"Loss per analysis epoch ({report.get('method', '?')}), {len(entries)} image(s)"
    output_figures(plt, [build_trajectory_figure(plt, entries, len(report["classes"]), title)], save_path)


# ---------------------------------------------------------------------------------------------------------------------
# Interactive review: the terminal, the decisions file, the moves
# ---------------------------------------------------------------------------------------------------------------------


class ImageViewer:
    """A matplotlib window that shows the image under review; only created when a display exists."""

    def __init__(self) -> None:
        self.plt = import_pyplot(headless=False)
        self.plt.ion()
        self.figure, self.axis = self.plt.subplots(figsize=(5, 5))

    def show(self, path: Path, title: str) -> None:
        import classifier  # the one image reader

        self.axis.clear()
        self.axis.set_axis_off()
        try:
            self.axis.imshow(classifier.load_image(path))
        except (OSError, ValueError) as error:
            self.axis.text(0.5, 0.5, f"unreadable: {cli.printable(error)}", ha="center", va="center", wrap=True)
        self.axis.set_title(cli.printable(title), fontsize=9)
        self.plt.pause(0.001)

    def close(self) -> None:
        self.plt.close(self.figure)


def ask(prompt: str) -> str | None:
    """One line from the terminal (or stdin), or None at end of input, which counts as quit."""
    try:
        return input(prompt)
    except EOFError:
        print()
        return None


def load_decisions(path: Path, report_created: Any) -> dict[str, dict[str, Any]]:
    """Earlier decisions for this report (keyed by image path) from the decisions file; {} when there is none."""
    if not path.exists():
        return {}
    try:
        data = read_json(path, "decisions file")
    except ReportError as error:
        LOGGER.warning("%s; starting with no earlier decisions", error)
        return {}
    if not isinstance(data, dict) or data.get("decisions_type") != DECISIONS_TYPE:
        LOGGER.warning("%s is not a decisions file; starting with no earlier decisions", path)
        return {}
    if data.get("report_created") != report_created:
        LOGGER.warning("%s belongs to an older report; starting with no earlier decisions", path)
        return {}
    decisions = data.get("decisions", {})
    return {key: value for key, value in decisions.items() if isinstance(value, dict) and "action" in value}


def write_decisions(
    path: Path, report_path: Path, report: dict[str, Any], decisions: dict[str, dict[str, Any]]
) -> None:
    write_json(
        path,
        {
            "schema_version": DECISIONS_SCHEMA_VERSION,
            "decisions_type": DECISIONS_TYPE,
            "report_path": report_path.as_posix(),
            "report_created": report.get("created"),
            "updated": utc_now(),
            "decisions": decisions,
        },
    )


def dataset_relative(path: Path, dataset_dir: Path) -> PurePosixPath:
    """``path`` relative to the dataset folder when inside it, else absolute (both in POSIX form)."""
    absolute = path.resolve()
    try:
        return PurePosixPath(absolute.relative_to(dataset_dir.resolve()).as_posix())
    except ValueError:
        return PurePosixPath(absolute.as_posix())


def create_move_log_file(trash_dir: Path, dataset_dir: Path) -> Path:
    """Create the trash folder and an empty move log in it with an exclusive create, so no earlier log is overwritten.

    The name is move_log.json, or move_log_1.json, move_log_2.json... when taken (another run into the same folder).
    """
    trash_dir.mkdir(parents=True, exist_ok=True)
    if os.stat(trash_dir).st_dev != os.stat(dataset_dir).st_dev:
        raise ReportError(f"the trash folder {trash_dir} is not on the dataset's filesystem; choose one that is")
    name = PurePosixPath(MOVE_LOG_NAME)
    for number in range(10_000):
        candidate = trash_dir / (name.name if number == 0 else f"{name.stem}_{number}{name.suffix}")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        return candidate
    raise ReportError(f"the trash folder {trash_dir} already holds too many move logs; choose another")


def apply_moves(
    moves: list[dict[str, Any]],
    dataset_dir: Path,
    log_path: Path,
    trash_dir: Path,
    decisions_path: Path | None = None,
) -> list[str]:
    """Carry out the planned moves with os.replace, logging each one; returns one error line per move that failed.

    The log is written before the first move and rewritten after each, so an interrupt leaves every file either
    where it was or where the log says it went (os.replace is atomic), and --undo can put it back. ``log_path``
    should come from create_move_log_file, so it never replaces another run's log.
    """
    trash_dir.mkdir(parents=True, exist_ok=True)
    log = {
        "schema_version": MOVE_LOG_SCHEMA_VERSION,
        "log_type": MOVE_LOG_TYPE,
        "created": utc_now(),
        "dataset_dir": dataset_dir.resolve().as_posix(),
        "trash_dir": trash_dir.resolve().as_posix(),
        "decisions_path": decisions_path.resolve().as_posix() if decisions_path is not None else None,
        "status": "in_progress",
        "moves": moves,
    }
    write_json(log_path, log)
    errors = []
    try:
        for move in moves:
            source = dataset_dir / move["source"]
            if not path_is_present(source):
                move["error"] = "no longer on disk"
                errors.append(f"{move['source']}: no longer on disk, not moved")
                continue
            if move["action"] == "relabel" and not (dataset_dir / move["destination"]).parent.is_dir():
                move["error"] = "target class folder does not exist"
                errors.append(f"{move['source']}: class folder of {move['destination']} does not exist, not moved")
                continue
            destination_rel = unique_destination(
                PurePosixPath(move["destination"]), lambda path: path_is_present(dataset_dir / path)
            )
            move["destination"] = destination_rel.as_posix()
            destination = dataset_dir / destination_rel
            destination.parent.mkdir(parents=True, exist_ok=True)
            write_json(log_path, log)
            os.replace(source, destination)
            move["done"] = True
            write_json(log_path, log)
    except KeyboardInterrupt:
        log["status"] = "interrupted"
        write_json(log_path, log)
        raise
    log["status"] = "complete" if not errors else "complete_with_errors"
    write_json(log_path, log)
    return errors


def undo_moves(log_path: Path) -> tuple[int, list[str]]:
    """Reverse a move log, last move first; returns (files restored, error lines). Running it twice is harmless.

    What is on disk decides, not the log's 'done' marks: a file found at its destination and not at its source is
    moved back; one already at its source is left alone; when both exist nothing is overwritten.
    """
    data = validate_move_log(read_json(log_path, "move log"), log_path)
    dataset_dir = Path(data["dataset_dir"])
    restored, errors = 0, []
    for move in reversed(data["moves"]):
        source, destination = dataset_dir / move["source"], dataset_dir / move["destination"]
        at_source, at_destination = path_is_present(source), path_is_present(destination)
        if at_destination and not at_source:
            source.parent.mkdir(parents=True, exist_ok=True)
            os.replace(destination, source)
            restored += 1
        elif at_destination and at_source:
            errors.append(f"{move['source']}: both it and {move['destination']} exist; left both alone")
            continue
        elif not at_source:
            errors.append(f"{move['source']}: not found at {move['destination']} either")
            continue
        move["done"] = False
        move["undone"] = True
        write_json(log_path, data)
    data["status"] = "undone" if not errors else "undone_with_errors"
    data["undone"] = utc_now()
    write_json(log_path, data)
    back = [move for move in data["moves"] if path_is_present(dataset_dir / move["source"])]
    forget_undone_decisions(data.get("decisions_path"), back, errors)
    return restored, errors


def validate_move_log(data: Any, log_path: Path) -> dict[str, Any]:
    """Check a loaded move log before anything moves; raises ReportError(reason) otherwise.

    Every source must be a relative path inside the recorded dataset folder and every destination inside the dataset
    or the recorded trash folder (which must hold the log), so a tampered or foreign log cannot move files elsewhere.
    """
    if not isinstance(data, dict) or data.get("log_type") != MOVE_LOG_TYPE:
        raise ReportError(f"{log_path} is not a move log written by review_problematic_images.py")
    if data.get("schema_version") != MOVE_LOG_SCHEMA_VERSION:
        raise ReportError(f"the move log {log_path} has schema_version {data.get('schema_version')!r}, not 1")
    for key in ("dataset_dir", "trash_dir"):
        if not isinstance(data.get(key), str) or not Path(data[key]).is_absolute():
            raise ReportError(f"the move log {log_path} has no absolute {key!r}, so it cannot be undone")
    if data.get("decisions_path") is not None and not isinstance(data["decisions_path"], str):
        raise ReportError(f"the move log {log_path} has a 'decisions_path' that is not text")
    if not isinstance(data.get("moves"), list):
        raise ReportError(f"the move log {log_path} has no 'moves' list")
    dataset_dir, trash_dir = Path(data["dataset_dir"]), Path(data["trash_dir"])
    if not is_inside(log_path.parent, trash_dir) or not is_inside(trash_dir, log_path.parent):
        raise ReportError(f"the move log {log_path} is not in the trash folder it records ({trash_dir})")
    for index, move in enumerate(data["moves"]):
        if not isinstance(move, dict) or not all(isinstance(move.get(key), str) for key in ("source", "destination")):
            raise ReportError(f"move {index} of the move log {log_path} lacks a text 'source' or 'destination'")
        source = move["source"]
        if not is_safe_relative(source) or not is_inside(dataset_dir / source, dataset_dir):
            raise ReportError(f"move {index} of the move log {log_path} has source {source!r} outside the dataset")
        destination = dataset_dir / move["destination"]
        if not move["destination"] or not (is_inside(destination, dataset_dir) or is_inside(destination, trash_dir)):
            raise ReportError(
                f"move {index} of the move log {log_path} has destination {move['destination']!r} outside the "
                "dataset and the trash folder"
            )
    return data


def forget_undone_decisions(decisions_path: str | None, moves: Sequence[dict[str, Any]], errors: list[str]) -> None:
    """Drop the decisions of images an undo put back, so a rerun of --mode interactive shows them again.

    Only delete/relabel entries of those images that are unapplied or applied by exactly these moves are dropped;
    the file is rewritten atomically. A missing or unreadable decisions file is left alone (a line says so).
    """
    if not decisions_path or not moves:
        if moves and not decisions_path:
            print("This move log names no decisions file; delete it to review the restored images again.")
        return
    path = Path(decisions_path)
    if not path.exists():
        return
    try:
        data = read_json(path, "decisions file")
    except ReportError as error:
        errors.append(f"{error}; delete it to review the restored images again")
        return
    decisions = data.get("decisions") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("decisions_type") != DECISIONS_TYPE or not isinstance(decisions, dict):
        errors.append(f"{path} is not a decisions file; not updated")
        return
    dropped = 0
    for move in moves:
        decision = decisions.get(move["source"])
        if (
            isinstance(decision, dict)
            and decision.get("action") in {"delete", "relabel"}
            and (not decision.get("applied") or decision.get("moved_to") == move["destination"])
        ):
            del decisions[move["source"]]
            dropped += 1
    if dropped:
        data["updated"] = utc_now()
        write_json(path, data)
        print(f"Dropped {dropped} decision(s) from {path}, so a rerun shows those images again.")


def review_interactively(
    entries: Sequence[dict[str, Any]],
    dataset_dir: Path,
    report_path: Path,
    report: dict[str, Any],
    decisions_path: Path,
    trash_dir: Path,
) -> tuple[list[str], bool]:
    """The interactive pass: a prompt per image, decisions saved as made, then one confirmation before any move.

    Returns (error lines, whether the run was interrupted during the moves).
    """
    decisions = load_decisions(decisions_path, report.get("created"))
    decided_before = sum(1 for entry in entries if entry["path"] in decisions)
    if decided_before:
        print(f"Resuming: {decided_before} image(s) already decided in {decisions_path} (delete it to start over).")
    viewer = ImageViewer() if has_display() else None
    pending = [entry for entry in entries if entry["path"] not in decisions]
    skipped_classes: set[str] = set()
    help_text = (
        "  k = keep, d = delete (to the trash folder), r [CLASS] = relabel (default: the suggested class),\n"
        "  n or Enter = no decision yet, s = skip the rest of this class, q = quit (decisions are kept), ? = help"
    )
    print(help_text)
    try:
        for position, entry in enumerate(pending, start=1):
            if entry["class"] in skipped_classes:
                continue
            split = PurePosixPath(entry["path"]).parts[0]
            targets = [name for name in class_folders(dataset_dir / split) if name != entry["class"]]
            print()
            print(describe_entry(entry, position, len(pending)))
            if viewer is not None:
                viewer.show(dataset_dir / entry["path"], f"{entry['class']} -> {entry.get('suggested_class', '?')}")
            action = None
            while action is None:
                answer = ask("  [k]eep [d]elete [r]elabel CLASS [n]ext [s]kip class [q]uit > ")
                if answer is None:
                    action, target = "quit", None
                    break
                try:
                    action, target = parse_answer(answer, entry, targets)
                except ValueError as error:
                    print(f"  {error}")
                    continue
                if action == "help":
                    print(help_text)
                    action = None
            if action == "quit":
                print("Quitting; decisions so far are kept in", decisions_path)
                break
            if action == "skip_class":
                skipped_classes.add(entry["class"])
                continue
            if action == "next":
                continue
            decisions[entry["path"]] = {"action": action, "class": entry["class"], "decided": utc_now()}
            if target is not None:
                decisions[entry["path"]]["target_class"] = target
            write_decisions(decisions_path, report_path, report, decisions)
    finally:
        if viewer is not None:
            viewer.close()
    return confirm_and_apply(decisions, dataset_dir, report_path, report, decisions_path, trash_dir)


def confirm_and_apply(
    decisions: dict[str, dict[str, Any]],
    dataset_dir: Path,
    report_path: Path,
    report: dict[str, Any],
    decisions_path: Path,
    trash_dir: Path,
) -> tuple[list[str], bool]:
    """List the pending deletions and relabels, ask once, and move the files only on 'y'."""
    to_apply = [
        {"path": path, **decision}
        for path, decision in decisions.items()
        if decision["action"] in {"delete", "relabel"} and not decision.get("applied")
    ]
    if not to_apply:
        print("No deletions or relabels to apply; nothing changed on disk.")
        return [], False
    trash_rel = dataset_relative(trash_dir, dataset_dir)
    moves = plan_moves(to_apply, trash_rel, lambda path: path_is_present(dataset_dir / path))
    print(f"\nPending changes ({len(moves)}):")
    for move in moves:
        print(f"  {move['action']:<8} {move['source']} -> {move['destination']}")
    answer = ask(f"Apply these {len(moves)} change(s) now? [y/N] ")
    if answer is None or answer.strip().lower() not in {"y", "yes"}:
        print(
            f"Nothing changed on disk. Decisions are kept in {decisions_path}; run --mode interactive again to apply."
        )
        return [], False
    log_path = create_move_log_file(trash_dir, dataset_dir)
    interrupted = False
    try:
        errors = apply_moves(moves, dataset_dir, log_path, trash_dir, decisions_path)
    except KeyboardInterrupt:
        interrupted, errors = True, ["interrupted while moving files"]
    moved = [move for move in moves if move["done"]]
    for move in moved:
        decisions[move["source"]]["applied"] = True
        decisions[move["source"]]["moved_to"] = move["destination"]
    write_decisions(decisions_path, report_path, report, decisions)
    print(f"Moved {len(moved)} file(s); move log {log_path}")
    print(f"To undo: python review_problematic_images.py --undo {log_path}")
    return errors, interrupted


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Review the images train_classifier.py --detect-problematic flagged: grid, loss trajectories, "
        "text summary, or keep/delete/relabel interactively (undoable).",
        epilog=cli.EXIT_CODES_HELP,
        add_help=add_help,
    )
    cli.add_report_flag(
        parser,
        f"the trainer's problematic-images report (default: {DEFAULT_REPORT_PATH})",
        aliases=["--report-path"],
        default=DEFAULT_REPORT_PATH,
    )
    parser.add_argument(
        "--dataset-dir",
        default=None,
        help="dataset folder the report's paths are relative to (default: the folder holding the report)",
    )
    parser.add_argument("--mode", choices=MODES, default="grid", help="what to show (default: grid)")
    parser.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="CLASS",
        help="only this class; repeat for several (default: every class in the report)",
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per class (default: all)")
    parser.add_argument(
        "--label-issues-only",
        action="store_true",
        help="only images the confident-learning rule flagged as likely label issues (default: off)",
    )
    parser.add_argument(
        "--save",
        default=None,
        metavar="FILE",
        help="write the grid or trajectory PNG (several pages: FILE_page1.png, ...) or the summary text to FILE "
        "instead of showing it (default: show when a display exists, else write <report>_grid.png / "
        "<report>_trajectory.png next to the report)",
    )
    parser.add_argument(
        "--decisions",
        default=None,
        metavar="FILE",
        help=f"interactive decisions file, rewritten after every answer (default: {DECISIONS_FILE_NAME} next to "
        "the report)",
    )
    parser.add_argument(
        "--trash-dir",
        default=None,
        help=f"where deleted images go, on the dataset's filesystem (default: <dataset>/{TRASH_FOLDER}/review_<time>/)",
    )
    parser.add_argument(
        "--undo",
        default=None,
        metavar="LOG",
        help="reverse the moves recorded in this move log, then exit (default: off)",
    )
    cli.add_output_flags(parser)
    return parser


def default_figure_path(report_path: Path, mode: str) -> Path:
    return report_path.with_name(f"{report_path.stem}_{mode}.png")


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbose)
    cli.set_progress(not args.no_progress)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")

    if args.undo is not None:
        try:
            restored, errors = undo_moves(Path(args.undo))
        except ReportError as error:
            return cli.error(f"{error}.")
        for line in errors:
            LOGGER.warning("%s", cli.printable(line))
        print(f"Restored {restored} file(s) from {args.undo}" + (f"; {len(errors)} problem(s)" if errors else ""))
        return cli.EXIT_PARTIAL if errors else cli.EXIT_OK

    report_path = Path(args.report)
    try:
        report = load_report(report_path)
    except ReportError as error:
        return cli.error(f"{error}.")
    unknown = sorted(set(args.classes or []) - set(report["classes"]))
    if unknown:
        parser.error(f"--class {', '.join(unknown)} is not in the report; choose from: {', '.join(report['classes'])}")
    dataset_dir = Path(args.dataset_dir) if args.dataset_dir else report_path.parent
    if not dataset_dir.is_dir():
        parser.error(f"--dataset-dir {dataset_dir} is not a folder")

    entries = select_entries(report, args.classes, args.label_issues_only)
    entries, notes = split_present(entries, dataset_dir)
    entries = limit_per_class(entries, args.limit)
    for note in notes:
        LOGGER.warning("skipped %s", cli.printable(note))
    errors: list[str] = []
    save_path = Path(args.save) if args.save else None

    if args.mode == "summary":
        text = format_summary(report, entries, report_path.as_posix(), notes)
        sys.stdout.write(text)
        if save_path is not None:
            with atomic_write(save_path, "w") as handle:
                handle.write(text)
            print(f"wrote {cli.printable(save_path)}")
    elif not entries:
        print("No images match the chosen classes and filters; nothing to show.")
    elif args.mode in {"grid", "trajectory"}:
        if save_path is None and not has_display():
            save_path = default_figure_path(report_path, args.mode)
        if args.mode == "grid":
            errors = run_grid(entries, dataset_dir, report, save_path)
        else:
            run_trajectory(entries, report, save_path)
    else:
        decisions_path = Path(args.decisions) if args.decisions else report_path.with_name(DECISIONS_FILE_NAME)
        trash_dir = Path(args.trash_dir) if args.trash_dir else dataset_dir / TRASH_FOLDER / f"review_{utc_stamp()}"
        try:
            errors, interrupted = review_interactively(
                entries, dataset_dir, report_path, report, decisions_path, trash_dir
            )
        except ReportError as error:
            return cli.error(f"{error}.")
        except KeyboardInterrupt:
            print("\nInterrupted; nothing was moved. Decisions so far are kept in", decisions_path, file=sys.stderr)
            return cli.EXIT_INTERRUPTED
        if interrupted:
            print("Interrupted while moving; every file is either moved or in place (see the move log).")
            return cli.EXIT_INTERRUPTED
    for line in errors:
        LOGGER.warning("%s", cli.printable(line))
    return cli.EXIT_PARTIAL if notes or errors else cli.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
