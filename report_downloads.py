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


@dataclass
class Crawl:
    """The manifest as the page needs it; empty when there is none (images put there by hand)."""

    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # relative path -> its "saved" record
    refusals: list[dict[str, Any]] = field(default_factory=list)  # latest "failed" record of each URL, by class
    problem: str | None = None  # the manifest exists but cannot be read

    def counts(self) -> dict[str, Counter]:
        """reason -> class -> URLs refused for it, reasons by how many URLs they refused."""
        by_reason: dict[str, Counter] = {}
        for record in self.refusals:
            by_reason.setdefault(str(record.get("reason")), Counter())[str(record.get("class"))] += 1
        return dict(sorted(by_reason.items(), key=lambda item: (-sum(item[1].values()), item[0])))


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
