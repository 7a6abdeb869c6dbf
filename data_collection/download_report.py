"""The downloader's end-of-run counts: the table printed on stdout and ``download_report.json``.

Imported by download_images.py; not a script. ``ClassStats`` holds one class's counts as the run goes; the table
names, for each failure reason, the flag that would change the outcome ("too small (< --min-size 128): 133 — lower
--min-size to retry"), so a refusal by a limit is never a dead end.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from download_manifest import LIMIT_FLAGS, MANIFEST_NAME
from image_fetch import FetchLimits, is_retryable
from image_search import ShortQuery

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py and fileio.py: the project root
import cli  # noqa: E402
from fileio import write_json  # noqa: E402

REPORT_NAME = "download_report.json"
REPORT_SCHEMA_VERSION = 3  # 2: "downloaded" counts only files this run saved; "found_on_disk", "failed_before" added
# 3: "label_conflicts" (per class, and the list: the same bytes in two class folders)
# What changes the outcome of a failure that a limit decided, for the summary.
LIMIT_HINTS = {
    "--min-size": "lower --min-size to retry",
    "--max-bytes": "raise --max-bytes to retry",
    "--timeout": "tried again on the next run; raise --timeout to wait longer",
    "--ignore-content-type": "pass --ignore-content-type to retry",
}


@dataclass
class ClassStats:
    asked: int | None  # images wanted in the class folders; None = every URL of --urls-file
    found: int = 0  # URLs found for the class (search results or lines of --urls-file)
    already_done: int = 0  # URLs settled by earlier runs and not tried again
    found_on_disk: int = 0  # fetched, and the same bytes were already in place (manifest lost, or a parallel run)
    downloaded: int = 0  # files this run saved
    duplicates: int = 0
    failures: Counter = field(default_factory=Counter)  # reason -> URLs that failed in this run
    failed_before: Counter = field(default_factory=Counter)  # reason -> failures of earlier runs not tried again
    on_disk: Counter = field(default_factory=Counter)  # split -> files in the class folders

    @property
    def total_on_disk(self) -> int:
        return sum(self.on_disk.values())

    @property
    def is_short(self) -> bool:
        return self.asked is not None and self.total_on_disk < self.asked


@dataclass
class RunSummary:
    stats: dict[str, ClassStats]
    short_queries: list[ShortQuery]
    errors: list[dict[str, Any]]
    no_network: str | None = None  # "cannot reach <host>" when the network is really missing
    # The same bytes in two or more class folders after the run: {"sha256", "classes", "files", "urls"} each
    label_conflicts: list[dict[str, Any]] = field(default_factory=list)

    def conflicts_in(self, class_name: str) -> int:
        """How many of the class's images are also in another class folder."""
        return sum(class_name in conflict["classes"] for conflict in self.label_conflicts)


def failure_label(reason: str, limits: FetchLimits) -> str:
    """The reason with the limit that decided it: ``too small (< --min-size 128)``."""
    flag = LIMIT_FLAGS.get(reason)
    if flag == "--min-size":
        return f"{reason} (< --min-size {limits.min_size})"
    if flag == "--max-bytes":
        return f"{reason} (> --max-bytes {limits.max_bytes})"
    if flag == "--timeout":
        return f"{reason} (--timeout {limits.timeout_s:g} s)"
    return reason


def failure_hint(reason: str) -> str:
    """What would change the outcome of a failure: the flag to change, or that a re-run tries it anyway."""
    flag = LIMIT_FLAGS.get(reason)
    if flag is not None:
        return LIMIT_HINTS[flag]
    if is_retryable(reason):
        return "tried again on the next run"
    return "pass --retry-failed to retry"


def failure_count(now: int, before: int) -> str:
    """``3``, ``3 (+2 in earlier runs)`` or ``2 in earlier runs``."""
    if not now:
        return f"{before} in earlier runs"
    return f"{now} (+{before} in earlier runs)" if before else str(now)


def format_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns aligned: the first to the left, the others (numbers) to the right."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(
            value.ljust(width) if column == 0 else value.rjust(width)
            for column, (value, width) in enumerate(zip(row, widths))
        )
        for row in rows
    ]


def format_download_table(summary: RunSummary, limits: FetchLimits) -> str:
    """The downloader's end-of-run text: the table per class, the failures by reason with the flag that would change
    each, the label conflicts, and the queries that came back short."""
    header = ("class", "URLs", "already done", "found on disk", "downloaded", "duplicates", "label conflicts")
    rows = [(*header, "failed", "train", "val", "asked")]
    for class_name, stats in summary.stats.items():
        counts = (stats.found, stats.already_done, stats.found_on_disk, stats.downloaded, stats.duplicates)
        counts += (summary.conflicts_in(class_name), sum(stats.failures.values()))
        counts += (stats.on_disk["train"], stats.on_disk["val"])
        rows.append((class_name, *map(str, counts), "all" if stats.asked is None else str(stats.asked)))
    lines = format_table(rows)
    if summary.label_conflicts:
        lines.append(
            f"Label conflicts ({len(summary.label_conflicts)}): the same image in two classes, kept in each; the "
            "duplicate detectors and the report page show them, and only you can decide (remove_duplicates.py "
            "--strategy interactive, or the page's review):"
        )
        lines.extend(f"  {', '.join(map(cli.printable, conflict['files']))}" for conflict in summary.label_conflicts)
    failure_lines = []
    for class_name, stats in summary.stats.items():
        for reason in sorted(set(stats.failures) | set(stats.failed_before)):
            count = failure_count(stats.failures[reason], stats.failed_before[reason])
            label = cli.printable(failure_label(reason, limits))
            failure_lines.append(f"  {class_name}: {label}: {count} — {failure_hint(reason)}")
    if failure_lines:
        lines.append("Failed URLs by reason:")
        lines.extend(failure_lines)
    for class_name, stats in summary.stats.items():
        if stats.is_short:
            lines.append(f"{class_name}: {stats.total_on_disk} images, fewer than the {stats.asked} asked")
    if summary.short_queries:
        lines.append(f"Queries that came back short ({len(summary.short_queries)}):")
        lines.extend(
            f"  {short.class_name}: {cli.printable(repr(short.query))} gave {short.found} of {short.wanted} "
            f"({cli.printable(short.reason)})"
            for short in summary.short_queries
        )
    return "\n".join(lines)


def write_report(path: Path, summary: RunSummary, mode: str, input_errors: Sequence[str]) -> None:
    """This run's counts per class, the short queries, every failure and the label conflicts, as JSON."""
    classes = {
        name: {
            "asked": stats.asked,
            "found": stats.found,
            "already_done": stats.already_done,
            "found_on_disk": stats.found_on_disk,
            "downloaded": stats.downloaded,
            "duplicates": stats.duplicates,
            "failed": sum(stats.failures.values()),
            "failures_by_reason": dict(sorted(stats.failures.items())),
            "failed_before_by_reason": dict(sorted(stats.failed_before.items())),
            "train": stats.on_disk["train"],
            "val": stats.on_disk["val"],
            "label_conflicts": summary.conflicts_in(name),
            "is_short": stats.is_short,
        }
        for name, stats in summary.stats.items()
    }
    errors = [{"input": message} for message in input_errors] + summary.errors
    report = {"schema_version": REPORT_SCHEMA_VERSION, "mode": mode, "manifest": MANIFEST_NAME}
    report |= {"classes": classes, "short_queries": [vars(short) for short in summary.short_queries], "errors": errors}
    report["label_conflicts"] = summary.label_conflicts
    write_json(path, report)


if __name__ == "__main__":
    cli.refuse_running_as_script(__file__, "run data_collection/download_images.py")
