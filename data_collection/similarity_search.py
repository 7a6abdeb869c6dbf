"""Near-pair search for the duplicate detectors: hashes within a Hamming distance, unit vectors above a cosine.

Imported by detect_duplicates_by_phash.py and detect_duplicates_by_embedding.py (and the benchmarks); not a script.
The engine for scale is FAISS (``pip install faiss-cpu``; optional, not in requirements.txt); without it numpy does
the same work in bounded memory, never an N x N matrix:

- Hamming distance (``hamming_pairs``): exact either way, so a report is the same with or without FAISS. FAISS's
  multi-index hashing (IndexBinaryMultiHash, with table and flip counts that make it exact) or, where chunks would
  be too short to narrow anything, its brute-force IndexBinaryFlat; without FAISS, numpy XOR + popcount in blocks.
- Cosine similarity (``cosine_pairs``): "exact" is numpy's blocked matrix products (faster here than FAISS's flat
  index); "faiss" is an inverted-file index (IndexIVFFlat, inner product on unit vectors, range search), which
  looks at ``nprobe`` of about 4 * sqrt(N) cells per vector: approximate (a pair in cells not probed is missed),
  and the only way through a million vectors (1M x 1M x 512 exact is 5e14 operations). "auto" picks by N.

Every candidate of every engine is decided once more in float64 (``exact_pairs``), so the engines agree on each
pair they both see. A FAISS index that cannot be built or searched (not installed, out of memory, anything)
falls back to numpy with one sentence on stderr.

faiss-cpu's wheel bundles its own OpenBLAS (0.3.15), which does not recognise recent Xeons and falls back to its
slowest (Prescott) kernels: FAISS's matrix products ran at 12 GFLOPS against numpy's 50 on this machine. Before
importing FAISS, ``import_faiss`` names the CPU family (OPENBLAS_CORETYPE, from the CPU's flags) unless the user did.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Hamming distance
HAMMING_BLOCK_ELEMENTS = 1 << 23  # pairs compared per numpy step in the brute force (about 64 MB of uint64)
HAMMING_QUERY_ROWS = 1 << 16  # hashes per FAISS range search: bounds the memory of one call's results
MAX_FLIPS = 3  # flip counts tried per hash table: a key of b bits is looked up sum(comb(b, 0..flips)) times
MAX_KEY_BITS = 56  # FAISS reads a table's key as one 64-bit word from a byte boundary: at most 57 bits fit
CANDIDATE_COST = 3.0  # measured: checking a candidate costs ~3 table look-ups (270 ns against 90 ns)
FLAT_PAIR_COST = 1 / 128  # measured: one pair of IndexBinaryFlat's brute force against one table look-up
SLOW_NUMPY_HASHES = 50_000  # above this, numpy's all-pairs comparison takes minutes: say that FAISS is missing
CODE_PADDING = 8  # FAISS's multi-hash reads 8 bytes from inside a code, so it may read past the last one

# Cosine similarity
SEARCH_MODES = ("auto", "exact", "faiss")
AUTO_FAISS_MIN_ROWS = 50_000  # measured crossover (BENCHMARKS): below, exact numpy is as fast and finds every pair
BLOCK_BYTES = 64 << 20  # one block of similarities (rows x all later columns, float32) stays under 64 MB
MAX_BLOCK_ROWS = 512  # smaller blocks follow the upper triangle closely: a block's own square is half wasted
ROUNDING_TOLERANCE = 1e-6  # a unit float32 row's length is 1 to about 1e-7: identical images score 1 within this
CANDIDATE_SLACK = 1e-4  # products this close below the threshold are re-checked exactly (float32 rounding: ~1e-6)
EXACT_CHUNK = 1 << 14  # candidate pairs checked in float64 per step (two gathers of this many rows)
MAX_PAIRS = 20_000_000  # more pairs than this (about 320 MB) means the threshold joins nearly everything: stop
SEARCH_THREADS = os.cpu_count() or 1  # numpy blocks searched at once, one BLAS thread each
IVF_LISTS_PER_SQRT = 4  # cells of the inverted file: 4 * sqrt(N), FAISS's guideline
MIN_ROWS_PER_LIST = 16  # k-means needs points per cell: fewer rows than 16 per cell means fewer cells
TRAIN_ROWS_PER_LIST = 32  # k-means trains on this many sampled rows per cell: cells only need to split the space
KMEANS_ITERATIONS = 10  # enough for cells; FAISS's default 25 costs 2.5x the training time for no recall here
DEFAULT_NPROBE = 8  # cells searched per vector; measured recall of planted pairs in BENCHMARKS
IVF_QUERY_ROWS = 1 << 14  # vectors per FAISS range search: bounds the memory of one call's results
SEED = 0  # k-means' sample and start


class TooManyPairsError(ValueError):
    """The threshold puts more than MAX_PAIRS pairs together: the search stops instead of filling the memory."""


# ----------------------------------------------------------------------------------------------------------------
# FAISS, when installed


def openblas_core_type(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The OpenBLAS kernel family this CPU runs (SkylakeX, Haswell), read from its flags; None when unknown."""
    try:
        with cpuinfo.open(encoding="ascii", errors="replace") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return None
    if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= set(flags):
        return "SkylakeX"
    if {"avx2", "fma"} <= set(flags):
        return "Haswell"
    return None


@functools.cache
def import_faiss() -> ModuleType | None:
    """The faiss module, or None when it is not installed (or does not load).

    Its bundled OpenBLAS reads OPENBLAS_CORETYPE once, when it loads: the CPU's family is named for that moment
    only (an existing setting is left alone), so nothing else in this process or its children sees the variable.
    """
    is_set_here = "OPENBLAS_CORETYPE" not in os.environ and "faiss" not in sys.modules
    if is_set_here and (core_type := openblas_core_type()):
        os.environ["OPENBLAS_CORETYPE"] = core_type
    else:
        is_set_here = False
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines about optional CPU builds alarm users
    try:
        import faiss  # optional: pip install faiss-cpu
    except Exception as error:  # noqa: BLE001 - ImportError, or a broken install's OSError: numpy does the work
        logger.debug("FAISS not available: %s", error)
        return None
    finally:
        if is_set_here:
            del os.environ["OPENBLAS_CORETYPE"]
    return faiss


def with_fallback(
    search_faiss: Callable[[], tuple[np.ndarray, dict[str, Any]]],
    search_numpy: Callable[[], tuple[np.ndarray, dict[str, Any]]],
) -> tuple[np.ndarray, dict[str, Any]]:
    """search_faiss(), or search_numpy() after one warning when FAISS fails in any way (TooManyPairsError aside)."""
    try:
        return search_faiss()
    except TooManyPairsError:
        raise
    except Exception as error:  # noqa: BLE001 - any FAISS problem (memory, version, install): numpy does the same
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        logger.warning("FAISS search failed (%s): searching with numpy instead", reason)
    return search_numpy()


def missing_faiss_error() -> ImportError:
    return ImportError("faiss is not installed (pip install faiss-cpu)")


def pairs_from_ranges(limits: np.ndarray, neighbours: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(query, neighbour) pairs, smaller index first, self-matches dropped, from a FAISS range search's output."""
    first = np.repeat(queries, np.diff(limits.astype(np.int64)))
    second = neighbours.astype(np.int64)
    keep = first != second
    first, second = first[keep], second[keep]
    return np.stack([np.minimum(first, second), np.maximum(first, second)], axis=1)


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """Distinct rows of a (k, 2) pair array, sorted by first then second."""
    if len(pairs) == 0:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(pairs.astype(np.int64), axis=0)


# ----------------------------------------------------------------------------------------------------------------
# Hamming distance between packed hashes


def hamming_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distances of two (k, words) uint64 arrays (broadcasting like ``^``)."""
    return np.bitwise_count(first ^ second).sum(axis=-1, dtype=np.int32)


def hamming_pairs_numpy(words: np.ndarray, max_distance: int) -> np.ndarray:
    """All pairs (i < j) within ``max_distance``, every pair compared in blocks (XOR + popcount); (k, 2), sorted.

    Quadratic time, bounded memory: seconds for tens of thousands of hashes, hours for a million (use FAISS).
    """
    count = len(words)
    found = [np.empty((0, 2), dtype=np.int64)]
    rows_per_block = max(1, HAMMING_BLOCK_ELEMENTS // max(1, count))
    for start in range(0, count, rows_per_block):
        stop = min(count, start + rows_per_block)
        distances = hamming_distances(words[start:stop, None, :], words[None, start:, :])
        rows, columns = np.nonzero(distances <= max_distance)
        first, second = rows + start, columns + start
        keep = second > first
        found.append(np.stack([first[keep], second[keep]], axis=1).astype(np.int64))
    return np.concatenate(found)  # rows in order, columns ascending within a row: sorted


def multihash_setting(count: int, bits: int, max_distance: int) -> tuple[int, int, int] | None:
    """(tables, key bits, flips) for an exact IndexBinaryMultiHash over ``count`` hashes, or None when FAISS's
    brute force (IndexBinaryFlat) is expected to be faster.

    Exact: two hashes within max_distance differ in at most max_distance bits, so with tables * (flips + 1) >
    max_distance some table's key differs in at most ``flips`` bits, and looking up every key within ``flips`` bits
    finds the pair. The cheapest setting is chosen by a cost model measured on random 64-bit hashes: look-ups per
    query plus CANDIDATE_COST per candidate (look-ups x count / 2**key bits) against FLAT_PAIR_COST per pair.
    """
    best: tuple[float, tuple[int, int, int]] | None = None
    for flips in range(MAX_FLIPS + 1):
        tables = max_distance // (flips + 1) + 1
        key_bits = min(bits // tables, MAX_KEY_BITS)
        if key_bits < max(1, flips):
            continue
        lookups = tables * sum(math.comb(key_bits, flipped) for flipped in range(flips + 1))
        cost = lookups + CANDIDATE_COST * lookups * count / 2.0**key_bits
        if best is None or cost < best[0]:
            best = (cost, (tables, key_bits, flips))
    if best is None or best[0] >= FLAT_PAIR_COST * count:
        return None
    return best[1]


def faiss_codes(words: np.ndarray, bits: int) -> np.ndarray:
    """(n, ceil(bits / 8)) uint8 codes in FAISS's bit order (bit j of a hash is bit j % 8 of byte j // 8), zero
    padded; CODE_PADDING readable bytes follow the last code.
    """
    rows = np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=1)[:, :bits]
    packed = np.packbits(rows, axis=1, bitorder="little")
    buffer = np.zeros(packed.size + CODE_PADDING, dtype=np.uint8)
    codes = buffer[: packed.size].reshape(packed.shape)
    codes[:] = packed
    return codes


def hamming_pairs_faiss(words: np.ndarray, max_distance: int, bits: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The same pairs as hamming_pairs_numpy, through FAISS (multi-index hashing, else its brute force)."""
    faiss = import_faiss()
    if faiss is None:
        raise missing_faiss_error()
    codes = faiss_codes(words, bits)
    dimension = codes.shape[1] * 8
    setting = multihash_setting(len(codes), bits, max_distance)
    if setting is None:
        index = faiss.IndexBinaryFlat(dimension)
        info: dict[str, Any] = {"engine": "faiss-binary-flat"}
    else:
        tables, key_bits, flips = setting
        index = faiss.IndexBinaryMultiHash(dimension, tables, key_bits)
        index.nflip = flips
        info = {"engine": "faiss-binary-multihash", "tables": tables, "key_bits": key_bits, "flips": flips}
    index.add(codes)
    found = [np.empty((0, 2), dtype=np.int64)]
    for start in range(0, len(codes), HAMMING_QUERY_ROWS):
        queries = codes[start : start + HAMMING_QUERY_ROWS]
        limits, _, neighbours = index.range_search(queries, max_distance + 1)  # FAISS: distance < radius
        pairs = pairs_from_ranges(limits, neighbours, np.arange(start, start + len(queries)))
        found.append(pairs[pairs[:, 0] >= start])  # a pair with an earlier query was kept with that query
    return unique_pairs(np.concatenate(found)), {**info, "exact": True}


def hamming_pairs(words: np.ndarray, max_distance: int, bits: int) -> tuple[np.ndarray, dict[str, Any]]:
    """(all pairs (i < j) of hashes within ``max_distance`` bits, sorted (k, 2) int64; how they were searched).

    ``words``: (n, words) uint64 from packed bits (zero padding never changes a distance); ``bits``: real bits per
    hash. FAISS when installed, numpy otherwise: the same pairs either way.
    """
    count = len(words)
    if count < 2:
        return np.empty((0, 2), dtype=np.int64), {"engine": "numpy", "exact": True}

    def numpy_search() -> tuple[np.ndarray, dict[str, Any]]:
        return hamming_pairs_numpy(words, max_distance), {"engine": "numpy", "exact": True}

    if import_faiss() is None:
        log = logger.warning if count > SLOW_NUMPY_HASHES else logger.debug
        log(
            "FAISS is not installed: comparing all pairs of %d hashes with numpy (pip install faiss-cpu makes this "
            "search fast)",
            count,
        )
        return numpy_search()
    return with_fallback(lambda: hamming_pairs_faiss(words, max_distance, bits), numpy_search)


# ----------------------------------------------------------------------------------------------------------------
# Cosine similarity between unit vectors


def normalize_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.where(norms > 0, norms, 1.0)


def exact_pairs(embeddings: np.ndarray, candidates: np.ndarray, threshold: float) -> np.ndarray:
    """The candidate pairs (i < j) whose cosine similarity, computed in float64, reaches ``threshold``; sorted.

    Reaches means within ROUNDING_TOLERANCE: identical images must meet --threshold 1. Every engine passes its
    float32 candidates through this one decision, so engines agree on every pair they both see, and with a float64
    similarity matrix.
    """
    kept = [np.empty((0, 2), dtype=np.int64)]
    for start in range(0, len(candidates), EXACT_CHUNK):
        chunk = candidates[start : start + EXACT_CHUNK]
        first, second = embeddings[chunk[:, 0]].astype(np.float64), embeddings[chunk[:, 1]].astype(np.float64)
        kept.append(chunk[np.einsum("ij,ij->i", first, second) >= threshold - ROUNDING_TOLERANCE])
    pairs = np.concatenate(kept)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


@functools.cache
def blas_controller() -> Any:
    """The BLAS thread pools of this process (found once: scanning the loaded libraries takes a while)."""
    from threadpoolctl import ThreadpoolController  # installed with scikit-learn

    return ThreadpoolController()


def check_pair_count(total: int, threshold: float) -> None:
    if total > MAX_PAIRS:
        raise TooManyPairsError(f"more than {MAX_PAIRS:,} pairs reach cosine similarity {threshold:g}")


def cosine_pairs_numpy(
    embeddings: np.ndarray, threshold: float, block_bytes: int = BLOCK_BYTES, threads: int = SEARCH_THREADS
) -> np.ndarray:
    """All pairs (i < j) of unit rows with cosine similarity >= ``threshold``; (k, 2) int64, sorted. Exact.

    A block of rows against itself (upper triangle) and against all later rows: two matrix products, never N x N
    (a block holds at most MAX_BLOCK_ROWS rows and ``block_bytes`` of products); only the rare rows whose best
    similarity reaches the threshold are searched with np.nonzero. Blocks run in ``threads`` threads, each with a
    one-thread BLAS. Raises TooManyPairsError past MAX_PAIRS.
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
            check_pair_count(total, threshold)
    return exact_pairs(embeddings, np.concatenate(found), threshold)


def ivf_list_count(count: int) -> int:
    """Cells of the inverted file for ``count`` vectors: IVF_LISTS_PER_SQRT * sqrt(count), at least
    MIN_ROWS_PER_LIST vectors per cell, at least one cell.
    """
    return max(1, min(round(IVF_LISTS_PER_SQRT * math.sqrt(count)), count // MIN_ROWS_PER_LIST))


def cosine_pairs_faiss(
    embeddings: np.ndarray, threshold: float, nprobe: int = DEFAULT_NPROBE
) -> tuple[np.ndarray, dict[str, Any]]:
    """Pairs (i < j) of unit rows with cosine similarity >= ``threshold`` found by a FAISS IndexIVFFlat (inner
    product) range search, each vector probing ``nprobe`` cells; (pairs, what was done).

    Approximate unless nprobe covers every cell: a pair is found when either vector's probed cells hold the other.
    The coarse assignment (nprobe nearest centroids of every vector, one matrix product) is computed once and used
    both to fill the cells and to search them; vectors are searched cell by cell, so the cells in use stay in the
    processor's cache.
    """
    faiss = import_faiss()
    if faiss is None:
        raise missing_faiss_error()
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    count, dimension = embeddings.shape
    lists = ivf_list_count(count)
    nprobe = max(1, min(nprobe, lists))
    quantizer = faiss.IndexFlatIP(dimension)
    index = faiss.IndexIVFFlat(quantizer, dimension, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.max_points_per_centroid = TRAIN_ROWS_PER_LIST
    index.cp.min_points_per_centroid = 1  # fewer sampled rows than FAISS's 39 per cell is deliberate: no warning
    index.cp.seed = SEED
    started = time.perf_counter()
    index.train(embeddings)
    trained = time.perf_counter()
    index.nprobe = nprobe
    nearest_lists = np.empty((count, nprobe), dtype=np.int64)
    list_scores = np.empty((count, nprobe), dtype=np.float32)
    for start in range(0, count, IVF_QUERY_ROWS):
        stop = min(count, start + IVF_QUERY_ROWS)
        list_scores[start:stop], nearest_lists[start:stop] = quantizer.search(embeddings[start:stop], nprobe)
    nearest = np.ascontiguousarray(nearest_lists[:, 0])
    index.add_core(count, faiss.swig_ptr(embeddings), None, faiss.swig_ptr(nearest))  # cells as computed above
    assigned = time.perf_counter()
    order = np.argsort(nearest, kind="stable")
    found = [np.empty((0, 2), dtype=np.int64)]
    total = 0
    for start in range(0, count, IVF_QUERY_ROWS):
        queries = order[start : start + IVF_QUERY_ROWS]
        limits, _, neighbours = index.range_search_preassigned(
            embeddings[queries], threshold - CANDIDATE_SLACK, nearest_lists[queries], list_scores[queries]
        )
        found.append(pairs_from_ranges(limits, neighbours, queries))
        total += len(found[-1])
        check_pair_count(total // 2, threshold)  # most pairs are found from both sides
    searched = time.perf_counter()
    pairs = exact_pairs(embeddings, unique_pairs(np.concatenate(found)), threshold)
    checked = time.perf_counter()
    logger.debug(
        "FAISS IVF over %d vectors: %d cells trained in %.1f s, vectors assigned in %.1f s, %d cells each searched "
        "in %.1f s, candidates checked in %.1f s",
        count, lists, trained - started, assigned - trained, nprobe, searched - assigned, checked - searched,
    )  # fmt: skip
    check_pair_count(len(pairs), threshold)
    info = {"engine": "faiss-ivf", "exact": nprobe >= lists, "lists": lists, "nprobe": nprobe}
    return pairs, info


def choose_engine(count: int, mode: str) -> str:
    """The engine, numpy or faiss, for --search ``mode`` over ``count`` vectors: auto takes FAISS from
    AUTO_FAISS_MIN_ROWS vectors on, where it is installed.
    """
    if mode == "exact" or (mode == "auto" and count < AUTO_FAISS_MIN_ROWS):
        return "numpy"
    if import_faiss() is None:
        logger.warning(
            "FAISS is not installed (pip install faiss-cpu): searching %d embeddings exactly with numpy, which "
            "grows with the square of their number",
            count,
        )
        return "numpy"
    return "faiss"


def cosine_pairs(
    embeddings: np.ndarray,
    threshold: float,
    mode: str = "auto",
    nprobe: int = DEFAULT_NPROBE,
    block_bytes: int = BLOCK_BYTES,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(pairs (i < j) of unit rows with cosine similarity >= ``threshold``, sorted (k, 2) int64; how they were
    searched: {"engine", "exact", ...}).

    ``mode``: "exact" (numpy, every pair), "faiss" (IVF, approximate; see cosine_pairs_faiss) or "auto" (exact
    below AUTO_FAISS_MIN_ROWS vectors, FAISS from there where installed). Raises TooManyPairsError past MAX_PAIRS.
    """
    if mode not in SEARCH_MODES:
        raise ValueError(f"unknown search mode {mode!r} (known: {', '.join(SEARCH_MODES)})")

    def numpy_search() -> tuple[np.ndarray, dict[str, Any]]:
        return cosine_pairs_numpy(embeddings, threshold, block_bytes), {"engine": "numpy", "exact": True}

    if len(embeddings) < 2 or choose_engine(len(embeddings), mode) == "numpy":
        return numpy_search()
    return with_fallback(lambda: cosine_pairs_faiss(embeddings, threshold, nprobe), numpy_search)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py: the project root
    import cli

    cli.refuse_running_as_script(__file__, "run data_collection/detect_duplicates_by_phash.py")
