"""Find semantic duplicates (the same picture after crops, edits, re-renders) with the trained model's embeddings.

Each image goes through the model of ``--model`` exactly as classifier.py preprocesses it; its pooled features
(2048 numbers for a ResNet50), L2-normalised, are compared by cosine similarity (similarity_search.py): exactly
by blocked matrix products (never an N x N matrix) below 50,000 images, from there by FAISS's inverted-file index
where faiss-cpu is installed (approximate: minutes for a million images; --search exact|faiss chooses). A group
is a representative and the images within the threshold of it (no chains). ``--threshold auto`` (the default)
reads the threshold off the similarities of random pairs; groups that no real duplicate search produces (a large
share of the dataset, huge groups, everything alike) are reported as a warning. Semantic similarity is not
duplication: look at the gallery.

    python data_collection/detect_duplicates_by_embedding.py
    python data_collection/detect_duplicates_by_embedding.py --model models/best_model.pth --threshold 0.97
    python data_collection/detect_duplicates_by_embedding.py --dataset-dir photos --no-cache --device cpu
    python data_collection/detect_duplicates_by_embedding.py --dataset-dir huge --search faiss --nprobe 16

Writes dataset/duplicate_report_embedding.json (the shared report format of duplicate_report.py; each file's own
value is its cosine "similarity" to its group's representative; "threshold" holds the figures behind an automatic
one), the gallery beside it (.png), and .embedding_cache.npz beside it (the cache, keyed by path, size, modification
time and the model file: a re-run embeds only new or changed images).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duplicate_detection as dd  # the sibling modules (Python puts the script's folder on sys.path)
import numpy as np
import similarity_search as search

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # classifier.py, cli.py, fileio.py: the project root
import classifier  # noqa: E402 - needs the line above
import cli  # noqa: E402
import fileio  # noqa: E402

logger = logging.getLogger(__name__)

METHOD = "embedding"
DEFAULT_MODEL = "models/best_model.pth"
DEFAULT_THRESHOLD = "auto"  # a cosine similarity means different things for different models: read it off the data
DEFAULT_BATCH_SIZE = 32
RANDOM_PAIRS = 20_000  # random pairs of images whose similarities show how the model spreads different pictures
AUTO_QUANTILE = 0.999  # nearly every random pair is two different pictures: this quantile is the top of their range
AUTO_POSITION = 0.5  # --threshold auto lies this far from that quantile to 1 (halfway)
IMPLAUSIBLE_SHARE = 0.20  # real datasets have a few percent duplicates; more grouped than this is the model's doing
MIN_IMAGES_FOR_SHARE = 50  # in a handful of images a few copies are a large share: the share check starts here
IMPLAUSIBLE_GROUP_SIZE = 10  # copies of one picture rarely come in more than a handful
IMPLAUSIBLE_MEDIAN = 0.8  # random pairs this similar (median) come from a weak model: everything looks alike
SEED = 0  # which random pairs are sampled


# ----------------------------------------------------------------------------------------------------------------
# Pure functions: the threshold, plausibility (the search itself is similarity_search's)


def random_pair_similarities(embeddings: np.ndarray, pairs: int = RANDOM_PAIRS, seed: int = SEED) -> np.ndarray:
    """Cosine similarities of random pairs of different rows (all pairs when there are fewer), float64."""
    count = len(embeddings)
    if count < 2:
        return np.empty(0)
    if count * (count - 1) // 2 <= pairs:
        first, second = np.triu_indices(count, 1)
    else:
        rng = np.random.default_rng(seed)
        first = rng.integers(0, count, pairs)
        second = (first + rng.integers(1, count, pairs)) % count  # never the row itself
    return np.einsum("ij,ij->i", embeddings[first], embeddings[second]).astype(np.float64)


def auto_threshold(similarities: np.ndarray) -> tuple[float, dict[str, Any]]:
    """(threshold, the figures behind it) read from random-pair similarities.

    Nearly every random pair is two different pictures, so their AUTO_QUANTILE is the top of "different"; the
    threshold lies AUTO_POSITION of the way from there to 1. A strong model (different pictures far apart) gets a
    lower threshold than a weak one (everything alike), which is what a fixed number cannot do.
    """
    quantiles = {str(q): float(np.quantile(similarities, q)) for q in (0.5, 0.9, 0.99, AUTO_QUANTILE)}
    top = min(1.0, max(0.0, quantiles[str(AUTO_QUANTILE)]))
    threshold = round(top + AUTO_POSITION * (1.0 - top), 4)
    figures = {
        "rule": f"{AUTO_POSITION:g} of the way from the {AUTO_QUANTILE:g} quantile of random-pair similarities to 1",
        "random_pairs": int(len(similarities)),
        "quantiles": {key: round(value, 6) for key, value in quantiles.items()},
        "chosen": threshold,
    }
    return threshold, figures


def choose_threshold(setting: str | float, random_similarities: np.ndarray) -> tuple[float, dict[str, Any]]:
    """(threshold, what the report records about it) for --threshold ``setting`` ("auto" or a number)."""
    if setting != "auto":
        return float(setting), {"value": float(setting), "source": "--threshold"}
    if len(random_similarities) == 0:  # fewer than two images: nothing to compare, nothing to read off
        return 1.0, {"value": 1.0, "source": "auto"}
    threshold, figures = auto_threshold(random_similarities)
    return threshold, {"value": threshold, "source": "auto", **figures}


def implausibility_warnings(images: int, groups: Sequence[Sequence[int]], median_similarity: float | None) -> list[str]:
    """Sentences for output no real duplicate search produces (empty when plausible): too much grouped, a group
    too large, or different pictures scored nearly alike. Each names the likely cause and the fix.
    """
    advice = (
        "the likely cause is a weak model (trained from scratch or on few images); use a stronger one "
        "(--model a checkpoint trained with --weights imagenet) or a higher --threshold"
    )
    found = []
    grouped = sum(len(group) for group in groups)
    if images >= MIN_IMAGES_FOR_SHARE and grouped > IMPLAUSIBLE_SHARE * images:
        found.append(f"{grouped} of {images} images ({grouped / images:.0%}) are in groups: {advice}")
    largest = max((len(group) for group in groups), default=0)
    if largest > IMPLAUSIBLE_GROUP_SIZE:
        found.append(f"a group has {largest} images, more than copies of one picture come in: {advice}")
    if median_similarity is not None and median_similarity > IMPLAUSIBLE_MEDIAN:
        found.append(
            f"random pairs of images have a median cosine similarity of {median_similarity:.3f} (a model that tells "
            f"pictures apart gives well under {IMPLAUSIBLE_MEDIAN:g}): {advice}"
        )
    return found


def describe_search(info: dict[str, Any]) -> str:
    """The search in words, for the summary: an approximate one says what it may miss and how to find more."""
    if info["exact"]:
        return f"{info['engine']} (exact: every pair)"
    return (
        f"{info['engine']}, approximate ({info['nprobe']} of {info['lists']} cells searched per image: a few pairs "
        "may be missed; a higher --nprobe finds more, --search exact finds all)"
    )


def group_embeddings(
    matrix: np.ndarray, setting: str | float, mode: str, nprobe: int
) -> tuple[list[list[int]], dict[int, float], dict[str, Any]]:
    """(star groups of the rows of ``matrix`` (L2-normalised) within the threshold of --threshold ``setting``, each
    member's cosine similarity to its representative, the figures the report records: threshold, random_pair_median,
    search, search_settings). Raises similarity_search.TooManyPairsError when nearly everything is alike.
    """
    random_similarities = random_pair_similarities(matrix)
    median = float(np.median(random_similarities)) if len(random_similarities) else None
    threshold, threshold_info = choose_threshold(setting, random_similarities)
    pairs, search_info = search.cosine_pairs(matrix, threshold, mode, nprobe)
    groups = dd.star_groups(len(matrix), pairs)
    similarity: dict[int, float] = {}
    for group in groups:
        similarity.update(zip(group, similarity_to_representative(matrix, group).tolist()))
    figures = {"threshold": threshold_info, "random_pair_median": median, "search": search_info["engine"]}
    return groups, similarity, {**figures, "search_settings": search_info}


def similarity_to_representative(embeddings: np.ndarray, group: Sequence[int]) -> np.ndarray:
    """Cosine similarity of each member to the group's representative (its first member; 1.0 for itself)."""
    return embeddings[list(group)] @ embeddings[group[0]]


# ----------------------------------------------------------------------------------------------------------------
# Disk: the model key, the cache, embedding


def cache_settings(model_path: Path, dataset_dir: Path) -> str:
    """What the cached embeddings depend on: the model's content (a retrained model embeds differently), the dataset."""
    return f"model sha256 {fileio.sha256_file(model_path)}; dataset {Path(dataset_dir).resolve()}"


def embedding_width(model: classifier.BirdPlaneSupermanClassifier) -> int | None:
    """The length of the model's embeddings (None: not known, any width): a .pth's pooled features, a .onnx's output."""
    if model.model is not None:
        return int(model.model.fc.in_features)
    shapes = [output.shape for output in model.session.get_outputs() if output.name == classifier.ONNX_EMBEDDING]
    return shapes[0][1] if shapes and isinstance(shapes[0][1], int) else None


def embed_items(
    model: classifier.BirdPlaneSupermanClassifier, items: Sequence[dd.ScanItem], batch_size: int
) -> Iterator[tuple[dict[str, np.ndarray] | None, str | None]]:
    """({"embedding": vector}, None) or (None, why) for each item, in order, as it is embedded, through classifier.py's
    own preprocessing and model, with a progress bar."""
    results = model.embed_batch([item.path for item in items], batch_size=batch_size)
    for _, vector, error in cli.progress(results, total=len(items), desc="Embedding", unit="img"):
        if vector is None:
            yield None, error or "could not be embedded"
        else:
            yield {"embedding": np.asarray(vector, dtype=np.float32)}, None


# ----------------------------------------------------------------------------------------------------------------
# Command line


def threshold_value(text: str) -> str | float:
    """--threshold: "auto" or a cosine similarity above 0 and at most 1."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number, got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine similarity above 0 and at most 1 is expected, got {text}")
    return value


def search_mode(text: str) -> str:
    """--search: auto, exact or faiss ("numpy", the old name of exact, still works)."""
    mode = "exact" if text == "numpy" else text
    if mode not in search.SEARCH_MODES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(search.SEARCH_MODES)}, got {text!r}")
    return mode


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Find semantic duplicates by cosine similarity of the trained model's embeddings.",
        epilog=cli.EXIT_CODES_HELP,
        add_help=add_help,
    )
    dd.add_common_arguments(parser, METHOD, is_gallery_default=True)
    parser.add_argument(
        "--model", type=Path, default=Path(DEFAULT_MODEL), help=f"checkpoint (default: {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--threshold",
        type=threshold_value,
        default=DEFAULT_THRESHOLD,
        help="cosine similarity of two images' embeddings (1 = the same direction): the least an image may have to "
        "its group's representative, above 0 and at most 1; auto reads it off the similarities of random pairs "
        f"(figures in the report) (default: {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"images per forward pass (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda, then mps, then cpu)")
    parser.add_argument(
        "--search",
        type=search_mode,
        default="auto",
        metavar="{auto,exact,faiss}",
        help="similarity search: exact (numpy's blocked matrix products: every pair, time grows with N squared), "
        "faiss (FAISS's inverted-file index, pip install faiss-cpu: approximate, for hundreds of thousands of "
        f"images), or auto (exact below {search.AUTO_FAISS_MIN_ROWS:,} images, faiss from there where installed) "
        "(default: auto)",
    )
    parser.add_argument(
        "--nprobe",
        type=int,
        default=search.DEFAULT_NPROBE,
        help="with the faiss search: cells of the index searched per image, of about 4 * sqrt(images); more finds "
        f"more pairs and takes longer (default: {search.DEFAULT_NPROBE})",
    )
    return parser


def usage_problem(args: argparse.Namespace) -> str | None:
    """The sentence for arguments that cannot work (checked before any image is read), or None."""
    if args.batch_size < 1:
        return "--batch-size must be at least 1"
    if args.nprobe < 1:
        return "--nprobe must be at least 1"
    if not args.model.is_file():
        return (
            f"model file {cli.printable(args.model)} not found: train one first (python train_classifier.py) or pass "
            "--model FILE"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    problem = usage_problem(args)
    if problem:
        return cli.error(problem)
    scan = dd.start(args, METHOD)
    if isinstance(scan, int):
        return scan
    try:
        model = classifier.BirdPlaneSupermanClassifier(args.model, device=args.device)
    except (classifier.CheckpointError, ValueError, RuntimeError) as error:
        return cli.error(f"cannot use {cli.printable(args.model)}: {error}")
    embedded = dd.compute_cached(
        scan.items,
        dd.cache_path(args, METHOD),
        cache_settings(args.model, args.dataset_dir),
        {"embedding": ("f", (embedding_width(model),))},  # a cache of another width is ignored and rebuilt
        lambda items: embed_items(model, items, args.batch_size),
        "embeddings",
    )
    if isinstance(embedded, int):
        return embedded
    order = [index for index, values in enumerate(embedded.values) if values is not None]
    vectors = [embedded.values[index]["embedding"] for index in order]
    matrix = search.normalize_rows(np.stack(vectors)) if vectors else np.zeros((0, 1), np.float32)
    try:
        groups, similarity, found = group_embeddings(matrix, args.threshold, args.search, args.nprobe)
    except search.TooManyPairsError as error:
        return cli.error(
            f"{error}: the model puts unrelated images together (trained from scratch or on few images?); use a "
            "stronger model (trained with --weights imagenet) or a higher --threshold"
        )

    def describe(position: int) -> tuple[dd.ScanItem, int, int, dict[str, Any]]:
        item = scan.items[order[position]]
        try:
            width, height = dd.probe_image(item.path)
        except dd.ImageReadError:
            width, height = 0, 0
        return item, width, height, {"similarity": round(similarity[position], 6)}

    errors = embedded.errors + scan.skipped
    entry_groups = dd.entry_groups_for(groups, describe, errors)
    new = len(order) - embedded.from_cache
    threshold = found["threshold"]["value"]
    shown = f"auto: {threshold:g}" if found["threshold"]["source"] == "auto" else f"{threshold:g}"
    return dd.finish(
        args,
        METHOD,
        scan.sets,
        files_scanned=len(scan.items) + len(scan.skipped),
        images_read=len(order),
        entry_groups=entry_groups,
        errors=errors,
        extra={
            "model": str(args.model),
            "embedding_dim": int(matrix.shape[1]) if order else 0,
            "embedded": new,
            "from_cache": embedded.from_cache,
            **found,
        },
        notes=[
            f"Embedded {new} images, {embedded.from_cache} taken from the cache; threshold {shown} (cosine similarity "
            f"to a group's representative); search: {describe_search(found['search_settings'])}"
        ],
        warnings=implausibility_warnings(len(order), groups, found["random_pair_median"]),
    )


if __name__ == "__main__":
    raise SystemExit(main())
