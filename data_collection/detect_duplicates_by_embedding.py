"""Find semantic duplicates (the same picture after crops, edits, re-renders) with the trained model's embeddings.

Each image goes through the model of ``--model`` exactly as classifier.py preprocesses it; its pooled features
(2048 numbers for a ResNet50), L2-normalised, are compared by cosine similarity. The search runs in blocks, so no
N x N matrix is ever held; embeddings are cached, so a re-run only embeds new or changed images.

    python data_collection/detect_duplicates_by_embedding.py --threshold 0.95
    python data_collection/detect_duplicates_by_embedding.py --model models/best_model.pth --threshold 0.9 --gallery
    python data_collection/detect_duplicates_by_embedding.py --dataset-dir photos --no-cache --device cpu

Writes dataset/duplicate_report_embedding.json (the shared report format of duplicate_report.py; each file's own
value is its cosine "similarity" to its group's mean embedding), dataset/.embedding_cache.npz (the cache, keyed
by path, size, modification time and the model file), and with --gallery a PNG contact sheet of the largest groups.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duplicate_report as dr  # the sibling module (Python puts the script's folder on sys.path)
import numpy as np
from threadpoolctl import ThreadpoolController  # installed with scikit-learn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # classifier.py lives in the project root
import classifier  # noqa: E402 - needs the line above

logger = logging.getLogger(__name__)

METHOD = "embedding"
DEFAULT_MODEL = "models/best_model.pth"
DEFAULT_THRESHOLD = 0.95  # cosine similarity: copies, crops and re-encodes of one photo score above it
DEFAULT_BATCH_SIZE = 32
CACHE_NAME = ".embedding_cache.npz"  # hidden: the detectors and the trainer never take it for an image
CACHE_VERSION = 1  # bump when the cache layout changes; an unknown cache is ignored and rebuilt
BLOCK_BYTES = 64 << 20  # one block of similarities (rows x all later columns, float32) stays under 64 MB
MAX_BLOCK_ROWS = 512  # smaller blocks follow the upper triangle closely (less wasted work below the diagonal)
PRUNE_MIN_ROWS = 2048  # below this many embeddings the plain blocked product is already fast
PRUNE_MIN_DIM = 128  # below this many dimensions there is nothing to gain from fewer coordinates
PRUNE_DIM_FRACTION = 8  # at most dim / 8 coordinates (256 for ResNet50's 2048): an 8x cheaper product
BASIS_SAMPLE_ROWS = 512  # rows sampled to find the directions the embeddings mostly lie in
CHECK_SAMPLE_ROWS = 256  # other rows, to predict how well a choice of coordinates will bound the similarities
TYPICAL_QUANTILE = 0.99  # the similarity most non-duplicate pairs stay below (in the check sample)
PRUNE_MARGIN = 0.02  # the bound must predictably stay this far below the threshold for typical pairs
PRUNE_SLACK = 1e-3  # float32 rounding margin of the bound: a candidate is kept unless surely below the threshold
EXACT_FALLBACK_FRACTION = 0.02  # when more of a block's pairs survive the bound, compute that block exactly
SEARCH_THREADS = max(1, min(8, os.cpu_count() or 1))  # threads for the blocks; 8 already saturate memory bandwidth
VERIFY_CHUNK = 1 << 14  # candidate pairs checked per step (two gathers of this many rows)
SEED = 0  # the random directions of the reduced basis; the result is exact whatever they are


# ----------------------------------------------------------------------------------------------------------------
# Pure functions: similarity search over L2-normalised embeddings


def normalize_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.where(norms > 0, norms, 1.0)


@functools.cache
def blas_controller() -> ThreadpoolController:
    """The BLAS/LAPACK thread pools of this process (found once: scanning the loaded libraries takes a while)."""
    return ThreadpoolController()


def orthonormal_basis(vectors: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning the columns of ``vectors`` (d, k), numerically rank-deficient ones dropped.

    Two passes of eigen-decomposition of the small k x k Gram matrix, in float64: cheap, and exact to ~1e-12.
    (Called under find_similar_pairs' single-threaded BLAS: threaded LAPACK on a small matrix can stall for a second
    when the cores are busy.)
    """
    basis = np.asarray(vectors, dtype=np.float64)
    for _ in range(2):
        values, vectors_k = np.linalg.eigh(basis.T @ basis)
        keep = values > values.max(initial=0.0) * 1e-10
        basis = basis @ (vectors_k[:, keep] / np.sqrt(values[keep]))
    return basis


def pruning_basis(sample: np.ndarray, size: int, seed: int = SEED) -> np.ndarray:
    """(d, about ``size``) orthonormal directions the ``sample`` rows mostly lie in, the strongest first.

    A randomised range finder with one power iteration; any orthonormal basis keeps the search exact, a good one
    only makes it faster.
    """
    probe = np.random.default_rng(seed).standard_normal((sample.shape[1], size)).astype(np.float32)
    basis = orthonormal_basis(sample.T @ (sample @ probe)).astype(np.float32)
    energy = np.square(sample @ basis).sum(axis=0)
    return np.ascontiguousarray(basis[:, np.argsort(-energy)])


def with_residual(embeddings: np.ndarray, reduced: np.ndarray) -> np.ndarray:
    """``reduced`` (orthonormal coordinates of the rows) plus one column: the length of what they leave out.

    The dot product of two such rows is an upper bound of the rows' own dot product (Cauchy-Schwarz on the rest).
    """
    bounded = np.empty((len(reduced), reduced.shape[1] + 1), dtype=np.float32)
    bounded[:, :-1] = reduced
    left_out = np.einsum("ij,ij->i", embeddings, embeddings) - np.einsum("ij,ij->i", reduced, reduced)
    bounded[:, -1] = np.sqrt(np.maximum(left_out, 0.0))
    return bounded


def bounding_coordinates(embeddings: np.ndarray, threshold: float, seed: int = SEED) -> np.ndarray | None:
    """(n, k + 1) rows whose dot products bound the cosine similarities from above; None when that would not help.

    For unit rows a, b and orthonormal directions B: a.b = (aB).(bB) + (rest of a).(rest of b)
    <= (aB).(bB) + |rest of a| |rest of b|. The bound prunes a pair when the left-out lengths are small next to
    threshold - similarity. Chosen on samples, cheapest first: the dim/8 raw coordinates with the most energy
    (free: right for embeddings spread evenly over all directions), else the fewest principal directions that leave
    little out (embeddings that lie near a subspace, as CNN features do), else None (no bound pays off).
    """
    count, dim = embeddings.shape
    if count < PRUNE_MIN_ROWS or dim < PRUNE_MIN_DIM:
        return None
    rng = np.random.default_rng(seed)
    picked = rng.choice(count, BASIS_SAMPLE_ROWS + CHECK_SAMPLE_ROWS, replace=False)
    sample, check = embeddings[np.sort(picked[:BASIS_SAMPLE_ROWS])], embeddings[np.sort(picked[BASIS_SAMPLE_ROWS:])]
    similarities = (check @ check.T)[np.triu_indices(len(check), 1)]
    affordable = threshold - PRUNE_MARGIN - float(np.quantile(similarities, TYPICAL_QUANTILE))
    size = dim // PRUNE_DIM_FRACTION

    def left_out(reduced_check: np.ndarray) -> float:
        return float(np.mean(1.0 - np.einsum("ij,ij->i", reduced_check, reduced_check)))

    columns = np.sort(np.argsort(-np.square(sample).sum(axis=0))[:size])
    if left_out(check[:, columns]) <= affordable:
        return with_residual(embeddings, embeddings[:, columns])
    for basis_size in (size // 2, size):  # the smaller basis first: cheaper to find and to use
        basis = pruning_basis(sample, basis_size, seed)
        reduced_check = check @ basis
        for used in (basis_size // 8, basis_size // 4, basis_size // 2, basis_size):
            if left_out(reduced_check[:, :used]) <= affordable:
                return with_residual(embeddings, embeddings @ basis[:, :used])
    return None


def _verified(embeddings: np.ndarray, first: np.ndarray, second: np.ndarray, threshold: float) -> np.ndarray:
    """The candidate pairs whose exact cosine similarity reaches ``threshold``; (k, 2) int64."""
    kept = [np.empty((0, 2), dtype=np.int64)]
    for start in range(0, len(first), VERIFY_CHUNK):
        a, b = first[start : start + VERIFY_CHUNK], second[start : start + VERIFY_CHUNK]
        similar = np.einsum("ij,ij->i", embeddings[a], embeddings[b]) >= threshold
        kept.append(np.stack([a[similar], b[similar]], axis=1).astype(np.int64))
    return np.concatenate(kept)


@functools.cache
def lower_triangle(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a size x size square's diagonal and below (cached: every full block has the same size)."""
    return np.tril_indices(size)


def upper_pairs_at_least(block: np.ndarray, threshold: float, start: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with i < j of a block of rows start.. against columns start.. whose value reaches ``threshold``.

    The block's own square (each row against itself and the rows before it) is blanked out first (in place), then
    only the rare rows with a hit are searched: far cheaper than np.nonzero over the whole block.
    """
    square = block[:, : len(block)]
    square[lower_triangle(len(block))] = -np.inf
    rows = np.flatnonzero(block.max(axis=1) >= threshold)
    first, second = np.nonzero(block[rows] >= threshold)
    return rows[first] + start, second + start


def find_similar_pairs(
    embeddings: np.ndarray, threshold: float, block_bytes: int = BLOCK_BYTES, threads: int = SEARCH_THREADS
) -> np.ndarray:
    """All pairs (i < j) of unit-length rows with cosine similarity >= ``threshold``, sorted; (k, 2) int64.

    Blocked matrix products over the upper triangle: a block of rows against all later rows, never N x N. For many
    high-dimensional rows, each block is first bounded with at most dim/8 + 1 coordinates (bounding_coordinates);
    only pairs whose bound reaches the threshold are checked exactly, so the result equals the full similarity
    matrix's. A block where the bound prunes little is computed exactly instead. Blocks run in ``threads`` threads,
    each with a single-threaded BLAS: that scales on idle cores and, unlike BLAS's own spinning threads, does not
    slow down when other programs use the cores.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    count = len(embeddings)
    rows_per_block = int(max(16, min(MAX_BLOCK_ROWS, block_bytes // (4 * max(1, count) * threads))))
    local = threading.local()  # one block buffer per thread, reused: no fresh pages for every block

    def product(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        if getattr(local, "buffer", None) is None:
            local.buffer = np.empty(rows_per_block * count, dtype=np.float32)
        out = local.buffer[: len(rows) * len(columns)].reshape(len(rows), len(columns))
        return np.matmul(rows, columns.T, out=out)

    def search_block(start: int) -> np.ndarray:
        stop = min(count, start + rows_per_block)
        if bounded is not None:
            first, second = upper_pairs_at_least(
                product(bounded[start:stop], bounded[start:]), threshold - PRUNE_SLACK, start
            )
            if len(first) <= EXACT_FALLBACK_FRACTION * (stop - start) * (count - start):
                return _verified(embeddings, first, second, threshold)
        first, second = upper_pairs_at_least(product(embeddings[start:stop], embeddings[start:]), threshold, start)
        return np.stack([first, second], axis=1).astype(np.int64)

    with blas_controller().limit(limits=1, user_api="blas"):
        bounded = bounding_coordinates(embeddings, threshold)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            found = list(pool.map(search_block, range(0, count, rows_per_block)))
    pairs = np.concatenate([np.empty((0, 2), dtype=np.int64), *found])
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def similarity_to_group(embeddings: np.ndarray, members: Sequence[int]) -> np.ndarray:
    """Cosine similarity of each member to the normalised mean embedding of its group."""
    vectors = embeddings[list(members)]
    centre = vectors.mean(axis=0)
    centre /= max(float(np.linalg.norm(centre)), 1e-12)
    return vectors @ centre


# ----------------------------------------------------------------------------------------------------------------
# Disk: the model key, the cache, embedding


def model_key(model_path: Path) -> str:
    """What identifies the model for the cache: its content hash (a retrained model has other embeddings)."""
    return dr.sha256_file(model_path)


def load_cache(path: Path, key: str) -> dict[tuple[str, int, int], np.ndarray]:
    """{(relative path, size, mtime_ns): embedding} from a cache made with the same model; {} otherwise."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != CACHE_VERSION or str(data["model_key"]) != key:
                logger.info("Embedding cache %s is for another model: embedding everything again", path)
                return {}
            keys = zip(data["paths"].tolist(), data["sizes"].tolist(), data["mtimes"].tolist())
            return {(str(p), int(s), int(m)): vector for (p, s, m), vector in zip(keys, data["embeddings"])}
    except (OSError, KeyError, ValueError) as error:
        logger.warning("Ignoring unreadable embedding cache %s (%s): embedding everything again", path, error)
        return {}


def save_cache(path: Path, key: str, cache: dict[tuple[str, int, int], np.ndarray]) -> None:
    """Write the cache atomically (temp file beside it, then rename)."""
    items = sorted(cache.items())
    dim = len(items[0][1]) if items else 0
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(
                handle,
                version=np.int64(CACHE_VERSION),
                model_key=np.str_(key),
                paths=np.array([k[0] for k, _ in items], dtype=str),
                sizes=np.array([k[1] for k, _ in items], dtype=np.int64),
                mtimes=np.array([k[2] for k, _ in items], dtype=np.int64),
                embeddings=np.array([v for _, v in items], dtype=np.float32).reshape(len(items), dim),
            )
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def cache_key(item: dr.ScanItem) -> tuple[str, int, int] | None:
    """(relative path, size, mtime_ns) of a file, or None when it cannot be stat'ed (e.g. a broken symlink)."""
    try:
        stat = item.path.stat()
    except OSError:
        return None
    return (item.rel, stat.st_size, stat.st_mtime_ns)


def embed_items(
    model: classifier.BirdPlaneSupermanClassifier, items: Sequence[dr.ScanItem], batch_size: int
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """({index: embedding}, {index: error}) for ``items``, through classifier.py's own preprocessing and model."""
    vectors: dict[int, np.ndarray] = {}
    errors: dict[int, str] = {}
    results = model.embed_batch([item.path for item in items], batch_size=batch_size)
    for index, (_, vector, error) in enumerate(
        tqdm(results, total=len(items), desc="Embedding", unit="img", file=sys.stderr)
    ):
        if vector is None:
            errors[index] = error or "could not be embedded"
        else:
            vectors[index] = np.asarray(vector, dtype=np.float32)
    return vectors, errors


# ----------------------------------------------------------------------------------------------------------------
# Command line


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Find semantic duplicates by cosine similarity of the trained model's embeddings.",
        add_help=add_help,
    )
    dr.add_common_arguments(parser, METHOD)
    parser.add_argument(
        "--model", type=Path, default=Path(DEFAULT_MODEL), help=f"checkpoint (default: {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"smallest cosine similarity counted as a duplicate, above 0 and at most 1 (default: {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"images per forward pass (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda, then mps, then cpu)")
    parser.add_argument(
        "--cache", type=Path, default=None, help=f"embedding cache file (default: <dataset-dir>/{CACHE_NAME})"
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache (default: off)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    dr.configure_logging()
    if not 0.0 < args.threshold <= 1.0:
        parser.error("--threshold must be above 0 and at most 1 (a cosine similarity)")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if not args.model.is_file():
        parser.error(
            f"model file {args.model} not found: train one first (python train_classifier.py) or pass --model FILE"
        )
    try:
        items, sets = dr.scan_dataset(args.dataset_dir, dr.parse_sets(args.sets))
    except FileNotFoundError as error:
        parser.error(str(error))
    if not items:
        parser.error(f"no images found in {args.dataset_dir} (looked in: {', '.join(dr.parse_sets(args.sets))})")
    try:
        model = classifier.BirdPlaneSupermanClassifier(args.model, device=args.device)
    except (classifier.CheckpointError, ValueError, RuntimeError) as error:
        parser.error(f"cannot use {args.model}: {error}")

    cache_path = args.cache if args.cache is not None else args.dataset_dir / CACHE_NAME
    key = model_key(args.model)
    cache = {} if args.no_cache else load_cache(cache_path, key)
    keys = [cache_key(item) for item in items]
    vectors = {index: cache[k] for index, k in enumerate(keys) if k is not None and k in cache}
    to_embed = [index for index in range(len(items)) if index not in vectors]
    new_vectors, failures = embed_items(model, [items[index] for index in to_embed], args.batch_size)
    vectors.update({to_embed[position]: vector for position, vector in new_vectors.items()})
    errors = [{"path": items[to_embed[position]].rel, "reason": reason} for position, reason in failures.items()]
    if not args.no_cache:
        save_cache(cache_path, key, {keys[i]: v for i, v in vectors.items() if keys[i] is not None})

    order = sorted(vectors)
    matrix = normalize_rows(np.stack([vectors[index] for index in order])) if order else np.zeros((0, 1), np.float32)
    groups = dr.connected_components(len(order), find_similar_pairs(matrix, args.threshold).tolist())
    similarity = {
        member: float(value) for group in groups for member, value in zip(group, similarity_to_group(matrix, group))
    }

    def describe(position: int) -> tuple[dr.ScanItem, int, int, dict[str, Any]]:
        item = items[order[position]]
        try:
            width, height = dr.probe_image(item.path)
        except dr.ImageReadError:
            width, height = 0, 0
        return item, width, height, {"similarity": round(similarity[position], 6)}

    entry_groups = dr.entry_groups_for(groups, describe, errors)
    return dr.finish(
        args,
        METHOD,
        sets,
        files_scanned=len(items),
        images_read=len(vectors),
        entry_groups=entry_groups,
        errors=errors,
        extra={
            "model": str(args.model),
            "embedding_dim": int(matrix.shape[1]) if order else 0,
            "embedded": len(new_vectors),
            "from_cache": len(vectors) - len(new_vectors),
        },
        notes=[f"Embedded {len(new_vectors)} images, {len(vectors) - len(new_vectors)} taken from the cache"],
    )


if __name__ == "__main__":
    raise SystemExit(main())
