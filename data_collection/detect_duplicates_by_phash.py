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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import duplicate_report as dr  # the sibling modules (Python puts the script's folder on sys.path)
import near_copy_check
import numpy as np
import similarity_search as search
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py lives in the project root
import cli  # noqa: E402 - needs the line above

logger = logging.getLogger(__name__)

METHOD = "phash"
DEFAULT_THRESHOLD = 12  # candidate radius (64 bits), then the pixel check: see USAGE_EXAMPLES.md for measured recall
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
    words: np.ndarray,
    max_distance: int,
    bits: int,
    mirrored_words: np.ndarray | None = None,
    verify: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[list[list[int]], dict[str, Any]]:
    """(groups of images within ``max_distance`` of their group's representative (dr.star_groups), representative
    first; how the pairs were searched). With ``mirrored_words``, an image also counts as near another when its
    mirror image is. The pairs are exact (similarity_search.hamming_pairs: FAISS or numpy, the same pairs).

    Images with identical hashes (and mirror hashes) are collapsed into one search item first, so a thousand copies
    of one image cost one entry, not a million pairs; ties between items go to the first image (path order).

    ``verify`` (the second stage): takes (n, 2) image index pairs, returns n booleans, True for the same photo. Then
    the pairs within ``max_distance`` are only candidates: a group holds verified pairs only, and never a pair that
    failed (see checked_items).
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
    if verify is None:
        node_groups = dr.star_groups(nodes, node_pairs, weights)
    else:
        images_of_node, node_pairs, rejected = checked_items(images_of_node, node_pairs, verify)
        weights = np.array([len(images) for images in images_of_node])
        node_groups = dr.star_groups(len(weights), node_pairs, weights)
        node_groups = near_copy_check.split_conflicts(node_groups, rejected, weights)
        search_info = {**search_info, "checked_pairs": len(node_pairs) + len(rejected), "rejected_pairs": len(rejected)}
    groups = []
    for node_group in node_groups:
        representative = images_of_node[node_group[0]]
        others = np.concatenate([representative[1:], *(images_of_node[node] for node in node_group[1:])])
        groups.append([int(representative[0]), *sorted(int(image) for image in others)])
    return groups, search_info


def checked_items(
    images_of_node: Sequence[np.ndarray], node_pairs: np.ndarray, verify: Callable[[np.ndarray], np.ndarray]
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The search items after the second stage: (images of each item, verified item pairs, rejected item pairs).

    Images that share a hash are checked against the first of them; one that fails becomes an item of its own,
    rejected against its old item and a candidate of everything that item was a candidate of. Each candidate pair
    of items is then checked on the items' first images (copies of one picture stand for each other).
    """
    inner = np.array([(images[0], image) for images in images_of_node for image in images[1:]], dtype=np.int64)
    failed = set(inner[~verify(inner), 1].tolist()) if len(inner) else set()
    items: list[np.ndarray] = []
    items_of_node: list[list[int]] = []
    rejected: list[tuple[int, int]] = []
    candidates: list[tuple[int, int]] = []  # two images that failed against their item may be copies of each other
    for images in images_of_node:
        kept = np.array([image for image in images if image not in failed], dtype=np.int64)
        own = [len(items) + index for index in range(1 + len(images) - len(kept))]
        items.extend([kept, *(np.array([image]) for image in images if image in failed)])
        items_of_node.append(own)
        rejected.extend((own[0], item) for item in own[1:])
        candidates.extend((a, b) for index, a in enumerate(own[1:], 1) for b in own[index + 1 :])
    for first, second in node_pairs.tolist():
        candidates.extend((a, b) for a in items_of_node[first] for b in items_of_node[second])
    pairs = np.array(candidates, dtype=np.int64).reshape(-1, 2)
    first_image = np.array([images[0] for images in items], dtype=np.int64)
    is_same = verify(first_image[pairs]) if len(pairs) else np.zeros(0, dtype=bool)
    rejected_pairs = np.concatenate([np.array(rejected, dtype=np.int64).reshape(-1, 2), pairs[~is_same]])
    return items, pairs[is_same], rejected_pairs


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


def read_thumbnail(path: str) -> np.ndarray | None:
    """near_copy_check's thumbnail of one file, or None if it cannot be read (now). Runs in worker processes."""
    side = near_copy_check.THUMBNAIL_SIDE
    try:
        image, _ = dr.read_image(Path(path), draft_size=(side, side), mode="L")
        return near_copy_check.thumbnail(image)
    except Exception:  # noqa: BLE001 - a file changed since it was hashed matches nothing; the scan goes on
        return None


def read_thumbnails(paths: Sequence[Path], workers: int) -> list[np.ndarray | None]:
    """read_thumbnail for every path, in order, in ``workers`` processes (in this one for few files)."""
    tasks = [str(path) for path in paths]
    options = {"total": len(tasks), "desc": "Checking", "unit": "img"}
    if workers == 1 or len(tasks) < MIN_FILES_FOR_PROCESSES:
        return [read_thumbnail(task) for task in cli.progress(tasks, **options)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(cli.progress(pool.map(read_thumbnail, tasks, chunksize=CHUNKSIZE), **options))


def pixel_check(
    paths: Sequence[Path], min_similarity: float, is_flip_invariant: bool, workers: int
) -> Callable[[np.ndarray], np.ndarray]:
    """The second stage for near_duplicate_groups: True for pairs of ``paths`` (by index) that near_copy_check
    finds to be the same photo. Each thumbnail is read once, when a pair first needs it."""
    thumbnails: dict[int, np.ndarray | None] = {}

    def verify(pairs: np.ndarray) -> np.ndarray:
        needed = sorted(set(np.asarray(pairs).ravel().tolist()) - set(thumbnails))
        thumbnails.update(zip(needed, read_thumbnails([paths[index] for index in needed], workers)))
        scores = near_copy_check.pair_similarities(pairs, thumbnails, is_flip_invariant, min_similarity)
        return scores >= min_similarity

    return verify


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
        "--min-similarity",
        type=float,
        default=near_copy_check.MIN_SIMILARITY,
        help="the second stage: each pair within --threshold is kept only if small aligned thumbnails of the two "
        "images correlate at least this much in detail (0 to 1; copies score 0.87-1.0, different photos of one "
        "layout up to 0.77 on real photos); 0 trusts the hash alone, as before, with a strict --threshold such as 5 "
        f"(default: {near_copy_check.MIN_SIMILARITY})",
    )
    parser.add_argument(
        "--flip-invariant",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also find mirrored (left-right flipped) copies (default: on)",
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
    if not 0 <= args.min_similarity <= 1:
        return cli.error("--min-similarity must be between 0 and 1 (0: no pixel check)")
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
        verify = None
        if args.min_similarity > 0:
            paths = [hashed[index][0].path for index in compared]
            verify = pixel_check(paths, args.min_similarity, args.flip_invariant, args.workers)
        words = pack_hashes(bit_rows[compared])
        groups, search_info = near_duplicate_groups(words, args.threshold, bits, mirrored, verify)

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
