"""Find near copies (resized, recompressed, slightly cropped or brightened) with imagehash's perceptual hash (pHash).

Images are decoded at reduced size (JPEG draft mode: the hash needs only 32x32 pixels) and hashed in parallel
processes; pairs within the Hamming ``--threshold`` are found by multi-index hashing (no all-pairs comparison) and
verified exactly. A group is a representative and the images within the threshold of it (never a chain A~B~C
joining images far apart); the representative is the image with the most near copies, ties by path.

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
from typing import NamedTuple

import duplicate_report as dr  # the sibling module (Python puts the script's folder on sys.path)
import numpy as np
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
MIH_MIN_KEYS_PER_CANDIDATE = 16  # multi-index hashing only when a chunk's 2**bits values keep buckets this sparse
MAX_CANDIDATES_PER_BATCH = 1 << 22  # candidate pairs verified at once: bounds memory for skewed hash sets
BRUTE_FORCE_BLOCK_ELEMENTS = 1 << 23  # pairs compared per numpy step in the brute force (about 64 MB of uint64)


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


def hamming_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distances of two (k, words) uint64 arrays (broadcasting like ``^``)."""
    return np.bitwise_count(first ^ second).sum(axis=-1, dtype=np.int32)


def brute_force_pairs(words: np.ndarray, max_distance: int) -> np.ndarray:
    """All pairs (i < j) within ``max_distance``, comparing every pair in blocks (XOR + popcount); (k, 2) int64.

    The reference for find_near_duplicate_pairs and its fallback for thresholds too large for multi-indexing.
    """
    count = len(words)
    found = [np.empty((0, 2), dtype=np.int64)]
    rows_per_block = max(1, BRUTE_FORCE_BLOCK_ELEMENTS // max(1, count))
    for start in range(0, count, rows_per_block):
        stop = min(count, start + rows_per_block)
        distances = hamming_distances(words[start:stop, None, :], words[None, start:, :])
        rows, columns = np.nonzero(distances <= max_distance)
        first, second = rows + start, columns + start
        keep = second > first
        found.append(np.stack([first[keep], second[keep]], axis=1).astype(np.int64))
    return np.concatenate(found)


def _chunk_labels(chunk_bits: np.ndarray) -> np.ndarray:
    """One integer per row, equal exactly when the rows' bits are equal."""
    if chunk_bits.shape[1] <= 62:
        return chunk_bits.astype(np.int64) @ (np.int64(1) << np.arange(chunk_bits.shape[1], dtype=np.int64))
    packed = np.ascontiguousarray(np.packbits(chunk_bits, axis=1))
    as_bytes = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    return np.unique(as_bytes, return_inverse=True)[1].astype(np.int64)


def _pairs_within_runs(order: np.ndarray, run_end: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All pairs of items sharing a bucket, in batches of at most MAX_CANDIDATES_PER_BATCH pairs.

    ``order`` lists items sorted by bucket; ``run_end[p]`` is the end (exclusive) of the bucket holding position p.
    """
    positions = np.arange(len(order))
    partners = run_end - positions - 1  # the later items of the same bucket
    cumulative = np.cumsum(partners)
    start = 0
    while start < len(order):
        base = cumulative[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(cumulative, base + MAX_CANDIDATES_PER_BATCH, side="right")))
        counts = partners[start:stop]
        total = int(counts.sum())
        if total:
            first_positions = np.repeat(positions[start:stop], counts)
            offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts) + 1
            yield order[first_positions], order[first_positions + offsets]
        start = stop


def find_near_duplicate_pairs(words: np.ndarray, max_distance: int, bits: int) -> np.ndarray:
    """All pairs (i < j) of hashes within ``max_distance`` bits, sorted; (k, 2) int64. Same result as brute force.

    Multi-index hashing: split the ``bits`` into max_distance + 1 chunks; two hashes within max_distance differ in
    at most max_distance chunks, so they agree exactly on at least one. Only pairs sharing a chunk value are
    compared. Falls back to brute force when chunks are too short to narrow the search.
    """
    count = len(words)
    chunks = max_distance + 1
    if count < 2:
        return np.empty((0, 2), dtype=np.int64)
    if chunks > bits or 2 ** (bits // chunks) < MIH_MIN_KEYS_PER_CANDIDATE * chunks:
        return brute_force_pairs(words, max_distance)
    bit_rows = unpack_hashes(words, bits)
    bounds = np.linspace(0, bits, chunks + 1).round().astype(int)
    found = [np.empty(0, dtype=np.int64)]
    for chunk in range(chunks):
        labels = _chunk_labels(bit_rows[:, bounds[chunk] : bounds[chunk + 1]])
        order = np.argsort(labels, kind="stable")
        run_starts = np.flatnonzero(np.diff(labels[order])) + 1
        run_lengths = np.diff(np.concatenate(([0], run_starts, [count])))
        run_end = np.repeat(np.concatenate((run_starts, [count])), run_lengths)
        for first, second in _pairs_within_runs(order, run_end):
            close = hamming_distances(words[first], words[second]) <= max_distance
            low, high = np.minimum(first[close], second[close]), np.maximum(first[close], second[close])
            found.append(low * count + high)
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // count, codes % count], axis=1)


def near_duplicate_groups(
    words: np.ndarray, max_distance: int, bits: int, mirrored_words: np.ndarray | None = None
) -> list[list[int]]:
    """Groups of images within ``max_distance`` of their group's representative (dr.star_groups), representative
    first; with ``mirrored_words``, an image also counts as near another when its mirror image is.

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
    pairs = find_near_duplicate_pairs(rows, max_distance, bits)
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
    return groups


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
    if hashed:
        bit_rows = bits_from_packed([result.packed for _, result in hashed], bits)
        is_plain = is_low_information(bit_rows)
        plain = [hashed[index][0].rel for index in np.flatnonzero(is_plain)]
        compared = np.flatnonzero(~is_plain)
        mirrored = None
        if args.flip_invariant:
            mirrored = pack_hashes(bits_from_packed([hashed[i][1].mirrored for i in compared], bits))
        groups = near_duplicate_groups(pack_hashes(bit_rows[compared]), args.threshold, bits, mirrored)

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
        extra={"plain_images": plain, "hashed": len(todo), "from_cache": len(items) - len(todo)},
        notes=notes,
    )


if __name__ == "__main__":
    raise SystemExit(main())
