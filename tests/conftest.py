"""Shared test fixtures: small generated images, labelled datasets, near-duplicates and every bad file.

Everything is generated in ``tmp_path``; nothing needs the network. Helpers are plain functions (importable as
``from conftest import make_dataset``) with thin fixtures around them.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "data_collection"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

DEFAULT_CLASSES = ("bird", "plane", "superman", "other")
# Distinct per class so a tiny model can tell them apart in an epoch or two: a dominant colour per class.
CLASS_COLOURS = [(220, 40, 40), (40, 200, 60), (40, 70, 220), (200, 200, 40), (200, 60, 200), (40, 200, 200)]

# What every reader must do with each bad file: "ok" = read it correctly, "refuse" = skip it with a reason.
BAD_FILE_EXPECTATIONS = {
    "zero_bytes.jpg": "refuse",
    "truncated.jpg": "refuse",
    "html_page.jpg": "refuse",
    "rgba.png": "ok",
    "palette_transparent.png": "ok",
    "grayscale.png": "ok",
    "sixteen_bit.png": "ok",
    "cmyk.jpg": "ok",
    "one_bit.png": "ok",
    "animated.gif": "ok",
    "image.webp": "ok",
    "exif_rotated.jpg": "ok",
    "bomb.png": "refuse",
    "tiny_1x1.png": "ok",
    "extreme_2000x10.png": "ok",
    "IMG.JPG": "ok",
    "photo.Jpeg": "ok",
    "no_extension": "ok",
    "my photo.jpg": "ok",
    "fötö_鳥.png": "ok",
    "-dash.jpg": "ok",
    "symlink.jpg": "ok",
    "broken_symlink.jpg": "refuse",
    "unreadable.jpg": "refuse",  # only unreadable when the tests do not run as root; see IS_ROOT
}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def make_class_image(class_index: int, seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """An RGB image whose dominant colour says its class and whose random shapes make it unique per seed."""
    rng = np.random.default_rng(seed * 7919 + class_index * 104729 + 1)
    width, height = size
    base = np.array(CLASS_COLOURS[class_index % len(CLASS_COLOURS)], dtype=np.float32)
    gradient = np.linspace(-40, 40, width, dtype=np.float32)[None, :, None] * rng.uniform(-1, 1)
    noise = rng.normal(0, 12, size=(height, width, 3)).astype(np.float32)
    pixels = np.clip(base[None, None, :] + gradient + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, x1 = sorted(rng.integers(0, width, 2))
        y0, y1 = sorted(rng.integers(0, height, 2))
        shade = tuple(int(c) for c in np.clip(base * rng.uniform(0.3, 1.3) + rng.integers(-30, 30, 3), 0, 255))
        if rng.random() < 0.5:
            draw.rectangle([x0, y0, x1 + 2, y1 + 2], fill=shade)
        else:
            draw.ellipse([x0, y0, x1 + 2, y1 + 2], fill=shade)
    return image


def save_image(image: Image.Image, path: Path, quality: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in {".jpg", ".jpeg"} else None
    if fmt == "JPEG":
        image.convert("RGB").save(path, "JPEG", quality=quality)
    else:
        image.save(path)
    return path


def make_dataset(
    root: Path,
    classes: Sequence[str] = DEFAULT_CLASSES,
    train_per_class: int | Sequence[int] = 8,
    val_per_class: int | Sequence[int] = 3,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
) -> Path:
    """Write ``root/train/<class>/`` and ``root/val/<class>/`` with JPEGs distinct per class; returns ``root``."""
    for split, counts, offset in (("train", train_per_class, 0), ("val", val_per_class, 100_000)):
        per_class = [counts] * len(classes) if isinstance(counts, int) else list(counts)
        for class_index, (class_name, count) in enumerate(zip(classes, per_class)):
            folder = root / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = make_class_image(class_index, seed * 1_000_003 + offset + i, size)
                save_image(image, folder / f"{class_name}_{i:03d}.jpg")
    return root


def make_near_duplicates(image: Image.Image) -> dict[str, Image.Image]:
    """The edits a web copy of an image goes through: each should still count as the same picture."""
    width, height = image.size
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=40)
    buffer.seek(0)
    crop_x, crop_y = max(1, int(width * 0.05)), max(1, int(height * 0.05))
    return {
        "resized_50": image.resize((max(1, width // 2), max(1, height // 2)), Image.Resampling.LANCZOS),
        "jpeg_q40": Image.open(buffer).convert("RGB"),
        "cropped_5": image.crop((crop_x, crop_y, width - crop_x, height - crop_y)),
        "brightened_10": ImageEnhance.Brightness(image).enhance(1.1),
        "mirrored": ImageOps.mirror(image),
    }


def _png_declaring_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb for any reader."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def exif_rotated_jpeg(path: Path) -> Path:
    """A 80x40 JPEG (red left half) tagged orientation 6: shown upright it is 40x80 with red on top."""
    image = Image.new("RGB", (80, 40), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    return path


def write_bad_files(folder: Path) -> dict[str, Path]:
    """Write every file of shared/BAD_INPUTS.md (items 1-13) into ``folder``; keys are BAD_FILE_EXPECTATIONS'."""
    folder.mkdir(parents=True, exist_ok=True)
    good = make_class_image(0, 12345, (64, 48))
    files: dict[str, Path] = {}

    def put(name: str) -> Path:
        files[name] = folder / name
        return files[name]

    put("zero_bytes.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    good.save(buffer, "JPEG", quality=90)
    put("truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    put("html_page.jpg").write_text("<!DOCTYPE html><html><body>Access denied</body></html>\n", encoding="utf-8")
    rgba = good.convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 0).point(lambda _: 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 16, 16))
    rgba.save(put("rgba.png"))
    palette = good.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(put("palette_transparent.png"), transparency=0)
    good.convert("L").save(put("grayscale.png"))
    sixteen = Image.fromarray((np.asarray(good.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    sixteen.save(put("sixteen_bit.png"))
    good.convert("CMYK").save(put("cmyk.jpg"), "JPEG", quality=90)
    good.convert("1").save(put("one_bit.png"))
    frames = [good, make_class_image(1, 1, (64, 48)), make_class_image(2, 2, (64, 48))]
    frames[0].save(put("animated.gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    good.save(put("image.webp"), "WEBP")
    exif_rotated_jpeg(put("exif_rotated.jpg"))
    put("bomb.png").write_bytes(_png_declaring_size(30000, 30000))
    Image.new("RGB", (1, 1), (10, 200, 10)).save(put("tiny_1x1.png"))
    make_class_image(3, 7, (2000, 10)).save(put("extreme_2000x10.png"))
    good.save(put("IMG.JPG"), "JPEG")
    good.save(put("photo.Jpeg"), "JPEG")
    good.save(put("no_extension"), "PNG")
    good.save(put("my photo.jpg"), "JPEG")
    good.save(put("fötö_鳥.png"), "PNG")
    good.save(put("-dash.jpg"), "JPEG")
    os.symlink(folder / "IMG.JPG", put("symlink.jpg"))
    os.symlink(folder / "does_not_exist.jpg", put("broken_symlink.jpg"))
    good.save(put("unreadable.jpg"), "JPEG")
    os.chmod(files["unreadable.jpg"], 0)
    return files


def refused_bad_files() -> set[str]:
    """Names every reader must refuse here (the unreadable file is readable when the tests run as root)."""
    refused = {name for name, expectation in BAD_FILE_EXPECTATIONS.items() if expectation == "refuse"}
    if IS_ROOT:
        refused.discard("unreadable.jpg")
    return refused


def without_timing(history: Sequence[dict]) -> list[dict]:
    """Epoch records without their timing fields, which differ between otherwise identical runs."""
    return [{k: v for k, v in record.items() if k not in ("seconds", "images_per_second")} for record in history]


def tree_snapshot(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (relative POSIX path -> bytes), for byte-for-byte comparisons."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and os.access(path, os.R_OK):
            snapshot[path.relative_to(root).as_posix()] = path.read_bytes()
    return snapshot


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a 2-core machine two spinning torch threads can be many times slower than one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """dataset/ with 4 classes, 8 train and 3 val 64x64 JPEGs per class."""
    return make_dataset(tmp_path / "dataset")


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    """A folder holding every bad file of shared/BAD_INPUTS.md; restores permissions afterwards."""
    files = write_bad_files(tmp_path / "bad")
    yield files
    if files["unreadable.jpg"].exists():
        os.chmod(files["unreadable.jpg"], 0o644)
