"""What the three duplicate detectors and remove_duplicates.py share: finding images, the report, groups, the gallery.

Not a script. ``detect_duplicates_by_{filesize,phash,embedding}.py`` scan a dataset with ``scan_dataset``, turn the
"is a duplicate of" pairs they find into groups with ``connected_components``, and write one report format with
``finish`` (``build_report`` + ``write_json_atomic``); ``remove_duplicates.py`` reads it back with ``load_report``.

Report layout (``SCHEMA_VERSION`` 1)::

    {"schema_version": 1, "method": "phash", "created": "...", "dataset_dir": "/abs/dataset", "sets": [...],
     "arguments": {...}, "files_scanned": 1234, "images_read": 1230,
     "summary": {"groups": 12, "files_in_groups": 27, "removable_copies": 15, "by_category": {...}},
     "duplicate_groups": {"same_class_and_set": [group, ...], "same_class_diff_set": [...],
                          "diff_class_same_set": [...], "diff_class_diff_set": [...]},
     "errors": [{"path": "train/bird/x.jpg", "reason": "empty file (0 bytes)"}]}
    group = {"id": 3, "category": "same_class_diff_set", "files": [entry, ...], ...method's own group values}
    entry = {"path": "train/bird/a.jpg", "size": 51234, "mtime_ns": ..., "set": "train", "class": "bird",
             "filename": "a.jpg", "width": 640, "height": 480, "is_symlink": false, ...method's own value}

Paths are relative to the dataset folder, in POSIX form. How images are found and read (by content, the reasons a
bad file is refused, the mode conversion) is classifier.py's, imported from the project root; what is added here is
what only duplicates need: the completeness check of a file, the full upright size next to a small decode.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # classifier.py lives in the project root
import classifier  # noqa: E402 - needs the line above

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # bump when the report layout changes; remove_duplicates.py refuses versions it does not know
METHODS = ("filesize", "phash", "embedding")
CATEGORIES = ("same_class_and_set", "same_class_diff_set", "diff_class_same_set", "diff_class_diff_set")
CATEGORY_NOTES = {  # what each category means for the user, printed next to the counts
    "same_class_and_set": "plain copies",
    "same_class_diff_set": "train/val leakage",
    "diff_class_same_set": "label conflict",
    "diff_class_diff_set": "label conflict and leakage",
}
DEFAULT_DATASET_DIR = "dataset"
DEFAULT_SETS = ("train", "val")  # the sub-folders a dataset made by download_images.py has
WHOLE_FOLDER_SET = "."  # the set name of images when the dataset folder has none of the set folders
HASH_CHUNK_BYTES = 1 << 20  # read files in 1 MiB pieces for hashing: constant memory for any file size
TAIL_BYTES = 65536  # a complete JPEG normally ends with its end marker within this many bytes of the end
GALLERY_MAX_GROUPS = 12  # rows of the contact sheet: the largest groups
GALLERY_MAX_FILES = 8  # columns: files shown per group
GALLERY_THUMB_PIXELS = 160  # thumbnails are decoded at about this size (JPEG draft mode)
ImageReadError = classifier.ImageLoadError  # an image that cannot be used; ``str(error)`` is the reason


class ReportError(ValueError):
    """A report or log that cannot be used; the message is one sentence saying why and what to do."""


@dataclass(frozen=True)
class ScanItem:
    """One candidate file: where it is and what the dataset layout says about it."""

    path: Path  # as found on disk (under the dataset folder)
    rel: str  # relative to the dataset folder, POSIX
    set_name: str
    class_name: str


# ----------------------------------------------------------------------------------------------------------------
# Pure functions: locations, categories, groups, summaries


def split_location(rel_parts: Sequence[str], set_name: str) -> tuple[str, str]:
    """(set, class) of a file from its path parts below the set folder: the class is the first folder, if any."""
    return set_name, (rel_parts[0] if len(rel_parts) > 1 else "")


def categorize(entries: Sequence[dict[str, Any]]) -> str:
    """The category of a group from the classes and sets of its files (see CATEGORIES)."""
    same_class = len({entry["class"] for entry in entries}) == 1
    same_set = len({entry["set"] for entry in entries}) == 1
    if same_class:
        return "same_class_and_set" if same_set else "same_class_diff_set"
    return "diff_class_same_set" if same_set else "diff_class_diff_set"


def connected_components(count: int, pairs: Iterable[tuple[int, int]] | np.ndarray) -> list[list[int]]:
    """Groups (of at least two) of the "is a duplicate of" relation over ``count`` items, whatever the pair order.

    Each group is sorted and groups are sorted by their first member, so the result does not depend on the order
    in which pairs or files were found.
    """
    parent = list(range(count))

    def find(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]  # path halving keeps the trees flat
            item = parent[item]
        return item

    for first, second in pairs:
        root_a, root_b = find(int(first)), find(int(second))
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    members: dict[int, list[int]] = {}
    for item in range(count):
        members.setdefault(find(item), []).append(item)
    return sorted((group for group in members.values() if len(group) > 1), key=lambda group: group[0])


def group_by_key(keys: Sequence[Any]) -> list[list[int]]:
    """Indices grouped by equal key, only groups of two or more; sorted as connected_components sorts."""
    by_key: dict[Any, list[int]] = {}
    for index, key in enumerate(keys):
        by_key.setdefault(key, []).append(index)
    return sorted((group for group in by_key.values() if len(group) > 1), key=lambda group: group[0])


def make_groups(
    entry_groups: Sequence[Sequence[dict[str, Any]]], group_extras: Sequence[dict[str, Any]] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Groups of file entries split into CATEGORIES; ids numbered 1.. by category, then size (largest first), path."""
    extras = list(group_extras) if group_extras is not None else [{} for _ in entry_groups]
    by_category: dict[str, list[tuple[list[dict[str, Any]], dict[str, Any]]]] = {c: [] for c in CATEGORIES}
    for entries, extra in zip(entry_groups, extras):
        files = sorted(entries, key=lambda entry: entry["path"])
        by_category[categorize(files)].append((files, extra))
    result: dict[str, list[dict[str, Any]]] = {}
    next_id = 1
    for category in CATEGORIES:
        result[category] = []
        for files, extra in sorted(by_category[category], key=lambda item: (-len(item[0]), item[0][0]["path"])):
            result[category].append({"id": next_id, "category": category, **extra, "files": files})
            next_id += 1
    return result


def iter_groups(report: dict[str, Any]) -> list[dict[str, Any]]:
    """All groups of a report in id order."""
    groups = [group for category in CATEGORIES for group in report["duplicate_groups"].get(category, [])]
    return sorted(groups, key=lambda group: group["id"])


def summarize(duplicate_groups: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Counts per category and overall; removable copies = files in groups minus one per group."""
    by_category = {
        category: {"groups": len(groups), "files": sum(len(group["files"]) for group in groups)}
        for category, groups in duplicate_groups.items()
    }
    groups = sum(counts["groups"] for counts in by_category.values())
    files = sum(counts["files"] for counts in by_category.values())
    return {"groups": groups, "files_in_groups": files, "removable_copies": files - groups, "by_category": by_category}


def to_plain(value: Any) -> Any:
    """numpy scalars/arrays and Paths to plain JSON types, recursively."""
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return value.as_posix()
    return value


def build_report(
    method: str,
    dataset_dir: Path,
    sets: Sequence[str],
    arguments: dict[str, Any],
    files_scanned: int,
    images_read: int,
    duplicate_groups: dict[str, list[dict[str, Any]]],
    errors: Sequence[dict[str, str]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report dict in the shared format (see the module docstring); plain types only."""
    report = {
        "schema_version": SCHEMA_VERSION,
        "method": method,
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "dataset_dir": str(Path(dataset_dir).resolve()),
        "sets": list(sets),
        "arguments": arguments,
        "files_scanned": files_scanned,
        "images_read": images_read,
        **(extra or {}),
        "summary": summarize(duplicate_groups),
        "duplicate_groups": duplicate_groups,
        "errors": sorted(errors, key=lambda error: error["path"]),
    }
    return to_plain(report)


def format_summary(report: dict[str, Any], report_path: Path | None = None, notes: Sequence[str] = ()) -> str:
    """The lines a detector prints on stdout: what was scanned, the groups per category, where the report is."""
    summary = report["summary"]
    skipped = len(report["errors"])
    lines = [
        f"Scanned {report['files_scanned']} files in {report['dataset_dir']} ({', '.join(report['sets'])}): "
        f"{report['images_read']} images read, {skipped} skipped" + (" (see 'errors' in the report)" if skipped else "")
    ]
    lines.append(
        f"Found {summary['groups']} duplicate groups ({report['method']}): {summary['files_in_groups']} files, "
        f"{summary['removable_copies']} removable copies"
    )
    for category in CATEGORIES:
        counts = summary["by_category"][category]
        lines.append(
            f"  {category:<22}{counts['groups']:>6} groups {counts['files']:>7} files   ({CATEGORY_NOTES[category]})"
        )
    lines.extend(notes)
    if report_path is not None:
        lines.append(f"Report: {report_path}")
        if summary["groups"]:
            lines.append(
                f"Next (a dry run): python data_collection/remove_duplicates.py --report {report_path} "
                "--strategy prefer-train"
            )
    return "\n".join(lines)


def parse_sets(values: Sequence[str]) -> list[str]:
    """Set folder names from ``--sets`` (space or comma separated), order kept, duplicates dropped."""
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip().strip("/")
            if name and name not in names:
                names.append(name)
    return names


# ----------------------------------------------------------------------------------------------------------------
# Reading images (classifier.py's rules): find by content, probe the header, decode small


def scan_dataset(dataset_dir: Path, sets: Sequence[str]) -> tuple[list[ScanItem], list[str]]:
    """Every candidate image under the set folders of ``dataset_dir``, with its set and class; and the sets used.

    Set folders that do not exist are skipped with a warning; when none exists, the dataset folder itself is scanned
    as one set named ".". Raises FileNotFoundError when ``dataset_dir`` is not a folder.
    """
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"dataset folder {dataset_dir} does not exist (pass --dataset-dir)")
    present = [name for name in sets if (dataset_dir / name).is_dir()]
    if not present:
        logger.info("No %s folder in %s: scanning the whole folder as one set", " or ".join(sets), dataset_dir)
    for name in sets:
        if present and name not in present:
            logger.warning("%s not found: skipped", dataset_dir / name)
    roots = [(dataset_dir / name, name) for name in present] or [(dataset_dir, WHOLE_FOLDER_SET)]
    items: list[ScanItem] = []
    for root, set_name in roots:
        for path in classifier.find_image_files(root):
            below_set = path.relative_to(root).parts
            set_value, class_name = split_location(below_set, set_name)
            items.append(ScanItem(path, path.relative_to(dataset_dir).as_posix(), set_value, class_name))
    return items, [name for _, name in roots]


def _jpeg_first_scan_offset(handle: Any) -> int | None:
    """Offset of the first start-of-scan marker, walking the marker segments from the start; None if malformed."""
    handle.seek(2)
    while True:
        marker = handle.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        while marker[1] == 0xFF:  # fill bytes before a marker
            next_byte = handle.read(1)
            if not next_byte:
                return None
            marker = b"\xff" + next_byte
        if marker[1] == 0xDA:
            return handle.tell() - 2
        if 0xD0 <= marker[1] <= 0xD7 or marker[1] == 0x01:
            continue  # markers without a length
        length_bytes = handle.read(2)
        if len(length_bytes) < 2:
            return None
        handle.seek(int.from_bytes(length_bytes, "big") - 2, os.SEEK_CUR)


def check_file_complete(path: Path, image_format: str | None) -> str | None:
    """Why a JPEG, PNG or WebP file is cut short (an interrupted download), or None; no pixel is decoded.

    JPEG: an end-of-image marker must follow the first scan (entropy-coded data never contains one, and a trailer
    such as a motion photo's video after the marker is fine). PNG: an IEND chunk. WebP: the size its header declares.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            if image_format == "JPEG":
                scan = _jpeg_first_scan_offset(handle)
                if scan is None:
                    return "truncated or malformed JPEG (no image data found)"
                handle.seek(max(scan, size - TAIL_BYTES))
                if b"\xff\xd9" in handle.read():
                    return None
                handle.seek(scan)  # a trailer after the end marker (e.g. a motion photo's video): read it all
                previous = b""
                while chunk := handle.read(HASH_CHUNK_BYTES):
                    if b"\xff\xd9" in previous[-1:] + chunk:  # the marker may straddle two reads
                        return None
                    previous = chunk
                return "truncated JPEG (no end-of-image marker: an interrupted download?)"
            if image_format == "PNG":
                handle.seek(max(0, size - TAIL_BYTES))
                if b"IEND" in handle.read():
                    return None
                return "truncated PNG (no IEND chunk: an interrupted download?)"
            if image_format == "WEBP":
                header = handle.read(8)
                declared = int.from_bytes(header[4:8], "little") + 8
                return None if size >= declared else f"truncated WebP ({size} of {declared} bytes)"
    except OSError as error:
        return f"cannot read the file ({error.strerror or error})"
    return None


def probe_image(path: Path) -> tuple[int, int]:
    """(width, height) upright from the header plus a completeness check; raises ImageReadError. Decodes nothing."""
    with classifier.open_image(path) as image:
        image_format = image.format
        size = classifier.upright_size(image)
    problem = check_file_complete(path, image_format)
    if problem:
        raise ImageReadError(problem)
    return size


def read_image(
    path: Path, draft_size: tuple[int, int] | None = None, mode: str = "RGB"
) -> tuple[Image.Image, tuple[int, int]]:
    """(decoded upright image in ``mode`` "RGB" or "L", the full upright (width, height)); raises ImageReadError.

    ``draft_size``: JPEGs are decoded scaled by 1/2, 1/4 or 1/8 (DCT scaling) while both sides stay at least this
    large: far faster when only a small version is needed (a 32x32 hash, a thumbnail); see classifier.decode_image.
    """
    with classifier.open_image(path) as image:
        size = classifier.upright_size(image)
        return classifier.decode_image(image, draft_size, mode), size


def file_entry(item: ScanItem, width: int, height: int, **method_values: Any) -> dict[str, Any]:
    """The report entry of one file (see the module docstring); ``method_values`` are the method's own fields."""
    stat = item.path.stat()
    return {
        "path": item.rel,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "set": item.set_name,
        "class": item.class_name,
        "filename": item.path.name,
        "width": int(width),
        "height": int(height),
        "is_symlink": item.path.is_symlink(),
        **method_values,
    }


def entry_groups_for(
    groups: Sequence[Sequence[int]],
    describe: Any,
    errors: list[dict[str, str]],
) -> list[list[dict[str, Any]]]:
    """Report entries for groups of indices; ``describe(index)`` gives (ScanItem, width, height, method values).

    A file that disappeared since it was read is added to ``errors`` and left out; a group left with one file is
    dropped.
    """
    entry_groups = []
    for group in groups:
        entries = []
        for index in group:
            item, width, height, values = describe(index)
            try:
                entries.append(file_entry(item, width, height, **values))
            except OSError as error:
                errors.append({"path": item.rel, "reason": f"disappeared during the scan ({error.strerror})"})
        if len(entries) > 1:
            entry_groups.append(entries)
    return entry_groups


# ----------------------------------------------------------------------------------------------------------------
# Files: hashing, atomic JSON, loading reports, the gallery


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes, read in pieces (follows symlinks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """The report as strict JSON, written atomically (temp file, fsync, rename) by classifier.py's writer."""
    classifier.write_json_atomically(path, to_plain(data), indent=1)


def read_json(path: Path, what: str) -> Any:
    """Parsed JSON; ReportError with one sentence when the file is missing, unreadable or not JSON."""
    if not path.is_file():
        raise ReportError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ReportError(f"cannot read {what} {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise ReportError(f"{what} {path} is not valid JSON (truncated?): {error}") from None


def validate_report(report: Any, source: str = "the report") -> dict[str, Any]:
    """The report if it has the layout this module writes; ReportError naming what is wrong otherwise."""
    if not isinstance(report, dict) or "duplicate_groups" not in report:
        raise ReportError(f"{source} is not a duplicate report (no 'duplicate_groups'); run a detector first")
    version = report.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ReportError(
            f"{source} has schema version {version!r} but this script reads version {SCHEMA_VERSION}; "
            "run the detector again to make a new report"
        )
    if report.get("method") not in METHODS:
        raise ReportError(f"{source} names an unknown method {report.get('method')!r} (known: {', '.join(METHODS)})")
    groups = report["duplicate_groups"]
    if not isinstance(groups, dict) or not set(groups) <= set(CATEGORIES):
        raise ReportError(f"{source} has unknown duplicate group categories; expected {', '.join(CATEGORIES)}")
    required = ("path", "size", "mtime_ns", "set", "class")
    for category, category_groups in groups.items():
        for group in category_groups if isinstance(category_groups, list) else [None]:
            files = group.get("files") if isinstance(group, dict) else None
            if (
                not isinstance(files, list)
                or not isinstance(group.get("id"), int)
                or not all(isinstance(entry, dict) and all(key in entry for key in required) for entry in files)
            ):
                raise ReportError(f"{source} has a malformed group in {category!r}; run the detector again")
    return report


def load_report(path: Path) -> dict[str, Any]:
    """A validated duplicate report from ``path``; ReportError (one sentence) when it cannot be used."""
    return validate_report(read_json(path, "report"), f"report {path}")


def write_gallery(
    report: dict[str, Any],
    dataset_dir: Path,
    output: Path,
    max_groups: int = GALLERY_MAX_GROUPS,
    max_files: int = GALLERY_MAX_FILES,
) -> int:
    """A PNG contact sheet of the largest groups (one row per group); returns how many groups it shows (0: no file)."""
    groups = sorted(iter_groups(report), key=lambda group: (-len(group["files"]), group["id"]))[:max_groups]
    if not groups:
        return 0
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib is slow to import
    from matplotlib.figure import Figure

    columns = min(max_files, max(len(group["files"]) for group in groups))
    figure = Figure(figsize=(2.2 * columns, 2.6 * len(groups)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(groups), columns, squeeze=False)
    for row, group in enumerate(groups):
        for column in range(columns):
            ax = axes[row][column]
            ax.set_xticks([])
            ax.set_yticks([])
            if column >= len(group["files"]):
                ax.axis("off")
                continue
            entry = group["files"][column]
            try:
                thumb, _ = read_image(dataset_dir / entry["path"], (GALLERY_THUMB_PIXELS, GALLERY_THUMB_PIXELS))
                thumb.thumbnail((GALLERY_THUMB_PIXELS, GALLERY_THUMB_PIXELS))
                ax.imshow(np.asarray(thumb))
            except ImageReadError as error:
                ax.text(0.5, 0.5, f"unreadable:\n{error}"[:60], ha="center", va="center", fontsize=6, wrap=True)
            name = entry.get("filename", entry["path"].rsplit("/", 1)[-1])
            ax.set_title(
                f"{entry['set']}/{entry['class']}\n{name[:24]}\n{entry.get('width')}x{entry.get('height')}", fontsize=7
            )
            if column == 0:
                more = len(group["files"]) - columns
                label = f"group {group['id']}\n{group['category']}" + (f"\n(+{more} more)" if more > 0 else "")
                ax.set_ylabel(label, fontsize=7)
    figure.suptitle(f"Largest duplicate groups ({report['method']})", fontsize=10)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp.png", dir=output.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # file names in any script
            figure.tight_layout()
            figure.savefig(tmp_name, dpi=90, format="png")
        os.replace(tmp_name, output)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return len(groups)


# ----------------------------------------------------------------------------------------------------------------
# What the three detector scripts share on the command line


def add_common_arguments(parser: argparse.ArgumentParser, method: str) -> None:
    """--dataset-dir, --output, --sets, --gallery: the same flags with the same defaults in every detector."""
    parser.add_argument(
        "--dataset-dir", type=Path, default=Path(DEFAULT_DATASET_DIR), help="dataset folder (default: dataset)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"report file (default: <dataset-dir>/duplicate_report_{method}.json)",
    )
    parser.add_argument(
        "--sets",
        nargs="+",
        default=list(DEFAULT_SETS),
        metavar="NAME",
        help="set folders of the dataset to scan; when none exists the dataset folder itself is scanned "
        "(default: train val)",
    )
    parser.add_argument(
        "--gallery",
        nargs="?",
        type=Path,
        const=Path(""),
        default=None,
        metavar="PNG",
        help="also write a contact sheet of the largest groups, to PNG if given "
        "(default: off; with no PNG: the report path with .png)",
    )


def report_path(args: argparse.Namespace, method: str) -> Path:
    return args.output if args.output is not None else args.dataset_dir / f"duplicate_report_{method}.json"


def arguments_for_report(args: argparse.Namespace) -> dict[str, Any]:
    return to_plain({key: value for key, value in vars(args).items()})


def log_errors(errors: Sequence[dict[str, str]]) -> None:
    for error in errors:
        logger.warning("Skipped %s: %s", error["path"], error["reason"])


def finish(
    args: argparse.Namespace,
    method: str,
    sets: Sequence[str],
    *,
    files_scanned: int,
    images_read: int,
    entry_groups: Sequence[Sequence[dict[str, Any]]],
    errors: Sequence[dict[str, str]],
    extra: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> int:
    """The end of every detector: warn about skipped files, write the report (and the gallery), print the summary.

    Returns the exit code: 1 when files were skipped, else 0.
    """
    log_errors(errors)
    report = build_report(
        method,
        args.dataset_dir,
        sets,
        arguments_for_report(args),
        files_scanned=files_scanned,
        images_read=images_read,
        duplicate_groups=make_groups(entry_groups),
        errors=errors,
        extra=extra,
    )
    output = report_path(args, method)
    write_json_atomic(output, report)
    print(format_summary(report, output, notes))
    if args.gallery is not None:
        gallery = args.gallery if str(args.gallery) not in ("", ".") else output.with_suffix(".png")
        shown = write_gallery(report, args.dataset_dir, gallery)
        print(f"Gallery: {gallery} ({shown} groups)" if shown else "Gallery: no groups to show, nothing written")
    return 1 if report["errors"] else 0


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
