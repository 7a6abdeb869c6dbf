"""The download manifest: one JSON line per URL tried, and the rule for which URLs a re-run tries again.

Imported by download_images.py and download_report.py; not a script.

``dataset/download_manifest.jsonl`` is appended to as a run goes, by any number of runs at once: each record is one
``write`` of a whole line to a file opened with O_APPEND, under an exclusive ``flock``, so lines never interleave, and
a line cut off by a killed run is ended before the next one. The latest line for a URL in a class is its state: a URL
offered under two classes is fetched for each (the same bytes in two class folders are a label conflict, kept).

A failure that a command-line limit decided (``too small``, ``too large``, ``timeout``, ``wrong content type``)
records the limit as ``"limit": {"flag": "--min-size", "value": 128}``; a re-run retries it when that limit changed
so that it could now pass, and ``--retry-failed`` retries failures that no limit decided.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from image_fetch import Candidate, FetchLimits, is_retryable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py and fileio.py: the project root
from cli import CappedWarnings  # noqa: E402
from fileio import CLOEXEC, MAX_JSON_LINE_BYTES, ReportError, describe_kind, parse_json, utc_now  # noqa: E402

try:
    import fcntl
except ImportError:  # Windows: O_APPEND single writes alone keep lines whole
    fcntl = None  # type: ignore[assignment]

MANIFEST_NAME = "download_manifest.jsonl"
SCHEMA_VERSION = 3  # of a manifest line; 2 added "limit", 3 "label_conflict_with" (older lines are read as they are)
# Failure reasons a command-line limit decided, and that limit's flag.
LIMIT_FLAGS = {
    "too small": "--min-size",
    "too large": "--max-bytes",
    "timeout": "--timeout",
    "wrong content type": "--ignore-content-type",
}

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------- pure


def new_record(candidate: Candidate) -> dict[str, Any]:
    """A manifest line for ``candidate`` with every field present; the caller fills in the outcome."""
    return {
        "schema_version": SCHEMA_VERSION,
        "time": utc_now(),
        "class": candidate.class_name,
        "source": candidate.source,
        "query": candidate.query,
        "url": candidate.url,
        "source_page": candidate.source_page,
        "title": candidate.title,
        "status": None,
        "width": None,
        "height": None,
        "format": None,
        "bytes": None,
        "sha256": None,
        "path": None,
        "split": None,
        "duplicate_of": None,
        "reason": None,
        "detail": None,
        "retryable": False,
        "limit": None,
        "label_conflict_with": None,  # saved, and the same bytes are in these other class folders: a label conflict
    }


def limit_value(flag: str, limits: FetchLimits) -> float | int | bool:
    return {
        "--min-size": limits.min_size,
        "--max-bytes": limits.max_bytes,
        "--timeout": limits.timeout_s,
        "--ignore-content-type": limits.ignore_content_type,
    }[flag]


def limit_of(reason: str, limits: FetchLimits) -> dict[str, Any] | None:
    """``{"flag": ..., "value": ...}`` for a failure that a limit decided, else None."""
    flag = LIMIT_FLAGS.get(reason)
    return None if flag is None else {"flag": flag, "value": limit_value(flag, limits)}


def limit_now_allows(record: dict[str, Any], limits: FetchLimits) -> bool:
    """Whether the limit that refused ``record`` has changed so that the URL could pass now.

    A "too small" image whose size is known is retried only if it meets the new ``--min-size``; a "too large" one
    whose size the server declared, only if it fits the new ``--max-bytes``. A record without a usable limit (written
    by an older version) is retried once, and then carries its limit.
    """
    flag = LIMIT_FLAGS.get(record.get("reason"))
    if flag is None:
        return False
    limit = record.get("limit")
    old = limit.get("value") if isinstance(limit, dict) and limit.get("flag") == flag else None
    new = limit_value(flag, limits)
    if flag == "--ignore-content-type":
        return bool(new) and not old
    if isinstance(old, bool) or not isinstance(old, (int, float)):
        return True
    if flag == "--min-size":
        width, height = record.get("width"), record.get("height")
        if isinstance(width, int) and isinstance(height, int):
            return min(width, height) >= new
        return new < old
    if flag == "--max-bytes":
        size = record.get("bytes")
        return new >= size if isinstance(size, int) and size > old else new > old
    return new > old  # --timeout


def should_fetch(record: dict[str, Any] | None, limits: FetchLimits, retry_failed: bool = False) -> bool:
    """Whether this run tries a URL whose latest manifest line is ``record`` (None: never tried).

    Saved and duplicate URLs are settled. A failure is tried again when it may pass by itself (timeouts, 5xx,
    connection errors), when the limit that refused it changed so that it could pass, or, with ``retry_failed``,
    when no limit decided it (404, not an image, ...).
    """
    if record is None:
        return True
    status = record.get("status")
    if status in ("saved", "duplicate"):
        return False
    if status != "failed":
        return True
    reason = record.get("reason")
    if not isinstance(reason, str) or record.get("retryable") or is_retryable(reason):
        return True
    if reason in LIMIT_FLAGS:
        return limit_now_allows(record, limits)
    return retry_failed


def latest_records(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The last manifest record of each (class, URL): a URL retried by a later run has several lines, and a URL
    offered under two classes has its own state in each."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        url, class_name = record.get("url"), record.get("class")
        if isinstance(url, str) and isinstance(class_name, str):
            latest[class_name, url] = record
    return latest


def encode_line(record: dict[str, Any]) -> bytes:
    """One manifest line as UTF-8; a non-UTF-8 file name in it is kept as a ``\\udcXX`` escape (valid UTF-8)."""
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


# ------------------------------------------------------------------------------------------------------------ disk


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The manifest's records in order; unreadable lines (a run killed mid-write) are skipped with a warning (the first
    few, then one line counting the rest: cli.CappedWarnings).

    Opened without blocking and checked on the open file (a FIFO swapped in cannot hang a run: ReportError); a line
    longer than any record (MAX_JSON_LINE_BYTES) is one warning and skipped whole, whatever its length.
    """
    if not os.path.lexists(path):
        return []
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | CLOEXEC)
    if not stat.S_ISREG(mode := os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise ReportError(f"{path.name} {describe_kind(mode)}: not read")
    records, line_number, is_in_long_line = [], 0, False
    warnings = CappedWarnings(logger, path.name, "such lines skipped")
    with os.fdopen(descriptor, encoding="utf-8", errors="replace") as file, warnings as warn:
        for piece in iter(lambda: file.readline(MAX_JSON_LINE_BYTES), ""):  # a huge line comes in pieces
            if is_in_long_line:  # the rest of a line already warned about
                is_in_long_line = not piece.endswith("\n")
                continue
            line_number += 1
            if len(piece) >= MAX_JSON_LINE_BYTES and not piece.endswith("\n"):
                warn("%s line %d is longer than any record: ignored", path.name, line_number)
                is_in_long_line = True
                continue
            if not piece.strip():
                continue
            try:
                record = parse_json(piece, "a manifest line")  # malformed, nested too deeply, a huge number
            except ReportError:
                warn("%s line %d is not a JSON record (cut off?): ignored", path.name, line_number)
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


class ManifestWriter:
    """Appends whole lines, safe beside other runs appending to the same file; creates it on the first record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def write(self, record: dict[str, Any]) -> None:
        line = encode_line(record)
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        with self._locked():
            size = os.fstat(self._fd).st_size
            if size and os.pread(self._fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a line cut off by a killed run: end it (it is skipped when read)
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if fcntl is None:
            yield
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


if __name__ == "__main__":
    import cli

    cli.refuse_running_as_script(__file__, "run data_collection/download_images.py")
