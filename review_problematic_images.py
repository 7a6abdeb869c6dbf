"""Review the training images the trainer flagged as mislabeled or problematic, and fix them safely.

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
import json
import logging
import math
import os
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

LOGGER = logging.getLogger(__name__)

REPORT_SCHEMA_VERSION = 1  # the version of PROBLEMATIC_REPORT.md this script reads
REPORT_TYPE = "problematic_images"  # report_type of the trainer's report; other JSON files are refused by name
DEFAULT_REPORT_PATH = "dataset/problematic_images_report.json"  # where the trainer writes it by default
DECISIONS_FILE_NAME = "problematic_review_decisions.json"  # next to the report, so a rerun finds and resumes it
DECISIONS_SCHEMA_VERSION = 1  # version of the decisions file written here
DECISIONS_TYPE = "problematic_review_decisions"
MOVE_LOG_NAME = "move_log.json"  # inside the trash folder, so the log and the deleted files stay together
MOVE_LOG_MAX_NUMBER = 10_000  # move_log_1.json ... this: a bound on the search for a free name, never reached in use
MOVE_LOG_SCHEMA_VERSION = 1  # version of the move log that --undo reads
MOVE_LOG_TYPE = "problematic_review_moves"
TRASH_FOLDER = ".trash"  # hidden, so the trainer and the duplicate detectors never scan deleted images
MODES = ("grid", "trajectory", "interactive", "summary")
REQUIRED_ENTRY_KEYS = ("path", "class", "mean_loss", "losses")  # what every mode needs from a report entry
THUMBNAIL_SIZE = 160  # pixels of the longer side in the grid: enough to judge a label, small enough for 40 a page
GRID_COLUMNS = 8  # thumbnails per grid row
GRID_IMAGES_PER_PAGE = 48  # more per figure makes the thumbnails too small to judge; extra pages go to more files
TRAJECTORY_LEGEND_MAX_LINES = 12  # above this a legend of file names hides the lines it labels
FIGURE_DPI = 100
INTERRUPTED_EXIT_CODE = 130  # the shell's convention for a process stopped by Ctrl-C
# Severity colours: a likely label issue is the thing to fix first; a loss above ln(number of classes) means the
# model does worse on the image than a uniform guess would; everything else in the report is merely the hardest.
SEVERITY_COLOURS = {"label issue": "#d62728", "worse than chance": "#ff7f0e", "hard": "#bcbd22"}
PLACEHOLDER_GREY = 0.85  # background of a thumbnail that could not be read


class ReportError(ValueError):
    """A report or move log that cannot be used; ``str(error)`` is one sentence saying why and what to do."""


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------------------------


def is_safe_relative_path(path: str) -> bool:
    """True for a relative POSIX path that stays inside the dataset folder (no absolute path, no '..')."""
    pure = PurePosixPath(path)
    return bool(path) and not pure.is_absolute() and ".." not in pure.parts and not path.startswith("\\")


def validate_report(data: Any) -> dict[str, Any]:
    """Check a loaded report against schema version 1 and return it; raises ReportError(reason) otherwise."""
    if not isinstance(data, dict):
        raise ReportError("it is not a JSON object")
    if data.get("report_type") != REPORT_TYPE:
        raise ReportError(f"its report_type is {data.get('report_type')!r}, not {REPORT_TYPE!r}")
    if data.get("schema_version") != REPORT_SCHEMA_VERSION:
        raise ReportError(
            f"it has schema_version {data.get('schema_version')!r} but this script reads version "
            f"{REPORT_SCHEMA_VERSION}; re-run train_classifier.py --detect-problematic to write a current one"
        )
    classes = data.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(name, str) for name in classes):
        raise ReportError("its 'classes' is not a non-empty list of class names")
    per_class = data.get("problematic_images")
    if not isinstance(per_class, dict):
        raise ReportError("it has no 'problematic_images' object")
    for class_name, entries in per_class.items():
        if class_name not in classes:
            raise ReportError(f"'problematic_images' names class {class_name!r}, which is not in 'classes'")
        if not isinstance(entries, list):
            raise ReportError(f"'problematic_images' of class {class_name!r} is not a list")
        for index, entry in enumerate(entries):
            missing = [key for key in REQUIRED_ENTRY_KEYS if not isinstance(entry, dict) or key not in entry]
            if missing:
                raise ReportError(f"entry {index} of class {class_name!r} lacks {', '.join(missing)}")
            if not isinstance(entry["path"], str) or not isinstance(entry["losses"], list):
                raise ReportError(f"entry {index} of class {class_name!r} has a non-text path or non-list losses")
            if not all(isinstance(value, (int, float)) for value in [entry["mean_loss"], *entry["losses"]]):
                raise ReportError(f"entry {index} of class {class_name!r} has a loss that is not a number")
    return data


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


def format_summary(
    report: dict[str, Any], entries: Sequence[dict[str, Any]], report_path: str, notes: Sequence[str]
) -> str:
    """The text of ``--mode summary``: the report's header, the per-class summary and one line per chosen image."""
    classes = report["classes"]
    lines = [
        f"Problematic images report: {report_path}",
        f"created {report.get('created', '?')}, method {report.get('method', '?')}"
        + (f" ({report['cross_val_folds']} folds)" if report.get("cross_val_folds") else "")
        + f", {report.get('analysis_epochs', '?')} analysis epochs"
        + f", {report.get('num_images', '?')} train images scored",
        f"classes: {', '.join(classes)}",
        "",
        f"{'class':<16} {'images':>7} {'reported':>9} {'label issues':>13} "
        f"{'highest':>9} {'lowest':>9} {'average':>9}   (mean loss per image)",
    ]
    for class_name in classes:
        stats = report.get("summary_by_class", {}).get(class_name, {})
        lines.append(
            f"{class_name:<16} {stats.get('count', '-')!s:>7} {stats.get('reported', '-')!s:>9} "
            f"{stats.get('label_issues', '-')!s:>13} {format_number(stats.get('highest_mean_loss')):>9} "
            f"{format_number(stats.get('lowest_mean_loss')):>9} {format_number(stats.get('average_mean_loss')):>9}"
        )
    by_class: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_class.setdefault(entry["class"], []).append(entry)
    for class_name, class_entries in by_class.items():
        lines += ["", f"{class_name}: {len(class_entries)} image(s)"]
        lines.append(
            f"{'rank':>5} {'mean loss':>10} {'p(label)':>9} {'predicted':<12} {'suggested':<12} {'flag':<12} "
            f"{'loss per epoch':<24} path"
        )
        for entry in class_entries:
            losses = " ".join(format_number(value, 2) for value in entry["losses"])
            flag = "LABEL ISSUE" if entry.get("is_label_issue") else ""
            lines.append(
                f"{entry.get('rank', '-')!s:>5} {format_number(entry['mean_loss']):>10} "
                f"{format_number(entry.get('given_label_probability')):>9} "
                f"{str(entry.get('predicted_class', '-')):<12} "
                f"{str(entry.get('suggested_class', '-')):<12} {flag:<12} {losses:<24} {entry['path']}"
            )
            if entry.get("is_label_issue") and entry.get("label_issue_reason"):
                lines.append(f"{'':>6}{entry['label_issue_reason']}")
    if not entries:
        lines += ["", "No images match the chosen classes and filters."]
    if notes:
        lines += ["", f"Skipped {len(notes)} image(s):"] + [f"  {note}" for note in notes]
    return "\n".join(lines) + "\n"


def describe_entry(entry: dict[str, Any], position: int, total: int) -> str:
    """The lines shown above the interactive prompt for one image."""
    losses = " ".join(format_number(value, 2) for value in entry["losses"])
    lines = [
        f"[{position}/{total}] {entry['path']}",
        f"  class {entry['class']} (rank {entry.get('rank', '-')}), predicted {entry.get('predicted_class', '-')}, "
        f"p({entry['class']})={format_number(entry.get('given_label_probability'), 2)}, "
        f"suggested {entry.get('suggested_class', '-')}",
        f"  mean loss {format_number(entry['mean_loss'])} (min {format_number(entry.get('min_loss'))}, "
        f"max {format_number(entry.get('max_loss'))}); per epoch: {losses}",
    ]
    if entry.get("is_label_issue"):
        lines.append(f"  LIKELY LABEL ISSUE: {entry.get('label_issue_reason', '')}".rstrip())
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
    if command in {"k", "keep"}:
        return "keep", None
    if command in {"d", "delete"}:
        return "delete", None
    if command in {"n", "next"}:
        return "next", None
    if command in {"s", "skip"}:
        return "skip_class", None
    if command in {"q", "quit"}:
        return "quit", None
    if command in {"?", "h", "help"}:
        return "help", None
    if command in {"r", "relabel"}:
        target = words[1] if len(words) > 1 else entry.get("suggested_class")
        if not target:
            raise ValueError("say which class: r CLASS")
        if target == entry["class"]:
            raise ValueError(f"the image is already in class {target!r}")
        if target not in valid_targets:
            raise ValueError(
                f"there is no class folder {target!r} to move it to; choose one of: {', '.join(valid_targets)}"
            )
        return "relabel", target
    raise ValueError(f"unknown answer {text.strip()!r}")


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
# Disk, display and terminal
# ---------------------------------------------------------------------------------------------------------------------


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temp file, then os.replace) with classifier.py's writer: never half a file."""
    import classifier  # imported here so --mode summary never loads torch

    classifier.write_json_atomically(path, data)


def read_json(path: Path, what: str) -> Any:
    """Load a JSON file; raises ReportError with one sentence when it is missing, unreadable or not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"the {what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ReportError(f"the {what} {path} cannot be read ({error})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ReportError(
            f"the {what} {path} is not valid JSON (truncated or corrupted? {error.msg} at line {error.lineno})"
        ) from None


def load_report(path: Path) -> dict[str, Any]:
    """Read and validate the report; every failure is a ReportError of one sentence."""
    if not path.exists():
        raise ReportError(
            f"the report {path} does not exist; run train_classifier.py --detect-problematic first "
            "or pass --report-path"
        )
    data = read_json(path, "report")
    try:
        return validate_report(data)
    except ReportError as error:
        raise ReportError(f"the report {path} cannot be used: {error}") from None


def path_is_present(path: Path) -> bool:
    """True for a file or a symlink (even a broken one, which the grid then shows as unreadable)."""
    return path.exists() or path.is_symlink()


def split_present(entries: Sequence[dict[str, Any]], dataset_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Entries whose file is still on disk, and one note per entry skipped (moved, deleted or an unsafe path)."""
    present, notes = [], []
    for entry in entries:
        if not is_safe_relative_path(entry["path"]):
            notes.append(f"{entry['path']}: not a path inside the dataset folder")
        elif not path_is_present(dataset_dir / entry["path"]):
            notes.append(f"{entry['path']}: no longer on disk (moved or deleted since the report was written)")
        else:
            present.append(entry)
    return present, notes


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
    import classifier  # imported here so --mode summary never loads torch

    try:
        image = classifier.load_image(path, draft_size=(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    except (OSError, ValueError) as error:  # classifier.ImageLoadError is a ValueError
        return None, str(error) or type(error).__name__
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return image, None


def severity_legend(plt: Any) -> list[Any]:
    from matplotlib.patches import Patch

    return [Patch(color=colour, label=name) for name, colour in SEVERITY_COLOURS.items()]


def build_grid_figure(
    plt: Any,
    entries: Sequence[dict[str, Any]],
    thumbnails: Sequence[tuple[Any, str | None]],
    num_classes: int,
    title: str,
) -> Any:
    """One grid figure: a thumbnail per image (or a grey placeholder with the reason), framed in its severity colour."""
    import numpy as np

    columns = max(1, min(GRID_COLUMNS, len(entries)))
    rows = max(1, math.ceil(len(entries) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 2.2, rows * 2.7 + 0.8), squeeze=False)
    for axis in axes.flat:
        axis.set_axis_off()
    for axis, entry, (image, reason) in zip(axes.flat, entries, thumbnails):
        colour = SEVERITY_COLOURS[severity_of(entry, num_classes)]
        if image is not None:
            axis.imshow(np.asarray(image))
        else:
            axis.imshow(np.full((THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3), PLACEHOLDER_GREY))
            wrapped = "\n".join(textwrap.wrap(f"unreadable: {reason}", 22)[:6])
            axis.text(THUMBNAIL_SIZE / 2, THUMBNAIL_SIZE / 2, wrapped, ha="center", va="center", fontsize=6)
        axis.set_axis_on()
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(4)
        name = PurePosixPath(entry["path"]).name
        name = name if len(name) <= 24 else name[:21] + "..."
        axis.set_title(
            f"{entry['class']} -> {entry.get('suggested_class', '?')}\n"
            f"loss {float(entry['mean_loss']):.2f}  p={format_number(entry.get('given_label_probability'), 2)}\n{name}",
            fontsize=7,
            color=colour,
        )
    figure.suptitle(title, fontsize=10)
    figure.legend(handles=severity_legend(plt), loc="lower center", ncol=len(SEVERITY_COLOURS), fontsize=7)
    figure.tight_layout(rect=(0, 0.04, 1, 0.96))
    return figure


def build_trajectory_figure(plt: Any, entries: Sequence[dict[str, Any]], num_classes: int, title: str) -> Any:
    """Loss per analysis epoch, one line per image, one panel per class; a dashed line marks a uniform guess."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_class.setdefault(entry["class"], []).append(entry)
    figure, axes = plt.subplots(len(by_class), 1, figsize=(8, 3.2 * len(by_class) + 0.6), squeeze=False)
    for axis, (class_name, class_entries) in zip(axes[:, 0], by_class.items()):
        for entry in class_entries:
            epochs = list(range(1, len(entry["losses"]) + 1))
            severity = severity_of(entry, num_classes)
            axis.plot(
                epochs,
                entry["losses"],
                marker="o",
                color=SEVERITY_COLOURS[severity],
                linewidth=2 if severity == "label issue" else 1,
                alpha=0.9,
                label=PurePosixPath(entry["path"]).name,
            )
        if num_classes > 1:
            axis.axhline(math.log(num_classes), color="grey", linestyle="--", linewidth=1, label="uniform guess")
        axis.set_title(f"{class_name}: {len(class_entries)} image(s)", fontsize=9)
        axis.set_xlabel("analysis epoch")
        axis.set_ylabel("loss")
        longest = max(len(entry["losses"]) for entry in class_entries)
        axis.set_xticks(range(1, longest + 1))
        if len(class_entries) <= TRAJECTORY_LEGEND_MAX_LINES:
            axis.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def save_figure(plt: Any, figure: Any, path: Path) -> None:
    """Write the figure as PNG atomically and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temp_name, format="png", dpi=FIGURE_DPI)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    finally:
        plt.close(figure)


def output_figures(plt: Any, figures: Sequence[Any], save_path: Path | None) -> None:
    """Save the figures to PNG files (printing their paths) when ``save_path`` is given, else show them."""
    if save_path is None:
        plt.show()
        return
    for figure, path in zip(figures, page_paths(save_path, len(figures))):
        save_figure(plt, figure, path)
        print(f"wrote {path}")


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
        title = f"Flagged training images ({len(entries)})" + (
            f", page {number}/{len(pages)}" if len(pages) > 1 else ""
        )
        figures.append(build_grid_figure(plt, page_entries, thumbnails, len(report["classes"]), title))
    output_figures(plt, figures, save_path)
    return errors


def run_trajectory(entries: Sequence[dict[str, Any]], report: dict[str, Any], save_path: Path | None) -> None:
    plt = import_pyplot(headless=save_path is not None)
    title = f"Loss per analysis epoch ({report.get('method', 'in_sample')}), {len(entries)} image(s)"
    output_figures(plt, [build_trajectory_figure(plt, entries, len(report["classes"]), title)], save_path)


class ImageViewer:
    """A matplotlib window that shows the image under review; only created when a display exists."""

    def __init__(self) -> None:
        self.plt = import_pyplot(headless=False)
        self.plt.ion()
        self.figure, self.axis = self.plt.subplots(figsize=(5, 5))

    def show(self, path: Path, title: str) -> None:
        import classifier

        self.axis.clear()
        self.axis.set_axis_off()
        try:
            self.axis.imshow(classifier.load_image(path))
        except (OSError, ValueError) as error:
            self.axis.text(0.5, 0.5, f"unreadable: {error}", ha="center", va="center", wrap=True)
        self.axis.set_title(title, fontsize=9)
        self.plt.pause(0.001)

    def close(self) -> None:
        self.plt.close(self.figure)


def class_folders(dataset_dir: Path, split: str) -> list[str]:
    """The class folders that exist in ``<dataset>/<split>/`` (the only valid relabel targets), sorted."""
    folder = dataset_dir / split
    if not folder.is_dir():
        return []
    return sorted(child.name for child in folder.iterdir() if child.is_dir() and not child.name.startswith("."))


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
    write_json_atomic(
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
    for number in range(MOVE_LOG_MAX_NUMBER + 1):
        candidate = trash_dir / (name.name if number == 0 else f"{name.stem}_{number}{name.suffix}")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        return candidate
    raise ReportError(f"the trash folder {trash_dir} already holds {MOVE_LOG_MAX_NUMBER} move logs; choose another")


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
    write_json_atomic(log_path, log)
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
            write_json_atomic(log_path, log)
            os.replace(source, destination)
            move["done"] = True
            write_json_atomic(log_path, log)
    except KeyboardInterrupt:
        log["status"] = "interrupted"
        write_json_atomic(log_path, log)
        raise
    log["status"] = "complete" if not errors else "complete_with_errors"
    write_json_atomic(log_path, log)
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
        write_json_atomic(log_path, data)
    data["status"] = "undone" if not errors else "undone_with_errors"
    data["undone"] = utc_now()
    write_json_atomic(log_path, data)
    back = [move for move in data["moves"] if path_is_present(dataset_dir / move["source"])]
    forget_undone_decisions(data.get("decisions_path"), back, errors)
    return restored, errors


def is_inside(path: Path, folder: Path) -> bool:
    """True when ``path``, with links and '..' resolved, is ``folder`` or lies below it."""
    return path.resolve().is_relative_to(folder.resolve())


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
        if not is_safe_relative_path(source) or not is_inside(dataset_dir / source, dataset_dir):
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
        write_json_atomic(path, data)
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
            targets = [name for name in class_folders(dataset_dir, split) if name != entry["class"]]
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
        add_help=add_help,
    )
    parser.add_argument(
        "--report-path", default=DEFAULT_REPORT_PATH, help=f"the trainer's report (default: {DEFAULT_REPORT_PATH})"
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
    parser.add_argument("--verbose", action="store_true", help="log more detail on stderr (default: off)")
    return parser


def print_error(error: Exception) -> int:
    """Print a ReportError as one sentence on stderr; returns the exit code 2."""
    message = str(error)
    print(f"error: {message[:1].upper()}{message[1:]}.", file=sys.stderr)
    return 2


def default_figure_path(report_path: Path, mode: str) -> Path:
    return report_path.with_name(f"{report_path.stem}_{mode}.png")


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")

    if args.undo is not None:
        try:
            restored, errors = undo_moves(Path(args.undo))
        except ReportError as error:
            return print_error(error)
        for line in errors:
            LOGGER.warning("%s", line)
        print(f"Restored {restored} file(s) from {args.undo}" + (f"; {len(errors)} problem(s)" if errors else ""))
        return 1 if errors else 0

    report_path = Path(args.report_path)
    try:
        report = load_report(report_path)
    except ReportError as error:
        return print_error(error)
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
        LOGGER.warning("skipped %s", note)
    errors: list[str] = []
    save_path = Path(args.save) if args.save else None

    if args.mode == "summary":
        text = format_summary(report, entries, report_path.as_posix(), notes)
        sys.stdout.write(text)
        if save_path is not None:
            save_path.parent.mkdir(parents=True, exist_ok=True)
            save_path.write_text(text, encoding="utf-8")
            print(f"wrote {save_path}")
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
        stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        trash_dir = Path(args.trash_dir) if args.trash_dir else dataset_dir / TRASH_FOLDER / f"review_{stamp}"
        try:
            errors, interrupted = review_interactively(
                entries, dataset_dir, report_path, report, decisions_path, trash_dir
            )
        except ReportError as error:
            return print_error(error)
        except KeyboardInterrupt:
            print("\nInterrupted; nothing was moved. Decisions so far are kept in", decisions_path, file=sys.stderr)
            return INTERRUPTED_EXIT_CODE
        if interrupted:
            print("Interrupted while moving; every file is either moved or in place (see the move log).")
            return INTERRUPTED_EXIT_CODE
    for line in errors:
        LOGGER.warning("%s", line)
    return 1 if notes or errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
