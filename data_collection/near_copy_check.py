"""Whether two images whose hashes are close are the same photo: a pixel check on small aligned thumbnails.

Imported by detect_duplicates_by_phash.py (the second stage of its search: candidates come from a loose Hamming
radius, and this check keeps only the copies) and by benchmarks/bench_detection_quality.py; not a script.

A pHash keeps the silhouette of a picture (its lowest frequencies), so different photos with one layout (a shirt on
the same bedspread, a bird against a plain sky) hash alike, while a copy that is cropped by 5% a side, bordered or
mirrored moves by 8 to 16 bits. This check compares detail instead: each image becomes a small greyscale thumbnail
with any uniform border trimmed; one image's view of the whole is compared with the other's views of crops (scales
1.0 to 0.84, centred or at a corner, and mirrored) after a high-pass filter (the silhouette removed, the detail
kept), by correlation (so brightness, contrast and colour do not matter), leaving out the 5% of pixels that
disagree most (a watermark or a caption in a corner). Copies score 0.90 to 1.0; different photos of one layout at
most 0.86 on the real-photo benchmark (BENCHMARKS.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

THUMBNAIL_SIDE = 128  # longest side of the thumbnail: measured, 64 or 96 cost copies the check (a view must land
# on the other image to a fraction of a pixel)
COARSE_SIDE = 24  # views that find the crop that lines up (plain pixels, cheap)
DETAIL_CANDIDATES = 3  # crops compared in detail: the three that line up best at coarse scale
VIEW_SIDE = 48  # views are 48 x 48: measured, 32 leaves half the margin between copies and different photos
HIGH_PASS_SIGMA = 1.0  # view pixels: the Gaussian whose blur is subtracted (keeps edges and texture, drops layout)
CONTRAST_SIGMA = 3.0  # view pixels: detail is divided by its local strength over this radius (measured: without it,
# two shirts on one carpet score 0.84, as high as a bordered copy against a watermarked one; with it 0.76 vs 0.91)
CONTRAST_FLOOR = 0.1  # of the view's mean detail energy: flat regions are not blown up into noise
CROP_SCALES = (1.0, 0.98, 0.96, 0.94, 0.92, 0.9, 0.88, 0.86, 0.84)  # a crop or border of up to 8% a side
ANCHORS = ((0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))  # a crop centred, or kept at one corner
OUTLIER_FRACTION = 0.05  # pixels left out of the correlation: a watermark, a caption, a logo in a corner
MIN_SIMILARITY = 0.85  # same photo at or above (measured: copies 0.91-1.0, different photos of one layout <= 0.76)
BORDER_MAX_STD = 1.5  # grey levels: a line of an added border is flat; a photo's plain background still varies
BORDER_MAX_STEP = 3.0  # grey levels: a border line has the border's colour (a dark photo edge is not trimmed)
BORDER_MAX_FRACTION = 0.2  # never trim more than a fifth of a side


# ----------------------------------------------------------------------------------------------------------------
# Thumbnails and views


def trim_border(pixels: np.ndarray) -> np.ndarray:
    """The greyscale ``pixels`` without a uniform border: lines at each edge that are flat and of the edge's colour,
    at most BORDER_MAX_FRACTION of each side (none of an image under 5 pixels a side)."""
    pixels = np.asarray(pixels, dtype=np.float32)
    height, width = pixels.shape
    top, bottom, left, right = 0, height, 0, width

    def is_border(line: np.ndarray, colour: float) -> bool:
        return line.size > 0 and line.std() <= BORDER_MAX_STD and abs(float(line.mean()) - colour) <= BORDER_MAX_STEP

    colour = float(pixels[0].mean())
    while top + 1 <= height * BORDER_MAX_FRACTION and is_border(pixels[top, left:right], colour):
        top += 1
    colour = float(pixels[-1].mean())
    while height - bottom + 1 <= height * BORDER_MAX_FRACTION and is_border(pixels[bottom - 1, left:right], colour):
        bottom -= 1
    colour = float(pixels[top:bottom, 0].mean())
    while left + 1 <= width * BORDER_MAX_FRACTION and is_border(pixels[top:bottom, left], colour):
        left += 1
    colour = float(pixels[top:bottom, -1].mean())
    while width - right + 1 <= width * BORDER_MAX_FRACTION and is_border(pixels[top:bottom, right - 1], colour):
        right -= 1
    return pixels[top:bottom, left:right]


def thumbnail(image: Image.Image) -> np.ndarray:
    """The check's thumbnail of an image: greyscale, at most THUMBNAIL_SIDE a side (uint8)."""
    grey = image if image.mode == "L" else image.convert("L")
    grey = grey.copy()
    grey.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(grey, dtype=np.uint8)


@functools.cache
def _area_weights(length: int, start: float, span: float, side: int) -> np.ndarray:
    """(side, length) weights that average the input pixels [start, start + span) into ``side`` equal cells."""
    edges = start + span * np.arange(side + 1) / side
    lower = np.maximum(edges[:-1, None], np.arange(length)[None, :])
    upper = np.minimum(edges[1:, None], np.arange(length)[None, :] + 1)
    weights = np.clip(upper - lower, 0, None)
    return (weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)


@functools.cache
def _blur_matrix(side: int, sigma: float) -> np.ndarray:
    """(side, side) Gaussian blur along one axis, rows renormalised at the edges."""
    offsets = np.arange(side)[:, None] - np.arange(side)[None, :]
    weights = np.exp(-0.5 * (offsets / sigma) ** 2) * (np.abs(offsets) <= 3 * sigma)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def smoothed(views: np.ndarray, sigma: float) -> np.ndarray:
    """(n, side, side) views each blurred by a Gaussian of ``sigma`` pixels (separable: two matrix products)."""
    count, side, _ = views.shape
    blur = _blur_matrix(side, sigma)
    down = (blur @ views.transpose(1, 0, 2).reshape(side, -1)).reshape(side, count, side).transpose(1, 0, 2)
    return (down.reshape(-1, side) @ blur.T).reshape(views.shape)


def crop_boxes(scales: Sequence[float] = CROP_SCALES) -> list[tuple[float, float, float]]:
    """(scale, x anchor, y anchor) of every crop compared: the whole image first, then each scale at each anchor."""
    return [(scale, x, y) for scale in scales for x, y in (ANCHORS[:1] if scale == 1.0 else ANCHORS)]


def resampled(pixels: np.ndarray, boxes: Sequence[tuple[float, float, float]], side: int) -> np.ndarray:
    """(len(boxes), side, side): each box of ``pixels`` averaged down (or spread up) to ``side`` square."""
    pixels = np.asarray(pixels, dtype=np.float32)
    height, width = pixels.shape
    rows = np.stack([_area_weights(height, (1 - s) * height * y, s * height, side) for s, _, y in boxes])
    columns = np.stack([_area_weights(width, (1 - s) * width * x, s * width, side) for s, x, _ in boxes])
    shrunk_rows = (rows.reshape(-1, height) @ pixels).reshape(len(boxes), side, width)  # one BLAS call
    return np.matmul(shrunk_rows, np.ascontiguousarray(columns.transpose(0, 2, 1)))  # contiguous: BLAS per box


def unit_rows(values: np.ndarray) -> np.ndarray:
    """Each view flattened, zero mean and unit length (a flat view stays all zeros)."""
    flat = values.reshape(len(values), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.where(norms > 0, norms, 1.0)


def coarse_views(pixels: np.ndarray, boxes: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """(boxes, COARSE_SIDE**2): small plain views, enough to find which crop lines up with the other image."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if min(pixels.shape) > 2 * COARSE_SIDE:  # halve the work: coarse views need no more than twice their side
        pixels = resampled(pixels, crop_boxes((1.0,)), 2 * COARSE_SIDE)[0]
    return unit_rows(resampled(pixels, boxes, COARSE_SIDE))


def detail_views(pixels: np.ndarray, boxes: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """(boxes, VIEW_SIDE**2): views high-passed (the blur of HIGH_PASS_SIGMA subtracted), zero mean, unit length."""
    small = resampled(pixels, boxes, VIEW_SIDE)
    detail = small - smoothed(small, HIGH_PASS_SIGMA)
    energy = detail**2  # local contrast: a strong outline must not outweigh the texture and print inside it
    local = smoothed(energy, CONTRAST_SIGMA)
    detail = detail / np.sqrt(local + CONTRAST_FLOOR * energy.mean(axis=(1, 2), keepdims=True) + 1e-6)
    return unit_rows(detail)


def mirrored(views: np.ndarray, side: int) -> np.ndarray:
    """Flattened views of the left-right mirrored image."""
    return views.reshape(len(views), side, side)[:, :, ::-1].reshape(len(views), -1)


class Views:
    """One thumbnail as the check sees it: its pixels, and (computed when first needed, then kept) the detail view
    of the whole and the coarse views of all crops."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = np.asarray(pixels, dtype=np.float32)

    @functools.cached_property
    def whole(self) -> np.ndarray:
        return detail_views(self.pixels, crop_boxes()[:1])[0]

    @functools.cached_property
    def coarse(self) -> np.ndarray:
        return coarse_views(self.pixels, crop_boxes())


class Prepared(NamedTuple):
    """One image: the views of its thumbnail with any uniform border trimmed, and of the untrimmed one when the
    trimming took something (a flat edge of the picture itself may be trimmed in one copy and not in another)."""

    trimmed: Views
    untrimmed: Views | None


def prepare(pixels: np.ndarray) -> Prepared:
    trimmed = trim_border(pixels)
    return Prepared(Views(trimmed), None if trimmed.shape == pixels.shape else Views(pixels))


# ----------------------------------------------------------------------------------------------------------------
# Similarity


def robust_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """The correlation of two unit views over the pixels where they agree: the OUTLIER_FRACTION of pixels that
    disagree most (after the best linear fit) are left out, so a watermark or caption does not count."""
    residual = np.abs(first - float(first @ second) * second)
    cut = len(residual) - max(1, int(len(residual) * OUTLIER_FRACTION))
    keep = residual <= np.partition(residual, cut - 1)[cut - 1]
    x, y = first[keep] - first[keep].mean(), second[keep] - second[keep].mean()
    denominator = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y) / denominator if denominator > 0 else 0.0


def similarity(
    first: Prepared, second: Prepared, is_flip_invariant: bool = True, enough: float = MIN_SIMILARITY
) -> float:
    """How alike two images are, 0 to 1: some crop of one (or of its mirror) against the whole of the other.

    The wholes are compared first (most copies are not cropped); then the crops that line up best at coarse scale
    (either image cropped, either way round) in detail. The best robust correlation counts; the search stops as
    soon as one reaches ``enough`` (pass 1.0 for the exact best).
    """
    best = _similarity(first.trimmed, second.trimmed, is_flip_invariant, enough)
    if best < enough and (first.untrimmed is not None or second.untrimmed is not None):
        untrimmed = (first.untrimmed or first.trimmed, second.untrimmed or second.trimmed)
        best = max(best, _similarity(*untrimmed, is_flip_invariant, enough))
    return best


def _similarity(first: Views, second: Views, is_flip_invariant: bool, enough: float) -> float:
    best = robust_correlation(first.whole, second.whole)
    if is_flip_invariant and best < enough:
        best = max(best, robust_correlation(mirrored(first.whole[None], VIEW_SIDE)[0], second.whole))
    if best >= enough:
        return best
    boxes = crop_boxes()
    options = []  # (coarse score, cropped image, whole image, is mirrored, box)
    for cropped, whole in ((first, second), (second, first)):
        for is_mirrored in (False, True) if is_flip_invariant else (False,):
            target = mirrored(whole.coarse[:1], COARSE_SIDE)[0] if is_mirrored else whole.coarse[0]
            scores = cropped.coarse @ target
            options.extend((float(scores[i]), cropped, whole, is_mirrored, boxes[i]) for i in range(1, len(boxes)))
    options.sort(key=lambda option: -option[0])
    for _, cropped, whole, is_mirrored, box in options[:DETAIL_CANDIDATES]:
        view = detail_views(cropped.pixels, [box])
        view = mirrored(view, VIEW_SIDE)[0] if is_mirrored else view[0]
        best = max(best, robust_correlation(view, whole.whole))
        if best >= enough:
            break
    return best


def pair_similarities(
    pairs: np.ndarray,
    thumbnails: Mapping[int, np.ndarray | None] | Sequence[np.ndarray | None],
    is_flip_invariant: bool = True,
    enough: float = MIN_SIMILARITY,
    progress: Callable[[Iterable[int]], Iterable[int]] = iter,
) -> np.ndarray:
    """The similarity (0 to 1) of each pair (an (n, 2) array of indices into ``thumbnails``); see ``similarity``.
    A pair with a missing or empty thumbnail scores 0. ``progress`` wraps the loop over pair rows (a progress bar)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    scores = np.zeros(len(pairs))
    prepared = {
        image: prepare(thumbnails[image])
        for image in set(pairs.ravel().tolist())
        if thumbnails[image] is not None and min(thumbnails[image].shape) > 0
    }
    with threadpool_limits(limits=1, user_api="blas"):  # small products: threads cost 50x more than they save
        for row in progress(range(len(pairs))):
            first, second = int(pairs[row, 0]), int(pairs[row, 1])
            if first in prepared and second in prepared:
                scores[row] = similarity(prepared[first], prepared[second], is_flip_invariant, enough)
    return scores


# ----------------------------------------------------------------------------------------------------------------
# Groups


def split_conflicts(
    groups: Iterable[Sequence[int]], rejected_pairs: np.ndarray, weights: Sequence[int] | np.ndarray | None = None
) -> list[list[int]]:
    """Groups in which no two members are a rejected pair: a member rejected against the representative or against
    a member kept before it (in its group's order) leaves the group. A group is kept while its members stand for
    two images or more (``weights``: images per member, 1 each by default).

    The members that left are in no group: they are near the representative by hash but failed the check against
    someone in the group, and a group never holds a pair that failed.
    """
    rejected = {(int(a), int(b)) for a, b in np.asarray(rejected_pairs, dtype=np.int64).reshape(-1, 2)}
    rejected |= {(b, a) for a, b in rejected}
    result = []
    for group in groups:
        kept: list[int] = []
        for member in group:
            if all((member, other) not in rejected for other in kept):
                kept.append(int(member))
        if sum(1 if weights is None else int(weights[member]) for member in kept) > 1:
            result.append(kept)
    return result


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py: the project root
    import cli

    cli.refuse_running_as_script(
        __file__, "run data_collection/detect_duplicates_by_phash.py", "detect_duplicates_by_phash.py"
    )
