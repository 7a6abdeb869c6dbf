"""What the three duplicate detectors share: finding and reading images, groups, the cache, the report, the gallery.

Imported by detect_duplicates_by_filesize.py, detect_duplicates_by_phash.py and detect_duplicates_by_embedding.py;
not a script. A detector scans a dataset with ``scan_dataset``, computes its per-file values through
``compute_cached`` (the per-file cache, Ctrl-C keeps what was done), turns the "is a duplicate of" pairs it finds
into groups with ``star_groups`` (every member is a neighbour of the group's representative: no chains), and writes
the report with ``finish``. The report's format (categories, validator, counts) is the root-level
duplicate_report.py's, which remove_duplicates.py, html_report.py and run_pipeline.py read it with.

Paths are relative to the dataset folder, in POSIX form; a file name that is not valid UTF-8 is kept, written as
``\\udcXX`` escapes by fileio.write_json (lossless, and the report stays valid UTF-8). How images are read (by
content, the reasons a bad file is refused, the mode conversion) is classifier.py's; what is added here is what only
duplicates need: a scan that never opens a named pipe, the completeness check of a file, the full upright size next
to a small decode.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import file_cache  # the sibling module (Python puts the script's folder on sys.path)
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # fileio.py, cli.py and classifier.py: project root
import cli  # noqa: E402 - needs the line above
import fileio  # noqa: E402
from duplicate_report import (  # noqa: E402 - the report's format
    CATEGORIES,
    CATEGORY_NOTES,
    REPORT_PREFIX,
    SCHEMA_VERSION,
    WHOLE_FOLDER_SET,
    categorize,
    iter_groups,
    problems_first,
    report_name,
    summarize,
    validate_report,
)

DETECTORS = (
    "detect_duplicates_by_filesize.py",
    "detect_duplicates_by_phash.py",
    "detect_duplicates_by_embedding.py",
)
if __name__ == "__main__":  # answer at once, before the slow import below (classifier.py imports torch)
    run_instead = "run one of " + ", ".join(f"data_collection/{name}" for name in DETECTORS)
    cli.refuse_running_as_script(__file__, run_instead, "the duplicate detectors")
import classifier  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_DATASET_DIR = "dataset"
DEFAULT_SETS = ("train", "val")  # the sub-folders a dataset made by download_images.py has
TAIL_BYTES = 65536  # a complete JPEG normally ends with its end marker within this many bytes of the end
GALLERY_MAX_GROUPS = 12  # rows of the contact sheet
GALLERY_MAX_FILES = 8  # columns: files shown per group
GALLERY_THUMB_PIXELS = 160  # thumbnails are decoded at about this size (JPEG draft mode)
GALLERY_TITLE_INCHES = 0.45  # space kept above the first row for the title, so it never covers a caption
ImageReadError = classifier.ImageLoadError  # an image that cannot be used; ``str(error)`` is the reason


@dataclass(frozen=True)
class ScanItem:
    """One candidate file: where it is and what the dataset layout says about it."""

    path: Path  # as found on disk (under the dataset folder)
    rel: str  # relative to the dataset folder, POSIX
    set_name: str
    class_name: str


class Scan(NamedTuple):
    """What scan_dataset found: the candidate images, the sets used and the files skipped without opening them."""

    items: list[ScanItem]
    sets: list[str]
    skipped: list[dict[str, str]]  # {"path", "reason"}: named pipes, sockets, device nodes


# ----------------------------------------------------------------------------------------------------------------
# Pure functions: groups, the report


def star_groups(
    count: int,
    pairs: Iterable[tuple[int, int]] | np.ndarray,
    weights: Sequence[int] | np.ndarray | None = None,
) -> list[list[int]]:
    """Groups in which every member is a neighbour of the group's representative (leader clustering); no chains.

    ``pairs`` are the "is within the threshold of" relation over ``count`` items (any order, either direction).
    Items are taken in a fixed order, most neighbours first, ties by index (the detectors index files in path
    order); an item not yet grouped becomes a representative and takes all its neighbours not yet grouped. So
    A~B~C~...~Z never joins A and Z unless both are near one representative, and the result does not depend on
    the order in which pairs were found.

    ``weights``: how many identical files an item stands for (the pHash detector collapses equal hashes into one
    item); an item of weight 2 or more is a group by itself. Returns groups as [representative, *others ascending],
    ordered by representative.
    """
    weights = np.ones(count, dtype=np.int64) if weights is None else np.asarray(weights, dtype=np.int64)
    edges = np.asarray(list(pairs) if not isinstance(pairs, np.ndarray) else pairs, dtype=np.int64).reshape(-1, 2)
    edges = edges[edges[:, 0] != edges[:, 1]]
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    both = np.concatenate([edges, edges[:, ::-1]])  # each edge in both directions, grouped by its first item
    both = both[np.lexsort((both[:, 1], both[:, 0]))]
    starts = np.searchsorted(both[:, 0], np.arange(count + 1))
    degree = np.bincount(both[:, 0], weights=weights[both[:, 1]], minlength=count) + weights - 1
    order = np.lexsort((np.arange(count), -degree))
    is_grouped = np.zeros(count, dtype=bool)
    groups = []
    for item in order[degree[order] > 0]:
        if is_grouped[item]:
            continue
        neighbours = both[starts[item] : starts[item + 1], 1]
        members = neighbours[~is_grouped[neighbours]]
        if len(members) == 0 and weights[item] < 2:
            continue
        is_grouped[item] = True
        is_grouped[members] = True
        groups.append([int(item), *sorted(int(member) for member in members)])
    return sorted(groups, key=lambda group: group[0])


def group_by_key(keys: Sequence[Any]) -> list[list[int]]:
    """Indices grouped by equal key, only groups of two or more, each ascending, groups by their first index."""
    by_key: dict[Any, list[int]] = {}
    for index, key in enumerate(keys):
        by_key.setdefault(key, []).append(index)
    return sorted((group for group in by_key.values() if len(group) > 1), key=lambda group: group[0])


def make_groups(
    entry_groups: Sequence[Sequence[dict[str, Any]]], group_extras: Sequence[dict[str, Any]] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Groups of file entries split into CATEGORIES; ids numbered 1.. by category, then size (largest first), path.

    The first entry of each group is its representative (recorded by path); files are listed in path order.
    """
    extras = list(group_extras) if group_extras is not None else [{} for _ in entry_groups]
    by_category: dict[str, list[tuple[list[dict[str, Any]], dict[str, Any]]]] = {c: [] for c in CATEGORIES}
    for entries, extra in zip(entry_groups, extras):
        files = sorted(entries, key=lambda entry: entry["path"])
        by_category[categorize(files)].append((files, {"representative": entries[0]["path"], **extra}))
    result: dict[str, list[dict[str, Any]]] = {}
    next_id = 1
    for category in CATEGORIES:
        result[category] = []
        for files, extra in sorted(by_category[category], key=lambda item: (-len(item[0]), item[0][0]["path"])):
            result[category].append({"id": next_id, "category": category, **extra, "files": files})
            next_id += 1
    return result


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
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """The report dict in the shared format (see the module docstring); plain types only."""
    report = {
        "schema_version": SCHEMA_VERSION,
        "method": method,
        "detector": f"detect_duplicates_by_{method}.py",
        "created": fileio.utc_now(),
        "dataset_dir": str(Path(dataset_dir).resolve()),
        "sets": list(sets),
        "arguments": arguments,
        "files_scanned": files_scanned,
        "images_read": images_read,
        **(extra or {}),
        "summary": summarize(duplicate_groups),
        "duplicate_groups": duplicate_groups,
        "warnings": list(warnings),
        "errors": sorted(errors, key=lambda error: error["path"]),
    }
    return to_plain(report)


def next_step(report: dict[str, Any], report_path: Path, gallery: Path | None) -> list[str]:
    """What to do with the report: a removal dry run for exact and pHash copies; for embeddings, look first.

    Semantic similarity is not duplication, so an embedding report never gets a removal line of its own choosing;
    and a report with warnings (implausible groups) gets none at all.
    """
    if not report["summary"]["groups"]:
        return []
    if report.get("warnings"):
        look = f"look at {gallery}" if gallery else "rerun with --gallery and look at the groups"
        return [f"Next: {look}; no removal is suggested for this report (see the warnings above)."]
    if report["method"] == "embedding":
        look = f"look at the groups in {gallery}" if gallery else "rerun with --gallery and look at the groups"
        return [
            f"Next: {look} (semantic similarity is not duplication); then decide group by group: "
            f"python data_collection/remove_duplicates.py --report {report_path} --strategy interactive"
        ]
    return [
        f"Next (a dry run): python data_collection/remove_duplicates.py --report {report_path} --strategy prefer-train"
    ]


def format_summary(report: dict[str, Any], report_path: Path | None = None, notes: Sequence[str] = ()) -> str:
    """The lines a detector prints on stdout: what was scanned, the groups per category, where the report is."""
    summary = report["summary"]
    skipped = len(report["errors"])
    lines = [
        f"Scanned {report['files_scanned']} files in {cli.printable(report['dataset_dir'])} "
        f"({', '.join(map(cli.printable, report['sets']))}): {report['images_read']} images read, {skipped} skipped"
        + (" (see 'errors' in the report)" if skipped else "")
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
    lines.extend(f"WARNING: {warning}" for warning in report.get("warnings", []))
    if report_path is not None:
        lines.append(f"Report: {cli.printable(report_path)}")
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
# Finding and reading images (classifier.py's rules): find by content, probe the header, decode small


def _candidates(root: Path, recursive: bool) -> Iterable[Path]:
    """Files under ``root`` (the folder itself read through if it is a symlink; nothing below it followed)."""
    if not recursive:
        with os.scandir(root) as entries:
            yield from (root / entry.name for entry in entries if not entry.name.startswith("."))
        return
    for directory, subdirs, names in os.walk(root, followlinks=False):
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        yield from (Path(directory) / name for name in names if not name.startswith("."))


def _kind_reason(path: Path) -> str | None:
    """Why ``path`` (followed through a symlink) is not a file to read, for named pipes, sockets and devices."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # a broken link or an unreadable entry: reported by the reader if it looks like an image
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return fileio.describe_kind(mode)


def scan_dataset(dataset_dir: Path, sets: Sequence[str]) -> Scan:
    """Every candidate image under the set folders of ``dataset_dir``, with its set and class.

    Set folders that do not exist are skipped with a warning; when none exists, the dataset folder itself is scanned
    as one set named ".". Class folders are fileio.class_folders' (a symlinked class folder is read through, as the
    trainer does; nothing below it is followed). Files are found by extension or by content, and a named pipe,
    socket or device node is never opened: it goes to ``skipped`` with its reason. Raises FileNotFoundError when
    ``dataset_dir`` is not a folder.
    """
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"dataset folder {dataset_dir} does not exist (pass --dataset-dir)")
    present = [name for name in sets if (dataset_dir / name).is_dir()]
    if not present:
        logger.info("No %s folder in %s: scanning the whole folder as one set", " or ".join(sets), dataset_dir)
    for name in sets:
        if present and name not in present:
            logger.warning("%s not found: skipped", cli.printable(dataset_dir / name))
    roots = [(dataset_dir / name, name) for name in present] or [(dataset_dir, WHOLE_FOLDER_SET)]
    items: list[ScanItem] = []
    skipped: list[dict[str, str]] = []
    for root, set_name in roots:
        places = [(root, "", False)] + [(root / name, name, True) for name in fileio.class_folders(root)]
        for folder, class_name, recursive in places:
            for path in _candidates(folder, recursive):
                if folder == dataset_dir and path.name.startswith(REPORT_PREFIX):
                    continue  # our own reports and galleries, when the dataset folder is scanned as a whole
                rel = path.relative_to(dataset_dir).as_posix()
                reason = _kind_reason(path)
                if reason:
                    skipped.append({"path": rel, "reason": reason})
                elif not path.is_dir() and (
                    path.suffix.lower() in classifier.IMAGE_EXTENSIONS or classifier.is_image_file(path)
                ):
                    items.append(ScanItem(path, rel, set_name, class_name))
    items.sort(key=lambda item: item.rel)
    return Scan(items, [name for _, name in roots], skipped)


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
                while chunk := handle.read(fileio.HASH_CHUNK_BYTES):
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


def read_image(path: Path, draft_size: tuple[int, int] | None = None, mode: str = "RGB") -> tuple[Any, tuple[int, int]]:
    """(decoded upright PIL image in ``mode`` "RGB" or "L", the full upright (width, height)); raises ImageReadError.

    ``draft_size``: JPEGs are decoded scaled by 1/2, 1/4 or 1/8 (DCT scaling) while both sides stay at least this
    large: far faster when only a small version is needed (a 32x32 hash, a thumbnail); see classifier.decode_image.
    """
    with classifier.open_image(path) as image:
        size = classifier.upright_size(image)
        return classifier.decode_image(image, draft_size, mode), size


def file_entry(item: ScanItem, width: int, height: int, **method_values: Any) -> dict[str, Any]:
    """The report entry of one file (see the module docstring); ``method_values`` are the method's own fields."""
    info = item.path.stat()
    return {
        "path": item.rel,
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
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
    describe: Callable[[int], tuple[ScanItem, int, int, dict[str, Any]]],
    errors: list[dict[str, str]],
) -> list[list[dict[str, Any]]]:
    """Report entries for groups of indices (representative first); ``describe(index)`` gives (ScanItem, width,
    height, method values).

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
# The flow every detector's computation goes through: the per-file cache (file_cache.py), compute, Ctrl-C


class Computed(NamedTuple):
    """What compute_cached gives: each item's values (None where they could not be computed), and the failures."""

    values: list[dict[str, Any] | None]  # per scanned item, in order: {column: value}
    errors: list[dict[str, str]]  # {"path", "reason"} of the items that could not be computed
    from_cache: int  # items whose values came from the cache (the others were computed in this run)


def file_key(item: ScanItem) -> file_cache.Key | None:
    """(relative path, size, mtime_ns): a changed file has another key. None when it cannot be stat'ed."""
    try:
        info = item.path.stat()
    except OSError:
        return None
    return (item.rel, info.st_size, info.st_mtime_ns)


def compute_cached(
    items: Sequence[ScanItem],
    cache_file: Path | None,
    settings: str,
    columns: file_cache.Columns,
    compute: Callable[[Sequence[ScanItem]], Iterable[tuple[dict[str, Any] | None, str | None]]],
    what: str,
) -> Computed | int:
    """Each item's values: from the cache where its path, size and mtime are unchanged, else from ``compute``.

    ``compute(items)`` yields for each item, in order, (values, None) or (None, why it failed). The cache (None: no
    cache) is saved afterwards, and on Ctrl-C with what was done; then one line says so and 130 is returned.
    ``what`` names the values in that line ("hashes").
    """
    keys = [file_key(item) for item in items]
    cache = file_cache.load(cache_file, settings, columns, file_cache.byte_limit(len(items))) if cache_file else {}
    values: list[dict[str, Any] | None] = [cache.get(key) if key else None for key in keys]
    todo = [index for index, value in enumerate(values) if value is None]
    reasons: dict[int, str] = {}

    def save() -> None:
        if cache_file:
            file_cache.save(cache_file, settings, {key: v for key, v in zip(keys, values) if key and v is not None})

    try:
        for position, (value, reason) in enumerate(compute([items[index] for index in todo])):
            if value is None:
                reasons[todo[position]] = reason or "could not be read"
            else:
                values[todo[position]] = value
    except KeyboardInterrupt:
        save()
        done = sum(values[index] is not None for index in todo)
        kept = f"{done} new {what} kept in the cache; a re-run goes on from there" if cache_file else "nothing written"
        print(f"Interrupted: {kept}. No report written.")
        return cli.EXIT_INTERRUPTED
    save()
    errors = [{"path": items[index].rel, "reason": reason} for index, reason in sorted(reasons.items())]
    return Computed(values, errors, len(items) - len(todo))


# ----------------------------------------------------------------------------------------------------------------
# Reports and the gallery


def gallery_figure(
    report: dict[str, Any],
    dataset_dir: Path,
    max_groups: int = GALLERY_MAX_GROUPS,
    max_files: int = GALLERY_MAX_FILES,
) -> tuple[Any, int]:
    """(matplotlib Figure, groups shown) of a contact sheet: one row per group, problems first, largest first.

    The title says "showing N of M groups"; room is kept above the first row so the title covers no caption.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib is slow to import
    from matplotlib.figure import Figure

    every_group = problems_first(report)
    groups = every_group[:max_groups]
    columns = min(max_files, max(len(group["files"]) for group in groups))
    height = 2.6 * len(groups) + GALLERY_TITLE_INCHES
    figure = Figure(figsize=(2.2 * columns, height))
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
            name = cli.printable(entry.get("filename", entry["path"].rsplit("/", 1)[-1]))
            marker = " *" if entry["path"] == group.get("representative") else ""
            ax.set_title(
                f"{cli.printable(entry['set'])}/{cli.printable(entry['class'])}{marker}\n{name[:24]}\n"
                f"{entry.get('width')}x{entry.get('height')}",
                fontsize=7,
            )
            if column == 0:
                more = len(group["files"]) - columns
                label = f"group {group['id']}\n{CATEGORY_NOTES[group['category']]}" + (
                    f"\n(+{more} more)" if more > 0 else ""
                )
                ax.set_ylabel(label, fontsize=7)
    figure.suptitle(
        f"Duplicate groups ({report['method']}): showing {len(groups)} of {len(every_group)} groups, "
        "label conflicts and leaks first (* = representative)",
        fontsize=10,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # file names in any script
        figure.tight_layout(rect=(0, 0, 1, 1 - GALLERY_TITLE_INCHES / height))
    return figure, len(groups)


def write_gallery(
    report: dict[str, Any],
    dataset_dir: Path,
    output: Path,
    max_groups: int = GALLERY_MAX_GROUPS,
    max_files: int = GALLERY_MAX_FILES,
) -> int:
    """The PNG contact sheet of gallery_figure, written atomically; returns the groups shown (0: no file)."""
    if not iter_groups(report):
        return 0
    figure, shown = gallery_figure(report, dataset_dir, max_groups, max_files)
    fileio.remove_stale_temp_files(output.parent, output.name)
    with warnings.catch_warnings(), fileio.atomic_write(output) as handle:
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        figure.savefig(handle, dpi=90, format="png")
    return shown


# ----------------------------------------------------------------------------------------------------------------
# What the three detector scripts share on the command line


def add_common_arguments(parser: argparse.ArgumentParser, method: str, is_gallery_default: bool = False) -> None:
    """--dataset-dir, --report, --sets, --gallery, -v, --no-progress: the same flags in every detector."""
    parser.add_argument(
        "--dataset-dir", type=Path, default=Path(DEFAULT_DATASET_DIR), help="dataset folder (default: dataset)"
    )
    cli.add_report_flag(
        parser,
        f"report file to write; give a path elsewhere to scan a read-only dataset "
        f"(default: <dataset-dir>/{report_name(method)})",
        aliases=("--output",),
        type=Path,
        default=None,
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
        default=Path("") if is_gallery_default else None,
        metavar="PNG",
        help="also write a contact sheet of the groups (label conflicts and leaks first), to PNG if given "
        + ("(default: on, the report path with .png)" if is_gallery_default else "(default: off; with no PNG: the "
           "report path with .png)"),
    )  # fmt: skip
    if is_gallery_default:
        parser.add_argument(
            "--no-gallery", dest="gallery", action="store_const", const=None, help="do not write the gallery"
        )
    if method != "filesize":
        parser.add_argument(
            "--cache",
            type=Path,
            default=None,
            help=f"per-file cache of what was computed, so a re-run only reads new or changed files "
            f"(default: .{method}_cache.npz beside the report)",
        )
        parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache (default: off)")
    cli.add_output_flags(parser)


def report_path(args: argparse.Namespace, method: str) -> Path:
    return args.report if args.report is not None else args.dataset_dir / report_name(method)


def cache_path(args: argparse.Namespace, method: str) -> Path | None:
    if args.no_cache:
        return None
    return args.cache if args.cache is not None else report_path(args, method).parent / f".{method}_cache.npz"


def gallery_path(args: argparse.Namespace, method: str) -> Path | None:
    if args.gallery is None:
        return None
    return args.gallery if str(args.gallery) not in ("", ".") else report_path(args, method).with_suffix(".png")


def start(args: argparse.Namespace, method: str) -> Scan | int:
    """What every detector does first: logging, progress bars, the writability check, the scan.

    Returns the scan, or the exit code after one sentence on stderr (a read-only destination is said before any
    work; an empty or missing dataset too).
    """
    cli.apply_output_flags(args)
    sets = parse_sets(args.sets)
    if not args.dataset_dir.is_dir():
        return cli.error(f"dataset folder {cli.printable(args.dataset_dir)} does not exist (pass --dataset-dir)")
    for path in (report_path(args, method), gallery_path(args, method)):
        reason = path is not None and fileio.writable_folder_reason(path.parent)
        if reason:
            what = "gallery" if path.suffix == ".png" else "report"
            return cli.error(
                f"{cli.printable(reason)} (the {what} {cli.printable(path.name)}); pass --report PATH somewhere "
                "writable to scan it anyway (the dataset itself is only read)"
            )
    scan = scan_dataset(args.dataset_dir, sets)
    if not scan.items:
        return cli.error(
            f"no images found in {cli.printable(args.dataset_dir)} (looked in: {', '.join(map(cli.printable, sets))})"
        )
    return scan


def arguments_for_report(args: argparse.Namespace) -> dict[str, Any]:
    return to_plain({key: value for key, value in vars(args).items()})


def log_errors(errors: Sequence[dict[str, str]]) -> None:
    for error in errors:
        logger.warning("Skipped %s: %s", cli.printable(error["path"]), cli.printable(error["reason"]))


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
    warnings: Sequence[str] = (),
) -> int:
    """The end of every detector: warn about skipped files, write the report (and the gallery), print the summary.

    Returns the exit code: 1 when files were skipped, else 0. ``warnings`` (implausible output) are recorded in the
    report and printed, and suppress the suggested removal command.
    """
    log_errors(errors)
    for warning in warnings:
        logger.warning("%s", warning)
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
        warnings=warnings,
    )
    validate_report(report, "the new report")  # a detector never writes what a reader would refuse
    output = report_path(args, method)
    fileio.remove_stale_temp_files(output.parent, output.name)
    fileio.write_json(output, report, indent=1)
    print(format_summary(report, output, notes))
    gallery = gallery_path(args, method)
    if gallery is not None:
        shown = write_gallery(report, args.dataset_dir, gallery)
        total = report["summary"]["groups"]
        print(
            f"Gallery: {cli.printable(gallery)} (showing {shown} of {total} groups)"
            if shown
            else "Gallery: no groups to show, nothing written"
        )
        gallery = gallery if shown else None
    for line in next_step(report, output, gallery):
        print(line)
    return cli.EXIT_PARTIAL if report["errors"] else cli.EXIT_OK
