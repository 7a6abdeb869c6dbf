"""Download training images from an image search (or your own URL list) into dataset/train|val/<class>/.

Every image is fully decoded before it is kept, saved once under its content hash with its real extension, and
put in train or val by that hash, so re-runs never move an image. Runs resume: a re-run skips what is done.

    python data_collection/download_images.py --duckduckgo                   # about 2000 images, 4 classes, 80/20
    python data_collection/download_images.py --duckduckgo --classes bird plane --per-class 300
    python data_collection/download_images.py --urls-file my_urls.csv        # "class,url" lines, no search

Writes (all under --dataset-dir, default dataset/):
    train/<class>/<sha256>.<ext>, val/<class>/<sha256>.<ext>   the images, original bytes
    download_manifest.jsonl     one line per URL tried: class, query, URL, source page, title, size, hash, path,
                                split, or why it failed (appended as it goes; the latest line for a URL counts)
    download_report.json        this run's counts per class, queries that came back short, and every failure
    .search_cache/              search results per query, so a re-run does not search again
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import socket
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from PIL import Image, UnidentifiedImageError
from search_queries import CLASS_NAME_PATTERN, load_queries
from tqdm import tqdm
from urllib3.exceptions import ReadTimeoutError

SCHEMA_VERSION = 1  # of the manifest lines, the search cache and the report
MANIFEST_NAME = "download_manifest.jsonl"
REPORT_NAME = "download_report.json"
SEARCH_CACHE_DIR = ".search_cache"
SPLITS = ("train", "val")

DEFAULT_PER_CLASS = 500  # 4 default classes x 500 = about 2000 images
CANDIDATE_FACTOR = 1.5  # search for 1.5x the images wanted: a quarter to a third of image-search URLs fail
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_WORKERS = 8  # downloads wait on the network, not the CPU: 8 in flight hide most of the latency
IN_FLIGHT_PER_WORKER = 2  # keep each worker busy without queuing URLs a finished class will never need
DEFAULT_TIMEOUT_S = 10.0
TOTAL_TIME_FACTOR = 4  # one download may take at most 4x --timeout in all, so a server dripping bytes cannot stall it
DEFAULT_MAX_BYTES = 20_000_000  # a photo worth training on is well under 20 MB
DEFAULT_MIN_SIZE = 100  # pixels on the shorter side; smaller ones are thumbnails or icons, useless at 224 px
MAX_PIXELS = 50_000_000  # refuse to decode more: no training photo needs it, and a bomb would eat the memory
DEFAULT_RETRIES = 3  # for timeouts and 5xx answers, which often pass; a 404 never does
DOWNLOAD_BACKOFF_S = 1.0  # first wait before retrying a download; doubles each try
MAX_REDIRECTS = 5  # real image links redirect once or twice; more is a loop
CHUNK_BYTES = 64 * 1024
# A browser-like User-Agent: many image hosts refuse the python-requests default outright.
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
# Content types an image may come with; octet-stream is what many CDNs send for any file.
ALLOWED_CONTENT_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")
# The formats kept, with the extension each is saved under: the extensions every script of this project reads.
FORMAT_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",  # a camera JPEG with extra frames: a plain JPEG to every reader
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
RETRYABLE_REASONS = {"timeout", "connection error"}  # a later run tries these URLs again; "http 5xx" too
TEMP_NAME_PATTERN = re.compile(r"^\.[0-9a-f]{64}\.[a-z]+\.\d+\.part$")  # our own half-written files, nothing else

SEARCH_HOST = "duckduckgo.com"
SEARCH_TIMEOUT_S = 10
SEARCH_RETRIES = 3  # tries after the first failure of one search request
SEARCH_BACKOFF_S = 4.0  # first wait after a search error (likely a rate limit); doubles each try, plus jitter
SEARCH_PAUSE_S = 1.0  # between search requests, to stay under the rate limit in the first place
MAX_SEARCH_PAGES = 10  # per query; a query that needs more is too narrow anyway
MAX_FAILED_QUERIES_IN_A_ROW = 3  # then the engine is refusing us: stop searching for this run
NO_NETWORK_HINT = "connect, or pass --urls-file with URLs you can reach"

logger = logging.getLogger(__name__)
T = TypeVar("T")
SearchFn = Callable[[str, int, "SearchOptions"], list[dict[str, Any]]]
SleepFn = Callable[[float], None]


class NoNetworkError(Exception):
    """Nothing can be reached at all; the message names what was tried."""


class SearchFailedError(Exception):
    """One search request kept failing after every retry."""


class ImageRejectedError(Exception):
    """Downloaded bytes that are not a usable image; ``reason`` is a short key for the summary table."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Candidate:
    """One image URL to try, with where it came from."""

    class_name: str
    url: str
    source: str  # "duckduckgo" or "urls-file"
    query: str | None = None
    source_page: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class SearchOptions:
    """Filters passed through to the image search as they are."""

    safesearch: str = "moderate"
    size: str | None = None
    type_image: str | None = None
    license_image: str | None = None


@dataclass(frozen=True)
class FetchLimits:
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_bytes: int = DEFAULT_MAX_BYTES
    min_size: int = DEFAULT_MIN_SIZE
    retries: int = DEFAULT_RETRIES
    max_pixels: int = MAX_PIXELS


@dataclass(frozen=True)
class ImageFacts:
    image_format: str
    width: int
    height: int


@dataclass
class FetchResult:
    """What one URL gave: bytes and facts when ``reason`` is None, else why it failed."""

    candidate: Candidate
    reason: str | None = None
    detail: str = ""
    has_response: bool = False  # the server answered at all: tells dead links from a dead network
    data: bytes | None = None
    sha256: str | None = None
    facts: ImageFacts | None = None


@dataclass
class ClassStats:
    asked: int | None  # images wanted in the class folders; None = every URL of --urls-file
    found: int = 0
    already_done: int = 0
    downloaded: int = 0
    duplicates: int = 0
    failures: Counter = field(default_factory=Counter)
    on_disk: Counter = field(default_factory=Counter)  # split -> files in the class folders

    @property
    def total_on_disk(self) -> int:
        return sum(self.on_disk.values())

    @property
    def is_short(self) -> bool:
        return self.asked is not None and self.total_on_disk < self.asked


@dataclass(frozen=True)
class ShortQuery:
    class_name: str
    query: str
    found: int
    wanted: int
    reason: str


@dataclass
class DownloadConfig:
    """Everything a run needs; main() builds it from the command line."""

    dataset_dir: Path
    classes: list[str]
    per_class: int | None
    queries: dict[str, list[str]] | None = None  # search mode
    url_candidates: list[Candidate] | None = None  # --urls-file mode
    options: SearchOptions = field(default_factory=SearchOptions)
    limits: FetchLimits = field(default_factory=FetchLimits)
    val_fraction: float = DEFAULT_VAL_FRACTION
    workers: int = DEFAULT_WORKERS
    refresh_search: bool = False
    show_progress: bool = True


@dataclass
class RunSummary:
    stats: dict[str, ClassStats]
    short_queries: list[ShortQuery]
    errors: list[dict[str, Any]]


# ---------------------------------------------------------------------------------------------------------- pure


def split_for_hash(content_hash: str, val_fraction: float) -> str:
    """'val' for about ``val_fraction`` of all hashes, else 'train'; a given hash always gets the same split."""
    position = int(content_hash[:13], 16) / 16**13  # 52 bits: exact as a float, uniform in [0, 1)
    return "val" if position < val_fraction else "train"


def backoff_delay(attempt: int, base_s: float, jitter: float) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): doubling, plus up to one ``base_s`` of jitter.

    ``jitter`` in [0, 1) spreads retries of parallel clients apart; the delays still grow strictly.
    """
    return base_s * 2**attempt + base_s * jitter


def is_retryable(reason: str) -> bool:
    """Whether a later run should try the URL again: the failure may pass (timeouts, server errors)."""
    if reason in RETRYABLE_REASONS:
        return True
    if reason.startswith("http "):
        code = int(reason.split()[1])
        return code >= 500 or code in (408, 429)
    return False


def is_allowed_content_type(content_type: str | None) -> bool:
    """True when the header is absent or says image (or an untyped binary file); HTML and text are refused."""
    if not content_type:
        return True
    media_type = content_type.split(";")[0].strip().lower()
    return any(media_type.startswith(allowed) for allowed in ALLOWED_CONTENT_TYPES)


def describe_non_image(data: bytes) -> str:
    """A few words on what bytes that are not an image look like, for the failure detail."""
    if not data:
        return "empty response"
    start = data[:512].lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    if start.startswith(b"<"):
        return "an XML or SVG document"
    return f"{len(data)} bytes in no image format Pillow knows"


def inspect_image(data: bytes, min_size: int, max_pixels: int = MAX_PIXELS) -> ImageFacts:
    """Fully decode ``data`` and return its format and size; raises ImageRejectedError with the reason.

    The size is checked from the header before decoding, so a decompression bomb is refused without being decoded.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image_format = image.format or "unknown"
            if width * height > max_pixels:
                raise ImageRejectedError(
                    "decompression bomb", f"{width}x{height} pixels is over the limit of {max_pixels}"
                )
            if image_format not in FORMAT_EXTENSIONS:
                raise ImageRejectedError(
                    "unsupported format", f"{image_format} is not one of {sorted(FORMAT_EXTENSIONS)}"
                )
            if min(width, height) < min_size:
                raise ImageRejectedError("too small", f"{width}x{height}, the shorter side is under {min_size} pixels")
            image.load()
    except ImageRejectedError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageRejectedError("decompression bomb", str(error)) from error
    except UnidentifiedImageError as error:
        raise ImageRejectedError("not an image", describe_non_image(data)) from error
    except Exception as error:  # Pillow raises many types on broken files; every one means "cannot use it"
        raise ImageRejectedError("corrupt image", f"{type(error).__name__}: {error}") from error
    return ImageFacts(image_format, width, height)


def parse_url_lines(lines: Iterable[str], source: str) -> tuple[list[tuple[int, str, str]], list[str]]:
    """``(line number, class, url)`` for each good ``class,url`` line, and one message per bad line.

    Blank lines, ``#`` comments and a ``class,url`` header are skipped; a URL may contain commas.
    """
    entries: list[tuple[int, str, str]] = []
    problems: list[str] = []
    for line_number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = next(csv.reader([text]))
        if [value.strip().lower() for value in fields] == ["class", "url"]:
            continue
        if len(fields) < 2:
            problems.append(f"{source} line {line_number}: expected 'class,url', got {text[:80]!r}")
            continue
        class_name, url = fields[0].strip(), ",".join(fields[1:]).strip()
        if not CLASS_NAME_PATTERN.match(class_name):
            problems.append(f"{source} line {line_number}: class name {class_name!r} cannot be a folder name")
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"{source} line {line_number}: {url[:80]!r} is not an http(s) URL")
            continue
        entries.append((line_number, class_name, url))
    return entries, problems


def interleave(groups: Sequence[Sequence[T]]) -> list[T]:
    """Round-robin over ``groups``: the first of each, then the second of each, ...; keeps variety up front."""
    longest = max((len(group) for group in groups), default=0)
    return [group[index] for index in range(longest) for group in groups if index < len(group)]


def latest_records_by_url(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last manifest record of each URL: a URL retried by a later run has several lines."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        url = record.get("url")
        if isinstance(url, str):
            latest[url] = record
    return latest


def is_done(record: dict[str, Any]) -> bool:
    """Whether a manifest record settles its URL for good (saved, duplicate, or a failure that will not pass)."""
    status = record.get("status")
    return status in ("saved", "duplicate") or (status == "failed" and not record.get("retryable", False))


def cache_file_name(query: str, options: SearchOptions) -> str:
    """A readable, unique file name for the cached results of ``query`` with these search options."""
    key = json.dumps([query, options.safesearch, options.size, options.type_image, options.license_image])
    slug = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-")[:40] or "query"
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def candidates_from_results(class_name: str, query: str, results: Iterable[dict[str, Any]]) -> list[Candidate]:
    """Search results to candidates; results without an http(s) image URL are dropped."""
    candidates = []
    for result in results:
        url = result.get("image")
        if isinstance(url, str) and urlsplit(url).scheme in ("http", "https"):
            page, title = result.get("url"), result.get("title")
            candidates.append(
                Candidate(
                    class_name=class_name,
                    url=url,
                    source="duckduckgo",
                    query=query,
                    source_page=page if isinstance(page, str) else None,
                    title=title if isinstance(title, str) else None,
                )
            )
    return candidates


def take_evenly(groups: Sequence[Sequence[T]], per_group: int, wanted: int) -> list[list[T]]:
    """The first ``per_group`` of each group, then one more from each group that has spare, round by round, until
    ``wanted`` are taken in all or no group has spare."""
    taken = [min(len(group), per_group) for group in groups]
    missing = wanted - sum(taken)
    while missing > 0:
        has_spare = [index for index, group in enumerate(groups) if taken[index] < len(group)]
        if not has_spare:
            break
        for index in has_spare[:missing]:
            taken[index] += 1
        missing -= min(missing, len(has_spare))
    return [list(group[:count]) for group, count in zip(groups, taken)]


def unique_by_url(candidates: Iterable[Candidate]) -> list[Candidate]:
    seen: set[str] = set()
    unique = []
    for candidate in candidates:
        if candidate.url not in seen:
            seen.add(candidate.url)
            unique.append(candidate)
    return unique


def format_summary(summary: RunSummary) -> str:
    """The end-of-run table per class, failures by reason, and the queries that came back short."""
    header = ("class", "found", "already done", "downloaded", "duplicates", "failed", "train", "val", "asked")
    rows = [header]
    for class_name, stats in summary.stats.items():
        rows.append(
            (
                class_name,
                str(stats.found),
                str(stats.already_done),
                str(stats.downloaded),
                str(stats.duplicates),
                str(sum(stats.failures.values())),
                str(stats.on_disk["train"]),
                str(stats.on_disk["val"]),
                "all" if stats.asked is None else str(stats.asked),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        "  ".join(
            value.ljust(width) if column == 0 else value.rjust(width)
            for column, (value, width) in enumerate(zip(row, widths))
        )
        for row in rows
    ]
    for class_name, stats in summary.stats.items():
        if stats.failures:
            reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(stats.failures.items()))
            lines.append(f"{class_name} failures: {reasons}")
    for class_name, stats in summary.stats.items():
        if stats.is_short:
            lines.append(f"{class_name}: {stats.total_on_disk} images, fewer than the {stats.asked} asked")
    if summary.short_queries:
        lines.append(f"Queries that came back short ({len(summary.short_queries)}):")
        lines.extend(
            f"  {short.class_name}: {short.query!r} gave {short.found} of {short.wanted} ({short.reason})"
            for short in summary.short_queries
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ disk and network


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (another download into the same folder): its temporary files are not ours to remove."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def scan_existing_images(dataset_dir: Path) -> tuple[dict[str, str], dict[str, Counter]]:
    """Hashes of the files already in ``train|val/<class>/`` (hash -> relative path) and counts per class and split.

    Files from earlier runs and files the user put there are treated alike: counted, never touched, and a download
    with the same bytes is a duplicate. Our own half-written files from a killed run are removed.
    """
    hashes: dict[str, str] = {}
    counts: dict[str, Counter] = {}
    for split in SPLITS:
        split_dir = dataset_dir / split
        if not split_dir.is_dir():
            continue
        for class_dir in sorted(path for path in split_dir.iterdir() if path.is_dir()):
            counts.setdefault(class_dir.name, Counter())
            for path in sorted(class_dir.iterdir()):
                if TEMP_NAME_PATTERN.match(path.name) and not is_process_alive(int(path.name.split(".")[-2])):
                    logger.info("removing %s, half-written by an interrupted run", path)
                    path.unlink(missing_ok=True)
                    continue
                if path.name.startswith(".") or not path.is_file():
                    continue
                counts[class_dir.name][split] += 1
                relative = path.relative_to(dataset_dir).as_posix()
                try:
                    hashes.setdefault(sha256_of_file(path), relative)
                except OSError as error:
                    logger.warning("cannot read %s (%s): it cannot be checked for duplicates", relative, error)
    return hashes, counts


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The manifest's records in order; unreadable lines (a run killed mid-write) are skipped with a warning."""
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s line %d is not a JSON record (cut off?): ignored", path.name, line_number)
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


class ManifestWriter:
    """Appends one complete JSON line per record, flushed at once; creates the file on the first record only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: io.TextIOWrapper | None = None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            needs_newline = False
            if self.path.exists() and self.path.stat().st_size > 0:
                with open(self.path, "rb") as existing:
                    existing.seek(-1, os.SEEK_END)
                    needs_newline = existing.read(1) != b"\n"  # a line cut off by a kill: end it, it is skipped
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the whole run
            if needs_newline:
                self._file.write("\n")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def save_bytes_atomic(data: bytes, path: Path) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(temp, "wb") as file:
            file.write(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


_thread_state = threading.local()


def thread_session() -> requests.Session:
    """One requests.Session per worker thread (a session is not safe to share), reused for keep-alive."""
    session = getattr(_thread_state, "session", None)
    if session is None:
        session = requests.Session()
        session.max_redirects = MAX_REDIRECTS
        session.headers["User-Agent"] = USER_AGENT
        session.headers["Accept"] = "image/avif,image/webp,image/*,*/*;q=0.8"
        _thread_state.session = session
    return session


def fetch_once(url: str, limits: FetchLimits) -> tuple[bytes | None, str | None, str, bool]:
    """One GET: ``(body, failure reason, detail, server answered)``; the body is None when it failed."""
    deadline = time.monotonic() + limits.timeout_s * TOTAL_TIME_FACTOR
    has_response = False
    try:
        with thread_session().get(url, timeout=limits.timeout_s, stream=True) as response:
            has_response = True
            if not 200 <= response.status_code < 300:
                return None, f"http {response.status_code}", response.reason or "", True
            content_type = response.headers.get("Content-Type")
            if not is_allowed_content_type(content_type):
                return None, "wrong content type", f"served as {content_type}", True
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limits.max_bytes:
                return None, "too large", f"{declared} bytes declared, over --max-bytes {limits.max_bytes}", True
            chunks, received = [], 0
            for chunk in response.iter_content(CHUNK_BYTES):
                received += len(chunk)
                if received > limits.max_bytes:
                    return None, "too large", f"over --max-bytes {limits.max_bytes}", True
                if time.monotonic() > deadline:
                    return None, "timeout", f"still downloading after {limits.timeout_s * TOTAL_TIME_FACTOR:g} s", True
                chunks.append(chunk)
            return b"".join(chunks), None, "", True
    except requests.TooManyRedirects:
        return None, "redirect loop", f"more than {MAX_REDIRECTS} redirects", has_response
    except requests.Timeout as error:
        return None, "timeout", f"no answer within {limits.timeout_s:g} s ({type(error).__name__})", has_response
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as e:
        return None, "bad url", str(e), has_response
    except requests.RequestException as error:
        if any(isinstance(arg, ReadTimeoutError) for arg in error.args):
            return None, "timeout", f"no data for {limits.timeout_s:g} s mid-download", has_response
        return None, "connection error", f"{type(error).__name__}: {error}"[:300], has_response


def fetch_image(candidate: Candidate, limits: FetchLimits, sleep: SleepFn) -> FetchResult:
    """Download one URL (retrying timeouts and 5xx with backoff), then verify the bytes are a usable image.

    Runs in a worker thread and writes nothing: the main thread saves, so an interrupt never leaves half a file.
    """
    result = FetchResult(candidate)
    try:
        for attempt in range(limits.retries + 1):
            if attempt:
                sleep(backoff_delay(attempt - 1, DOWNLOAD_BACKOFF_S, random.random()))
            data, reason, detail, has_response = fetch_once(candidate.url, limits)
            result.has_response = result.has_response or has_response
            if reason is None or reason == "connection error" or not is_retryable(reason):
                break
        if reason is not None:
            result.reason, result.detail = reason, detail
            return result
        assert data is not None
        result.facts = inspect_image(data, limits.min_size, limits.max_pixels)
        result.data, result.sha256 = data, hashlib.sha256(data).hexdigest()
    except ImageRejectedError as error:
        result.reason, result.detail = error.reason, error.detail
    except Exception as error:  # a bug or an odd library error must cost one URL, not the run
        result.reason, result.detail = "unexpected error", f"{type(error).__name__}: {error}"
    return result


def host_resolves(host: str) -> bool:
    """Whether DNS knows ``host``: false when the machine is offline."""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def ddgs_search(query: str, page: int, options: SearchOptions) -> list[dict[str, Any]]:
    """One page of DuckDuckGo image results through ``ddgs`` (about 100 per page).

    ddgs reports rate limits, network errors and the end of the results alike as ``DDGSException``; the caller
    retries any error with backoff. An empty page after the first means the results ran out. Raises
    NoNetworkError when the error is that the machine is offline.
    """
    from ddgs import DDGS  # only this backend needs ddgs; tests pass their own search function

    extra = {
        name: value
        for name, value in (
            ("size", options.size),
            ("type_image", options.type_image),
            ("license_image", options.license_image),
        )
        if value
    }
    try:
        return DDGS(timeout=SEARCH_TIMEOUT_S).images(
            query, safesearch=options.safesearch, page=page, max_results=None, backend="duckduckgo", **extra
        )
    except Exception as error:
        if not host_resolves(SEARCH_HOST):
            raise NoNetworkError(f"cannot reach {SEARCH_HOST}") from error
        if page > 1 and "No results found" in str(error):
            return []  # past the last page; on page 1 the same words usually mean a rate limit
        raise


# -------------------------------------------------------------------------------------------------------- search


@dataclass
class SearchState:
    """Shared by all queries of a run: pacing between requests and whether the engine is refusing us."""

    requests_made: int = 0
    failed_in_a_row: int = 0
    stop_reason: str | None = None


def search_with_backoff(
    search_fn: SearchFn, query: str, page: int, options: SearchOptions, sleep: SleepFn, state: SearchState
) -> list[dict[str, Any]]:
    """One page of results; any error may be a rate limit, so it is retried with exponential backoff and jitter.

    Raises SearchFailedError after SEARCH_RETRIES retries, NoNetworkError at once.
    """
    last_error: Exception | None = None
    for attempt in range(SEARCH_RETRIES + 1):
        if attempt:
            delay = backoff_delay(attempt - 1, SEARCH_BACKOFF_S, random.random())
            logger.warning("search %r page %d failed (%s); retrying in %.0f s", query, page, last_error, delay)
            sleep(delay)
        elif state.requests_made:
            sleep(SEARCH_PAUSE_S)
        state.requests_made += 1
        try:
            return list(search_fn(query, page, options))
        except NoNetworkError:
            raise
        except Exception as error:  # ddgs has one exception for every failure; treat each as a rate limit
            last_error = error
    raise SearchFailedError(f"search failed {SEARCH_RETRIES + 1} times ({type(last_error).__name__}: {last_error})")


def read_search_cache(path: Path, query: str) -> dict[str, Any] | None:
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("search cache %s unreadable (%s): searching again", path.name, error)
        return None
    if (
        not isinstance(cached, dict)
        or cached.get("schema_version") != SCHEMA_VERSION
        or cached.get("query") != query
        or not isinstance(cached.get("results"), list)
    ):
        logger.warning("search cache %s is not ours or is outdated: searching again", path.name)
        return None
    return cached


def search_query(
    query: str,
    wanted: int,
    options: SearchOptions,
    cache_dir: Path,
    search_fn: SearchFn,
    sleep: SleepFn,
    state: SearchState,
    refresh: bool,
) -> tuple[list[dict[str, Any]], str | None]:
    """Results for ``query`` (at least ``wanted`` if it has them), from the cache or by paging; and why it came back
    short, if it did. Whole pages are returned: the caller may use the spare results to make up for short queries.

    Each page is cached as it arrives, so a later run carries on where this one stopped.
    """
    cache_path = cache_dir / cache_file_name(query, options)
    cached = None if refresh else read_search_cache(cache_path, query)
    results: list[dict[str, Any]] = list(cached["results"]) if cached else []
    pages = int(cached.get("pages", 0)) if cached else 0
    is_exhausted = bool(cached.get("exhausted", False)) if cached else False
    seen = {result.get("image") for result in results}
    short_reason = None
    while len(results) < wanted and not is_exhausted and pages < MAX_SEARCH_PAGES:
        if state.stop_reason:
            short_reason = state.stop_reason
            break
        try:
            page_results = search_with_backoff(search_fn, query, pages + 1, options, sleep, state)
        except SearchFailedError as error:
            state.failed_in_a_row += 1
            if state.failed_in_a_row >= MAX_FAILED_QUERIES_IN_A_ROW:
                state.stop_reason = f"not searched: {state.failed_in_a_row} queries failed in a row (rate limit?)"
            short_reason = f"{error}; a re-run asks again"
            break
        state.failed_in_a_row = 0
        pages += 1
        new = [
            {key: result.get(key) for key in ("image", "url", "title", "width", "height")}
            for result in page_results
            if isinstance(result, dict) and result.get("image") not in seen
        ]
        seen.update(result["image"] for result in new)
        results.extend(new)
        is_exhausted = not new
        write_json_atomic(
            cache_path,
            {
                "schema_version": SCHEMA_VERSION,
                "query": query,
                "options": vars(options),
                "pages": pages,
                "exhausted": is_exhausted,
                "results": results,
            },
        )
    if len(results) < wanted and short_reason is None:
        short_reason = "results ran out" if is_exhausted else f"stopped after {MAX_SEARCH_PAGES} pages"
    return results, short_reason


def collect_search_candidates(
    class_name: str,
    queries: Sequence[str],
    wanted: int,
    config: DownloadConfig,
    search_fn: SearchFn,
    sleep: SleepFn,
    state: SearchState,
) -> tuple[list[Candidate], list[ShortQuery]]:
    """About ``wanted`` candidates for one class, spread evenly over its queries and interleaved.

    Queries that came back short are made up for with the spare results the others already returned.
    """
    per_query = math.ceil(wanted / len(queries))
    cache_dir = config.dataset_dir / SEARCH_CACHE_DIR
    found: list[list[Candidate]] = []
    short: list[ShortQuery] = []
    for query in queries:
        results, short_reason = search_query(
            query, per_query, config.options, cache_dir, search_fn, sleep, state, config.refresh_search
        )
        found.append(candidates_from_results(class_name, query, results))
        if short_reason is not None:
            short.append(ShortQuery(class_name, query, len(results), per_query, short_reason))
    return unique_by_url(interleave(take_evenly(found, per_query, wanted))), short


# ------------------------------------------------------------------------------------------------------ download


@dataclass
class RunState:
    """What the main thread tracks while committing results; only it touches disk and this state."""

    config: DownloadConfig
    sleep: SleepFn
    manifest: ManifestWriter
    known_hashes: dict[str, str]  # sha256 -> relative path, for files on disk and files saved by earlier runs
    on_disk_hashes: set[str]
    recorded_hashes: set[str]  # hashes with a "saved" manifest line, from earlier runs or this one
    latest: dict[str, dict[str, Any]]  # url -> latest manifest record
    claimed_urls: dict[str, str] = field(default_factory=dict)  # url -> class that fetches it in this run
    errors: list[dict[str, Any]] = field(default_factory=list)
    has_any_response: bool = False
    held: list[tuple[dict[str, Any], ClassStats]] = field(default_factory=list)  # failures kept until we know
    unreachable_hosts: set[str] = field(default_factory=set)


def base_record(candidate: Candidate) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
    }


def record_failure(record: dict[str, Any], stats: ClassStats, state: RunState) -> None:
    stats.failures[record["reason"]] += 1
    state.errors.append({key: record[key] for key in ("class", "url", "reason", "detail")})
    logger.warning("%s: %s (%s)", record["url"], record["reason"], record["detail"])
    state.manifest.write(record)


def commit_result(result: FetchResult, stats: ClassStats, state: RunState, has_room: bool = True) -> bool:
    """Save a good image (or note the duplicate or failure) and append its manifest line; True for a new file.

    Without ``has_room`` (the class is full) a new image is neither kept nor recorded, so a later run may use it.
    """
    record = base_record(result.candidate)
    if result.has_response and not state.has_any_response:
        state.has_any_response = True
        for held_record, held_stats in state.held:  # the network works: those were dead hosts after all
            record_failure(held_record, held_stats, state)
        state.held.clear()
    if result.reason is not None:
        record.update(
            status="failed", reason=result.reason, detail=result.detail, retryable=is_retryable(result.reason)
        )
        if result.reason == "connection error" and not state.has_any_response:
            # Until any server answers, this may be a machine without network: write nothing yet.
            state.held.append((record, stats))
            state.unreachable_hosts.add(urlsplit(result.candidate.url).hostname or result.candidate.url)
        else:
            record_failure(record, stats, state)
        return False
    assert result.sha256 is not None and result.facts is not None and result.data is not None
    facts = result.facts
    split = split_for_hash(result.sha256, state.config.val_fraction)
    relative = f"{split}/{result.candidate.class_name}/{result.sha256}{FORMAT_EXTENSIONS[facts.image_format]}"
    record.update(
        width=facts.width,
        height=facts.height,
        format=facts.image_format,
        bytes=len(result.data),
        sha256=result.sha256,
    )
    existing = state.known_hashes.get(result.sha256)
    # Our own file whose manifest line a kill cut off: same hash, same place, no line. Adopt it, do not copy it.
    is_ours = (
        existing == relative and result.sha256 in state.on_disk_hashes and result.sha256 not in state.recorded_hashes
    )
    if existing is not None and not is_ours:
        where = existing if result.sha256 in state.on_disk_hashes else f"{existing}, removed since"
        record.update(status="duplicate", duplicate_of=where)
        stats.duplicates += 1
        logger.info("%s: same image as %s", result.candidate.url, where)
        state.manifest.write(record)
        return False
    path = state.config.dataset_dir / relative
    is_new = not path.exists()
    if is_new and not has_room:
        return False
    if is_new:
        save_bytes_atomic(result.data, path)
        stats.on_disk[split] += 1
    state.known_hashes[result.sha256] = relative
    state.on_disk_hashes.add(result.sha256)
    state.recorded_hashes.add(result.sha256)
    stats.downloaded += 1
    record.update(status="saved", path=relative, split=split)
    state.manifest.write(record)
    return is_new


def download_class(class_name: str, candidates: Sequence[Candidate], stats: ClassStats, state: RunState) -> None:
    """Fetch the class's candidates in parallel until it holds ``stats.asked`` images (or the URLs run out)."""
    stats.found = len(candidates)
    jobs = []
    for candidate in candidates:
        previous = state.latest.get(candidate.url)
        if previous is not None and is_done(previous):
            if previous.get("class") == class_name:
                stats.already_done += 1
            else:
                stats.duplicates += 1  # the same URL, settled under another class
        elif state.claimed_urls.setdefault(candidate.url, class_name) != class_name:
            stats.duplicates += 1  # the same URL, fetched for another class in this run
        else:
            jobs.append(candidate)
    needed = None if stats.asked is None else stats.asked - stats.total_on_disk
    if needed is not None and needed <= 0:
        logger.info(
            "%s: already %d images, %d asked: nothing to download", class_name, stats.total_on_disk, stats.asked
        )
        return
    if not jobs:
        return
    config = state.config
    saved = 0
    pending: set[Future[FetchResult]] = set()
    queue = iter(jobs)
    progress = tqdm(
        total=needed if needed is not None else len(jobs),
        desc=class_name,
        unit="img",
        file=sys.stderr,
        disable=None if config.show_progress else True,  # None: only on a terminal
        leave=True,
    )
    pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="download")
    try:
        while True:
            while len(pending) < config.workers * IN_FLIGHT_PER_WORKER and (needed is None or saved < needed):
                candidate = next(queue, None)
                if candidate is None:
                    break
                pending.add(pool.submit(fetch_image, candidate, config.limits, state.sleep))
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                if commit_result(future.result(), stats, state, has_room=needed is None or saved < needed):
                    saved += 1
                    progress.update(1)
                elif needed is None:
                    progress.update(1)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        progress.close()
    pool.shutdown(wait=True)


def run_download(
    config: DownloadConfig, *, search_fn: SearchFn = ddgs_search, sleep: SleepFn = time.sleep
) -> RunSummary:
    """Collect candidates per class (search or URL file), download them, and return the counts.

    Raises NoNetworkError when nothing at all could be reached (nothing is written then), KeyboardInterrupt as is
    (every file and manifest line written so far is complete; a re-run resumes).
    """
    dataset_dir = config.dataset_dir
    known_hashes, counts = scan_existing_images(dataset_dir)
    on_disk_hashes = set(known_hashes)
    records = read_manifest(dataset_dir / MANIFEST_NAME)
    recorded_hashes = set()
    for record in records:  # images saved by earlier runs and removed since still count as seen
        if record.get("status") == "saved" and isinstance(record.get("sha256"), str) and record.get("path"):
            known_hashes.setdefault(record["sha256"], record["path"])
            recorded_hashes.add(record["sha256"])
    state = RunState(
        config=config,
        sleep=sleep,
        manifest=ManifestWriter(dataset_dir / MANIFEST_NAME),
        known_hashes=known_hashes,
        on_disk_hashes=on_disk_hashes,
        recorded_hashes=recorded_hashes,
        latest=latest_records_by_url(records),
    )
    stats = {
        name: ClassStats(asked=config.per_class, on_disk=Counter(counts.get(name, Counter())))
        for name in config.classes
    }
    short_queries: list[ShortQuery] = []
    search_state = SearchState()
    try:
        for class_name in config.classes:
            class_stats = stats[class_name]
            if config.url_candidates is not None:
                candidates = [c for c in config.url_candidates if c.class_name == class_name]
            elif class_stats.is_short:
                assert config.queries is not None and config.per_class is not None
                wanted = math.ceil(config.per_class * CANDIDATE_FACTOR)
                candidates, short = collect_search_candidates(
                    class_name, config.queries[class_name], wanted, config, search_fn, sleep, search_state
                )
                short_queries.extend(short)
            else:
                candidates = []
            download_class(class_name, candidates, class_stats, state)
        if state.held and not state.has_any_response:
            hosts = sorted(state.unreachable_hosts)
            shown = ", ".join(hosts[:3]) + (f" and {len(hosts) - 3} more" if len(hosts) > 3 else "")
            raise NoNetworkError(f"cannot reach {shown}")
    finally:
        state.manifest.close()
    return RunSummary(stats=stats, short_queries=short_queries, errors=state.errors)


def write_report(path: Path, summary: RunSummary, mode: str, input_errors: Sequence[str]) -> None:
    classes = {
        name: {
            "asked": stats.asked,
            "found": stats.found,
            "already_done": stats.already_done,
            "downloaded": stats.downloaded,
            "duplicates": stats.duplicates,
            "failed": sum(stats.failures.values()),
            "failures_by_reason": dict(sorted(stats.failures.items())),
            "train": stats.on_disk["train"],
            "val": stats.on_disk["val"],
            "is_short": stats.is_short,
        }
        for name, stats in summary.stats.items()
    }
    short = [vars(short) for short in summary.short_queries]
    errors = [{"input": message} for message in input_errors] + summary.errors
    write_json_atomic(
        path,
        {
            "schema_version": SCHEMA_VERSION,
            "mode": mode,
            "manifest": MANIFEST_NAME,
            "classes": classes,
            "short_queries": short,
            "errors": errors,
        },
    )


class TqdmLoggingHandler(logging.Handler):
    """Log lines printed above the progress bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Download training images from an image search or a URL list into dataset/train|val/<class>/.",
        add_help=add_help,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--duckduckgo", action="store_true", help="search DuckDuckGo images (through ddgs) per class (default: off)"
    )
    source.add_argument(
        "--urls-file",
        type=Path,
        default=None,
        help="file of 'class,url' lines to download instead of searching; any source (default: none)",
    )
    parser.add_argument(
        "--classes",
        nargs="+",
        default=None,
        metavar="CLASS",
        help="classes to download (default: every class of the queries, or of --urls-file)",
    )
    parser.add_argument(
        "--per-class",
        type=int,
        default=None,
        help=f"images wanted per class, counting those already there (default: {DEFAULT_PER_CLASS} with "
        "--duckduckgo, every URL with --urls-file)",
    )
    parser.add_argument(
        "--queries",
        type=Path,
        default=None,
        help="JSON file {class: [query, ...]} replacing the built-in queries of search_queries.py (default: none)",
    )
    parser.add_argument(
        "--dataset-dir", type=Path, default=Path("dataset"), help="dataset folder to fill (default: dataset)"
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULT_VAL_FRACTION,
        help=f"share of images put in val/, chosen by content hash (default: {DEFAULT_VAL_FRACTION})",
    )
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help=f"parallel downloads (default: {DEFAULT_WORKERS})"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for a server to connect or send data (default: {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help=f"largest download accepted, in bytes (default: {DEFAULT_MAX_BYTES})",
    )
    parser.add_argument(
        "--min-size",
        type=int,
        default=DEFAULT_MIN_SIZE,
        help=f"smallest width and height accepted, in pixels (default: {DEFAULT_MIN_SIZE})",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help=f"retries of a download that timed out or got a 5xx answer (default: {DEFAULT_RETRIES})",
    )
    parser.add_argument(
        "--safesearch",
        choices=("on", "moderate", "off"),
        default="moderate",
        help="search safe-search level (default: moderate)",
    )
    parser.add_argument(
        "--size", choices=("Small", "Medium", "Large", "Wallpaper"), default=None, help="image size (default: any)"
    )
    parser.add_argument(
        "--type-image",
        choices=("photo", "clipart", "gif", "transparent", "line"),
        default=None,
        help="image type (default: any)",
    )
    parser.add_argument(
        "--license",
        choices=("any", "Public", "Share", "ShareCommercially", "Modify", "ModifyCommercially"),
        default=None,
        help="image license; 'any' means any Creative Commons license (default: no filter)",
    )
    parser.add_argument(
        "--refresh-search",
        action="store_true",
        help=f"search again instead of using {SEARCH_CACHE_DIR}/ in the dataset folder (default: off)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (default: off)")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also log duplicates and search progress (default: off)"
    )
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """parser.error (exit 2) on values that cannot work, naming the flag."""
    if args.per_class is not None and args.per_class < 1:
        parser.error(f"--per-class must be at least 1, got {args.per_class}")
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if not args.timeout > 0:
        parser.error(f"--timeout must be positive, got {args.timeout}")
    if args.max_bytes < 1:
        parser.error(f"--max-bytes must be positive, got {args.max_bytes}")
    if args.min_size < 1:
        parser.error(f"--min-size must be at least 1, got {args.min_size}")
    if args.retries < 0:
        parser.error(f"--retries cannot be negative, got {args.retries}")
    if args.queries is not None and args.urls_file is not None:
        parser.error("--queries only applies to --duckduckgo; --urls-file lists the URLs itself")
    if args.dataset_dir.exists() and not args.dataset_dir.is_dir():
        parser.error(f"--dataset-dir {args.dataset_dir} is a file, not a folder")
    for class_name in args.classes or ():
        if not CLASS_NAME_PATTERN.match(class_name):
            parser.error(f"class name {class_name!r} cannot be a folder name")


def read_urls_file(parser: argparse.ArgumentParser, path: Path) -> tuple[list[Candidate], list[str]]:
    """Candidates from a ``class,url`` file (repeated URLs kept once) and one message per malformed line."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        parser.error(f"--urls-file {path}: no such file")
    except (OSError, UnicodeDecodeError) as error:
        parser.error(f"--urls-file {path}: cannot read it as UTF-8 text ({error})")
    entries, problems = parse_url_lines(lines, str(path))
    for problem in problems:
        logger.warning("%s: skipped", problem)
    if not entries:
        parser.error(f"--urls-file {path}: no 'class,url' line with an http(s) URL")
    first_class: dict[str, tuple[int, str]] = {}
    candidates = []
    for line_number, class_name, url in entries:
        if url in first_class:
            first_line, first_name = first_class[url]
            if first_name != class_name:
                logger.warning(
                    "%s line %d: URL already listed as %r on line %d: kept there only",
                    path,
                    line_number,
                    first_name,
                    first_line,
                )
            continue
        first_class[url] = (line_number, class_name)
        candidates.append(Candidate(class_name, url, source="urls-file"))
    return candidates, problems


def main(argv: Sequence[str] | None = None, *, search_fn: SearchFn = ddgs_search, sleep: SleepFn = time.sleep) -> int:
    """Run the downloader; ``search_fn`` and ``sleep`` are for tests (a fake search, no real waiting)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    handler = TqdmLoggingHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler], force=True)
    # We refuse oversized images ourselves, with a reason in the manifest; Pillow's warning would only repeat it.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    check_args(parser, args)

    input_errors: list[str] = []
    queries = None
    url_candidates = None
    if args.urls_file is not None:
        url_candidates, input_errors = read_urls_file(parser, args.urls_file)
        file_classes = list(dict.fromkeys(candidate.class_name for candidate in url_candidates))
        classes = args.classes or file_classes
        missing = [name for name in classes if name not in file_classes]
        if missing:
            parser.error(f"--classes {' '.join(missing)}: not in {args.urls_file} (it has: {', '.join(file_classes)})")
        per_class = args.per_class
    else:
        try:
            queries = load_queries(args.queries)
        except ValueError as error:
            parser.error(str(error))
        classes = args.classes or list(queries)
        unknown = [name for name in classes if name not in queries]
        if unknown:
            parser.error(f"no queries for class {', '.join(unknown)}; known: {', '.join(queries)} (or pass --queries)")
        per_class = args.per_class or DEFAULT_PER_CLASS
    config = DownloadConfig(
        dataset_dir=args.dataset_dir,
        classes=list(dict.fromkeys(classes)),
        per_class=per_class,
        queries=queries,
        url_candidates=url_candidates,
        options=SearchOptions(args.safesearch, args.size, args.type_image, args.license),
        limits=FetchLimits(args.timeout, args.max_bytes, args.min_size, args.retries),
        val_fraction=args.val_fraction,
        workers=args.workers,
        refresh_search=args.refresh_search,
        show_progress=not args.no_progress,
    )
    try:
        summary = run_download(config, search_fn=search_fn, sleep=sleep)
    except NoNetworkError as error:
        print(f"No network: {error}; {NO_NETWORK_HINT}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"Interrupted: every image and manifest line written so far in {args.dataset_dir} is complete; "
            "re-run the same command to resume.",
            file=sys.stderr,
        )
        return 130
    print(format_summary(summary))
    new_images = sum(stats.downloaded for stats in summary.stats.values())
    print(f"{new_images} images downloaded into {args.dataset_dir}; manifest: {args.dataset_dir / MANIFEST_NAME}")
    if args.dataset_dir.is_dir():
        mode = "urls-file" if url_candidates is not None else "duckduckgo"
        write_report(args.dataset_dir / REPORT_NAME, summary, mode, input_errors)
    is_short = any(stats.is_short for stats in summary.stats.values())
    has_failures = url_candidates is not None and (bool(summary.errors) or bool(input_errors))
    return 1 if is_short or has_failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
