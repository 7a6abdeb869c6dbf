"""What the report page shows from the download manifest: where each image came from, and what the crawl refused.

Imported by html_report.py; not a script. Reads ``<dataset>/download_manifest.jsonl`` (download_manifest.py writes
it; the latest line for a URL is its state) and returns plain data; html_report.py renders and escapes it.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent / "data_collection"))  # download_manifest.py lives there
from download_manifest import MANIFEST_NAME, latest_records, read_manifest  # noqa: E402

from fileio import regular_file_reason  # noqa: E402

# What the "Refused by the crawl" section shows at most: a crafted manifest can give every line its own reason or class,
# and the page must stay small and quick to build; download_manifest.jsonl keeps every URL.
MAX_REASONS_SHOWN = 50  # table rows and lists, most URLs first: an honest crawl has a dozen (HTTP codes, the limits)
MAX_CLASSES_SHOWN = 50  # table columns, the classes with most refusals; the rest add up in one "other classes" column
MAX_URLS_SHOWN = 200  # per reason, in its collapsed list: enough to spot a pattern; the count says how many more


@dataclass
class ReasonRow:
    """One reason the crawl refused URLs for: how many per class, and the first MAX_URLS_SHOWN of its records."""

    reason: str
    by_class: Counter = field(default_factory=Counter)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.by_class.values())


@dataclass
class RefusalTable:
    """The refusals grouped by reason (most URLs first) and cut to what the page shows."""

    rows: list[ReasonRow]  # at most MAX_REASONS_SHOWN
    classes: list[str]  # the table's class columns, sorted; at most MAX_CLASSES_SHOWN
    other_classes: int  # classes added up in the "other classes" column (0: no such column)
    reasons_left_out: int
    urls_left_out: int  # refused for the reasons left out

    def cells(self, row: ReasonRow) -> list[int]:
        """A row's counts: each class column, "other classes" when there is that column, then the total."""
        shown = [row.by_class[name] for name in self.classes]
        return [*shown, *([row.total - sum(shown)] if self.other_classes else []), row.total]


@dataclass
class Crawl:
    """The manifest as the page needs it; empty when there is none (images put there by hand)."""

    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # relative path -> its "saved" record
    refusals: list[dict[str, Any]] = field(default_factory=list)  # latest "failed" record of each URL, by class
    problem: str | None = None  # the manifest exists but cannot be read

    def table(self) -> RefusalTable:
        """The refusals grouped by reason in one pass, cut to MAX_REASONS_SHOWN rows and MAX_CLASSES_SHOWN columns."""
        groups: dict[str, ReasonRow] = {}
        for record in self.refusals:
            reason = str(record.get("reason"))
            row = groups.get(reason) or groups.setdefault(reason, ReasonRow(reason))
            row.by_class[str(record.get("class"))] += 1
            if len(row.records) < MAX_URLS_SHOWN:
                row.records.append(record)
        ranked = sorted(groups.values(), key=lambda row: (-row.total, row.reason))
        rows, left_out = ranked[:MAX_REASONS_SHOWN], ranked[MAX_REASONS_SHOWN:]
        per_class: Counter = Counter()
        for row in rows:
            per_class.update(row.by_class)
        classes = sorted(per_class, key=lambda name: (-per_class[name], name))
        return RefusalTable(
            rows=rows,
            classes=sorted(classes[:MAX_CLASSES_SHOWN]),
            other_classes=max(0, len(classes) - MAX_CLASSES_SHOWN),
            reasons_left_out=len(left_out),
            urls_left_out=sum(row.total for row in left_out),
        )


def summarize(records: list[dict[str, Any]]) -> Crawl:
    """The saved record of each image path and the URLs whose latest attempt failed, from manifest records."""
    crawl = Crawl()
    for record in latest_records(records).values():
        if record.get("status") == "saved" and isinstance(record.get("path"), str):
            crawl.sources.setdefault(record["path"], record)
        elif record.get("status") == "failed":
            crawl.refusals.append(record)
    crawl.refusals.sort(key=lambda record: (str(record.get("reason")), str(record.get("class")), str(record["url"])))
    return crawl


def is_web_link(url: Any) -> bool:
    """Only http(s) URLs become links on the page (never javascript:, data: or file:)."""
    return isinstance(url, str) and urlsplit(url).scheme in ("http", "https")


def read_crawl(dataset_dir: Path) -> Crawl:
    """The dataset's download manifest, summarized; an empty Crawl when there is none."""
    path = dataset_dir / MANIFEST_NAME
    if not os.path.lexists(path):
        return Crawl()
    reason = regular_file_reason(path)  # a FIFO would block the read, a symlink could lead anywhere
    if reason:
        return Crawl(problem=f"{MANIFEST_NAME} {reason}: not read")
    try:
        return summarize(read_manifest(path))
    except (OSError, ValueError) as error:  # ValueError: fileio.ReportError too
        return Crawl(problem=f"cannot read {MANIFEST_NAME}: {error}")


if __name__ == "__main__":
    import cli

    cli.refuse_running_as_script(__file__, "run html_report.py")
