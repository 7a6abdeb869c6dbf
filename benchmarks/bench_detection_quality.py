"""Quality, not speed: how many planted near copies and label flips each tool finds, and how many it finds wrongly.

Two measurements on the same files in one run, ours beside the peers:
  1. Near copies. ``--sources`` photos each get ten variants (exact copy, 50% resize, JPEG q40, +20% brightness,
     5% crop off every side, mirror, 10 px black border, corner watermark text, PNG re-encode, greyscale), written
     next to every photo of the set (the distractors). Per tool: the variants found (in a group / listed together
     with another image of the same photo), by variant kind, and the pairs of different photos it put together
     (every pair inside a group; for imagededup every pair it lists). Ours at its default settings and at the
     thresholds given; imagededup's PHash at its default (10) and at 5.
  2. Label issues. ``--flip-fraction`` of the training images of a labelled set (one folder per class) move to
     another class at random; precision and recall of the flagged images against the moved ones. Ours: the analysis
     named by ``--label-method``; the peer: cleanlab's ``find_label_issues`` (default rule) on out-of-fold
     probabilities of a scikit-learn logistic regression over HOG + tiny pixels + a colour histogram.

With no photo folder the images are generated (photo-like shapes on gradients), so anyone can run it; real photos
are the test that counts (BENCHMARKS.md names the public repositories and commits used):

    python benchmarks/bench_detection_quality.py --generated
    python benchmarks/bench_detection_quality.py --photos /work/photos/imagenet --labelled /work/photos/clothing/train
    python benchmarks/bench_detection_quality.py --photos /work/photos/imagenet --only near --thresholds 5 8 10

Writes the planted sets under benchmarks/_out/quality/ (git-ignored; rebuilt on every run) and the reports there.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import itertools
import json
import os
import platform
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "data_collection")]
import detect_duplicates_by_phash as by_phash  # noqa: E402 - found through the line above
from bench_duplicates import make_photo  # noqa: E402 - photo-like generated images, shared with the speed benchmark

OUT_DIR = ROOT / "benchmarks" / "_out" / "quality"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
VARIANT_KINDS = ("exact", "resize50", "jpeg40", "bright20", "crop5", "mirror", "border10", "watermark", "png", "grey")
CROP_FRACTION = 0.05  # cut from every side (as tests/conftest.make_near_duplicates does)
BORDER_PIXELS = 10
WATERMARK_TEXT = "(c) stockphoto.example"
JPEG_QUALITY = 90  # variants other than jpeg40 and png are saved as ordinary web JPEGs
IMAGEDEDUP_THRESHOLDS = (10, 5)  # its default, and ours of before the two-stage search
GENERATED_SIZE = (480, 360)


# ----------------------------------------------------------------------------------------------------------------
# Planted near copies


def variants(image: Image.Image) -> dict[str, tuple[Image.Image, str, int | None]]:
    """The nine edited copies of an RGB image (the tenth, the exact copy, is the file itself): (image, format,
    JPEG quality)."""
    width, height = image.size
    cut_x, cut_y = max(1, round(width * CROP_FRACTION)), max(1, round(height * CROP_FRACTION))
    marked = image.copy()
    draw = ImageDraw.Draw(marked)
    font = ImageFont.load_default(size=max(10, height // 14))
    left, top, right, bottom = draw.textbbox((0, 0), WATERMARK_TEXT, font=font)
    x, y = width - (right - left) - width // 40, height - (bottom - top) - height // 30
    draw.text((x + 1, y + 1), WATERMARK_TEXT, font=font, fill=(0, 0, 0))
    draw.text((x, y), WATERMARK_TEXT, font=font, fill=(255, 255, 255))
    return {
        "resize50": (image.resize((max(1, width // 2), max(1, height // 2)), Image.Resampling.LANCZOS), "JPEG", 90),
        "jpeg40": (image, "JPEG", 40),
        "bright20": (ImageEnhance.Brightness(image).enhance(1.2), "JPEG", JPEG_QUALITY),
        "crop5": (image.crop((cut_x, cut_y, width - cut_x, height - cut_y)), "JPEG", JPEG_QUALITY),
        "mirror": (ImageOps.mirror(image), "JPEG", JPEG_QUALITY),
        "border10": (ImageOps.expand(image, border=BORDER_PIXELS, fill=(0, 0, 0)), "JPEG", JPEG_QUALITY),
        "watermark": (marked, "JPEG", JPEG_QUALITY),
        "png": (image, "PNG", None),
        "grey": (image.convert("L"), "JPEG", JPEG_QUALITY),
    }


def list_photos(folder: Path) -> list[Path]:
    """The images under ``folder`` (recursively), sorted."""
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file())


def generated_photos(count: int, folder: Path) -> list[Path]:
    """``count`` photo-like JPEGs (bench_duplicates.make_photo), written once to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"generated_{index:04d}.jpg" for index in range(count)]
    for index, path in enumerate(paths):
        if not path.exists():
            make_photo(10_000 + index, GENERATED_SIZE).save(path, "JPEG", quality=JPEG_QUALITY)
    return paths


def plant_near_copies(photos: Sequence[Path], sources: int, folder: Path, seed: int) -> dict[str, tuple[str, str]]:
    """A flat folder of every photo plus the ten variants of ``sources`` of them; {file name: (photo id, kind)},
    kind "original" for the photos themselves. Rebuilt from scratch."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    truth: dict[str, tuple[str, str]] = {}
    for index, path in enumerate(photos):
        name = f"p{index:05d}{path.suffix.lower()}"
        shutil.copyfile(path, folder / name)
        truth[name] = (f"p{index:05d}", "original")
    for index in sorted(random.Random(seed).sample(range(len(photos)), min(sources, len(photos)))):
        photo = f"p{index:05d}"
        exact = f"{photo}_exact{photos[index].suffix.lower()}"
        shutil.copyfile(photos[index], folder / exact)
        truth[exact] = (photo, "exact")
        with Image.open(photos[index]) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        for kind, (edited, image_format, quality) in variants(image).items():
            name = f"{photo}_{kind}{'.png' if image_format == 'PNG' else '.jpg'}"
            edited.save(folder / name, image_format, **({"quality": quality} if quality else {}))
            truth[name] = (photo, kind)
    return truth


# ----------------------------------------------------------------------------------------------------------------
# Scoring


class NearCopyScore(NamedTuple):
    found: int
    planted: int
    by_kind: dict[str, int]
    false_pairs: int
    examples: list[tuple[str, str]]  # a few pairs of different photos, for a person to look at


def score_pairs(pairs: set[frozenset[str]], truth: dict[str, tuple[str, str]]) -> NearCopyScore:
    """A planted variant is found when some pair joins it to another image of its photo; a false pair joins two
    different photos."""
    found: dict[str, int] = {kind: 0 for kind in VARIANT_KINDS}
    is_found = set()
    false = []
    for pair in pairs:
        first, second = sorted(pair)
        if truth[first][0] == truth[second][0]:
            is_found.update(name for name in pair if truth[name][1] != "original")
        else:
            false.append((first, second))
    for name in is_found:
        found[truth[name][1]] += 1
    planted = sum(kind != "original" for _, kind in truth.values())
    return NearCopyScore(sum(found.values()), planted, found, len(false), sorted(false)[:5])


def group_pairs(groups: Sequence[Sequence[str]]) -> set[frozenset[str]]:
    """Every pair of files inside a group (a group says all its files are one picture)."""
    return {frozenset(pair) for group in groups for pair in itertools.combinations(group, 2)}


# ----------------------------------------------------------------------------------------------------------------
# The tools


def cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def run_ours(folder: Path, arguments: Sequence[str], workers: int) -> tuple[set[frozenset[str]], float, float]:
    """Our pHash detector through its main(): (pairs inside its groups, wall seconds, CPU seconds)."""
    report = OUT_DIR / "report_phash.json"
    command = ["--dataset-dir", str(folder), "--report", str(report), "--no-cache", "--no-progress"]
    wall, cpu = time.perf_counter(), cpu_seconds()
    with contextlib.redirect_stdout(io.StringIO()):
        code = by_phash.main([*command, "--workers", str(workers), *arguments])
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    if code not in (0, 1):
        raise RuntimeError(f"detect_duplicates_by_phash.py {' '.join(arguments)} exited with {code}")
    data = json.loads(report.read_text(encoding="utf-8"))
    groups = [
        [entry["path"] for entry in group["files"]] for groups in data["duplicate_groups"].values() for group in groups
    ]
    return group_pairs(groups), wall, cpu


def run_imagededup(folder: Path, thresholds: Sequence[int], workers: int) -> dict[int, tuple[set, float, float]]:
    """imagededup's PHash: the folder encoded once (timed with the first threshold), then searched per threshold."""
    from imagededup.methods import PHash  # noqa: PLC0415 - a benchmark-only requirement

    hasher = PHash(verbose=False)
    results = {}
    wall, cpu = time.perf_counter(), cpu_seconds()
    encodings = hasher.encode_images(image_dir=folder, num_enc_workers=workers)
    encode_wall, encode_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    for threshold in thresholds:
        wall, cpu = time.perf_counter(), cpu_seconds()
        duplicates = hasher.find_duplicates(
            encoding_map=encodings, max_distance_threshold=threshold, num_dist_workers=workers
        )
        pairs = {frozenset((name, other)) for name, others in duplicates.items() for other in others}
        results[threshold] = (pairs, encode_wall + time.perf_counter() - wall, encode_cpu + cpu_seconds() - cpu)
    return results
