"""Find near copies (resized, recompressed, brightened, cropped, bordered, mirrored, watermarked) in two stages:
imagehash's perceptual hash (pHash) finds candidates, a pixel check on aligned thumbnails keeps the copies.

Images are decoded at reduced size (JPEG draft mode, straight to greyscale: the hash needs only 32x32 pixels) and
hashed by ``imagehash.phash`` in parallel processes, so the hash is imagehash's of the decoded pixels. Draft decoding
moves some hashes by a few bits against a full-size decode (measured: up to 6 bits, on 63 of 240 real photos).
Pairs within the Hamming ``--threshold`` (and, by default, pairs whose mirror images are) are found exactly: by
FAISS's multi-index hashing where faiss-cpu is installed (seconds for a million hashes), else by comparing all pairs
with numpy (the same pairs, minutes from about 50,000 images). They are candidates only: near_copy_check compares
small aligned thumbnails of the two images (detail, not layout; crops, borders, mirrors and corner watermarks
allowed) and keeps the pair at ``--min-similarity``, so a loose threshold reaches cropped and bordered copies
without joining different photos of one layout (``--min-similarity 0``: the hash alone, as before). A group is a
representative and the images that passed against it (never a chain A~B~C joining images far apart), and never
holds a pair that failed; the representative is the image with the most near copies, ties by path.

    python data_collection/detect_duplicates_by_phash.py
    python data_collection/detect_duplicates_by_phash.py --threshold 14 --gallery
    python data_collection/detect_duplicates_by_phash.py --threshold 5 --min-similarity 0 --no-flip-invariant

Writes dataset/duplicate_report_phash.json (the shared report format of duplicate_report.py; each file's own value
is its "phash" in hex), .phash_cache.npz beside it (hashes by path, size and modification time: a re-run hashes only
new or changed files), and with --gallery a PNG contact sheet of the groups (label conflicts and leaks first).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import duplicate_detection as dd  # the sibling modules (Python puts the script's folder on sys.path)
import imagehash
import near_copy_check
import numpy as np
import similarity_search as search
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py lives in the project root
import cli  # noqa: E402 - needs the line above

logger = logging.getLogger(__name__)

METHOD = "phash"
DEFAULT_THRESHOLD = 12  # of 64 bits, the candidates' radius: on real photos it reaches 17 of 20 bordered and 15 of
# 20 5%-cropped copies (5 reaches 2 and 0) and, checked by near_copy_check, joins no different photos (BENCHMARKS.md)
DEFAULT_HASH_SIZE = 8  # 8x8 = 64-bit hashes, imagehash's default
HIGHFREQ_FACTOR = 4  # imagehash.phash's default: the DCT runs on (hash_size * 4) pixels square, decoded no smaller
DEFAULT_WORKERS = os.cpu_count() or 1  # decoding is CPU-bound: one process per core
MIN_FILES_FOR_PROCESSES = 64  # below this, starting processes costs more than it saves
CHUNKSIZE = 16  # files per task sent to a worker process: amortises the inter-process round trip
PAIRS_PER_TASK = 128  # pairs of the pixel check per worker task (~50 ms): amortises sending their thumbnails
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
    words: np.ndarray,
    max_distance: int,
    bits: int,
    mirrored_words: np.ndarray | None = None,
    verify: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[list[list[int]], dict[str, Any]]:
    """(groups of images within ``max_distance`` of their group's representative (dd.star_groups), representative
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
        node_groups = dd.star_groups(nodes, node_pairs, weights)
    else:
        inner_pairs = sum(len(images) - 1 for images in images_of_node)
        images_of_node, node_pairs, rejected = checked_items(images_of_node, node_pairs, verify)
        weights = np.array([len(images) for images in images_of_node])
        node_groups = dd.star_groups(len(weights), node_pairs, weights)
        node_groups = near_copy_check.split_conflicts(node_groups, rejected, weights)
        split_off = len(images_of_node) - nodes  # images that failed against their identical hash: counted once
        checked = inner_pairs + len(node_pairs) + len(rejected) - split_off
        search_info = {**search_info, "checked_pairs": checked, "rejected_pairs": len(rejected)}
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


def phash_groups(
    packed: Sequence[np.ndarray],
    mirrored: Sequence[np.ndarray] | None,
    max_distance: int,
    bits: int,
    verify: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[list[list[int]], list[int], dict[str, Any]]:
    """(groups of indices into ``packed``, representative first; the indices of nearly uniform images, which are
    never compared; how the pairs were searched) for hashes packed with np.packbits. ``mirrored``: the hashes of
    the mirrored images, so that a mirrored copy counts as near (None: mirrors are not looked for). ``verify``:
    near_duplicate_groups' second stage, on indices into ``packed``.
    """
    if not len(packed):
        return [], [], {}
    bit_rows = bits_from_packed(packed, bits)
    is_plain = is_low_information(bit_rows)
    compared = np.flatnonzero(~is_plain)
    mirrored_words = None if mirrored is None else pack_hashes(bits_from_packed([mirrored[i] for i in compared], bits))
    verify_compared = None if verify is None else (lambda pairs: verify(compared[pairs]))
    words = pack_hashes(bit_rows[compared])
    groups, search_info = near_duplicate_groups(words, max_distance, bits, mirrored_words, verify_compared)
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


def read_thumbnail(path: str) -> np.ndarray | None:
    """near_copy_check's thumbnail of one file, or None if it cannot be read (now). Runs in worker processes."""
    side = near_copy_check.THUMBNAIL_SIDE
    try:
        image, _ = dd.read_image(Path(path), draft_size=(side, side), mode="L")
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


def score_chunk(task: tuple[np.ndarray, dict[int, np.ndarray | None], bool, float]) -> np.ndarray:
    """near_copy_check.pair_similarities of one chunk of pairs and the thumbnails they need. Runs in workers."""
    pairs, thumbnails, is_flip_invariant, enough = task
    return near_copy_check.pair_similarities(pairs, thumbnails, is_flip_invariant, enough)


def score_pairs(
    pairs: np.ndarray, thumbnails: dict[int, np.ndarray | None], is_flip_invariant: bool, enough: float, workers: int
) -> np.ndarray:
    """near_copy_check.pair_similarities of ``pairs``, in ``workers`` processes for many pairs (chunks of pairs
    sorted by their first image, so few thumbnails travel to two processes), with a progress bar."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if workers == 1 or len(pairs) < 2 * PAIRS_PER_TASK:

        def bar(rows: Iterable[int]) -> Iterable[int]:
            return cli.progress(rows, desc="Comparing", unit="pair")

        return near_copy_check.pair_similarities(pairs, thumbnails, is_flip_invariant, enough, bar)
    chunks = np.array_split(np.argsort(pairs[:, 0], kind="stable"), -(-len(pairs) // PAIRS_PER_TASK))
    tasks = [
        (pairs[chunk], {i: thumbnails[i] for i in set(pairs[chunk].ravel().tolist())}, is_flip_invariant, enough)
        for chunk in chunks
    ]
    scores = np.zeros(len(pairs))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = cli.progress(pool.map(score_chunk, tasks), total=len(tasks), desc="Comparing", unit="batch")
        for chunk, chunk_scores in zip(chunks, results):
            scores[chunk] = chunk_scores
    return scores


def pixel_check(
    paths: Sequence[Path], min_similarity: float, is_flip_invariant: bool, workers: int
) -> Callable[[np.ndarray], np.ndarray]:
    """The second stage for near_duplicate_groups: True for pairs of ``paths`` (by index) that near_copy_check
    finds to be the same photo. Each thumbnail is read once, when a pair first needs it."""
    thumbnails: dict[int, np.ndarray | None] = {}

    def verify(pairs: np.ndarray) -> np.ndarray:
        needed = sorted(set(np.asarray(pairs).ravel().tolist()) - set(thumbnails))
        thumbnails.update(zip(needed, read_thumbnails([paths[index] for index in needed], workers)))
        return score_pairs(pairs, thumbnails, is_flip_invariant, min_similarity, workers) >= min_similarity

    return verify


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
        "representative and still be a candidate copy, which the pixel check then decides (--min-similarity); 0 to "
        f"hash-size**2 (default: {DEFAULT_THRESHOLD} of 64: 5%% crops and borders are mostly within it)",
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
        "images correlate at least this much in detail (0 to 1; copies score 0.91-1.0, different photos of one "
        "layout up to 0.76 on real photos); 0 trusts the hash alone, as before, with a strict --threshold such as 5 "
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
    if not 0 <= args.min_similarity <= 1:
        return cli.error("--min-similarity must be between 0 and 1 (0: no pixel check)")
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
    verify = None
    if args.min_similarity > 0:
        paths = [item.path for item, _ in read]
        verify = pixel_check(paths, args.min_similarity, args.flip_invariant, args.workers)
    packed = [values["packed"] for _, values in read]
    groups, plain, search_info = phash_groups(packed, mirrored, args.threshold, bits, verify)

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
