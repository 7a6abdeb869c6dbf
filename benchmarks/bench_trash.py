"""Time trash.py's log, apply and undo on many files, this tree beside another checkout (e.g. before issue 17's
descriptor-relative moves), each in its own process on the same generated files.

    python benchmarks/bench_trash.py                                   # this tree only
    python benchmarks/bench_trash.py --compare /tmp/old --files 2000   # another checkout's trash.py beside it

Writes only under a temporary folder (removed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = """
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import trash
dataset, count = Path(sys.argv[2]), int(sys.argv[3])
moves = [trash.Move(f"train/c{i % 4}/f{i:05d}.jpg") for i in range(count)]
times = {}
with trash.lock(dataset, "bench_trash.py"):
    start = time.perf_counter()
    log = trash.new_log(dataset, "bench_trash.py", moves)
    times["log"] = time.perf_counter() - start
    start = time.perf_counter()
    applied = trash.apply(dataset, log)
    times["apply"] = time.perf_counter() - start
    start = time.perf_counter()
    undone = trash.undo(dataset, log)
    times["undo"] = time.perf_counter() - start
assert len(applied.done) == count and not applied.errors and not undone.errors, (applied.errors[:3], undone.errors[:3])
print(json.dumps(times))
"""


def make_files(dataset: Path, count: int, size: int) -> None:
    payload = os.urandom(size)
    for index in range(count):
        folder = dataset / "train" / f"c{index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index:05d}.jpg").write_bytes(payload + index.to_bytes(4, "big"))


def run_tree(tree: Path, dataset: Path, count: int) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, "-c", RUN, str(tree), str(dataset), str(count)], capture_output=True, text=True, check=True
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="files moved (default: 2000)")
    parser.add_argument("--size", type=int, default=100_000, help="bytes per file (default: 100000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per tree (default: 2)")
    parser.add_argument("--compare", type=Path, help="another checkout whose trash.py runs beside this one")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    trees = {"this tree": ROOT, **({"compared": args.compare.resolve()} if args.compare else {})}
    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        dataset = Path(folder) / "dataset"
        make_files(dataset, args.files, args.size)
        for _ in range(args.rounds):
            for name, tree in trees.items():
                times = run_tree(tree, dataset, args.files)
                best[name] = {step: min(value, best.get(name, {}).get(step, value)) for step, value in times.items()}
    print(f"{args.files} files of {args.size} B, best of {args.rounds}; load {os.getloadavg()[0]:.1f}")
    for name, times in best.items():
        print(f"  {name:10s} " + "  ".join(f"{step} {value:.2f} s" for step, value in times.items()))
    if "compared" in best:
        ratio = {step: best["this tree"][step] / best["compared"][step] for step in best["this tree"]}
        print("  this/compared " + "  ".join(f"{step} {value:.2f}x" for step, value in ratio.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
