"""Near-pair search at 100k and 1M: numpy against FAISS on synthetic data with planted near pairs (issue 12).

Each case runs in a fresh process, so its peak memory (resource.getrusage ru_maxrss, which includes the data and
making it) is its own. Printed per case: wall-clock and CPU seconds of the search (not of making the data; CPU
seconds of all threads), peak memory, the pairs found, the recall of
the planted pairs (100% for an exact search) and, where an exact search of the same data ran before, the recall of
every exact pair; and the load average (other programs share the cores). Cases:
  - hashes: random 64-bit hashes plus planted copies 1 to 5 bits away, Hamming distance <= 5: similarity_search's
    FAISS search (multi-index hashing), FAISS's brute force (IndexBinaryFlat), numpy's all-pairs comparison, and
    with --compare-with an earlier detect_duplicates_by_phash.py (its find_near_duplicate_pairs).
  - embeddings: unit vectors, CNN-like (non-negative, low rank, in clusters) or isotropic, plus planted pairs with
    cosine similarities spread over 0.955-0.999, cosine >= 0.95: numpy's exact blocked search and FAISS's IVF
    range search (one run per --nprobe).
  - groups: dd.star_groups over random pairs and one long chain, to show it grows linearly with the pairs.

    python benchmarks/bench_search_scale.py --hashes 100000 --embeddings 100000
    python benchmarks/bench_search_scale.py --only hashes --hashes 1000000 --engines faiss
    python benchmarks/bench_search_scale.py --only embeddings --embeddings 1000000 --engines faiss --nprobe 4 8
    python benchmarks/bench_search_scale.py --only embeddings --embeddings 100000 --dim 2048
    git show 41a54f8:data_collection/detect_duplicates_by_phash.py > /tmp/old_phash.py   # multi-index hashing
    python benchmarks/bench_search_scale.py --only hashes --compare-with /tmp/old_phash.py

Goal (issue 12): 1M hashes at Hamming <= 5 and 1M x 512 embeddings at cosine >= 0.95, each under 10 minutes on a
2-core machine with FAISS, under 8 GB peak. Prints only; nothing is written.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "data_collection")]
import similarity_search as search  # noqa: E402 - found through the line above

HASH_BITS = 64
HASH_THRESHOLD = 5
PLANTED_HASH_PAIRS = 1000
COSINE_THRESHOLD = 0.95
PLANTED_COSINES = (0.955, 0.999)  # planted pairs spread over this range: some close to the threshold
PLANTED_SHARE = 1 / 50  # planted pairs per vector
CLUSTERS = 40  # classes/themes real features fall into
RANK = 96  # real CNN features vary along a few directions
CHUNK = 50_000  # rows generated at a time (float32), so making the data never doubles its memory
GOALS = {"seconds": 600, "peak_gb": 8}
SEED = 0


# ----------------------------------------------------------------------------------------------------------------
# Generated data


def planted_hashes(count: int, pairs: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """((count + pairs, 1) uint64 hashes, (pairs, 2) planted pairs): the last rows copy earlier ones, 1-5 bits off."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**64, size=(count, 1), dtype=np.uint64)
    sources = rng.choice(count, pairs, replace=False)
    copies = words[sources].copy()
    for row, flips in enumerate(rng.integers(1, HASH_THRESHOLD + 1, pairs)):
        for bit in rng.choice(HASH_BITS, flips, replace=False):
            copies[row, 0] ^= np.uint64(1) << np.uint64(bit)
    planted = np.stack([sources, np.arange(count, count + pairs)], axis=1)
    return np.concatenate([words, copies]), planted


def planted_embeddings(count: int, dim: int, is_clustered: bool, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """((count, dim) unit float32 rows, planted pairs (i < j)): count * PLANTED_SHARE pairs of rows replaced by a
    row and a copy at a cosine similarity drawn from PLANTED_COSINES. Made CHUNK rows at a time.
    """
    rng = np.random.default_rng(seed)
    data = np.empty((count, dim), dtype=np.float32)
    if is_clustered:
        centres = rng.standard_normal((CLUSTERS, RANK), dtype=np.float32)
        mixing = rng.standard_normal((RANK, dim), dtype=np.float32)
    for start in range(0, count, CHUNK):
        rows = min(CHUNK, count - start)
        if is_clustered:
            latent = centres[rng.integers(0, CLUSTERS, rows)] + 0.8 * rng.standard_normal((rows, RANK), np.float32)
            block = np.maximum(latent @ mixing + 0.3 * rng.standard_normal((rows, dim), np.float32), 0)
        else:
            block = rng.standard_normal((rows, dim), dtype=np.float32)
        data[start : start + rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    pairs = max(1, int(count * PLANTED_SHARE))
    sources, targets = np.split(rng.choice(count, 2 * pairs, replace=False), 2)
    cosines = rng.uniform(*PLANTED_COSINES, pairs).astype(np.float32)[:, None]
    noise = rng.standard_normal((pairs, dim), dtype=np.float32)
    noise -= np.einsum("ij,ij->i", noise, data[sources])[:, None] * data[sources]  # orthogonal to the source
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    data[targets] = cosines * data[sources] + np.sqrt(1 - cosines**2) * noise
    data[targets] /= np.linalg.norm(data[targets], axis=1, keepdims=True)
    planted = np.sort(np.stack([sources, targets], axis=1), axis=1)
    return data, planted


# ----------------------------------------------------------------------------------------------------------------
# One case, in a process of its own


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kilobytes


def recall(found: np.ndarray, wanted: np.ndarray) -> float:
    """The share of ``wanted`` pairs (smaller index first) among ``found``; 1.0 when none is wanted."""
    if len(wanted) == 0:
        return 1.0
    width = int(max(found.max(initial=0), wanted.max())) + 1
    found_codes = found[:, 0].astype(np.int64) * width + found[:, 1]
    wanted_codes = wanted[:, 0].astype(np.int64) * width + wanted[:, 1]
    return float(np.isin(wanted_codes, found_codes).mean())


def load_module(path: Path) -> Any:
    """A Python file (e.g. an earlier version of a detector from git) imported as a module of its own."""
    spec = importlib.util.spec_from_file_location(f"compared_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_data(case: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes or embeddings, planted pairs) for one case."""
    if case["kind"] == "hashes":
        return planted_hashes(case["count"], PLANTED_HASH_PAIRS)
    return planted_embeddings(case["count"], case["dim"], case["is_clustered"])


def search_once(case: dict[str, Any], data: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """(pairs found, what was done) for one case."""
    engine = case["engine"]
    if case["kind"] == "hashes":
        if engine in ("faiss", "faiss-flat"):
            if engine == "faiss-flat":
                search.FLAT_PAIR_COST = 0.0  # this process only: FAISS's brute force always looks cheaper
            pairs, info = search.hamming_pairs_faiss(data, HASH_THRESHOLD, HASH_BITS)
            return pairs, {"index": info["engine"], "setting": [info.get(k) for k in ("tables", "key_bits", "flips")]}
        if engine == "numpy":
            return search.hamming_pairs_numpy(data, HASH_THRESHOLD), {}
        old = load_module(Path(case["compare_with"]))
        return old.find_near_duplicate_pairs(data, HASH_THRESHOLD, HASH_BITS), {}
    if engine == "numpy":
        return search.cosine_pairs_numpy(data, COSINE_THRESHOLD), {}
    pairs, info = search.cosine_pairs_faiss(data, COSINE_THRESHOLD, case["nprobe"])
    return pairs, {key: info[key] for key in ("lists", "nprobe", "exact")}


class Stages(logging.Handler):
    """Keeps the search's own log lines (FAISS's stage timings) for the report."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Run one case here; its figures as a dict (the pairs found are saved when asked, for a later recall)."""
    stages = Stages()
    search.logger.addHandler(stages)
    search.logger.setLevel(logging.INFO)
    if case["kind"] == "groups":
        import duplicate_detection as dd

        rng = np.random.default_rng(SEED)
        count = case["count"]
        pairs = np.concatenate(
            [
                rng.integers(0, count, size=(count, 2)),
                np.stack([np.arange(count // 10), np.arange(1, count // 10 + 1)], 1),
            ]
        )
        started, cpu = time.perf_counter(), time.process_time()
        groups = dd.star_groups(count, pairs)
        return {
            **case,
            "seconds": time.perf_counter() - started,
            "cpu": time.process_time() - cpu,
            "pairs": len(pairs),
            "groups": len(groups),
            "largest": max(map(len, groups)),
            "peak_gb": peak_gb(),
        }
    data, planted = make_data(case)
    before = peak_gb()
    load = os.getloadavg()[0]
    started, cpu = time.perf_counter(), time.process_time()
    found, info = search_once(case, data)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    result = {
        **case,
        **info,
        "data_gb": data.nbytes / 1e9,
        "peak_before_search_gb": before,
        "seconds": seconds,
        "cpu": cpu_seconds,
        "pairs": len(found),
        "planted_recall": recall(found, planted),
        "peak_gb": peak_gb(),
        "load": (load, os.getloadavg()[0]),
        "stages": stages.lines,
    }
    if case.get("reference"):
        reference = Path(case["reference"])
        if reference.exists():
            result["exact_recall"] = recall(found, np.load(reference))
        elif case["engine"] == "numpy":  # exact: the reference of later runs on the same data
            np.save(reference, found)
    return result


def in_subprocess(case: dict[str, Any]) -> dict[str, Any] | None:
    """run_case in a fresh Python process: its peak memory is its own. None when it failed (said on stderr)."""
    process = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True, check=False
    )
    if process.returncode != 0:
        print(f"  {describe(case)}: failed (exit {process.returncode}): {process.stderr.strip()[-500:]}")
        return None
    return json.loads(process.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------
# Reporting


def describe(case: dict[str, Any]) -> str:
    if case["kind"] == "hashes":
        return f"{case['count']:,} hashes, {case['engine']}"
    if case["kind"] == "groups":
        return f"star_groups over {case['count']:,} items"
    data = "CNN-like" if case["is_clustered"] else "isotropic"
    probe = f" nprobe {case['nprobe']}" if case["engine"] == "faiss" else ""
    return f"{case['count']:,} x {case['dim']} {data}, {case['engine']}{probe}"


def line(result: dict[str, Any]) -> str:
    if result["kind"] == "groups":
        return (
            f"| {describe(result)} | {result['pairs']:,} pairs | {result['seconds']:.2f} s (CPU {result['cpu']:.2f}) "
            f"| {result['groups']:,} groups, largest {result['largest']} | {result['peak_gb']:.2f} GB |"
        )
    goal = "met" if result["seconds"] < GOALS["seconds"] and result["peak_gb"] < GOALS["peak_gb"] else "NOT met"
    exact = f", all exact pairs {result['exact_recall']:.2%}" if "exact_recall" in result else ""
    cells = f", {result['nprobe']} of {result['lists']} cells" if "lists" in result else ""
    return (
        f"| {describe(result)} | {result['seconds']:.1f} s (CPU {result['cpu']:.1f}) | {result['peak_gb']:.2f} GB "
        f"(data {result['data_gb']:.2f}, {result['peak_before_search_gb']:.2f} before the search) | "
        f"{result['pairs']:,} pairs, planted {result['planted_recall']:.2%}{exact}"
        f"{cells} | load {result['load'][0]:.1f}-{result['load'][1]:.1f} | 10 min / 8 GB: {goal} |"
    )


# ----------------------------------------------------------------------------------------------------------------
# Command line


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Near-pair search at scale: numpy against FAISS.", add_help=add_help)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("hashes", "embeddings", "groups"),
        default=["hashes", "embeddings", "groups"],
        help="which measurements to run (default: all three)",
    )
    parser.add_argument("--hashes", type=int, nargs="+", default=[100_000], help="hash counts (default: 100000)")
    parser.add_argument(
        "--embeddings", type=int, nargs="+", default=[100_000], help="embedding counts (default: 100000)"
    )
    parser.add_argument("--dim", type=int, nargs="+", default=[512], help="embedding sizes (default: 512)")
    parser.add_argument(
        "--data",
        nargs="+",
        choices=("cnn-like", "isotropic"),
        default=["cnn-like"],
        help="kinds of embeddings (default: cnn-like)",
    )
    parser.add_argument(
        "--engines",
        nargs="+",
        choices=("numpy", "faiss", "faiss-flat", "compared"),
        default=["numpy", "faiss"],
        help="searches to run; faiss-flat: FAISS's brute force, hashes only; compared: --compare-with, hashes only "
        "(default: numpy faiss)",
    )
    parser.add_argument(
        "--nprobe", type=int, nargs="+", default=[search.DEFAULT_NPROBE], help="IVF cells probed (default: 8)"
    )
    parser.add_argument(
        "--numpy-max", type=int, default=100_000, help="largest count also searched with numpy (default: 100000)"
    )
    parser.add_argument("--compare-with", type=Path, default=None, help="an earlier detect_duplicates_by_phash.py")
    parser.add_argument("--groups", type=int, default=1_000_000, help="items for star_groups (default: 1000000)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    return parser


def cases(args: argparse.Namespace, reference_dir: Path) -> list[dict[str, Any]]:
    planned: list[dict[str, Any]] = []
    if "hashes" in args.only:
        for count in args.hashes:
            for engine in args.engines:
                if engine == "numpy" and count > args.numpy_max or engine == "compared" and not args.compare_with:
                    continue
                planned.append(
                    {"kind": "hashes", "count": count, "engine": engine, "compare_with": str(args.compare_with)}
                )
    if "embeddings" in args.only:
        for count, dim, data in ((c, d, k) for c in args.embeddings for d in args.dim for k in args.data):
            reference = str(reference_dir / f"exact_{count}_{dim}_{data}.npy")
            common = {"kind": "embeddings", "count": count, "dim": dim, "is_clustered": data == "cnn-like"}
            if "numpy" in args.engines and count <= args.numpy_max:
                planned.append({**common, "engine": "numpy", "reference": reference})
            if "faiss" in args.engines:
                planned += [{**common, "engine": "faiss", "nprobe": p, "reference": reference} for p in args.nprobe]
    if "groups" in args.only:
        planned.append({"kind": "groups", "count": args.groups, "engine": "star_groups"})
    return planned


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0
    faiss = search.import_faiss()
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, numpy "
        f"{np.__version__}, FAISS {faiss.__version__ if faiss else 'not installed'}, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (other programs share the cores)"
    )
    reference_dir = ROOT / "benchmarks" / "_out" / "search_scale"
    reference_dir.mkdir(parents=True, exist_ok=True)
    for stale in reference_dir.glob("exact_*.npy"):  # references are for this run's data only
        stale.unlink()
    print("| case | time | peak memory | found | load | goal |\n|---|---|---|---|---|---|")
    stages = []
    for case in cases(args, reference_dir):
        result = in_subprocess(case)
        if result is not None:
            print(line(result), flush=True)
            stages += [f"- {describe(result)}: {stage}" for stage in result.get("stages", [])]
    print("\n".join(stages))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
