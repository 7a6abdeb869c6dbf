"""Review the training images the trainer flagged as mislabelled or problematic, and fix them safely.

Reads the report of ``train_classifier.py --detect-problematic`` and shows the flagged images as a thumbnail grid, as
their loss across the analysis epochs, as text, or one by one in the terminal to keep, delete or relabel each; or
applies a decisions file made elsewhere (the HTML report exports one).

    python review_problematic_images.py                                  # grid of all flagged images
    python review_problematic_images.py --class bird --limit 10 --mode summary
    python review_problematic_images.py --mode interactive               # keep / delete / relabel, then confirm
    python review_problematic_images.py --apply-decisions decisions.json # the same checks, confirm, trash and undo
    python review_problematic_images.py --undo dataset/.trash/review_problematic_images_20261129T012345Z.json

Writes: PNG figures (``--save FILE``, or next to the report when there is no display); in interactive mode the
decisions file (default ``<report folder>/problematic_review_decisions.json``, rewritten after every answer). Nothing
in the dataset changes until the pending deletions and relabels are listed and confirmed (or ``--yes``); then they go
through trash.py, the one trash of every tool: a lock (a second run on the dataset refuses), a log written before any
move, deleted images kept under ``<dataset>/.trash/<run>/``, and ``--undo LOG`` puts every file back (checking its
SHA-256) and drops the restored images' decisions so a rerun shows them again.

Decisions file, a JSON object (only ``schema_version`` and ``decisions`` are required):
    schema_version  1
    decisions_type  "problematic_review_decisions"
    dataset_dir     the dataset the decisions were made on (absolute); refused when it is not the dataset in use
    report_path, report_created, updated: where the decisions came from (interactive mode writes them)
    decisions       {relative path: {"action": "keep" | "delete" | "relabel", "target_class": the name of an existing
                    class folder of the image's split (relabel only; a name, never a path), "sha256": the file's hex
                    SHA-256 when it was decided (optional; a file that changed since is refused), "applied": true once
                    moved, "moved_to": where}}
Every decision is checked before any file moves: one that names a file outside the dataset (absolute, '..', through a
symlinked folder), a class folder that does not exist or a file that changed refuses the whole file, nothing moved.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import cli
import trash
from fileio import (
    ReportError,
    UnsafePathError,
    atomic_write,
    class_folders,
    read_json,
    regular_file_reason,
    resolve_inside,
    sha256_file,
    utc_now,
    writable_folder_reason,
    write_json,
)
from problematic_report import DEFAULT_NAME, evidence_note, load_report
from problematic_report import validate_report as validate_report  # re-exported: older callers import it from here

LOGGER = logging.getLogger(__name__)

TOOL = "review_problematic_images.py"  # how trash.py names this tool's lock, logs and trash folders
DEFAULT_REPORT_PATH = f"dataset/{DEFAULT_NAME}"  # where the trainer writes it by default
DECISIONS_FILE_NAME = "problematic_review_decisions.json"  # next to the report, so a rerun finds and resumes it
DECISIONS_SCHEMA_VERSION = 1  # bump when the decisions layout above changes; other versions are refused
DECISIONS_TYPE = "problematic_review_decisions"
ACTIONS = ("keep", "delete", "relabel")  # what a person can decide about an image
MOVING_ACTIONS = ("delete", "relabel")  # the decisions that change the dataset (delete = into the trash, undoable)
OLD_MOVE_LOG_TYPE = "problematic_review_moves"  # this script's own log before trash.py: refused with a sentence
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
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


def validate_decisions(data: Any) -> dict[str, dict[str, Any]]:
    """The ``decisions`` of a loaded decisions file; ReportError naming the first field whose value has the wrong type.

    Only the shape is checked here (a file never trusted); whether each path and class exists is ``decision_refusal``.
    """
    if not isinstance(data, dict):
        raise ReportError("it is not a JSON object")
    if data.get("schema_version") != DECISIONS_SCHEMA_VERSION:
        raise ReportError(f"its 'schema_version' is {data.get('schema_version')!r}; this script reads 1")
    if data.get("decisions_type", DECISIONS_TYPE) != DECISIONS_TYPE:
        raise ReportError(f"its 'decisions_type' is {data['decisions_type']!r}, not {DECISIONS_TYPE!r}")
    if data.get("dataset_dir") is not None and not isinstance(data["dataset_dir"], str):
        raise ReportError("its 'dataset_dir' is not a path (text)")
    decisions = data.get("decisions")
    if not isinstance(decisions, dict):
        raise ReportError("its 'decisions' is not an object of {image path: decision}")
    for path, decision in decisions.items():
        where = f"the decision for {cli.printable(path)!r}"
        if not isinstance(decision, dict):
            raise ReportError(f"{where} is not an object")
        if decision.get("action") not in ACTIONS:
            raise ReportError(f"{where} has 'action' {decision.get('action')!r}; expected keep, delete or relabel")
        target = decision.get("target_class")
        if decision["action"] == "relabel" and (not isinstance(target, str) or not target):
            raise ReportError(f"{where} is a relabel without a 'target_class' (the name of a class folder)")
        if decision.get("sha256") is not None and not (
            isinstance(decision["sha256"], str) and SHA256_HEX.fullmatch(decision["sha256"])
        ):
            raise ReportError(f"{where} has a 'sha256' that is not 64 hexadecimal digits")
        if not isinstance(decision.get("applied", False), bool):
            raise ReportError(f"{where} has an 'applied' that is not true or false")
        if decision.get("moved_to") is not None and not isinstance(decision["moved_to"], str):
            raise ReportError(f"{where} has a 'moved_to' that is not a path (text)")
    return decisions


def pending_decisions(decisions: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The deletions and relabels not applied yet, in the file's order."""
    return [
        (path, decision)
        for path, decision in decisions.items()
        if decision["action"] in MOVING_ACTIONS and not decision.get("applied")
    ]


def unique_destination(destination: PurePosixPath, is_taken: Callable[[PurePosixPath], bool]) -> PurePosixPath:
    """``destination``, or ``stem_1.ext``, ``stem_2.ext``... the first name not taken: a move never overwrites."""
    candidate, number = destination, 1
    while is_taken(candidate):
        candidate = destination.with_name(f"{destination.stem}_{number}{destination.suffix}")
        number += 1
    return candidate


def plan_moves(
    pending: Sequence[tuple[str, dict[str, Any]]], is_taken: Callable[[PurePosixPath], bool]
) -> list[trash.Move]:
    """One trash.Move per deletion or relabel, in order; relabel destinations never collide with a file or each other.

    A deletion is trash.py's "trash" action (kept under ``.trash/<run>/<path>``, undoable), never its permanent
    "delete". A relabel goes to ``<split>/<target class>/<file name>``. ``is_taken`` says whether a path is on disk.
    """
    moves, planned = [], set()
    for path, decision in pending:
        source = PurePosixPath(path)
        if decision["action"] == "delete":
            moves.append(trash.Move(source.as_posix(), action="trash", note="deleted in review"))
            continue
        wanted = PurePosixPath(source.parts[0], decision["target_class"], source.name)
        destination = unique_destination(wanted, lambda candidate: candidate in planned or is_taken(candidate))
        planned.add(destination)
        note = f"relabelled in review to {decision['target_class']}"
        moves.append(trash.Move(source.as_posix(), destination.as_posix(), "relabel", note=note))
    return moves


def format_plan(moves: Sequence[trash.Move]) -> str:
    """The pending changes, one printable line each, shown before the confirmation."""
    lines = [f"Pending changes ({len(moves)}):"]
    for move in moves:
        where = move.destination if move.action == "relabel" else f"{trash.TRASH_FOLDER}/ (undoable)"
        action = "relabel" if move.action == "relabel" else "delete"
        lines.append(f"  {action:<8} {cli.printable(move.source)} -> {cli.printable(where)}")
    return "\n".join(lines)


def grid_pages(count: int, per_page: int) -> list[range]:
    """Index ranges of the grid figures: ``count`` images, at most ``per_page`` a figure."""
    return [range(start, min(start + per_page, count)) for start in range(0, count, per_page)]


def page_paths(path: Path, pages: int) -> list[Path]:
    """``path`` for a single figure, else ``stem_page1.png``, ``stem_page2.png``, ..."""
    if pages <= 1:
        return [path]
    return [path.with_name(f"{path.stem}_page{number}{path.suffix or '.png'}") for number in range(1, pages + 1)]


# ---------------------------------------------------------------------------------------------------------------------
# The dataset on disk: which report entries can be shown or moved, which decisions can be carried out
# ---------------------------------------------------------------------------------------------------------------------


def path_is_present(path: Path) -> bool:
    """True for a file or a symlink (even a broken one, which the grid then shows as unreadable)."""
    return path.exists() or path.is_symlink()


def split_present(
    entries: Sequence[dict[str, Any]], dataset_dir: Path, movable_only: bool = False
) -> tuple[list[dict[str, Any]], list[str]]:
    """Entries whose file is still on disk, and one note per entry skipped (moved or deleted since the report).

    An entry whose folder leads outside the dataset through a symlink is shown (read through, as the trainer reads
    it) but, with ``movable_only``, skipped: no decision on it could ever be carried out.
    """
    present, notes = [], []
    for entry in entries:
        try:
            path = resolve_inside(dataset_dir, entry["path"])
        except UnsafePathError as error:
            if movable_only:
                notes.append(f"{error}: it is never moved")
                continue
            path = dataset_dir / entry["path"]
        if path_is_present(path):
            present.append(entry)
        else:
            notes.append(f"{entry['path']}: no longer on disk (moved or deleted since the report was written)")
    return present, notes


def is_writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def relabel_refusal(dataset_dir: Path, path: str, target: str) -> str | None:
    """Why ``path`` cannot be relabelled to ``target``: it must name an existing class folder of the image's split."""
    parts = PurePosixPath(path).parts
    classes = class_folders(dataset_dir / parts[0]) if len(parts) >= 3 else []
    if target not in classes:  # a name from the folder listing, so never a path such as '../../elsewhere'
        known = ", ".join(cli.printable(name) for name in classes) or "none"
        return f"{path}: target_class {target!r} is not a class folder of {parts[0]}/ (classes there: {known})"
    if target == parts[1]:
        return f"{path}: it is already in class {target!r}"
    try:
        destination = resolve_inside(dataset_dir, f"{parts[0]}/{target}/{parts[-1]}")
    except UnsafePathError:
        return f"{path}: the class folder {parts[0]}/{target} leads outside the dataset through a symlink"
    if not is_writable(destination.parent):
        return f"{path}: the class folder {parts[0]}/{target} is read-only"
    return None


def decision_refusal(dataset_dir: Path, path: str, decision: dict[str, Any]) -> str | None:
    """Why ``decision`` about ``path`` cannot be carried out in this dataset now (naming the path), or None.

    Every path is checked, keeps included (a file that names outside paths is not trusted for any of them); a
    deletion or relabel also needs a regular file in a writable folder, unchanged since it was decided.
    """
    try:
        real = resolve_inside(dataset_dir, path)
    except UnsafePathError as error:
        return str(error)
    if trash.is_trash_path(PurePosixPath(path).as_posix()) or real.is_relative_to(
        (dataset_dir / trash.TRASH_FOLDER).resolve()
    ):
        return f"{path} lies in the trash folder"
    if decision["action"] not in MOVING_ACTIONS or decision.get("applied"):
        return None
    reason = regular_file_reason(real)
    if reason:
        return f"{path} {reason}"
    if not is_writable(real.parent):
        return f"{path}: its folder is read-only"
    if decision["action"] == "relabel":
        reason = relabel_refusal(dataset_dir, path, decision["target_class"])
        if reason:
            return reason
    expected = decision.get("sha256")
    if expected and sha256_file(real) != expected.lower():
        return f"{path} changed since it was decided (its SHA-256 differs)"
    return None


def refused_decisions(dataset_dir: Path, decisions: dict[str, dict[str, Any]]) -> list[str]:
    """One line per decision that cannot be carried out: all are checked before any file moves."""
    refusals = []
    for path, decision in decisions.items():
        try:
            reason = decision_refusal(dataset_dir, path, decision)
        except OSError as error:
            reason = f"{path} cannot be read ({error.strerror or error})"
        if reason:
            refusals.append(reason)
    return refusals


def load_decisions_file(path: Path, dataset_dir: Path) -> dict[str, Any]:
    """A decisions file checked for its shape and for the dataset it was made on; else ReportError (one sentence)."""
    data = read_json(path, "decisions file")
    try:
        validate_decisions(data)
    except ReportError as error:
        raise ReportError(f"the decisions file {path} cannot be used: {error}; nothing was changed") from None
    recorded = data.get("dataset_dir")
    if recorded is not None and Path(recorded).resolve() != dataset_dir.resolve():
        raise ReportError(
            f"the decisions file {path} was made for the dataset {recorded}, not {dataset_dir} (the one in use); "
            f"pass --dataset-dir {recorded} to apply it there"
        )
    return data


def load_earlier_decisions(path: Path, report: dict[str, Any], dataset_dir: Path) -> dict[str, dict[str, Any]]:
    """The decisions already made on this report (keyed by image path); {} when there are none yet."""
    if not path.exists():
        return {}
    try:
        data = load_decisions_file(path, dataset_dir)
    except ReportError as error:
        raise ReportError(f"{error} (delete it to start the review over)") from None
    if data.get("report_created") != report.get("created"):
        LOGGER.warning("%s belongs to another report; starting with no earlier decisions", cli.printable(path))
        return {}
    return data["decisions"]


def write_decisions(
    path: Path, dataset_dir: Path, report_path: Path, report: dict[str, Any], decisions: dict[str, dict[str, Any]]
) -> None:
    write_json(
        path,
        {
            "schema_version": DECISIONS_SCHEMA_VERSION,
            "decisions_type": DECISIONS_TYPE,
            "dataset_dir": str(dataset_dir.resolve()),
            "report_path": report_path.as_posix(),
            "report_created": report.get("created"),
            "updated": utc_now(),
            "decisions": decisions,
        },
    )


def forget_restored_decisions(decisions_path: Any, dataset_dir: Path, restored: dict[str, str]) -> None:
    """Drop the decisions of images an undo put back ({source: where it had gone}), so a rerun shows them again.

    The path comes from a log, so it is used only when it is a decisions file of this dataset; it is never created.
    """
    if not isinstance(decisions_path, str) or not restored:
        return
    path = Path(decisions_path)
    if not path.is_file():
        return
    try:
        data = load_decisions_file(path, dataset_dir)
    except ReportError as error:
        LOGGER.warning("%s; delete it to review the restored images again", cli.printable(error))
        return
    decisions = data["decisions"]
    dropped = [
        source
        for source, destination in restored.items()
        if decisions.get(source, {}).get("action") in MOVING_ACTIONS
        and (not decisions[source].get("applied") or decisions[source].get("moved_to") == destination)
    ]
    for source in dropped:
        del decisions[source]
    if dropped:
        data["updated"] = utc_now()
        write_json(path, data)
        print(f"Dropped {len(dropped)} decision(s) from {cli.printable(path)}, so a rerun shows those images again.")


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
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 2.2, rows * 2.9 + 0.9), squeeze=False)
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
    figure.tight_layout(rect=(0, 0.03, 1, 0.98))
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
        try:
            save_figure(plt, figure, path)
        except OSError as error:
            raise ReportError(f"cannot write {path} ({error.strerror or error}); pass --save FILE elsewhere") from None
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


def decide(
    entries: Sequence[dict[str, Any]],
    dataset_dir: Path,
    record: Callable[[dict[str, dict[str, Any]]], None],
    decisions: dict[str, dict[str, Any]],
) -> None:
    """The interactive pass: a prompt per undecided image; ``record(decisions)`` saves them after every answer."""
    decided_before = sum(1 for entry in entries if entry["path"] in decisions)
    if decided_before:
        print(f"Resuming: {decided_before} image(s) already decided (delete the decisions file to start over).")
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
            action, target = None, None
            while action is None:
                answer = ask("  [k]eep [d]elete [r]elabel CLASS [n]ext [s]kip class [q]uit > ")
                if answer is None:
                    action = "quit"
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
                print("Quitting; the decisions so far are kept.")
                break
            if action == "skip_class":
                skipped_classes.add(entry["class"])
            if action not in ACTIONS:
                continue
            decision = {"action": action, "class": entry["class"], "decided": utc_now()}
            if action in MOVING_ACTIONS:  # what the person saw; a file changed before the move is refused
                decision["sha256"] = sha256_file(dataset_dir / entry["path"])
            if target is not None:
                decision["target_class"] = target
            decisions[entry["path"]] = decision
            record(decisions)
    finally:
        if viewer is not None:
            viewer.close()


def carry_out(
    decisions: dict[str, dict[str, Any]],
    dataset_dir: Path,
    source_name: str,
    assume_yes: bool,
    decisions_path: Path | None = None,
) -> tuple[int, dict[str, str]]:
    """Check every decision, list the changes, ask once (unless ``assume_yes``), then move through trash.py.

    Must run inside ``trash.lock``. Returns (exit code, {source: destination} of the files moved); nothing moves when
    any decision is refused or the answer is not yes.
    """
    pending = pending_decisions(decisions)
    if not pending:
        print("No deletions or relabels to apply; nothing changed on disk.")
        return cli.EXIT_OK, {}
    refusals = refused_decisions(dataset_dir, decisions)
    if refusals:
        for reason in refusals:
            LOGGER.warning("refused %s", cli.printable(reason))
        more = f" (and {len(refusals) - 1} more, listed above)" if len(refusals) > 1 else ""
        first = cli.printable(refusals[0])
        return cli.error(f"{cli.printable(source_name)} cannot be applied: {first}{more}; nothing was moved."), {}
    moves = plan_moves(pending, lambda candidate: os.path.lexists(dataset_dir / candidate))
    print(format_plan(moves))
    if not assume_yes:
        answer = ask(f"Apply these {len(moves)} change(s) now? [y/N] ")
        if answer is None or answer.strip().lower() not in {"y", "yes"}:
            print(f"Nothing changed on disk; {cli.printable(source_name)} keeps the decisions for a later run.")
            return cli.EXIT_OK, {}
    extra = {"decisions_path": str(decisions_path.resolve()) if decisions_path else None, "decisions": source_name}
    log_path = trash.new_log(dataset_dir, TOOL, moves, extra=extra)
    interrupted = False
    try:
        trash.apply(dataset_dir, log_path, progress=lambda items: cli.progress(items, desc="Moving", unit="file"))
    except KeyboardInterrupt:
        interrupted = True
    log = trash.load_log(dataset_dir, log_path)
    moved = {move["source"]: move["destination"] for move in log["moves"] if move["status"] == "done"}
    refused = [move for move in log["moves"] if move["status"] == "refused"]
    for move in refused:
        LOGGER.warning("not moved %s: %s", cli.printable(move["source"]), cli.printable(move["reason"]))
    print(f"Moved {len(moved)} file(s); log {cli.printable(log_path)}")
    print(f"To undo: python review_problematic_images.py --undo {cli.printable(log_path)}")
    if interrupted:
        print("Interrupted while moving: every file is either moved or in place, as the log says.", file=sys.stderr)
        return cli.EXIT_INTERRUPTED, moved
    return (cli.EXIT_PARTIAL if refused else cli.EXIT_OK), moved


def review_interactively(
    entries: Sequence[dict[str, Any]],
    dataset_dir: Path,
    report_path: Path,
    report: dict[str, Any],
    decisions_path: Path,
    assume_yes: bool,
) -> int:
    """Lock the dataset, ask about each image, then carry out the decisions; returns the exit code."""
    reason = writable_folder_reason(dataset_dir) or writable_folder_reason(decisions_path.parent)
    if reason:
        raise ReportError(
            f"{reason}; reviewing moves files there and writes {decisions_path.name}, so nothing was changed"
        )
    with trash.lock(dataset_dir, TOOL):
        decisions = load_earlier_decisions(decisions_path, report, dataset_dir)

        def record(decisions: dict[str, dict[str, Any]]) -> None:
            write_decisions(decisions_path, dataset_dir, report_path, report, decisions)

        try:
            decide(entries, dataset_dir, record, decisions)
        except KeyboardInterrupt:
            print(
                f"\nInterrupted; nothing was moved. Decisions so far: {cli.printable(decisions_path)}", file=sys.stderr
            )
            return cli.EXIT_INTERRUPTED
        code, moved = carry_out(
            decisions, dataset_dir, f"the decisions in {decisions_path}", assume_yes, decisions_path
        )
        for source, destination in moved.items():
            decisions[source].update(applied=True, moved_to=destination)
        if moved:
            record(decisions)
    return code


def apply_decisions_file(path: Path, dataset_dir: Path, assume_yes: bool) -> int:
    """--apply-decisions: the same checks, confirmation, trash and undo as the interactive review; the file is not
    rewritten (it may be the HTML report's export)."""
    if not dataset_dir.is_dir():
        raise ReportError(f"the dataset folder {dataset_dir} does not exist; pass --dataset-dir")
    reason = writable_folder_reason(dataset_dir)
    if reason:
        raise ReportError(f"{reason}; applying decisions moves files in the dataset, so nothing was changed")
    data = load_decisions_file(path, dataset_dir)
    with trash.lock(dataset_dir, TOOL):
        code, _ = carry_out(data["decisions"], dataset_dir, f"the decisions file {path}", assume_yes)
    return code


def undo_run(log_path: Path, dataset_dir: Path | None) -> int:
    """--undo: put back every file of a trash log of this tool, then forget the restored images' decisions."""
    try:
        old = read_json(log_path, "log")
    except ReportError:
        old = None  # trash.load_log says what is wrong with it
    if isinstance(old, dict) and old.get("log_type") == OLD_MOVE_LOG_TYPE:
        raise ReportError(
            f"{log_path} is a move log of an older review_problematic_images.py, which this version cannot undo; each "
            "of its 'moves' says where a file came from ('source') and went ('destination'), relative to its "
            "'dataset_dir': move them back by hand"
        )
    dataset_dir = dataset_dir if dataset_dir is not None else trash.dataset_of_log(log_path)
    reason = writable_folder_reason(dataset_dir)
    if reason:
        raise ReportError(f"{reason}; undo moves files back into the dataset, so nothing was changed")
    with trash.lock(dataset_dir, TOOL):
        log = trash.load_log(dataset_dir, log_path)
        result = trash.undo(dataset_dir, log_path)
    for source, reason in result.errors:
        LOGGER.warning("not restored %s: %s", cli.printable(source), cli.printable(reason))
    restored = {move["source"]: move["destination"] for move in log["moves"] if move["source"] in result.done}
    forget_restored_decisions(log["extra"].get("decisions_path"), dataset_dir, restored)
    problems = f"; {len(result.errors)} problem(s)" if result.errors else ""
    print(f"Restored {len(result.done)} file(s) from {cli.printable(log_path)}{problems}")
    return cli.EXIT_PARTIAL if result.errors else cli.EXIT_OK


def show(
    mode: str,
    entries: Sequence[dict[str, Any]],
    notes: Sequence[str],
    report: dict[str, Any],
    report_path: Path,
    dataset_dir: Path,
    save_path: Path | None,
) -> int:
    """--mode summary, grid or trajectory; returns the exit code."""
    if mode == "summary":
        text = format_summary(report, entries, report_path.as_posix(), notes)
        sys.stdout.write(text)
        if save_path is not None:
            try:
                with atomic_write(save_path, "w") as handle:
                    handle.write(text)
            except OSError as error:
                raise ReportError(f"cannot write {save_path} ({error.strerror or error})") from None
            print(f"wrote {cli.printable(save_path)}")
        return cli.EXIT_OK
    if not entries:
        print("No images match the chosen classes and filters; nothing to show.")
        return cli.EXIT_OK
    if save_path is None and not has_display():
        save_path = report_path.with_name(f"{report_path.stem}_{mode}.png")
    if mode == "trajectory":
        run_trajectory(entries, report, save_path)
        return cli.EXIT_OK
    errors = run_grid(entries, dataset_dir, report, save_path)
    for line in errors:
        LOGGER.warning("%s", cli.printable(line))
    return cli.EXIT_PARTIAL if errors else cli.EXIT_OK


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Review the images train_classifier.py --detect-problematic flagged: grid, loss trajectories, "
        "text summary, or keep/delete/relabel interactively or from a decisions file (undoable).",
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
        help="dataset folder the report's and decisions' paths are relative to (default: the folder holding the "
        "report; for --undo: the dataset whose .trash holds the log)",
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
        "--apply-decisions",
        default=None,
        metavar="FILE",
        help="carry out a decisions file (e.g. exported by the HTML report): every decision checked first, then "
        "the same confirmation, trash and --undo as --mode interactive (default: off)",
    )
    parser.add_argument("--yes", action="store_true", help="apply without asking for confirmation (default: ask once)")
    parser.add_argument(
        "--undo",
        default=None,
        metavar="LOG",
        help="put back every file a review moved, from its trash log in <dataset>/.trash/, then exit (default: off)",
    )
    parser.add_argument("--trash-dir", default=None, help=argparse.SUPPRESS)  # gone: refused with a sentence
    cli.add_output_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbose)
    cli.set_progress(not args.no_progress)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.undo is not None and args.apply_decisions is not None:
        parser.error("--undo and --apply-decisions cannot be combined")
    if args.trash_dir is not None:
        return cli.error(
            f"--trash-dir is no longer used: deleted images go to <dataset>/{trash.TRASH_FOLDER}/<run>/, the one "
            "trash every birdplane tool shares."
        )
    report_path = Path(args.report)
    dataset_dir = Path(args.dataset_dir) if args.dataset_dir else report_path.parent
    try:
        if args.undo is not None:
            return undo_run(Path(args.undo), Path(args.dataset_dir) if args.dataset_dir else None)
        if args.apply_decisions is not None:
            return apply_decisions_file(Path(args.apply_decisions), dataset_dir, args.yes)
        report = load_report(report_path)
        unknown = sorted(set(args.classes or []) - set(report["classes"]))
        if unknown:
            parser.error(
                f"--class {', '.join(unknown)} is not in the report; choose from: {', '.join(report['classes'])}"
            )
        if not dataset_dir.is_dir():
            parser.error(f"--dataset-dir {dataset_dir} is not a folder")
        entries = select_entries(report, args.classes, args.label_issues_only)
        entries, notes = split_present(entries, dataset_dir, movable_only=args.mode == "interactive")
        entries = limit_per_class(entries, args.limit)
        for note in notes:
            LOGGER.warning("skipped %s", cli.printable(note))
        if args.mode == "interactive":
            decisions_path = Path(args.decisions) if args.decisions else report_path.with_name(DECISIONS_FILE_NAME)
            code = review_interactively(entries, dataset_dir, report_path, report, decisions_path, args.yes)
        else:
            save_path = Path(args.save) if args.save else None
            code = show(args.mode, entries, notes, report, report_path, dataset_dir, save_path)
    except ReportError as error:  # trash.TrashError is one too
        return cli.error(f"{cli.printable(error)}.")
    except KeyboardInterrupt:
        print("\nInterrupted; nothing was moved.", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    return cli.EXIT_PARTIAL if code == cli.EXIT_OK and notes else code


if __name__ == "__main__":
    raise SystemExit(main())
