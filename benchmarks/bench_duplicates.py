"""Speed of the duplicate detectors against the obvious alternatives, on the same generated data, in one process.

Three measurements, each printed with wall-clock and CPU times (CPU time moves little when others use the cores):
  1. pHash of 1000x750 JPEGs: detect_duplicates_by_phash.iter_hashes, the detector's own path (draft decoding to
     greyscale, imagehash.phash on that, worker processes) against
     ``imagehash.phash(Image.open(p).convert("RGB"))`` in a loop; also the mean Hamming distance between the two.
  2. Near-duplicate search over 64-bit hashes (random plus planted pairs) at threshold 5: the detector's search
     (similarity_search.hamming_pairs: FAISS's multi-index hashing where installed) against numpy's blocked
     XOR-and-popcount over all pairs (its fallback); the pairs must be identical.
  3. Embedding search over unit vectors (--dim, planted near pairs; CNN-like clustered and isotropic) at cosine
     0.95: the exact blocked numpy search, FAISS's IVF range search where installed (approximate: it may miss a
     pair), and any earlier version of the detector given with --compare-with (e.g. the range-finder pruning
     search, its find_similar_pairs); peak memory of the numpy search.
  benchmarks/bench_search_scale.py measures the searches at 100k and 1M, each in a process of its own.

    python benchmarks/bench_duplicates.py
    python benchmarks/bench_duplicates.py --only embedding --embeddings 2000 20000 100000 --dim 512
    git show ed16323:data_collection/detect_duplicates_by_embedding.py > /tmp/old_embedding.py
    python benchmarks/bench_duplicates.py --only embedding --compare-with /tmp/old_embedding.py
    python benchmarks/bench_duplicates.py --images 100 --workers 2 --only phash

Writes the generated JPEGs to benchmarks/_out/phash_images/ (reused by the next run; git-ignored).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "data_collection")]
import detect_duplicates_by_phash as by_phash  # noqa: E402 - found through the line above
import duplicate_detection as dd  # noqa: E402
import imagehash  # noqa: E402
import similarity_search as search  # noqa: E402

OUT_DIR = ROOT / "benchmarks" / "_out"
IMAGE_SIZE = (1000, 750)  # a typical web photo
JPEG_QUALITY = 90
HASH_BITS = 64
HASH_THRESHOLD = 5
PLANTED_PAIRS = 1000
EMBEDDING_DIM = 512  # ResNet18's pooled features (ResNet50's: 2048; see --dim)
COSINE_THRESHOLD = 0.95
EMBEDDING_CLUSTERS = 40  # classes/themes real features fall into
EMBEDDING_RANK = 96  # real CNN features vary along a few directions (low intrinsic dimension)
GOALS = {"phash": 6.0, "search": 10.0, "memory_gb": 1.5}  # from the issues


# ----------------------------------------------------------------------------------------------------------------
# Generated data


def make_photo(seed: int, size: tuple[int, int] = IMAGE_SIZE) -> Image.Image:
    """A photo-like RGB image: a smooth gradient background, soft noise and random shapes."""
    rng = np.random.default_rng(seed)
    width, height = size
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    colours = rng.uniform(0, 255, (3, 3)).astype(np.float32)
    pixels = colours[0] * (1 - x) * (1 - y) + colours[1] * x + colours[2] * y * (1 - x)
    pixels += rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(25):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        fill = tuple(rng.integers(0, 256, 3).tolist())
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1 + 3, y1 + 3], fill=fill)
    return image


def generated_jpegs(count: int) -> list[Path]:
    """``count`` JPEGs in OUT_DIR/phash_images, generated once and reused."""
    folder = OUT_DIR / "phash_images"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo_{index:05d}.jpg" for index in range(count)]
    for index, path in enumerate(paths):
        if not path.exists():
            make_photo(index).save(path, "JPEG", quality=JPEG_QUALITY)
    return paths


def planted_hashes(count: int, pairs: int, rng: np.random.Generator) -> np.ndarray:
    """(count + pairs, 64) random bits; the last ``pairs`` rows are copies of earlier rows with 1 to 5 bits flipped."""
    bits = rng.random((count, HASH_BITS)) < 0.5
    sources = rng.choice(count, pairs, replace=False)
    copies = bits[sources].copy()
    for row, flips in enumerate(rng.integers(1, HASH_THRESHOLD + 1, pairs)):
        copies[row, rng.choice(HASH_BITS, flips, replace=False)] ^= True
    return np.concatenate([bits, copies])


def planted_embeddings(
    count: int, pairs: int, rng: np.random.Generator, is_clustered: bool, dim: int = EMBEDDING_DIM
) -> np.ndarray:
    """Unit vectors; clustered = like CNN features (non-negative, low rank, in clusters); last rows near-duplicates."""
    if is_clustered:
        centres = rng.standard_normal((EMBEDDING_CLUSTERS, EMBEDDING_RANK)).astype(np.float32)
        mixing = rng.standard_normal((EMBEDDING_RANK, dim)).astype(np.float32)
        latent = centres[rng.integers(0, EMBEDDING_CLUSTERS, count)]
        latent += 0.8 * rng.standard_normal((count, EMBEDDING_RANK)).astype(np.float32)
        data = np.maximum(latent @ mixing + 0.3 * rng.standard_normal((count, dim)), 0).astype(np.float32)
    else:
        data = rng.standard_normal((count, dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    sources, targets = np.split(rng.choice(count, 2 * pairs, replace=False), 2)
    noise = rng.standard_normal((pairs, dim)).astype(np.float32) * 0.15 / np.sqrt(dim)
    data[targets] = data[sources] + noise
    return data / np.linalg.norm(data, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------------
# Naive baselines


def naive_phash(paths: Sequence[Path]) -> list[imagehash.ImageHash]:
    return [imagehash.phash(Image.open(path).convert("RGB")) for path in paths]


# ----------------------------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Timing:
    wall: float  # seconds on the clock: what the goals are about
    cpu: float  # CPU seconds of this process, its threads and its finished worker processes: barely moved by load


def cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(function: Callable[..., Any], *args: Any) -> tuple[Any, Timing]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = function(*args)
    return result, Timing(time.perf_counter() - wall, cpu_seconds() - cpu)


def compare(naive_label: str, naive: Timing, our_label: str, ours: Timing, goal: float, count: int = 0) -> None:
    """Print both timings (and throughputs when ``count`` items were processed) and the wall-clock ratio."""
    for label, timing in ((naive_label, naive), (our_label, ours)):
        rate = f", {count / timing.wall:8.1f} per s" if count else ""
        print(f"  {label:<50} {timing.wall:7.2f} s{rate}  (CPU {timing.cpu:6.2f} s)")
    ratio = naive.wall / ours.wall
    print(
        f"  speed-up {ratio:.1f}x (goal >= {goal:g}x: {'met' if ratio >= goal else 'NOT met'}); "
        f"CPU time ratio {naive.cpu / ours.cpu:.1f}x"
    )


def bench_phash(image_count: int, workers: int) -> None:
    paths = generated_jpegs(image_count)
    for path in paths:  # both paths read from the page cache
        path.read_bytes()
    naive, naive_time = timed(naive_phash, paths)
    items = [dd.ScanItem(path, path.name, ".", "") for path in paths]

    def ours_phash() -> list:
        return list(by_phash.iter_hashes(items, by_phash.DEFAULT_HASH_SIZE, False, workers))

    ours, our_time = timed(ours_phash)
    distances = [hash_a - imagehash.hex_to_hash(values["phash"]) for hash_a, (values, _) in zip(naive, ours)]
    mean_distance = float(np.mean(distances))
    print(f"pHash, {image_count} JPEGs {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} (images per second):")
    compare("naive imagehash.phash(Image.open(p).convert('RGB'))", naive_time,
            f"ours: draft decode, {workers} processes", our_time, GOALS["phash"], image_count)  # fmt: skip
    print(f"  mean Hamming distance to the naive hashes: {mean_distance:.2f} bits (goal < 2), max {max(distances)}")


def bench_search(hash_count: int) -> None:
    rng = np.random.default_rng(0)
    words = by_phash.pack_hashes(planted_hashes(hash_count, PLANTED_PAIRS, rng))
    expected, brute_time = timed(search.hamming_pairs_numpy, words, HASH_THRESHOLD)
    (found, info), our_time = timed(search.hamming_pairs, words, HASH_THRESHOLD, HASH_BITS)
    print(f"Near-duplicate search, {len(words)} hashes ({PLANTED_PAIRS} planted pairs), threshold {HASH_THRESHOLD}:")
    compare("numpy XOR + popcount, all pairs (no FAISS)", brute_time, f"hamming_pairs: {info['engine']}", our_time,
            GOALS["search"])  # fmt: skip
    print(f"  pairs: {len(found)} found, identical to numpy's: {np.array_equal(found, expected)}")


def load_module(path: Path) -> Any:
    """A Python file (e.g. an earlier version of a detector from git) imported as a module of its own."""
    spec = importlib.util.spec_from_file_location(f"compared_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_embedding(counts: Sequence[int], dim: int, compare_with: Path | None, faiss_max: int) -> None:
    def numpy_search(data: np.ndarray) -> np.ndarray:
        return search.cosine_pairs_numpy(data, COSINE_THRESHOLD)

    def faiss_search(data: np.ndarray) -> np.ndarray:
        return search.cosine_pairs_faiss(data, COSINE_THRESHOLD)[0]

    other = load_module(compare_with) if compare_with else None
    has_faiss = importlib.util.find_spec("faiss") is not None
    warm_up = planted_embeddings(100, 2, np.random.default_rng(0), False, dim)  # one-time set-ups are not timed
    numpy_search(warm_up)
    if other is not None:
        other.find_similar_pairs(warm_up, COSINE_THRESHOLD)
    for count in counts:
        for is_clustered in (True, False):
            data = planted_embeddings(count, max(1, count // 50), np.random.default_rng(1), is_clustered, dim)
            kind = "clustered non-negative (CNN-like)" if is_clustered else "isotropic random"
            print(f"Embedding search, {count} x {dim} {kind}, cosine >= {COSINE_THRESHOLD}:")
            tracemalloc.start()
            reference, timing = timed(numpy_search, data)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            memory = f"peak memory {peak / 1e9:.3f} GB + embeddings {data.nbytes / 1e9:.3f} GB"
            print(f"  {'ours: blocked numpy, threads':<50} {timing.wall:7.2f} s  (CPU {timing.cpu:6.2f} s), "
                  f"{len(reference)} pairs, {memory}")  # fmt: skip
            runs = [("FAISS IVF range search (approximate)", faiss_search)] if has_faiss and count <= faiss_max else []
            if other is not None:
                runs.append(
                    (
                        f"{compare_with.name}: find_similar_pairs",
                        lambda x: other.find_similar_pairs(x, COSINE_THRESHOLD),
                    )
                )
            for label, other_search in runs:
                pairs, theirs = timed(other_search, data)
                ratio = f"ours / this: {timing.wall / theirs.wall:.2f} wall, {timing.cpu / theirs.cpu:.2f} CPU"
                print(f"  {label:<50} {theirs.wall:7.2f} s  (CPU {theirs.cpu:6.2f} s), "
                      f"{len(pairs)} pairs, same: {np.array_equal(np.asarray(pairs), reference)}, {ratio}")  # fmt: skip
            del data
            gc.collect()


# ----------------------------------------------------------------------------------------------------------------
# Command line


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark the duplicate detectors against naive code.", add_help=add_help
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("phash", "search", "embedding"),
        default=["phash", "search", "embedding"],
        help="which measurements to run (default: all three)",
    )
    parser.add_argument("--images", type=int, default=500, help="JPEGs to hash (default: 500)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="hashing processes (default: CPU count)"
    )
    parser.add_argument("--hashes", type=int, default=100_000, help="random hashes to search (default: 100000)")
    parser.add_argument(
        "--embeddings", type=int, nargs="+", default=[2000, 20_000], help="embedding counts (default: 2000 20000)"
    )
    parser.add_argument("--dim", type=int, default=EMBEDDING_DIM, help=f"embedding size (default: {EMBEDDING_DIM})")
    parser.add_argument(
        "--compare-with", type=Path, default=None, help="an earlier detect_duplicates_by_embedding.py to time too"
    )
    parser.add_argument(
        "--faiss-max", type=int, default=20_000, help="largest count also searched with FAISS (default: 20000)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, numpy "
        f"{np.__version__}, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    if "phash" in args.only:
        bench_phash(args.images, args.workers)
    if "search" in args.only:
        bench_search(args.hashes)
    if "embedding" in args.only:
        bench_embedding(args.embeddings, args.dim, args.compare_with, args.faiss_max)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
