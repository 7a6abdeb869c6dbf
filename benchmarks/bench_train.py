"""Benchmark train_classifier.py's input pipeline and training epoch against the naive path, on generated photos.

    python benchmarks/bench_train.py                                  # 256 JPEGs of 1000x750, ResNet50, 224 px, CPU
    python benchmarks/bench_train.py --images 64 --skip-training      # the input pipeline only, in a minute

(a) Input pipeline alone: the trainer's loader (JPEG draft decode, a downsized in-memory copy kept after the first
    pass, per-class augmentation through torchvision.transforms.v2 on uint8 tensors, its DataLoader settings) against
    a naive torchvision pipeline (full-size decode, RandomResizedCrop + flip + ColorJitter on PIL, num_workers=0).
(b) Training: real epochs through the trainer's loader (train_one_epoch) against the same training steps on ready
    tensors; the ratio says how much of the training time the input pipeline costs.
(c) The augmentation alone (training_data.augment on the cached copies, one thread), per image and as a share of a
    training step per image from (b): the figure that decides whether a hand-written augmentation would be worth it
    (only above 15 % of the epoch time).
Writes only the generated images, under benchmarks/_out/train/ (deleted afterwards unless --keep).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import classifier  # noqa: E402
import train_classifier  # noqa: E402
import training_data  # noqa: E402

CLASSES = ("bird", "plane", "superman", "other")
VAL_PER_CLASS = 2  # the trainer needs a val split; it is not timed
JPEG_QUALITY = 90  # what photos from an image search typically are
NAIVE_JITTER = 0.3  # the naive pipeline's ColorJitter strength, as the trainer's table
RUN_EPOCHS = 15  # the trainer's default number of epochs, for the whole-run ratio


def make_photo(seed: int, width: int, height: int) -> Image.Image:
    """A photo-like picture: smooth gradients, shapes and sensor noise (so JPEG sizes and decode times are real)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 215, 3)
    ramp_x = np.linspace(-60, 60, width, dtype=np.float32)[None, :, None] * rng.uniform(-1, 1, 3)
    ramp_y = np.linspace(-60, 60, height, dtype=np.float32)[:, None, None] * rng.uniform(-1, 1, 3)
    pixels = base + ramp_x + ramp_y + rng.normal(0, 6, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, x1 = sorted(rng.integers(0, width, 2))
        y0, y1 = sorted(rng.integers(0, height, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1 + 4, y1 + 4], fill=colour)
    return image


def generate_dataset(root: Path, images: int, width: int, height: int) -> Path:
    """``root/train/<class>/`` with ``images`` JPEGs in all, and a small val split."""
    for split, count in (("train", images), ("val", VAL_PER_CLASS * len(CLASSES))):
        for i in range(count):
            name = CLASSES[i % len(CLASSES)]
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{split}_{i:04d}.jpg"
            if not path.exists():
                make_photo(i + (0 if split == "train" else 10**6), width, height).save(path, quality=JPEG_QUALITY)
    return root


class NaiveDataset(Dataset):
    """What a first version of a trainer does: open the full-size file and run torchvision's PIL transforms."""

    def __init__(self, samples: Sequence[training_data.Sample], image_size: int) -> None:
        self.samples = list(samples)
        self.transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ColorJitter(NAIVE_JITTER, NAIVE_JITTER, NAIVE_JITTER),
                transforms.ToTensor(),
                transforms.Normalize(classifier.IMAGENET_MEAN, classifier.IMAGENET_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        with Image.open(sample.path) as image:
            return self.transform(image.convert("RGB")), sample.label


def time_pipelines(
    context: train_classifier.TrainingRun, image_size: int, batch_size: int, epoch: int
) -> dict[str, float]:
    """Seconds for one epoch of each pipeline, interleaved batch by batch so both see the same machine load.

    "decode_once": the trainer's one-off pass over the files (draft decode and downsized copy, as setup_training
    does), in batch-sized chunks; "ours": an epoch from those copies up to the normalised model input; "naive": full
    decode and torchvision's PIL transforms with num_workers=0.
    """
    samples = context.train_dataset.samples
    resize_size = classifier.default_resize_size(image_size)
    naive_loader = DataLoader(NaiveDataset(samples, image_size), batch_size=batch_size, shuffle=True, num_workers=0)
    context.train_loader.sampler.set_epoch(epoch)
    naive_batches, our_batches = iter(naive_loader), iter(context.train_loader)
    seconds = {"decode_once": 0.0, "ours": 0.0, "naive": 0.0}
    for start in range(0, len(samples), batch_size):
        started = time.perf_counter()
        chunk = samples[start : start + batch_size]
        training_data.prepare_images(chunk, "train", image_size, resize_size, 2**40, None, "decoding")
        seconds["decode_once"] += time.perf_counter() - started
        started = time.perf_counter()
        batch = next(our_batches, None)
        if batch is not None:
            train_classifier.model_input(batch, context)[0].sum()  # touch the batch, as the model would
        seconds["ours"] += time.perf_counter() - started
        started = time.perf_counter()
        inputs, _ = next(naive_batches)
        inputs.sum()
        seconds["naive"] += time.perf_counter() - started
    return seconds


def ready_batches(context: train_classifier.TrainingRun, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The model inputs of one epoch, computed ahead (not timed)."""
    context.train_loader.sampler.set_epoch(epoch)
    return [train_classifier.model_input(batch, context) for batch in context.train_loader]


def time_training(
    context: train_classifier.TrainingRun,
    ready: Sequence[tuple[torch.Tensor, torch.Tensor]],
    optimization: train_classifier.Optimization,
    epoch: int,
) -> dict[str, float]:
    """Seconds of a real epoch (loader, model input, training_step) and of the same steps on ready tensors.

    The two alternate step by step, so a burst of load from another process hits both the same way.
    """
    train_classifier.set_train_mode(context.model, context.frozen)
    context.train_loader.sampler.set_epoch(epoch)
    real_batches = iter(context.train_loader)
    seconds = {"real": 0.0, "ready": 0.0, "images": 0}
    for ready_inputs, ready_labels in ready:
        started = time.perf_counter()
        inputs, labels = train_classifier.model_input(next(real_batches), context)
        train_classifier.training_step(context.model, context, optimization, inputs, labels)[1].item()
        seconds["real"] += time.perf_counter() - started
        started = time.perf_counter()
        train_classifier.training_step(context.model, context, optimization, ready_inputs, ready_labels)[1].item()
        seconds["ready"] += time.perf_counter() - started
        seconds["images"] += len(labels)
    return seconds


def time_augmentation(context: train_classifier.TrainingRun, count: int) -> float:
    """Seconds per image of the per-class augmentation alone, from the cached copies, in this thread."""
    dataset = context.train_dataset
    indices = [i for i in range(len(dataset)) if i not in dataset.excluded][:count]
    copies = [(dataset.pixels(i), dataset.augmentations[dataset.samples[i].label]) for i in indices]
    for seed, (pixels, transform) in enumerate(copies[:4]):  # warm-up, untimed
        training_data.augment(pixels, transform, seed)
    started = time.perf_counter()
    for seed, (pixels, transform) in enumerate(copies):
        training_data.augment(pixels, transform, seed)
    return (time.perf_counter() - started) / max(1, len(copies))


def rounded(seconds: Sequence[float]) -> list[float]:
    return [round(value, 2) for value in seconds]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark the trainer's input pipeline and epochs.", add_help=add_help
    )
    parser.add_argument("--images", type=int, default=256, help="training images to generate (default: 256)")
    parser.add_argument("--width", type=int, default=1000, help="generated photo width (default: 1000)")
    parser.add_argument("--height", type=int, default=750, help="generated photo height (default: 750)")
    parser.add_argument("--image-size", type=int, default=224, help="model input size (default: 224)")
    parser.add_argument("--arch", default="resnet50", help="architecture, random weights (default: resnet50)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each input pipeline (default: 3)")
    parser.add_argument("--num-workers", type=int, default=None, help="trainer loader workers (default: its own)")
    parser.add_argument("--device", default="cpu", help="device for (b) (default: cpu)")
    parser.add_argument("--skip-training", action="store_true", help="measure (a) only (default: off)")
    parser.add_argument(
        "--out", default="benchmarks/_out/train", help="scratch folder (default: benchmarks/_out/train)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated images for the next run (default: off)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s: %(message)s")
    out = Path(args.out)
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    started = time.perf_counter()
    dataset = generate_dataset(out / "dataset", args.images, args.width, args.height)
    print(
        f"data: {args.images} JPEGs of {args.width}x{args.height} (generated in {time.perf_counter() - started:.1f} s)"
    )

    trainer_argv = [
        "--dataset-dir", str(dataset), "--output-dir", str(out / "models"), "--arch", args.arch,
        "--weights", "none", "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
        "--device", args.device, "--freeze-until", "layer3",
    ] + (["--workers", str(args.num_workers)] if args.num_workers is not None else [])  # fmt: skip
    trainer_args = train_classifier.get_args_parser().parse_args(trainer_argv)

    # (a) the input pipeline alone
    context = train_classifier.setup_training(
        trainer_args, None, out / "models"
    )  # scans, decodes once (draft), builds the model
    print(f"trainer: num_workers={context.num_workers}, cache {context.metadata['config']['memory_cache_mb']} MB")
    count = len(context.train_dataset.samples)
    rounds = [time_pipelines(context, args.image_size, args.batch_size, epoch) for epoch in range(args.repeats)]
    # The fastest round is each side's speed with the least disturbance from other processes.
    best = {key: min(r[key] for r in rounds) for key in ("naive", "decode_once", "ours")}
    print(f"\n(a) input pipeline, {count} images, {args.repeats} rounds interleaved batch by batch, fastest round")
    for key, label in (
        ("naive", "naive, full decode, num_workers=0: "),
        ("decode_once", "trainer, one draft decode per file:"),
        ("ours", "trainer, an epoch from the copies: "),
    ):
        print(f"    {label} {count / best[key]:7.1f} images/s   {rounded([r[key] for r in rounds])} s")
    first = best["naive"] / (best["decode_once"] + best["ours"])
    later = best["naive"] / best["ours"]
    run = RUN_EPOCHS * best["naive"] / (best["decode_once"] + RUN_EPOCHS * best["ours"])
    print(f"    ratio trainer/naive: first epoch (with the decode) {first:.2f}x, each later epoch {later:.2f}x,")
    print(f"    a {RUN_EPOCHS}-epoch run {run:.2f}x (target >= 2x)")
    augment_seconds = time_augmentation(context, 64)
    print(f"\n(c) augmentation alone (torchvision.transforms.v2, one thread): {1000 * augment_seconds:.2f} ms/image")
    if args.skip_training:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        return 0

    # (b) a real training epoch against the same steps on ready tensors
    optimization = train_classifier.make_optimizer(
        context.model, trainer_args, len(context.train_loader), context.device, context.amp_dtype
    )
    time_training(context, ready_batches(context, 100)[:1], optimization, 100)  # warm-up, untimed
    timed = time_training(context, ready_batches(context, 101), optimization, 102)
    ready_rate, real_rate = timed["images"] / timed["ready"], timed["images"] / timed["real"]
    first_rate = timed["images"] / (timed["real"] + best["decode_once"])
    print(f"\n(b) training {args.arch}, freeze-until layer3, {context.device}, alternating step by step (images/s)")
    print(f"    same steps on ready tensors:   {ready_rate:8.2f}  ({timed['ready']:.1f} s)")
    print(f"    real epoch through the loader: {real_rate:8.2f}  ({timed['real']:.1f} s)")
    print(f"    ratio real/ready: {real_rate / ready_rate:.3f} (target >= 0.85)")
    print(f"    a first epoch, counting the one-off decode: {first_rate / ready_rate:.3f}")
    step_seconds = 1 / ready_rate
    print(f"(c) augmentation share of a training step per image: {augment_seconds / step_seconds:.1%} (keep <= 15%)")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
