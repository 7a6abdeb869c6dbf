"""Remove the duplicates a detector found, safely: a dry run first, removed files go to the trash, undo always.

Reads any report of detect_duplicates_by_{filesize,phash,embedding}.py, picks what to keep in each group with a
``--strategy``, prints the plan (what goes, what stays, why) and changes nothing unless ``--apply`` is given.

    python data_collection/remove_duplicates.py --report dataset/duplicate_report_phash.json --strategy prefer-train
    python data_collection/remove_duplicates.py --report dataset/duplicate_report_phash.json --strategy prefer-train --apply
    python data_collection/remove_duplicates.py --undo dataset/.trash/remove_duplicates_20261201T101500Z.json

Writes only with --apply, through trash.py (the reviewer's trash too): the removed files under
dataset/.trash/<run id>/ at their relative paths (--delete deletes them for good instead) and the log
dataset/.trash/<run id>.json, which lists every file with its SHA-256 before anything moves. --undo LOG puts
everything back (checked: inside the dataset, same content, nothing overwritten); it also finishes a killed run.
No strategy but --strategy interactive ever removes a file of a label-conflict group (the same picture in two class
folders: only a person can tell which label is right); an embedding report needs --categories or interactive.
"""  # noqa: E501 - the example commands are meant to be pasted whole

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py, duplicate_report.py, fileio.py, trash.py
from removal_plan import (  # noqa: E402 - the strategies themselves (pure; the page previews them too)
    DEFAULT_STRATEGY,
    STRATEGIES,
    GroupPlan,
    StopAsking,
    all_key,
    describe_entry,
    is_label_conflict,
    make_plan,
)

import cli  # noqa: E402 - needs the line above
import duplicate_report as dr  # noqa: E402 - the report's format: categories, validator
import fileio  # noqa: E402
import trash  # noqa: E402

logger = logging.getLogger(__name__)

TOOL = "remove_duplicates.py"  # names the lock holder and the logs (.trash/remove_duplicates_<UTC stamp>.json)


@dataclass
class RunPlan:
    """Everything a run would do: the plan of each usable group, and the groups skipped with the reason."""

    plans: list[GroupPlan]
    skipped: list[tuple[dict[str, Any], str]]


# ----------------------------------------------------------------------------------------------------------------
# Pure functions: which file of a group to keep


def parse_choice(text: str, count: int) -> list[int] | str | None:
    """An interactive answer: 0-based positions to keep, "skip", "quit", "default", or None when invalid."""
    text = text.strip().lower()
    if text == "":
        return "default"
    if text in ("s", "skip"):
        return "skip"
    if text in ("q", "quit"):
        return "quit"
    try:
        numbers = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        return None
    if not numbers or any(not 1 <= number <= count for number in numbers):
        return None
    return sorted({number - 1 for number in numbers})


def format_plan(plans: Sequence[GroupPlan], skipped: Sequence[tuple[dict[str, Any], str]]) -> list[str]:
    """The plan as lines for stdout (file names escaped): every group that changes, skipped groups, label conflicts."""
    show = cli.printable
    lines = []
    for plan in plans:
        if not plan.remove:
            continue
        lines.append(f"group {plan.group_id} ({plan.category}, {dr.CATEGORY_NOTES[plan.category]}):")
        for entry in plan.keep:
            lines.append(f"  keep    {show(entry['path'])}  [{describe_entry(entry)}]")
        for entry, reason in plan.remove:
            lines.append(f"  remove  {show(entry['path'])}  [{describe_entry(entry)}]: {show(reason)}")
        lines.extend(f"  note: {show(note)}" for note in plan.notes)
    for group, reason in skipped:
        lines.append(f"group {group['id']} ({group['category']}) skipped: {show(reason)}")
    conflicts = [plan for plan in plans if plan.is_left_for_user]
    if conflicts:
        lines.append(
            f"{len(conflicts)} label-conflict group{'s' if len(conflicts) != 1 else ''} left for you (the same "
            "picture in two classes; no strategy can know which label is right; decide with --strategy interactive):"
        )
        for plan in conflicts:
            files = ", ".join(f"{show(entry['path'])} ({show(entry['class'])})" for entry in plan.keep)
            lines.append(f"  group {plan.group_id}: {files}")
    return lines


def plan_totals(plans: Sequence[GroupPlan]) -> dict[str, int]:
    removing = [plan for plan in plans if plan.remove]
    return {
        "files_removed": sum(len(plan.remove) for plan in plans),
        "bytes_removed": sum(int(entry.get("size", 0)) for plan in plans for entry, _ in plan.remove),
        "groups_changed": len(removing),
        "files_kept_in_changed_groups": sum(len(plan.keep) for plan in removing),
        "groups_untouched": len(plans) - len(removing),
    }


def format_bytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count / 1e3:.1f} kB"


def normal_path(path: Any) -> str | None:
    """``path`` as one canonical relative POSIX path ("./" and "//" collapsed), or None when it is not a string or
    could leave the dataset folder (absolute, "..", empty)."""
    if not isinstance(path, str) or not fileio.is_safe_relative(path):
        return None
    pure = PurePosixPath(path)
    return pure.as_posix() if pure.parts else None


def normalise_group(group: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(the group with canonical paths and each file listed once, None), or (group, why it cannot be used).

    A report that lists one file under two spellings (a.jpg and ./a.jpg) would otherwise let a strategy keep one
    spelling and remove the other, i.e. remove the only copy.
    """
    files, seen = [], set()
    for entry in group["files"]:
        path = normal_path(entry["path"])
        if path is None or path == ".":
            return group, f"{cli.short_repr(entry['path'])} is not a path inside the dataset"
        if path in seen:
            logger.warning(
                "Group %s lists %s twice (also as %s): counted once",
                group["id"],
                cli.printable(path),
                cli.short_repr(entry["path"]),
            )
            continue
        seen.add(path)
        files.append({**entry, "path": path})
    return {**group, "files": files}, None


def is_embedding_report(report: dict[str, Any]) -> bool:
    return report.get("method") == "embedding"  # duplicate_report's validator allows only its METHODS


# ----------------------------------------------------------------------------------------------------------------
# Disk: checking groups against the report and the dataset


def file_problem(dataset_dir: Path, path: str) -> str | None:
    """Why ``path`` cannot take part in a plan (outside the dataset through a symlinked folder, not a file), or None.

    A symlinked file may be listed (it is read through) but is never removed: see protect_kept_files.
    """
    try:
        full = fileio.resolve_inside(dataset_dir, path)
        if full.is_symlink():
            return None if fileio.is_regular_file(full) else f"{path} is a broken link or does not lead to a file"
        reason = fileio.regular_file_reason(full)
    except fileio.UnsafePathError:
        return f"{path} leads outside the dataset through a symlinked folder: its group is left alone"
    except OSError as error:  # a name too long for the filesystem, a folder not readable
        return f"{cli.shown(path)} cannot be examined ({error.strerror or error})"
    if reason == "does not exist":
        return f"{path} no longer exists (moved or deleted since the report)"
    return f"{path} {reason}" if reason else None


def place_problem(entry: dict[str, Any], dataset_dir: Path) -> str | None:
    """Why the report's "set" or "class" of an entry is not where the file is, or None. Strategies decide by them
    (a label conflict is never removed, prefer-train removes val copies): a report never says what a file is."""
    real_root, full = os.path.realpath(dataset_dir), dataset_dir / entry["path"]
    real = PurePosixPath(Path(os.path.relpath(os.path.realpath(full.parent), real_root)).as_posix(), full.name)
    if dr.is_place_of(entry, PurePosixPath(entry["path"]).parts) or dr.is_place_of(entry, real.parts):
        return None
    claimed = f"set {cli.short_repr(entry['set'])} and class {cli.short_repr(entry['class'])}"
    return f"{cli.short_repr(entry['path'])}: the report's {claimed} do not match its path"


def group_problem(group: dict[str, Any], dataset_dir: Path, seen: set[str]) -> str | None:
    """Why a group cannot be acted on (a file gone or changed since the report, a path outside, a set or class that
    is not the file's), or None."""
    for entry in group["files"]:
        path = entry["path"]  # lexically inside the dataset: normalise_group refused any other
        if path in seen:
            return f"{path} is also in another group of the report"
        problem = file_problem(dataset_dir, path) or place_problem(entry, dataset_dir)
        if problem:
            return problem
        full = dataset_dir / path
        info = full.stat()
        if info.st_size != entry["size"]:
            return f"{path} changed since the report (size {entry['size']} -> {info.st_size})"
        if info.st_mtime_ns != entry["mtime_ns"]:
            if not entry.get("sha256"):
                return f"{path} changed since the report (modified at a different time)"
            try:
                if fileio.sha256_file(full) != entry["sha256"]:
                    return f"{path} changed since the report (different content)"
            except OSError as error:
                return f"{path} cannot be read ({error.strerror or error})"
    return None


def split_groups(
    groups: Sequence[dict[str, Any]], problem_of: Callable[[dict[str, Any]], str | None], desc: str
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """(groups ``problem_of`` finds nothing wrong with, [(group, its problem)]), in order, with a progress bar."""
    good, skipped = [], []
    for group in cli.progress(groups, desc=desc, unit="group"):
        problem = problem_of(group)
        if problem:
            skipped.append((group, problem))
        else:
            good.append(group)
    return good, skipped


def usable_groups(
    groups: Sequence[dict[str, Any]], dataset_dir: Path
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """(groups whose files are all as the report says, [(group, why skipped)]); a file listed in an earlier group
    makes a later group unusable."""
    seen: set[str] = set()

    def problem_of(group: dict[str, Any]) -> str | None:
        problem = group_problem(group, dataset_dir, seen)
        seen.update(entry["path"] for entry in group["files"])
        return problem

    return split_groups(groups, problem_of, "Checking")


def claims_identical(args: argparse.Namespace, report: dict[str, Any]) -> bool:
    """True when the run treats files as byte-identical: --strategy safe, or a report of the file-size detector."""
    return args.strategy == "safe" or report.get("method") == "filesize"


def content_problem(group: dict[str, Any], dataset_dir: Path, is_identical_claimed: bool) -> str | None:
    """Hash every file of ``group`` now (into its "sha256"); why its contents are not what the report (or an earlier
    check) says, or None. A report's "sha256" is never trusted: a wrong one made different files "byte-identical".
    """
    for entry in group["files"]:
        try:
            actual = fileio.sha256_file(dataset_dir / entry["path"])
        except OSError as error:
            return f"cannot read {entry['path']} ({error.strerror or error})"
        if entry.get("sha256") not in (None, "", actual):
            return f"{entry['path']} does not have the content the report gives it (another sha256): not a copy"
        entry["sha256"] = actual
    if is_identical_claimed and len({entry["sha256"] for entry in group["files"]}) > 1:
        return "its files are not byte-identical, as the report says they are: not copies"
    return None


def entry_location(full: Path) -> str:
    """The folder entry that moving or deleting ``full`` acts on: its folders resolved, its own name not followed."""
    return os.path.join(os.path.realpath(full.parent), full.name)


def kept_file_it_is(path: str, kept: Sequence[str], dataset_dir: Path) -> str | None:
    """The kept path that removing ``path`` would take away with it, or None: the same file under another spelling
    (or through a symlinked folder), or the file a kept symlink points to."""
    full = dataset_dir / path
    data = None if full.is_symlink() else os.path.realpath(full)
    for other in kept:
        kept_full = dataset_dir / other
        if entry_location(full) == entry_location(kept_full) or data == os.path.realpath(kept_full):
            return other
    return None


def protect_kept_files(plans: Sequence[GroupPlan], dataset_dir: Path) -> None:
    """Keep a file that is a kept file of its group under another path (or a kept symlink's target), and every
    symlinked file (only regular files are ever removed)."""
    for plan in plans:
        kept = [entry["path"] for entry in plan.keep]
        for entry, reason in list(plan.remove):
            other = kept_file_it_is(entry["path"], kept, dataset_dir)
            is_link = (dataset_dir / entry["path"]).is_symlink()
            if other is not None or is_link:
                plan.remove.remove((entry, reason))
                plan.keep.append(entry)
                kept.append(entry["path"])
                why = "it is a symbolic link" if is_link else f"it is the kept file {other} (or its target) on disk"
                plan.notes.append(f"kept {entry['path']}: {why}")


def ask_keep(
    group: dict[str, Any], suggested: int | None, read: Callable[[str], str] | None = None
) -> list[int] | None:
    """Show a group on stdout and read which files to keep; None keeps all; raises StopAsking on q or end of input.

    A label conflict has no default answer (Enter asks again), whatever ``suggested`` says: only the user knows which
    label is right. ``read`` defaults to ``input`` (looked up at call time).
    """
    read = read or input
    if is_label_conflict(group):
        suggested = None
    print(f"\ngroup {group['id']} ({group['category']}, {dr.CATEGORY_NOTES[group['category']]}):")
    for number, entry in enumerate(group["files"], start=1):
        where = f"{cli.printable(entry['set'])}/{cli.printable(entry['class'])}"
        print(f"  {number}. {cli.printable(entry['path'])}  [{where}, {describe_entry(entry)}]")
    if suggested is None:
        prompt = "Label conflict: keep which (the correctly labelled files)? numbers like 1 or 1,3; no default; "
    else:
        prompt = f"Keep which? numbers like 1 or 1,3; Enter = {suggested + 1}; "
    prompt += "s = skip group; q = stop: "
    while True:
        try:
            answer = parse_choice(read(prompt), len(group["files"]))
        except EOFError:
            raise StopAsking from None
        if answer == "default" and suggested is not None:
            return [suggested]
        if answer == "skip":
            return None
        if answer == "quit":
            raise StopAsking
        if isinstance(answer, list):
            return answer
        if answer == "default":
            print("This group is a label conflict: there is no default; type the numbers of the files to keep, s or q.")
        else:
            print(f"Please type numbers between 1 and {len(group['files'])}, Enter, s or q.")


def make_run_plan(args: argparse.Namespace, report: dict[str, Any], dataset_dir: Path) -> RunPlan:
    """Check every group against the dataset and plan it under ``args.strategy`` (asking, for interactive).

    Changes nothing on disk, so Ctrl-C anywhere in here (a prompt, hashing) leaves the dataset as it was.
    """
    categories = args.categories or dr.CATEGORIES
    groups, skipped = [], []
    for group in dr.iter_groups(report):
        if group["category"] in categories:
            normal, problem = normalise_group(group)
            if problem:
                skipped.append((group, problem))
            else:
                groups.append(normal)
    usable, unusable = usable_groups(groups, dataset_dir)
    skipped += unusable
    if claims_identical(args, report):
        is_filesize = report.get("method") == "filesize"
        usable, not_identical = split_groups(
            usable, lambda group: content_problem(group, dataset_dir, is_filesize), "Hashing"
        )
        skipped += not_identical

    def choose(group: dict[str, Any]) -> list[int] | None:
        return ask_keep(group, group["files"].index(min(group["files"], key=all_key)))

    plans = make_plan(usable, args.strategy, choose if args.strategy == "interactive" else None)
    protect_kept_files(plans, dataset_dir)
    return RunPlan(plans, skipped)


def print_plan(args: argparse.Namespace, report: dict[str, Any], dataset_dir: Path, run_plan: RunPlan) -> None:
    totals = plan_totals(run_plan.plans)
    print(
        f"Plan for {cli.printable(args.report)} ({report['method']}, strategy {args.strategy}), "
        f"dataset {cli.printable(dataset_dir)}:"
    )
    for line in format_plan(run_plan.plans, run_plan.skipped):
        print(line)
    print(
        f"Summary: remove {totals['files_removed']} files ({format_bytes(totals['bytes_removed'])}) from "
        f"{totals['groups_changed']} groups, keeping {totals['files_kept_in_changed_groups']} of their files; "
        f"{totals['groups_untouched']} groups untouched; {len(run_plan.skipped)} groups skipped"
    )


def recheck_contents(plans: Sequence[GroupPlan], dataset_dir: Path) -> list[tuple[dict[str, Any], str]]:
    """Hash the files of every plan that removes something once more, right before acting; a plan whose files no
    longer have the content they were planned with removes nothing. Returns those groups with the reason."""
    changed = []
    for plan in plans:
        files = plan.keep + [entry for entry, _ in plan.remove]
        problem = plan.remove and content_problem({"files": [dict(entry) for entry in files]}, dataset_dir, False)
        if problem:
            plan.keep, plan.remove = files, []
            changed.append(({"id": plan.group_id, "category": plan.category}, f"changed since the plan: {problem}"))
    return changed


def remove(args: argparse.Namespace, report: dict[str, Any], dataset_dir: Path, run_plan: RunPlan) -> int:
    """Log every removal, then carry it out through trash.py (inside the lock); the exit code."""
    if claims_identical(args, report):
        for group, reason in recheck_contents(run_plan.plans, dataset_dir):
            logger.warning("Group %s left alone: %s", group["id"], cli.printable(reason))
            run_plan.skipped.append((group, reason))
    action = "delete" if args.delete else "trash"
    moves = [
        trash.Move(
            entry["path"],
            action=action,
            kept=tuple(kept["path"] for kept in plan.keep),
            note=f"group {plan.group_id} ({plan.category}): {reason}",
            sha256=entry.get("sha256") or None,  # hashed when the plan was checked: the log refuses another content
        )
        for plan in run_plan.plans
        for entry, reason in plan.remove
    ]
    if not moves:
        print("Nothing to remove.")
        return cli.EXIT_PARTIAL
    extra = {
        "report": os.fspath(args.report),
        "report_method": report["method"],
        "strategy": args.strategy,
        "categories": list(args.categories or dr.CATEGORIES),
    }
    log_path = trash.new_log(
        dataset_dir, TOOL, moves, extra, progress=lambda items: cli.progress(items, desc="Hashing", unit="file")
    )
    undo_line = f"Undo with: python data_collection/remove_duplicates.py --undo {cli.printable(log_path)}"
    try:
        result = trash.apply(dataset_dir, log_path, progress=lambda items: cli.progress(items, desc="Removing"))
    except KeyboardInterrupt:
        print(f"Interrupted: the log {cli.printable(log_path)} lists exactly what was moved; --undo puts it back.")
        print(undo_line)
        return cli.EXIT_INTERRUPTED
    for path, reason in result.errors:
        logger.warning("Not removed %s: %s", cli.printable(path), cli.printable(reason))
    run_id = log_path.stem
    where = "Deleted" if args.delete else f"Moved to {cli.printable(dataset_dir / trash.TRASH_FOLDER / run_id)}/:"
    print(f"{where} {len(result.done)} of {len(moves)} files. Log: {cli.printable(log_path)}")
    if not args.delete:
        print(undo_line)
    return cli.EXIT_PARTIAL if result.errors or run_plan.skipped else cli.EXIT_OK


# ----------------------------------------------------------------------------------------------------------------
# Command line


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Remove duplicates listed in a detector report: dry run by default, trash folder, undo.",
        epilog=cli.EXIT_CODES_HELP,
        add_help=add_help,
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    cli.add_report_flag(mode, "a duplicate report of one of the three detectors (default: none)", type=Path)
    mode.add_argument(
        "--undo",
        type=Path,
        metavar="LOG",
        help=f"a log in <dataset>/{trash.TRASH_FOLDER}/ to undo: puts every moved file back (default: none)",
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=DEFAULT_STRATEGY,
        help="which files to keep: safe = only byte-identical copies within one class and set; prefer-train / "
        "prefer-val = remove the val (train) copies of train (val) images; first-alpha, shortest-path, keep-best "
        "(highest resolution, then largest file) = keep one per group; all = keep one per group, a train copy "
        "if any, then the best; interactive = you choose. Label conflicts (one picture in two classes) are only ever "
        "decided by you, in interactive (default: safe)",
    )
    parser.add_argument(
        "--categories",
        nargs="+",
        choices=dr.CATEGORIES,
        default=None,
        metavar="CATEGORY",
        help=f"only act on groups of these categories: {', '.join(dr.CATEGORIES)}; an embedding report needs them "
        "named unless --strategy interactive (default: all four)",
    )
    parser.add_argument(
        "--dataset-dir",
        type=Path,
        default=None,
        help="the dataset folder the report's (or log's) paths are relative to; a report's own 'dataset_dir' must "
        "name the same folder (default: the folder holding the report; for --undo, the dataset whose .trash holds "
        "the log)",
    )
    parser.add_argument("--output", type=Path, default=None, help=argparse.SUPPRESS)  # gone: see run_removal
    parser.add_argument(
        "--apply", action="store_true", help="act on the plan; without it nothing changes (default: off)"
    )
    parser.add_argument("--yes", action="store_true", help="with --apply: do not ask for confirmation (default: off)")
    parser.add_argument(
        "--delete",
        action="store_true",
        help=f"with --apply: delete files for real instead of moving them to <dataset>/{trash.TRASH_FOLDER}/ "
        "(cannot be undone; still logged) (default: off)",
    )
    cli.add_output_flags(parser)
    return parser


def dataset_in_use(args: argparse.Namespace, report: dict[str, Any]) -> Path:
    """The folder named on the command line (--dataset-dir, else the report's own folder), checked against the
    report's 'dataset_dir': a report never chooses the folder it works on. ReportError with a sentence otherwise."""
    dataset_dir = args.dataset_dir if args.dataset_dir is not None else args.report.parent
    if not dataset_dir.is_dir():
        raise fileio.ReportError(f"dataset folder {dataset_dir} does not exist (pass --dataset-dir)")
    recorded = report.get("dataset_dir")
    if recorded and Path(recorded).resolve() != dataset_dir.resolve():
        named = "--dataset-dir" if args.dataset_dir is not None else "the folder holding the report"
        raise fileio.ReportError(
            f"the report {args.report} was made for {cli.shown(recorded)}, not {dataset_dir} ({named}); pass "
            f"--dataset-dir {cli.shown(recorded)} if that is the dataset you mean, or run the detector on "
            f"{dataset_dir}"
        )
    return dataset_dir


def writable_problem(dataset_dir: Path) -> str | None:
    """One sentence when --apply or --undo could not write into the dataset (read-only), else None."""
    for folder in (dataset_dir, dataset_dir / trash.TRASH_FOLDER):
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            return f"{folder} is read-only: files cannot be moved or logged there; nothing was changed"
    return None


def run_removal(args: argparse.Namespace) -> int:
    if args.output is not None:
        return cli.error(
            f"--output is no longer used: the log is always written to <dataset>/{trash.TRASH_FOLDER}/, where --undo "
            "finds it"
        )
    if (args.yes or args.delete) and not args.apply:
        return cli.error("--yes and --delete only make sense with --apply")
    report = dr.load_report(args.report)
    dataset_dir = dataset_in_use(args, report)
    if is_embedding_report(report) and args.strategy != "interactive" and args.categories is None:
        return cli.error(
            f"the report {cli.printable(args.report)} was made by the embedding detector: similar pictures are not "
            f"necessarily copies, so --strategy {args.strategy} needs the categories named explicitly (for example "
            "--categories same_class_and_set) after you have looked at the gallery; or use --strategy interactive"
        )
    if args.apply:
        trash.trash_folder(dataset_dir)  # a symlinked .trash: refused before any work
        reason = writable_problem(dataset_dir)
        if reason:
            return cli.error(reason)
    try:  # Ctrl-C at a prompt or while hashing: nothing has moved yet
        with trash.lock(dataset_dir, TOOL) if args.apply else contextlib.nullcontext():
            run_plan = make_run_plan(args, report, dataset_dir)
            print_plan(args, report, dataset_dir, run_plan)
            partial = cli.EXIT_PARTIAL if run_plan.skipped else cli.EXIT_OK
            count = plan_totals(run_plan.plans)["files_removed"]
            if not args.apply:
                print(
                    f"Dry run: nothing was changed. Add --apply to do it (files go to <dataset>/{trash.TRASH_FOLDER}/;"
                    " --undo restores them)."
                )
                return partial
            if not count:
                print("Nothing to remove.")
                return partial
            folder = cli.printable(dataset_dir / trash.TRASH_FOLDER)
            question = f"Permanently delete {count} files?" if args.delete else f"Move {count} files to {folder}/?"
            if not args.yes and not cli.confirm(question):
                print("Cancelled: nothing was changed.")
                return cli.EXIT_OK
            return remove(args, report, dataset_dir, run_plan)
    except KeyboardInterrupt:
        print("\nInterrupted: nothing was changed.")
        return cli.EXIT_INTERRUPTED


def run_undo(args: argparse.Namespace) -> int:
    log_path = args.undo
    dataset_dir = args.dataset_dir if args.dataset_dir is not None else trash.dataset_of_log(log_path)
    data = trash.load_log(dataset_dir, log_path)  # every refusal as a sentence, before anything changes
    if data["tool"] != trash.tool_stem(TOOL):
        return cli.error(f"{cli.printable(log_path)} was written by {cli.shown(data['tool'])}; undo it with that tool")
    reason = writable_problem(dataset_dir)
    if reason:
        return cli.error(reason)
    try:
        with trash.lock(dataset_dir, TOOL):
            result = trash.undo(dataset_dir, log_path, progress=lambda items: cli.progress(items, desc="Restoring"))
    except KeyboardInterrupt:
        print(f"\nInterrupted: run --undo {cli.printable(log_path)} again to finish; nothing is lost.")
        return cli.EXIT_INTERRUPTED
    if result.is_already_undone:
        print(f"{cli.printable(log_path)}: {trash.ALREADY_UNDONE} (on {result.undone_before}); nothing changed.")
        return cli.EXIT_OK
    for path, problem in result.errors:
        logger.warning("%s: %s", cli.printable(path), cli.printable(problem))
    problems = f"; {len(result.errors)} not restored (see above)" if result.errors else ""
    print(f"Restored {len(result.done)} files into {cli.printable(dataset_dir)}{problems}")
    return cli.EXIT_PARTIAL if result.errors else cli.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cli.apply_output_flags(args)
    try:
        return run_undo(args) if args.undo is not None else run_removal(args)
    except fileio.ReportError as error:  # also trash.TrashError: a held lock, a symlinked trash...
        return cli.error(cli.printable(str(error)))


if __name__ == "__main__":
    raise SystemExit(main())
