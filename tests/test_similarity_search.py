"""Tests of similarity_search.py: exact Hamming search (FAISS or numpy, the same pairs), cosine search (exact numpy,
approximate FAISS IVF), the choice between them, and the fallback to numpy when FAISS is missing or fails."""

from __future__ import annotations

import itertools
import logging
import os
import time
import tracemalloc
from pathlib import Path

import duplicate_detection as dd
import numpy as np
import pytest
import similarity_search as search


def random_hashes(count: int, bits: int, max_distance: int, seed: int) -> np.ndarray:
    """Random hashes, a fifth of them near copies of others (about max_distance bits apart), and identical ones."""
    rng = np.random.default_rng(seed)
    base = rng.random((count, bits)) < 0.5
    near = base[: count // 5] ^ (rng.random((count // 5, bits)) < max(1, max_distance) / bits)
    identical = np.repeat(base[count // 5 : count // 5 + 10], 5, axis=0)
    rows = np.concatenate([base, near, identical])
    packed = np.packbits(rows, axis=1)
    packed = np.pad(packed, ((0, 0), (0, (-packed.shape[1]) % 8)))
    return np.ascontiguousarray(packed).view(np.uint64)


def planted_vectors(count: int, dim: int, pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit rows, planted pairs (i < j)): each planted pair has a cosine similarity between 0.955 and 0.999."""
    rng = np.random.default_rng(seed)
    data = search.normalize_rows(rng.standard_normal((count, dim)).astype(np.float32))
    sources, targets = np.split(rng.choice(count, 2 * pairs, replace=False), 2)
    cosines = rng.uniform(0.955, 0.999, pairs)
    noise = rng.standard_normal((pairs, dim))
    noise -= np.einsum("ij,ij->i", noise, data[sources])[:, None] * data[sources]  # orthogonal to the source
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    data[targets] = cosines[:, None] * data[sources] + np.sqrt(1 - cosines**2)[:, None] * noise
    planted = np.sort(np.stack([sources, targets], axis=1), axis=1)
    return search.normalize_rows(data), planted[np.lexsort((planted[:, 1], planted[:, 0]))]


# ----------------------------------------------------------------------------------------------------------------
# Hamming distance


def test_numpy_hamming_pairs_equal_a_plain_double_loop() -> None:
    words = random_hashes(160, 64, 8, seed=1)
    values = [int(word) for word in words[:, 0]]
    expected = [
        (i, j) for i, j in itertools.combinations(range(len(values)), 2) if (values[i] ^ values[j]).bit_count() <= 8
    ]
    found = search.hamming_pairs_numpy(words, 8)
    assert len(expected) > 40 and found.tolist() == [list(pair) for pair in expected]


@pytest.mark.parametrize("kind", ["multihash", "flat"])
@pytest.mark.parametrize(("bits", "max_distance"), [(64, 0), (64, 3), (64, 5), (64, 10), (64, 24), (256, 12), (36, 4)])
def test_faiss_hamming_pairs_equal_numpy(
    bits: int, max_distance: int, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("faiss")
    monkeypatch.setattr(search, "FLAT_PAIR_COST", 1e9 if kind == "multihash" else 0.0)  # force the index kind
    words = random_hashes(1500, bits, max_distance, seed=bits * 100 + max_distance)
    expected = search.hamming_pairs_numpy(words, max_distance)
    found, info = search.hamming_pairs(words, max_distance, bits)
    assert len(expected) > 50 and info["engine"] == f"faiss-binary-{kind}" and info["exact"]
    np.testing.assert_array_equal(found, expected)


def test_faiss_hamming_search_in_chunks_keeps_every_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("faiss")
    monkeypatch.setattr(search, "HAMMING_QUERY_ROWS", 97)
    words = random_hashes(1000, 64, 5, seed=7)
    found, _ = search.hamming_pairs(words, 5, 64)
    np.testing.assert_array_equal(found, search.hamming_pairs_numpy(words, 5))


def test_multihash_settings_are_exact_and_the_measured_best_at_a_million() -> None:
    for bits, max_distance, count in itertools.product((36, 64, 256), (0, 1, 5, 12, 30), (1000, 10**6)):
        setting = search.multihash_setting(count, bits, max_distance)
        if setting is not None:
            tables, key_bits, flips = setting
            assert tables * (flips + 1) > max_distance  # some table's key is within `flips` bits: nothing missed
            assert tables * key_bits <= bits and 1 <= key_bits <= search.MAX_KEY_BITS
    assert search.multihash_setting(10**6, 64, 5) == (3, 21, 1)  # measured: 25 s against 97-280 s for the others
    assert search.multihash_setting(2000, 64, 24) is None  # short keys narrow nothing: FAISS's brute force


def test_faiss_codes_put_each_hash_bit_where_faiss_reads_it() -> None:
    bits = 36
    rows = np.zeros((bits, bits), dtype=bool)
    rows[np.arange(bits), np.arange(bits)] = True  # hash j has only bit j set
    packed = np.pad(np.packbits(rows, axis=1), ((0, 0), (0, 3)))
    codes = search.faiss_codes(np.ascontiguousarray(packed).view(np.uint64), bits)
    assert codes.shape == (bits, 5)
    for j in range(bits):
        assert (codes[j, j // 8] >> (j % 8)) & 1 == 1 and codes[j].sum() == 1 << (j % 8)


def test_hamming_search_without_faiss_is_numpy_and_says_so_only_when_slow(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(search, "import_faiss", lambda: None)
    words = random_hashes(300, 64, 5, seed=3)
    with caplog.at_level(logging.WARNING):
        found, info = search.hamming_pairs(words, 5, 64)
    assert info == {"engine": "numpy", "exact": True} and not caplog.records
    np.testing.assert_array_equal(found, search.hamming_pairs_numpy(words, 5))
    monkeypatch.setattr(search, "SLOW_NUMPY_HASHES", 100)
    with caplog.at_level(logging.WARNING):
        search.hamming_pairs(words, 5, 64)
    assert [record.getMessage() for record in caplog.records] == [
        f"FAISS is not installed: comparing all pairs of {len(words)} hashes with numpy (pip install faiss-cpu "
        "makes this search fast)"
    ]


def test_a_failing_faiss_hamming_search_falls_back_to_numpy(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenFaiss:
        def IndexBinaryFlat(self, *_: object) -> None:  # noqa: N802 - FAISS's name
            raise RuntimeError("Error in IndexBinaryFlat: out of memory")

        IndexBinaryMultiHash = IndexBinaryFlat  # noqa: N815

    monkeypatch.setattr(search, "import_faiss", BrokenFaiss)
    words = random_hashes(300, 64, 5, seed=4)
    found, info = search.hamming_pairs(words, 5, 64)
    assert info["engine"] == "numpy" and len(found) > 10
    np.testing.assert_array_equal(found, search.hamming_pairs_numpy(words, 5))
    assert [record.getMessage() for record in caplog.records] == [
        "FAISS search failed (Error in IndexBinaryFlat: out of memory): searching with numpy instead"
    ]


# ----------------------------------------------------------------------------------------------------------------
# Cosine similarity


def test_exact_search_equals_the_full_similarity_matrix() -> None:
    rng = np.random.default_rng(0)
    cases = [(400, 16, 0.8), (2500, 256, 0.95), (2200, 512, 0.9)]
    for count, dim, threshold in cases:
        data = rng.standard_normal((count, dim)).astype(np.float32)
        data[count // 2 :] = np.abs(data[count // 2 :]) + 1.0  # a tight cluster: many candidates there
        planted = rng.choice(count, size=(40, 2), replace=False)
        data[planted[:, 1]] = data[planted[:, 0]] + 0.05 * rng.standard_normal((40, dim)).astype(np.float32)
        data = search.normalize_rows(data)
        similarity = data.astype(np.float64) @ data.T.astype(np.float64)
        rows, columns = np.nonzero(np.triu(similarity >= threshold - search.ROUNDING_TOLERANCE, 1))
        expected = np.stack([rows, columns], axis=1)
        found, info = search.cosine_pairs(data, threshold, "exact", block_bytes=1 << 20)
        assert len(expected) >= 40 and info == {"engine": "numpy", "exact": True}
        np.testing.assert_array_equal(found, expected)


def test_exact_search_memory_stays_far_below_the_full_matrix() -> None:
    """20,000 vectors: the N x N similarities would take 1.6 GB; the blocked search peaks near 64 MB of blocks."""
    data = search.normalize_rows(np.random.default_rng(0).standard_normal((20_000, 8)).astype(np.float32))
    tracemalloc.start()
    try:
        search.cosine_pairs_numpy(data, 0.999)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200e6, peak


def test_faiss_search_probing_every_cell_gives_the_exact_pairs() -> None:
    pytest.importorskip("faiss")
    data, planted = planted_vectors(3000, 64, 60, seed=3)
    data[planted[0, 1]] = data[planted[0, 0]]  # an exact copy: similarity 1 at threshold 1
    for threshold in (0.95, 0.99, 1.0):
        expected, _ = search.cosine_pairs(data, threshold, "exact")
        found, info = search.cosine_pairs(data, threshold, "faiss", nprobe=10_000)
        assert len(expected) >= 1 and info["engine"] == "faiss-ivf" and info["exact"]
        assert info["lists"] == search.ivf_list_count(3000) == 187 and info["nprobe"] == 187
        np.testing.assert_array_equal(found, expected)


def test_approximate_faiss_search_finds_the_planted_pairs_and_nothing_false() -> None:
    pytest.importorskip("faiss")
    data, planted = planted_vectors(20_000, 64, 400, seed=5)
    expected, _ = search.cosine_pairs(data, 0.95, "exact")
    found, info = search.cosine_pairs(data, 0.95, "faiss")
    assert info == {"engine": "faiss-ivf", "exact": False, "lists": 566, "nprobe": search.DEFAULT_NPROBE}
    found_set = {tuple(pair) for pair in found.tolist()}
    assert found_set <= {tuple(pair) for pair in expected.tolist()}  # every pair reported is a real one
    recall = np.mean([tuple(pair) in found_set for pair in planted.tolist()])
    assert recall >= 0.97, recall


def test_auto_is_exact_below_the_crossover_and_faiss_above(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("faiss")
    data, _ = planted_vectors(1000, 32, 20, seed=6)
    assert search.cosine_pairs(data, 0.95, "auto")[1]["engine"] == "numpy"
    monkeypatch.setattr(search, "AUTO_FAISS_MIN_ROWS", 500)
    assert search.cosine_pairs(data, 0.95, "auto")[1]["engine"] == "faiss-ivf"
    with pytest.raises(ValueError, match="unknown search mode 'fast'"):
        search.cosine_pairs(data, 0.95, "fast")


def test_auto_without_faiss_searches_exactly_with_one_sentence(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(search, "import_faiss", lambda: None)
    monkeypatch.setattr(search, "AUTO_FAISS_MIN_ROWS", 500)
    data, planted = planted_vectors(1000, 32, 20, seed=6)
    found, info = search.cosine_pairs(data, 0.95, "auto")
    assert info["engine"] == "numpy" and {tuple(pair) for pair in planted.tolist()} <= set(map(tuple, found.tolist()))
    assert [record.getMessage() for record in caplog.records] == [
        "FAISS is not installed (pip install faiss-cpu): searching 1000 embeddings exactly with numpy, which grows "
        "with the square of their number"
    ]


@pytest.mark.parametrize("failure", [MemoryError("cannot allocate"), RuntimeError("Error in train: k-means failed")])
def test_a_failing_faiss_cosine_search_falls_back_to_numpy(
    failure: Exception, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenFaiss:
        METRIC_INNER_PRODUCT = 0

        def IndexFlatIP(self, *_: object) -> None:  # noqa: N802 - FAISS's name
            raise failure

    monkeypatch.setattr(search, "import_faiss", BrokenFaiss)
    data = search.normalize_rows(np.eye(4, dtype=np.float32) + 1.0)
    pairs, info = search.cosine_pairs(data, 0.5, "faiss")
    assert info["engine"] == "numpy" and len(pairs) == 6
    assert [record.getMessage() for record in caplog.records] == [
        f"FAISS search failed ({failure}): searching with numpy instead"
    ]


def test_too_many_pairs_stop_either_search(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "MAX_PAIRS", 100)
    data = search.normalize_rows(np.ones((50, 8), dtype=np.float32))  # 1225 identical pairs
    modes = ["exact", "faiss"] if search.import_faiss() is not None else ["exact"]
    for mode in modes:
        with pytest.raises(search.TooManyPairsError, match="more than 100 pairs reach cosine similarity 0.9"):
            search.cosine_pairs(data, 0.9, mode)


def test_ivf_cells_grow_with_the_square_root_of_the_count() -> None:
    assert search.ivf_list_count(1_000_000) == 4000 and search.ivf_list_count(100_000) == 1265
    assert search.ivf_list_count(1000) == 62 and search.ivf_list_count(10) == 1  # at least 16 vectors a cell


def test_openblas_core_type_from_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    for flags, expected in (
        ("fpu sse2 avx2 fma avx512f avx512cd avx512bw avx512dq avx512vl", "SkylakeX"),
        ("fpu sse2 avx2 fma avx512f", "Haswell"),
        ("fpu sse2 sse4_2", None),
    ):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n", encoding="ascii")
        assert search.openblas_core_type(cpuinfo) == expected
    assert search.openblas_core_type(tmp_path / "missing") is None


def test_importing_faiss_leaves_the_environment_as_it_was() -> None:
    before = os.environ.get("OPENBLAS_CORETYPE")
    search.import_faiss()
    assert os.environ.get("OPENBLAS_CORETYPE") == before


# ----------------------------------------------------------------------------------------------------------------
# Groups at scale


def test_star_groups_take_time_linear_in_the_pairs() -> None:
    """200,000 pairs (clusters and long chains) grouped in seconds; a quadratic step would take hours."""
    rng = np.random.default_rng(0)
    count = 300_000
    chains = np.stack([np.arange(100_000), np.arange(1, 100_001)], axis=1)  # one chain through 100,001 items
    clusters = rng.integers(100_001, count, size=(100_000, 2))
    started = time.perf_counter()
    groups = dd.star_groups(count, np.concatenate([chains, clusters]))
    elapsed = time.perf_counter() - started
    assert elapsed < 20, elapsed
    members = [member for group in groups for member in group]
    assert len(members) == len(set(members)) and max(len(group) for group in groups) < 20
