"""Download training images from an image search (or your own URL list) into dataset/train|val/<class>/.

Every image is fully decoded before it is kept, saved once under its content hash with its real extension, and
put in train or val by that hash, so re-runs never move an image. Runs resume: a re-run skips what is done, and
tries again what may pass now (timeouts, server errors, and refusals of a limit you changed, such as --min-size).

    python data_collection/download_images.py --duckduckgo                   # about 2000 images, 4 classes, 80/20
    python data_collection/download_images.py --duckduckgo --classes bird plane --per-class 300
    python data_collection/download_images.py --urls-file my_urls.csv        # "class,url" lines, no search
    python data_collection/download_images.py --duckduckgo --min-size 64     # a re-run retries the "too small" ones

Writes (all under --dataset-dir, default dataset/):
    train/<class>/<sha256>.<ext>, val/<class>/<sha256>.<ext>   the images, original bytes
    download_manifest.jsonl     one line per URL tried: class, query, URL, source page, title, size, hash, path,
                                split, or why it failed and the limit that refused it (appended as it goes; the
                                latest line for a URL in a class counts; safe with two runs at once)
    download_report.json        this run's counts per class, queries that came back short, and every failure
    .search_cache/              search results per query, so a re-run does not search again
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import math
import os
import re
import secrets
import signal
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py and fileio.py live in the project root
from download_manifest import (  # noqa: E402 - the siblings import cli and fileio too
    MANIFEST_NAME,
    ManifestWriter,
    latest_records,
    limit_of,
    new_record,
    read_manifest,
    should_fetch,
)
from download_report import REPORT_NAME, ClassStats, RunSummary, format_download_table, write_report  # noqa: E402
from image_fetch import (  # noqa: E402
    DEFAULT_MAX_BYTES,
    DEFAULT_MIN_SIZE,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    FORMAT_EXTENSIONS,
    PROBE_TIMEOUT_S,
    Candidate,
    Fetcher,
    FetchLimits,
    FetchResult,
    NoNetworkError,
    SleepFn,
    host_and_port,
    is_retryable,
    network_reachable,
)
from image_search import (  # noqa: E402
    SEARCH_CACHE_DIR,
    SEARCH_HOST,
    ImageSearch,
    SearchBackend,
    SearchOptions,
    ShortQuery,
    ddgs_search,
)
from PIL import Image  # noqa: E402
from search_queries import CLASS_NAME_PATTERN, load_queries  # noqa: E402
from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: E402

import cli  # noqa: E402 - needs the line above
from fileio import (  # noqa: E402
    SPLITS,
    ReportError,
    UnsafePathError,
    class_folders,
    is_inside,
    is_process_alive,
    is_regular_file,
    open_folder_below,
    read_bounded,
    regular_file_reason,
    relative_posix,
    remove_stale_temp_files,
    resolve_inside,
    sha256_file,
    utc_now,
    writable_folder_reason,
)

DEFAULT_PER_CLASS = 500  # 4 default classes x 500 = about 2000 images
CANDIDATE_FACTOR = 1.5  # search for 1.5x the images wanted: a quarter to a third of image-search URLs fail
DEFAULT_VAL_FRACTION = 0.2
MAX_URLS_FILE_BYTES = 256 * 1024 * 1024  # a million URLs fit in ~200 MB; more is not a URL list (read whole)
DEFAULT_WORKERS = 8  # downloads wait on the network, not the CPU: 8 in flight hide most of the latency
IN_FLIGHT_PER_WORKER = 2  # keep each worker busy without queuing URLs a finished class will never need
# Our own half-written images: ".<sha256>.<ext>.<pid>.<random>.part" (older versions wrote no random part).
OWN_NAME_PATTERN = re.compile(r"^[0-9a-f]{64}\.[a-z]+$")  # the name we save an image under: its sha256, extension
TEMP_NAME_PATTERN = re.compile(r"^\.[0-9a-f]{64}\.[a-z]+\.(\d+)(?:\.[0-9a-f]+)?\.part$")
SEARCH_NO_NETWORK_HINT = "connect, or pass --urls-file FILE with image URLs"

logger = logging.getLogger(__name__)


@dataclass
class DownloadConfig:
    """What a run downloads and where; main() builds it from the command line."""

    dataset_dir: Path
    report_path: Path
    classes: list[str]
    per_class: int | None
    queries: dict[str, list[str]] | None = None  # search mode
    url_candidates: list[Candidate] | None = None  # --urls-file mode
    urls_file: Path | None = None
    input_errors: list[str] = field(default_factory=list)  # malformed lines of --urls-file
    val_fraction: float = DEFAULT_VAL_FRACTION
    workers: int = DEFAULT_WORKERS
    retry_failed: bool = False

    @property
    def mode(self) -> str:
        return "urls-file" if self.url_candidates is not None else "duckduckgo"


# ---------------------------------------------------------------------------------------------------------- pure


def split_for_hash(content_hash: str, val_fraction: float) -> str:
    """'val' for about ``val_fraction`` of all hashes, else 'train'; a given hash always gets the same split."""
    position = int(content_hash[:13], 16) / 16**13  # 52 bits: exact as a float, uniform in [0, 1)
    return "val" if position < val_fraction else "train"


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
        try:  # a field over csv's limit, or a URL urlsplit refuses ("http://[::1"), costs its line, not the run
            fields = next(csv.reader([text]))
            parts = urlsplit(",".join(fields[1:]).strip())
        except (csv.Error, ValueError) as error:
            problems.append(f"{source} line {line_number}: cannot be read as 'class,url' ({str(error)[:80]})")
            continue
        if [value.strip().lower() for value in fields] == ["class", "url"]:
            continue
        if len(fields) < 2:
            problems.append(f"{source} line {line_number}: expected 'class,url', got {text[:80]!r}")
            continue
        class_name, url = fields[0].strip(), ",".join(fields[1:]).strip()
        if not CLASS_NAME_PATTERN.match(class_name):
            problems.append(
                f"{source} line {line_number}: class name {cli.short_repr(class_name)} cannot be a folder name"
            )
            continue
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"{source} line {line_number}: {url[:80]!r} is not an http(s) URL")
            continue
        entries.append((line_number, class_name, url))
    return entries, problems


# ------------------------------------------------------------------------------------------------------------ disk


def dataset_problem(config: DownloadConfig) -> str | None:
    """One sentence when this run could not write where it must (checked before any work), else None.

    Refused: a read-only dataset, split or class folder; a split or class folder that is a file or a symlink leading
    outside the dataset (nothing outside the folder you named is ever written); a manifest that is not a file.
    """
    dataset_dir = config.dataset_dir
    reason = writable_folder_reason(dataset_dir)
    if reason:
        return f"cannot download into {cli.printable(dataset_dir)}: {reason}"
    folders = [*SPLITS, *(f"{split}/{name}" for split in SPLITS for name in config.classes)]
    for relative in folders:
        folder = dataset_dir / relative
        if not is_inside(folder, dataset_dir):  # a symlink pointing out
            return f"{cli.printable(folder)} leads outside {cli.printable(dataset_dir)}: images are written only inside"
        if folder.exists() and not folder.is_dir():
            return f"{cli.printable(folder)} is a file, not a folder: cannot save images there"
        reason = writable_folder_reason(folder) if folder.is_dir() else None
        if reason:
            return f"cannot download into {cli.printable(dataset_dir)}: {reason}"
    if config.report_path.is_dir():
        return f"--report {cli.printable(config.report_path)} is a folder: name a file"
    manifest = dataset_dir / MANIFEST_NAME
    if os.path.lexists(manifest) and (reason := regular_file_reason(manifest)):
        return f"the manifest {cli.printable(manifest)} {reason}: it must be a plain file"
    if config.report_path.parent != dataset_dir and (reason := writable_folder_reason(config.report_path.parent)):
        return f"cannot write the report {cli.printable(config.report_path)}: {reason}"
    return None


def remove_stale_files(dataset_dir: Path, report_path: Path) -> None:
    """Temp files of our own kind that killed runs left: the report's and the search cache's (others at the scan)."""
    remove_stale_temp_files(report_path.parent, report_path.name)
    remove_stale_temp_files(dataset_dir / SEARCH_CACHE_DIR, "*.json")


def scan_existing_images(dataset_dir: Path) -> tuple[dict[str, dict[str, str]], dict[str, Counter]]:
    """The files already in ``train|val/<class>/`` (sha256 -> class -> relative path) and counts per class and split.

    Files from earlier runs and files the user put there are treated alike: counted, never touched, and a download
    with the same bytes in the same class is a duplicate. Only regular files are read (a FIFO is never opened); a name
    that is not UTF-8 is kept as it is. Our own half-written files from a killed run are removed.
    """
    hashes: dict[str, dict[str, str]] = {}
    counts: dict[str, Counter] = {}
    for split in SPLITS:
        for class_name in class_folders(dataset_dir / split):
            counts.setdefault(class_name, Counter())
            try:
                paths = sorted((dataset_dir / split / class_name).iterdir())
            except OSError as error:
                logger.warning("cannot list %s/%s (%s): not counted", split, cli.printable(class_name), error.strerror)
                continue
            for path in paths:
                match = TEMP_NAME_PATTERN.match(path.name)
                if match and not is_process_alive(int(match.group(1))):
                    logger.info("removing %s, half-written by an interrupted run", cli.printable(path))
                    path.unlink(missing_ok=True)
                    continue
                if path.name.startswith(".") or not is_regular_file(path):
                    continue
                counts[class_name][split] += 1
                relative = relative_posix(path, dataset_dir)
                try:
                    hashes.setdefault(sha256_file(path), {}).setdefault(class_name, relative)
                except OSError as error:
                    logger.warning(
                        "cannot read %s (%s): it cannot be checked for duplicates", cli.printable(relative), error
                    )
    return hashes, counts


def save_new_file(data: bytes, path: Path) -> bool:
    """Write ``data`` at ``path`` unless a file is already there; True when this call created it.

    The bytes go to a temporary file first, which is then hard-linked into place: a reader never sees half an image,
    and when two runs save the same image at once exactly one of them creates it (the other finds it on disk).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        with open(temp, "xb") as file:
            file.write(data)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: rename into place after a last look
            if os.path.lexists(path):
                return False
            os.replace(temp, path)
        return True
    finally:
        temp.unlink(missing_ok=True)


def move_new_name(dataset_dir: Path, source: str, target: str) -> bool:
    """Move the file ``source`` to ``target`` (POSIX paths relative to ``dataset_dir``) unless a file is already there
    (or ``source`` is gone); True when moved.

    Both folders are opened below the dataset with O_NOFOLLOW (``fileio.open_folder_below``) and the move is made
    relative to them: a class folder swapped for a symlink to elsewhere makes the move fail, never lead outside.
    """
    *source_folders, source_name = source.split("/")
    *target_folders, target_name = target.split("/")
    root = os.open(dataset_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        source_fd = open_folder_below(root, source_folders)
        try:
            target_fd = open_folder_below(root, target_folders, create=True)
            try:
                return move_between(source_fd, source_name, target_fd, target_name)
            finally:
                os.close(target_fd)
        finally:
            os.close(source_fd)
    except OSError as error:  # a folder swapped for a link or a file: leave the image where it is
        logger.warning("could not move %s to %s (%s)", cli.printable(source), cli.printable(target), error)
        return False
    finally:
        os.close(root)


def move_between(source_fd: int, source_name: str, target_fd: int, target_name: str) -> bool:
    """``move_new_name`` within two open folders: a hard link then unlink, so an existing target is never replaced.
    A file system without hard links raises OSError: the image stays where it is (a stat-then-rename could
    overwrite a file that appeared in between)."""
    try:
        os.link(source_name, target_name, src_dir_fd=source_fd, dst_dir_fd=target_fd, follow_symlinks=False)
    except (FileExistsError, FileNotFoundError):
        return False
    os.unlink(source_name, dir_fd=source_fd)
    return True


# -------------------------------------------------------------------------------------------------------- the run


class DownloadRun:
    """One run: candidates per class (search or URL file), fetched in worker threads, committed by the main thread.

    Only the main thread touches the disk and this state, so Ctrl-C never leaves half a file or half a line.
    """

    def __init__(self, config: DownloadConfig, fetcher: Fetcher, search: ImageSearch | None) -> None:
        self.config = config
        self.fetcher = fetcher
        self.search = search
        dataset_dir = config.dataset_dir
        # sha256 -> class -> relative path: the same bytes in two classes are a label conflict, kept in both
        self.known_paths, counts = scan_existing_images(dataset_dir)
        self.on_disk = {(digest, name) for digest, paths in self.known_paths.items() for name in paths}
        records = read_manifest(dataset_dir / MANIFEST_NAME)
        self.recorded: set[tuple[str, str]] = set()  # (sha256, class) with a "saved" manifest line, from any run
        self.worked_before: list[str] = []  # URLs saved by earlier runs: their hosts answer, or did
        for record in records:  # images saved by earlier runs and removed since still count as seen
            digest, path, name = record.get("sha256"), record.get("path"), record.get("class")
            if record.get("status") == "saved" and isinstance(digest, str) and isinstance(path, str):
                if isinstance(name, str):
                    self.known_paths.setdefault(digest, {}).setdefault(name, path)
                    self.recorded.add((digest, name))
                self.worked_before.append(str(record.get("url", "")))
        self.latest = latest_records(records)  # (class, url) -> its latest manifest line
        self.manifest = ManifestWriter(dataset_dir / MANIFEST_NAME)
        self.stats = {
            name: ClassStats(asked=config.per_class, on_disk=Counter(counts.get(name, Counter())))
            for name in config.classes
        }
        self.short_queries: list[ShortQuery] = []
        self.errors: list[dict[str, Any]] = []
        self.claimed: set[tuple[str, str]] = set()  # (class, url) fetched in this run
        self.is_network_confirmed = False  # a server answered, or the network check found one that would

    def run(self) -> RunSummary:
        """Every class in turn; KeyboardInterrupt passes through (what was written so far is complete)."""
        no_network = None
        try:
            for class_name in self.config.classes:
                self.download_class(class_name, self.class_candidates(class_name))
                self.ensure_val_image(class_name)  # not after a cut-off class: a later run completes it first
        except NoNetworkError as error:
            no_network = str(error)
        finally:
            self.manifest.close()
        return RunSummary(self.stats, self.short_queries, self.errors, no_network, self.label_conflicts())

    def ensure_val_image(self, class_name: str) -> None:
        """Move one train image of a class with 2 or more images and none in val/ there, so every class is checked.

        The one moved is our own download (named by its hash) with the smallest hash, not a label-conflict copy if
        another will do: the same choice on every run.
        Once in val/ it stays (later runs find a val image and move nothing); new images follow the hash rule.
        """
        stats = self.stats[class_name]
        if self.config.val_fraction <= 0 or stats.on_disk["val"] or stats.total_on_disk < 2:
            return
        ours = sorted(  # a label-conflict copy last: moving it alone would also make a train/val leak
            (len(paths) > 1, digest, path)
            for digest, paths in self.known_paths.items()
            if (path := paths.get(class_name)) is not None
            and OWN_NAME_PATTERN.match(path.rpartition("/")[2])
            and path.startswith(f"train/{class_name}/{digest}.")
            and (digest, class_name) in self.on_disk
            and (digest, class_name) in self.recorded
        )
        if not ours:
            logger.warning("%s has no image in val/ and none of ours to move there: move one yourself", class_name)
            return
        _, digest, source = ours[0]
        target = f"val/{source.removeprefix('train/')}"
        if not move_new_name(self.config.dataset_dir, source, target):
            return  # a parallel run moved it, or a file took the name: nothing of ours to overwrite
        stats.on_disk["train"] -= 1
        stats.on_disk["val"] += 1
        self.known_paths[digest][class_name] = target
        logger.info("%s: moved %s to val/, the class had no val image", class_name, cli.printable(source))
        for record in [r for r in self.latest.values() if r.get("path") == source and r.get("status") == "saved"]:
            self.write_record(record | {"time": utc_now(), "path": target, "split": "val"})

    def label_conflicts(self) -> list[dict[str, Any]]:
        """Images in two or more class folders (same bytes): each with its files, classes and URLs, by hash."""
        urls: dict[str, list[str]] = {}
        for record in self.latest.values():
            if record.get("status") == "saved" and isinstance(record.get("sha256"), str):
                urls.setdefault(record["sha256"], []).append(str(record.get("url")))
        conflicts = []
        for digest, paths in sorted(self.known_paths.items()):
            on_disk = {name: path for name, path in paths.items() if (digest, name) in self.on_disk}
            if len(on_disk) > 1:
                files, urls_of = sorted(on_disk.values()), urls.get(digest, [])
                conflicts.append({"sha256": digest, "classes": sorted(on_disk), "files": files, "urls": urls_of})
        return conflicts

    def class_candidates(self, class_name: str) -> list[Candidate]:
        config = self.config
        if config.url_candidates is not None:
            return [candidate for candidate in config.url_candidates if candidate.class_name == class_name]
        if self.search is None or not self.stats[class_name].is_short:
            return []  # enough images already: no search
        assert config.queries is not None and config.per_class is not None
        wanted = math.ceil(config.per_class * CANDIDATE_FACTOR)
        candidates, short = self.search.candidates(class_name, config.queries[class_name], wanted)
        self.short_queries.extend(short)
        return candidates

    def select_jobs(self, class_name: str, candidates: Sequence[Candidate]) -> list[Candidate]:
        """The candidates to fetch in this run; the others are counted as done, failed before, or duplicates."""
        stats = self.stats[class_name]
        jobs = []
        for candidate in candidates:
            key = (class_name, candidate.url)  # a URL offered under another class too is fetched for each
            previous = self.latest.get(key)
            if previous is not None and not should_fetch(previous, self.fetcher.limits, self.config.retry_failed):
                stats.already_done += 1
                if previous.get("status") == "failed":
                    stats.failed_before[str(previous.get("reason"))] += 1
            elif key in self.claimed:
                stats.duplicates += 1  # the same URL twice in the class's candidates
            else:
                self.claimed.add(key)
                jobs.append(candidate)
        return jobs

    def download_class(self, class_name: str, candidates: Sequence[Candidate]) -> None:
        """Fetch the class's candidates in parallel until it holds ``stats.asked`` images (or the URLs run out)."""
        stats = self.stats[class_name]
        stats.found = len(candidates)
        jobs = self.select_jobs(class_name, candidates)
        needed = None if stats.asked is None else stats.asked - stats.total_on_disk
        if needed is not None and needed <= 0:
            logger.debug(
                "%s: already %d images, %d asked: nothing to download", class_name, stats.total_on_disk, stats.asked
            )
            return
        if not jobs:
            return
        workers = self.config.workers
        saved = 0
        pending: set[Future[FetchResult]] = set()
        queue = iter(jobs)
        bar = cli.progress(total=needed if needed is not None else len(jobs), desc=class_name, unit="img", leave=True)
        redirect = logging_redirect_tqdm() if cli.progress_wanted() else contextlib.nullcontext()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="download")
        try:
            with redirect:
                while True:
                    while len(pending) < workers * IN_FLIGHT_PER_WORKER and (needed is None or saved < needed):
                        candidate = next(queue, None)
                        if candidate is None:
                            break
                        pending.add(pool.submit(self.fetcher.fetch, candidate))
                    if not pending:
                        break
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        result = future.result()
                        self.check_network(result, candidates)
                        if self.commit(result, stats, has_room=needed is None or saved < needed):
                            saved += 1
                            bar.update(1)
                        elif needed is None:
                            bar.update(1)
        except BaseException:  # Ctrl-C: downloads in flight end now, so the process ends within a second or so
            self.fetcher.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()
        pool.shutdown(wait=True)

    def check_network(self, result: FetchResult, candidates: Sequence[Candidate]) -> None:
        """Raise NoNetworkError when a connection failed before any server answered and no host can be reached.

        The hosts tried: this one, the others of the class, those that served images to earlier runs, and the
        search engine in search mode. One that accepts a connection means the failure is a dead host, recorded
        like any other; the check is made once per run at most.
        """
        if result.has_response:
            self.is_network_confirmed = True
        if self.is_network_confirmed or result.reason != "connection error":
            return
        urls = [result.candidate.url, *(candidate.url for candidate in candidates), *self.worked_before]
        hosts = [where for url in urls if (where := host_and_port(url)) is not None]
        if self.search is not None:
            hosts.append((SEARCH_HOST, 443))
        timeout_s = min(self.fetcher.limits.timeout_s, PROBE_TIMEOUT_S)
        if not network_reachable(hosts, timeout_s):
            others = len(set(hosts)) - 1
            host = hosts[0][0] if hosts else result.candidate.url
            raise NoNetworkError(f"cannot reach {host}" + (f" or any of {others} other hosts" if others > 0 else ""))
        self.is_network_confirmed = True

    def commit(self, result: FetchResult, stats: ClassStats, has_room: bool = True) -> bool:
        """Save a good image (or note the duplicate or failure) and append its manifest line; True for a new file.

        Without ``has_room`` (the class is full) a new image is neither kept nor recorded, so a later run may use it.
        """
        record = new_record(result.candidate)
        if result.reason is not None:
            self.record_failure(record, result, stats)
            return False
        assert result.sha256 is not None and result.facts is not None and result.data is not None
        facts, digest = result.facts, result.sha256
        class_name = result.candidate.class_name
        name = f"{digest}{FORMAT_EXTENSIONS[facts.image_format]}"
        record.update(width=facts.width, height=facts.height, format=facts.image_format, bytes=len(result.data))
        record.update(sha256=digest)
        paths = self.known_paths.get(digest, {})
        existing = paths.get(class_name)
        elsewhere = {
            other: path for other, path in paths.items() if other != class_name and (digest, other) in self.on_disk
        }

        # In place already: our own file whose manifest line is missing (a kill, or the manifest was deleted).
        is_in_place = (
            existing in {f"{split}/{class_name}/{name}" for split in SPLITS}
            and (digest, class_name) in self.on_disk
            and (digest, class_name) not in self.recorded
        )
        if existing is not None and not is_in_place:
            where = existing if (digest, class_name) in self.on_disk else f"{existing}, removed since"
            record.update(status="duplicate", duplicate_of=where)
            stats.duplicates += 1
            logger.debug("%s: same image as %s", cli.printable(result.candidate.url), cli.printable(where))
            self.write_record(record)
            return False
        if not is_in_place and not has_room:
            return False
        if elsewhere:  # a label conflict: a copy here too, in the split of the first, so it leaks nothing
            record["label_conflict_with"] = sorted(elsewhere.values())
            logger.warning(
                "%s: the same image is already in %s: kept in both classes, a label conflict to decide",
                cli.printable(result.candidate.url),
                cli.printable(", ".join(sorted(elsewhere.values()))),
            )
        split = min(elsewhere.values()).split("/")[0] if elsewhere else split_for_hash(digest, self.config.val_fraction)
        relative = existing if is_in_place else f"{split}/{class_name}/{name}"
        is_new = False
        if is_in_place:
            stats.found_on_disk += 1
        else:
            is_new = save_new_file(result.data, resolve_inside(self.config.dataset_dir, relative))
            stats.on_disk[split] += 1  # new, or saved by a parallel run after our scan: in the folder now
            if is_new:
                stats.downloaded += 1
            else:
                stats.found_on_disk += 1
        self.known_paths.setdefault(digest, {})[class_name] = relative
        self.on_disk.add((digest, class_name))
        self.recorded.add((digest, class_name))
        record.update(status="saved", path=relative, split=relative.split("/")[0])
        self.write_record(record)
        return is_new

    def write_record(self, record: dict[str, Any]) -> None:
        """Append a manifest line; it is the URL's state from now on."""
        self.manifest.write(record)
        self.latest[record["class"], record["url"]] = record

    def record_failure(self, record: dict[str, Any], result: FetchResult, stats: ClassStats) -> None:
        assert result.reason is not None
        reason = result.reason
        record.update(status="failed", reason=reason, detail=result.detail, retryable=is_retryable(reason))
        record["limit"] = limit_of(reason, self.fetcher.limits)
        if result.facts is not None:
            record.update(width=result.facts.width, height=result.facts.height, format=result.facts.image_format)
        record["bytes"] = result.declared_bytes
        stats.failures[reason] += 1
        self.errors.append({key: record[key] for key in ("class", "url", "reason", "detail")})
        logger.warning("%s: %s (%s)", cli.printable(record["url"]), reason, cli.printable(result.detail))
        self.write_record(record)


# ------------------------------------------------------------------------------------------------- command line


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Download training images from an image search or a URL list into dataset/train|val/<class>/.",
        epilog=cli.EXIT_CODES_HELP,
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
    cli.add_report_flag(
        parser,
        f"where to write this run's counts and failures as JSON (default: <dataset-dir>/{REPORT_NAME})",
        type=Path,
        default=None,
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
        help="seconds one download may take in all (connect, headers, body; half a second of grace), however slowly "
        "the server sends; a silent server is retried at once, one cut mid-answer on the next run "
        f"(default: {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help=f"largest download accepted, in bytes; raising it retries the URLs refused as too large "
        f"(default: {DEFAULT_MAX_BYTES})",
    )
    parser.add_argument(
        "--min-size",
        type=int,
        default=DEFAULT_MIN_SIZE,
        help=f"smallest width and height accepted, in pixels; lowering it retries the images refused as too small "
        f"(default: {DEFAULT_MIN_SIZE})",
    )
    parser.add_argument(
        "--ignore-content-type",
        action="store_true",
        help="download even when the server says it is not an image (HTML, text); the bytes are still decoded and "
        "verified (default: off)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help=f"retries of a download that timed out or got a 5xx answer (default: {DEFAULT_RETRIES})",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="also try again URLs that failed in earlier runs for a reason no limit decided (404, not an image, ...); "
        "timeouts, 5xx and connection errors are always tried again (default: off)",
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
    cli.add_output_flags(parser)
    return parser


def check_args(args: argparse.Namespace) -> str | None:
    """One sentence naming the flag when a value cannot work, else None."""
    if args.per_class is not None and args.per_class < 1:
        return f"--per-class must be at least 1, got {args.per_class}"
    if not 0.0 <= args.val_fraction < 1.0:
        return f"--val-fraction must be in [0, 1), got {args.val_fraction}"
    if args.workers < 1:
        return f"--workers must be at least 1, got {args.workers}"
    if not args.timeout > 0:
        return f"--timeout must be positive, got {args.timeout}"
    if args.max_bytes < 1:
        return f"--max-bytes must be positive, got {args.max_bytes}"
    if args.min_size < 1:
        return f"--min-size must be at least 1, got {args.min_size}"
    if args.retries < 0:
        return f"--retries cannot be negative, got {args.retries}"
    if args.queries is not None and args.urls_file is not None:
        return "--queries only applies to --duckduckgo; --urls-file lists the URLs itself"
    if args.dataset_dir.exists() and not args.dataset_dir.is_dir():
        return f"--dataset-dir {cli.printable(args.dataset_dir)} is a file, not a folder"
    for class_name in args.classes or ():
        if not CLASS_NAME_PATTERN.match(class_name):
            return f"class name {cli.printable(repr(class_name))} cannot be a folder name"
    return None


def read_urls_file(path: Path) -> tuple[list[Candidate], list[str]]:
    """Candidates from a ``class,url`` file (a repeated line kept once) and one message per malformed line.

    Raises ValueError with one sentence when the file cannot be used at all.
    """
    shown = cli.printable(path)
    reason = regular_file_reason(path.resolve()) if path.exists() else "no such file"  # a dangling link too
    if reason:
        raise ValueError(f"--urls-file {shown}: {reason}")
    if (size := path.stat().st_size) > MAX_URLS_FILE_BYTES:
        raise ValueError(f"--urls-file {shown}: {size} bytes, more than a URL list needs ({MAX_URLS_FILE_BYTES})")
    try:  # bounded and checked on the open file: a FIFO swapped in or a file grown since the checks is refused
        lines = read_bounded(path, "--urls-file", MAX_URLS_FILE_BYTES).decode("utf-8-sig").splitlines()
    except ReportError as error:
        raise ValueError(str(error)) from None
    except UnicodeDecodeError as error:
        raise ValueError(f"--urls-file {shown}: cannot read it as UTF-8 text ({error})") from None
    entries, problems = parse_url_lines(lines, str(path))
    for problem in problems:
        logger.warning("%s: skipped", cli.printable(problem))
    if not entries:
        raise ValueError(f"--urls-file {shown}: no 'class,url' line with an http(s) URL")
    first_line: dict[tuple[str, str], int] = {}  # (class, url) -> its first line
    first_class: dict[str, tuple[int, str]] = {}  # url -> (line, class) where it was first listed
    candidates = []
    for line_number, class_name, url in entries:
        if (class_name, url) in first_line:
            continue
        first_line[class_name, url] = line_number
        if url in first_class:
            line, name = first_class[url]
            logger.warning(
                "%s line %d: URL also listed as %r on line %d: downloaded for both, a label conflict to decide",
                shown,
                line_number,
                name,
                line,
            )
        first_class.setdefault(url, (line_number, class_name))
        candidates.append(Candidate(class_name, url, source="urls-file"))
    return candidates, problems


def build_config(args: argparse.Namespace) -> DownloadConfig:
    """The run's configuration from the parsed command line; ValueError with one sentence when it cannot work."""
    problem = check_args(args)
    if problem:
        raise ValueError(problem)
    queries = url_candidates = None
    input_errors: list[str] = []
    if args.urls_file is not None:
        url_candidates, input_errors = read_urls_file(args.urls_file)
        file_classes = list(dict.fromkeys(candidate.class_name for candidate in url_candidates))
        classes = args.classes or file_classes
        missing = [name for name in classes if name not in file_classes]
        if missing:
            where = f"not in {cli.printable(args.urls_file)} (it has: {', '.join(file_classes)})"
            raise ValueError(f"--classes {' '.join(missing)}: {where}")
        per_class = args.per_class
    else:
        queries = load_queries(args.queries)
        classes = args.classes or list(queries)
        unknown = [name for name in classes if name not in queries]
        if unknown:
            raise ValueError(
                f"no queries for class {', '.join(unknown)}; known: {', '.join(queries)} (or pass --queries)"
            )
        per_class = args.per_class or DEFAULT_PER_CLASS
    return DownloadConfig(
        dataset_dir=args.dataset_dir,
        report_path=args.report or args.dataset_dir / REPORT_NAME,
        classes=list(dict.fromkeys(classes)),
        per_class=per_class,
        queries=queries,
        url_candidates=url_candidates,
        urls_file=args.urls_file,
        input_errors=input_errors,
        val_fraction=args.val_fraction,
        workers=args.workers,
        retry_failed=args.retry_failed,
    )


def main(
    argv: Sequence[str] | None = None, *, search_backend: SearchBackend = ddgs_search, sleep: SleepFn | None = None
) -> int:
    """Run the downloader; ``search_backend`` and ``sleep`` are for tests (a fake search, no real waiting)."""
    args = get_args_parser().parse_args(argv)
    cli.apply_output_flags(args)
    logging.getLogger("urllib3").setLevel(logging.WARNING)  # one line per connection would drown -v
    if not args.verbose:
        logging.getLogger("ddgs").setLevel(logging.WARNING)  # its errors repeat our "retrying" warnings
    # We refuse oversized images ourselves, with a reason in the manifest; Pillow's warning would only repeat it.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
        config = build_config(args)
    except ValueError as error:
        return cli.error(cli.printable(error))
    problem = dataset_problem(config)
    if problem:
        return cli.error(problem)

    limits = FetchLimits(args.timeout, args.max_bytes, args.min_size, args.retries, args.ignore_content_type)
    fetcher = Fetcher(limits, sleep)
    search = None
    if config.queries is not None:
        options = SearchOptions(args.safesearch, args.size, args.type_image, args.license)
        search_dir = config.dataset_dir / SEARCH_CACHE_DIR
        search = ImageSearch(search_backend, options, search_dir, args.refresh_search, sleep or time.sleep)
    remove_stale_files(config.dataset_dir, config.report_path)
    try:
        summary = DownloadRun(config, fetcher, search).run()
    except KeyboardInterrupt:
        print(
            f"Interrupted: every image and manifest line written so far in {cli.printable(config.dataset_dir)} is "
            "complete; re-run the same command to resume.",
            file=sys.stderr,
        )
        return cli.EXIT_INTERRUPTED
    except (UnsafePathError, OSError) as error:  # a folder swapped for a symlink, a full disk, ...
        return cli.error(f"stopped: {error}; every image and manifest line written so far is complete")
    print(format_download_table(summary, limits))
    new_images = sum(stats.downloaded for stats in summary.stats.values())
    if summary.no_network is not None:
        hint = (
            SEARCH_NO_NETWORK_HINT
            if search is not None
            else f"connect, or check the URLs in {cli.printable(config.urls_file)}"
        )
        if not new_images:  # nothing was done: exit 2, nothing written
            return cli.error(f"no network: {summary.no_network}; {hint}")
        logger.warning("no network: %s; %s, then re-run the same command to carry on", summary.no_network, hint)
    manifest = cli.printable(config.dataset_dir / MANIFEST_NAME)
    print(f"{new_images} images downloaded into {cli.printable(config.dataset_dir)}; manifest: {manifest}")
    if config.dataset_dir.is_dir():
        write_report(config.report_path, summary, config.mode, config.input_errors)
    is_short = summary.no_network is not None or any(stats.is_short for stats in summary.stats.values())
    has_failed_urls = any(stats.failures or stats.failed_before for stats in summary.stats.values())
    has_failures = config.url_candidates is not None and (has_failed_urls or bool(config.input_errors))
    return cli.EXIT_PARTIAL if is_short or has_failures else cli.EXIT_OK


if __name__ == "__main__":
    status = main()
    if status == cli.EXIT_INTERRUPTED:  # a second Ctrl-C while the last connections close ends at once, quietly
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    raise SystemExit(status)
