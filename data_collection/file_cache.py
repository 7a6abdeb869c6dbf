"""The per-file cache of the duplicate detectors' values (hashes, embeddings): an .npz keyed by path, size and mtime.

Imported by duplicate_detection.py (``compute_cached``, the flow every detector's computation goes through); not a
script. A cache is only an optimisation, and a file anyone could have written: ``load`` bounds its size before
anything is unpacked (the file, the zip members' declared sizes, each array's header), checks every array's type and
shape after, and ignores a cache that fails any check with one warning, so the detector computes everything again and
``save`` replaces it.
"""

from __future__ import annotations

import logging
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py and fileio.py live in the project root
import cli  # noqa: E402 - needs the line above
import fileio  # noqa: E402

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the cache layout changes; an unknown cache is ignored and rebuilt
CACHE_BYTES_PER_FILE = 64 * 1024  # a cache row: a path (up to 4 KiB) and its values (a 2048-float embedding: 8 KiB)
CACHE_MIN_BYTES = 64 * 1024 * 1024  # the cache of a small dataset may grow to this before it is refused unread

Key = tuple[str, int, int]  # (relative path, size, mtime_ns): a changed file has another key
Columns = dict[str, tuple[str, tuple[int | None, ...]]]  # name -> (numpy dtype kinds, shape of one row; None: any)


def byte_limit(files: int) -> int:
    """The most bytes (on disk, and unpacked) a cache of ``files`` files may have before it is refused unread."""
    return max(CACHE_MIN_BYTES, files * CACHE_BYTES_PER_FILE)


def archive_problem(path: Path, max_bytes: int) -> str | None:
    """Why the .npz at ``path`` must not be loaded (too large on disk or unpacked, an array larger than its member,
    objects inside), read from the zip directory and the arrays' headers only; None when np.load may read it.
    """
    size = path.stat().st_size
    if size > max_bytes:
        return f"it has {size} bytes, more than the {max_bytes} a cache of this dataset may have"
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        unpacked = sum(member.file_size for member in members)
        if unpacked > max_bytes:
            return f"it unpacks to {unpacked} bytes, more than the {max_bytes} a cache of this dataset may have"
        for member in members:
            with archive.open(member) as handle:
                version = np.lib.format.read_magic(handle)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else None
                read_header = np.lib.format.read_array_header_2_0 if version == (2, 0) else read_header
                if read_header is None:
                    return f"{member.filename} has an unknown array format {version}"
                shape, _, dtype = read_header(handle)
                if dtype.hasobject:
                    return f"{member.filename} holds Python objects"
                if int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > member.file_size:
                    return f"{member.filename} declares an array larger than its {member.file_size} bytes"
    return None


def _column_problem(name: str, values: np.ndarray, rows: int, spec: tuple[str, tuple[int | None, ...]]) -> str | None:
    kinds, row_shape = spec
    is_shape_ok = values.ndim == 1 + len(row_shape) and all(
        want is None or want == have for want, have in zip(row_shape, values.shape[1:])
    )
    if values.dtype.kind not in kinds or len(values) != rows or not is_shape_ok:
        return f"column {name} is {values.dtype} {values.shape}, not {rows} rows of {row_shape} ({kinds})"
    return None


def rows_of(data: Any, settings: str, columns: Columns) -> dict[Key, dict[str, Any]] | None:
    """The rows of a loaded cache (np.load's NpzFile); None when it was made with other settings; ValueError naming
    the array that is not what ``save`` writes."""
    if int(data["version"]) != CACHE_VERSION or str(data["settings"]) != settings:
        return None
    paths, sizes, mtimes = data["paths"], data["sizes"], data["mtimes"]
    if paths.dtype.kind != "S" or sizes.dtype.kind != "i" or mtimes.dtype.kind != "i":
        raise ValueError(f"its keys are {paths.dtype}, {sizes.dtype}, {mtimes.dtype}, not bytes and integers")
    if not paths.ndim == sizes.ndim == mtimes.ndim == 1 or not len(paths) == len(sizes) == len(mtimes):
        raise ValueError("its keys are not three lists of one length")
    values = {name: data[f"column_{name}"] for name in columns} if len(paths) else {}
    for name, column in values.items():
        problem = _column_problem(name, column, len(paths), columns[name])
        if problem:
            raise ValueError(problem)
    keys = zip(paths.tolist(), sizes.tolist(), mtimes.tolist())
    return {
        (os.fsdecode(p), int(s), int(m)): {name: column[row] for name, column in values.items()}
        for row, (p, s, m) in enumerate(keys)
    }


def load(path: Path, settings: str, columns: Columns, max_bytes: int) -> dict[Key, dict[str, Any]]:
    """{file key: {column: value}} from a cache ``save`` wrote with the same ``settings`` and ``columns``; else {}.

    A cache is only an optimisation: one that is truncated, of the wrong types, or larger than ``max_bytes`` (checked
    before anything is unpacked: a deflate bomb costs nothing) is ignored with one warning, and rebuilt.
    """
    if fileio.regular_file_reason(path) is not None:
        return {}
    try:
        problem = archive_problem(path, max_bytes)
        if problem is None:
            with np.load(path, allow_pickle=False) as data:
                rows = rows_of(data, settings, columns)
            if rows is None:
                logger.info("Cache %s was made with other settings: computing everything again", cli.printable(path))
            return rows or {}
    except Exception as error:  # noqa: BLE001 - a cache is only an optimisation: anything wrong means "rebuild it"
        problem = f"{type(error).__name__}: {error}"
    problem = cli.shown(problem)  # member names and error texts come from the file: escaped, and cut
    logger.warning("Ignoring unusable cache %s (%s): computing everything again", cli.printable(path), problem)
    return {}


def save(path: Path, settings: str, cache: dict[Key, dict[str, Any]]) -> None:
    """Write the cache atomically (stale temp files of a killed run removed); an unwritable folder costs one warning.

    Paths are stored as their bytes' escapes (``os.fsencode``), so a file name that is not UTF-8 survives.
    """
    reason = fileio.writable_folder_reason(path.parent)
    if reason:
        logger.warning("Cache not saved: %s", cli.printable(reason))
        return
    keys = sorted(cache)
    names = sorted(cache[keys[0]]) if keys else []
    fileio.remove_stale_temp_files(path.parent, path.name)
    try:  # a folder in the cache's place, a full disk: the report is what matters, the cache is only an optimisation
        with fileio.atomic_write(path) as handle:
            np.savez(
                handle,
                version=np.int64(CACHE_VERSION),
                settings=np.str_(settings),
                paths=np.array([os.fsencode(key[0]) for key in keys] or [b""])[: len(keys)],
                sizes=np.array([key[1] for key in keys], dtype=np.int64),
                mtimes=np.array([key[2] for key in keys], dtype=np.int64),
                **{f"column_{name}": np.array([cache[key][name] for key in keys]) for name in names},
            )
    except OSError as error:
        logger.warning("Cache not saved: %s cannot be replaced (%s)", cli.printable(path), error.strerror or error)


if __name__ == "__main__":
    run_instead = "run data_collection/detect_duplicates_by_phash.py or detect_duplicates_by_embedding.py"
    cli.refuse_running_as_script(__file__, run_instead, "the duplicate detectors")
