"""Classify images with a trained birdplane model: one self-contained file to copy into any project.

Copy it with ``models/best_model.pth`` (needs torch, torchvision, Pillow and numpy) or with the ``.onnx`` file it
exports (needs only onnxruntime, Pillow and numpy). It imports nothing of ours, and ``import classifier`` loads no
torch (the functions that need it do). It is the one definition of how images are found and read
(``find_image_files``, ``open_image``, ``load_image``), the preprocessing (``image_to_uint8``, ``normalize_batch``),
the model (``build_model``) and the model file formats (``make_checkpoint``, ``load_checkpoint``, ``export_onnx``).

    python classifier.py models/best_model.pth test_image.jpg
    python classifier.py --model models/best_model.pth test_images/ --recursive --top-k 3
    python classifier.py models/best_model.pth test_images/ --json > predictions.jsonl
    python classifier.py models/best_model.pth --export-onnx models/best_model.onnx
    python classifier.py models/best_model.onnx test_images/              # onnxruntime, no torch needed
    python classifier.py models/best_model.pth --set-threshold 0.5   # store the trainer's recommended threshold

    from classifier import BirdPlaneSupermanClassifier
    clf = BirdPlaneSupermanClassifier("models/best_model.pth", confidence_threshold=0.7)
    pred_class, confidence, probs = clf.predict("img.jpg")
    results = clf.predict_batch(paths)  # a list: (path, class, confidence, probs) per path, in order

Writes only the model files --export-onnx and --set-threshold name and the --csv file; predictions go to stdout,
warnings and errors to stderr.
Exit codes: 0 done, 1 done but some images unusable, 2 usage error or unusable model/input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import importlib.util
import io
import json
import logging
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
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # torch is imported inside the functions that use it: ``import classifier`` stays light
    import torch
    from torch import nn

logger = logging.getLogger(__name__)
ImageSource = str | os.PathLike | Image.Image  # what predict and load_image accept
Result = tuple[str, float, dict[str, float]]  # (predicted class, its probability, {class: probability})
Prediction = tuple[Any, str | None, float, dict[str, float]]  # (input, class or None, confidence, probabilities)
Outcome = tuple[Any, Any, str | None]  # (input, its pixels, result or vector, None) or (input, None, why not)

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
VALID_TEMPERATURE_RANGE = (0.01, 100.0)  # the trainer fits within 0.25-20; outside it softmax loses all meaning
EXPECTED_MODEL = "expected a checkpoint file written by train_classifier.py"  # ends every "this is not a model" error
EXPECTED_ONNX = "expected an ONNX file written by classifier.py --export-onnx"
ONNX_INPUT, ONNX_LOGITS, ONNX_EMBEDDING = "pixels", "logits", "embedding"  # the exported graph's names
SETTINGS = ("image_size", "resize_size", "mean", "std", "confidence_threshold", "temperature")  # beside arch, classes
ONNX_METADATA = ("format_version", "arch", "classes", *SETTINGS)  # each value JSON text in the file's metadata_props
ONNX_THREADS = max(1, (os.cpu_count() or 1) // 2)  # onnxruntime's intra-op threads: the rest decode (BENCHMARKS.md)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own bomb limit; larger images are refused instead of decoded
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white, as a browser shows them
IMAGE_MODES = ("RGB", "L")  # what load_image returns: colour for the model, greyscale for perceptual hashes
DEFAULT_BATCH_SIZE = 32
DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))  # Pillow releases the GIL while decoding
SNIFF_BYTES = 512  # enough of a file's start to tell an image, a web page, text or a PyTorch file apart
_MAGIC = {  # file signatures: images are found by content, not by name (WEBP: see _sniff_bytes)
    "JPEG": b"\xff\xd8\xff",
    "PNG": b"\x89PNG\r\n\x1a\n",
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": b"BM",
    "TIFF": (b"II*\x00", b"MM\x00*"),
}
_FILE_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket"}  # not files
_FILE_KINDS.update(dict.fromkeys((stat.S_IFCHR, stat.S_IFBLK), "a device node"))
_ESCAPED_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")  # control, format (bidi, zero-width), surrogate, line breaks
EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130  # cli.py's (this file imports nothing of ours)


class CheckpointError(ValueError):
    """A model file that cannot be used; the message is one sentence saying why."""


class ImageLoadError(ValueError):
    """An image that cannot be used; the message is the reason."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched (usually no network)."""


# -- Pure functions: sizes, decisions, checkpoint settings, recognising content -----------------------------------
def default_resize_size(image_size: int) -> int:
    """The shorter-side size to resize to before centre-cropping ``image_size`` (256 for 224)."""
    return int(round(image_size * RESIZE_RATIO))


def center_crop_box(width: int, height: int, image_size: int, resize_size: int) -> tuple[float, float, float, float]:
    """The box "shorter side to resize_size, centre-crop image_size" keeps; resampling it alone needs no huge resize."""
    scale = resize_size / min(width, height)
    crop_w, crop_h = min(width, image_size / scale), min(height, image_size / scale)
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    return (left, top, left + crop_w, top + crop_h)


def validate_threshold(value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:  # NaN fails this too
        raise ValueError(f"confidence threshold must be between 0 and 1, got {float(value)}")
    return float(value)


def _is_number(value: Any, whole: bool = False) -> bool:
    """A finite int or float (only an int when ``whole``), never a bool: NaN, inf and 10**400 all fail the bound."""
    return isinstance(value, int if whole else int | float) and not isinstance(value, bool) and abs(value) < 1.79e308


def short_repr(value: Any, limit: int = 200) -> str:
    """repr(value) cut to ``limit`` characters, for messages: a crafted model file may put megabytes in one field."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python converts to text
        text = "an integer too long to show"
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def checkpoint_problem(checkpoint: dict[str, Any]) -> str | None:
    """Why a loaded checkpoint is unusable, ending a sentence that starts with its path; None if usable (reads only)."""
    if problem := settings_problem(checkpoint):
        return problem
    state = checkpoint["model_state_dict"]
    if not isinstance(state, dict):
        return "holds no model weights (model_state_dict is not a dict of tensors)"
    head, classes = state.get("fc.weight"), len(checkpoint["classes"])
    if head is not None and (getattr(head, "ndim", 0) != 2 or head.shape[0] != classes):
        outputs = head.shape[0] if getattr(head, "ndim", 0) else "?"
        return f"has weights with {outputs} outputs but the checkpoint lists {classes} classes"
    return None


def settings_problem(checkpoint: dict[str, Any]) -> str | None:
    """checkpoint_problem's part for the settings (an ONNX file's metadata holds the same); None if usable."""
    arch, classes, version = checkpoint.get("arch"), checkpoint.get("classes"), checkpoint.get("format_version")
    if not _is_number(version, whole=True) or version != CHECKPOINT_FORMAT_VERSION:
        this = f"this classifier.py reads version {CHECKPOINT_FORMAT_VERSION}; use the classifier.py that came with it"
        return f"has checkpoint format version {short_repr(version)}, but {this}"
    if arch not in SUPPORTED_ARCHS:
        return f"names an unknown architecture {short_repr(arch)} (known: {', '.join(SUPPORTED_ARCHS)})"
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        return "has no list of class names"
    if len(classes) > MAX_CLASSES:
        return f"lists {len(classes)} classes, more than the {MAX_CLASSES} a birdplane model can have"
    if len(set(classes)) != len(classes):
        return "lists the same class name twice"
    if checkpoint.get("num_classes", len(classes)) != len(classes):
        return f"says {short_repr(checkpoint['num_classes'])} classes but lists {len(classes)}"
    for key in SETTINGS:
        if key not in checkpoint:
            return f"lacks the field {key!r} of the checkpoint format"
    (low, high), (low_t, high_t) = IMAGE_SIZE_RANGE, VALID_TEMPERATURE_RANGE
    image_size, resize_size = checkpoint["image_size"], checkpoint["resize_size"]
    if not _is_number(image_size, whole=True) or not low <= image_size <= high:
        needed = f"a whole number of pixels from {low} to {high} is needed"
        return f"has an invalid image_size {short_repr(image_size)} ({needed})"
    if not _is_number(resize_size, whole=True) or not image_size <= resize_size <= MAX_RESIZE_RATIO * image_size:
        needed = f"a whole number from image_size {image_size} to {int(MAX_RESIZE_RATIO * image_size)} is needed"
        return f"has an invalid resize_size {short_repr(resize_size)} ({needed})"
    for key in ("mean", "std"):
        value = checkpoint[key]
        if not isinstance(value, list | tuple) or len(value) != 3 or not all(_is_number(v) for v in value):
            return f"has an invalid {key} {short_repr(value)} (three numbers, one per colour channel, are needed)"
    if not all(0.0 <= v <= 1.0 for v in checkpoint["mean"]):
        return f"has an invalid mean {checkpoint['mean']!r} (pixel values run from 0 to 1, so must their means)"
    if not all(0.0 < v <= 1.0 for v in checkpoint["std"]):
        return f"has an invalid std {checkpoint['std']!r} (each must be above 0 and at most 1)"
    threshold, temperature = checkpoint["confidence_threshold"], checkpoint["temperature"]
    if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
        return f"has an invalid confidence_threshold {short_repr(threshold)} (a number from 0 to 1 is needed)"
    if not _is_number(temperature) or not low_t <= temperature <= high_t:
        return f"has an invalid temperature {short_repr(temperature)} (a number from {low_t} to {high_t:g} is needed)"
    return None


def _sniff_bytes(head: bytes) -> str | None:
    """The image format these first bytes of a file announce ("JPEG", "PNG", ...), or None."""
    for name, magic in _MAGIC.items():
        if head.startswith(magic):
            return name
    return "WEBP" if head[:4] == b"RIFF" and head[8:12] == b"WEBP" else None


def _describe_bytes(head: bytes) -> str:
    """What a file starting with ``head`` most likely is, for error messages: "a JPEG image", "an HTML page"."""
    image_format = _sniff_bytes(head)
    if image_format:
        return f"a {image_format} image"
    if b"<html" in head.lower() or head.lstrip().lower().startswith(b"<!doctype html"):
        return "an HTML page"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as error:  # a multi-byte character cut at the end of ``head`` is still text
        decoded = head[: error.start].decode("utf-8") if error.start >= len(head) - 3 else ""
    if decoded and all(c.isprintable() or c in "\t\r\n" for c in decoded):
        return "a JSON file" if decoded.lstrip().startswith(("{", "[")) else "a text file"
    return "unrecognised binary data"


def _file_kind(mode: int) -> str:
    return _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _printable(text: Any) -> str:
    """cli.printable's one allowed copy: control, bidi and non-UTF-8 characters escaped (\\x0a, \\u202e, \\xff)."""
    out = []
    for char in os.fspath(text) if isinstance(text, os.PathLike) else str(text):
        code = ord(char)
        if unicodedata.category(char) not in _ESCAPED_CATEGORIES:
            out.append(char)
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by Python's surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")
    return "".join(out)


# -- Images: finding and reading them, the reasons a bad file is refused ------------------------------------------
def _regular_file_head(path: str | os.PathLike, size: int) -> bytes | None:
    """The first ``size`` bytes of a regular file; None for anything else (a FIFO is never opened: that would hang)."""
    with contextlib.suppress(OSError):
        if stat.S_ISREG(os.stat(path).st_mode):
            with open(path, "rb") as handle:
                return handle.read(size)
    return None


def is_image_file(path: str | os.PathLike) -> bool:
    return _sniff_bytes(_regular_file_head(path, 16) or b"") is not None  # by content, whatever the name


def find_image_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``folder``, sorted: any case of a common extension, or a regular file that holds an image.

    Hidden files and folders are skipped. A name with an image extension is listed whatever it is (empty, HTML, a
    FIFO), never opened here, so its reader can say why it fails. Symlinked folders are followed, each real folder
    once: the tree's own folders first (a folder also reached through a link keeps its own path; a loop ends)."""
    found: list[Path] = []
    seen: set[str] = set()
    direct, linked = [os.fspath(folder)], []  # linked folders wait until every folder of the tree itself is listed
    while direct or linked:
        directory = direct.pop() if direct else linked.pop(0)
        if (real := os.path.realpath(directory)) in seen:
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


@contextlib.contextmanager
def _image_errors(part: str, path: str | os.PathLike = "") -> Iterator[None]:
    """Pillow's exceptions as ImageLoadError with the reason a user reads; ``part`` is "header" or "data"."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(f"refused as a possible decompression bomb: {error}") from None
    except PermissionError:
        raise ImageLoadError("permission denied (the file is not readable)") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"not an image: {describe_content(path)}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(f"corrupt or truncated image {part} ({error})") from None


def open_image(path: str | os.PathLike) -> Image.Image:
    """The image opened lazily (the caller closes it); ImageLoadError for bombs and non-regular files (never opened)."""
    try:
        status = os.stat(path)  # one system call for the usual case; the reasons below only when it fails
    except (FileNotFoundError, NotADirectoryError):
        raise ImageLoadError("file not found" + (" (broken symlink)" if os.path.islink(path) else "")) from None
    except PermissionError:
        raise ImageLoadError("permission denied (the file is not readable)") from None
    except OSError as error:
        raise ImageLoadError(f"cannot read the file ({error.strerror or error})") from None
    if not stat.S_ISREG(status.st_mode):
        noun = "an image" if stat.S_ISDIR(status.st_mode) else "a file"
        raise ImageLoadError(f"is {_file_kind(status.st_mode)}, not {noun}")
    if status.st_size == 0:
        raise ImageLoadError("empty file (0 bytes)")
    with _image_errors("header", path), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(path)
    if image.width * image.height > MAX_IMAGE_PIXELS:
        image.close()
        size = f"{image.width}x{image.height} pixels is over the {MAX_IMAGE_PIXELS} pixel limit"
        raise ImageLoadError(f"refused: {size} (possible decompression bomb)")
    return image


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as shown, after the EXIF orientation; read from the header, nothing decoded."""
    orientation = 1
    with contextlib.suppress(Exception):  # broken EXIF only loses the orientation, never the image
        orientation = image.getexif().get(0x0112, 1)
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
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba)
    if image.mode not in IMAGE_MODES:
        image = image.convert("RGB")
    return image if image.mode == mode else image.convert(mode)


def decode_image(image: Image.Image, draft_size: tuple[int, int] | None = None, mode: str = "RGB") -> Image.Image:
    """An opened image fully decoded, upright, in ``mode`` "RGB" or "L" (an animation's first frame); ImageLoadError.

    ``draft_size``: a JPEG may decode at 1/2, 1/4 or 1/8 scale, both sides still at least this large (much faster for
    big photos, exact enough for the resize that follows); with ``mode`` "L" it decodes straight to greyscale."""
    with _image_errors("data"):
        if getattr(image, "is_animated", False):
            image.seek(0)
        if draft_size is not None and image.format == "JPEG":
            image.draft(mode, draft_size)
        image.load()
        return to_mode(ImageOps.exif_transpose(image), mode)


def load_image(source: ImageSource, draft_size: tuple[int, int] | None = None, mode: str = "RGB") -> Image.Image:
    """A fully decoded, upright image in ``mode`` ("RGB" or "L"), ``draft_size`` as in decode_image; ImageLoadError.

    A JPEG from ``Image.open`` not yet decoded is read again from its bytes, so it decodes exactly as its path does
    (the caller's image is left as it was); an image already decoded is used at its full size."""
    if not isinstance(source, Image.Image):
        with open_image(source) as image:
            return decode_image(image, draft_size, mode)
    handle = getattr(source, "fp", None)
    if draft_size is None or source.format != "JPEG" or not source.tile or handle is None:
        return decode_image(source, None, mode)
    with _image_errors("data"):
        position = handle.tell()
        handle.seek(0)  # Image.open reads a file object from its start, so the JPEG starts there
        data, _ = handle.read(), handle.seek(position)
        return decode_image(Image.open(io.BytesIO(data)), draft_size, mode)  # bytes in memory: nothing to close


# -- Preprocessing: the model input, exactly as the trainer evaluates it ------------------------------------------
def image_to_uint8(image: Image.Image, image_size: int, resize_size: int) -> np.ndarray:
    """HWC uint8 model input before normalisation, in one resampling step of the crop box (``center_crop_box``)."""
    box = center_crop_box(image.width, image.height, image_size, resize_size)
    return np.array(image.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)


def choose_decoder(source: Any, device: Any, min_side: int = 0) -> str:
    """The decoder for a file: "gpu" where decode_jpeg on ``device`` gives what load_image would (a whole, upright
    colour JPEG file on CUDA, ``min_side`` or more on its shorter side: only downscaled), else "cpu" (load_image)."""
    if isinstance(source, Image.Image) or not str(device).startswith("cuda"):
        return "cpu"
    try:  # open_image refuses bombs and never opens a FIFO; only the header and the last two bytes are read
        with open_image(source) as image, open(source, "rb") as handle:
            handle.seek(-2, os.SEEK_END)
            is_whole = handle.read(2) == b"\xff\xd9"  # a truncated file lacks the end marker: the CPU reader says so
            usable = image.format == "JPEG" and image.mode == "RGB" and min(image.size) >= min_side and is_whole
            return "gpu" if usable and image.getexif().get(0x0112, 1) == 1 else "cpu"
    except Exception:  # noqa: BLE001 - anything odd stays with the CPU reader, which says what is wrong
        return "cpu"


def normalize_batch(batch_hwc: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """NHWC uint8 -> NCHW float32 normalised, in channels_last memory (no copy to NCHW layout)."""
    import torch

    batch = batch_hwc.permute(0, 3, 1, 2).float().div_(255.0)
    mean_t, std_t = torch.tensor((mean, std), dtype=batch.dtype, device=batch.device).view(2, 1, 3, 1, 1)
    return batch.sub_(mean_t).div_(std_t).contiguous(memory_format=torch.channels_last)


def softmax_with_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) over the last dimension, computed in float32."""
    import torch

    return torch.softmax(logits.float() / float(temperature), dim=-1)


def normalize_array(batch_hwc: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """normalize_batch in numpy (for onnxruntime): NHWC uint8 -> NCHW float32, the same float32 operations."""
    batch = (batch_hwc.astype(np.float32) / np.float32(255.0) - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def softmax_array(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax_with_temperature in numpy: softmax(logits / T) over the last dimension, in float32."""
    scaled = logits.astype(np.float32) / np.float32(temperature)
    exp = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


# -- Model -----------------------------------------------------------------------------------------------------------
def build_model(arch: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """A torchvision ResNet with a fresh ``num_classes`` head; ``weights``: None or "none" (random), "imagenet"
    (torchvision's, downloaded once into the torch hub cache) or a local file holding a state dict or a checkpoint."""
    import torchvision
    from torch import nn

    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(SUPPORTED_ARCHS)}")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be from 1 to {MAX_CLASSES}, got {num_classes}")
    constructor = getattr(torchvision.models, arch)
    if str(weights).lower() == "imagenet":
        try:
            model = constructor(weights=torchvision.models.get_model_weights(arch).DEFAULT)
        except (OSError, RuntimeError, ConnectionError) as error:  # URLError is an OSError
            failed = f"Could not download the ImageNet weights for {arch} ({type(error).__name__})"
            instead = "pass --weights FILE with a local weights file or --weights none to train from scratch"
            raise WeightsUnavailableError(f"{failed}; {instead}.") from None
    else:
        model = constructor(weights=None)
        if weights is not None and str(weights).lower() != "none":
            _load_backbone_weights(model, Path(weights), arch)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet.forward stopped before the head: (N, features) pooled features."""
    import torch

    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return torch.flatten(model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(x))))), 1)


def _load_backbone_weights(model: nn.Module, path: Path, arch: str) -> None:
    """Load a local state dict (or a checkpoint's) into ``model``; a head of another shape is left out."""
    if not os.path.lexists(path):
        raise CheckpointError(f"Weights file {path} does not exist; pass an existing file, 'imagenet' or 'none'.")
    state = _read_torch_file(path, "weights file", "expected a state dict or a birdplane checkpoint")
    if isinstance(state, dict) and isinstance(state.get("model_state_dict"), dict):
        state = state["model_state_dict"]
    if not _is_state_dict(state):
        raise CheckpointError(f"{path} holds no state dict of tensors, so it cannot be used as weights.")
    own = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.startswith("fc.")]
    if missing:
        unfit = f"{len(missing)} tensors missing or of another shape, e.g. {short_repr(missing[0])}"
        raise CheckpointError(f"The weights in {path} do not fit a {arch} ({unfit}).")
    model.load_state_dict(usable, strict=False)


def pick_device(device: str | None = None) -> torch.device:
    """The given device, or the best available: cuda, then mps, then cpu; ValueError for one this machine lacks."""
    import torch

    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
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


# -- Checkpoint format: make_checkpoint lays it out, load_checkpoint reads it (side by side, so they cannot drift) --
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
    """The checkpoint dict (plain types, CPU tensors); ``extra``: the trainer's own fields, which loading ignores."""
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(SUPPORTED_ARCHS)}")
    return {
        **(extra or {}),
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
        "model_state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
    }


def _model_file_head(path: Path, what: str, expected: str) -> bytes:
    """The first bytes of a model file that is a regular, non-empty, readable file; else CheckpointError naming it."""
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        broken = " (a broken symlink)" if os.path.islink(path) else ""
        train = "train one with train_classifier.py or pass its path"
        raise CheckpointError(f"The {what} {path} does not exist{broken}; {train}.") from None
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
    return head


def _read_torch_file(path: Path, what: str, expected: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of a regular file (a FIFO is never opened); else CheckpointError naming it."""
    import torch

    head = _model_file_head(path, what, expected)
    is_zip = head.startswith(b"PK\x03\x04")  # torch.save's two containers: a zip archive or a bare pickle
    if not (is_zip or head[:1] == b"\x80"):
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
        unsafe = "loading it needs more than weights_only=True (it could run code), so it is not a safe"
        raise CheckpointError(f"Refusing {path}: {unsafe} {what} ({expected}).") from None
    except Exception as error:  # noqa: BLE001 - any garbage must end in one sentence, never a traceback
        detail = str(error).splitlines()[0][:100] if str(error) else type(error).__name__
        raise CheckpointError(
            f"{path} is truncated or damaged: it starts like a PyTorch file but cannot be read ({detail}); {expected}."
        ) from None


def _is_state_dict(value: Any) -> bool:
    import torch

    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint (every setting bounded by ``checkpoint_problem``); CheckpointError if unusable."""
    path = Path(path)
    checkpoint = _read_torch_file(path, "birdplane checkpoint", EXPECTED_MODEL, map_location)
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint or "format_version" not in checkpoint:
        held = "a bare state dict (weights without classes and settings)" if _is_state_dict(checkpoint) else "data"
        lacking = f"no format_version and model_state_dict; {EXPECTED_MODEL}"
        raise CheckpointError(f"{path} is a PyTorch file holding {held}, not a birdplane checkpoint ({lacking}).")
    problem = checkpoint_problem(checkpoint)
    if problem:
        raise CheckpointError(f"{path} {problem}.")
    return checkpoint


# -- ONNX: export_onnx writes the model for onnxruntime (needs torch), load_onnx reads it (needs onnxruntime only) --
def is_onnx_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".onnx"  # how BirdPlaneSupermanClassifier tells the two formats apart


def onnx_export_problem() -> str | None:
    """Why export_onnx cannot run here (a missing package, with the install line); None when it can."""
    missing = [name for name in ("torch", "onnx", "onnxscript", "onnxruntime") if not importlib.util.find_spec(name)]
    return f"exporting to ONNX needs {' and '.join(missing)}: pip install {' '.join(missing)}" if missing else None


def export_onnx(model_path: str | os.PathLike, onnx_path: str | os.PathLike) -> float:
    """Write the checkpoint's model as one ONNX file (atomically): input ``pixels`` (N, 3, size, size) normalised,
    outputs ``logits`` and the unit-length ``embedding``, any batch size; its settings in ``metadata_props`` as JSON
    text. Returns the largest probability difference between onnxruntime and torch on random images; CheckpointError
    for an unusable checkpoint."""
    import onnx
    import torch

    clf = BirdPlaneSupermanClassifier(model_path, device="cpu")

    class LogitsAndEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = clf.model

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = pooled_features(self.model, pixels)
            return self.model.fc(features), torch.nn.functional.normalize(features, dim=1)

    example = (torch.zeros(2, 3, clf.image_size, clf.image_size),)
    names = {"input_names": [ONNX_INPUT], "output_names": [ONNX_LOGITS, ONNX_EMBEDDING], "dynamo": True}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's chatter is not ours
        warnings.simplefilter("ignore")
        batch = {"pixels": {0: torch.export.Dim("batch")}}  # any batch size
        proto = torch.onnx.export(LogitsAndEmbedding().eval(), example, dynamic_shapes=batch, **names).model_proto
    onnx.helper.set_model_props(proto, {key: json.dumps(clf.checkpoint[key]) for key in ONNX_METADATA})
    with _atomic_file(onnx_path, "wb") as handle:
        handle.write(proto.SerializeToString())
    images = list(np.random.default_rng(0).integers(0, 256, (3, clf.image_size, clf.image_size, 3), dtype=np.uint8))
    exported = BirdPlaneSupermanClassifier(onnx_path, device="cpu")
    return float(np.abs(exported._forward(images) - clf._forward(images)).max())


def _onnx_providers(device: str | None, available: Sequence[str]) -> list[Any]:
    """onnxruntime's execution providers for ``device`` (None: CUDA when onnxruntime has it, else CPU); ValueError."""
    kind, _, index = (device or "").partition(":")
    if kind in ("", "cuda") and "CUDAExecutionProvider" in available and (index.isdigit() or not index):
        return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
    if kind in ("", "cpu") and not index:
        return ["CPUExecutionProvider"]
    raise ValueError(f"device {device!r}: this onnxruntime runs on {', '.join(available)}; use cpu")


def load_onnx(path: str | os.PathLike, device: str | None = None) -> tuple[Any, dict[str, Any], str]:
    """(onnxruntime session, the settings from its metadata, device name) for an exported model, checked like a
    checkpoint (``settings_problem``); CheckpointError naming the file otherwise, ValueError for ``device``."""
    path = Path(path)
    head = _model_file_head(path, "birdplane ONNX model", EXPECTED_ONNX)
    if head[:1] != b"\x08":  # an ONNX file is a protobuf that starts with its ir_version field
        raise CheckpointError(f"{path} is {_describe_bytes(head)}, not an ONNX model ({EXPECTED_ONNX}).")
    try:
        import onnxruntime
    except ImportError:
        raise CheckpointError(f"{path} is an ONNX model, which needs onnxruntime: pip install onnxruntime.") from None
    providers = _onnx_providers(device, onnxruntime.get_available_providers())
    options = onnxruntime.SessionOptions()
    options.log_severity_level, options.intra_op_num_threads = 3, ONNX_THREADS  # errors only; threads: see constant
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.resolve()))
    try:  # bytes, and external data looked up "inside" the model file: a crafted .onnx can never open another file
        session = onnxruntime.InferenceSession(path.read_bytes(), options, providers=providers)
    except Exception as error:  # noqa: BLE001 - any garbage must end in one sentence, never a traceback
        detail = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        damaged = f"is truncated or damaged: onnxruntime cannot load it ({detail})"
        raise CheckpointError(f"{path} {damaged}; {EXPECTED_ONNX}.") from None
    metadata = session.get_modelmeta().custom_metadata_map
    missing = ", ".join(key for key in ONNX_METADATA if key not in metadata)
    if missing:
        raise CheckpointError(f"{path} is an ONNX model whose metadata lacks {missing}; {EXPECTED_ONNX}.")
    settings = {key: metadata[key] for key in ONNX_METADATA}
    for key, text in settings.items():  # each the JSON of a number or a list; what is not JSON stays text
        with contextlib.suppress(ValueError, RecursionError):  # JSON is plain data: reading it runs no code
            settings[key] = json.loads(text)
    problem = settings_problem(settings) or _onnx_graph_problem(session, settings)
    if problem:
        raise CheckpointError(f"{path} {problem}.")
    on_cuda = session.get_providers()[0].startswith("CUDA")
    return session, settings, f"cuda:{providers[0][1]['device_id']}" if on_cuda else "cpu"


def _onnx_graph_problem(session: Any, settings: dict[str, Any]) -> str | None:
    """Why the graph does not fit its settings (input shape, number of outputs); None when it does."""
    inputs, outputs = session.get_inputs(), {output.name: output.shape for output in session.get_outputs()}
    size = settings["image_size"]
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or list(inputs[0].shape[1:]) != [3, size, size]:
        found = ", ".join(f"{i.type} {i.shape}" for i in inputs)
        return f"takes inputs {found}, not the one float input [N, 3, {size}, {size}] its metadata describes"
    logits = outputs.get(ONNX_LOGITS)
    if logits is None or len(logits) != 2 or ONNX_EMBEDDING not in outputs:
        return f"lacks the outputs {ONNX_LOGITS!r} [N, classes] and {ONNX_EMBEDDING!r} [N, features] of an export"
    if logits[1] != len(settings["classes"]):  # the sentence checkpoint_problem says of a checkpoint's weights
        return f"has weights with {logits[1]} outputs but its metadata lists {len(settings['classes'])} classes"
    return None


# -- The classifier --------------------------------------------------------------------------------------------------
class BirdPlaneSupermanClassifier:
    """Loads a birdplane model (a ``.pth`` checkpoint with torch, or a ``.onnx`` export with onnxruntime alone) and
    classifies images (paths or PIL images), one at a time or in batches; both formats give the same results.
    On CUDA the batch methods decode JPEGs on the GPU (``choose_decoder``); ``decode_on_gpu = False`` keeps the CPU's.
    """

    def __init__(
        self,
        model_path: str | os.PathLike = "models/best_model.pth",
        confidence_threshold: float | None = None,
        device: str | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.model, self.session = None, None  # the torch model of a .pth file, or onnxruntime's session of a .onnx
        if is_onnx_path(self.model_path):
            self.session, checkpoint, self.device = load_onnx(self.model_path, device)
        else:
            import torch

            checkpoint = load_checkpoint(self.model_path)
            self.device, model = pick_device(device), build_model(checkpoint["arch"], len(checkpoint["classes"]))
            try:
                model.load_state_dict(checkpoint["model_state_dict"], strict=True)
            except (RuntimeError, TypeError, AttributeError) as error:
                lines = str(error).splitlines() or [type(error).__name__]
                detail = (lines[1].strip() if len(lines) > 1 else lines[0])[:160]
                fit = f"a {checkpoint['arch']} with {len(checkpoint['classes'])} classes ({detail})"
                raise CheckpointError(f"The weights in {model_path} do not match {fit}.") from None
            self.model = model.to(self.device).to(memory_format=torch.channels_last).eval()
        self.arch: str = checkpoint["arch"]
        self.classes: list[str] = list(checkpoint["classes"])
        self.checkpoint = {k: v for k, v in checkpoint.items() if k != "model_state_dict"}
        self.image_size, self.resize_size = int(checkpoint["image_size"]), int(checkpoint["resize_size"])
        self.mean, self.std = (tuple(float(v) for v in checkpoint[key]) for key in ("mean", "std"))
        self.temperature = float(checkpoint["temperature"])
        threshold = checkpoint["confidence_threshold"] if confidence_threshold is None else confidence_threshold
        self.confidence_threshold = validate_threshold(threshold)
        self.decode_on_gpu = self.model is not None and self.device.type == "cuda"

    def set_confidence_threshold(self, value: float) -> None:
        """Set the threshold below which predictions become FALLBACK_LABEL; ValueError outside [0, 1]."""
        self.confidence_threshold = validate_threshold(value)

    def predict(self, image: ImageSource) -> Result:
        """(predicted class, its probability, {class: probability}); raises ImageLoadError for an unusable image."""
        return self._result(self._forward([self._prepare(image)])[0])

    def predict_batch(self, paths: Iterable[ImageSource], batch_size: int = DEFAULT_BATCH_SIZE) -> list[Prediction]:
        """A list of (path, predicted class, confidence, probabilities), one per input in order; an unreadable image
        gives ``(path, None, 0.0, {})`` and a logged warning naming it and the reason."""
        return list(self.iter_predictions(paths, batch_size))

    def iter_predictions(
        self, paths: Iterable[ImageSource], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[Prediction]:
        """``predict_batch`` streamed: each result as soon as its batch is done (``paths`` is read ahead)."""
        for source, result, _ in self._results_with_errors(paths, batch_size):
            yield (source, None, 0.0, {}) if result is None else (source, *result)

    def embed_batch(self, paths: Iterable[ImageSource], batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[Outcome]:
        """(path, unit-length float32 features before the head, None) per input, in order; (path, None, reason)."""
        return self._outputs(paths, batch_size, lambda pixels: self._forward(pixels, embed=True))

    def _results_with_errors(self, sources: Iterable[Any], batch_size: int) -> Iterator[Outcome]:
        """(source, (class, confidence, probabilities) or None, reason or None) per input in order; warns if bad."""
        outputs = self._outputs(sources, batch_size, lambda pixels: map(self._result, self._forward(pixels)))
        for source, result, error in outputs:
            if error is not None:
                logger.warning("Skipping %s: %s", _printable(source), _printable(error))
            yield source, result, error

    def _prepare(self, source: ImageSource) -> np.ndarray:
        image = load_image(source, draft_size=(self.resize_size, self.resize_size))
        return image_to_uint8(image, self.image_size, self.resize_size)

    def _forward(self, pixels: Sequence[Any], embed: bool = False) -> np.ndarray:
        """Calibrated probabilities of HWC uint8 inputs; with ``embed``, L2-normalised pooled features (no head)."""
        if self.session is not None:
            return self._forward_onnx(pixels, embed)
        import torch

        with torch.inference_mode():
            batch = torch.stack([torch.as_tensor(p, device=self.device) for p in pixels])  # arrays, or GPU-decoded
            x = normalize_batch(batch, self.mean, self.std)
            if not embed:
                return softmax_with_temperature(self.model(x), self.temperature).cpu().numpy()
            return torch.nn.functional.normalize(pooled_features(self.model, x).float(), dim=1).cpu().numpy()

    def _forward_onnx(self, pixels: Sequence[np.ndarray], embed: bool) -> np.ndarray:
        """_forward with onnxruntime; CheckpointError when the outputs are not what load_onnx checked (crafted)."""
        name = ONNX_EMBEDDING if embed else ONNX_LOGITS  # load_onnx checked that the model has both
        try:  # a crafted graph that loads may still fail to run; onnxruntime raises plain Exceptions
            output = self.session.run([name], {ONNX_INPUT: normalize_array(np.stack(pixels), self.mean, self.std)})[0]
        except Exception as error:  # noqa: BLE001 - any failure of the graph is the model file's: one sentence
            raise CheckpointError(f"{self.model_path} does not run ({error.__class__.__name__})") from None
        if np.shape(output)[:1] != (len(pixels),) or not embed and np.shape(output) != (len(pixels), len(self.classes)):
            raise CheckpointError(f"{self.model_path} gave outputs of shape {np.shape(output)}; {EXPECTED_ONNX}.")
        return np.asarray(output, np.float32) if embed else softmax_array(output, self.temperature)

    def _result(self, probabilities: np.ndarray) -> Result:
        best = int(np.argmax(probabilities))
        confidence = float(probabilities[best])  # exactly at the threshold keeps the class
        pred_class = self.classes[best] if confidence >= self.confidence_threshold else FALLBACK_LABEL
        return pred_class, confidence, {c: float(p) for c, p in zip(self.classes, probabilities)}

    def _outputs(
        self, sources: Iterable[Any], batch_size: int, compute: Callable[[list[Any]], Iterable[Any]]
    ) -> Iterator[Outcome]:
        """(source, compute's output, None) or (source, None, reason) per input in order; threads decode ahead."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")

        def prepare(source: Any, on_gpu: bool = True) -> Outcome:
            try:
                if on_gpu and self.decode_on_gpu and choose_decoder(source, self.device, self.resize_size) == "gpu":
                    return source, Path(source).read_bytes(), None  # decoded with its batch, in _decode_jpegs
                return source, self._prepare(source), None
            except ImageLoadError as error:
                return source, None, str(error)
            except Exception as error:  # noqa: BLE001 - one bad image must never stop a batch
                return source, None, f"{type(error).__name__}: {error}"

        pending: collections.deque[Future] = collections.deque()
        iterator, batch = iter(sources), []
        with ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="decode") as pool:
            while True:
                pending.extend(pool.submit(prepare, s) for s in islice(iterator, 2 * batch_size - len(pending)))
                if not pending:
                    return
                batch.append(pending.popleft().result())
                if len(batch) == batch_size or not pending:
                    self._decode_jpegs(batch, lambda source: prepare(source, on_gpu=False))
                    good = [pixels for _, pixels, _ in batch if pixels is not None]
                    outputs = iter(compute(good) if good else [])
                    for source, pixels, error in batch:
                        yield (source, None, error) if pixels is None else (source, next(outputs), None)
                    batch = []

    def _decode_jpegs(self, batch: list[Outcome], read_on_cpu: Callable[[Any], Outcome]) -> None:
        """Replaces the batch's JPEG bytes by crops decoded together on the device; a refused file goes to the CPU."""
        jpegs = [i for i, (_, pixels, _) in enumerate(batch) if isinstance(pixels, bytes)]
        if not jpegs:
            return
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms.v2.functional import resized_crop

        def decode(data: Any) -> Any:  # None when the decoder refuses it
            try:
                return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            except Exception:  # noqa: BLE001 - the CPU reader will say what is wrong with the file
                return None

        size, encoded = self.image_size, [torch.frombuffer(bytearray(batch[i][1]), dtype=torch.uint8) for i in jpegs]
        for i, image in zip(jpegs, decode(encoded) or [decode(data) for data in encoded]):  # one bad file fails all
            if image is None:
                batch[i] = read_on_cpu(batch[i][0])
                continue
            left, top, right, bottom = center_crop_box(image.shape[2], image.shape[1], size, self.resize_size)
            crop = resized_crop(image, round(top), round(left), round(bottom - top), round(right - left), [size, size])
            batch[i] = (batch[i][0], crop.permute(1, 2, 0), None)


# -- Writing files: this file's own small atomic writer (the project's is fileio.atomic_write) ----------------------
@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """A temp file beside ``path``, renamed over it once written and fsynced (never half a file); removed on failure."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=Path(path).parent)
    try:
        os.umask(umask := os.umask(0))  # the umask can only be read by setting it
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


# -- Command line ----------------------------------------------------------------------------------------------------
def prediction_row(path: Any, result: Result | None, error: str | None, k: int) -> dict[str, Any]:
    """One image's output record (what --json prints and --csv writes); ``error`` is the reason it was unusable."""
    pred_class, confidence, probs = result if result is not None else (None, 0.0, {})
    top = sorted(probs.items(), key=lambda item: (-item[1], item[0]))[:k]
    return {
        "path": os.fspath(path) if isinstance(path, os.PathLike) else str(path),
        "predicted_class": pred_class,
        "confidence": round(confidence, 6),
        "top_k": [[name, round(p, 6)] for name, p in top],
        "probabilities": {name: round(p, 6) for name, p in probs.items()},
        "error": error,
    }


def json_line(row: dict[str, Any]) -> str:
    """One JSON line, valid UTF-8 and safe in a terminal: control, bidi, non-UTF-8 characters as lossless \\uXXXX."""
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


def classify_and_print(clf: BirdPlaneSupermanClassifier, inputs: Sequence[str], args: argparse.Namespace) -> int:
    """Classify the files and the images in the folders given, print the table or JSON lines, write --csv."""
    paths: list[Path] = []
    for item in inputs:
        paths += find_image_files(item, args.recursive) if Path(item).is_dir() else [Path(item)]
    if not paths:
        return _error("no image files found in the given folders (use --recursive to look in subfolders)")
    results = clf._results_with_errors(paths, args.batch_size)
    rows = [prediction_row(path, result, error, args.top_k) for path, result, error in results]
    lines = map(json_line, rows) if args.json else table_lines(rows, args.top_k, clf.confidence_threshold)
    print("\n".join(lines))
    if args.csv:
        write_csv(args.csv, rows, clf.classes)
    return EXIT_PARTIAL if any(row["error"] for row in rows) else EXIT_OK


def export_command(model_path: str, inputs: Sequence[str], onnx_path: str) -> int:
    """--export-onnx: check, write the ONNX file, say how closely onnxruntime follows torch; the exit code."""
    usage_errors = (
        inputs and "--export-onnx writes a model file and classifies nothing: name only the .pth model",
        is_onnx_path(model_path) and f"--export-onnx needs a .pth checkpoint to export, not {model_path}",
        not is_onnx_path(onnx_path) and f"--export-onnx: the file name must end in .onnx, got {onnx_path}",
        not Path(onnx_path).resolve().parent.is_dir() and f"--export-onnx: the folder of {onnx_path} does not exist",
        onnx_export_problem(),
    )
    if any(usage_errors):
        return _error(next(message for message in usage_errors if message))
    try:
        difference = export_onnx(model_path, onnx_path)
    except (CheckpointError, OSError) as error:
        return _error(str(error))
    except KeyboardInterrupt:
        print("Interrupted; nothing written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    check = f"onnxruntime's probabilities are within {difference:.1g} of torch's"
    print(f"Wrote {_printable(onnx_path)} ({Path(onnx_path).stat().st_size / 1e6:.1f} MB); {check}.")
    return EXIT_OK


def store_threshold(model_path: str, threshold: float) -> int:
    """--set-threshold: the model file as it was, with ``threshold`` stored as its confidence threshold."""
    import torch

    if not 0.0 <= threshold <= 1.0:
        return _error(f"--set-threshold must be between 0 and 1, got {threshold}")
    checkpoint = load_checkpoint(model_path)
    previous, checkpoint["confidence_threshold"] = checkpoint["confidence_threshold"], threshold
    with _atomic_file(model_path, "wb") as handle:
        torch.save(checkpoint, handle)
    print(f"{_printable(model_path)}: confidence threshold {previous:.2f} -> {threshold:.2f}")
    return EXIT_OK


def _error(message: str) -> int:
    """``error: <message>`` on stderr (the project's one error format); returns EXIT_USAGE."""
    print(f"error: {_printable(message)}", file=sys.stderr)
    return EXIT_USAGE


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    about = "Classify images with a birdplane model (bird / plane / superman / other, or your classes)."
    codes = (
        "exit codes: 0 done, 1 done but some images unusable, 2 usage error or unusable model/input, 130 interrupted"
    )
    parser = argparse.ArgumentParser(description=about, epilog=codes, add_help=add_help)
    add = parser.add_argument
    add("paths", nargs="*", metavar="PATH", help="the model file unless --model names it, then images and/or folders")
    add("--model", metavar="FILE", help="the model file, as every birdplane script names it (default: PATH 1)")
    add("--recursive", action="store_true", help="also look in subfolders of folders (default: off)")
    below = f"minimum softmax confidence (0-1) below which the prediction becomes {FALLBACK_LABEL!r}"
    add("--threshold", type=float, help=f"{below} (default: the one stored in the checkpoint)")
    add("--set-threshold", type=float, metavar="T", help="store T as the model file's threshold and exit (no images)")
    add("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per forward pass (default: 32)")
    add("--device", help="cpu, cuda, cuda:1, mps (default: cuda, then mps, then cpu)")
    add("--top-k", type=int, default=1, help="how many classes to show per image (default: 1)")
    add("--json", action="store_true", help="print one JSON object per image instead of a table")
    add("--csv", metavar="FILE", help="also write the predictions to a CSV file")
    onnx = "write the .pth model as this ONNX file for onnxruntime (needs onnx, onnxscript), classify nothing"
    add("--export-onnx", metavar="FILE.onnx", help=f"{onnx} (default: off)")
    add("-v", "--verbose", action="store_true", help="also log the model's settings (default: off)")
    add("--no-progress", action="store_true", help="accepted as in every script; classifier.py draws no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_intermixed_args(argv)  # MODEL --threshold 0.5 IMAGE... works too
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", force=True)
    if not args.model and not args.paths:
        return _error("no model given: python classifier.py MODEL IMAGE... (or --model MODEL IMAGE...)")
    model_path, inputs = (args.model, args.paths) if args.model else (args.paths[0], args.paths[1:])
    if args.export_onnx:
        return export_command(model_path, inputs, args.export_onnx)
    if args.set_threshold is not None:
        if inputs or is_onnx_path(model_path):
            fix = "set it in the .pth and rerun --export-onnx" if is_onnx_path(model_path) else "give no images with it"
            return _error(f"--set-threshold changes the model file only: {fix}")
        try:
            return store_threshold(model_path, args.set_threshold)
        except (CheckpointError, OSError) as error:
            return _error(str(error))
    missing = [item for item in inputs if not os.path.lexists(item)]
    no_csv_folder = args.csv and not Path(args.csv).resolve().parent.is_dir()
    usage_errors = (  # (failed, what to say), in this order
        (not inputs, "no images given: name the model file, then the image files and/or folders to classify"),
        (args.batch_size < 1, "--batch-size must be at least 1"),
        (args.top_k < 1, "--top-k must be at least 1"),
        (not 0 <= (args.threshold or 0) <= 1, f"--threshold must be between 0 and 1, got {args.threshold}"),
        (missing, f"no such file or folder: {', '.join(missing)}"),
        (no_csv_folder, f"--csv: the folder of {args.csv} does not exist"),
    )
    for failed, message in usage_errors:
        if failed:
            return _error(message)
    try:
        clf = BirdPlaneSupermanClassifier(model_path, confidence_threshold=args.threshold, device=args.device)
        settings = f"{clf.arch}, classes {', '.join(clf.classes)}, {clf.image_size} px, threshold "
        settings += f"{clf.confidence_threshold:.2f}, temperature {clf.temperature:.2f}, on {clf.device}"
        logger.info("Model %s: %s", _printable(model_path), _printable(settings))
        return classify_and_print(clf, inputs, args)
    except ValueError as error:  # a CheckpointError says it all; another is pick_device's or onnxruntime's refusal
        return _error(str(error) if isinstance(error, CheckpointError) else f"--device: {error}")
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
