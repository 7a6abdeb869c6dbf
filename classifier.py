"""Classify images with a trained birdplane model: one self-contained file to copy into any project.

Copy this file and ``models/best_model.pth`` into another project; it needs torch, torchvision, Pillow and numpy only,
and ``import classifier`` itself loads neither torch nor torchvision (they are imported by the functions that need
them), so code that only reads images pays no torch start-up. It is the single definition of how images are found and
read (``find_image_files``, ``open_image``, ``load_image``: the reasons a bad file is refused), the preprocessing
(``image_to_uint8``, ``normalize_batch``), the model (``build_model``) and the checkpoint format (``make_checkpoint``
lays it out, ``load_checkpoint`` reads and checks it); the trainer and the duplicate detectors import it.

    python classifier.py models/best_model.pth test_image.jpg
    python classifier.py --model models/best_model.pth test_images/ --recursive --top-k 3
    python classifier.py models/best_model.pth test_images/ --json > predictions.jsonl

    from classifier import BirdPlaneSupermanClassifier
    clf = BirdPlaneSupermanClassifier("models/best_model.pth", confidence_threshold=0.7)
    pred_class, confidence, probs = clf.predict("img.jpg")
    results = clf.predict_batch(paths)  # a list: (path, class, confidence, probs) per path, in order

Writes nothing unless ``--csv FILE`` is given; predictions go to stdout, warnings and errors to stderr.
Exit codes: 0 done, 1 done but some images unusable, 2 usage error or unusable model/input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import json
import logging
import math
import os
import pickle
import stat
import sys
import tempfile
import unicodedata
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # torch is imported inside the functions that use it: ``import classifier`` stays light
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1  # bump when the checkpoint layout changes; loading refuses versions it does not know
SUPPORTED_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")  # all share the ResNet layout
DEFAULT_ARCH = "resnet50"
FALLBACK_LABEL = "other"  # what a prediction below the confidence threshold becomes
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics the torchvision ImageNet weights were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224  # the input size ResNets are trained at
DEFAULT_CONFIDENCE_THRESHOLD = 0.7
RESIZE_RATIO = 256 / 224  # resize the shorter side to this times the crop, then centre-crop (torchvision convention)
# Bounds on the settings a checkpoint may hold, checked before anything is allocated (a model file is input too):
IMAGE_SIZE_RANGE = (16, 1024)  # pixels; 1024 is 4.6x the ResNet default and a batch of 32 still fits in a few GB
MAX_RESIZE_RATIO = 2.0  # resize_size lies between image_size and twice it (the trainer writes 256/224 of it)
MAX_CLASSES = 10_000  # a head for 10,000 classes is 80 MB for resnet50; more is not a birdplane model
TEMPERATURE_RANGE = (0.01, 100.0)  # the trainer fits within 0.25-20; outside this range softmax loses all meaning
EXPECTED_MODEL = "expected a checkpoint file written by train_classifier.py"  # ends every "this is not a model" error
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own bomb limit; larger images are refused instead of decoded
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white, as a browser shows them
IMAGE_MODES = ("RGB", "L")  # what load_image returns: colour for the model, greyscale for perceptual hashes
DEFAULT_BATCH_SIZE = 32
DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))  # Pillow releases the GIL while decoding
SNIFF_BYTES = 512  # enough of a file's start to tell an image, a web page, text or a PyTorch file apart
_MAGIC = (  # file signatures: images are found by content, not by name
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_ESCAPED_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")  # control, format (bidi, zero-width), surrogate, line breaks
# The project's exit-code table (cli.py's constants, repeated here because this file imports nothing of ours).
EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CheckpointError(ValueError):
    """A model file that cannot be used; the message is one sentence saying why."""


class ImageLoadError(ValueError):
    """An image that cannot be used; the message is the reason."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched (usually no network)."""


# ----------------------------------------------------------------------------------------------------------------
# Pure functions: sizes, decisions, checkpoint settings, recognising content


def default_resize_size(image_size: int) -> int:
    """The shorter-side size to resize to before centre-cropping ``image_size`` (256 for 224)."""
    return int(round(image_size * RESIZE_RATIO))


def center_crop_box(width: int, height: int, image_size: int, resize_size: int) -> tuple[float, float, float, float]:
    """The box of the original image that "resize shorter side to resize_size, centre-crop image_size" keeps.

    Resampling only this box straight to ``image_size`` gives the same picture as resizing the whole image first,
    without ever building the resized full image (which for a 2000x10 panorama would be 51200x256).
    """
    scale = resize_size / min(width, height)
    crop_w = min(width, image_size / scale)
    crop_h = min(height, image_size / scale)
    left = (width - crop_w) / 2
    top = (height - crop_h) / 2
    return (left, top, left + crop_w, top + crop_h)


def decide(probabilities: Sequence[float], classes: Sequence[str], threshold: float) -> tuple[str, float]:
    """The predicted class and its probability; below ``threshold`` the class becomes FALLBACK_LABEL.

    A probability exactly at the threshold keeps its class.
    """
    best = int(np.argmax(probabilities))
    confidence = float(probabilities[best])
    return (classes[best] if confidence >= threshold else FALLBACK_LABEL), confidence


def validate_threshold(value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"confidence threshold must be between 0 and 1, got {value}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def checkpoint_problem(checkpoint: dict[str, Any]) -> str | None:
    """What makes a loaded checkpoint dict unusable, as the end of a sentence starting with its path; None if usable.

    Only reads the dict: every size is bounded here, before a model or a tensor is made from it.
    """
    arch, classes = checkpoint.get("arch"), checkpoint.get("classes")
    if arch not in SUPPORTED_ARCHS:
        return f"names an unknown architecture {arch!r} (known: {', '.join(SUPPORTED_ARCHS)})"
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        return "has no list of class names"
    if len(classes) > MAX_CLASSES:
        return f"lists {len(classes)} classes, more than the {MAX_CLASSES} a birdplane model can have"
    if len(set(classes)) != len(classes):
        return "lists the same class name twice"
    if checkpoint.get("num_classes", len(classes)) != len(classes):
        return f"says {checkpoint['num_classes']!r} classes but lists {len(classes)}"
    for key in ("image_size", "resize_size", "mean", "std", "confidence_threshold", "temperature"):
        if key not in checkpoint:
            return f"lacks the field {key!r} of the checkpoint format"
    low, high = IMAGE_SIZE_RANGE
    image_size, resize_size = checkpoint["image_size"], checkpoint["resize_size"]
    if not _is_whole(image_size) or not low <= image_size <= high:
        return f"has an invalid image_size {image_size!r} (a whole number of pixels from {low} to {high} is needed)"
    if not _is_whole(resize_size) or not image_size <= resize_size <= MAX_RESIZE_RATIO * image_size:
        return (
            f"has an invalid resize_size {resize_size!r} (a whole number from image_size {image_size} to "
            f"{int(MAX_RESIZE_RATIO * image_size)} is needed)"
        )
    for key in ("mean", "std"):
        value = checkpoint[key]
        if not isinstance(value, list | tuple) or len(value) != 3 or not all(_is_number(v) for v in value):
            return f"has an invalid {key} {value!r} (three numbers, one per colour channel, are needed)"
    if not all(0.0 <= v <= 1.0 for v in checkpoint["mean"]):
        return f"has an invalid mean {checkpoint['mean']!r} (pixel values run from 0 to 1, so must their means)"
    if not all(0.0 < v <= 1.0 for v in checkpoint["std"]):
        return f"has an invalid std {checkpoint['std']!r} (each must be above 0 and at most 1)"
    threshold = checkpoint["confidence_threshold"]
    if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
        return f"has an invalid confidence_threshold {threshold!r} (a number from 0 to 1 is needed)"
    temperature = checkpoint["temperature"]
    low_t, high_t = TEMPERATURE_RANGE
    if not _is_number(temperature) or not low_t <= temperature <= high_t:
        return f"has an invalid temperature {temperature!r} (a number from {low_t} to {high_t:g} is needed)"
    state = checkpoint["model_state_dict"]
    if not isinstance(state, dict):
        return "holds no model weights (model_state_dict is not a dict of tensors)"
    head = state.get("fc.weight")
    if head is not None and (getattr(head, "ndim", 0) != 2 or head.shape[0] != len(classes)):
        outputs = head.shape[0] if getattr(head, "ndim", 0) else "?"
        return f"has weights with {outputs} outputs but the checkpoint lists {len(classes)} classes"
    return None


def _sniff_bytes(head: bytes) -> str | None:
    """The image format these first bytes of a file announce ("JPEG", "PNG", ...), or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _describe_bytes(head: bytes) -> str:
    """What a file starting with ``head`` most likely is, for error messages: "a JPEG image", "an HTML page"."""
    image_format = _sniff_bytes(head)
    if image_format:
        return f"a {image_format} image"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")) or b"<html" in text:
        return "an HTML page"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as error:  # a multi-byte character cut at the end of ``head`` is still text
        decoded = head[: error.start].decode("utf-8") if error.start >= len(head) - 3 else ""
    if decoded and all(c.isprintable() or c in "\t\r\n" for c in decoded):
        return "a JSON file" if decoded.lstrip().startswith(("{", "[")) else "a text file"
    return "unrecognised binary data"


def _file_kind(mode: int) -> str:
    """Words for a file that is not a regular file (from ``st_mode``); fileio.describe_kind says the same."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    return "not a regular file"


def _printable(text: Any) -> str:
    """``text`` with control, bidi-override and non-UTF-8 characters escaped, so a printed name cannot spoof a listing.

    The one allowed copy of cli.printable (this file imports nothing of ours): "a\\nb.jpg" prints as ``a\\x0ab.jpg``,
    U+202E as ``\\u202e``, a non-UTF-8 byte (kept by Python as a lone surrogate) as ``\\xff``.
    """
    out = []
    for char in os.fspath(text) if isinstance(text, os.PathLike) else str(text):
        if unicodedata.category(char) in _ESCAPED_CATEGORIES:
            code = ord(char)
            if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by Python's surrogateescape
                out.append(f"\\x{code - 0xDC00:02x}")
            else:
                out.append(f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


# ----------------------------------------------------------------------------------------------------------------
# Images


def _regular_file_head(path: str | os.PathLike, size: int) -> bytes | None:
    """The first ``size`` bytes of a regular file; None for anything else (a FIFO is never opened: that would hang)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return None


def sniff_image_format(path: str | os.PathLike) -> str | None:
    """The image format from the first bytes of a regular file, or None (not a known image, unreadable, not a file)."""
    head = _regular_file_head(path, 16)
    return _sniff_bytes(head) if head else None


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file's content starts like an image, whatever its name."""
    return sniff_image_format(path) is not None


def find_image_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``folder``, sorted: any case of a common extension, or a regular file that holds an image.

    Hidden files and folders (``.trash``, caches) are skipped. Only regular files are opened (to sniff their
    content); a name with an image extension is listed whatever it is (empty, HTML, a dangling symlink, a FIFO),
    so that whoever reads it can report why it failed, and it is never opened here. Symlinked folders are followed
    (read through, as the trainer does), each real folder listed once: folders in the tree itself come first, so a
    folder reachable both directly and through a link is listed under its own path, and a link loop ends.
    """
    found: list[Path] = []
    seen: set[str] = set()
    direct, linked = [os.fspath(folder)], []  # linked folders wait until every folder of the tree itself is listed
    while direct or linked:
        directory = direct.pop() if direct else linked.pop(0)
        real = os.path.realpath(directory)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as error:
            logger.warning("Cannot list %s: %s", _printable(directory), error.strerror or error)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir, is_regular = entry.is_dir(), entry.is_file()  # through symlinks; DirEntry.is_file: regular
            except OSError:
                is_dir = is_regular = False
            if is_dir:
                if recursive:
                    (linked if entry.is_symlink() else direct).append(entry.path)
            elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS or (is_regular and is_image_file(entry.path)):
                found.append(Path(entry.path))
    return sorted(found)


def describe_content(path: str | os.PathLike) -> str:
    """A short guess at what a non-image file is, for error messages; never opens anything but a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "unreadable content"
    if not stat.S_ISREG(mode):
        return f"{_file_kind(mode)}, never opened"
    head = _regular_file_head(path, SNIFF_BYTES)
    if head is None:
        return "unreadable content"
    what = _describe_bytes(head)
    words = {"an HTML page": "HTML page saved with an image name", "a JSON file": "JSON/text content"}
    return words.get(what, "text content" if what == "a text file" else "unrecognised content")


def open_image(path: str | os.PathLike) -> Image.Image:
    """The image opened lazily (header read, no pixel decoded); raises ImageLoadError with the reason a user reads.

    Refuses decompression bombs (more than MAX_IMAGE_PIXELS pixels) and anything but a regular file (a FIFO, socket
    or device node is never opened). The caller closes the image.
    """
    try:
        status = os.stat(path)  # one system call for the usual case; the reasons below only when it fails
    except (FileNotFoundError, NotADirectoryError):
        raise ImageLoadError("file not found" + (" (broken symlink)" if os.path.islink(path) else "")) from None
    except PermissionError:
        raise ImageLoadError("permission denied (the file is not readable)") from None
    except OSError as error:
        raise ImageLoadError(f"cannot read the file ({error.strerror or error})") from None
    if stat.S_ISDIR(status.st_mode):
        raise ImageLoadError("is a folder, not an image")
    if not stat.S_ISREG(status.st_mode):
        raise ImageLoadError(f"is {_file_kind(status.st_mode)}, not a file")
    if status.st_size == 0:
        raise ImageLoadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(f"refused as a possible decompression bomb: {error}") from None
    except PermissionError:
        raise ImageLoadError("permission denied (the file is not readable)") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"not an image: {describe_content(path)}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(f"corrupt or truncated image header ({error})") from None
    if image.width * image.height > MAX_IMAGE_PIXELS:
        image.close()
        raise ImageLoadError(
            f"refused: {image.width}x{image.height} pixels is over the {MAX_IMAGE_PIXELS} pixel limit "
            "(possible decompression bomb)"
        )
    return image


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as shown, after the EXIF orientation; read from the header, nothing decoded."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - broken EXIF only loses the orientation, never the image
        orientation = 1
    return (image.height, image.width) if orientation in (5, 6, 7, 8) else (image.width, image.height)


def to_mode(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """Any Pillow mode to ``mode`` ("RGB" or "L"): alpha on white, palette transparency kept, 16-bit scaled, CMYK."""
    if mode not in IMAGE_MODES:
        raise ValueError(f"mode must be one of {', '.join(IMAGE_MODES)}, got {mode!r}")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        scale = 257.0 if image.mode.startswith("I;16") or pixels.max(initial=0) > 255 else 1.0
        image = Image.fromarray(np.clip(pixels / scale, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        image = Image.alpha_composite(background, rgba)
    if image.mode not in IMAGE_MODES:
        image = image.convert("RGB")
    return image if image.mode == mode else image.convert(mode)


def decode_image(image: Image.Image, draft_size: tuple[int, int] | None = None, mode: str = "RGB") -> Image.Image:
    """An image from open_image fully decoded, upright, in ``mode`` "RGB" or "L"; raises ImageLoadError.

    ``draft_size``: for JPEGs, let the decoder scale down by 1/2, 1/4 or 1/8 while keeping both sides at least this
    large (much faster for big photos, and exact enough for a resize to that size that follows); with ``mode`` "L"
    a colour JPEG is also decoded straight to greyscale (what perceptual hashes use). The first frame of an
    animation is used.
    """
    try:
        if getattr(image, "is_animated", False):
            image.seek(0)
        if draft_size is not None and image.format == "JPEG":
            image.draft(mode, draft_size)
        image.load()
        return to_mode(ImageOps.exif_transpose(image), mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(f"refused as a possible decompression bomb: {error}") from None
    except PermissionError:
        raise ImageLoadError("permission denied (the file is not readable)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(f"corrupt or truncated image data ({error})") from None


def load_image(
    source: str | os.PathLike | Image.Image, draft_size: tuple[int, int] | None = None, mode: str = "RGB"
) -> Image.Image:
    """A fully decoded, upright image in ``mode`` ("RGB" or "L"); raises ImageLoadError with the reason if unusable.

    ``draft_size``: see decode_image (for files; a PIL image given is used as it is).
    """
    if isinstance(source, Image.Image):
        image = source
        if getattr(image, "is_animated", False):
            image.seek(0)
        return to_mode(ImageOps.exif_transpose(image), mode)
    with open_image(source) as image:
        return decode_image(image, draft_size, mode)


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing: the model input, exactly as the trainer evaluates it


def resize_for_model(image: Image.Image, image_size: int, resize_size: int) -> Image.Image:
    """Resize the shorter side to ``resize_size`` and centre-crop ``image_size`` square, in one resampling step."""
    box = center_crop_box(image.width, image.height, image_size, resize_size)
    return image.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)


def image_to_uint8(image: Image.Image, image_size: int, resize_size: int) -> np.ndarray:
    """HWC uint8 array of the model input, before normalisation (cheap to pass between threads)."""
    return np.asarray(resize_for_model(image, image_size, resize_size), dtype=np.uint8)


def normalize_batch(batch_hwc: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """NHWC uint8 -> NCHW float32 normalised, in channels_last memory (no copy to NCHW layout)."""
    import torch

    batch = batch_hwc.permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    return batch.sub_(mean_t).div_(std_t).contiguous(memory_format=torch.channels_last)


def softmax_with_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) over the last dimension, computed in float32."""
    import torch

    return torch.softmax(logits.float() / float(temperature), dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# Model


def build_model(arch: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """A torchvision ResNet with a fresh ``num_classes`` head.

    ``weights``: None or "none" for random initialisation; "imagenet" for torchvision's default pretrained weights
    (downloaded once into the torch hub cache); anything else is a local file holding a state dict or a checkpoint.
    """
    import torchvision
    from torch import nn

    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(SUPPORTED_ARCHS)}")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be from 1 to {MAX_CLASSES}, got {num_classes}")
    constructor = getattr(torchvision.models, arch)
    if weights is None or str(weights).lower() == "none":
        model = constructor(weights=None)
    elif str(weights).lower() == "imagenet":
        weights_enum = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            model = constructor(weights=weights_enum)
        except (OSError, RuntimeError, ConnectionError) as error:  # URLError is an OSError
            raise WeightsUnavailableError(
                f"Could not download the ImageNet weights for {arch} ({type(error).__name__}); pass "
                "--weights FILE with a local weights file or --weights none to train from scratch."
            ) from None
    else:
        model = constructor(weights=None)
        _load_backbone_weights(model, Path(weights), arch)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _load_backbone_weights(model: nn.Module, path: Path, arch: str) -> None:
    """Load a local state dict (or a checkpoint's) into ``model``; a head of another shape is left out."""
    import torch

    if not os.path.lexists(path):
        raise CheckpointError(f"Weights file {path} does not exist; pass an existing file, 'imagenet' or 'none'.")
    state = _read_torch_file(path, "weights file", "expected a state dict or a birdplane checkpoint")
    if isinstance(state, dict) and isinstance(state.get("model_state_dict"), dict):
        state = state["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors, so it cannot be used as weights.")
    own = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.startswith("fc.")]
    if missing:
        raise CheckpointError(
            f"The weights in {path} do not fit a {arch} ({len(missing)} tensors missing or of another shape, "
            f"e.g. {missing[0]})."
        )
    model.load_state_dict(usable, strict=False)


def feature_extractor(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function giving the pooled features before the head: (N, 2048) for resnet50, (N, 512) for resnet18/34."""
    import torch

    def features(batch: torch.Tensor) -> torch.Tensor:
        x = model.maxpool(model.relu(model.bn1(model.conv1(batch))))
        x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
        return torch.flatten(model.avgpool(x), 1)

    return features


def pick_device(device: str | None = None) -> torch.device:
    """The given device, or the best available: cuda, then mps, then cpu; ValueError for one this machine lacks."""
    import torch

    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device:
        try:
            chosen = torch.device(device)
        except (RuntimeError, ValueError):
            raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is available here; use cpu")
        if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        if chosen.type == "mps" and not has_mps:
            raise ValueError(f"device {device!r}: Apple's MPS is not available here; use cpu")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps") if has_mps else torch.device("cpu")


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint format (version CHECKPOINT_FORMAT_VERSION). The trainer writes it: torch.save(make_checkpoint(...)).


def make_checkpoint(
    model: nn.Module,
    *,
    arch: str,
    classes: Sequence[str],
    image_size: int = DEFAULT_IMAGE_SIZE,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    temperature: float = 1.0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict: the format's fields as plain types plus CPU tensors, for ``torch.load(weights_only=True)``.

    The one definition of the layout that ``load_checkpoint`` reads (kept beside it so the two cannot drift); it
    writes nothing. ``extra`` holds the trainer's own fields (epoch, metrics, ...), which loading ignores.
    """
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(SUPPORTED_ARCHS)}")
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    checkpoint: dict[str, Any] = dict(extra or {})
    checkpoint.update(
        {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "arch": arch,
            "classes": [str(c) for c in classes],
            "num_classes": len(classes),
            "image_size": int(image_size),
            "resize_size": int(resize_size or default_resize_size(image_size)),
            "mean": [float(m) for m in mean],
            "std": [float(s) for s in std],
            "confidence_threshold": validate_threshold(confidence_threshold),
            "temperature": float(temperature),
            "model_state_dict": state,
        }
    )
    return checkpoint


def _read_torch_file(path: Path, what: str, expected: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of a regular file; anything else is a CheckpointError saying what it is.

    The file is examined before torch sees it: a FIFO is never opened, and an empty file, an image, a web page or
    text is named as such; a file that starts like a PyTorch file but cannot be read is called truncated or damaged.
    """
    import torch

    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        broken = " (a broken symlink)" if os.path.islink(path) else ""
        raise CheckpointError(
            f"The {what} {path} does not exist{broken}; train one with train_classifier.py or pass its path."
        ) from None
    except OSError as error:
        raise CheckpointError(f"The {what} {path} cannot be examined ({error.strerror or error}).") from None
    if not stat.S_ISREG(status.st_mode):
        raise CheckpointError(f"{path} is {_file_kind(status.st_mode)}, not a {what} ({expected}).")
    if status.st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a {what} ({expected}).")
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError as error:
        raise CheckpointError(f"The {what} {path} is not readable ({error.strerror or error}).") from None
    is_zip, is_pickle = head.startswith(b"PK\x03\x04"), head[:1] == b"\x80"  # torch.save's two containers
    if not (is_zip or is_pickle):
        raise CheckpointError(f"{path} is {_describe_bytes(head)}, not a {what} ({expected}).")
    if is_zip and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") for name in archive.namelist()):
                raise CheckpointError(f"{path} is a zip archive but not a PyTorch file, so not a {what} ({expected}).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing them
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise CheckpointError(f"{path} is truncated or damaged (unreadable pickle data); {expected}.") from None
        raise CheckpointError(
            f"Refusing {path}: loading it needs more than weights_only=True (it could run code), so it is not a "
            f"safe {what} ({expected})."
        ) from None
    except Exception as error:  # noqa: BLE001 - any garbage must end in one sentence, never a traceback
        detail = str(error).splitlines()[0][:100] if str(error) else type(error).__name__
        raise CheckpointError(
            f"{path} is truncated or damaged: it starts like a PyTorch file but cannot be read ({detail}); {expected}."
        ) from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint; raises CheckpointError with one clear sentence when it cannot be used.

    Every setting is checked and bounded (``checkpoint_problem``) before anything is built from it.
    """
    path = Path(path)
    checkpoint = _read_torch_file(path, "birdplane checkpoint", EXPECTED_MODEL, map_location)
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint or "format_version" not in checkpoint:
        held = "a bare state dict (weights without classes and settings)" if _is_state_dict(checkpoint) else "data"
        raise CheckpointError(
            f"{path} is a PyTorch file holding {held}, not a birdplane checkpoint (no format_version and "
            f"model_state_dict; {EXPECTED_MODEL})."
        )
    version = checkpoint["format_version"]
    if not _is_whole(version) or version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}, but this classifier.py reads version "
            f"{CHECKPOINT_FORMAT_VERSION}; use the classifier.py that came with the model."
        )
    problem = checkpoint_problem(checkpoint)
    if problem:
        raise CheckpointError(f"{path} {problem}.")
    return checkpoint


def _is_state_dict(value: Any) -> bool:
    import torch

    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def model_from_checkpoint(checkpoint: dict[str, Any], source: str = "the checkpoint") -> nn.Module:
    """The model a checkpoint from ``load_checkpoint`` (already checked) describes, with its weights, in eval mode."""
    arch, num_classes = checkpoint["arch"], len(checkpoint["classes"])
    model = build_model(arch, num_classes, weights=None)
    try:
        model.load_state_dict(checkpoint["model_state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).splitlines()
        detail = first[1].strip() if len(first) > 1 else (first[0] if first else type(error).__name__)
        raise CheckpointError(
            f"The weights in {source} do not match a {arch} with {num_classes} classes ({detail[:160]})."
        ) from None
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# The classifier


class BirdPlaneSupermanClassifier:
    """Loads a birdplane checkpoint and classifies images (paths or PIL images), one at a time or in batches.

    ``predict`` for one image, ``predict_batch`` for a list (the results as a list, in order), ``iter_predictions``
    to stream results for inputs too many to hold at once, ``embed_batch`` for the pooled features the embedding
    duplicate detector compares (the same preprocessing and forward pass, without the head).
    """

    def __init__(
        self,
        model_path: str | os.PathLike = "models/best_model.pth",
        confidence_threshold: float | None = None,
        device: str | None = None,
    ) -> None:
        import torch

        self.model_path = Path(model_path)
        checkpoint = load_checkpoint(self.model_path)
        self.device = pick_device(device)
        model = model_from_checkpoint(checkpoint, str(self.model_path))
        self.checkpoint = {k: v for k, v in checkpoint.items() if k != "model_state_dict"}
        self.arch: str = checkpoint["arch"]
        self.classes: list[str] = list(checkpoint["classes"])
        self.image_size = int(checkpoint["image_size"])
        self.resize_size = int(checkpoint["resize_size"])
        self.mean = tuple(float(m) for m in checkpoint["mean"])
        self.std = tuple(float(s) for s in checkpoint["std"])
        self.temperature = float(checkpoint["temperature"])
        self.confidence_threshold = validate_threshold(
            checkpoint["confidence_threshold"] if confidence_threshold is None else confidence_threshold
        )
        self.model = model.to(self.device).to(memory_format=torch.channels_last).eval()
        self._features = feature_extractor(self.model)

    def set_confidence_threshold(self, value: float) -> None:
        """Set the threshold below which predictions become FALLBACK_LABEL; ValueError outside [0, 1]."""
        self.confidence_threshold = validate_threshold(value)

    # -- preprocessing -------------------------------------------------------------------------------------------
    def _prepare(self, source: str | os.PathLike | Image.Image) -> np.ndarray:
        image = load_image(source, draft_size=(self.resize_size, self.resize_size))
        return image_to_uint8(image, self.image_size, self.resize_size)

    def _to_input(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        import torch

        batch = torch.from_numpy(np.stack(arrays)).to(self.device, non_blocking=True)
        return normalize_batch(batch, self.mean, self.std)

    def _prepared_batches(
        self, sources: Iterable[Any], batch_size: int
    ) -> Iterator[list[tuple[Any, np.ndarray | None, str | None]]]:
        """Batches of (source, pixels or None, error) in input order; decoding runs in threads ahead of the model."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")

        def prepare(source: Any) -> tuple[Any, np.ndarray | None, str | None]:
            try:
                return source, self._prepare(source), None
            except ImageLoadError as error:
                return source, None, str(error)
            except Exception as error:  # noqa: BLE001 - one bad image must never stop a batch
                return source, None, f"{type(error).__name__}: {error}"

        pending: collections.deque[Future] = collections.deque()
        lookahead = 2 * batch_size  # decode the next batch while the model runs on this one
        with ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="decode") as pool:
            iterator = iter(sources)
            exhausted = False
            batch: list[tuple[Any, np.ndarray | None, str | None]] = []
            while True:
                while not exhausted and len(pending) < lookahead:
                    try:
                        pending.append(pool.submit(prepare, next(iterator)))
                    except StopIteration:
                        exhausted = True
                if not pending:
                    break
                batch.append(pending.popleft().result())
                if len(batch) == batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch

    # -- prediction ----------------------------------------------------------------------------------------------
    def _probabilities(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.model(self._to_input(arrays))
            return softmax_with_temperature(logits, self.temperature).cpu().numpy()

    def _result(self, probabilities: np.ndarray) -> tuple[str, float, dict[str, float]]:
        pred_class, confidence = decide(probabilities, self.classes, self.confidence_threshold)
        return pred_class, confidence, {c: float(p) for c, p in zip(self.classes, probabilities)}

    def predict(self, image: str | os.PathLike | Image.Image) -> tuple[str, float, dict[str, float]]:
        """(predicted class, its probability, {class: probability}); raises ImageLoadError for an unusable image."""
        return self._result(self._probabilities([self._prepare(image)])[0])

    def _results_with_errors(
        self, sources: Iterable[Any], batch_size: int
    ) -> Iterator[tuple[Any, tuple[str, float, dict[str, float]] | None, str | None]]:
        """(source, (class, confidence, probabilities) or None, reason or None) per input in order; warns if bad."""
        for batch in self._prepared_batches(sources, batch_size):
            good = [pixels for _, pixels, _ in batch if pixels is not None]
            probabilities = iter(self._probabilities(good) if good else [])
            for source, pixels, error in batch:
                if pixels is None:
                    logger.warning("Skipping %s: %s", _printable(source), _printable(error))
                    yield source, None, error
                else:
                    yield source, self._result(next(probabilities)), None

    def iter_predictions(
        self, paths: Iterable[str | os.PathLike | Image.Image], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[tuple[Any, str | None, float, dict[str, float]]]:
        """The streaming form of ``predict_batch``: yields each result as soon as its batch is done.

        For inputs too many to hold at once; ``paths`` may be any iterable (it is read a few batches ahead).
        """
        for source, result, _ in self._results_with_errors(paths, batch_size):
            yield (source, None, 0.0, {}) if result is None else (source, *result)

    def predict_batch(
        self, paths: Iterable[str | os.PathLike | Image.Image], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> list[tuple[Any, str | None, float, dict[str, float]]]:
        """A list of (path, predicted class, confidence, probabilities): one per input, same order and length.

        An image that cannot be read gives ``(path, None, 0.0, {})`` and a logged warning naming it and the reason.
        Images are decoded in threads and classified ``batch_size`` at a time; see ``iter_predictions`` to stream.
        """
        return list(self.iter_predictions(paths, batch_size))

    def embed_batch(
        self, paths: Iterable[str | os.PathLike | Image.Image], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[tuple[Any, np.ndarray | None, str | None]]:
        """Yields (path, L2-normalised pooled features, float32, None) per input in order; (path, None, reason) if bad.

        The model's own forward pass up to the head, on the same preprocessing as ``predict``: what the embedding
        duplicate detector compares. Streams (like ``iter_predictions``), since a large dataset's vectors add up.
        """
        import torch

        for batch in self._prepared_batches(paths, batch_size):
            good = [pixels for _, pixels, _ in batch if pixels is not None]
            if good:
                with torch.inference_mode():
                    features = self._features(self._to_input(good)).float()
                    features = torch.nn.functional.normalize(features, dim=1).cpu().numpy()
            vectors = iter(features if good else [])
            for source, pixels, error in batch:
                yield (source, None, error) if pixels is None else (source, next(vectors), None)


# ----------------------------------------------------------------------------------------------------------------
# Writing files: classifier.py's own small atomic writer (the project's is fileio.atomic_write; this file imports
# nothing of ours)


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """A handle on a temp file beside ``path``; on success it is fsynced and renamed over ``path``, else removed.

    Readers see the old file or the new one, never half (crash, Ctrl-C, full disk). Text is UTF-8, with a non-UTF-8
    file name (lone surrogates) written as its ``\\udcXX`` escape, so the file stays valid UTF-8.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; the result is an ordinary file
        text = {"encoding": "utf-8", "errors": "backslashreplace", "newline": ""}
        with os.fdopen(fd, mode, **({} if "b" in mode else text)) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


# TODO(remove when unused): only tests/test_duplicates_embedding.py still calls save_checkpoint; the trainer writes its
# checkpoints itself (torch.save(make_checkpoint(...)) through fileio.atomic_write).


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **fields: Any) -> dict[str, Any]:
    """Deprecated: write ``torch.save(make_checkpoint(model, **fields))`` with fileio.atomic_write instead."""
    import torch

    checkpoint = make_checkpoint(model, **fields)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with _atomic_file(path, "wb") as handle:
        torch.save(checkpoint, handle)
    return checkpoint


# ----------------------------------------------------------------------------------------------------------------
# Command line


def collect_inputs(inputs: Sequence[str], recursive: bool) -> list[Path]:
    """Files as given, folders expanded to the images inside (sorted)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        paths.extend(find_image_files(path, recursive=recursive) if path.is_dir() else [path])
    return paths


def top_k(probabilities: dict[str, float], k: int) -> list[tuple[str, float]]:
    return sorted(probabilities.items(), key=lambda item: (-item[1], item[0]))[:k]


def prediction_row(
    path: Any, result: tuple[str, float, dict[str, float]] | None, error: str | None, k: int
) -> dict[str, Any]:
    """One image's output record (what --json prints and --csv writes); ``error`` is the reason it was unusable."""
    pred_class, confidence, probs = result if result is not None else (None, 0.0, {})
    return {
        "path": os.fspath(path) if isinstance(path, os.PathLike) else str(path),
        "predicted_class": pred_class,
        "confidence": round(confidence, 6),
        "top_k": [[name, round(p, 6)] for name, p in top_k(probs, k)],
        "probabilities": {name: round(p, 6) for name, p in probs.items()},
        "error": error,
    }


def json_line(row: dict[str, Any]) -> str:
    """One JSON object on one line, valid UTF-8 whatever the file name, and safe to show in a terminal.

    Control, bidi-override and non-UTF-8 characters (lone surrogates) become ``\\uXXXX`` escapes: ``json.loads`` gives
    back the same string, and ``os.fsencode`` of it the file's original bytes.
    """
    text = json.dumps(row, ensure_ascii=False)  # such characters can only stand inside its strings
    return "".join(json.dumps(c)[1:-1] if unicodedata.category(c) in _ESCAPED_CATEGORIES else c for c in text)


def table_lines(rows: Sequence[dict[str, Any]], k: int, threshold: float) -> list[str]:
    """The human-readable table, file names escaped (control, right-to-left and non-UTF-8 characters)."""
    names = [_printable(row["path"]) for row in rows]
    width = max(len("image"), *(len(name) for name in names))
    lines = [f"{'image':<{width}}  {'prediction':<12} {'conf':>6}  top-{k}"]
    for name, row in zip(names, rows):
        shown = ", ".join(f"{_printable(label)} {p:.2f}" for label, p in row["top_k"]) or _printable(row["error"])
        label = _printable(row["predicted_class"] or "ERROR")
        lines.append(f"{name:<{width}}  {label:<12} {row['confidence']:>6.3f}  {shown}")
    failed = sum(row["error"] is not None for row in rows)
    lines.append(f"\n{len(rows) - failed} classified, {failed} failed, threshold {threshold:.2f}")
    return lines


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> None:
    """The predictions as CSV, written atomically; a non-UTF-8 file name is kept as its ``\\udcXX`` escape."""
    with _atomic_file(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "predicted_class", "confidence", *classes, "error"])
        for row in rows:
            probs = [row["probabilities"].get(c, "") for c in classes]
            writer.writerow([row["path"], row["predicted_class"] or "", row["confidence"], *probs, row["error"] or ""])


def classify_and_print(clf: BirdPlaneSupermanClassifier, paths: Sequence[Path], args: argparse.Namespace) -> int:
    """Classify ``paths``, print the table or JSON lines, write --csv; the exit code."""
    if not paths:
        return _error("no image files found in the given folders (use --recursive to look in subfolders)")
    rows = [
        prediction_row(path, result, error, args.top_k)
        for path, result, error in clf._results_with_errors(paths, args.batch_size)
    ]
    if args.json:
        for row in rows:
            print(json_line(row))
    else:
        print("\n".join(table_lines(rows, args.top_k, clf.confidence_threshold)))
    if args.csv:
        write_csv(args.csv, rows, clf.classes)
    return EXIT_PARTIAL if any(row["error"] for row in rows) else EXIT_OK


def _error(message: str) -> int:
    """``error: <message>`` on stderr (the project's one error format); returns EXIT_USAGE."""
    print(f"error: {_printable(message)}", file=sys.stderr)
    return EXIT_USAGE


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Classify images with a birdplane model (bird / plane / superman / other, or your classes).",
        epilog="exit codes: 0 done, 1 done but some images unusable, 2 usage error or unusable model/input, "
        "130 interrupted",
        add_help=add_help,
    )
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="the model file (e.g. models/best_model.pth) unless --model names it, then image files and/or folders",
    )
    parser.add_argument(
        "--model",
        metavar="FILE",
        default=None,
        help="the model file, as every birdplane script names it (default: PATH 1)",
    )
    parser.add_argument("--recursive", action="store_true", help="also look in subfolders of folders (default: off)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"minimum softmax confidence (0-1) below which the prediction becomes {FALLBACK_LABEL!r} "
        "(default: the one stored in the checkpoint)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per forward pass (default: 32)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda, then mps, then cpu)")
    parser.add_argument("--top-k", type=int, default=1, help="how many classes to show per image (default: 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image instead of a table")
    parser.add_argument("--csv", metavar="FILE", default=None, help="also write the predictions to a CSV file")
    parser.add_argument("-v", "--verbose", action="store_true", help="also log the model's settings (default: off)")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="accepted as in every birdplane script; classifier.py draws no progress bars (default: off)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s", force=True
    )
    if not args.model and not args.paths:
        return _error("no model given: python classifier.py MODEL IMAGE... (or --model MODEL IMAGE...)")
    model_path, inputs = (args.model, args.paths) if args.model else (args.paths[0], args.paths[1:])
    if not inputs:
        return _error("no images given: name the model file, then the image files and/or folders to classify")
    if args.batch_size < 1:
        return _error("--batch-size must be at least 1")
    if args.top_k < 1:
        return _error("--top-k must be at least 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        return _error(f"--threshold must be between 0 and 1, got {args.threshold}")
    missing = [item for item in inputs if not os.path.lexists(item)]
    if missing:
        return _error(f"no such file or folder: {', '.join(missing)}")
    if args.csv and not Path(args.csv).resolve().parent.is_dir():
        return _error(f"--csv: the folder of {args.csv} does not exist")
    try:
        pick_device(args.device)
    except ValueError as error:
        return _error(f"--device: {error}")
    try:
        clf = BirdPlaneSupermanClassifier(model_path, confidence_threshold=args.threshold, device=args.device)
        settings = f"{clf.arch}, classes {', '.join(clf.classes)}, {clf.image_size} px, threshold "
        settings += f"{clf.confidence_threshold:.2f}, temperature {clf.temperature:.2f}, on {clf.device}"
        logger.info("Model %s: %s", _printable(model_path), _printable(settings))
        return classify_and_print(clf, collect_inputs(inputs, args.recursive), args)
    except CheckpointError as error:
        return _error(str(error))
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
