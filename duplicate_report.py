"""The duplicate report's format: its categories, the one validator every reader uses, its counts; defined once.

Imported by data_collection/duplicate_detection.py (the detectors' side, which builds and writes reports),
data_collection/remove_duplicates.py (which acts on one), html_report.py (which shows them) and run_pipeline.py
(which counts their groups); not a script. Standard library only (no numpy, no torch), so the page and the pipeline
read a report without loading the image stack. A reader never checks a field itself: ``validate_report`` refuses
the whole report with one sentence naming the first field that is wrong, and every reader refuses the same reports.

Schema version 1, a JSON object::

    {"schema_version": 1, "method": "phash", "detector": "detect_duplicates_by_phash.py", "created": "...(UTC)",
     "dataset_dir": "/abs/dataset", "sets": [...], "arguments": {...}, "files_scanned": 1234, "images_read": 1230,
     "summary": {"groups": 12, "files_in_groups": 27, "removable_copies": 15, "by_category": {...}},
     "duplicate_groups": {"same_class_and_set": [group, ...], "same_class_diff_set": [...],
                          "diff_class_same_set": [...], "diff_class_diff_set": [...]},
     "warnings": ["..."],                      # implausible output, said in sentences (may be empty)
     "errors": [{"path": "train/bird/x.jpg", "reason": "empty file (0 bytes)"}]}
    group = {"id": 3, "category": "same_class_diff_set", "representative": "train/bird/a.jpg",
             "files": [entry, entry, ...], ...method's own group values}     # at least two files
    entry = {"path": "train/bird/a.jpg", "size": 51234, "mtime_ns": ..., "set": "train", "class": "bird",
             "filename": "a.jpg", "width": 640, "height": 480, "is_symlink": false, "sha256": "...",
             ...method's own value}                                          # width, height, sha256 optional

Paths are relative to the dataset folder, in POSIX form. The validator checks types only: whether a path stays
inside the dataset is each reader's check, right before it uses the path (a report never chooses what is touched).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fileio import ReportError, read_json

SCHEMA_VERSION = 1  # bump when the layout above changes; every reader refuses versions it does not know
METHODS = ("filesize", "phash", "embedding")  # the detectors: data_collection/detect_duplicates_by_<method>.py
REPORT_PREFIX = "duplicate_report_"  # reports and galleries are <dataset>/duplicate_report_<method>.json|.png
COPY_CATEGORY = "same_class_and_set"  # the same picture twice in one class folder of one set
LEAK_CATEGORY = "same_class_diff_set"  # the same picture in train and val under one label
CONFLICT_CATEGORIES = ("diff_class_same_set", "diff_class_diff_set")  # the same picture under two labels
CATEGORIES = (COPY_CATEGORY, LEAK_CATEGORY, *CONFLICT_CATEGORIES)  # mildest first
LEAK_CATEGORIES = (LEAK_CATEGORY, "diff_class_diff_set")  # a picture in both sets: validation scores are inflated
CATEGORY_NOTES = {  # what each category means for the user, printed and shown next to the counts
    "same_class_and_set": "plain copies",
    "same_class_diff_set": "train/val leakage",
    "diff_class_same_set": "label conflict",
    "diff_class_diff_set": "label conflict and leakage",
}
PROBLEMS_FIRST = CATEGORIES[::-1]  # the order to show groups in: what harms training most first
WHOLE_FOLDER_SET = "."  # the "set" of every file when the dataset folder has neither train/ nor val/ (scanned whole)
ENTRY_TEXT_FIELDS = ("path", "set", "class")  # every file entry has these as text ("" class: no class folder)
ENTRY_COUNT_FIELDS = ("size", "mtime_ns")  # ... and these as whole numbers >= 0
ENTRY_OPTIONAL_COUNTS = ("width", "height")  # whole numbers >= 0 where present


def report_name(method: str) -> str:
    """The file name a detector writes its report to, in the dataset folder by default."""
    return f"{REPORT_PREFIX}{method}.json"


def categorize(entries: Sequence[dict[str, Any]]) -> str:
    """The category of a group from the classes and sets of its files (see CATEGORIES)."""
    same_class = len({entry["class"] for entry in entries}) == 1
    same_set = len({entry["set"] for entry in entries}) == 1
    if same_class:
        return COPY_CATEGORY if same_set else LEAK_CATEGORY
    return "diff_class_same_set" if same_set else "diff_class_diff_set"


def is_place_of(entry: dict[str, Any], parts: Sequence[str]) -> bool:
    """Whether the entry's "set" and "class" are those of a file at ``parts`` (set/class/.../name, set/name, or in a
    dataset scanned whole: class/.../name, name), as the detectors write them."""
    if len(parts) >= 2 and entry["set"] == parts[0]:
        return entry["class"] == (parts[1] if len(parts) > 2 else "")
    is_whole_folder = entry["set"] == WHOLE_FOLDER_SET and parts[0] not in ("train", "val")
    return is_whole_folder and entry["class"] == (parts[0] if len(parts) > 1 else "")


def must_be(name: str, expected: str, value: Any) -> str:
    """The one sentence for a wrong field: "<name> must be <expected> (it is <value or its type>)"."""
    is_plain = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return f"{name} must be {expected} (it is {repr(value)[:60] if is_plain else type(value).__name__})"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _group_problem(category: str, index: int, group: Any, ids: set[int]) -> str | None:
    where = f"duplicate_groups.{category}[{index}]"
    if not isinstance(group, dict):
        return must_be(where, "a group object", group)
    if not isinstance(group.get("id"), int) or isinstance(group["id"], bool) or group["id"] in ids:
        return must_be(f"{where}.id", "a whole number no other group has", group.get("id"))
    ids.add(group["id"])
    if group.get("category") != category:
        return must_be(f"{where}.category", repr(category), group.get("category"))
    files = group.get("files")
    if not isinstance(files, list):
        return must_be(f"{where}.files", "a list of at least two files", files)
    if len(files) < 2:
        return f"{where}.files must be a list of at least two files (it has {len(files)})"
    for number, entry in enumerate(files):
        at = f"{where}.files[{number}]"
        if not isinstance(entry, dict):
            return must_be(at, "a file entry object", entry)
        for key in ENTRY_TEXT_FIELDS:
            if not isinstance(entry.get(key), str) or (key == "path" and not entry[key]):
                return must_be(f"{at}.{key}", "text", entry.get(key))
        for key in ENTRY_COUNT_FIELDS + ENTRY_OPTIONAL_COUNTS:
            if (key in ENTRY_COUNT_FIELDS or key in entry) and not _is_count(entry.get(key)):
                return must_be(f"{at}.{key}", "a whole number", entry.get(key))
        if entry.get("sha256") is not None and not isinstance(entry["sha256"], str):
            return must_be(f"{at}.sha256", "text or null", entry["sha256"])
    if categorize(files) != category:
        return must_be(f"{where}.category", f"{categorize(files)!r} (its files' classes and sets)", category)
    return None


def report_problem(report: Any) -> str | None:
    """The first thing that makes ``report`` unusable, as words naming the field; None for a usable report."""
    if not isinstance(report, dict) or "duplicate_groups" not in report:
        return "it is not a duplicate report (no 'duplicate_groups'); run a detector first"
    if report.get("schema_version") != SCHEMA_VERSION:
        return must_be("schema_version", f"{SCHEMA_VERSION} (run the detector again)", report.get("schema_version"))
    if report.get("method") not in METHODS:
        return must_be("method", f"one of {', '.join(METHODS)}", report.get("method"))
    if report.get("dataset_dir") is not None and not (isinstance(report["dataset_dir"], str) and report["dataset_dir"]):
        return must_be("dataset_dir", "a folder name", report["dataset_dir"])
    groups = report["duplicate_groups"]
    if not isinstance(groups, dict):
        return must_be("duplicate_groups", "an object of categories", groups)
    ids: set[int] = set()
    for category, category_groups in groups.items():
        if category not in CATEGORIES:
            return must_be(f"duplicate_groups.{str(category)[:60]}", f"one of {', '.join(CATEGORIES)}", category)
        if not isinstance(category_groups, list):
            return must_be(f"duplicate_groups.{category}", "a list of groups", category_groups)
        for index, group in enumerate(category_groups):
            problem = _group_problem(category, index, group, ids)
            if problem:
                return problem
    return None


def validate_report(report: Any, source: str = "the report") -> dict[str, Any]:
    """``report`` when every reader can use it; ReportError "<source>: <field> must be X (it is Y); ..." otherwise."""
    problem = report_problem(report)
    if problem:
        raise ReportError(f"{source}: {problem}; run the detector again")
    return report


def load_report(path: str | Path, what: str = "report") -> dict[str, Any]:
    """A validated duplicate report from ``path``; ReportError (one sentence naming the file) when it is unusable."""
    return validate_report(read_json(path, what), f"{what} {path}")


def iter_groups(report: dict[str, Any]) -> list[dict[str, Any]]:
    """All groups of a validated report in id order."""
    groups = [group for category in CATEGORIES for group in report["duplicate_groups"].get(category, [])]
    return sorted(groups, key=lambda group: group["id"])


def problems_first(report: dict[str, Any]) -> list[dict[str, Any]]:
    """All groups, label conflicts and train/val leaks before same-class copies, largest first within each."""
    rank = {category: position for position, category in enumerate(PROBLEMS_FIRST)}
    return sorted(iter_groups(report), key=lambda group: (rank[group["category"]], -len(group["files"]), group["id"]))


def summarize(duplicate_groups: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Counts per category and overall; removable copies = files in groups minus one per group."""
    by_category = {
        category: {"groups": len(groups), "files": sum(len(group["files"]) for group in groups)}
        for category, groups in duplicate_groups.items()
    }
    groups = sum(counts["groups"] for counts in by_category.values())
    files = sum(counts["files"] for counts in by_category.values())
    return {"groups": groups, "files_in_groups": files, "removable_copies": files - groups, "by_category": by_category}


def group_counts(report: dict[str, Any]) -> dict[str, int]:
    """Groups per category (every category, 0 where none) of a validated report."""
    return {category: len(report["duplicate_groups"].get(category, [])) for category in CATEGORIES}


if __name__ == "__main__":
    import cli

    run_instead = "run one of " + ", ".join(f"data_collection/detect_duplicates_by_{method}.py" for method in METHODS)
    cli.refuse_running_as_script(__file__, run_instead, "the duplicate detectors and remove_duplicates.py")
