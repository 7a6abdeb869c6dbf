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

With no photo folder the images are generated (photo-like shapes on gradients; at most 200 photos), so anyone can run
it; real photos are the test that counts (BENCHMARKS.md names the public repositories and commits used). imagededup
is a benchmark-only requirement (pip install imagededup): without it its rows are left out, with a sentence.

    python benchmarks/bench_detection_quality.py --generated
    python benchmarks/bench_detection_quality.py --photos /work/photos/imagenet /work/photos/clothing/train --only near
    python benchmarks/bench_detection_quality.py --labelled /work/photos/clothing/train --only labels --per-class 150

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
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "data_collection")]
import detect_duplicates_by_phash as by_phash  # noqa: E402 - found through the line above
from bench_duplicates import make_photo  # noqa: E402 - photo-like generated images, shared with the speed benchmark

import duplicate_report  # noqa: E402

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


def run_ours(folder: Path, arguments: Sequence[str], workers: int) -> tuple[set[frozenset[str]], float, float, str]:
    """Our pHash detector through its main(): (pairs inside its groups, wall seconds, CPU seconds, what the pixel
    check did)."""
    report = OUT_DIR / "report_phash.json"
    command = ["--dataset-dir", str(folder), "--report", str(report), "--no-cache", "--no-progress"]
    wall, cpu = time.perf_counter(), cpu_seconds()
    with contextlib.redirect_stdout(io.StringIO()):
        code = by_phash.main([*command, "--workers", str(workers), *arguments])
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    if code not in (0, 1):
        raise RuntimeError(f"detect_duplicates_by_phash.py {' '.join(arguments)} exited with {code}")
    data = duplicate_report.load_report(report, "duplicate report")  # the one reader: validated, as every reader does
    groups = [[entry["path"] for entry in group["files"]] for group in duplicate_report.iter_groups(data)]
    settings = data["search_settings"]
    checked = f"{settings['rejected_pairs']} of {settings['checked_pairs']}" if "checked_pairs" in settings else "-"
    return group_pairs(groups), wall, cpu, checked


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


# ----------------------------------------------------------------------------------------------------------------
# Planted label flips


class LabelledSet(NamedTuple):
    paths: list[Path]
    classes: list[str]
    given: np.ndarray  # the labels after flipping
    is_flipped: np.ndarray


def labelled_photos(
    folder: Path, per_class: int, seed: int, only: Sequence[str] | None = None
) -> tuple[list[Path], list[str], np.ndarray]:
    """Up to ``per_class`` photos from each class folder of ``folder`` (seeded choice; the ``only`` classes when
    given), their classes, labels."""
    classes = sorted(path.name for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
    classes = [name for name in classes if not only or name in only]
    rng = random.Random(seed)
    paths, labels = [], []
    for index, name in enumerate(classes):
        photos = list_photos(folder / name)
        for path in sorted(rng.sample(photos, min(per_class, len(photos)))):
            paths.append(path)
            labels.append(index)
    return paths, classes, np.array(labels)


def generated_labelled(folder: Path, classes: int, per_class: int) -> tuple[list[Path], list[str], np.ndarray]:
    """Photo-like JPEGs whose colours lean towards a hue per class (so a class is learnable, not trivial)."""
    folder.mkdir(parents=True, exist_ok=True)
    hues = np.array([(220, 60, 60), (60, 180, 60), (60, 80, 220), (210, 200, 60), (190, 70, 200), (60, 200, 200)])
    paths, labels = [], []
    for label in range(classes):
        for index in range(per_class):
            path = folder / f"class{label}_{index:04d}.jpg"
            if not path.exists():
                pixels = np.asarray(make_photo(50_000 + label * 1000 + index, (160, 120)), dtype=np.float32)
                pixels = 0.7 * pixels + 0.3 * hues[label % len(hues)]
                Image.fromarray(pixels.astype(np.uint8)).save(path, "JPEG", quality=JPEG_QUALITY)
            paths.append(path)
            labels.append(label)
    return paths, [f"class{label}" for label in range(classes)], np.array(labels)


def flip_labels(labels: np.ndarray, classes: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(given labels, is flipped): ``fraction`` of the images, chosen at random, moved to another class at random."""
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(labels), round(len(labels) * fraction), replace=False)
    given = labels.copy()
    given[flipped] = (labels[flipped] + rng.integers(1, classes, len(flipped))) % classes
    is_flipped = np.zeros(len(labels), dtype=bool)
    is_flipped[flipped] = True
    return given, is_flipped


def load_pixels(paths: Sequence[Path], side: int = 64) -> np.ndarray:
    """(N, side, side, 3) float32 in [0, 1]: each image squashed to a square (the analysis' input, too)."""
    rows = []
    for path in paths:
        with Image.open(path) as image:
            image.draft("RGB", (side * 2, side * 2))
            rows.append(np.asarray(ImageOps.exif_transpose(image).convert("RGB").resize((side, side)), np.float32))
    return np.stack(rows) / 255.0


def simple_features(pixels: np.ndarray) -> np.ndarray:
    """The peer's features, none of them learnt from labels: HOG (8 px cells of the 64 px greyscale image, 9
    unsigned orientations, each cell L2-normalised), the image at 8 x 8 RGB, and a 4 x 4 x 4 colour histogram."""
    count, side = len(pixels), pixels.shape[1]
    grey = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gy, gx = np.gradient(grey, axis=(1, 2))
    bins = np.minimum((np.mod(np.arctan2(gy, gx), np.pi) / np.pi * 9).astype(int), 8)
    weighted = np.eye(9, dtype=np.float32)[bins] * np.hypot(gx, gy)[..., None]
    cells = weighted.reshape(count, side // 8, 8, side // 8, 8, 9).sum(axis=(2, 4))
    cells /= np.linalg.norm(cells, axis=3, keepdims=True) + 1e-6
    tiny = pixels.reshape(count, 8, side // 8, 8, side // 8, 3).mean(axis=(2, 4))
    levels = np.minimum((pixels * 4).astype(int), 3)
    codes = (levels[..., 0] * 16 + levels[..., 1] * 4 + levels[..., 2]).reshape(count, -1)
    histogram = np.stack([np.bincount(row, minlength=64) for row in codes]) / codes.shape[1]
    return np.hstack([cells.reshape(count, -1), tiny.reshape(count, -1), histogram]).astype(np.float32)


def peer_label_issues(pixels: np.ndarray, given: np.ndarray, seed: int) -> np.ndarray:
    """cleanlab's find_label_issues (its default rule) on the out-of-fold probabilities of a scikit-learn logistic
    regression over simple_features."""
    from cleanlab.filter import find_label_issues  # noqa: PLC0415 - a benchmark-only requirement
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: PLC0415
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    probabilities = cross_val_predict(model, simple_features(pixels), given, cv=folds, method="predict_proba")
    return find_label_issues(given, probabilities)


def ours_by_analysis(pixels: np.ndarray, given: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Our out-of-fold analysis as the trainer runs it without pretrained weights: problematic_analysis's label
    issues from its label-independent pixel features, and the out-of-fold probabilities they came from."""
    import torch  # noqa: PLC0415

    import problematic_analysis  # noqa: PLC0415 - imports torch

    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    features = problematic_analysis.pixel_features(images).numpy()
    return problematic_analysis.label_issues_from_features([features], given, seed=seed)


def ours_by_trainer(
    paths: Sequence[Path], classes: Sequence[str], given: np.ndarray, seed: int, epochs: int
) -> np.ndarray:
    """Our trainer's --detect-problematic run (ResNet18 from scratch at 64 px, the analysis over all --epochs) on a
    dataset folder holding the images under their given labels: the images its report marks as label issues."""
    import train_classifier  # noqa: PLC0415 - imports torch

    dataset = OUT_DIR / "labels_dataset"
    if dataset.exists():
        shutil.rmtree(dataset)
    names = []
    for index, (path, label) in enumerate(zip(paths, given)):
        name = f"train/{classes[label]}/img{index:05d}{path.suffix.lower()}"
        (dataset / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dataset / name)
        names.append(name)
    for label, name in enumerate(classes):  # a small validation set the trainer needs: one image per class, copied
        (dataset / "val" / name).mkdir(parents=True)
        shutil.copyfile(paths[int(np.flatnonzero(given == label)[0])], dataset / "val" / name / f"val{paths[0].suffix}")
    report = OUT_DIR / "problematic_report.json"
    arguments = ["--dataset-dir", str(dataset), "--output-dir", str(OUT_DIR / "labels_model"), "--arch", "resnet18"]
    arguments += ["--image-size", "64", "--weights", "none", "--freeze-until", "none", "--epochs", str(epochs)]
    arguments += ["--patience", "0"]
    arguments += ["--detect-problematic", "--analysis-epochs", str(epochs), "--stop-after-analysis"]
    arguments += ["--report", str(report), "--seed", str(seed), "--no-progress"]
    with contextlib.redirect_stdout(io.StringIO()):
        code = train_classifier.main(arguments)
    if code not in (0, 1):
        raise RuntimeError(f"train_classifier.py exited with {code}")
    data = json.loads(report.read_text(encoding="utf-8"))
    flagged = {
        entry["path"]
        for entries in data["problematic_images"].values()
        for entry in entries
        if entry.get("is_label_issue")
    }
    return np.array([name in flagged for name in names])


def precision_recall(flagged: np.ndarray, is_flipped: np.ndarray) -> tuple[int, float, float]:
    hits = int((flagged & is_flipped).sum())
    return int(flagged.sum()), hits / max(1, int(flagged.sum())), hits / max(1, int(is_flipped.sum()))


# ----------------------------------------------------------------------------------------------------------------
# The two measurements


def bench_near_copies(photos: Sequence[Path], args: argparse.Namespace) -> None:
    folder = OUT_DIR / "near_copies"
    truth = plant_near_copies(photos, args.sources, folder, args.seed)
    planted = sum(kind != "original" for _, kind in truth.values())
    print(f"Near copies: {len(photos)} photos, {planted} planted variants of {args.sources} of them, in {folder}")
    rows = []
    baseline = None
    runs = [
        (
            "ours, before: one stage (5, no mirror, no check)",
            ["--threshold", "5", "--min-similarity", "0", "--no-flip-invariant"],
        )
    ]
    runs.append((f"ours, default ({by_phash.DEFAULT_THRESHOLD} + check, mirror)", []))
    runs += [(f"ours, {threshold} + check", ["--threshold", str(threshold)]) for threshold in args.thresholds]
    for label, arguments in runs:
        pairs, wall, cpu, checked = run_ours(folder, arguments, args.workers)
        baseline = baseline or (wall, cpu)
        rows.append((label, score_pairs(pairs, truth), wall, cpu, checked))
    if importlib.util.find_spec("imagededup") is None:
        print("  imagededup is not installed (pip install imagededup): its rows are left out")
    else:
        for threshold, (pairs, wall, cpu) in run_imagededup(folder, IMAGEDEDUP_THRESHOLDS, args.workers).items():
            rows.append(
                (
                    f"imagededup PHash, {threshold}" + (" (its default)" if threshold == 10 else ""),
                    score_pairs(pairs, truth),
                    wall,
                    cpu,
                    "-",
                )
            )
    kinds = " | ".join(VARIANT_KINDS)
    print(
        f"| tool, threshold | found /{planted} | {kinds} | pairs of different photos | candidate pairs rejected "
        "by the check | wall s | CPU s | wall, CPU vs before |"
    )
    print("|---" * (len(VARIANT_KINDS) + 7) + "|")
    for label, score, wall, cpu, checked in rows:
        counts = " | ".join(str(score.by_kind[kind]) for kind in VARIANT_KINDS)
        print(
            f"| {label} | {score.found} | {counts} | {score.false_pairs} | {checked} | {wall:.2f} | {cpu:.2f} "
            f"| {wall / baseline[0]:.2f}x, {cpu / baseline[1]:.2f}x |"
        )
    for label, score, *_ in rows:
        if score.examples:
            print(f"  {label}: e.g. {', '.join(' ~ '.join(pair) for pair in score.examples[:3])}")


def bench_label_issues(
    paths: Sequence[Path], classes: Sequence[str], labels: np.ndarray, args: argparse.Namespace
) -> None:
    given, is_flipped = flip_labels(labels, len(classes), args.flip_fraction, args.seed)
    print(
        f"Label issues: {len(paths)} images in {len(classes)} classes, {int(is_flipped.sum())} moved to a wrong class"
    )
    pixels = load_pixels(paths)
    rows = []
    method = args.label_method
    if method == "auto":
        import problematic_analysis  # noqa: PLC0415

        method = "analysis" if hasattr(problematic_analysis, "label_issues_from_features") else "trainer"
    wall, cpu = time.perf_counter(), cpu_seconds()
    probabilities = None
    if method == "analysis":
        flagged, probabilities = ours_by_analysis(pixels, given, args.seed)
        label = "ours: out-of-fold analysis (problematic_analysis.label_issues_from_features, pixel features)"
    else:
        flagged = ours_by_trainer(paths, classes, given, args.seed, args.epochs)
        label = f"ours: train_classifier --detect-problematic (ResNet18 from scratch, 64 px, {args.epochs} epochs)"
    rows.append((label, flagged, time.perf_counter() - wall, cpu_seconds() - cpu))
    wall, cpu = time.perf_counter(), cpu_seconds()
    flagged = peer_label_issues(pixels, given, args.seed)
    rows.append(
        (
            "cleanlab find_label_issues on out-of-fold LR (HOG + tiny + colour)",
            flagged,
            time.perf_counter() - wall,
            cpu_seconds() - cpu,
        )
    )
    print("| method | flagged | precision | recall | wall s | CPU s |")
    print("|---|---|---|---|---|---|")
    for label, flagged, wall, cpu in rows:
        count, precision, recall = precision_recall(flagged, is_flipped)
        print(f"| {label} | {count} | {precision:.2f} | {recall:.2f} | {wall:.1f} | {cpu:.1f} |")
    if probabilities is not None:
        print_check_strength(probabilities, given, flagged_by_ours=rows[0][1], is_flipped=is_flipped)


def print_check_strength(
    probabilities: np.ndarray, given: np.ndarray, flagged_by_ours: np.ndarray, is_flipped: np.ndarray
) -> None:
    """The check's out-of-fold agreement with the given labels (what the report keeps as check_agreement), and how
    many mislabels the first 5% of the flags hold in the readers' order against the largest-margin order."""
    import problematic_report  # noqa: PLC0415

    agreement = float((probabilities.argmax(axis=1) == given).mean())
    weak = " (weak: the readers say so)" if agreement < problematic_report.WEAK_CHECK_AGREEMENT else ""
    print(f"check_agreement {agreement:.3f}{weak}")
    rows = np.arange(len(given))
    own = probabilities[rows, given]
    others = probabilities.copy()
    others[rows, given] = -np.inf
    margin = others.max(axis=1) - own
    flagged, first = np.flatnonzero(flagged_by_ours), max(1, round(0.05 * len(given)))
    for name, order in (("lowest p(given) first (the readers' order)", own), ("largest margin first", -margin)):
        chosen = flagged[np.argsort(order[flagged], kind="stable")][:first]
        print(f"first {len(chosen)} flags, {name}: precision {is_flipped[chosen].mean():.3f}")


# ----------------------------------------------------------------------------------------------------------------
# Command line


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Quality of the near-copy and label-issue detection, ours beside the peers.", add_help=add_help
    )
    parser.add_argument(
        "--photos",
        type=Path,
        nargs="+",
        default=None,
        help="folders of real photos for the near copies (default: generated)",
    )
    parser.add_argument(
        "--labelled",
        type=Path,
        default=None,
        help="a folder of class folders for the label issues (default: generated)",
    )
    parser.add_argument(
        "--generated",
        action="store_true",
        help="generated images for both parts, whatever else is given (default: off)",
    )
    parser.add_argument("--only", choices=("near", "labels"), default=None, help="run one part (default: both)")
    parser.add_argument(
        "--max-photos", type=int, default=1000, help="photos used per --photos folder, seeded choice (default: 1000)"
    )
    parser.add_argument("--sources", type=int, default=20, help="photos that get the ten variants (default: 20)")
    parser.add_argument(
        "--thresholds", type=int, nargs="*", default=[14], help="more thresholds of ours to run (default: 14)"
    )
    parser.add_argument("--per-class", type=int, default=60, help="images per class for the label issues (default: 60)")
    parser.add_argument("--classes", nargs="+", help="only these class folders of --labelled (default: all)")
    parser.add_argument(
        "--flip-fraction", type=float, default=0.05, help="share of images moved to a wrong class (default: 0.05)"
    )
    parser.add_argument(
        "--label-method",
        choices=("auto", "analysis", "trainer"),
        default="auto",
        help="how ours finds label issues: the analysis' pure function, or a trainer run "
        "(default: auto, the function where it exists)",
    )
    parser.add_argument(
        "--epochs", type=int, default=8, help="epochs of the trainer run (--label-method trainer) (default: 8)"
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes of each tool (default: CPU count)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    if args.only in (None, "near"):
        if args.photos and not args.generated:
            photos = []
            for folder in args.photos:
                found = list_photos(folder)
                photos += sorted(random.Random(args.seed).sample(found, min(args.max_photos, len(found))))
        else:
            photos = generated_photos(min(args.max_photos, 200), OUT_DIR / "generated_photos")
        bench_near_copies(photos, args)
    if args.only in (None, "labels"):
        if args.labelled and not args.generated:
            paths, classes, labels = labelled_photos(args.labelled, args.per_class, args.seed, args.classes)
        else:
            paths, classes, labels = generated_labelled(OUT_DIR / "generated_labelled", 6, args.per_class)
        bench_label_issues(paths, classes, labels, args)
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
