"""Benchmark: download_images.py (parallel, verified, hashed, with manifest) against a sequential download loop.

Both fetch the same generated images from a local HTTP server that adds a fixed latency to every answer, as a
remote image host does; nothing leaves the machine. Prints both throughputs and the ratio.

    python benchmarks/bench_download.py                       # 200 images, 100 ms latency, 8 workers
    python benchmarks/bench_download.py --images 400 --workers 16

Writes only to a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "data_collection", ROOT / "tests"):
    sys.path.insert(0, str(_path))

import download_images  # noqa: E402
import requests  # noqa: E402
from _download_helpers import ImageServer, Route, encode_good_image  # noqa: E402

TARGET_RATIO = 5.0  # the bar: at least 5x the images per second of the sequential loop
IMAGE_SIZE = (320, 240)  # a typical small web photo: about 20 kB as JPEG


def make_routes(count: int) -> dict[str, Route]:
    return {
        f"/img/{number:04d}.jpg": Route(encode_good_image("jpeg", number % 4, number, IMAGE_SIZE))
        for number in range(count)
    }


def sequential_loop(urls: Sequence[str], folder: Path) -> int:
    """The obvious way: one requests.get after another, bytes written as they come."""
    folder.mkdir(parents=True)
    saved = 0
    for number, url in enumerate(urls):
        response = requests.get(url, timeout=10)
        if response.ok:
            (folder / f"{number:04d}.jpg").write_bytes(response.content)
            saved += 1
    return saved


def our_path(urls: Sequence[str], folder: Path, workers: int) -> int:
    """download_images.py as a user runs it, from a --urls-file: parallel, verified, hashed, manifest."""
    folder.parent.mkdir(parents=True)
    urls_file = folder.parent / "urls.csv"
    urls_file.write_text("".join(f"bird,{url}\n" for url in urls))
    argv = ["--urls-file", str(urls_file), "--dataset-dir", str(folder), "--workers", str(workers)]
    argv += ["--min-size", "32", "--no-progress"]
    with redirect_stdout(io.StringIO()):
        exit_code = download_images.main(argv)
    if exit_code != 0:
        raise SystemExit(f"download_images.py exited {exit_code}")
    return sum(1 for path in folder.glob("*/bird/*") if path.is_file())


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="images to download (default: 200)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds added to every answer (default: 0.1)")
    parser.add_argument("--workers", type=int, default=8, help="download_images.py --workers (default: 8)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    routes = make_routes(args.images)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{args.images} JPEGs of {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, {args.latency * 1000:.0f} ms added per answer")
    with ImageServer(routes, latency_s=args.latency) as server, tempfile.TemporaryDirectory() as temp:
        urls = [server.url(path) for path in routes]
        start = time.perf_counter()
        naive_count = sequential_loop(urls, Path(temp) / "naive" / "images")
        naive_s = time.perf_counter() - start
        start = time.perf_counter()
        our_count = our_path(urls, Path(temp) / "ours" / "dataset", args.workers)
        our_s = time.perf_counter() - start
    if naive_count != args.images or our_count != args.images:
        raise SystemExit(f"expected {args.images} images, got {naive_count} (loop) and {our_count} (ours)")
    naive_rate, our_rate = naive_count / naive_s, our_count / our_s
    ratio = our_rate / naive_rate
    print(f"sequential loop:    {naive_s:6.2f} s  {naive_rate:7.1f} images/s")
    print(f"download_images.py: {our_s:6.2f} s  {our_rate:7.1f} images/s  ({args.workers} workers)")
    print(f"ratio: {ratio:.1f}x (target {TARGET_RATIO:g}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'})")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
