"""Review the training images the trainer flagged as mislabelled or problematic, and fix them safely.

Reads the report of ``train_classifier.py --detect-problematic`` and shows the flagged images as a thumbnail grid, as
their loss across the analysis epochs, as text, or one by one in the terminal to keep, delete or relabel each; or
applies a decisions file made elsewhere (the HTML report exports one).

    python review_problematic_images.py                                  # grid of all flagged images
    python review_problematic_images.py --class bird --limit 10 --mode summary
    python review_problematic_images.py --mode interactive               # keep / delete / relabel, then confirm
    python review_problematic_images.py --apply-decisions decisions.json # the same checks, confirm, trash and undo
    python review_problematic_images.py --undo dataset/.trash/review_problematic_images_20261129T012345Z.json

Writes: PNG figures (drawn by review_figures.py; ``--save FILE``, or beside the report when there is no display); in
interactive mode the decisions file (default ``<report folder>/problematic_review_decisions.json``, rewritten after
every answer). The dataset changes only after the pending deletions and relabels are listed and confirmed (or
``--yes``), through trash.py, the one trash of every tool: a lock (a second run on the dataset refuses), a log written
before any move, deleted images kept under ``<dataset>/.trash/<run>/``; ``--undo LOG`` puts every file back (checking
its SHA-256) and drops the restored images' decisions so a rerun shows them again.

Decisions file, a JSON object; only ``schema_version`` (1) and ``decisions`` are required. ``decisions_type``
"problematic_review_decisions"; ``dataset_dir`` the dataset it was made on (refused unless it is the one in use);
``report_path``, ``report_created``, ``updated``: where it came from. ``decisions``: {path relative to the dataset:
{"action": "keep" | "delete" | "relabel", "target_class": the name (never a path) of an existing class folder of the
image's split, relabel only, "sha256": the file's hex SHA-256 when decided (optional; a changed file is refused),
"applied": true once moved, "moved_to": where}}. Every decision is checked before any file moves: one naming a file
outside the dataset (absolute, '..', through a symlinked folder), a class folder that does not exist or a changed file
refuses the whole file in one sentence, nothing moved.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import cli
import fileio
import review_figures  # the grid, trajectory and review-window figures; matplotlib only inside its functions
import trash
from fileio import ReportError, UnsafePathError
from problematic_report import (
    DECISIONS_FILE_NAME,
    DECISIONS_SCHEMA_VERSION,
    DECISIONS_TYPE,
    DEFAULT_NAME,
    is_label_issue,
    is_out_of_fold,
    issue_rank_key,
    issue_word,
    label_probability,
    load_report,
    report_evidence_note,
    suggested_class,
)
from problematic_report import validate_report as validate_report  # re-exported: older callers import it from here
from review_figures import format_number

logger = logging.getLogger(__name__)

TOOL = "review_problematic_images.py"  # how trash.py names this tool's lock, logs and trash folders
DEFAULT_REPORT_PATH = f"dataset/{DEFAULT_NAME}"  # where the trainer writes it by default
ACTIONS = ("keep", "delete", "relabel")  # what a person can decide about an image
MOVING_ACTIONS = ("delete", "relabel")  # the decisions that change the dataset (delete = into the trash, undoable)
OLD_MOVE_LOG_TYPE = "problematic_review_moves"  # this script's own log before trash.py: refused with a sentence
MODES = ("grid", "trajectory", "interactive", "summary")
ANSWERS = {"k": "keep", "d": "delete", "n": "next", "s": "skip_class", "q": "quit", "?": "help", "h": "help"}
ANSWERS |= {"keep": "keep", "delete": "delete", "next": "next", "skip": "skip_class", "quit": "quit", "help": "help"}
HELP_TEXT = (
    "  k = keep, d = delete (to the trash folder), r [CLASS] = relabel (default: the suggested class),\n"
    "  n or Enter = no decision yet, s = skip the rest of this class, q = quit (decisions are kept), ? = help"
)


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions: choosing, describing and planning
# ---------------------------------------------------------------------------------------------------------------------


def select_entries(
    report: dict[str, Any], classes: Sequence[str] | None = None, only_label_issues: bool = False
) -> list[dict[str, Any]]:
    """The report's entries of the chosen classes (all if None), class by class in report order: first the class's
    likely label issues, the most likely mislabelled first (``issue_rank_key``), then (unless ``only_label_issues``)
    its hard examples, highest rank first."""
    selected = []
    for class_name in [name for name in report["classes"] if classes is None or name in classes]:
        entries = report["problematic_images"].get(class_name, [])
        ordered = [entry for _, entry in sorted(enumerate(entries), key=lambda p: (p[1].get("rank", p[0] + 1), p[0]))]
        issues = [entry for entry in ordered if is_label_issue(entry)]
        selected += sorted(issues, key=issue_rank_key)
        selected += [] if only_label_issues else [entry for entry in ordered if not is_label_issue(entry)]
    return selected


def limit_per_class(entries: Iterable[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The first ``limit`` entries of each class, keeping the order; all of them when limit is None."""
    kept, seen = [], {}
    for entry in entries:
        seen[entry["class"]] = seen.get(entry["class"], 0) + 1
        if limit is None or seen[entry["class"]] <= limit:
            kept.append(entry)
    return kept


def summary_mode_text(
    report: dict[str, Any], entries: Sequence[dict[str, Any]], report_path: str, notes: Sequence[str]
) -> str:
    """The text of ``--mode summary``: the report's header, the per-class summary, then one line per chosen image,
    the likely label issues and the hard examples (label probably right; not counted as problems) apart."""
    get, classes = report.get, report["classes"]
    folds = f" ({report['cross_val_folds']} folds)" if get("cross_val_folds") else ""
    lines = [
        f"Problematic images report: {cli.printable(report_path)}",
        f"created {get('created', '?')}, method {get('method', '?')}{folds}, {get('analysis_epochs', '?')} analysis "
        f"epochs, {get('num_images', '?')} train images scored",
        f"Note: {report_evidence_note(report)}.",
        f"classes: {', '.join(cli.printable(name) for name in classes)}",
        "",
        f"{'class':<16} {'images':>7} {'reported':>9} {'label issues':>13} "
        f"{'highest':>9} {'lowest':>9} {'average':>9}   (mean loss per image)",
    ]
    for class_name in classes:
        stats = get("summary_by_class", {}).get(class_name, {})
        counts = [f"{stats.get(key, '-')!s:>{width}}" for key, width in (("count", 7), ("reported", 9))]
        losses = [format_number(stats.get(f"{key}_mean_loss")).rjust(9) for key in ("highest", "lowest", "average")]
        issues = f"{stats.get('label_issues', '-')!s:>13}"
        lines.append(" ".join([f"{cli.printable(class_name):<16}", *counts, issues, *losses]))
    if entries:
        when = "out of fold" if is_out_of_fold(report) else "at the last analysis epoch"
        lines += ["", f"mean loss: mean over the analysis epochs; p(label): probability of the labelled class {when}"]
    for title, section in (
        (f"{issue_word(report).capitalize()} label issues (the evidence prefers another class)",
         [e for e in entries if is_label_issue(e)]),
        ("Hard examples (high loss, label probably right; not counted as problems)",
         [e for e in entries if not is_label_issue(e)]),
    ):  # fmt: skip
        if section:
            lines += ["", f"{title}: {len(section)}"]
        for class_name in dict.fromkeys(entry["class"] for entry in section):
            class_entries = [entry for entry in section if entry["class"] == class_name]
            lines += ["", f"{cli.printable(class_name)}: {len(class_entries)} image(s)"]
            lines.append(
                f"{'rank':>5} {'mean loss':>10} {'p(label)':>9} {'predicted':<12} {'suggested':<12} "
                f"{'loss per epoch':<24} path"
            )
            for entry in class_entries:
                losses = " ".join(format_number(value, 2) for value in entry["losses"])
                lines.append(
                    f"{entry.get('rank', '-')!s:>5} {format_number(entry['mean_loss']):>10} "
                    f"{format_number(label_probability(entry)):>9} "
                    f"{cli.printable(entry.get('predicted_class', '-')):<12} "
                    f"{cli.printable(suggested_class(entry) or '-'):<12} {losses:<24} {cli.printable(entry['path'])}"
                )
                if is_label_issue(entry) and entry.get("label_issue_reason"):
                    lines.append(f"{'':>6}{cli.printable(entry['label_issue_reason'])}")
    if not entries:
        lines += ["", "No images match the chosen classes and filters."]
    if notes:
        lines += ["", f"Skipped {len(notes)} image(s):"] + [f"  {cli.printable(note)}" for note in notes]
    return "\n".join(lines) + "\n"


def describe_entry(entry: dict[str, Any], position: int, total: int, likely: str = "likely") -> str:
    """The lines shown above the interactive prompt for one image: a label issue names the class the evidence
    prefers; a hard example says its label is probably right. ``likely``: "possible" when the check is weak."""
    label, suggested = cli.printable(entry["class"]), suggested_class(entry)
    offer = f", suggested {cli.printable(suggested)}" if suggested is not None else ""
    lines = [
        f"[{position}/{total}] {cli.printable(entry['path'])}",
        f"  class {label} (rank {entry.get('rank', '-')}), predicted {cli.printable(entry.get('predicted_class', '-'))}"
        f", p({label})={format_number(label_probability(entry), 2)}{offer}",
        f"  mean loss {format_number(entry['mean_loss'])} (min {format_number(entry.get('min_loss'))}, "
        f"max {format_number(entry.get('max_loss'))}); per epoch: "
        + " ".join(format_number(value, 2) for value in entry["losses"]),
    ]
    if is_label_issue(entry):
        reason = cli.printable(entry.get("label_issue_reason") or "")
        lines.append(f"  {likely.upper()} LABEL ISSUE: {reason}".rstrip())
    else:
        lines.append("  hard example: high loss, but the label is probably right")
    return "\n".join(lines)


def parse_answer(text: str, entry: dict[str, Any], valid_targets: Sequence[str]) -> tuple[str, str | None]:
    """Turn one typed answer into (action, target class); raises ValueError with a message to show the user.

    Actions: keep, delete, relabel (to a class folder that exists), next (no decision), skip_class, quit, help.
    A bare 'r' relabels to the suggested class.
    """
    words = text.strip().split()
    if not words:
        return "next", None
    if words[0].lower() in ANSWERS:
        return ANSWERS[words[0].lower()], None
    if words[0].lower() not in {"r", "relabel"}:
        raise ValueError(f"unknown answer {cli.printable(text.strip())!r}")
    target = words[1] if len(words) > 1 else suggested_class(entry)
    if not target:
        raise ValueError("say which class: r CLASS")
    if target == entry["class"]:
        raise ValueError(f"the image is already in class {cli.printable(target)!r}")
    if target not in valid_targets:
        choices = ", ".join(cli.printable(name) for name in valid_targets)
        raise ValueError(f"there is no class folder {cli.printable(target)!r} to move it to; choose one of: {choices}")
    return "relabel", target


def validate_decisions(data: Any) -> dict[str, dict[str, Any]]:
    """The ``decisions`` of a loaded decisions file; ReportError naming the first field whose value has the wrong type.

    Only the shape is checked here; whether each path and class can be acted on is ``decision_refusal``'s question.
    """
    if not isinstance(data, dict):
        raise ReportError("it is not a JSON object")
    if data.get("schema_version") != DECISIONS_SCHEMA_VERSION:
        raise ReportError(f"its 'schema_version' is {cli.short_repr(data.get('schema_version'))}; this script reads 1")
    if data.get("decisions_type", DECISIONS_TYPE) != DECISIONS_TYPE:
        raise ReportError(f"its 'decisions_type' is {cli.short_repr(data['decisions_type'])}, not {DECISIONS_TYPE!r}")
    if data.get("dataset_dir") is not None and not isinstance(data["dataset_dir"], str):
        raise ReportError("its 'dataset_dir' is not a path (text)")
    decisions = data.get("decisions")
    if not isinstance(decisions, dict):
        raise ReportError("its 'decisions' is not an object of {image path: decision}")
    for path, decision in decisions.items():
        where = f"the decision for {cli.short_repr(path)}"
        if not isinstance(decision, dict):
            raise ReportError(f"{where} is not an object")
        if decision.get("action") not in ACTIONS:
            raise ReportError(
                f"{where} has 'action' {cli.short_repr(decision.get('action'))}; expected keep, delete or relabel"
            )
        target, sha256 = decision.get("target_class"), decision.get("sha256")
        if decision["action"] == "relabel" and (not isinstance(target, str) or not target):
            raise ReportError(f"{where} is a relabel without a 'target_class' (the name of a class folder)")
        if sha256 is not None and not (isinstance(sha256, str) and trash.SHA256_HEX.fullmatch(sha256.lower())):
            raise ReportError(f"{where} has a 'sha256' that is not 64 hexadecimal digits")
        if not isinstance(decision.get("applied", False), bool):
            raise ReportError(f"{where} has an 'applied' that is not true or false")
        if not isinstance(decision.get("moved_to") or "", str):
            raise ReportError(f"{where} has a 'moved_to' that is not a path (text)")
    return decisions


def pending_decisions(decisions: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The deletions and relabels not applied yet, in the file's order."""
    return [
        (path, item) for path, item in decisions.items() if item["action"] in MOVING_ACTIONS and not item.get("applied")
    ]


def plan_moves(
    pending: Sequence[tuple[str, dict[str, Any]]], is_taken: Callable[[PurePosixPath], bool]
) -> list[trash.Move]:
    """One trash.Move per deletion or relabel, in order; relabel destinations never collide with a file or each other.

    A deletion is trash.py's "trash" action (kept under ``.trash/<run>/<path>``, undoable), never its permanent
    "delete". A relabel goes to ``<split>/<target class>/<name>``, or ``<stem>_1<suffix>``... when that name is taken.
    """
    moves, planned = [], set()
    for path, decision in pending:  # the source stays spelled as in the decisions, which the log's moves are matched to
        if decision["action"] == "delete":
            moves.append(trash.Move(path, action="trash", note="deleted in review"))
            continue
        source = PurePosixPath(path)
        wanted = destination = PurePosixPath(source.parts[0], decision["target_class"], source.name)
        number = 0
        while destination in planned or is_taken(destination):
            number += 1
            destination = wanted.with_name(f"{wanted.stem}_{number}{wanted.suffix}")
        planned.add(destination)
        note = f"relabelled in review to {decision['target_class']}"
        moves.append(trash.Move(path, destination.as_posix(), "relabel", note=note))
    return moves


def format_plan(moves: Sequence[trash.Move]) -> str:
    """The pending changes, one printable line each, shown before the confirmation."""
    lines = [f"Pending changes ({len(moves)}):"]
    for move in moves:
        action, where = ("relabel", move.destination) if move.action == "relabel" else ("delete", ".trash/ (undoable)")
        lines.append(f"  {action:<8} {cli.printable(move.source)} -> {cli.printable(where)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# The dataset on disk: which entries can be shown or moved, which decisions can be carried out, the decisions file
# ---------------------------------------------------------------------------------------------------------------------


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
            path = fileio.resolve_inside(dataset_dir, entry["path"])
        except UnsafePathError as error:
            if movable_only:
                notes.append(f"{error}: it is never moved")
                continue
            path = dataset_dir / entry["path"]
        if os.path.lexists(path):  # a broken symlink too: the grid shows it as unreadable
            present.append(entry)
        else:
            notes.append(f"{entry['path']}: no longer on disk (moved or deleted since the report was written)")
    return present, notes


def relabel_refusal(dataset_dir: Path, path: str, target: str) -> str | None:
    """Why ``path`` cannot be relabelled to ``target``: it must name an existing class folder of the image's split."""
    parts = PurePosixPath(path).parts
    classes = fileio.class_folders(dataset_dir / parts[0]) if len(parts) >= 3 else []
    if target not in classes:  # a name from the folder listing, so never a path such as '../../elsewhere'
        known = ", ".join(cli.printable(name) for name in classes) or "none"
        shown = cli.short_repr(target)
        return f"{path}: target_class {shown} is not a class folder of {parts[0]}/ (classes there: {known})"
    if target == parts[1]:
        return f"{path}: it is already in class {cli.short_repr(target)}"
    try:
        destination = fileio.resolve_inside(dataset_dir, f"{parts[0]}/{target}/{parts[-1]}")
    except UnsafePathError:
        return f"{path}: the class folder {parts[0]}/{target} leads outside the dataset through a symlink"
    if fileio.writable_folder_reason(destination.parent):
        return f"{path}: the class folder {parts[0]}/{target} is read-only"
    return None


def not_a_dataset_image(dataset_dir: Path, path: str, real: Path) -> str | None:
    """Why ``path`` is not an image in a class folder of train/ or val/ (the only files a decision moves), or None.

    So a decisions file cannot trash pipeline_state.json, a report or a model beside the class folders. An image is
    what the trainer and detectors read (classifier.find_image_files): a known extension, or image bytes.
    """
    import classifier  # no torch on import

    parts = PurePosixPath(path).parts
    if len(parts) != 3 or parts[0] not in fileio.SPLITS or parts[1] not in fileio.class_folders(dataset_dir / parts[0]):
        return f"{path} is not in a class folder of train/ or val/: a decision only moves the images there"
    if Path(parts[2]).suffix.lower() not in classifier.IMAGE_EXTENSIONS and not classifier.is_image_file(real):
        return f"{path} is not an image: a decision only moves the images of the class folders"
    return None


def decision_refusal(dataset_dir: Path, path: str, decision: dict[str, Any]) -> str | None:
    """Why ``decision`` about ``path`` cannot be carried out in this dataset now (naming the path), or None.

    Every path is checked, keeps included (a file naming paths outside is trusted for none of them); a deletion or
    relabel also needs a regular file (not a link) in a writable folder, unchanged since it was decided.
    """
    try:
        real = fileio.resolve_inside(dataset_dir, path)
    except UnsafePathError as error:
        return str(error)
    real_trash = (dataset_dir / trash.TRASH_FOLDER).resolve()
    if trash.is_trash_path(PurePosixPath(path).as_posix()) or real.is_relative_to(real_trash):
        return f"{path} lies in the trash folder"
    if decision["action"] not in MOVING_ACTIONS or decision.get("applied"):
        return None
    reason = fileio.regular_file_reason(real)
    if reason:
        return f"{path} {reason}"
    if reason := not_a_dataset_image(dataset_dir, path, real):
        return reason
    if fileio.writable_folder_reason(real.parent):
        return f"{path}: its folder is read-only"
    if decision["action"] == "relabel" and (reason := relabel_refusal(dataset_dir, path, decision["target_class"])):
        return reason
    expected = decision.get("sha256")
    if expected and fileio.sha256_file(real) != expected.lower():
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
        refusals += [reason] if reason else []
    return refusals


def load_decisions_file(path: Path, dataset_dir: Path) -> dict[str, Any]:
    """A decisions file checked for its shape and for the dataset it was made on; else ReportError (one sentence)."""
    data = fileio.read_json(path, "decisions file", fileio.MAX_DECISIONS_BYTES)
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


def write_decisions(
    path: Path, dataset_dir: Path, report_path: Path, report: dict[str, Any], decisions: dict[str, dict[str, Any]]
) -> None:
    fields = {"schema_version": DECISIONS_SCHEMA_VERSION, "decisions_type": DECISIONS_TYPE}
    fields |= {"dataset_dir": str(dataset_dir.resolve()), "report_path": report_path.as_posix()}
    fields |= {"report_created": report.get("created"), "updated": fileio.utc_now(), "decisions": decisions}
    fileio.write_json(path, fields)


def forget_restored_decisions(decisions_path: Any, dataset_dir: Path, restored: dict[str, str]) -> None:
    """Drop the decisions of images an undo put back ({source: where it had gone}), so a rerun shows them again.

    The path comes from the command line (undo_run checks the log agrees); used only when it is a decisions file of
    this dataset; it is never created.
    """
    dropped: list[dict[str, Any]] = []
    if not isinstance(decisions_path, str) or not restored or not Path(decisions_path).is_file():
        return
    try:
        data = load_decisions_file(Path(decisions_path), dataset_dir)
    except ReportError as error:
        logger.warning("%s; delete it to review the restored images again", cli.printable(error))
        return
    decisions = data["decisions"]
    for source, destination in restored.items():  # a later decision about the same path (moved elsewhere) stays
        decision = decisions.get(source, {})
        if decision.get("action") in MOVING_ACTIONS and decision.get("moved_to", destination) == destination:
            dropped.append(decisions.pop(source))
    if dropped:
        fileio.write_json(decisions_path, {**data, "updated": fileio.utc_now()})
        print(f"Dropped {len(dropped)} decision(s) from {cli.printable(decisions_path)}, so a rerun shows them again.")


# ---------------------------------------------------------------------------------------------------------------------
# Acting on decisions: the terminal, the confirmation, the moves through trash.py, and undo
# ---------------------------------------------------------------------------------------------------------------------


def ask(prompt: str) -> str | None:
    """One line from the terminal (or stdin), or None at end of input, which counts as quit."""
    try:
        return input(prompt)
    except EOFError:
        print()
        return None


def ask_about(entry: dict[str, Any], targets: Sequence[str]) -> tuple[str, str | None]:
    """Prompt until the answer about one image is understood; end of input counts as quit."""
    while True:
        answer = ask("  [k]eep [d]elete [r]elabel CLASS [n]ext [s]kip class [q]uit > ")
        if answer is None:
            return "quit", None
        try:
            action, target = parse_answer(answer, entry, targets)
        except ValueError as error:
            print(f"  {error}")
            continue
        if action != "help":
            return action, target
        print(HELP_TEXT)


def decide(
    entries: Sequence[dict[str, Any]],
    dataset_dir: Path,
    decisions: dict[str, dict[str, Any]],
    record: Callable[[dict[str, dict[str, Any]]], None],
    likely: str = "likely",
) -> None:
    """The interactive pass: a prompt per undecided image; ``record(decisions)`` saves them after every answer.
    ``likely``: how a flag is named ("possible" when the report's check is weak)."""
    if decided := sum(1 for entry in entries if entry["path"] in decisions):
        print(f"Resuming: {decided} image(s) already decided (delete the decisions file to start over).")
    viewer = review_figures.ImageViewer() if review_figures.has_display() else None
    pending = [entry for entry in entries if entry["path"] not in decisions]
    skipped_classes: set[str] = set()
    print(HELP_TEXT)
    try:
        for position, entry in enumerate(pending, start=1):
            if entry["class"] in skipped_classes:
                continue
            split = PurePosixPath(entry["path"]).parts[0]
            print(f"\n{describe_entry(entry, position, len(pending), likely)}")
            if viewer is not None:
                viewer.show(dataset_dir / entry["path"], review_figures.title_of(entry))
            targets = [  # only class folders a relabel may move into: not the own class, none leading outside
                c
                for c in fileio.class_folders(dataset_dir / split)
                if c != entry["class"] and fileio.is_inside(dataset_dir / split / c, dataset_dir)
            ]
            action, target = ask_about(entry, targets)
            if action == "quit":
                print("Quitting; the decisions so far are kept.")
                break
            if action == "skip_class":
                skipped_classes.add(entry["class"])
            if action not in ACTIONS:
                continue
            decision = {"action": action, "class": entry["class"], "decided": fileio.utc_now()}
            if action in MOVING_ACTIONS:  # what the person saw: a file changed before the move is refused
                with contextlib.suppress(OSError):  # unreadable: refused with its reason when the moves are checked
                    decision["sha256"] = fileio.sha256_file(dataset_dir / entry["path"])
            decisions[entry["path"]] = decision | ({"target_class": target} if target else {})
            record(decisions)
    finally:
        if viewer is not None:
            viewer.close()


def carry_out(
    decisions: dict[str, dict[str, Any]], dataset_dir: Path, name: str, assume_yes: bool, decisions_path: Path | None
) -> tuple[int, dict[str, str]]:
    """Check every decision, list the changes, ask once (unless ``assume_yes``), then move them through trash.py.

    Runs inside ``trash.lock``. Returns (exit code, {source: destination} of the files moved); nothing moves when any
    decision is refused or the answer is not yes. ``name`` says where the decisions come from, for the messages.
    """
    pending = pending_decisions(decisions)
    if not pending:
        print("No deletions or relabels to apply; nothing changed on disk.")
        return cli.EXIT_OK, {}
    refusals = refused_decisions(dataset_dir, decisions)
    for reason in refusals:
        logger.warning("refused %s", cli.printable(reason))
    if refusals:
        more = f" (and {len(refusals) - 1} more, listed above)" if len(refusals) > 1 else ""
        return cli.error(
            f"{cli.printable(name)} cannot be applied: {cli.printable(refusals[0])}{more}; nothing was moved."
        ), {}
    moves = plan_moves(pending, lambda candidate: os.path.lexists(dataset_dir / candidate))
    print(format_plan(moves))
    if not assume_yes and not cli.confirm(f"Apply these {len(moves)} change(s) now?"):
        print(f"Nothing changed on disk; {cli.printable(name)} keeps the decisions for a later run.")
        return cli.EXIT_OK, {}
    extra = {"decisions_path": str(decisions_path.resolve()) if decisions_path else None, "decisions": name}
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
        logger.warning("not moved %s: %s", cli.printable(move["source"]), cli.printable(move["reason"]))
    print(f"Moved {len(moved)} file(s); log {cli.printable(log_path)}")
    print(f"To undo: python review_problematic_images.py --undo {cli.printable(log_path)}")
    if interrupted:
        print("Interrupted while moving: every file is either moved or in place, as the log says.", file=sys.stderr)
        return cli.EXIT_INTERRUPTED, moved
    return (cli.EXIT_PARTIAL if refused else cli.EXIT_OK), moved


def refuse_read_only(folder: Path, doing: str) -> None:
    """ReportError with one sentence, before any work, when ``folder`` cannot be written."""
    if reason := fileio.writable_folder_reason(folder):
        raise ReportError(f"{reason}; {doing}, so nothing was changed")


def review_interactively(
    entries: Sequence[dict[str, Any]],
    dataset_dir: Path,
    report_path: Path,
    report: dict[str, Any],
    decisions_path: Path,
    assume_yes: bool,
) -> int:
    """--mode interactive: lock the dataset, ask about each image, then carry out the decisions; the exit code."""
    refuse_read_only(dataset_dir, "reviewing moves files in the dataset")
    refuse_read_only(decisions_path.parent, f"reviewing writes {decisions_path.name} there")
    with trash.lock(dataset_dir, TOOL):
        decisions = {}
        if decisions_path.exists():
            try:
                earlier = load_decisions_file(decisions_path, dataset_dir)
            except ReportError as error:
                raise ReportError(f"{error} (delete it to start the review over)") from None
            if earlier.get("report_created") == report.get("created"):
                decisions = earlier["decisions"]
            else:
                logger.warning("%s belongs to another report; starting afresh", cli.printable(decisions_path))

        def record(decisions: dict[str, dict[str, Any]]) -> None:
            write_decisions(decisions_path, dataset_dir, report_path, report, decisions)

        try:
            decide(entries, dataset_dir, decisions, record, issue_word(report))
        except KeyboardInterrupt:
            print(
                f"\nInterrupted; nothing was moved. Decisions so far: {cli.printable(decisions_path)}", file=sys.stderr
            )
            return cli.EXIT_INTERRUPTED
        name = f"the decisions in {decisions_path}"
        code, moved = carry_out(decisions, dataset_dir, name, assume_yes, decisions_path)
        for source, destination in moved.items():
            decisions[source].update(applied=True, moved_to=destination)
        if moved:
            record(decisions)
    return code


def apply_decisions_file(path: Path, dataset_dir: Path, assume_yes: bool) -> int:
    """--apply-decisions: the checks, confirmation, trash and undo of the interactive review; the file is left as it
    is (it may be the HTML report's export)."""
    if not dataset_dir.is_dir():
        raise ReportError(f"the dataset folder {dataset_dir} does not exist; pass --dataset-dir")
    refuse_read_only(dataset_dir, "applying decisions moves files in the dataset")
    data = load_decisions_file(path, dataset_dir)
    with trash.lock(dataset_dir, TOOL):
        return carry_out(data["decisions"], dataset_dir, f"the decisions file {path}", assume_yes, None)[0]


def undo_run(log_path: Path, dataset_dir: Path | None, decisions_path: Path | None) -> int:
    """--undo: put back every file of one of this tool's trash logs, then forget the restored images' decisions in
    ``decisions_path`` (from the command line; default: the dataset's own). The log's record of its decisions file
    only has to agree: a file a log names is never written."""
    try:
        old = fileio.read_json(log_path, "log", fileio.MAX_LOG_BYTES)
    except ReportError:
        old = None  # trash.load_log says what is wrong with it
    if isinstance(old, dict) and old.get("log_type") == OLD_MOVE_LOG_TYPE:
        raise ReportError(
            f"{log_path} is a move log of an older review_problematic_images.py, which this version cannot undo; each "
            "of its 'moves' says where a file came from ('source') and went ('destination'), relative to its "
            "'dataset_dir': move them back by hand"
        )
    dataset_dir = dataset_dir if dataset_dir is not None else trash.dataset_of_log(log_path)
    refuse_read_only(dataset_dir, "undo moves files back into the dataset")
    with trash.lock(dataset_dir, TOOL):
        log = trash.load_log(dataset_dir, log_path)
        if log["tool"] != trash.tool_stem(TOOL):
            raise ReportError(f"{log_path} was written by {cli.shown(log['tool'])}; undo it with that tool")
        try:
            result = trash.undo(dataset_dir, log_path)
        except KeyboardInterrupt:
            print("\nInterrupted; run the same --undo again to finish.", file=sys.stderr)
            return cli.EXIT_INTERRUPTED
    if result.is_already_undone:
        print(f"{cli.printable(log_path)}: {trash.ALREADY_UNDONE} (on {result.undone_before}); nothing changed.")
        return cli.EXIT_OK
    for source, reason in result.errors:
        logger.warning("not restored %s: %s", cli.printable(source), cli.printable(reason))
    restored = {move["source"]: move["destination"] for move in log["moves"] if move["source"] in result.done}
    decisions_path = decisions_path or dataset_dir / DECISIONS_FILE_NAME
    logged = log["extra"].get("decisions_path")
    if isinstance(logged, str) and os.path.realpath(logged) == os.path.realpath(decisions_path):
        forget_restored_decisions(str(decisions_path), dataset_dir, restored)
    elif isinstance(logged, str) and restored:
        logger.warning(
            "decisions of the restored images are kept: this undo updates only %s (--decisions names another file)",
            cli.printable(decisions_path),
        )
    problems = f"; {len(result.errors)} problem(s)" if result.errors else ""
    print(f"Restored {len(result.done)} file(s) from {cli.printable(log_path)}{problems}")
    return cli.EXIT_PARTIAL if result.errors else cli.EXIT_OK


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
    report_help = f"the trainer's problematic-images report (default: <dataset-dir>/{DEFAULT_NAME})"
    cli.add_report_flag(parser, report_help, aliases=["--report-path"], default=None)
    add = parser.add_argument
    add("--dataset-dir", help="the dataset (default: the report's folder; with --undo: the one whose .trash holds LOG)")
    add("--mode", choices=MODES, default="grid", help="what to show (default: grid)")
    add("--class", dest="classes", action="append", metavar="CLASS", help="only this class; repeat (default: all)")
    add("--limit", type=int, help="at most this many images per class (default: all)")
    add(
        "--label-issues-only",
        action="store_true",
        help="only likely label issues, not the hard examples listed after them (default: off)",
    )
    add(
        "--save",
        metavar="FILE",
        help="write the figure (pages: FILE_page1.png, ...) or the summary to FILE (default: show on a display, "
        "else <report>_grid.png / <report>_trajectory.png beside the report)",
    )
    add(
        "--decisions",
        metavar="FILE",
        help=f"interactive decisions file (default: {DECISIONS_FILE_NAME} beside the report)",
    )
    add(
        "--apply-decisions",
        metavar="FILE",
        help="carry out a decisions file (e.g. the HTML report's export): all checked first, then the confirmation, "
        "trash and --undo of --mode interactive (default: off)",
    )
    add("--yes", action="store_true", help="apply without asking for confirmation (default: ask once)")
    add("--undo", metavar="LOG", help="put back what a review moved, from its log in <dataset>/.trash/ (default: off)")
    cli.add_output_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    cli.apply_output_flags(args)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.undo is not None and args.apply_decisions is not None:
        parser.error("--undo and --apply-decisions cannot be combined")
    report_path = Path(args.report or Path(args.dataset_dir or Path(DEFAULT_REPORT_PATH).parent) / DEFAULT_NAME)
    dataset_dir = Path(args.dataset_dir) if args.dataset_dir else report_path.parent
    notes: list[str] = []
    try:
        if args.undo is not None:
            decisions = Path(args.decisions) if args.decisions else None
            if decisions is None and args.report:
                decisions = report_path.with_name(DECISIONS_FILE_NAME)
            return undo_run(Path(args.undo), Path(args.dataset_dir) if args.dataset_dir else None, decisions)
        if args.apply_decisions is not None:
            return apply_decisions_file(Path(args.apply_decisions), dataset_dir, args.yes)
        report = load_report(report_path)
        if unknown := sorted(set(args.classes or []) - set(report["classes"])):
            parser.error(
                f"--class {', '.join(unknown)} is not in the report; choose from: {', '.join(report['classes'])}"
            )
        if not dataset_dir.is_dir():
            parser.error(f"--dataset-dir {dataset_dir} is not a folder")
        entries = select_entries(report, args.classes, args.label_issues_only)
        entries, notes = split_present(entries, dataset_dir, movable_only=args.mode == "interactive")
        entries = limit_per_class(entries, args.limit)
        for note in notes:
            logger.warning("skipped %s", cli.printable(note))
        save_path = Path(args.save) if args.save else None
        if args.mode == "interactive":
            decisions_path = Path(args.decisions) if args.decisions else report_path.with_name(DECISIONS_FILE_NAME)
            code = review_interactively(entries, dataset_dir, report_path, report, decisions_path, args.yes)
        elif args.mode == "summary":
            text = summary_mode_text(report, entries, report_path.as_posix(), notes)
            sys.stdout.write(text)
            if save_path is not None:
                with fileio.atomic_write(save_path, "w") as handle:
                    handle.write(text)
                print(f"wrote {cli.printable(save_path)}")
            code = cli.EXIT_OK
        elif not entries:
            print("No images match the chosen classes and filters; nothing to show.")
            code = cli.EXIT_OK
        else:
            if save_path is None and not review_figures.has_display():
                save_path = report_path.with_name(f"{report_path.stem}_{args.mode}.png")
            errors = review_figures.draw(args.mode, entries, dataset_dir, report, save_path)
            for line in errors:
                logger.warning("%s", cli.printable(line))
            code = cli.EXIT_PARTIAL if errors else cli.EXIT_OK
    except ReportError as error:  # trash.TrashError is one too
        return cli.error(f"{cli.printable(error)}.")
    except OSError as error:  # e.g. --save into a folder that cannot be written: named, with the reason
        return cli.error(f"cannot use {cli.printable(error.filename or '')} ({error.strerror or error}).")
    except KeyboardInterrupt:
        print("\nInterrupted; nothing was moved.", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    return cli.EXIT_PARTIAL if code == cli.EXIT_OK and notes else code


if __name__ == "__main__":
    raise SystemExit(main())
