"""The trainer's data pipeline: find the images, keep downsized copies, augment per class, draw each epoch.

Imported by train_classifier.py (and benchmarks/bench_train.py), not a script. Reads images only through
classifier.py (one set of reasons a bad file is refused) and writes nothing but the optional --cache-dir copies.

- ``build_datasets``: the class folders (fileio.class_folders), the image files of train/ and val/, each checked
  once (``prepare_images``), as two ImageDatasets with their class counts and the files set aside.
- ``prepare_images``: with a cache budget, a downsized copy of each file (shorter side at the resize size) kept in
  memory and, with --cache-dir, on disk, so later epochs skip JPEG decoding.
- ``ImageDataset``: HWC uint8 squares, augmented (view "train") or exactly as classifier.py sees them ("eval").
- ``AUGMENTATION_TABLE``: the one per-class augmentation table.
- ``EpochSampler`` / ``draw_epoch``: the epoch's draw, class-balanced by inverse frequency, reproducible by seed.
  Under torchrun every process draws the same epoch and keeps its own strided share (``shard``), like
  torch.utils.data.DistributedSampler does for a permutation; ``UsableIndices`` shares the evaluation the same way.
  ``make_train_loader`` / ``make_eval_loader`` put them in DataLoaders.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import math
import os
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

import classifier
import cli
import fileio

logger = logging.getLogger(__name__)

CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratios of random crops, torchvision's RandomResizedCrop default
TRAINING_COPY_MAX_ASPECT = 2.0  # cached training copies keep at most a 2:1 centre band of a panorama
ROTATION_FILL = (124, 116, 104)  # ImageNet mean colour: corners uncovered by a rotation normalise to about zero
DEFAULT_CACHE_MAX_GB = 4.0  # downsized copies kept in memory; a 4:3 photo at 224 px takes 0.26 MB
MAX_WORKERS = 64  # loader processes; more only cost memory (each a Python with the dataset), never speed
MIN_CLASS_IMAGES = 20  # fewer training images than this and a class is learnt poorly and its val metrics are noise
MIN_CLASS_SHARE = 5  # a class under a fifth of the largest one: each image is sampled 5 times as often, memorised
PREPARE_THREADS = max(1, min(8, os.cpu_count() or 1))  # Pillow releases the GIL while decoding and resizing


class DatasetError(ValueError):
    """The dataset cannot be trained on as it is; the message is one sentence saying why and what to do."""


class Sample(NamedTuple):
    """One image of the dataset: where it is, its class index, and its path relative to the dataset folder."""

    path: Path
    label: int
    relpath: str


class LoadedSample(NamedTuple):
    pixels: np.ndarray  # HWC uint8, image_size square
    label: int
    index: int


class FailedSample(NamedTuple):
    index: int
    reason: str


@dataclasses.dataclass(frozen=True)
class AugmentationPolicy:
    """What random changes a training image of one class may get (probabilities, degrees, +/- factors)."""

    horizontal_flip: float
    vertical_flip: float
    rotation_degrees: float
    crop_scale: tuple[float, float]  # share of the image area a random crop keeps
    brightness: float
    contrast: float
    saturation: float
    grayscale: float


# The one table of class-specific augmentation. Birds and planes never fly upside down, so they are never flipped
# vertically; Superman strikes comic poses at any angle; "other" is anything, so it gets the full suite. A class name
# not in the table gets DEFAULT_AUGMENTATION. Flipping only some classes can teach the model that "upside down means
# superman or other": --uniform-augmentation gives every class DEFAULT_AUGMENTATION instead.
DEFAULT_AUGMENTATION = AugmentationPolicy(0.5, 0.0, 10.0, (0.5, 1.0), 0.2, 0.2, 0.2, 0.05)
AUGMENTATION_TABLE: dict[str, AugmentationPolicy] = {
    "bird": AugmentationPolicy(0.5, 0.0, 15.0, (0.5, 1.0), 0.3, 0.3, 0.3, 0.05),
    "plane": AugmentationPolicy(0.5, 0.0, 10.0, (0.5, 1.0), 0.3, 0.3, 0.2, 0.05),
    "superman": AugmentationPolicy(0.5, 0.2, 25.0, (0.4, 1.0), 0.3, 0.3, 0.3, 0.05),
    "other": AugmentationPolicy(0.5, 0.5, 30.0, (0.3, 1.0), 0.4, 0.4, 0.4, 0.1),
}


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions: classes, sampling, augmentation (and the RNG states an epoch replays from)


def compare_class_sets(train_classes: Sequence[str], val_classes: Sequence[str]) -> str | None:
    """One sentence naming val's class folders that train/ lacks, or None. A class of train/ with no folder (or no
    images) in val/ is trained anyway: its val metrics are undefined."""
    extra = sorted(set(val_classes) - set(train_classes))
    if not extra:
        return None
    return (
        f"val/ has the class folder(s) {cli.printable(', '.join(extra))} that train/ lacks; move those images into "
        "train/<class>/ (a class needs training images) or out of val/."
    )


def class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(int).tolist()


def class_sampling_weights(counts: Sequence[int]) -> list[float]:
    """The weighted sampler's per-class weight (``draw_epoch``): 1/count, 0 for an empty class; the training metadata
    records these."""
    return [1.0 / count if count else 0.0 for count in counts]


def inverse_frequency_weights(labels: Sequence[int], num_classes: int) -> tuple[list[float], list[float]]:
    """(per-class weight 1/count, per-sample weight): sampling by these gives every class the same expected share."""
    class_weights = class_sampling_weights(class_counts(labels, num_classes))
    return class_weights, [class_weights[label] for label in labels]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything random in one epoch: an epoch replays exactly, whether resumed or not."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**63 - 1)


def draw_epoch(
    labels: Sequence[int],
    num_classes: int,
    is_weighted: bool,
    seed: int,
    epoch: int,
    excluded: frozenset[int] = frozenset(),
) -> list[tuple[int, int]]:
    """The (sample index, augmentation seed) pairs of one epoch, as many as there are usable samples.

    Weighted: a WeightedRandomSampler with inverse class frequency (with replacement), so the classes come about
    equally often. Otherwise a random permutation. Excluded indices (images that failed to decode) never come.
    """
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    usable = [i for i in range(len(labels)) if i not in excluded]
    if not usable:
        return []
    if is_weighted:
        _, weights = inverse_frequency_weights([labels[i] for i in usable], num_classes)
        picks = list(WeightedRandomSampler(weights, len(usable), replacement=True, generator=generator))
        indices = [usable[p] for p in picks]
    else:
        indices = [usable[p] for p in torch.randperm(len(usable), generator=generator).tolist()]
    augmentation_seeds = torch.randint(0, 2**62, (len(indices),), generator=generator).tolist()
    return list(zip(indices, augmentation_seeds))


def shard(items: Sequence[Any], rank: int, world_size: int, *, is_padded: bool = True) -> list[Any]:
    """Process ``rank``'s share of ``items``: every ``world_size``-th item from position ``rank``.

    Padded (training): the list is first extended by repeating its start to a multiple of ``world_size``, as
    DistributedSampler does, so every process takes the same number of steps (DistributedDataParallel needs that);
    the shares together are the whole list plus fewer than ``world_size`` repeats. Not padded (evaluation): the
    shares are disjoint and together exactly ``items``.
    """
    items = list(items)
    if world_size == 1:
        return items
    if is_padded and items:
        total = math.ceil(len(items) / world_size) * world_size
        items = (items * math.ceil(total / len(items)))[:total]
    return items[rank::world_size]


def rng_states() -> dict[str, Any]:
    """The global RNG states as plain types and tensors (loadable with weights_only=True), for --resume: with
    ``epoch_seed`` they make a resumed epoch replay exactly."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), int(numpy_state[2]), int(numpy_state[3]), numpy_state[4]],
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():  # a machine with fewer GPUs restores the ones it has
        for device, state in enumerate(states["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)


def augmentation_policy_for(class_name: str, is_uniform: bool = False) -> AugmentationPolicy:
    """The table's row for the class, DEFAULT_AUGMENTATION for unknown names or with --uniform-augmentation."""
    return DEFAULT_AUGMENTATION if is_uniform else AUGMENTATION_TABLE.get(class_name, DEFAULT_AUGMENTATION)


def build_augmentation(policy: AugmentationPolicy, image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The policy as a torchvision.transforms.v2 pipeline: CHW uint8 tensor in, ``image_size`` square CHW uint8 out.

    Rotation first, on the cached copy (its shorter side is the resize size), then the random crop to the square,
    so the crop usually cuts away the corners a rotation uncovers; those that remain get the ImageNet mean colour,
    which normalises to about zero. Flips, colours and grayscale then work on the small square.
    """
    from torchvision.transforms import v2

    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if policy.rotation_degrees:
        bilinear = v2.InterpolationMode.BILINEAR
        steps.append(v2.RandomRotation(policy.rotation_degrees, interpolation=bilinear, fill=list(ROTATION_FILL)))
    steps.append(v2.RandomResizedCrop(image_size, scale=policy.crop_scale, ratio=CROP_RATIO, antialias=True))
    if policy.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip(policy.horizontal_flip))
    if policy.vertical_flip:
        steps.append(v2.RandomVerticalFlip(policy.vertical_flip))
    steps.append(v2.ColorJitter(brightness=policy.brightness, contrast=policy.contrast, saturation=policy.saturation))
    if policy.grayscale:
        steps.append(v2.RandomGrayscale(policy.grayscale))
    return v2.Compose(steps)


_AUGMENTATION_LOCK: tuple[int, threading.Lock] | None = None


def augmentation_lock() -> threading.Lock:
    """This process's lock around torch's global random generator (a forked loader worker makes its own)."""
    global _AUGMENTATION_LOCK
    if _AUGMENTATION_LOCK is None or _AUGMENTATION_LOCK[0] != os.getpid():
        _AUGMENTATION_LOCK = (os.getpid(), threading.Lock())
    return _AUGMENTATION_LOCK[1]


def augment(pixels: np.ndarray, transform: Callable[[torch.Tensor], torch.Tensor], seed: int) -> np.ndarray:
    """``transform`` applied to an HWC uint8 image with torch's generator seeded by ``seed``; HWC uint8 out.

    torchvision draws its random parameters from torch's global generator, so the seeding and the transform hold a
    lock (batches are loaded in threads) and the global state is restored afterwards: an image's random changes
    depend on its seed alone, never on the thread or worker process that made it, and training is unaffected.
    """
    image = torch.from_numpy(pixels).permute(2, 0, 1)
    with augmentation_lock(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        augmented = transform(image)
    return augmented.permute(1, 2, 0).numpy()


def training_copy_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centre band of the image kept in the training copy: all of it unless it is wider than 2:1 (or taller)."""
    if width > TRAINING_COPY_MAX_ASPECT * height:
        band = int(math.ceil(TRAINING_COPY_MAX_ASPECT * height))
        left = (width - band) // 2
        return left, 0, left + band, height
    if height > TRAINING_COPY_MAX_ASPECT * width:
        band = int(math.ceil(TRAINING_COPY_MAX_ASPECT * width))
        top = (height - band) // 2
        return 0, top, width, top + band
    return 0, 0, width, height


def training_copy_size(box_width: int, box_height: int, resize_size: int) -> tuple[int, int]:
    """Size of the training copy: the shorter side becomes ``resize_size``, the aspect ratio is kept."""
    scale = resize_size / min(box_width, box_height)
    return max(resize_size, int(round(box_width * scale))), max(resize_size, int(round(box_height * scale)))


# ---------------------------------------------------------------------------------------------------------------------
# Images on disk: scanning, decoding, caching


def check_image_header(path: Path) -> str | None:
    """A cheap check (header only, no decoding): None when the file looks usable, else the reason it is not."""
    try:
        classifier.open_image(path).close()
    except classifier.ImageLoadError as error:
        return str(error)
    return None


def unusable_file_reason(path: Path) -> str | None:
    """Why a file in a class folder cannot be an image, found without opening it (a FIFO would block): a name that
    is not valid UTF-8, a named pipe, socket or device, a broken symlink. None for a regular file (or a link to one)."""
    if not fileio.is_valid_utf8_name(path.name):
        return "its name is not valid UTF-8 (rename the file to use it)"
    if fileio.is_regular_file(path):
        return None
    if path.is_symlink() and not path.exists():
        return "file not found (broken symlink)"
    return fileio.regular_file_reason(os.path.realpath(path)) or "is not a regular file"


def scan_split(dataset_dir: Path, split: str, classes: Sequence[str]) -> tuple[list[Sample], list[dict[str, str]]]:
    """The image files of ``dataset_dir/split/<class>/`` (an image extension, or image content) and, with a reason,
    every other file there. Only regular files are ever opened; hidden files and folders are left alone."""
    samples: list[Sample] = []
    skipped: list[dict[str, str]] = []
    for label, name in enumerate(classes):
        found = []
        for directory, subdirs, names in os.walk(dataset_dir / split / name):
            subdirs[:] = [folder for folder in subdirs if not folder.startswith(".")]
            found.extend(Path(directory) / file_name for file_name in names if not file_name.startswith("."))
        for path in sorted(found):
            relpath = path.relative_to(dataset_dir).as_posix()
            reason = unusable_file_reason(path)
            if reason is None and path.suffix.lower() not in classifier.IMAGE_EXTENSIONS:
                is_image = classifier.is_image_file(path)  # found by content (a regular file: safe to open)
                reason = None if is_image else f"not an image: {classifier.describe_content(path)}"
            if reason is None:
                samples.append(Sample(path, label, relpath))
            else:
                skipped.append({"path": relpath, "split": split, "reason": reason})
    return samples, skipped


def decode_training_copy(path: Path, resize_size: int) -> np.ndarray:
    """HWC uint8: the image with its shorter side at ``resize_size`` (what random crops are cut from)."""
    image = classifier.load_image(path, draft_size=(resize_size, resize_size))
    box = training_copy_box(image.width, image.height)
    size = training_copy_size(box[2] - box[0], box[3] - box[1], resize_size)
    return np.array(image.resize(size, Image.Resampling.BILINEAR, box=box), dtype=np.uint8)  # writable: for torch


def decode_eval_view(path: Path, image_size: int, resize_size: int) -> np.ndarray:
    """HWC uint8: exactly the model input classifier.py makes of the file, before normalisation."""
    image = classifier.load_image(path, draft_size=(resize_size, resize_size))
    return classifier.image_to_uint8(image, image_size, resize_size)


def decode_view(path: Path, view: str, image_size: int, resize_size: int) -> np.ndarray:
    if view == "train":
        return decode_training_copy(path, resize_size)
    return decode_eval_view(path, image_size, resize_size)


def disk_cache_path(cache_dir: Path, path: Path, view: str, image_size: int, resize_size: int) -> Path:
    """Where the cached copy of one file lives; the name changes when the file or the sizes change."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{view}|{image_size}|{resize_size}"
    return cache_dir / f"{hashlib.sha1(key.encode('utf-8')).hexdigest()}.npy"


def save_array_atomically(path: Path, array: np.ndarray) -> None:
    with fileio.atomic_write(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


@dataclasses.dataclass
class PreparedImages:
    """Per sample: the cached copy in memory (ndarray), on disk (Path) or not cached (None), for one view."""

    view: str
    entries: list[np.ndarray | Path | None]
    memory_bytes: int = 0


def prepare_images(
    samples: Sequence[Sample],
    view: str,
    image_size: int,
    resize_size: int,
    memory_budget_bytes: int,
    cache_dir: Path | None,
    description: str,
    is_writing_cache: bool = True,
) -> tuple[PreparedImages, list[tuple[int, str]]]:
    """Check every file once before training and keep downsized copies, so later epochs skip JPEG decoding.

    With a memory budget or a cache folder each file is decoded (draft mode: only at the size needed) and resized
    once; without either, only the header is checked and bad data shows up when the file is read in an epoch.
    Returns the cache and the (index, reason) of every file that cannot be used. ``is_writing_cache`` False (the
    processes of a torchrun run other than rank 0): copies already in ``cache_dir`` are read, none is written; a copy
    over the memory budget is read from where rank 0 writes it, or decoded again while it is not there.
    """
    is_decoding = memory_budget_bytes > 0 or cache_dir is not None
    if cache_dir is not None and is_writing_cache:
        cache_dir.mkdir(parents=True, exist_ok=True)

    def prepare(sample: Sample) -> tuple[np.ndarray | Path | None, str | None]:
        try:
            if not is_decoding:
                return None, check_image_header(sample.path)
            cached = disk_cache_path(cache_dir, sample.path, view, image_size, resize_size) if cache_dir else None
            if cached is not None and cached.is_file():
                return (np.load(cached, allow_pickle=False) if memory_budget_bytes > 0 else cached), None
            pixels = decode_view(sample.path, view, image_size, resize_size)
            if cached is not None and is_writing_cache:
                try:
                    save_array_atomically(cached, pixels)
                except OSError as error:  # a full or failing cache disk costs speed, never the image
                    logger.warning("Cannot keep a copy in %s: %s", cli.printable(cache_dir), cli.printable(error))
            return pixels, None
        except classifier.ImageLoadError as error:
            return None, str(error)
        except Exception as error:  # noqa: BLE001 - one bad file must never stop the run
            return None, f"{type(error).__name__}: {error}"

    prepared = PreparedImages(view, [None] * len(samples))
    failures: list[tuple[int, str]] = []
    with ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="prepare") as pool:
        results = pool.map(prepare, samples)
        for index, (entry, reason) in enumerate(
            cli.progress(results, total=len(samples), desc=description, leave=False)
        ):
            if reason is not None:
                failures.append((index, reason))
            elif isinstance(entry, np.ndarray):
                if prepared.memory_bytes + entry.nbytes <= memory_budget_bytes:
                    prepared.entries[index] = entry
                    prepared.memory_bytes += entry.nbytes
                elif cache_dir is not None:
                    prepared.entries[index] = disk_cache_path(
                        cache_dir, samples[index].path, view, image_size, resize_size
                    )
            else:
                prepared.entries[index] = entry
    return prepared, failures


# ---------------------------------------------------------------------------------------------------------------------
# Datasets, samplers and loaders


_LOADER_THREADS: tuple[int, ThreadPoolExecutor] | None = None


def loader_threads() -> ThreadPoolExecutor:
    """This process's pool for loading batches; a loader worker forked from a process with a pool makes its own."""
    global _LOADER_THREADS
    if _LOADER_THREADS is None or _LOADER_THREADS[0] != os.getpid():
        _LOADER_THREADS = (os.getpid(), ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="load"))
    return _LOADER_THREADS[1]


class ImageDataset(Dataset):
    """Images of one split as HWC uint8 squares: augmented (view "train") or as classifier.py sees them ("eval").

    Keys are a sample index (eval) or (index, augmentation seed) pairs from EpochSampler (train), so the random
    changes depend only on the seed, never on which worker process loads the image. An image that cannot be read
    comes back as a FailedSample, which ``collate_samples`` sets aside.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        view: str,
        image_size: int,
        resize_size: int,
        prepared: PreparedImages | None = None,
        policies: Sequence[AugmentationPolicy] | None = None,
    ) -> None:
        if view not in ("train", "eval"):
            raise ValueError(f"view must be 'train' or 'eval', got {view!r}")
        if prepared is not None and prepared.view == "eval" and view == "train":
            raise ValueError("training images cannot be cut from eval-view copies")
        if view == "train" and policies is None:
            raise ValueError("the train view needs one augmentation policy per class")
        self.samples = list(samples)
        self.view = view
        self.image_size = image_size
        self.resize_size = resize_size
        self.prepared = prepared
        self.policies = list(policies) if policies is not None else []
        self.augmentations = [build_augmentation(policy, image_size) for policy in self.policies]
        self.excluded: set[int] = set()  # images that failed to decode; the samplers leave them out

    def __len__(self) -> int:
        return len(self.samples)

    def with_view(self, view: str, excluded: set[int] | None = None) -> ImageDataset:
        """The same images and cached copies in another view; ``excluded`` shared with this one unless given."""
        other = ImageDataset(self.samples, view, self.image_size, self.resize_size, self.prepared, self.policies)
        other.excluded = self.excluded if excluded is None else excluded
        return other

    def pixels(self, index: int) -> np.ndarray:
        """The image in this dataset's view, from the cache when there is a copy, else decoded from the file."""
        entry = self.prepared.entries[index] if self.prepared is not None else None
        if isinstance(entry, Path):
            try:
                entry = np.load(entry, allow_pickle=False)
            except (OSError, ValueError):  # not (yet) written by the process that writes the cache, or damaged
                entry = None
        if entry is None:
            return decode_view(self.samples[index].path, self.view, self.image_size, self.resize_size)
        if self.view == "eval" and self.prepared.view == "train":
            # The training copy already has its shorter side at resize_size, so this is classifier.py's centre crop
            # (up to a half-pixel resampling difference) without decoding the file again.
            return classifier.image_to_uint8(Image.fromarray(entry), self.image_size, self.resize_size)
        return entry

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[LoadedSample | FailedSample]:
        """A batch (the DataLoader asks for whole batches), loaded in threads: Pillow releases the GIL while it
        decodes and resamples, so both cores work even with num_workers=0. Same order as ``keys``, and each image's
        random changes come from its own seed, so the result does not depend on the threads."""
        if len(keys) < 2:
            return [self[key] for key in keys]
        return list(loader_threads().map(self.__getitem__, keys))

    def __getitem__(self, key: int | tuple[int, int]) -> LoadedSample | FailedSample:
        index, augmentation_seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        try:
            pixels = self.pixels(index)
            if self.view == "train":
                pixels = augment(pixels, self.augmentations[sample.label], augmentation_seed)
            return LoadedSample(pixels, sample.label, index)
        except classifier.ImageLoadError as error:
            return FailedSample(index, str(error))
        except Exception as error:  # noqa: BLE001 - a file that breaks mid-epoch is skipped, never a crash
            return FailedSample(index, f"{type(error).__name__}: {error}")


class EpochSampler(Sampler):
    """Yields the (index, augmentation seed) pairs of ``draw_epoch`` for the epoch set with ``set_epoch``.

    Under torchrun (``world_size`` > 1) every process draws the same whole epoch from (seed, epoch) and yields its
    padded strided share: the shares together are the single-process draw, so the class shares and each image's
    augmentation are those of a single process, and the sampler's state is only (seed, epoch), whatever the number
    of processes.
    """

    def __init__(
        self, dataset: ImageDataset, num_classes: int, is_weighted: bool, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.dataset = dataset
        self.labels = [sample.label for sample in dataset.samples]
        self.num_classes = num_classes
        self.is_weighted = is_weighted
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil((len(self.labels) - len(self.dataset.excluded)) / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        excluded = frozenset(self.dataset.excluded)
        pairs = draw_epoch(self.labels, self.num_classes, self.is_weighted, self.seed, self.epoch, excluded)
        return iter(shard(pairs, self.rank, self.world_size))


class UsableIndices(Sampler):
    """Every index of the dataset in order, except the excluded ones (for evaluation); under torchrun this process's
    strided share, unpadded: the shares together are every usable index exactly once."""

    def __init__(self, dataset: ImageDataset, rank: int = 0, world_size: int = 1) -> None:
        self.dataset = dataset
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset) - len(self.dataset.excluded), self.world_size))

    def __iter__(self) -> Iterator[int]:
        usable = [i for i in range(len(self.dataset)) if i not in self.dataset.excluded]
        return iter(shard(usable, self.rank, self.world_size, is_padded=False))


def record_failures(
    skipped_files: list[dict[str, str]], dataset: ImageDataset, split: str, failures: Sequence[tuple[int, str]]
) -> None:
    """Exclude images that failed to decode from later epochs and list them in ``skipped_files`` (once each)."""
    known = {item["path"] for item in skipped_files}
    for index, reason in failures:
        dataset.excluded.add(index)
        sample = dataset.samples[index]
        if sample.relpath not in known:
            logger.warning("Skipping %s: %s", cli.printable(sample.relpath), cli.printable(reason))
            skipped_files.append({"path": sample.relpath, "split": split, "reason": reason})
            known.add(sample.relpath)


def collate_samples(items: Sequence[LoadedSample | FailedSample]) -> dict[str, Any]:
    """Stack the images that loaded (NHWC uint8) and set the failures aside as (index, reason)."""
    loaded = [item for item in items if isinstance(item, LoadedSample)]
    failures = [(item.index, item.reason) for item in items if isinstance(item, FailedSample)]
    if loaded:
        images = torch.from_numpy(np.stack([item.pixels for item in loaded]))
    else:
        images = torch.zeros((0, 1, 1, 3), dtype=torch.uint8)
    return {
        "images": images,
        "labels": torch.tensor([item.label for item in loaded], dtype=torch.long),
        "indices": torch.tensor([item.index for item in loaded], dtype=torch.long),
        "failures": failures,
    }


def make_loader(
    dataset: ImageDataset, sampler: Sampler, batch_size: int, num_workers: int, device: torch.device, drop_last: bool
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_samples,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def make_train_loader(
    dataset: ImageDataset,
    num_classes: int,
    seed: int,
    args: argparse.Namespace,
    num_workers: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """The loader of an epoch's draw (``EpochSampler``: weighted unless --no-weighted-sampling, augmented), --batch-size
    images a step, ``set_epoch`` picks the epoch; under torchrun process ``rank``'s share. The last incomplete batch
    is dropped, unless it is the only one: a batch of one or two images gives noisy BatchNorm statistics."""
    sampler = EpochSampler(dataset, num_classes, not args.no_weighted_sampling, seed, rank, world_size)
    drop_last = len(sampler) > args.batch_size
    return make_loader(dataset, sampler, args.batch_size, num_workers, device, drop_last)


def make_eval_loader(
    dataset: ImageDataset, batch_size: int, num_workers: int, device: torch.device, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """A loader over ``dataset`` in order, no augmentation; under torchrun over process ``rank``'s share (the
    trainer's ``evaluate`` gathers the shares)."""
    sampler = UsableIndices(dataset, rank, world_size)
    return make_loader(dataset, sampler, batch_size, num_workers, device, drop_last=False)


# ---------------------------------------------------------------------------------------------------------------------
# The two splits, ready to train on


def small_classes(counts: dict[str, int]) -> list[str]:
    """Classes with fewer than MIN_CLASS_IMAGES training images, or under 1/MIN_CLASS_SHARE of the largest class."""
    largest = max(counts.values(), default=0)
    return [name for name, count in counts.items() if count < MIN_CLASS_IMAGES or count * MIN_CLASS_SHARE < largest]


def small_class_warning(counts: dict[str, int]) -> str | None:
    """The trainer's one warning naming the classes too small to learn well (the pipeline also says why), or None."""
    small = small_classes(counts)
    if not small:
        return None
    named = ", ".join(f"{cli.shown(name)} ({counts[name]})" for name in small)
    return (
        f"Few training images in {named}: under {MIN_CLASS_IMAGES}, or under a fifth of the largest class, a class is "
        "learnt poorly and its val metrics are noise; add images to it, or merge it into another"
    )


def load_dataset(dataset_dir: Path) -> tuple[list[str], list[Sample], list[Sample], list[dict[str, str]]]:
    """Classes, train and val samples, and non-image files; DatasetError when the layout cannot be trained on."""
    try:
        is_folder = dataset_dir.is_dir()
    except OSError as error:  # a name longer than the file system takes, a folder that cannot be examined
        raise DatasetError(f"The dataset folder {cli.shown(dataset_dir)} cannot be used ({error.strerror}).") from None
    if not is_folder:
        raise DatasetError(f"The dataset folder {dataset_dir} does not exist; pass --dataset-dir with train/ and val/.")
    classes = fileio.class_folders(dataset_dir / "train")
    if not classes:
        raise DatasetError(f"{dataset_dir / 'train'} has no class folders; expected train/<class>/ with images.")
    if len(classes) < 2:
        raise DatasetError(f"{dataset_dir / 'train'} has only the class {classes[0]!r}; a classifier needs two.")
    val_classes = fileio.class_folders(dataset_dir / "val")
    difference = compare_class_sets(classes, val_classes)
    if difference:
        raise DatasetError(difference)
    train_samples, skipped = scan_split(dataset_dir, "train", classes)
    val_samples, val_skipped = scan_split(dataset_dir, "val", classes)
    return classes, train_samples, val_samples, skipped + val_skipped


@dataclasses.dataclass
class Datasets:
    """The two splits ready for loaders, with what the metadata reports about them."""

    classes: list[str]
    train: ImageDataset
    val: ImageDataset
    policies: dict[str, AugmentationPolicy]  # per class name
    counts: dict[str, list[int]]  # usable images per class, per split
    skipped_files: list[dict[str, str]]  # {path, split, reason} of every file that cannot be used
    memory_bytes: int  # of the cached copies kept in memory


def build_datasets(
    dataset_dir: Path,
    image_size: int,
    cache_max_gb: float,
    cache_dir: Path | None,
    is_uniform_augmentation: bool,
    expected_classes: Sequence[str] | None = None,
    earlier_skips: Sequence[dict[str, str]] = (),
    is_writing_cache: bool = True,
    agree: Callable[[list[dict[str, str]]], list[dict[str, str]]] | None = None,
) -> Datasets:
    """Scan, check and cache both splits; DatasetError (one sentence) when they cannot be trained on.

    ``expected_classes``: those of a checkpoint being resumed. ``earlier_skips``: files a resumed run found broken
    mid-epoch, which stay skipped. Under torchrun, ``is_writing_cache`` is False on all processes but rank 0, and
    ``agree`` turns this process's skipped files into those of all processes, so each sets aside the same images
    (their draws of an epoch must match).
    """
    classes, train_samples, val_samples, skipped = load_dataset(dataset_dir)
    for item in skipped:
        logger.warning("Skipping %s: %s", cli.printable(item["path"]), cli.printable(item["reason"]))
    if expected_classes is not None and list(expected_classes) != classes:
        raise DatasetError(
            f"The checkpoint to resume was trained on the classes {', '.join(expected_classes)} but the dataset now "
            f"has {', '.join(classes)}; resume with the same class folders or train from scratch."
        )
    resize_size = classifier.default_resize_size(image_size)
    skipped_files, prepared = list(skipped), {}
    for split, samples, view in (("train", train_samples, "train"), ("val", val_samples, "eval")):
        budget = int(cache_max_gb * 1024**3)
        prepared[split], failures = prepare_images(
            samples, view, image_size, resize_size, budget, cache_dir, f"checking {split}", is_writing_cache
        )
        for index, reason in failures:
            logger.warning("Skipping %s: %s", cli.printable(samples[index].relpath), cli.printable(reason))
            skipped_files.append({"path": samples[index].relpath, "split": split, "reason": reason})
    if agree is not None:
        found_here = {item["path"] for item in skipped_files}
        skipped_files = agree(skipped_files)
        for item in skipped_files:
            if item["path"] not in found_here:  # another process could not read it
                logger.warning("Skipping %s: %s", cli.printable(item["path"]), cli.printable(item["reason"]))
    known = {item["path"] for item in skipped_files}
    skipped_files.extend(item for item in earlier_skips if item["path"] not in known)
    bad = {item["path"] for item in skipped_files}

    policies = {name: augmentation_policy_for(name, is_uniform_augmentation) for name in classes}
    train = ImageDataset(
        train_samples, "train", image_size, resize_size, prepared["train"], [policies[c] for c in classes]
    )
    val = ImageDataset(val_samples, "eval", image_size, resize_size, prepared["val"])
    counts = {}
    for split, dataset in (("train", train), ("val", val)):
        dataset.excluded.update(i for i, sample in enumerate(dataset.samples) if sample.relpath in bad)
        usable = [sample.label for i, sample in enumerate(dataset.samples) if i not in dataset.excluded]
        counts[split] = class_counts(usable, len(classes))
    check_class_counts(classes, counts)
    memory_bytes = prepared["train"].memory_bytes + prepared["val"].memory_bytes
    return Datasets(classes, train, val, policies, counts, skipped_files, memory_bytes)


def check_class_counts(classes: Sequence[str], counts: dict[str, list[int]]) -> None:
    """DatasetError naming an empty split or a class with no training images (after bad files are set aside). A class
    with no val images is trained anyway (its val metrics are undefined); val needs images of some class, to pick
    the best epoch and calibrate."""
    for split, split_counts in counts.items():
        if sum(split_counts) == 0:
            where = f"{split}/<class>/ (the class folder names of train/)" if split == "val" else f"{split}/<class>/"
            raise DatasetError(f"The {split}/ split has no usable images; add images to {where}.")
        empty = [name for name, count in zip(classes, split_counts) if count == 0]
        if empty and split == "train":
            raise DatasetError(
                f"The class folder(s) {', '.join(f'{split}/{name}' for name in empty)} have no usable images; "
                "add images or remove the class from train/ and val/."
            )


def resolve_num_workers(requested: int | None, device: torch.device) -> int:
    """Data loader processes: as asked, else enough to feed a GPU, and none on a small CPU machine.

    With the downsized cache an augmented image costs about 1 ms, while a CPU training step costs tens of ms per
    image: extra processes on a few cores would only take CPU time from the model.
    """
    if requested is not None:
        return requested
    cpus = os.cpu_count() or 1
    if device.type == "cpu":
        return 0 if cpus <= 4 else min(2, cpus // 8)
    return max(1, min(8, cpus - 1))


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the data pipeline, as one group of the trainer's parser."""
    group = parser.add_argument_group("images: loading, caching, sampling and augmentation")
    group.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data loader processes (default: up to 8 with a GPU, 0 on a CPU with 4 cores or fewer)",
    )
    group.add_argument("--num-workers", dest="workers", type=int, help=argparse.SUPPRESS)  # the old name still works
    group.add_argument(
        "--cache-dir",
        default=None,
        help="also keep the downsized copies of the images here, reused by later runs (default: none, memory only)",
    )
    group.add_argument(
        "--cache-max-gb",
        type=float,
        default=DEFAULT_CACHE_MAX_GB,
        help="memory for downsized copies of the images; 0 decodes every file every epoch (default: 4.0)",
    )
    group.add_argument(
        "--no-weighted-sampling",
        action="store_true",
        help="draw images uniformly instead of balancing the classes (default: off, classes balanced)",
    )
    group.add_argument(
        "--uniform-augmentation",
        action="store_true",
        help="give every class the same augmentation policy instead of the per-class table (default: off)",
    )


def argument_problem(args: argparse.Namespace) -> str | None:
    """One sentence for values of these flags no run can use, or None."""
    if args.workers is not None and not 0 <= args.workers <= MAX_WORKERS:
        return f"--workers must be from 0 to {MAX_WORKERS}, got {args.workers}"
    if not 0 <= args.cache_max_gb < math.inf:
        return f"--cache-max-gb must be a number that is not negative, got {args.cache_max_gb}"
    return None


if __name__ == "__main__":
    cli.refuse_running_as_script(__file__, "run train_classifier.py")
