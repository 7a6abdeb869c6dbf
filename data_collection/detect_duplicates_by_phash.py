"""Find near copies (resized, recompressed, slightly cropped or brightened) with imagehash's perceptual hash (pHash).

Images are decoded at reduced size (JPEG draft mode: the hash needs only 32x32 pixels) and hashed in parallel
processes. Pairs within the Hamming ``--threshold`` are found exactly: by FAISS's multi-index hashing where
faiss-cpu is installed (seconds for a million hashes), else by comparing all pairs with numpy (the same pairs,
minutes from about 50,000 images). A group is a representative and the images within the threshold of it (never
a chain A~B~C joining images far apart); the representative is the image with the most near copies, ties by path.

    python data_collection/detect_duplicates_by_phash.py --threshold 5
    python data_collection/detect_duplicates_by_phash.py --threshold 8 --flip-invariant --gallery
    python data_collection/detect_duplicates_by_phash.py --dataset-dir photos --hash-size 16 --threshold 20

Writes dataset/duplicate_report_phash.json (the shared report format of duplicate_report.py; each file's own value
is its "phash" in hex), .phash_cache.npz beside it (hashes by path, size and modification time: a re-run hashes only
new or changed files), and with --gallery a PNG contact sheet of the groups (label conflicts and leaks first).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import duplicate_report as dr  # the sibling modules (Python puts the script's folder on sys.path)
import numpy as np
import similarity_search as search
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py lives in the project root
import cli  # noqa: E402 - needs the line above

logger = logging.getLogger(__name__)

METHOD = "phash"
DEFAULT_THRESHOLD = 5  # of 64 bits: resized / recompressed / 5%-cropped / brightened copies stay within it
DEFAULT_HASH_SIZE = 8  # 8x8 = 64-bit hashes, imagehash's default
HIGHFREQ_FACTOR = 4  # imagehash.phash's default: the DCT runs on (hash_size * 4) pixels square
DEFAULT_WORKERS = os.cpu_count() or 1  # decoding is CPU-bound: one process per core
ROUND_DECIMALS = 6  # DCT products carry ~1e-10 of float noise; coefficients that differ matter by far more
MIN_FILES_FOR_PROCESSES = 64  # below this, starting processes costs more than it saves
CHUNKSIZE = 16  # files per task sent to a worker process: amortises the inter-process round trip
LOW_INFORMATION_FRACTION = 0.25  # hashes with fewer set bits come from nearly uniform images (normal: about 0.5)


# ----------------------------------------------------------------------------------------------------------------
# Pure functions: hashes as bit arrays, Hamming distances, near-duplicate search


def pack_hashes(bit_rows: np.ndarray) -> np.ndarray:
    """(n, bits) booleans -> (n, words) uint64, zero padded (padding never changes a distance)."""
    packed = np.packbits(np.asarray(bit_rows, dtype=bool), axis=1)
    padding = (-packed.shape[1]) % 8
    if padding:
        packed = np.pad(packed, ((0, 0), (0, padding)))
    return np.ascontiguousarray(packed).view(np.uint64)


def unpack_hashes(words: np.ndarray, bits: int) -> np.ndarray:
    """(n, words) uint64 -> (n, bits) booleans: the inverse of pack_hashes."""
    return np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=1)[:, :bits].astype(bool)


def bits_from_packed(packed: Sequence[bytes], bits: int) -> np.ndarray:
    """(n, bits) booleans from hashes packed with np.packbits (what the worker processes return)."""
    matrix = np.frombuffer(b"".join(packed), dtype=np.uint8).reshape(len(packed), -1)
    return np.unpackbits(matrix, axis=1)[:, :bits].astype(bool)


def is_low_information(bit_rows: np.ndarray) -> np.ndarray:
    """True for hashes of nearly uniform images: a pHash has about half its bits set, a flat image almost none.

    Such hashes say nothing about the picture (a plain red and a plain blue image hash alike), so they are never
    matched.
    """
    return np.asarray(bit_rows, dtype=bool).sum(axis=1) < bit_rows.shape[1] * LOW_INFORMATION_FRACTION


def near_duplicate_groups(
    words: np.ndarray, max_distance: int, bits: int, mirrored_words: np.ndarray | None = None
) -> tuple[list[list[int]], dict[str, Any]]:
    """(groups of images within ``max_distance`` of their group's representative (dr.star_groups), representative
    first; how the pairs were searched). With ``mirrored_words``, an image also counts as near another when its
    mirror image is. The pairs are exact (similarity_search.hamming_pairs: FAISS or numpy, the same pairs).

    Images with identical hashes (and mirror hashes) are collapsed into one search item first, so a thousand copies
    of one image cost one entry, not a million pairs; ties between items go to the first image (path order).
    """
    keys = words if mirrored_words is None else np.concatenate([words, mirrored_words], axis=1)
    unique_keys, first_image, node_of_image = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    node_of_image = node_of_image.ravel()
    by_image = np.argsort(first_image, kind="stable")  # nodes renumbered in the order of their first image
    rank = np.empty_like(by_image)
    rank[by_image] = np.arange(len(by_image))
    node_of_image = rank[node_of_image]
    unique_keys = unique_keys[by_image]
    nodes = len(unique_keys)
    width = words.shape[1]
    rows = unique_keys[:, :width]
    if mirrored_words is not None:
        rows = np.concatenate([rows, unique_keys[:, width:]])  # rows nodes.. are the mirrored hashes
    pairs, search_info = search.hamming_pairs(rows, max_distance, bits)
    first, second = pairs[:, 0], pairs[:, 1]
    keep = (first % nodes != second % nodes) & ((first < nodes) | (second < nodes))  # not both mirrored
    node_pairs = np.stack([first[keep] % nodes, second[keep] % nodes], axis=1)
    weights = np.bincount(node_of_image, minlength=nodes)
    images_of_node = np.split(np.argsort(node_of_image, kind="stable"), np.cumsum(weights)[:-1])
    groups = []
    for node_group in dr.star_groups(nodes, node_pairs, weights):
        representative = images_of_node[node_group[0]]
        others = np.concatenate([representative[1:], *(images_of_node[node] for node in node_group[1:])])
        groups.append([int(representative[0]), *sorted(int(image) for image in others)])
    return groups, search_info


# ----------------------------------------------------------------------------------------------------------------
# Disk: hashing files in worker processes


class HashResult(NamedTuple):
    """What hashing one file gives: the hash (hex and packed bits) and the upright size, or the reason it failed."""

    phash: str | None  # imagehash's hex form
    packed: bytes  # the hash bits, np.packbits
    mirrored: bytes  # the hash bits of the left-right mirrored image, or b"" when not asked for
    width: int
    height: int
    error: str | None  # why the file could not be hashed; None when it was


@functools.cache
def dct_rows(size: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the (unnormalised) DCT-II matrix of ``size`` points: scipy.fftpack.dct's basis."""
    frequencies, samples = np.arange(keep)[:, None], np.arange(size)[None, :]
    return 2.0 * np.cos(np.pi * frequencies * (2 * samples + 1) / (2 * size))


def phash_bits(image: Image.Image, hash_size: int) -> np.ndarray:
    """imagehash.phash's bits ((hash_size, hash_size) booleans) of a greyscale image, without its per-call overhead.

    The same steps (LANCZOS resize to hash_size * 4 square, 2-D DCT, low frequencies above their median); only the
    low-frequency corner of the DCT is computed, as two small matrix products.
    """
    side = hash_size * HIGHFREQ_FACTOR
    pixels = np.asarray(image.resize((side, side), Image.Resampling.LANCZOS), dtype=np.float64)
    basis = dct_rows(side, hash_size)
    low = np.round(basis @ pixels @ basis.T, ROUND_DECIMALS)  # a flat image's zeros stay exact zeros, as in scipy
    ordered = np.sort(low, axis=None)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return low > median


def hash_hex(bits: np.ndarray) -> str:
    """imagehash's hex form of a hash: the bits row by row as one big-endian number, zero-padded."""
    flat = bits.ravel()
    value = int.from_bytes(np.packbits(flat).tobytes(), "big") >> ((-len(flat)) % 8)
    return f"{value:0{-(-len(flat) // 4)}x}"


def hash_file(task: tuple[str, int, bool]) -> HashResult:
    """The HashResult of one file. Runs in worker processes: takes and returns plain values.

    A JPEG is decoded in draft mode straight to greyscale at no less than the hash's working size.
    """
    path, hash_size, is_flip_invariant = task
    side = hash_size * HIGHFREQ_FACTOR
    try:
        image, (width, height) = dr.read_image(Path(path), draft_size=(side, side), mode="L")
        bits = phash_bits(image, hash_size)
        mirrored = np.packbits(phash_bits(ImageOps.mirror(image), hash_size)).tobytes() if is_flip_invariant else b""
        return HashResult(hash_hex(bits), np.packbits(bits).tobytes(), mirrored, width, height, None)
    except dr.ImageReadError as error:
        return HashResult(None, b"", b"", 0, 0, str(error))
    except Exception as error:  # noqa: BLE001 - one odd file must never stop the scan
        return HashResult(None, b"", b"", 0, 0, f"{type(error).__name__}: {error}")


def iter_hashes(paths: Sequence[Path], hash_size: int, is_flip_invariant: bool, workers: int) -> Iterator[HashResult]:
    """hash_file for every path, in order, as each is done: in ``workers`` processes (in this one for few files),
    with a progress bar. What was yielded before a Ctrl-C is the caller's to keep.
    """
    tasks = [(str(path), hash_size, is_flip_invariant) for path in paths]
    options = {"total": len(tasks), "desc": "Hashing", "unit": "img"}
    if workers == 1 or len(tasks) < MIN_FILES_FOR_PROCESSES:
        yield from (hash_file(task) for task in cli.progress(tasks, **options))
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from cli.progress(pool.map(hash_file, tasks, chunksize=CHUNKSIZE), **options)


def hash_files(paths: Sequence[Path], hash_size: int, is_flip_invariant: bool, workers: int) -> list[HashResult]:
    """iter_hashes as a list."""
    return list(iter_hashes(paths, hash_size, is_flip_invariant, workers))


def cached_results(keys: Sequence[tuple[str, int, int] | None], cache: dict) -> list[HashResult | None]:
    """The HashResult of each item found in the cache (same path, size and mtime), else None."""
    results: list[HashResult | None] = []
    for key in keys:
        values = cache.get(key) if key else None
        results.append(
            None
            if values is None
            else HashResult(
                str(values["phash"]),
                values["packed"].tobytes(),
                values["mirrored"].tobytes(),
                int(values["width"]),
                int(values["height"]),
                None,
            )
        )
    return results


def cache_entries(keys: Sequence[tuple[str, int, int] | None], results: Sequence[HashResult | None]) -> dict:
    """The cache's rows for the files hashed without error."""
    return {
        key: {
            "phash": result.phash,
            "packed": np.frombuffer(result.packed, dtype=np.uint8),
            "mirrored": np.frombuffer(result.mirrored, dtype=np.uint8),
            "width": result.width,
            "height": result.height,
        }
        for key, result in zip(keys, results)
        if key is not None and result is not None and result.error is None
    }


# ----------------------------------------------------------------------------------------------------------------
# Command line


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Find near copies with a perceptual hash (imagehash pHash) and a Hamming-distance threshold.",
        epilog=cli.EXIT_CODES_HELP,
        add_help=add_help,
    )
    dr.add_common_arguments(parser, METHOD)
    parser.add_argument(
        "--threshold",
        type=int,
        default=DEFAULT_THRESHOLD,
        help="Hamming distance: the most hash bits (of hash-size**2) in which an image may differ from its group's "
        f"representative and still count as a copy, 0 to hash-size**2 (default: {DEFAULT_THRESHOLD} of 64)",
    )
    parser.add_argument(
        "--hash-size",
        type=int,
        default=DEFAULT_HASH_SIZE,
        help=f"hash side: the hash has hash-size**2 bits (default: {DEFAULT_HASH_SIZE}, i.e. 64 bits)",
    )
    parser.add_argument(
        "--flip-invariant", action="store_true", help="also find mirrored (left-right flipped) copies (default: off)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"processes decoding and hashing images (default: {DEFAULT_WORKERS}, the CPU count)",
    )
    parser.add_argument("--num-workers", dest="workers", type=int, help=argparse.SUPPRESS)  # the old spelling
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.hash_size < 2:
        return cli.error("--hash-size must be at least 2")
    bits = args.hash_size**2
    if not 0 <= args.threshold <= bits:
        return cli.error(
            f"--threshold must be between 0 and {bits} (the bits of a hash of --hash-size {args.hash_size})"
        )
    if args.workers < 1:
        return cli.error("--workers must be at least 1")
    scan = dr.start(args, METHOD)
    if isinstance(scan, int):
        return scan
    items = scan.items
    cache_file = dr.cache_path(args, METHOD)
    settings = f"hash size {args.hash_size}; mirrored {args.flip_invariant}; dataset {args.dataset_dir.resolve()}"
    keys = [dr.file_key(item) for item in items]
    results = cached_results(keys, dr.load_cache(cache_file, settings) if cache_file else {})
    todo = [index for index, result in enumerate(results) if result is None]
    try:
        for position, result in enumerate(
            iter_hashes([items[i].path for i in todo], args.hash_size, args.flip_invariant, args.workers)
        ):
            results[todo[position]] = result
    except KeyboardInterrupt:
        if cache_file:
            dr.save_cache(cache_file, settings, cache_entries(keys, results))
        done = sum(results[index] is not None for index in todo)
        kept = f"{done} new hashes kept in the cache; a re-run goes on from there" if cache_file else "nothing written"
        print(f"Interrupted: {kept}. No report written.")
        return cli.EXIT_INTERRUPTED
    if cache_file:
        dr.save_cache(cache_file, settings, cache_entries(keys, results))
    errors = [{"path": item.rel, "reason": result.error} for item, result in zip(items, results) if result.error]
    hashed = [(item, result) for item, result in zip(items, results) if result.error is None]
    entry_groups: list[list[dict]] = []
    plain: list[str] = []
    search_info: dict[str, Any] = {}
    if hashed:
        bit_rows = bits_from_packed([result.packed for _, result in hashed], bits)
        is_plain = is_low_information(bit_rows)
        plain = [hashed[index][0].rel for index in np.flatnonzero(is_plain)]
        compared = np.flatnonzero(~is_plain)
        mirrored = None
        if args.flip_invariant:
            mirrored = pack_hashes(bits_from_packed([hashed[i][1].mirrored for i in compared], bits))
        groups, search_info = near_duplicate_groups(pack_hashes(bit_rows[compared]), args.threshold, bits, mirrored)

        def describe(index: int) -> tuple[dr.ScanItem, int, int, dict[str, str | None]]:
            item, result = hashed[compared[index]]
            return item, result.width, result.height, {"phash": result.phash}

        entry_groups = dr.entry_groups_for(groups, describe, errors)
    notes = [f"Hashed {len(todo)} images, {len(items) - len(todo)} taken from the cache"]
    if plain:
        notes.append(
            f"{len(plain)} nearly uniform images were not compared: a pHash cannot tell plain images apart "
            "(listed under 'plain_images' in the report)"
        )
    return dr.finish(
        args,
        METHOD,
        scan.sets,
        files_scanned=len(items) + len(scan.skipped),
        images_read=len(hashed),
        entry_groups=entry_groups,
        errors=errors + scan.skipped,
        extra={
            "plain_images": plain,
            "hashed": len(todo),
            "from_cache": len(items) - len(todo),
            "search": search_info.get("engine", "none"),
            "search_settings": search_info,
        },
        notes=notes,
    )


if __name__ == "__main__":
    raise SystemExit(main())
