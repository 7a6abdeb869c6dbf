"""Remove the duplicates a detector found, safely: a dry run first, removed files go to a trash folder, undo always.

Reads any report of detect_duplicates_by_{filesize,phash,embedding}.py, picks what to keep in each group with a
``--strategy``, prints the plan (what goes, what stays, why) and changes nothing unless ``--apply`` is given.

    python data_collection/remove_duplicates.py --report dataset/duplicate_report_phash.json --strategy prefer-train
    python data_collection/remove_duplicates.py --report dataset/duplicate_report_phash.json --strategy prefer-train --apply
    python data_collection/remove_duplicates.py --undo dataset/deletion_log_20261201_101500.json

Writes only with --apply: the removed files under dataset/.trash/<timestamp>/ with their relative paths (--delete
deletes them instead) and dataset/deletion_log_<timestamp>.json, which records each file's action, group, reason
and SHA-256 before anything moves, and each file's status as it moves (a .journal beside it keeps that exact even
after a kill). --undo LOG moves everything back and verifies the hashes; it works on a partial (interrupted) log.
"""  # noqa: E501 - the example commands are meant to be pasted whole

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import errno
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import duplicate_report as dr  # the sibling module (Python puts the script's folder on sys.path)
from tqdm import tqdm

logger = logging.getLogger(__name__)

LOG_SCHEMA_VERSION = 1  # bump when the deletion log layout changes; --undo refuses versions it does not know
LOG_KIND = "deletion_log"
STRATEGIES = ("safe", "prefer-train", "prefer-val", "first-alpha", "shortest-path", "keep-best", "all", "interactive")
DEFAULT_STRATEGY = "safe"  # the only one that cannot remove anything but byte-identical copies
TRAIN_SET, VAL_SET = "train", "val"
TRASH_DIR = ".trash"  # hidden, so the detectors and the trainer never scan it
LOG_PREFIX = "deletion_log_"
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"
CROSS_CLASS = ("diff_class_same_set", "diff_class_diff_set")
STATUS_PENDING, STATUS_MOVED, STATUS_DELETED = "pending", "moved", "deleted"
STATUS_SKIPPED, STATUS_FAILED, STATUS_RESTORED = "skipped", "failed", "restored"


class StopAsking(Exception):
    """The user typed q (or closed stdin) during --strategy interactive: leave the remaining groups as they are."""


@dataclass
class GroupPlan:
    """What to do with one group: the files kept, the files removed with the reason, and notes for the user."""

    group_id: int
    category: str
    keep: list[dict[str, Any]]
    remove: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# Pure functions: which file of a group to keep


def alpha_key(entry: dict[str, Any]) -> tuple:
    return (entry["path"],)


def shortest_path_key(entry: dict[str, Any]) -> tuple:
    return (len(entry["path"]), entry["path"])


def best_key(entry: dict[str, Any]) -> tuple:
    """Highest resolution first, then largest file, then shortest path, then path (smallest key = the file to keep)."""
    pixels = int(entry.get("width", 0)) * int(entry.get("height", 0))
    return (-pixels, -int(entry.get("size", 0)), *shortest_path_key(entry))


def all_key(entry: dict[str, Any]) -> tuple:
    """A train copy if there is one, then the best (as best_key)."""
    return (entry["set"] != TRAIN_SET, *best_key(entry))


KEEP_ONE = {  # strategies that keep exactly one file per group: the smallest key; and why it was chosen
    "first-alpha": (alpha_key, "comes first alphabetically"),
    "shortest-path": (shortest_path_key, "has the shortest path"),
    "keep-best": (best_key, "has the highest resolution (then the largest file)"),
    "all": (all_key, "is the best train copy"),
}


def describe_entry(entry: dict[str, Any]) -> str:
    return f"{entry.get('width', '?')}x{entry.get('height', '?')}, {entry.get('size', '?')} B"


def plan_keep_one(group: dict[str, Any], strategy: str) -> GroupPlan:
    key, why = KEEP_ONE[strategy]
    files = sorted(group["files"], key=key)
    keeper = files[0]
    if strategy == "all" and keeper["set"] != TRAIN_SET:
        why = "is the best copy (there is no train copy)"
    removed = []
    for entry in files[1:]:
        if entry["set"] != keeper["set"] and {entry["set"], keeper["set"]} == {TRAIN_SET, VAL_SET}:
            removed.append((entry, f"{entry['set']} copy of {keeper['set']} image {keeper['path']} (leakage)"))
        else:
            removed.append((entry, f"copy of {keeper['path']}, which {why}"))
    return GroupPlan(group["id"], group["category"], [keeper], removed)


def plan_prefer_set(group: dict[str, Any], preferred: str, other: str) -> GroupPlan:
    """Keep every copy in the preferred set, remove the copies in the other set; groups within one set untouched."""
    kept = [entry for entry in group["files"] if entry["set"] == preferred]
    removed = [entry for entry in group["files"] if entry["set"] == other]
    if not kept or not removed:
        plan = GroupPlan(group["id"], group["category"], list(group["files"]))
        plan.notes.append(f"untouched: no {preferred}/{other} pair in this group")
        return plan
    keeper = min(kept, key=alpha_key)["path"]
    rest = [entry for entry in group["files"] if entry["set"] not in (preferred, other)]
    return GroupPlan(
        group["id"],
        group["category"],
        kept + rest,
        [(entry, f"{other} copy of {preferred} image {keeper} ({TRAIN_SET}/{VAL_SET} leakage)") for entry in removed],
    )


def plan_safe(group: dict[str, Any]) -> GroupPlan:
    """Only byte-identical copies (same "sha256") within the same class and set; of each identical set the shortest
    path stays."""
    plan = GroupPlan(group["id"], group["category"], [])
    if group["category"] != "same_class_and_set":
        plan.keep = list(group["files"])
        plan.notes.append(f"untouched: safe only removes exact copies within one class and set ({group['category']})")
        return plan
    by_hash: dict[str, list[dict[str, Any]]] = {}
    for entry in sorted(group["files"], key=shortest_path_key):  # "a.jpg" stays, "a (1).jpg" goes
        by_hash.setdefault(entry.get("sha256") or f"unknown:{entry['path']}", []).append(entry)
    for copies in by_hash.values():
        plan.keep.append(copies[0])
        plan.remove.extend((entry, f"byte-identical copy of {copies[0]['path']}") for entry in copies[1:])
    if len(by_hash) > 1:
        plan.notes.append("files that are similar but not byte-identical are kept (safe)")
    return plan


def plan_chosen(group: dict[str, Any], chosen: Sequence[int] | None) -> GroupPlan:
    """Keep the files at the 0-based ``chosen`` positions of the group (None: keep all)."""
    files = list(group["files"])
    if chosen is None:
        plan = GroupPlan(group["id"], group["category"], files)
        plan.notes.append("untouched: you kept every file")
        return plan
    keep = [files[index] for index in sorted(set(chosen))]
    names = ", ".join(entry["path"] for entry in keep)
    return GroupPlan(
        group["id"],
        group["category"],
        keep,
        [(entry, f"you chose to keep {names}") for index, entry in enumerate(files) if index not in set(chosen)],
    )


def plan_group(
    group: dict[str, Any], strategy: str, choose: Callable[[dict[str, Any]], Sequence[int] | None] | None = None
) -> GroupPlan:
    """The plan for one group under ``strategy``; never removes every file of the group.

    ``choose`` (interactive only) returns the 0-based positions of the files to keep, or None to keep all.
    """
    if strategy == "safe":
        plan = plan_safe(group)
    elif strategy == "prefer-train":
        plan = plan_prefer_set(group, TRAIN_SET, VAL_SET)
    elif strategy == "prefer-val":
        plan = plan_prefer_set(group, VAL_SET, TRAIN_SET)
    elif strategy in KEEP_ONE:
        plan = plan_keep_one(group, strategy)
    elif strategy == "interactive":
        if choose is None:
            raise ValueError("the interactive strategy needs a choose function")
        plan = plan_chosen(group, choose(group))
    else:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not plan.keep:  # a guard, not a code path: every strategy above keeps at least one file
        raise AssertionError(f"strategy {strategy} would remove every file of group {group['id']}")
    if plan.remove and group["category"] in CROSS_CLASS:
        classes = sorted({entry["class"] for entry in group["files"]})
        plan.notes.append(
            f"WARNING label conflict, not a copy: the same picture is labelled {', '.join(classes)}; "
            "removing a file also removes its label, check which label is right"
        )
    return plan


def keep_all(group: dict[str, Any]) -> None:
    """The interactive choice "keep every file" (after the user stopped answering)."""
    return None


def make_plan(
    groups: Sequence[dict[str, Any]],
    strategy: str,
    choose: Callable[[dict[str, Any]], Sequence[int] | None] | None = None,
) -> list[GroupPlan]:
    """Plans for every group in order; after the user stops an interactive session, the rest stay untouched."""
    plans = []
    for group in groups:
        try:
            plans.append(plan_group(group, strategy, choose))
        except StopAsking:
            choose = keep_all  # the user is done: every remaining group stays as it is
            plans.append(plan_group(group, strategy, choose))
    return plans


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
    """The plan as lines for stdout: every group that changes (and its notes), then the skipped groups."""
    lines = []
    for plan in plans:
        if not plan.remove:
            continue
        lines.append(f"group {plan.group_id} ({plan.category}, {dr.CATEGORY_NOTES[plan.category]}):")
        for entry in plan.keep:
            lines.append(f"  keep    {entry['path']}  [{describe_entry(entry)}]")
        for entry, reason in plan.remove:
            lines.append(f"  remove  {entry['path']}  [{describe_entry(entry)}]: {reason}")
        lines.extend(f"  note: {note}" for note in plan.notes)
    for group, reason in skipped:
        lines.append(f"group {group['id']} ({group['category']}) skipped: {reason}")
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
    if not isinstance(path, str):
        return None
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        return None
    return pure.as_posix()


def normalise_group(group: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(the group with canonical paths and each file listed once, None), or (group, why it cannot be used).

    A report that lists one file under two spellings (a.jpg and ./a.jpg) would otherwise let a strategy keep one
    spelling and remove the other, i.e. remove the only copy.
    """
    files, seen = [], set()
    for entry in group["files"]:
        path = normal_path(entry["path"])
        if path is None:
            return group, f"{entry['path']!r} is not a path inside the dataset"
        if path in seen:
            logger.warning("Group %s lists %s twice (also as %r): counted once", group["id"], path, entry["path"])
            continue
        seen.add(path)
        files.append({**entry, "path": path})
    return {**group, "files": files}, None


def is_inside(relative: str) -> bool:
    """True for a relative POSIX path that stays inside the dataset folder (no absolute path, no '..')."""
    parts = Path(relative).parts
    return bool(parts) and not Path(relative).is_absolute() and ".." not in parts and not relative.startswith("/")


# ----------------------------------------------------------------------------------------------------------------
# Disk: checking groups against the report, the deletion log, moving and restoring


def group_problem(group: dict[str, Any], dataset_dir: Path, seen: set[str]) -> str | None:
    """Why a group cannot be acted on (a file gone or changed since the report, a path outside), or None."""
    for entry in group["files"]:
        path = entry["path"]
        if not isinstance(path, str) or not is_inside(path):
            return f"{path!r} is not a path inside the dataset"
        if path in seen:
            return f"{path} is also in another group of the report"
        full = dataset_dir / path
        if not full.exists():
            return f"{path} no longer exists (moved or deleted since the report)"
        stat = full.stat()
        if stat.st_size != entry["size"]:
            return f"{path} changed since the report (size {entry['size']} -> {stat.st_size})"
        if stat.st_mtime_ns != entry["mtime_ns"]:
            if not entry.get("sha256"):
                return f"{path} changed since the report (modified at a different time)"
            try:
                if dr.sha256_file(full) != entry["sha256"]:
                    return f"{path} changed since the report (different content)"
            except OSError as error:
                return f"{path} cannot be read ({error.strerror or error})"
    return None


def usable_groups(
    groups: Sequence[dict[str, Any]], dataset_dir: Path
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """(groups whose files are all as the report says, [(group, why skipped)])."""
    usable, skipped, seen = [], [], set()
    for group in groups:
        problem = group_problem(group, dataset_dir, seen)
        if problem:
            skipped.append((group, problem))
        else:
            usable.append(group)
        seen.update(entry["path"] for entry in group["files"] if isinstance(entry.get("path"), str))
    return usable, skipped


def add_content_hashes(groups: Sequence[dict[str, Any]], dataset_dir: Path) -> list[tuple[dict[str, Any], str]]:
    """Fill in "sha256" where a report has none (safe needs it); groups that cannot be read are returned."""
    unreadable = []
    for group in groups:
        try:
            for entry in group["files"]:
                if not entry.get("sha256"):
                    entry["sha256"] = dr.sha256_file(dataset_dir / entry["path"])
        except OSError as error:
            unreadable.append((group, f"cannot read {entry['path']} ({error.strerror or error})"))
    return unreadable


def entry_location(full: Path) -> str:
    """The folder entry that moving or deleting ``full`` acts on: its folders resolved, its own name not followed."""
    return os.path.join(os.path.realpath(full.parent), full.name)


def kept_file_it_is(path: str, kept: Sequence[str], dataset_dir: Path) -> str | None:
    """The kept path that removing ``path`` would take away with it, or None: the same file under another spelling
    (or through a symlinked folder), or the file a kept symlink points to. Removing a symlink itself is harmless."""
    full = dataset_dir / path
    data = None if full.is_symlink() else os.path.realpath(full)
    for other in kept:
        kept_full = dataset_dir / other
        if entry_location(full) == entry_location(kept_full) or data == os.path.realpath(kept_full):
            return other
    return None


def protect_kept_files(plans: Sequence[GroupPlan], dataset_dir: Path) -> None:
    """Keep a file that is a kept file of its group under another path (or a kept symlink's target)."""
    for plan in plans:
        kept = [entry["path"] for entry in plan.keep]
        for entry, reason in list(plan.remove):
            other = kept_file_it_is(entry["path"], kept, dataset_dir)
            if other is not None:
                plan.remove.remove((entry, reason))
                plan.keep.append(entry)
                plan.notes.append(f"kept {entry['path']}: it is the kept file {other} (or its target) on disk")


def ask_keep(group: dict[str, Any], suggested: int, read: Callable[[str], str] | None = None) -> list[int] | None:
    """Show a group on stdout and read which files to keep; None keeps all; raises StopAsking on q or end of input.

    ``read`` defaults to ``input`` (looked up at call time).
    """
    read = read or input
    print(f"\ngroup {group['id']} ({group['category']}, {dr.CATEGORY_NOTES[group['category']]}):")
    for number, entry in enumerate(group["files"], start=1):
        print(f"  {number}. {entry['path']}  [{entry['set']}/{entry['class']}, {describe_entry(entry)}]")
    prompt = f"Keep which? numbers like 1 or 1,3; Enter = {suggested + 1}; s = skip group; q = stop: "
    while True:
        try:
            answer = parse_choice(read(prompt), len(group["files"]))
        except EOFError:
            raise StopAsking from None
        if answer == "default":
            return [suggested]
        if answer == "skip":
            return None
        if answer == "quit":
            raise StopAsking
        if answer is not None:
            return answer
        print(f"Please type numbers between 1 and {len(group['files'])}, Enter, s or q.")


def new_run_id(dataset_dir: Path) -> str:
    """A timestamp no earlier run in this dataset used (a suffix is added within the same second)."""
    stamp = dt.datetime.now().strftime(TIMESTAMP_FORMAT)
    run_id, counter = stamp, 1
    while (dataset_dir / f"{LOG_PREFIX}{run_id}.json").exists() or (dataset_dir / TRASH_DIR / run_id).exists():
        counter += 1
        run_id = f"{stamp}_{counter}"
    return run_id


def journal_path(log_path: Path) -> Path:
    return log_path.with_suffix(".journal")


def build_log(
    plans: Sequence[GroupPlan], dataset_dir: Path, run_id: str, args: argparse.Namespace, report: dict[str, Any]
) -> dict[str, Any]:
    """The deletion log, every entry "pending" with its SHA-256 (read now); unreadable files become "skipped"."""
    trash_root = f"{TRASH_DIR}/{run_id}"
    entries = []
    progress = tqdm(total=sum(len(plan.remove) for plan in plans), desc="Hashing", unit="file", file=sys.stderr)
    for plan in plans:
        kept = [entry["path"] for entry in plan.keep]
        for entry, reason in plan.remove:
            progress.update()
            record = {
                "path": entry["path"],
                "action": "delete" if args.delete else "trash",
                "trash_path": None if args.delete else f"{trash_root}/{entry['path']}",
                "group_id": plan.group_id,
                "category": plan.category,
                "reason": reason,
                "kept": kept,
                "size": entry["size"],
                "sha256": None,
                "status": STATUS_PENDING,
            }
            try:
                record["sha256"] = dr.sha256_file(dataset_dir / entry["path"])
            except OSError as error:
                record.update(status=STATUS_SKIPPED, note=f"cannot read it ({error.strerror or error})")
            entries.append(record)
    progress.close()
    return {
        "schema_version": LOG_SCHEMA_VERSION,
        "kind": LOG_KIND,
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "dataset_dir": str(dataset_dir.resolve()),
        "report": str(args.report),
        "report_method": report.get("method"),
        "strategy": args.strategy,
        "trash_dir": None if args.delete else trash_root,
        "finished": False,
        "entries": entries,
    }


def move_file(source: Path, destination: Path) -> None:
    """Rename ``source`` to ``destination`` (a symlink moves as a link), creating folders; never overwrites."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(destination):
        raise FileExistsError(errno.EEXIST, "the destination already exists", str(destination))
    try:
        os.rename(source, destination)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        shutil.move(str(source), str(destination))  # another file system: copy, then delete


def remove_one(record: dict[str, Any], dataset_dir: Path) -> tuple[str, str | None]:
    """Carry out one log entry: (new status, note). Re-checks the file and its kept copies first."""
    source = dataset_dir / record["path"]
    if not os.path.lexists(source):
        return STATUS_SKIPPED, "no longer exists (deleted since the scan)"
    missing = [path for path in record["kept"] if not (dataset_dir / path).exists()]
    if missing:
        return STATUS_SKIPPED, f"its kept copy {missing[0]} is gone: not removing the last copy"
    same = kept_file_it_is(record["path"], record["kept"], dataset_dir)
    if same is not None:
        return STATUS_SKIPPED, f"it is its kept copy {same} on disk: not removing the last copy"
    try:
        if dr.sha256_file(source) != record["sha256"]:
            return STATUS_SKIPPED, "changed after the log was written"
        if record["action"] == "delete":
            source.unlink()
            return STATUS_DELETED, None
        move_file(source, dataset_dir / record["trash_path"])
        return STATUS_MOVED, None
    except OSError as error:
        return STATUS_FAILED, f"{error.strerror or error}"


def apply_plan(log: dict[str, Any], log_path: Path, dataset_dir: Path) -> tuple[int, bool]:
    """Write the log, then act on each entry, journaling each status; (files not done as planned, interrupted).

    Ctrl-C stops after the current file; the log is then rewritten with the exact status of every entry.
    """
    dr.write_json_atomic(log_path, log)
    problems, interrupted = 0, False
    journal = journal_path(log_path)
    try:
        with open(journal, "a", encoding="utf-8") as handle:
            entries = tqdm(log["entries"], desc="Removing", unit="file", file=sys.stderr)
            for index, record in enumerate(entries):
                if record["status"] != STATUS_PENDING:
                    problems += 1
                    continue
                status, note = remove_one(record, dataset_dir)
                record["status"] = status
                if note:
                    record["note"] = note
                    problems += 1
                    logger.warning("Not removed %s: %s", record["path"], note)
                handle.write(f"{index}\t{status}\n")
                handle.flush()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        log["finished"] = not interrupted
        dr.write_json_atomic(log_path, log)
        journal.unlink(missing_ok=True)
    return problems, interrupted


def load_log(log_path: Path) -> dict[str, Any]:
    """A validated deletion log, with the statuses of its journal (a run killed mid-way) applied."""
    log = dr.read_json(log_path, "deletion log")
    if not isinstance(log, dict) or log.get("kind") != LOG_KIND or not isinstance(log.get("entries"), list):
        raise dr.ReportError(f"{log_path} is not a deletion log of remove_duplicates.py")
    if log.get("schema_version") != LOG_SCHEMA_VERSION:
        raise dr.ReportError(
            f"{log_path} has log version {log.get('schema_version')!r}; this script reads version {LOG_SCHEMA_VERSION}"
        )
    for record in log["entries"]:
        if not isinstance(record, dict) or not all(key in record for key in ("path", "status", "sha256")):
            raise dr.ReportError(f"{log_path} has a malformed entry; it cannot be used for undo")
        if not is_inside(record["path"]) or (record.get("trash_path") and not is_inside(record["trash_path"])):
            raise dr.ReportError(f"{log_path} names a path outside the dataset: {record['path']}")
    journal = journal_path(log_path)
    if journal.exists():
        for line in journal.read_text(encoding="utf-8").splitlines():
            index, _, status = line.partition("\t")
            if index.isdigit() and int(index) < len(log["entries"]) and status:
                log["entries"][int(index)]["status"] = status
    return log


def restore_one(record: dict[str, Any], dataset_dir: Path) -> tuple[str, str | None]:
    """Put one removed file back: (status, problem or None). Verifies the SHA-256 of what is restored."""
    original = dataset_dir / record["path"]
    if record["status"] == STATUS_DELETED:
        return STATUS_DELETED, "was deleted with --delete: it cannot be restored"
    trash = dataset_dir / record["trash_path"] if record.get("trash_path") else None
    if trash is None or not os.path.lexists(trash):
        if record["status"] == STATUS_MOVED:
            return record["status"], f"not found in the trash ({record.get('trash_path')})"
        return record["status"], None  # never moved (pending after a kill, skipped, failed): nothing to do
    if os.path.lexists(original):
        return record["status"], f"a file is already at {record['path']}; the trash copy was left at {trash}"
    try:
        move_file(trash, original)
        digest = dr.sha256_file(original)
    except OSError as error:
        return record["status"], f"cannot restore it ({error.strerror or error})"
    if digest != record["sha256"]:
        return STATUS_RESTORED, "restored, but its content differs from the log (hash mismatch)"
    return STATUS_RESTORED, None


def remove_empty_dirs(root: Path) -> None:
    """Delete empty folders under and including ``root`` (the trash of a run after undo)."""
    if not root.is_dir():
        return
    for directory, _, _ in sorted(os.walk(root), key=lambda item: -len(item[0])):
        with contextlib.suppress(OSError):  # not empty: something is still there, keep it
            os.rmdir(directory)


def undo(log_path: Path, dataset_dir: Path | None) -> int:
    """Restore every file a log moved; 0 when all came back verified, 1 otherwise."""
    log = load_log(log_path)
    if dataset_dir is None:
        recorded = Path(log.get("dataset_dir") or "")
        dataset_dir = recorded if recorded.is_dir() else log_path.parent
    restored, problems = 0, 0
    for record in log["entries"]:
        if record["status"] in (STATUS_RESTORED, STATUS_SKIPPED):
            continue
        status, problem = restore_one(record, dataset_dir)
        record["status"] = status
        if status == STATUS_RESTORED:
            restored += 1
        if problem:
            problems += 1
            record["undo_note"] = problem
            logger.warning("%s: %s", record["path"], problem)
    log["undone"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    dr.write_json_atomic(log_path, log)
    journal_path(log_path).unlink(missing_ok=True)
    if log.get("trash_dir"):
        remove_empty_dirs(dataset_dir / log["trash_dir"])
        remove_empty_dirs(dataset_dir / TRASH_DIR)
    print(f"Restored {restored} files into {dataset_dir}" + (f"; {problems} problems (see above)" if problems else ""))
    return 1 if problems else 0


def confirm(question: str) -> bool:
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


# ----------------------------------------------------------------------------------------------------------------
# Command line


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Remove duplicates listed in a detector report: dry run by default, trash folder, undo.",
        add_help=add_help,
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--report", type=Path, help="a duplicate report of one of the three detectors (default: none)")
    mode.add_argument("--undo", type=Path, metavar="LOG", help="a deletion log to undo (default: none)")
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=DEFAULT_STRATEGY,
        help="which files to keep: safe = only byte-identical copies within one class and set; prefer-train / "
        "prefer-val = remove the val (train) copies of train (val) images; first-alpha, shortest-path, keep-best "
        "(highest resolution, then largest file) = keep one per group; all = keep one per group, a train copy "
        "if any, then the best; interactive = you choose (default: safe)",
    )
    parser.add_argument(
        "--categories",
        nargs="+",
        choices=dr.CATEGORIES,
        default=list(dr.CATEGORIES),
        metavar="CATEGORY",
        help=f"only act on groups of these categories: {', '.join(dr.CATEGORIES)} (default: all four)",
    )
    parser.add_argument(
        "--dataset-dir",
        type=Path,
        default=None,
        help="dataset folder the report's paths are relative to (default: the one named in the report or log)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="LOG",
        help="with --apply: where to write the deletion log (default: <dataset>/deletion_log_<timestamp>.json)",
    )
    parser.add_argument(
        "--apply", action="store_true", help="act on the plan; without it nothing changes (default: off)"
    )
    parser.add_argument("--yes", action="store_true", help="with --apply: do not ask for confirmation (default: off)")
    parser.add_argument(
        "--delete",
        action="store_true",
        help="with --apply: delete files for real instead of moving them to <dataset>/.trash/ (cannot be undone) "
        "(default: off)",
    )
    return parser


def resolve_dataset_dir(args: argparse.Namespace, report: dict[str, Any]) -> Path:
    if args.dataset_dir is not None:
        return args.dataset_dir
    recorded = Path(str(report.get("dataset_dir") or ""))
    return recorded if str(recorded) and recorded.is_dir() else args.report.parent


def plan_and_confirm(
    args: argparse.Namespace, report: dict[str, Any], dataset_dir: Path
) -> int | tuple[dict[str, Any], Path, str, bool]:
    """Plan, print the plan and ask: the exit code when nothing is to be done, else the pending deletion log,
    its path, the run id and whether any group was skipped.

    Changes nothing on disk, so Ctrl-C anywhere in here (a prompt, hashing) leaves the dataset as it was.
    """
    groups, skipped = [], []
    for group in dr.iter_groups(report):
        if group["category"] in args.categories:
            normal, problem = normalise_group(group)
            if problem:
                skipped.append((group, problem))
            else:
                groups.append(normal)
    usable, unusable = usable_groups(groups, dataset_dir)
    skipped += unusable
    if args.strategy == "safe":
        unreadable = add_content_hashes(usable, dataset_dir)
        skipped += unreadable
        usable = [group for group in usable if all(group is not bad for bad, _ in unreadable)]

    def choose(group: dict[str, Any]) -> list[int] | None:
        return ask_keep(group, group["files"].index(min(group["files"], key=all_key)))

    plans = make_plan(usable, args.strategy, choose if args.strategy == "interactive" else None)
    protect_kept_files(plans, dataset_dir)
    totals = plan_totals(plans)

    print(f"Plan for {args.report} ({report['method']}, strategy {args.strategy}), dataset {dataset_dir}:")
    for line in format_plan(plans, skipped):
        print(line)
    print(
        f"Summary: remove {totals['files_removed']} files ({format_bytes(totals['bytes_removed'])}) from "
        f"{totals['groups_changed']} groups, keeping {totals['files_kept_in_changed_groups']} of their files; "
        f"{totals['groups_untouched']} groups untouched; {len(skipped)} groups skipped"
    )
    if not args.apply:
        print(
            "Dry run: nothing was changed. Add --apply to do it (files go to <dataset>/.trash/; --undo restores them)."
        )
        return 1 if skipped else 0
    if not totals["files_removed"]:
        print("Nothing to remove.")
        return 1 if skipped else 0
    count = totals["files_removed"]
    trash = dataset_dir / TRASH_DIR
    question = f"Permanently delete {count} files?" if args.delete else f"Move {count} files to {trash}/?"
    if not args.yes and not confirm(question):
        print("Cancelled: nothing was changed.")
        return 1

    run_id = new_run_id(dataset_dir)
    log_path = args.output if args.output is not None else dataset_dir / f"{LOG_PREFIX}{run_id}.json"
    log = build_log(plans, dataset_dir, run_id, args, report)
    return log, log_path, run_id, bool(skipped)


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    dr.configure_logging()
    if args.undo is not None:
        try:
            return undo(args.undo, args.dataset_dir)
        except dr.ReportError as error:
            parser.error(str(error))
    if (args.yes or args.delete or args.output) and not args.apply:
        parser.error("--yes, --delete and --output only make sense with --apply")
    if args.output is not None and args.output.exists():
        parser.error(f"{args.output} already exists: a deletion log is never overwritten (it is what --undo needs)")
    try:
        report = dr.load_report(args.report)
    except dr.ReportError as error:
        parser.error(str(error))
    dataset_dir = resolve_dataset_dir(args, report)
    if not dataset_dir.is_dir():
        parser.error(f"dataset folder {dataset_dir} does not exist (pass --dataset-dir)")

    try:  # Ctrl-C at a prompt or while hashing: nothing has moved yet
        outcome = plan_and_confirm(args, report, dataset_dir)
    except KeyboardInterrupt:
        print("\nInterrupted: nothing was changed.")
        return 130
    if isinstance(outcome, int):
        return outcome
    log, log_path, run_id, skipped = outcome
    problems, interrupted = apply_plan(log, log_path, dataset_dir)
    done = sum(record["status"] in (STATUS_MOVED, STATUS_DELETED) for record in log["entries"])
    verb = "Deleted" if args.delete else f"Moved to {dataset_dir / TRASH_DIR / run_id}:"
    print(f"{verb} {done} of {len(log['entries'])} files. Log: {log_path}")
    if not args.delete:
        print(f"Undo with: python data_collection/remove_duplicates.py --undo {log_path}")
    if interrupted:
        print("Interrupted: the log lists exactly what was moved; --undo puts it back.")
        return 130
    return 1 if problems or skipped else 0


if __name__ == "__main__":
    raise SystemExit(main())
