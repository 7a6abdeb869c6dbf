"""Find near copies (resized, recompressed, brightened, re-encoded) with imagehash's perceptual hash (pHash).

Images are decoded at reduced size (JPEG draft mode, straight to greyscale: the hash needs only 32x32 pixels) and
hashed by ``imagehash.phash`` in parallel processes, so the hash is imagehash's of the decoded pixels. Draft decoding
moves some hashes by a few bits against a full-size decode (measured: up to 6 bits, on 63 of 240 real photos).
Pairs within the Hamming ``--threshold`` are found exactly: by FAISS's multi-index hashing where faiss-cpu is
installed (seconds for a million hashes), else by comparing all pairs with numpy (the same pairs, minutes from about
50,000 images). A group is a representative and the images within the threshold of it (never a chain A~B~C joining
images far apart); the representative is the image with the most near copies, ties by path. Crops are mostly missed
at the default threshold (5%-cropped real photos: median 8 bits away).

    python data_collection/detect_duplicates_by_phash.py --threshold 5
    python data_collection/detect_duplicates_by_phash.py --threshold 8 --flip-invariant --gallery
    python data_collection/detect_duplicates_by_phash.py --dataset-dir photos --hash-size 16 --threshold 20

Writes dataset/duplicate_report_phash.json (the shared report format of duplicate_report.py; each file's own value
is its "phash" in hex), .phash_cache.npz beside it (hashes by path, size and modification time: a re-run hashes only
new or changed files), and with --gallery a PNG contact sheet of the groups (label conflicts and leaks first).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import duplicate_detection as dd  # the sibling modules (Python puts the script's folder on sys.path)
import imagehash
import numpy as np
import similarity_search as search
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py lives in the project root
import cli  # noqa: E402 - needs the line above

logger = logging.getLogger(__name__)

METHOD = "phash"
DEFAULT_THRESHOLD = 5  # of 64 bits: resized, recompressed, brightened copies stay within it; 5%-cropped ones mostly
# do not (measured on 20 real photos: 2 within 5 bits, median 8), and different photos very rarely come this close
DEFAULT_HASH_SIZE = 8  # 8x8 = 64-bit hashes, imagehash's default
HIGHFREQ_FACTOR = 4  # imagehash.phash's default: the DCT runs on (hash_size * 4) pixels square, decoded no smaller
DEFAULT_WORKERS = os.cpu_count() or 1  # decoding is CPU-bound: one process per core
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


def bits_from_packed(packed: Sequence[np.ndarray], bits: int) -> np.ndarray:
    """(n, bits) booleans from n hashes packed with np.packbits (uint8 rows: what hash_file and the cache give)."""
    matrix = np.stack([np.asarray(row, dtype=np.uint8) for row in packed]).reshape(len(packed), -1)
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
    """(groups of images within ``max_distance`` of their group's representative (dd.star_groups), representative
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
    for node_group in dd.star_groups(nodes, node_pairs, weights):
        representative = images_of_node[node_group[0]]
        others = np.concatenate([representative[1:], *(images_of_node[node] for node in node_group[1:])])
        groups.append([int(representative[0]), *sorted(int(image) for image in others)])
    return groups, search_info


def phash_groups(
    packed: Sequence[np.ndarray], mirrored: Sequence[np.ndarray] | None, max_distance: int, bits: int
) -> tuple[list[list[int]], list[int], dict[str, Any]]:
    """(groups of indices into ``packed``, representative first; the indices of nearly uniform images, which are
    never compared; how the pairs were searched) for hashes packed with np.packbits. ``mirrored``: the hashes of
    the mirrored images, so that a mirrored copy counts as near (None: mirrors are not looked for).
    """
    if not len(packed):
        return [], [], {}
    bit_rows = bits_from_packed(packed, bits)
    is_plain = is_low_information(bit_rows)
    compared = np.flatnonzero(~is_plain)
    mirrored_words = None if mirrored is None else pack_hashes(bits_from_packed([mirrored[i] for i in compared], bits))
    groups, search_info = near_duplicate_groups(pack_hashes(bit_rows[compared]), max_distance, bits, mirrored_words)
    return [[int(compared[i]) for i in group] for group in groups], np.flatnonzero(is_plain).tolist(), search_info


# ----------------------------------------------------------------------------------------------------------------
# Disk: hashing files in worker processes


def decode_for_hash(path: Path, hash_size: int) -> tuple[Image.Image, tuple[int, int]]:
    """(the greyscale image imagehash.phash is given, the full upright size): a JPEG is decoded in draft mode (DCT
    scaling) to no less than the hash's working size; raises dd.ImageReadError."""
    side = hash_size * HIGHFREQ_FACTOR
    return dd.read_image(path, draft_size=(side, side), mode="L")


def cache_columns(hash_size: int, is_flip_invariant: bool) -> dict[str, tuple[str, tuple[int, ...]]]:
    """What hash_file's values look like, so a cache of other types or sizes is ignored, never trusted."""
    width = -(-(hash_size**2) // 8)
    return {
        "phash": ("U", ()),
        "packed": ("u", (width,)),
        "mirrored": ("u", (width if is_flip_invariant else 0,)),
        "width": ("i", ()),
        "height": ("i", ()),
    }


def hash_file(task: tuple[str, int, bool]) -> tuple[dict[str, Any] | None, str | None]:
    """({"phash": imagehash's hex, "packed": its bits (np.packbits), "mirrored": the mirrored image's bits or none,
    "width", "height": the full upright size}, None), or (None, why the file cannot be hashed). The hash is
    imagehash.phash of decode_for_hash's image. Runs in worker processes: takes and returns plain values.
    """
    path, hash_size, is_flip_invariant = task
    try:
        image, (width, height) = decode_for_hash(Path(path), hash_size)
        phash = imagehash.phash(image, hash_size=hash_size, highfreq_factor=HIGHFREQ_FACTOR)
        mirrored = np.zeros(0, np.uint8)
        if is_flip_invariant:
            mirrored = np.packbits(imagehash.phash(ImageOps.mirror(image), hash_size, HIGHFREQ_FACTOR).hash)
        values = {"phash": str(phash), "packed": np.packbits(phash.hash), "mirrored": mirrored}
        return {**values, "width": width, "height": height}, None
    except dd.ImageReadError as error:
        return None, str(error)
    except Exception as error:  # noqa: BLE001 - one odd file must never stop the scan
        return None, f"{type(error).__name__}: {error}"


def iter_hashes(
    items: Sequence[dd.ScanItem], hash_size: int, is_flip_invariant: bool, workers: int
) -> Iterator[tuple[dict[str, Any] | None, str | None]]:
    """hash_file for every item, in order, as each is done: in ``workers`` processes (in this one for few files),
    with a progress bar. What was yielded before a Ctrl-C is the caller's to keep.
    """
    tasks = [(str(item.path), hash_size, is_flip_invariant) for item in items]
    options = {"total": len(tasks), "desc": "Hashing", "unit": "img"}
    if workers == 1 or len(tasks) < MIN_FILES_FOR_PROCESSES:
        yield from (hash_file(task) for task in cli.progress(tasks, **options))
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from cli.progress(pool.map(hash_file, tasks, chunksize=CHUNKSIZE), **options)


# ----------------------------------------------------------------------------------------------------------------
# Command line


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Find near copies with a perceptual hash (imagehash pHash) and a Hamming-distance threshold.",
        epilog=cli.EXIT_CODES_HELP,
        add_help=add_help,
    )
    dd.add_common_arguments(parser, METHOD)
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
    args = get_args_parser().parse_args(argv)
    if args.hash_size < 2:
        return cli.error("--hash-size must be at least 2")
    bits = args.hash_size**2
    if not 0 <= args.threshold <= bits:
        return cli.error(
            f"--threshold must be between 0 and {bits} (the bits of a hash of --hash-size {args.hash_size})"
        )
    if args.workers < 1:
        return cli.error("--workers must be at least 1")
    scan = dd.start(args, METHOD)
    if isinstance(scan, int):
        return scan
    hashed = dd.compute_cached(
        scan.items,
        dd.cache_path(args, METHOD),
        f"hash size {args.hash_size}; mirrored {args.flip_invariant}; dataset {args.dataset_dir.resolve()}",
        cache_columns(args.hash_size, args.flip_invariant),
        lambda items: iter_hashes(items, args.hash_size, args.flip_invariant, args.workers),
        "hashes",
    )
    if isinstance(hashed, int):
        return hashed
    read = [(item, values) for item, values in zip(scan.items, hashed.values) if values is not None]
    mirrored = [values["mirrored"] for _, values in read] if args.flip_invariant else None
    groups, plain, search_info = phash_groups([values["packed"] for _, values in read], mirrored, args.threshold, bits)

    def describe(index: int) -> tuple[dd.ScanItem, int, int, dict[str, str]]:
        item, values = read[index]
        return item, int(values["width"]), int(values["height"]), {"phash": str(values["phash"])}

    errors = hashed.errors + scan.skipped
    entry_groups = dd.entry_groups_for(groups, describe, errors)
    computed = len(scan.items) - hashed.from_cache
    notes = [f"Hashed {computed} images, {hashed.from_cache} taken from the cache"]
    if plain:
        notes.append(
            f"{len(plain)} nearly uniform images were not compared: a pHash cannot tell plain images apart "
            "(listed under 'plain_images' in the report)"
        )
    return dd.finish(
        args,
        METHOD,
        scan.sets,
        files_scanned=len(scan.items) + len(scan.skipped),
        images_read=len(read),
        entry_groups=entry_groups,
        errors=errors,
        extra={
            "plain_images": [read[index][0].rel for index in plain],
            "hashed": computed,
            "from_cache": hashed.from_cache,
            "search": search_info.get("engine", "none"),
            "search_settings": search_info,
        },
        notes=notes,
    )


if __name__ == "__main__":
    raise SystemExit(main())
