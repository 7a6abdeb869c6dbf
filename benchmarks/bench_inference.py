"""Inference speed: classifier.predict_batch against a naive loop, the model alone and the ONNX export, in one run.

    python benchmarks/bench_inference.py                      # 64 generated 1000x750 JPEGs, ResNet50, CPU, batch 16
    python benchmarks/bench_inference.py --images 128 --device cuda
    python benchmarks/bench_inference.py --onnx-threads 1     # onnxruntime's intra-op threads (0: its default)

Prints images per second of the four paths and the three ratios the project tracks:
predict_batch / naive loop (goal >= 1.2), predict_batch / model alone (goal >= 0.85) and, on the same images,
predict_batch of the .onnx export (onnxruntime) / predict_batch of the .pth (torch) (goal >= 1.3 on CPU). The two
predict_batch paths are timed in alternating rounds (--rounds) and their medians compared, so a change in the
machine's load between them does not decide the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import classifier  # noqa: E402

IMAGE_SIZE = (1000, 750)  # a typical web photo


def generate_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: smooth gradients plus noise, so they compress and decode like real photos."""
    rng = np.random.default_rng(seed)
    width, height = IMAGE_SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(count):
        base = rng.uniform(0, 255, 3)
        tilt = rng.uniform(-0.2, 0.2, 3)
        pixels = base + tilt * (x[..., None] + y[..., None]) / 4 + rng.normal(0, 8, (height, width, 3))
        path = folder / f"img_{i:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def time_it(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def naive_loop(model: torch.nn.Module, paths: Sequence[Path], device: torch.device) -> None:
    """What a first version does: full decode, NCHW float32, one image per forward pass."""
    transform = T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(classifier.IMAGENET_MEAN, classifier.IMAGENET_STD)]
    )
    with torch.no_grad():
        for path in paths:
            model(transform(Image.open(path).convert("RGB")).unsqueeze(0).to(device))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="number of generated JPEGs (default: 64)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default: 16)")
    parser.add_argument("--arch", default="resnet50", help="architecture (default: resnet50)")
    parser.add_argument("--device", default="cpu", help="device (default: cpu)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating .pth / .onnx timings (default: 3)")
    threads = f"onnxruntime's intra-op threads, 0 for its default (default: {classifier.ONNX_THREADS})"
    parser.add_argument("--onnx-threads", type=int, default=classifier.ONNX_THREADS, help=threads)
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads for the .pth (default: torch's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = generate_jpegs(folder, args.images)
        model = classifier.build_model(args.arch, 4, weights=None).eval()
        model_path = folder / "model.pth"
        torch.save(
            classifier.make_checkpoint(model, arch=args.arch, classes=["bird", "plane", "superman", "other"]),
            model_path,
        )
        clf = classifier.BirdPlaneSupermanClassifier(model_path, device=args.device)

        naive_model = model.to(device)
        naive_loop(naive_model, paths[:2], device)  # warm up
        naive_s = time_it(lambda: naive_loop(naive_model, paths, device))

        start = time.perf_counter()
        classifier.export_onnx(model_path, folder / "model.onnx")
        export_s = time.perf_counter() - start
        classifier.ONNX_THREADS = args.onnx_threads
        onnx_clf = classifier.BirdPlaneSupermanClassifier(folder / "model.onnx", device=args.device)
        rounds: dict[str, list[float]] = {"pth": [], "onnx": []}
        cpu: dict[str, list[float]] = {"pth": [], "onnx": []}  # CPU seconds of the process: all its threads
        engines = {"pth": clf, "onnx": onnx_clf}
        for engine in engines.values():
            engine.predict_batch(paths[: args.batch_size], batch_size=args.batch_size)  # warm up
        for _ in range(args.rounds):
            for name, engine in engines.items():
                cpu_start = time.process_time()
                rounds[name].append(time_it(lambda engine=engine: engine.predict_batch(paths, args.batch_size)))
                cpu[name].append(time.process_time() - cpu_start)
        ours_s, onnx_s = statistics.median(rounds["pth"]), statistics.median(rounds["onnx"])
        same = [clf.predict(p)[2] for p in paths[:4]], [onnx_clf.predict(p)[2] for p in paths[:4]]
        largest = max(abs(a[c] - b[c]) for a, b in zip(*same) for c in a)

        ready = torch.randn(args.batch_size, 3, clf.image_size, clf.image_size, device=device)
        ready = ready.contiguous(memory_format=torch.channels_last)
        batches = -(-args.images // args.batch_size)

        @torch.inference_mode()
        def model_alone() -> None:
            for _ in range(batches):
                clf.model(ready)
            if device.type == "cuda":
                torch.cuda.synchronize()

        model_alone()
        model_s = time_it(model_alone) * args.images / (batches * args.batch_size)

    naive_ips, ours_ips, model_ips = args.images / naive_s, args.images / ours_s, args.images / model_s
    onnx_ips = args.images / onnx_s
    print(
        f"images: {args.images} x {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG, {args.arch}, device {device}, "
        f"batch {args.batch_size}, torch threads {torch.get_num_threads()}, onnxruntime intra-op threads "
        f"{args.onnx_threads or 'default'} on {onnx_clf.device}, export {export_s:.1f} s"
    )
    print(f"naive loop (full decode, NCHW, batch 1): {naive_ips:7.2f} images/s")
    print(f"predict_batch (.pth, torch):             {ours_ips:7.2f} images/s, median of {args.rounds}")
    print(f"model alone on ready tensors:            {model_ips:7.2f} images/s")
    print(f"predict_batch (.onnx, onnxruntime):      {onnx_ips:7.2f} images/s, median of {args.rounds}")
    seconds = {name: [round(s, 2) for s in times] for name, times in rounds.items()}
    print(f"rounds, seconds: .pth {seconds['pth']}, .onnx {seconds['onnx']}")
    print(f"ratio predict_batch / naive:  {ours_ips / naive_ips:.2f}x (goal >= 1.2)")
    print(f"ratio predict_batch / model:  {ours_ips / model_ips:.2f}x (goal >= 0.85)")
    fastest = min(rounds["pth"]) / min(rounds["onnx"])
    per_cpu = statistics.median(cpu["pth"]) / statistics.median(cpu["onnx"])
    print(f"ratio .onnx / .pth, fastest round of each: {fastest:.2f}x; per CPU-second (medians): {per_cpu:.2f}x")
    print(f"ratio .onnx / .pth:           {onnx_ips / ours_ips:.2f}x (goal >= 1.3 on CPU)", end="")
    print(f"; probabilities within {largest:.0e} on 4 images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
