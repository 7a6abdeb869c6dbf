"""The removal strategies of remove_duplicates.py: which files of one duplicate group each ``--strategy`` removes.

Pure functions on a validated group (duplicate_report.py's format); nothing here touches the disk. Imported by
remove_duplicates.py (which plans, prints and removes) and by html_report.py (the page previews each strategy).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py, duplicate_report.py
import cli  # noqa: E402 - needs the line above
import duplicate_report as dr  # noqa: E402 - the report's format: categories

STRATEGIES = ("safe", "prefer-train", "prefer-val", "first-alpha", "shortest-path", "keep-best", "all", "interactive")
DEFAULT_STRATEGY = "safe"  # the only one that cannot remove anything but byte-identical copies
TRAIN_SET, VAL_SET = "train", "val"


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
    is_left_for_user: bool = False  # a label conflict a non-interactive strategy would not decide


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


def is_label_conflict(group: dict[str, Any]) -> bool:
    """True when the group holds one picture under more than one class (by its category or its files' classes)."""
    return group["category"] in dr.CONFLICT_CATEGORIES or len({entry["class"] for entry in group["files"]}) > 1


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

    A label conflict is left alone by every strategy but interactive: no rule can know which label is right (a tie
    broken by path length kept the wrong one in a real run). ``choose`` (interactive only) returns the 0-based
    positions of the files to keep, or None to keep all.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy != "interactive" and is_label_conflict(group):
        plan = GroupPlan(group["id"], group["category"], list(group["files"]), is_left_for_user=True)
        plan.notes.append("untouched: a label conflict (the same picture in two classes) is yours to decide")
        return plan
    if strategy == "safe":
        plan = plan_safe(group)
    elif strategy == "prefer-train":
        plan = plan_prefer_set(group, TRAIN_SET, VAL_SET)
    elif strategy == "prefer-val":
        plan = plan_prefer_set(group, VAL_SET, TRAIN_SET)
    elif strategy in KEEP_ONE:
        plan = plan_keep_one(group, strategy)
    else:
        if choose is None:
            raise ValueError("the interactive strategy needs a choose function")
        plan = plan_chosen(group, choose(group))
    if not plan.keep:  # a guard, not a code path: every strategy above keeps at least one file
        raise AssertionError(f"strategy {strategy} would remove every file of group {group['id']}")
    if plan.remove and is_label_conflict(group):
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


if __name__ == "__main__":
    cli.refuse_running_as_script(
        __file__, "run data_collection/remove_duplicates.py", "remove_duplicates.py and html_report.py"
    )
