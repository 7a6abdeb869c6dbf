"""The pHash detector's two-stage search: near_copy_check keeps crops, borders and mirrors, rejects look-alikes."""

from __future__ import annotations

import json
from pathlib import Path

import detect_duplicates_by_phash as by_phash
import imagehash
import near_copy_check
import numpy as np
import pytest
from conftest import save_image
from PIL import Image, ImageOps

SIZE = (480, 360)
LAYOUT_CYCLES = 6  # frequencies up to 6 cycles per image are the layout (a 64-bit pHash sees up to 4); above, detail


def layout_photo(detail_seed: int, layout_seed: int = 3) -> Image.Image:
    """A photo-like RGB image with natural images' 1/f spectrum: its low frequencies (the layout) from
    ``layout_seed``, the rest (the detail) from ``detail_seed``. Two detail seeds give two different pictures
    whose pHashes are equal or nearly so."""
    width, height = SIZE
    layout, detail = np.random.default_rng(layout_seed), np.random.default_rng(1000 + detail_seed)
    cycles = np.hypot(np.fft.fftfreq(height)[:, None] * height, np.fft.rfftfreq(width)[None, :] * width)
    channels = []
    for _ in range(3):
        phase = np.where(cycles <= LAYOUT_CYCLES, layout.random(cycles.shape), detail.random(cycles.shape))
        channel = np.fft.irfft2(np.exp(2j * np.pi * phase) / np.maximum(cycles, 1), s=(height, width))
        channels.append((channel - channel.mean()) / channel.std())
    pixels = 128 + 45 * np.stack(channels, axis=2)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def groups_of(report_path: Path) -> list[set[str]]:
    report = json.loads(report_path.read_text(encoding="utf-8"))
    return [
        {Path(entry["path"]).name for entry in group["files"]}
        for groups in report["duplicate_groups"].values()
        for group in groups
    ]


@pytest.fixture
def look_alike_dataset(tmp_path: Path) -> Path:
    """One photo with a 5%-cropped, a 10 px bordered and a mirrored copy; another photo of the same layout."""
    folder = tmp_path / "photos"
    original = layout_photo(1)
    width, height = SIZE
    cut_x, cut_y = round(width * 0.05), round(height * 0.05)
    save_image(original, folder / "original.jpg")
    save_image(original.crop((cut_x, cut_y, width - cut_x, height - cut_y)), folder / "cropped.jpg")
    save_image(ImageOps.expand(original, border=10, fill=(0, 0, 0)), folder / "bordered.jpg")
    save_image(ImageOps.mirror(original), folder / "mirrored.jpg")
    save_image(layout_photo(2), folder / "look_alike.jpg")
    return folder


def test_crop_border_and_mirror_are_found_and_a_look_alike_is_not(look_alike_dataset: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    command = ["--dataset-dir", str(look_alike_dataset), "--report", str(report), "--workers", "1", "--no-cache"]
    copies = {"original.jpg", "cropped.jpg", "bordered.jpg", "mirrored.jpg"}

    assert by_phash.main(command) == 0  # the defaults
    assert groups_of(report) == [copies]
    settings = json.loads(report.read_text(encoding="utf-8"))["search_settings"]
    assert settings["checked_pairs"] >= len(copies) - 1 + settings["rejected_pairs"] and settings["rejected_pairs"] >= 1

    def phash(name: str) -> imagehash.ImageHash:
        values, _ = by_phash.hash_file((str(look_alike_dataset / name), 8, False))
        return imagehash.hex_to_hash(values["phash"])

    distance = phash("original.jpg") - phash("look_alike.jpg")
    assert distance <= by_phash.DEFAULT_THRESHOLD  # a candidate by hash: only the pixel check keeps it out
    assert by_phash.main([*command, "--min-similarity", "0"]) == 0  # the hash alone, at the same radius
    assert any("look_alike.jpg" in group for group in groups_of(report))


def test_similarity_separates_copies_from_a_look_alike(look_alike_dataset: Path) -> None:
    def thumb(name: str) -> np.ndarray:
        with Image.open(look_alike_dataset / name) as image:
            return near_copy_check.thumbnail(image)

    names = ["original.jpg", "cropped.jpg", "bordered.jpg", "mirrored.jpg", "look_alike.jpg"]
    thumbnails = [thumb(name) for name in names]
    pairs = np.array([(0, 1), (0, 2), (0, 3), (0, 4)])
    scores = near_copy_check.pair_similarities(pairs, thumbnails, enough=1.0)
    assert (scores[:3] >= near_copy_check.MIN_SIMILARITY).all()
    assert scores[3] < near_copy_check.MIN_SIMILARITY - 0.1
    no_mirror = near_copy_check.pair_similarities(pairs[2:3], thumbnails, is_flip_invariant=False, enough=1.0)
    assert no_mirror[0] < near_copy_check.MIN_SIMILARITY  # the mirrored copy needs the mirrored comparison
    bordered = near_copy_check.trim_border(thumbnails[2])
    edges = [bordered[0].mean(), bordered[-1].mean(), bordered[:, 0].mean(), bordered[:, -1].mean()]
    assert min(edges) > 40 and bordered.shape[0] < thumbnails[2].shape[0]  # the black border is trimmed
    assert near_copy_check.trim_border(thumbnails[0]).shape == thumbnails[0].shape  # and nothing of a photo
    assert near_copy_check.trim_border(np.zeros((1, 3))).shape == (1, 3)  # a tiny flat image stays whole


def test_a_group_never_holds_a_rejected_pair() -> None:
    groups = [[0, 1, 2, 3], [4, 5]]
    rejected = np.array([(2, 1), (4, 5)])
    assert near_copy_check.split_conflicts(groups, rejected) == [[0, 1, 3]]
    assert near_copy_check.split_conflicts([[6]], np.zeros((0, 2)), weights=[1] * 6 + [2]) == [[6]]  # two files


def test_checked_items_split_an_identical_hash_that_fails() -> None:
    """Images 0, 1, 2 share a hash but 2 is another photo; item 1 (image 3) is a candidate of item 0."""

    def verify(pairs: np.ndarray) -> np.ndarray:
        same_photo = {0: "a", 1: "a", 2: "b", 3: "a"}
        return np.array([same_photo[int(a)] == same_photo[int(b)] for a, b in pairs], dtype=bool)

    items, verified, rejected = by_phash.checked_items([np.array([0, 1, 2]), np.array([3])], np.array([[0, 1]]), verify)
    assert [item.tolist() for item in items] == [[0, 1], [2], [3]]
    assert {tuple(pair) for pair in verified.tolist()} == {(0, 2)}
    assert {tuple(sorted(pair)) for pair in rejected.tolist()} == {(0, 1), (1, 2)}


def test_pairs_scored_in_processes_equal_in_process(look_alike_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = sorted(look_alike_dataset.iterdir())
    thumbnails = dict(enumerate(by_phash.read_thumbnails(paths, 1)))
    pairs = np.array([(a, b) for a in range(len(paths)) for b in range(a + 1, len(paths))])
    monkeypatch.setattr(by_phash, "PAIRS_PER_TASK", 2)  # five chunks over two processes
    in_processes = by_phash.score_pairs(pairs, thumbnails, True, 1.0, workers=2)
    assert np.array_equal(in_processes, by_phash.score_pairs(pairs, thumbnails, True, 1.0, workers=1))
    assert (in_processes > 0).all()
