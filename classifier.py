"""Classify images with a trained birdplane model: one self-contained file to copy into any project.

Copy this file and ``models/best_model.pth`` into another project; it needs torch, torchvision, Pillow and numpy only.
It is the single definition of the model (``build_model``), of how images are found and read (``find_image_files``,
``open_image``, ``load_image``: the reasons a bad file is refused), the preprocessing (``build_eval_transform``) and
the checkpoint format (``save_checkpoint``, ``load_checkpoint``); the trainer and the duplicate detectors import it.

    python classifier.py models/best_model.pth test_image.jpg
    python classifier.py models/best_model.pth test_images/ --recursive --top-k 3
    python classifier.py models/best_model.pth test_images/ --json > predictions.jsonl

    from classifier import BirdPlaneSupermanClassifier
    clf = BirdPlaneSupermanClassifier("models/best_model.pth", confidence_threshold=0.7)
    pred_class, confidence, probs = clf.predict("img.jpg")

Writes nothing unless ``--csv FILE`` is given; predictions go to stdout, warnings to stderr.
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
import stat as stat_module
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
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
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own bomb limit; larger images are refused instead of decoded
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white, as a browser shows them
IMAGE_MODES = ("RGB", "L")  # what load_image returns: colour for the model, greyscale for perceptual hashes
DEFAULT_BATCH_SIZE = 32
DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))  # Pillow releases the GIL while decoding
_MAGIC = (  # file signatures: images are found by content, not by name
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class CheckpointError(ValueError):
    """A model file that cannot be used; the message is one sentence saying why."""


class ImageLoadError(ValueError):
    """An image that cannot be used; the message is the reason."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched (usually no network)."""


# ----------------------------------------------------------------------------------------------------------------
# Pure functions: sizes, decisions, probabilities


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


def softmax_with_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) over the last dimension, computed in float32."""
    return torch.softmax(logits.float() / float(temperature), dim=-1)


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


# ----------------------------------------------------------------------------------------------------------------
# Images


def sniff_image_format(path: str | os.PathLike) -> str | None:
    """The image format from the first bytes of the file, or None when it is not a (known) image or unreadable."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file's content starts like an image, whatever its name."""
    return sniff_image_format(path) is not None


def find_image_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``folder``, sorted: any case of a common extension, or any name whose content is an image.

    Hidden files and folders (``.trash``, caches) are skipped. Files with an image extension are listed even when
    they are broken (empty, HTML, a dangling symlink), so that whoever reads them can report why they failed.
    """
    root = Path(folder)
    found: list[Path] = []
    walker = os.walk(root, followlinks=False) if recursive else [(str(root), [], os.listdir(root))]
    for directory, subdirs, names in walker:
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            path = Path(directory) / name
            if not recursive and path.is_dir():
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS or is_image_file(path):
                found.append(path)
    return sorted(found)


def describe_content(path: str | os.PathLike) -> str:
    """A short guess at what a non-image file is, for error messages."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(256).lstrip().lower()
    except OSError:
        return "unreadable content"
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "HTML page saved with an image name"
    if head.startswith((b"{", b"[")):
        return "JSON/text content"
    return "unrecognised content"


def open_image(path: str | os.PathLike) -> Image.Image:
    """The image opened lazily (header read, no pixel decoded); raises ImageLoadError with the reason a user reads.

    Refuses decompression bombs (more than MAX_IMAGE_PIXELS pixels). The caller closes the image.
    """
    try:
        stat = os.stat(path)  # one system call for the usual case; the reasons below only when it fails
    except (FileNotFoundError, NotADirectoryError):
        raise ImageLoadError("file not found" + (" (broken symlink)" if os.path.islink(path) else "")) from None
    except PermissionError:
        raise ImageLoadError("permission denied (the file is not readable)") from None
    except OSError as error:
        raise ImageLoadError(f"cannot read the file ({error.strerror or error})") from None
    if stat_module.S_ISDIR(stat.st_mode):
        raise ImageLoadError("is a folder, not an image")
    if stat.st_size == 0:
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


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB (see to_mode)."""
    return to_mode(image, "RGB")


def decode_image(image: Image.Image, draft_size: tuple[int, int] | None = None, mode: str = "RGB") -> Image.Image:
    """An image from open_image fully decoded, upright, in ``mode`` "RGB" or "L"; raises ImageLoadError.

    ``draft_size``: for JPEGs, let the decoder scale down by 1/2, 1/4 or 1/8 while keeping both sides at least this
    large (much faster for big photos, and exact enough for a resize to that size that follows); with ``mode`` "L"
    a colour JPEG is also decoded straight to greyscale. The first frame of an animation is used.
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


def resize_for_model(image: Image.Image, image_size: int, resize_size: int) -> Image.Image:
    """Resize the shorter side to ``resize_size`` and centre-crop ``image_size`` square, in one resampling step."""
    box = center_crop_box(image.width, image.height, image_size, resize_size)
    return image.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)


def image_to_uint8(image: Image.Image, image_size: int, resize_size: int) -> np.ndarray:
    """HWC uint8 array of the model input, before normalisation (cheap to pass between threads)."""
    return np.asarray(resize_for_model(image, image_size, resize_size), dtype=np.uint8)


def normalize_batch(batch_hwc: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """NHWC uint8 -> NCHW float32 normalised, in channels_last memory (no copy to NCHW layout)."""
    batch = batch_hwc.permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    return batch.sub_(mean_t).div_(std_t).contiguous(memory_format=torch.channels_last)


def build_eval_transform(
    image_size: int = DEFAULT_IMAGE_SIZE,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> normalised CHW float32 tensor, exactly as the classifier preprocesses."""
    resize_size = resize_size or default_resize_size(image_size)

    def transform(image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(image_to_uint8(image, image_size, resize_size).copy())
        return normalize_batch(pixels.unsqueeze(0), mean, std)[0].contiguous()

    return transform


# ----------------------------------------------------------------------------------------------------------------
# Model


def build_model(arch: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """A torchvision ResNet with a fresh ``num_classes`` head.

    ``weights``: None or "none" for random initialisation; "imagenet" for torchvision's default pretrained weights
    (downloaded once into the torch hub cache); anything else is a local file holding a state dict or a checkpoint.
    """
    import torchvision  # here, not at the top: it takes seconds to import and only building a model needs it

    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(SUPPORTED_ARCHS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
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
    if not path.is_file():
        raise CheckpointError(f"Weights file {path} does not exist; pass an existing file, 'imagenet' or 'none'.")
    state = _torch_load_safely(path, map_location="cpu")
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

    def features(batch: torch.Tensor) -> torch.Tensor:
        x = model.maxpool(model.relu(model.bn1(model.conv1(batch))))
        x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
        return torch.flatten(model.avgpool(x), 1)

    return features


def pick_device(device: str | None = None) -> torch.device:
    """The given device, or the best available: cuda, then mps, then cpu; ValueError for one this machine lacks."""
    if device:
        try:
            chosen = torch.device(device)
        except (RuntimeError, ValueError):
            raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is available here; use cpu")
        if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        if chosen.type == "mps" and not _has_mps():
            raise ValueError(f"device {device!r}: Apple's MPS is not available here; use cpu")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _has_mps():
        return torch.device("mps")
    return torch.device("cpu")


def _has_mps() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint format


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
    """The checkpoint dict: plain types plus CPU tensors, loadable with ``torch.load(..., weights_only=True)``."""
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


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **fields: Any) -> dict[str, Any]:
    """Write ``make_checkpoint(model, **fields)`` atomically (temp file, then ``os.replace``); returns the dict."""
    checkpoint = make_checkpoint(model, **fields)
    write_atomically(path, checkpoint)
    return checkpoint


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """A handle on a temp file beside ``path``; on success it is fsynced and renamed over ``path``, else removed.

    Readers see the old file or the new one, never half of one, whatever happens (crash, Ctrl-C, full disk).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; the result is an ordinary file
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_atomically(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` to a temp file beside ``path`` and rename it over, so a crash never leaves half a file."""
    with atomic_file(path, "wb") as handle:
        torch.save(obj, handle)


def write_json_atomically(path: str | os.PathLike, data: Any, indent: int = 2) -> None:
    """Strict JSON (no NaN), UTF-8, written atomically: the way every birdplane report reaches the disk."""
    with atomic_file(path, "w") as handle:
        json.dump(data, handle, indent=indent, ensure_ascii=False, allow_nan=False)
        handle.write("\n")


def _torch_load_safely(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; every failure becomes a one-sentence CheckpointError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing them
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"Model file {path} does not exist; train one with train_classifier.py.") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a model file.") from None
    except PermissionError:
        raise CheckpointError(f"Model file {path} is not readable (permission denied).") from None
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower() and _looks_like_torch_file(path):
            raise CheckpointError(
                f"Refusing {path}: loading it needs more than weights_only=True (it could run code), so it is not "
                "a safe birdplane checkpoint."
            ) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (unreadable pickle data).") from None
    except Exception as error:  # noqa: BLE001 - any garbage must end in one sentence, never a traceback
        detail = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({detail}).") from None


def _looks_like_torch_file(path: Path) -> bool:
    """True for torch.save's zip container or a pickle stream (protocol 2+), the shapes a real checkpoint has."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; raises CheckpointError with one clear sentence when it cannot be used."""
    path = Path(path)
    checkpoint = _torch_load_safely(path, map_location)
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint or "format_version" not in checkpoint:
        raise CheckpointError(f"{path} is not a birdplane checkpoint (no format_version and model_state_dict).")
    version = checkpoint["format_version"]
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}, but this classifier.py reads version "
            f"{CHECKPOINT_FORMAT_VERSION}; use the classifier.py that came with the model."
        )
    arch, classes = checkpoint.get("arch"), checkpoint.get("classes")
    if arch not in SUPPORTED_ARCHS:
        raise CheckpointError(f"{path} names an unknown architecture {arch!r} (known: {', '.join(SUPPORTED_ARCHS)}).")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path} has no list of class names.")
    if checkpoint.get("num_classes", len(classes)) != len(classes):
        raise CheckpointError(f"{path} says {checkpoint['num_classes']} classes but lists {len(classes)}.")
    for key in ("image_size", "resize_size", "mean", "std", "confidence_threshold", "temperature"):
        if key not in checkpoint:
            raise CheckpointError(f"{path} lacks the field {key!r} of the checkpoint format.")
    problem = _invalid_settings(checkpoint)
    if problem:
        raise CheckpointError(f"{path} has an invalid {problem}.")
    return checkpoint


def _invalid_settings(checkpoint: dict[str, Any]) -> str | None:
    """What is wrong with the preprocessing and decision settings of a checkpoint, or None."""

    def is_number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    for key in ("image_size", "resize_size"):
        value = checkpoint[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{key} {value!r} (a positive whole number is needed)"
    for key in ("mean", "std"):
        value = checkpoint[key]
        if not isinstance(value, list | tuple) or len(value) != 3 or not all(is_number(v) for v in value):
            return f"{key} {value!r} (three numbers, one per colour channel, are needed)"
    if not all(v > 0 for v in checkpoint["std"]):
        return f"std {checkpoint['std']!r} (all three must be positive)"
    threshold = checkpoint["confidence_threshold"]
    if not is_number(threshold) or not 0.0 <= threshold <= 1.0:
        return f"confidence_threshold {threshold!r} (a number from 0 to 1 is needed)"
    temperature = checkpoint["temperature"]
    if not is_number(temperature) or not temperature > 0:
        return f"temperature {temperature!r} (a positive number is needed)"
    return None


def model_from_checkpoint(checkpoint: dict[str, Any], source: str = "the checkpoint") -> nn.Module:
    """The model described by a loaded checkpoint, with its weights, in eval mode."""
    arch, num_classes = checkpoint["arch"], len(checkpoint["classes"])
    model = build_model(arch, num_classes, weights=None)
    state = checkpoint["model_state_dict"]
    head = state.get("fc.weight") if isinstance(state, dict) else None
    if isinstance(head, torch.Tensor) and head.shape[0] != num_classes:
        raise CheckpointError(
            f"The weights in {source} have {head.shape[0]} outputs but the checkpoint lists {num_classes} classes."
        )
    try:
        model.load_state_dict(state, strict=True)
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
    """Loads a birdplane checkpoint and classifies images (paths or PIL images), one at a time or in batches."""

    def __init__(
        self,
        model_path: str | os.PathLike = "models/best_model.pth",
        confidence_threshold: float | None = None,
        device: str | None = None,
    ) -> None:
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
    @torch.inference_mode()
    def _probabilities(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        logits = self.model(self._to_input(arrays))
        return softmax_with_temperature(logits, self.temperature).cpu().numpy()

    def _result(self, probabilities: np.ndarray) -> tuple[str, float, dict[str, float]]:
        pred_class, confidence = decide(probabilities, self.classes, self.confidence_threshold)
        return pred_class, confidence, {c: float(p) for c, p in zip(self.classes, probabilities)}

    def predict(self, image: str | os.PathLike | Image.Image) -> tuple[str, float, dict[str, float]]:
        """(predicted class, its probability, {class: probability}); raises ImageLoadError for an unusable image."""
        return self._result(self._probabilities([self._prepare(image)])[0])

    def predict_batch(
        self, paths: Iterable[str | os.PathLike | Image.Image], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[tuple[Any, str | None, float, dict[str, float]]]:
        """(path, predicted class, confidence, probabilities) for every input, in order.

        An image that cannot be read gives ``(path, None, 0.0, {})`` and a logged warning naming it and the reason.
        """
        for batch in self._prepared_batches(paths, batch_size):
            good = [item for item in batch if item[1] is not None]
            probabilities = iter(self._probabilities([item[1] for item in good]) if good else [])
            for source, pixels, error in batch:
                if pixels is None:
                    logger.warning("Skipping %s: %s", source, error)
                    yield source, None, 0.0, {}
                else:
                    yield (source, *self._result(next(probabilities)))

    @torch.inference_mode()
    def embed_batch(
        self, paths: Iterable[str | os.PathLike | Image.Image], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[tuple[Any, np.ndarray | None, str | None]]:
        """(path, L2-normalised pooled features as float32, None) per input in order; (path, None, reason) if bad."""
        for batch in self._prepared_batches(paths, batch_size):
            good = [item for item in batch if item[1] is not None]
            if good:
                features = self._features(self._to_input([item[1] for item in good])).float()
                features = torch.nn.functional.normalize(features, dim=1).cpu().numpy()
            vectors = iter(features if good else [])
            for source, pixels, error in batch:
                yield (source, None, error) if pixels is None else (source, next(vectors), None)


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


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Classify images with a birdplane model (bird / plane / superman / other, or your classes).",
        add_help=add_help,
    )
    parser.add_argument("model", help="checkpoint file, e.g. models/best_model.pth")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--recursive", action="store_true", help="also look in subfolders of folders (default: off)")
    parser.add_argument(
        "--threshold", type=float, default=None, help="confidence threshold (default: the one in the checkpoint)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per forward pass (default: 32)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda, then mps, then cpu)")
    parser.add_argument("--top-k", type=int, default=1, help="how many classes to show per image (default: 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image instead of a table")
    parser.add_argument("--csv", metavar="FILE", default=None, help="also write the predictions to a CSV file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold must be between 0 and 1, got {args.threshold}")
    missing = [item for item in args.inputs if not os.path.lexists(item)]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    try:
        pick_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}")
    if args.csv and not Path(args.csv).resolve().parent.is_dir():
        parser.error(f"--csv: the folder of {args.csv} does not exist")
    try:
        clf = BirdPlaneSupermanClassifier(args.model, confidence_threshold=args.threshold, device=args.device)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    paths = collect_inputs(args.inputs, args.recursive)
    if not paths:
        print("error: no image files found in the given folders.", file=sys.stderr)
        return 1

    rows = []
    for path, pred_class, confidence, probs in clf.predict_batch(paths, batch_size=args.batch_size):
        error = None if pred_class is not None else "could not read the image (see warning above)"
        rows.append(
            {
                "path": str(path),
                "predicted_class": pred_class,
                "confidence": round(confidence, 6),
                "top_k": [[name, round(p, 6)] for name, p in top_k(probs, args.top_k)],
                "probabilities": {name: round(p, 6) for name, p in probs.items()},
                "error": error,
            }
        )
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    else:
        width = max(len("image"), *(len(row["path"]) for row in rows))
        print(f"{'image':<{width}}  {'prediction':<12} {'conf':>6}  top-{args.top_k}")
        for row in rows:
            shown = ", ".join(f"{name} {p:.2f}" for name, p in row["top_k"])
            label = row["predicted_class"] or "ERROR"
            print(f"{row['path']:<{width}}  {label:<12} {row['confidence']:>6.3f}  {shown or row['error']}")
        failed = sum(row["error"] is not None for row in rows)
        print(f"\n{len(rows) - failed} classified, {failed} failed, threshold {clf.confidence_threshold:.2f}")
    if args.csv:
        with atomic_file(args.csv, "w") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "predicted_class", "confidence", *clf.classes, "error"])
            for row in rows:
                probs = [row["probabilities"].get(c, "") for c in clf.classes]
                writer.writerow(
                    [row["path"], row["predicted_class"] or "", row["confidence"], *probs, row["error"] or ""]
                )
    return 1 if any(row["error"] for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
