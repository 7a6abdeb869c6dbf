"""Find semantic duplicates (the same picture after crops, edits, re-renders) with the trained model's embeddings.

Each image goes through the model of ``--model`` exactly as classifier.py preprocesses it; its pooled features
(2048 numbers for a ResNet50), L2-normalised, are compared by cosine similarity: a blocked matrix product (never an
N x N matrix), or FAISS's range search with --search faiss (same pairs). A group is a representative and
the images within the threshold of it (no chains). ``--threshold auto`` (the default) reads the threshold off the
similarities of random pairs; groups that no real duplicate search produces (a large share of the dataset, huge
groups, everything alike) are reported as a warning. Semantic similarity is not duplication: look at the gallery.

    python data_collection/detect_duplicates_by_embedding.py
    python data_collection/detect_duplicates_by_embedding.py --model models/best_model.pth --threshold 0.97
    python data_collection/detect_duplicates_by_embedding.py --dataset-dir photos --no-cache --device cpu

Writes dataset/duplicate_report_embedding.json (the shared report format of duplicate_report.py; each file's own
value is its cosine "similarity" to its group's representative; "threshold" holds the figures behind an automatic
one), the gallery beside it (.png), and .embedding_cache.npz beside it (the cache, keyed by path, size, modification
time and the model file: a re-run embeds only new or changed images).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duplicate_report as dr  # the sibling module (Python puts the script's folder on sys.path)
import numpy as np
from threadpoolctl import ThreadpoolController  # installed with scikit-learn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # classifier.py, cli.py, fileio.py: the project root
import classifier  # noqa: E402 - needs the line above
import cli  # noqa: E402
import fileio  # noqa: E402

logger = logging.getLogger(__name__)

METHOD = "embedding"
DEFAULT_MODEL = "models/best_model.pth"
DEFAULT_THRESHOLD = "auto"  # a cosine similarity means different things for different models: read it off the data
DEFAULT_BATCH_SIZE = 32
BLOCK_BYTES = 64 << 20  # one block of similarities (rows x all later columns, float32) stays under 64 MB
ROUNDING_TOLERANCE = 1e-6  # a unit float32 row's length is 1 to about 1e-7: identical images score 1 within this
MAX_BLOCK_ROWS = 512  # smaller blocks follow the upper triangle closely: a block's own square is half wasted
CANDIDATE_SLACK = 1e-4  # products this close below the threshold are re-checked exactly (float32 rounding: ~1e-6)
EXACT_CHUNK = 1 << 14  # candidate pairs checked in float64 per step (two gathers of this many rows)
MAX_PAIRS = 20_000_000  # more pairs than this (about 320 MB) means the threshold joins nearly everything: stop
SEARCH_THREADS = os.cpu_count() or 1  # blocks searched at once, one BLAS thread each
FAISS_QUERY_ROWS = 8192  # rows per FAISS range search: bounds the memory of one call's results
RANDOM_PAIRS = 20_000  # random pairs of images whose similarities show how the model spreads different pictures
AUTO_QUANTILE = 0.999  # nearly every random pair is two different pictures: this quantile is the top of their range
AUTO_POSITION = 0.5  # --threshold auto lies this far from that quantile to 1 (halfway)
IMPLAUSIBLE_SHARE = 0.20  # real datasets have a few percent duplicates; more grouped than this is the model's doing
MIN_IMAGES_FOR_SHARE = 50  # in a handful of images a few copies are a large share: the share check starts here
IMPLAUSIBLE_GROUP_SIZE = 10  # copies of one picture rarely come in more than a handful
IMPLAUSIBLE_MEDIAN = 0.8  # random pairs this similar (median) come from a weak model: everything looks alike
SEED = 0  # which random pairs are sampled


class TooManyPairsError(ValueError):
    """The threshold puts more than MAX_PAIRS pairs together: the search stops instead of filling the memory."""


# ----------------------------------------------------------------------------------------------------------------
# Pure functions: similarity search over L2-normalised embeddings, the threshold, plausibility


def normalize_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.where(norms > 0, norms, 1.0)


def exact_pairs(embeddings: np.ndarray, candidates: np.ndarray, threshold: float) -> np.ndarray:
    """The candidate pairs (i < j) whose cosine similarity, computed in float64, reaches ``threshold``; sorted.

    Reaches means within ROUNDING_TOLERANCE: identical images must meet --threshold 1.

    Both searches (numpy and FAISS) pass their float32 candidates through this one decision, so they give the same
    pairs, and the same as a float64 similarity matrix would.
    """
    kept = [np.empty((0, 2), dtype=np.int64)]
    for start in range(0, len(candidates), EXACT_CHUNK):
        chunk = candidates[start : start + EXACT_CHUNK]
        first, second = embeddings[chunk[:, 0]].astype(np.float64), embeddings[chunk[:, 1]].astype(np.float64)
        kept.append(chunk[np.einsum("ij,ij->i", first, second) >= threshold - ROUNDING_TOLERANCE])
    pairs = np.concatenate(kept)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


@functools.cache
def blas_controller() -> ThreadpoolController:
    """The BLAS thread pools of this process (found once: scanning the loaded libraries takes a while)."""
    return ThreadpoolController()


def find_similar_pairs_numpy(
    embeddings: np.ndarray, threshold: float, block_bytes: int = BLOCK_BYTES, threads: int = SEARCH_THREADS
) -> np.ndarray:
    """All pairs (i < j) of unit rows with cosine similarity >= ``threshold``; (k, 2) int64, sorted.

    A block of rows against itself (upper triangle) and against all later rows: two matrix products, never N x N;
    only the rare rows whose best similarity reaches the threshold are searched with np.nonzero. Blocks run in
    ``threads`` threads, each with a one-thread BLAS: the comparisons run in parallel too, and nothing spins when
    other programs use the cores. Raises TooManyPairsError past MAX_PAIRS.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    count = len(embeddings)
    rows_per_block = max(1, min(MAX_BLOCK_ROWS, block_bytes // (4 * max(1, count) * threads)))
    low = threshold - CANDIDATE_SLACK

    def search_block(start: int) -> np.ndarray:
        stop = min(count, start + rows_per_block)
        rows = embeddings[start:stop]
        first, second = np.nonzero(np.triu(rows @ rows.T >= low, 1))
        later = rows @ embeddings[stop:].T
        hit_rows = np.flatnonzero(later.max(axis=1, initial=-np.inf) >= low)
        hit_first, hit_second = np.nonzero(later[hit_rows] >= low)
        return np.concatenate(
            [
                np.stack([first + start, second + start], axis=1),
                np.stack([hit_rows[hit_first] + start, hit_second + stop], axis=1),
            ]
        ).astype(np.int64)

    found = [np.empty((0, 2), dtype=np.int64)]
    total = 0
    with blas_controller().limit(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        for pairs in pool.map(search_block, range(0, count, rows_per_block)):
            found.append(pairs)
            total += len(pairs)
            if total > MAX_PAIRS:
                raise TooManyPairsError(f"more than {MAX_PAIRS:,} pairs reach cosine similarity {threshold:g}")
    return exact_pairs(embeddings, np.concatenate(found), threshold)


def find_similar_pairs_faiss(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """The same pairs as find_similar_pairs_numpy, through a FAISS flat inner-product index's range search."""
    import faiss  # optional: only when installed (pip install faiss-cpu)

    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    found = [np.empty((0, 2), dtype=np.int64)]
    total = 0
    for start in range(0, len(embeddings), FAISS_QUERY_ROWS):
        limits, _, neighbours = index.range_search(
            embeddings[start : start + FAISS_QUERY_ROWS], threshold - CANDIDATE_SLACK
        )
        first = np.repeat(np.arange(len(limits) - 1), np.diff(limits.astype(np.int64))) + start
        later = neighbours > first
        found.append(np.stack([first[later], neighbours[later]], axis=1).astype(np.int64))
        total += len(found[-1])
        if total > MAX_PAIRS:
            raise TooManyPairsError(f"more than {MAX_PAIRS:,} pairs reach cosine similarity {threshold:g}")
    return exact_pairs(embeddings, np.concatenate(found), threshold)


def find_similar_pairs(
    embeddings: np.ndarray, threshold: float, block_bytes: int = BLOCK_BYTES, engine: str = "numpy"
) -> tuple[np.ndarray, str]:
    """(pairs, the engine used): ``engine`` "numpy" or "faiss"; both give the same pairs (see exact_pairs).

    A FAISS failure (not installed, an old version, out of memory) falls back to numpy with one warning.
    """
    if engine == "faiss":
        try:
            return find_similar_pairs_faiss(embeddings, threshold), "faiss"
        except TooManyPairsError:
            raise
        except Exception as error:  # noqa: BLE001 - any FAISS problem: the numpy search gives the same pairs
            logger.warning("FAISS search failed (%s): searching with numpy instead", error)
    return find_similar_pairs_numpy(embeddings, threshold, block_bytes), "numpy"


def random_pair_similarities(embeddings: np.ndarray, pairs: int = RANDOM_PAIRS, seed: int = SEED) -> np.ndarray:
    """Cosine similarities of random pairs of different rows (all pairs when there are fewer), float64."""
    count = len(embeddings)
    if count < 2:
        return np.empty(0)
    if count * (count - 1) // 2 <= pairs:
        first, second = np.triu_indices(count, 1)
    else:
        rng = np.random.default_rng(seed)
        first = rng.integers(0, count, pairs)
        second = (first + rng.integers(1, count, pairs)) % count  # never the row itself
    return np.einsum("ij,ij->i", embeddings[first], embeddings[second]).astype(np.float64)


def auto_threshold(similarities: np.ndarray) -> tuple[float, dict[str, Any]]:
    """(threshold, the figures behind it) read from random-pair similarities.

    Nearly every random pair is two different pictures, so their AUTO_QUANTILE is the top of "different"; the
    threshold lies AUTO_POSITION of the way from there to 1. A strong model (different pictures far apart) gets a
    lower threshold than a weak one (everything alike), which is what a fixed number cannot do.
    """
    quantiles = {str(q): float(np.quantile(similarities, q)) for q in (0.5, 0.9, 0.99, AUTO_QUANTILE)}
    top = min(1.0, max(0.0, quantiles[str(AUTO_QUANTILE)]))
    threshold = round(top + AUTO_POSITION * (1.0 - top), 4)
    figures = {
        "rule": f"{AUTO_POSITION:g} of the way from the {AUTO_QUANTILE:g} quantile of random-pair similarities to 1",
        "random_pairs": int(len(similarities)),
        "quantiles": {key: round(value, 6) for key, value in quantiles.items()},
        "chosen": threshold,
    }
    return threshold, figures


def choose_threshold(setting: str | float, random_similarities: np.ndarray) -> tuple[float, dict[str, Any]]:
    """(threshold, what the report records about it) for --threshold ``setting`` ("auto" or a number)."""
    if setting != "auto":
        return float(setting), {"value": float(setting), "source": "--threshold"}
    if len(random_similarities) == 0:  # fewer than two images: nothing to compare, nothing to read off
        return 1.0, {"value": 1.0, "source": "auto"}
    threshold, figures = auto_threshold(random_similarities)
    return threshold, {"value": threshold, "source": "auto", **figures}


def implausibility_warnings(images: int, groups: Sequence[Sequence[int]], median_similarity: float | None) -> list[str]:
    """Sentences for output no real duplicate search produces (empty when plausible): too much grouped, a group
    too large, or different pictures scored nearly alike. Each names the likely cause and the fix.
    """
    advice = (
        "the likely cause is a weak model (trained from scratch or on few images); use a stronger one "
        "(--model a checkpoint trained with --weights imagenet) or a higher --threshold"
    )
    found = []
    grouped = sum(len(group) for group in groups)
    if images >= MIN_IMAGES_FOR_SHARE and grouped > IMPLAUSIBLE_SHARE * images:
        found.append(f"{grouped} of {images} images ({grouped / images:.0%}) are in groups: {advice}")
    largest = max((len(group) for group in groups), default=0)
    if largest > IMPLAUSIBLE_GROUP_SIZE:
        found.append(f"a group has {largest} images, more than copies of one picture come in: {advice}")
    if median_similarity is not None and median_similarity > IMPLAUSIBLE_MEDIAN:
        found.append(
            f"random pairs of images have a median cosine similarity of {median_similarity:.3f} (a model that tells "
            f"pictures apart gives well under {IMPLAUSIBLE_MEDIAN:g}): {advice}"
        )
    return found


def similarity_to_representative(embeddings: np.ndarray, group: Sequence[int]) -> np.ndarray:
    """Cosine similarity of each member to the group's representative (its first member; 1.0 for itself)."""
    return embeddings[list(group)] @ embeddings[group[0]]


# ----------------------------------------------------------------------------------------------------------------
# Disk: the model key, the cache, embedding


def cache_settings(model_path: Path, dataset_dir: Path) -> str:
    """What the cached embeddings depend on: the model's content (a retrained model embeds differently), the dataset."""
    return f"model sha256 {fileio.sha256_file(model_path)}; dataset {Path(dataset_dir).resolve()}"


def embed_items(
    model: classifier.BirdPlaneSupermanClassifier,
    items: Sequence[dr.ScanItem],
    batch_size: int,
    vectors: dict[int, np.ndarray],
    errors: dict[int, str],
) -> None:
    """Fill ``vectors`` ({index: embedding}) and ``errors`` ({index: reason}) for ``items`` as they are embedded,
    through classifier.py's own preprocessing and model; what was embedded before a Ctrl-C stays in ``vectors``.
    """
    results = model.embed_batch([item.path for item in items], batch_size=batch_size)
    for index, (_, vector, error) in enumerate(cli.progress(results, total=len(items), desc="Embedding", unit="img")):
        if vector is None:
            errors[index] = error or "could not be embedded"
        else:
            vectors[index] = np.asarray(vector, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Command line


def threshold_value(text: str) -> str | float:
    """--threshold: "auto" or a cosine similarity above 0 and at most 1."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number, got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine similarity above 0 and at most 1 is expected, got {text}")
    return value


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Find semantic duplicates by cosine similarity of the trained model's embeddings.",
        epilog=cli.EXIT_CODES_HELP,
        add_help=add_help,
    )
    dr.add_common_arguments(parser, METHOD, is_gallery_default=True)
    parser.add_argument(
        "--model", type=Path, default=Path(DEFAULT_MODEL), help=f"checkpoint (default: {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--threshold",
        type=threshold_value,
        default=DEFAULT_THRESHOLD,
        help="cosine similarity of two images' embeddings (1 = the same direction): the least an image may have to "
        "its group's representative, above 0 and at most 1; auto reads it off the similarities of random pairs "
        f"(figures in the report) (default: {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"images per forward pass (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda, then mps, then cpu)")
    parser.add_argument(
        "--search",
        choices=("numpy", "faiss"),
        default="numpy",
        help="similarity search, the same pairs either way: numpy (blocked matrix products) or faiss (FAISS's flat "
        "inner-product range search; pip install faiss-cpu; slower than numpy on the CPUs measured, see "
        "BENCHMARKS.md) (default: numpy)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        return cli.error("--batch-size must be at least 1")
    if not args.model.is_file():
        return cli.error(
            f"model file {cli.printable(args.model)} not found: train one first (python train_classifier.py) or "
            "pass --model FILE"
        )
    scan = dr.start(args, METHOD)
    if isinstance(scan, int):
        return scan
    items = scan.items
    try:
        model = classifier.BirdPlaneSupermanClassifier(args.model, device=args.device)
    except (classifier.CheckpointError, ValueError, RuntimeError) as error:
        return cli.error(f"cannot use {cli.printable(args.model)}: {error}")

    cache_file = dr.cache_path(args, METHOD)
    settings = cache_settings(args.model, args.dataset_dir)
    cache = dr.load_cache(cache_file, settings) if cache_file else {}
    keys = [dr.file_key(item) for item in items]
    vectors = {index: cache[k]["embedding"] for index, k in enumerate(keys) if k is not None and k in cache}
    to_embed = [index for index in range(len(items)) if index not in vectors]
    new_vectors: dict[int, np.ndarray] = {}
    failures: dict[int, str] = {}

    def save() -> None:
        vectors.update({to_embed[position]: vector for position, vector in new_vectors.items()})
        if cache_file:
            dr.save_cache(cache_file, settings, {keys[i]: {"embedding": v} for i, v in vectors.items() if keys[i]})

    try:
        embed_items(model, [items[index] for index in to_embed], args.batch_size, new_vectors, failures)
    except KeyboardInterrupt:
        save()
        kept = f"{len(new_vectors)} new embeddings kept in the cache; a re-run goes on from there" if cache_file else ""
        print(f"Interrupted: {kept or 'nothing written'}.")
        return cli.EXIT_INTERRUPTED
    save()
    errors = [{"path": items[to_embed[position]].rel, "reason": reason} for position, reason in failures.items()]

    order = sorted(vectors)
    matrix = normalize_rows(np.stack([vectors[index] for index in order])) if order else np.zeros((0, 1), np.float32)
    random_similarities = random_pair_similarities(matrix)
    median = float(np.median(random_similarities)) if len(random_similarities) else None
    threshold, threshold_info = choose_threshold(args.threshold, random_similarities)
    try:
        pairs, engine = find_similar_pairs(matrix, threshold, engine=args.search)
    except TooManyPairsError as error:
        return cli.error(
            f"{error}: the model puts unrelated images together (trained from scratch or on few images?); use a "
            "stronger model (trained with --weights imagenet) or a higher --threshold"
        )
    groups = dr.star_groups(len(order), pairs)
    similarity = {
        member: float(value)
        for group in groups
        for member, value in zip(group, similarity_to_representative(matrix, group))
    }

    def describe(position: int) -> tuple[dr.ScanItem, int, int, dict[str, Any]]:
        item = items[order[position]]
        try:
            width, height = dr.probe_image(item.path)
        except dr.ImageReadError:
            width, height = 0, 0
        return item, width, height, {"similarity": round(similarity[position], 6)}

    entry_groups = dr.entry_groups_for(groups, describe, errors)
    shown = f"auto: {threshold:g}" if threshold_info["source"] == "auto" else f"{threshold:g}"
    return dr.finish(
        args,
        METHOD,
        scan.sets,
        files_scanned=len(items) + len(scan.skipped),
        images_read=len(vectors),
        entry_groups=entry_groups,
        errors=errors + scan.skipped,
        extra={
            "model": str(args.model),
            "embedding_dim": int(matrix.shape[1]) if order else 0,
            "embedded": len(new_vectors),
            "from_cache": len(vectors) - len(new_vectors),
            "threshold": threshold_info,
            "random_pair_median": median,
            "search": engine,
        },
        notes=[
            f"Embedded {len(new_vectors)} images, {len(vectors) - len(new_vectors)} taken from the cache; "
            f"threshold {shown} (cosine similarity to a group's representative); search: {engine}"
        ],
        warnings=implausibility_warnings(len(order), groups, median),
    )


if __name__ == "__main__":
    raise SystemExit(main())
