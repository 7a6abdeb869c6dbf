"""GPU input pipeline: images per second on CUDA with JPEGs decoded by the CPU reader against decoded on the GPU.

    python benchmarks/bench_gpu.py                                         # 512 JPEGs of 1000x750, ResNet50, batch 64
    python benchmarks/bench_gpu.py --images 2048 --batch-size 128 --skip-training
    python benchmarks/bench_gpu.py --device cpu --images 16 --arch resnet18 --image-size 64 --train-images 16

For classifier.py's predict_batch and embed_batch, and for its input pipeline alone (reading, decoding, cropping; no
model), it prints images per second with every file on the CPU reader (``decode_on_gpu = False``) and with JPEGs
decoded on the GPU in batches (nvJPEG through torchvision.io.decode_jpeg), the model alone on ready tensors (the
ceiling), how many files the GPU decoded, and the largest difference in probabilities between the two decoders. Then
one figure for training: train_classifier.py --device cuda for 1 and for 2 epochs on generated images (the difference
is one epoch). Without a GPU it prints "no GPU: nothing to measure" and exits 0. ``--device cpu`` runs the same code
as a dry run: the "GPU" column then decodes with torchvision on the CPU, which proves the script works, not a speed.
Writes only generated images, a random-weight model and the trainer's outputs, in a temporary folder.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_inference import IMAGE_SIZE, generate_jpegs  # noqa: E402

import classifier  # noqa: E402

CLASSES = ["bird", "plane", "superman", "other"]
DISTINCT_IMAGES = 64  # generated once, then copied: decoding costs the same, generating 2048 photos would not
NO_GPU = "no GPU: nothing to measure (torch.cuda.is_available() is False; --device cpu runs a dry run of this script)"


def make_files(folder: Path, count: int) -> list[Path]:
    """``count`` JPEG files of IMAGE_SIZE: DISTINCT_IMAGES generated photos, copied under new names."""
    (folder / "distinct").mkdir(parents=True)
    distinct = generate_jpegs(folder / "distinct", min(count, DISTINCT_IMAGES))
    paths = []
    for i in range(count):
        paths.append(folder / f"img_{i:05d}.jpg")
        shutil.copyfile(distinct[i % len(distinct)], paths[-1])
    return paths


def best_seconds(function: Callable[[], object], rounds: int, device: torch.device) -> float:
    """The fastest of ``rounds`` timed runs, after one untimed run (nvJPEG, cuDNN and the page cache warm up)."""
    function()
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


@contextlib.contextmanager
def decoding(clf: classifier.BirdPlaneSupermanClassifier, on_gpu: bool, dry_run: bool, counts: collections.Counter):
    """Files decoded by the CPU reader (``on_gpu`` False) or on the GPU; counts each choose_decoder answer.

    In a dry run the classifier's device is the CPU, where choose_decoder never answers "gpu": it is asked as on CUDA,
    so the tensor path runs with torchvision decoding on the CPU.
    """
    real_choose = classifier.choose_decoder

    def choose(source: object, device: object, min_side: int = 0) -> str:
        answer = real_choose(source, "cuda" if dry_run else device, min_side)
        counts[answer] += 1
        return answer

    clf.decode_on_gpu, classifier.choose_decoder = on_gpu, choose
    try:
        yield
    finally:
        classifier.choose_decoder = real_choose


def pipeline_only(clf: classifier.BirdPlaneSupermanClassifier, paths: Sequence[Path], batch_size: int) -> None:
    """Reading, decoding and cropping every file, batch by batch, without the model."""
    for _ in clf._outputs(paths, batch_size, lambda pixels: [None] * len(pixels)):
        pass


def model_alone(clf: classifier.BirdPlaneSupermanClassifier, images: int, batch_size: int) -> Callable[[], None]:
    ready = torch.randn(batch_size, 3, clf.image_size, clf.image_size, device=clf.device)
    ready = ready.contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode():
            for _ in range(-(-images // batch_size)):
                clf.model(ready)

    return run


def make_dataset(root: Path, files: Sequence[Path], val_per_class: int = 2) -> Path:
    """``root/train/<class>/`` holding ``files`` spread over the classes, and a small ``root/val/``."""
    for i, source in enumerate(files):
        folder = root / "train" / CLASSES[i % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / source.name)
    for i, source in enumerate(files[: val_per_class * len(CLASSES)]):
        folder = root / "val" / CLASSES[i % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / source.name)
    return root


def training_epochs(dataset: Path, output: Path, args: argparse.Namespace) -> list[dict] | str:
    """The trainer's own records of a 2-epoch run (seconds and images per second of each epoch), or why there are none.

    train_classifier.py runs with its defaults for the device (on CUDA: AMP and channels_last) and random weights,
    which cost the same compute as ImageNet ones (the GPU machine has no network to fetch them).
    """
    import train_classifier

    argv = ["--dataset-dir", str(dataset), "--output-dir", str(output), "--epochs", "2", "--arch", args.arch]
    argv += ["--weights", "none", "--image-size", str(args.image_size), "--device", args.device]
    argv += ["--batch-size", str(args.batch_size), "--seed", "0", "--no-progress"]
    with contextlib.redirect_stdout(io.StringIO()):
        code = train_classifier.main(argv)
    if code:
        return f"train_classifier.py exited {code}"
    try:
        return json.loads((output / train_classifier.METADATA_NAME).read_text(encoding="utf-8"))["epochs"]
    except (OSError, ValueError, KeyError) as error:
        return f"no epoch records in its metadata ({error!r})"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--images", type=int, default=512, help="JPEGs of 1000x750 to classify (default: 512)")
    add("--batch-size", type=int, default=64, help="batch size for inference and training (default: 64)")
    add("--arch", default="resnet50", choices=classifier.SUPPORTED_ARCHS, help="architecture (default: resnet50)")
    add("--image-size", type=int, default=classifier.DEFAULT_IMAGE_SIZE, help="model input pixels (default: 224)")
    add("--device", default="cuda", help="cuda, cuda:N, or cpu for a dry run (default: cuda)")
    add("--rounds", type=int, default=3, help="timed runs of each measurement; the fastest counts (default: 3)")
    add("--train-images", type=int, default=256, help="training images for the epoch figure (default: 256)")
    add("--skip-training", action="store_true", help="leave out the training-epoch figure (default: off)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    device = torch.device(args.device)
    dry_run = device.type != "cuda"
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        folder = Path(tmp)
        paths = make_files(folder / "images", args.images)
        model = classifier.build_model(args.arch, len(CLASSES), weights=None).eval()
        checkpoint = classifier.make_checkpoint(model, arch=args.arch, classes=CLASSES, image_size=args.image_size)
        torch.save(checkpoint, folder / "model.pth")
        clf = classifier.BirdPlaneSupermanClassifier(folder / "model.pth", confidence_threshold=0.0, device=args.device)

        rates: dict[str, dict[str, float]] = collections.defaultdict(dict)
        counts: collections.Counter = collections.Counter()
        probabilities = {}
        for column, on_gpu in (("cpu", False), ("gpu", True)):
            with decoding(clf, on_gpu, dry_run, counts):
                runs: dict[str, Callable[[], object]] = {
                    "predict_batch": lambda: clf.predict_batch(paths, args.batch_size),
                    "embed_batch": lambda: list(clf.embed_batch(paths, args.batch_size)),
                    "input pipeline only": lambda: pipeline_only(clf, paths, args.batch_size),
                }
                for name, run in runs.items():
                    rates[name][column] = args.images / best_seconds(run, args.rounds, device)
                counts.clear()
                results = clf.predict_batch(paths, args.batch_size)
                probabilities[column] = np.array([[r[3][c] for c in CLASSES] for r in results])
        gpu_files = counts["gpu"]  # in the last run: the files choose_decoder sent to the GPU decoder
        model_rate = args.images / best_seconds(model_alone(clf, args.images, args.batch_size), args.rounds, device)

        name = torch.cuda.get_device_name(device) if not dry_run else "none (dry run on the CPU)"
        print(f"GPU: {name}; torch {torch.__version__}, torchvision {torchvision.__version__}, {os.cpu_count()} CPUs")
        print(
            f"images: {args.images} JPEGs of {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, {args.arch} at {args.image_size} px, "
            f"batch {args.batch_size}, random weights, fastest of {args.rounds}; CPU decoding in "
            f"{classifier.DECODE_THREADS} threads"
        )
        gpu_label = "torchvision on CPU" if dry_run else "GPU decode"
        print(f"{'images per second':<30} {'CPU reader':>12} {gpu_label:>20} {'ratio':>7}")
        for row, rate in rates.items():
            print(f"{row:<30} {rate['cpu']:>12.1f} {rate['gpu']:>20.1f} {rate['gpu'] / rate['cpu']:>6.2f}x")
        print(f"{'model alone on ready tensors':<30} {model_rate:>12.1f}")
        difference = float(np.abs(probabilities["cpu"] - probabilities["gpu"]).max())
        print(f"files sent to the GPU decoder: {gpu_files} of {args.images}; largest probability gap {difference:.4f}")

        if not args.skip_training:
            train_files = make_files(folder / "train_images", args.train_images)
            dataset = make_dataset(folder / "dataset", train_files)
            epochs = training_epochs(dataset, folder / "run", args)
            print(
                f"training: train_classifier.py --device {args.device}, {args.train_images} images, its defaults",
                end="",
            )
            if isinstance(epochs, str):
                print(f": no figure, {epochs}")
            for record in epochs if isinstance(epochs, list) else []:
                seconds, rate = record.get("seconds"), record.get("images_per_second")
                print(f"; epoch {record.get('epoch')}: {seconds} s, {rate} images/s", end="")
            print("" if isinstance(epochs, str) else " (epoch 1 also fills the image cache; each includes validation)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
