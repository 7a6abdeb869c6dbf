"""Find exact copies (byte-identical files) in a dataset: group by file size, then confirm with a full content hash.

Only files whose size is shared by another file are hashed, so a scan costs little more than listing the folders.
Files of equal size but different bytes are never reported.

    python data_collection/detect_duplicates_by_filesize.py
    python data_collection/detect_duplicates_by_filesize.py --dataset-dir dataset --gallery
    python data_collection/detect_duplicates_by_filesize.py --dataset-dir /read/only/photos --report copies.json

Writes dataset/duplicate_report_filesize.json (the shared report format of duplicate_report.py; each file's own
value is its "sha256"; byte-identical files form one group, so there is nothing to chain), and with --gallery a PNG
contact sheet of the groups.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duplicate_detection as dd  # the sibling module (Python puts the script's folder on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py and fileio.py live in the project root
import cli  # noqa: E402 - needs the line above
import fileio  # noqa: E402

logger = logging.getLogger(__name__)

METHOD = "filesize"
DEFAULT_WORKERS = max(1, min(4, os.cpu_count() or 1))  # hashlib releases the GIL on large reads: threads suffice


# ----------------------------------------------------------------------------------------------------------------
# Pure functions


def sizes_to_hash(sizes: Sequence[int]) -> list[int]:
    """Indices of the files whose size is shared by at least one other file: the only ones worth hashing."""
    return [index for group in dd.group_by_key(sizes) for index in group]


def exact_duplicate_groups(sizes: Sequence[int], hashes: Sequence[str | None]) -> list[list[int]]:
    """Groups of indices with equal size and equal content hash; a None hash (not computed or failed) never groups."""
    keys = [
        (size, digest) if digest is not None else ("unique", index)
        for index, (size, digest) in enumerate(zip(sizes, hashes))
    ]
    return dd.group_by_key(keys)


# ----------------------------------------------------------------------------------------------------------------
# Disk


def probe_all(
    items: Sequence[dd.ScanItem],
) -> tuple[list[tuple[dd.ScanItem, int, tuple[int, int]]], list[dict[str, str]]]:
    """(item, size, (width, height)) for each usable image; the others as errors. Reads headers only."""
    good: list[tuple[dd.ScanItem, int, tuple[int, int]]] = []
    errors: list[dict[str, str]] = []
    for item in cli.progress(items, desc="Reading headers", unit="file"):
        try:
            dimensions = dd.probe_image(item.path)
            good.append((item, item.path.stat().st_size, dimensions))
        except dd.ImageReadError as error:
            errors.append({"path": item.rel, "reason": str(error)})
        except OSError as error:
            errors.append({"path": item.rel, "reason": f"cannot read the file ({error.strerror or error})"})
    return good, errors


def hash_files(paths: Sequence[Path], workers: int) -> list[str | BaseException]:
    """SHA-256 of each path in order, or the OSError that stopped it; in ``workers`` threads, with a progress bar."""

    def one(path: Path) -> str | BaseException:
        try:
            return fileio.sha256_file(path)
        except OSError as error:
            return error

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(cli.progress(pool.map(one, paths), total=len(paths), desc="Hashing", unit="file"))


# ----------------------------------------------------------------------------------------------------------------
# Command line


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Find byte-identical copies: group by file size, confirm with SHA-256.", add_help=add_help
    )
    dd.add_common_arguments(parser, METHOD)
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help=f"threads hashing files (default: {DEFAULT_WORKERS})"
    )
    parser.add_argument("--num-workers", dest="workers", type=int, help=argparse.SUPPRESS)  # the old spelling
    parser.epilog = cli.EXIT_CODES_HELP
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        return cli.error("--workers must be at least 1")
    scan = dd.start(args, METHOD)
    if isinstance(scan, int):
        return scan
    try:
        good, errors = probe_all(scan.items)
        candidates = sizes_to_hash([size for _, size, _ in good])
        hashes: list[str | None] = [None] * len(good)
        for index, result in zip(candidates, hash_files([good[i][0].path for i in candidates], args.workers)):
            if isinstance(result, BaseException):
                errors.append({"path": good[index][0].rel, "reason": f"cannot read the file ({result})"})
            else:
                hashes[index] = result
    except KeyboardInterrupt:
        print("Interrupted: no report written.")
        return cli.EXIT_INTERRUPTED

    def describe(index: int) -> tuple[dd.ScanItem, int, int, dict[str, str | None]]:
        item, _, (width, height) = good[index]
        return item, width, height, {"sha256": hashes[index]}

    groups = exact_duplicate_groups([size for _, size, _ in good], hashes)
    return dd.finish(
        args,
        METHOD,
        scan.sets,
        files_scanned=len(scan.items) + len(scan.skipped),
        images_read=len(good),
        entry_groups=dd.entry_groups_for(groups, describe, errors),
        errors=errors + scan.skipped,
        extra={"files_hashed": len(candidates)},
    )


if __name__ == "__main__":
    raise SystemExit(main())
