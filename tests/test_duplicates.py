"""Tests of duplicate_detection.py and the file-size and perceptual-hash detectors (no model needed)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import detect_duplicates_by_filesize as by_filesize
import detect_duplicates_by_phash as by_phash
import duplicate_detection as dd
import file_cache
import imagehash
import numpy as np
import pytest
import remove_duplicates
import similarity_search as search
from conftest import (
    IS_ROOT,
    ROOT,
    make_class_image,
    make_dataset,
    make_near_duplicates,
    refused_bad_files,
    save_image,
    write_bad_files,
)
from PIL import Image, ImageOps

import duplicate_report as dr
import fileio

NEAR_SIZE = (256, 192)  # measured: at this size resized/recompressed copies stay within 4 bits, distinct >= 16 apart
NEAR_THRESHOLD = 8  # brightening by 10% clips highlights and moved one of 40 measured hashes by 6 bits


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def group_paths(report: dict) -> dict[str, list[set[str]]]:
    """{category: [set of paths of each group]}."""
    return {
        category: [{entry["path"] for entry in group["files"]} for group in groups]
        for category, groups in report["duplicate_groups"].items()
    }


def all_grouped(report: dict) -> set[str]:
    return {entry["path"] for group in dr.iter_groups(report) for entry in group["files"]}


def copy(dataset: Path, source: str, destination: str) -> str:
    (dataset / destination).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dataset / source, dataset / destination)
    return destination


# ----------------------------------------------------------------------------------------------------------------
# duplicate_detection.py


def test_star_groups_do_not_depend_on_pair_order() -> None:
    rng = np.random.default_rng(0)
    pairs = [(0, 5), (5, 9), (2, 3), (7, 7), (11, 4), (4, 10)]
    expected = [[2, 3], [4, 10, 11], [5, 0, 9]]  # representative first: the member with most neighbours
    for _ in range(5):
        shuffled = [tuple(rng.permutation(pair)) for pair in rng.permutation(np.array(pairs))]
        assert dd.star_groups(12, shuffled) == expected


def test_groups_do_not_chain() -> None:
    """A~B~C~...~J (each only near the next) must not become one group of ten unrelated images."""
    chain = [(index, index + 1) for index in range(9)]
    groups = dd.star_groups(10, chain)
    neighbours = {frozenset(pair) for pair in chain}
    assert groups and max(len(group) for group in groups) <= 3
    for representative, *members in groups:  # every member is near its group's representative
        assert all(frozenset((representative, member)) in neighbours for member in members)
    assert len({member for group in groups for member in group}) == sum(len(group) for group in groups)


def test_phash_groups_do_not_chain() -> None:
    """Hashes 0..7 each 4 bits from the next (so 0 and 7 are 28 bits apart): no group spans the chain."""
    bits = 64
    rows = np.zeros((8, bits), dtype=bool)
    rows[0, ::2] = True
    for index in range(1, 8):
        rows[index] = rows[index - 1]
        rows[index, 4 * index : 4 * index + 4] ^= True
    words = by_phash.pack_hashes(rows)
    groups, _ = by_phash.near_duplicate_groups(words, 5, bits)
    for representative, *members in groups:
        distances = search.hamming_distances(words[members], words[representative])
        assert (distances <= 5).all()
    assert max(len(group) for group in groups) <= 3


def test_scan_finds_images_by_content_and_name(tmp_path: Path) -> None:
    files = write_bad_files(tmp_path / "bad")
    (tmp_path / "bad" / "notes.txt").write_text("not an image", encoding="utf-8")
    (tmp_path / "bad" / ".hidden.jpg").write_bytes(files["IMG.JPG"].read_bytes())
    items, sets, skipped = dd.scan_dataset(tmp_path / "bad", ["train"])
    assert skipped == []
    assert sets == [dd.WHOLE_FOLDER_SET]
    assert {item.rel for item in items} == set(files)  # every bad file (so it is reported), no text, no hidden file


# ----------------------------------------------------------------------------------------------------------------
# File size + content hash


def test_filesize_finds_exact_copies_with_categories(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=3, val_per_class=1)
    copy(dataset, "train/bird/bird_000.jpg", "train/bird/again.jpg")  # a plain copy
    copy(dataset, "train/plane/plane_000.jpg", "val/plane/leak.jpg")  # train/val leakage
    copy(dataset, "train/superman/superman_001.jpg", "train/other/conflict.jpg")  # label conflict
    copy(dataset, "train/other/other_002.jpg", "val/bird/both.jpg")  # conflict and leakage
    make_class_image(0, 1, (40, 30)).save(dataset / "train" / "bird" / "same_size_a.bmp")
    make_class_image(0, 2, (40, 30)).save(dataset / "train" / "bird" / "same_size_b.bmp")
    assert (dataset / "train/bird/same_size_a.bmp").stat().st_size == (
        dataset / "train/bird/same_size_b.bmp"
    ).stat().st_size

    assert by_filesize.main(["--dataset-dir", str(dataset)]) == 0
    report = load(dataset / "duplicate_report_filesize.json")
    assert report["schema_version"] == dr.SCHEMA_VERSION and report["method"] == "filesize"
    assert group_paths(report) == {
        "same_class_and_set": [{"train/bird/bird_000.jpg", "train/bird/again.jpg"}],
        "same_class_diff_set": [{"train/plane/plane_000.jpg", "val/plane/leak.jpg"}],
        "diff_class_same_set": [{"train/superman/superman_001.jpg", "train/other/conflict.jpg"}],
        "diff_class_diff_set": [{"train/other/other_002.jpg", "val/bird/both.jpg"}],
    }
    # the equal-size bitmaps were hashed (their size is shared) but, with different bytes, never grouped
    assert report["files_hashed"] >= 10 and "train/bird/same_size_a.bmp" not in all_grouped(report)
    entry = report["duplicate_groups"]["same_class_diff_set"][0]["files"][1]
    assert entry["path"] == "val/plane/leak.jpg" and entry["set"] == "val" and entry["class"] == "plane"
    assert (entry["width"], entry["height"], entry["filename"]) == (64, 64, "leak.jpg")
    assert entry["sha256"] == fileio.sha256_file(dataset / "val/plane/leak.jpg")
    assert report["summary"]["removable_copies"] == 4


def test_filesize_only_hashes_files_whose_size_is_shared() -> None:
    assert sorted(by_filesize.sizes_to_hash([10, 20, 10, 30, 20, 40])) == [0, 1, 2, 4]
    assert by_filesize.exact_duplicate_groups([10, 10, 10], ["a", "b", "a"]) == [[0, 2]]
    assert by_filesize.exact_duplicate_groups([10, 10], [None, None]) == []


def test_filesize_skips_every_bad_file_with_a_reason(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1)
    write_bad_files(dataset / "train" / "bird")
    try:
        assert by_filesize.main(["--dataset-dir", str(dataset)]) == 1
    finally:
        os.chmod(dataset / "train" / "bird" / "unreadable.jpg", 0o644)
    report = load(dataset / "duplicate_report_filesize.json")
    assert {Path(error["path"]).name for error in report["errors"]} == refused_bad_files()
    assert all(error["reason"] for error in report["errors"])
    # the byte-identical good files among the bad ones are found by content, whatever their names
    grouped = {Path(path).name for path in all_grouped(report)}
    assert {
        "IMG.JPG",
        "photo.Jpeg",
        "my photo.jpg",
        "-dash.jpg",
        "symlink.jpg",
        "no_extension",
        "fötö_鳥.png",
    } <= grouped


def test_detectors_refuse_a_missing_or_empty_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for main in (by_filesize.main, by_phash.main):
        assert main(["--dataset-dir", str(tmp_path / "nowhere")]) == 2
        assert "error: dataset folder" in capsys.readouterr().err
        (tmp_path / "empty" / "train" / "bird").mkdir(parents=True, exist_ok=True)
        assert main(["--dataset-dir", str(tmp_path / "empty")]) == 2
        assert "error: no images found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Perceptual hash


@pytest.fixture
def near_copy_dataset(tmp_path: Path) -> Path:
    """3 distinct images per class and split, plus planted near copies (see the test for which)."""
    dataset = make_dataset(tmp_path / "dataset", train_per_class=2, val_per_class=1, size=NEAR_SIZE)
    original = make_class_image(0, 900, NEAR_SIZE)
    save_image(original, dataset / "train" / "bird" / "original.jpg")
    variants = make_near_duplicates(original)
    for name in ("resized_50", "jpeg_q40", "brightened_10"):
        save_image(variants[name], dataset / "train" / "bird" / f"{name}.jpg")
    save_image(variants["mirrored"], dataset / "train" / "bird" / "mirrored.jpg")
    plane = make_class_image(1, 901, NEAR_SIZE)
    save_image(plane, dataset / "train" / "plane" / "plane_orig.jpg")
    save_image(make_near_duplicates(plane)["resized_50"], dataset / "val" / "plane" / "plane_small.jpg")
    hero = make_class_image(2, 902, NEAR_SIZE)
    save_image(hero, dataset / "train" / "superman" / "hero.jpg")
    save_image(make_near_duplicates(hero)["jpeg_q40"], dataset / "train" / "other" / "hero_q40.jpg")
    return dataset


def test_phash_groups_near_copies_and_nothing_else(near_copy_dataset: Path) -> None:
    dataset = near_copy_dataset
    arguments = ["--dataset-dir", str(dataset), "--threshold", str(NEAR_THRESHOLD), "--workers", "1"]
    assert by_phash.main([*arguments, "--no-flip-invariant"]) == 0
    report = load(dataset / "duplicate_report_phash.json")
    bird = {"train/bird/original.jpg", "train/bird/resized_50.jpg", "train/bird/jpeg_q40.jpg"}
    assert group_paths(report) == {
        "same_class_and_set": [bird | {"train/bird/brightened_10.jpg"}],
        "same_class_diff_set": [{"train/plane/plane_orig.jpg", "val/plane/plane_small.jpg"}],
        "diff_class_same_set": [{"train/superman/hero.jpg", "train/other/hero_q40.jpg"}],
        "diff_class_diff_set": [],
    }  # the mirrored copy and the 12 generated images are in no group
    hashes = {entry["path"]: entry["phash"] for group in dr.iter_groups(report) for entry in group["files"]}
    naive = imagehash.phash(Image.open(dataset / "train/bird/original.jpg").convert("RGB"))
    assert imagehash.hex_to_hash(hashes["train/bird/original.jpg"]) - naive <= 2  # imagehash's pHash, as hex

    assert by_phash.main(["--dataset-dir", str(dataset), "--threshold", str(NEAR_THRESHOLD), "--flip-invariant"]) == 0
    flipped = load(dataset / "duplicate_report_phash.json")
    assert group_paths(flipped)["same_class_and_set"] == [
        bird | {"train/bird/brightened_10.jpg", "train/bird/mirrored.jpg"}
    ]


def test_phash_default_threshold_keeps_resized_and_recompressed(near_copy_dataset: Path) -> None:
    assert by_phash.main(["--dataset-dir", str(near_copy_dataset), "--workers", "1", "--gallery"]) == 0
    report = load(near_copy_dataset / "duplicate_report_phash.json")
    groups = [paths for category in group_paths(report).values() for paths in category]
    assert {"train/bird/original.jpg", "train/bird/resized_50.jpg", "train/bird/jpeg_q40.jpg"} <= groups[0]
    assert {"train/plane/plane_orig.jpg", "val/plane/plane_small.jpg"} in groups
    with Image.open(near_copy_dataset / "duplicate_report_phash.png") as gallery:
        assert gallery.format == "PNG" and gallery.width > 200


def test_phash_report_is_the_same_with_and_without_faiss(
    near_copy_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("faiss")
    arguments = ["--dataset-dir", str(near_copy_dataset), "--threshold", str(NEAR_THRESHOLD), "--flip-invariant"]
    assert by_phash.main(arguments) == 0
    with_faiss = load(near_copy_dataset / "duplicate_report_phash.json")
    monkeypatch.setattr(search, "import_faiss", lambda: None)
    assert by_phash.main(arguments) == 0
    without_faiss = load(near_copy_dataset / "duplicate_report_phash.json")
    assert with_faiss["search"].startswith("faiss-binary") and without_faiss["search"] == "numpy"
    assert with_faiss["duplicate_groups"] == without_faiss["duplicate_groups"]
    assert with_faiss["summary"] == without_faiss["summary"] and with_faiss["summary"]["groups"] == 3


def test_phash_skips_every_bad_file_and_reads_the_others(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1)
    files = write_bad_files(dataset / "val" / "plane")
    try:
        assert by_phash.main(["--dataset-dir", str(dataset), "--workers", "1"]) == 1
    finally:
        os.chmod(files["unreadable.jpg"], 0o644)
    report = load(dataset / "duplicate_report_phash.json")
    assert {Path(error["path"]).name for error in report["errors"]} == refused_bad_files()
    assert report["images_read"] == report["files_scanned"] - len(report["errors"])
    # the same picture saved as JPEG, PNG, WebP, GIF, grey, 16-bit, CMYK: one group of near copies
    grouped = {Path(path).name for path in all_grouped(report)}
    assert {"IMG.JPG", "grayscale.png", "sixteen_bit.png", "cmyk.jpg", "image.webp", "animated.gif"} <= grouped
    assert {"exif_rotated.jpg", "tiny_1x1.png"} <= {Path(path).name for path in report["plain_images"]}


def test_phash_in_processes_equals_in_process(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=16, val_per_class=1)
    copy(dataset, "train/bird/bird_003.jpg", "val/bird/copy.jpg")
    reports = []
    for workers in ("1", "2"):
        assert by_phash.main(["--dataset-dir", str(dataset), "--workers", workers, "--no-cache"]) == 0
        reports.append(load(dataset / "duplicate_report_phash.json"))
    assert reports[0]["files_scanned"] > by_phash.MIN_FILES_FOR_PROCESSES
    assert reports[0]["duplicate_groups"] == reports[1]["duplicate_groups"]
    assert {"train/bird/bird_003.jpg", "val/bird/copy.jpg"} in group_paths(reports[0])["same_class_diff_set"]


def test_draft_decoded_hashes_match_full_decodes(tmp_path: Path) -> None:
    distances = []
    for seed in range(4):
        path = save_image(make_class_image(seed % 4, seed, (800, 600)), tmp_path / f"{seed}.jpg")
        naive = imagehash.phash(Image.open(path).convert("RGB"))
        ours = imagehash.hex_to_hash(by_phash.hash_file((str(path), 8, False))[0]["phash"])
        distances.append(naive - ours)
    assert np.mean(distances) < 2


def test_mirrored_hash_groups_connect_copies() -> None:
    bits = 64
    rng = np.random.default_rng(5)
    hashes = rng.random((6, bits)) < 0.5
    mirrored = rng.random((6, bits)) < 0.5
    hashes[3] = mirrored[0]  # image 3 looks like image 0 mirrored
    words, mirror_words = by_phash.pack_hashes(hashes), by_phash.pack_hashes(mirrored)
    assert by_phash.near_duplicate_groups(words, 2, bits)[0] == []
    assert by_phash.near_duplicate_groups(words, 2, bits, mirror_words)[0] == [[0, 3]]


def test_help_runs_as_a_script() -> None:
    for script in ("detect_duplicates_by_filesize.py", "detect_duplicates_by_phash.py"):
        result = subprocess.run(
            [sys.executable, str(ROOT / "data_collection" / script), "--help"], capture_output=True, text=True
        )
        assert result.returncode == 0 and "--dataset-dir" in result.stdout and "default" in result.stdout


def test_classes_of_any_name_and_a_dataset_without_sets(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for index, name in enumerate(("cats", "dogs")):
        save_image(make_class_image(index, 3, (64, 48)), folder / name / "a.jpg")
    copy(folder, "cats/a.jpg", "dogs/b.jpg")
    assert by_filesize.main(["--dataset-dir", str(folder), "--output", str(tmp_path / "r.json")]) == 0
    report = load(tmp_path / "r.json")
    assert report["sets"] == [dd.WHOLE_FOLDER_SET]
    assert group_paths(report)["diff_class_same_set"] == [{"cats/a.jpg", "dogs/b.jpg"}]
    for _ in range(2):  # the report and gallery written into the folder are not scanned as images next time
        assert by_filesize.main(["--dataset-dir", str(folder), "--gallery"]) == 0
        assert load(folder / "duplicate_report_filesize.json")["files_scanned"] == report["files_scanned"] == 3


def test_help_of_the_report_module_says_what_it_is() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "data_collection" / "duplicate_detection.py"), "--help"],
        capture_output=True,
        text=True,
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert "module imported by the duplicate detectors, not a script" in lines[0]
    assert all(name in lines[0] for name in dd.DETECTORS)


def test_threshold_help_says_what_it_measures() -> None:
    help_text = " ".join(by_phash.get_args_parser().format_help().split())
    assert "Hamming distance: the most hash bits" in help_text and "--report" in help_text


# ----------------------------------------------------------------------------------------------------------------
# What a user sees next: the removal line, the gallery


def fake_report(method: str, warnings: list[str] | None = None) -> dict:
    return {"method": method, "summary": {"groups": 1}, "warnings": warnings or []}


def test_next_step_for_an_embedding_report_is_to_look_never_to_apply() -> None:
    report_path, gallery = Path("d/duplicate_report_embedding.json"), Path("d/duplicate_report_embedding.png")
    lines = " ".join(dd.next_step(fake_report("embedding"), report_path, gallery))
    assert f"look at the groups in {gallery}" in lines and "--apply" not in lines
    assert "--strategy interactive" in lines and "prefer-train" not in lines
    warned = " ".join(dd.next_step(fake_report("embedding", ["implausible"]), report_path, gallery))
    assert "remove_duplicates" not in warned and str(gallery) in warned
    phash = " ".join(dd.next_step(fake_report("phash"), Path("r.json"), None))
    assert "remove_duplicates.py --report r.json --strategy prefer-train" in phash and "--apply" not in phash


def group(group_id: int, category: str, size: int) -> dict:
    files = [{"path": f"{category}/{group_id}/{index}.jpg", "set": "train", "class": "c"} for index in range(size)]
    return {"id": group_id, "category": category, "files": files}


def test_gallery_order_puts_problems_first_then_largest() -> None:
    report = {
        "duplicate_groups": {
            "same_class_and_set": [group(1, "same_class_and_set", 9), group(2, "same_class_and_set", 3)],
            "same_class_diff_set": [group(3, "same_class_diff_set", 2)],
            "diff_class_same_set": [group(4, "diff_class_same_set", 2), group(5, "diff_class_same_set", 4)],
            "diff_class_diff_set": [group(6, "diff_class_diff_set", 2)],
        }
    }
    assert [g["id"] for g in dr.problems_first(report)] == [6, 5, 4, 3, 1, 2]


def test_gallery_title_covers_no_caption_and_says_how_many_groups(near_copy_dataset: Path) -> None:
    dataset = near_copy_dataset
    assert by_phash.main(["--dataset-dir", str(dataset), "--threshold", str(NEAR_THRESHOLD), "--workers", "1"]) == 0
    report = load(dataset / "duplicate_report_phash.json")
    figure, shown = dd.gallery_figure(report, dataset, max_groups=2)
    assert shown == 2 and "showing 2 of 3 groups" in figure._suptitle.get_text()
    columns = len(figure.axes) // 2
    assert "label conflict" in figure.axes[0].get_ylabel()  # the hero/other conflict first, then the leak;
    assert "train/val leakage" in figure.axes[columns].get_ylabel()  # the larger group of bird copies left out
    renderer = figure.canvas.get_renderer()
    title = figure._suptitle.get_window_extent(renderer)
    for ax in figure.axes[:columns]:
        if ax.get_title():
            assert title.y0 >= ax.title.get_window_extent(renderer).y1  # the title lies above every caption


def test_gallery_png_has_ordinary_permissions(near_copy_dataset: Path) -> None:
    gallery = near_copy_dataset / "g.png"
    assert by_phash.main(["--dataset-dir", str(near_copy_dataset), "--workers", "1", "--gallery", str(gallery)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert gallery.stat().st_mode & 0o777 == 0o666 & ~umask


# ----------------------------------------------------------------------------------------------------------------
# Odd files and folders (shared/BAD_INPUTS.md 18-23)


BAD_NAME = os.fsdecode(b"bad\xffname.jpg")  # Linux allows any bytes; Python keeps the 0xff as a lone surrogate


def test_a_non_utf8_name_is_kept_losslessly_and_the_report_stays_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=2, val_per_class=1)
    copy(dataset, "train/bird/bird_000.jpg", f"train/bird/{BAD_NAME}")
    for main, method in ((by_filesize.main, "filesize"), (by_phash.main, "phash")):
        assert main(["--dataset-dir", str(dataset), "--workers", "1"]) == 0
        report_path = dataset / f"duplicate_report_{method}.json"
        report_path.read_bytes().decode("utf-8")  # strict: valid UTF-8
        assert {"train/bird/bird_000.jpg", f"train/bird/{BAD_NAME}"} in group_paths(load(report_path))[
            "same_class_and_set"
        ]
        capsys.readouterr().out.encode("utf-8")  # nothing unprintable reached stdout
    code = remove_duplicates.main(["--report", str(dataset / "duplicate_report_filesize.json"), "--strategy", "safe"])
    assert code == 0 and "bad\\xffname.jpg" in capsys.readouterr().out  # the remover reads it and shows it escaped


def test_named_pipes_are_never_opened(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1)
    os.mkfifo(dataset / "train" / "bird" / "pipe.jpg")
    os.mkfifo(dataset / "train" / "bird" / "pipe_without_extension")
    signal.alarm(60)  # a reader that opens a pipe hangs forever: fail instead
    try:
        for main, method in ((by_filesize.main, "filesize"), (by_phash.main, "phash")):
            assert main(["--dataset-dir", str(dataset), "--workers", "1"]) == 1
            errors = {e["path"]: e["reason"] for e in load(dataset / f"duplicate_report_{method}.json")["errors"]}
            assert errors == {
                "train/bird/pipe.jpg": "is a named pipe (FIFO), not a file",
                "train/bird/pipe_without_extension": "is a named pipe (FIFO), not a file",
            }
    finally:
        signal.alarm(0)


def test_a_symlinked_class_folder_is_read_through(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=2, val_per_class=1)
    outside = tmp_path / "elsewhere" / "ducks"
    save_image(make_class_image(0, 77, (64, 64)), outside / "duck.jpg")
    before = (outside / "duck.jpg").read_bytes()
    (dataset / "train" / "duck").symlink_to(outside, target_is_directory=True)
    shutil.copyfile(outside / "duck.jpg", dataset / "train" / "bird" / "duck_copy.jpg")
    assert by_filesize.main(["--dataset-dir", str(dataset)]) == 0
    report = load(dataset / "duplicate_report_filesize.json")
    assert group_paths(report)["diff_class_same_set"] == [{"train/duck/duck.jpg", "train/bird/duck_copy.jpg"}]
    assert (outside / "duck.jpg").read_bytes() == before and sorted(os.listdir(outside)) == ["duck.jpg"]


def read_only_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    dataset = tmp_path / "dataset"
    for main in (by_filesize.main, by_phash.main):
        assert main(["--dataset-dir", str(dataset)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "read-only" in err and "--report" in err  # one sentence, before any work
        elsewhere = tmp_path / "elsewhere" / "r.json"
        assert main(["--dataset-dir", str(dataset), "--report", str(elsewhere), "--workers", "1"]) == 0
        assert load(elsewhere)["summary"]["groups"] == 1
    return dataset


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_a_read_only_dataset_is_said_at_once_and_report_elsewhere_works(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1)
    copy(dataset, "train/bird/bird_000.jpg", "train/bird/again.jpg")
    os.chmod(dataset, 0o555)
    try:
        before = sorted(os.listdir(dataset))
        read_only_check(tmp_path, capsys)
        assert sorted(os.listdir(dataset)) == before
    finally:
        os.chmod(dataset, 0o755)


def test_a_read_only_dataset_as_seen_by_os_access(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same as above where the tests run as root (for whom chmod does not stop writes)."""
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1)
    copy(dataset, "train/bird/bird_000.jpg", "train/bird/again.jpg")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != dataset and real_access(path, mode))
    before = sorted(os.listdir(dataset))
    read_only_check(tmp_path, capsys)
    assert sorted(os.listdir(dataset)) == before


def test_stale_temp_files_of_our_own_kind_are_removed(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1)
    stale = dataset / ".duplicate_report_filesize.json.abc123.tmp"
    fresh = dataset / ".duplicate_report_filesize.json.def456.tmp"  # maybe a run going on right now
    other = dataset / ".something_else.json.abc123.tmp"
    for path in (stale, fresh, other):
        path.write_text("{", encoding="utf-8")
    two_hours_ago = time.time() - 7200
    for path in (stale, other):
        os.utime(path, (two_hours_ago, two_hours_ago))
    assert by_filesize.main(["--dataset-dir", str(dataset)]) == 0
    assert not stale.exists() and fresh.exists() and other.exists()


def test_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=2, val_per_class=1)
    for main in (by_filesize.main, by_phash.main):
        copy(dataset, "train/bird/bird_000.jpg", "val/bird/again.jpg")
        assert main(["--dataset-dir", str(dataset), "--workers", "1"]) == 0
        err = capsys.readouterr().err
        assert "it/s" not in err and "img/s" not in err and "file/s" not in err and "%|" not in err


def test_the_hash_is_imagehash_phash_of_the_decoded_image(tmp_path: Path) -> None:
    """The detector's hash (and mirrored hash) equals imagehash.phash on the image it decodes, for JPEG (draft mode)
    and PNG, two hash sizes (how close a draft decode stays to a full one: the test above)."""
    paths = [save_image(make_class_image(i % 4, i, (300, 220)), tmp_path / f"{i}.jpg") for i in range(4)]
    paths.append(save_image(make_class_image(1, 9, (90, 70)), tmp_path / "small.png"))
    for hash_size in (8, 6):
        for path in paths:
            values, error = by_phash.hash_file((str(path), hash_size, True))
            decoded, size = by_phash.decode_for_hash(path, hash_size)
            reference = imagehash.phash(decoded, hash_size=hash_size)
            mirrored = imagehash.phash(ImageOps.mirror(decoded), hash_size=hash_size)
            assert error is None and values["phash"] == str(reference) and (values["width"], values["height"]) == size
            assert (np.unpackbits(values["packed"])[: hash_size**2] == reference.hash.ravel()).all()
            assert (np.unpackbits(values["mirrored"])[: hash_size**2] == mirrored.hash.ravel()).all()


def test_phash_rerun_hashes_only_new_files_and_ctrl_c_keeps_what_was_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=3, val_per_class=1)
    real_hash_file = by_phash.hash_file
    calls: list[str] = []

    def interrupted_after_five(task: tuple[str, int, bool]) -> tuple:
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(task[0])
        return real_hash_file(task)

    monkeypatch.setattr(by_phash, "hash_file", interrupted_after_five)
    assert by_phash.main(["--dataset-dir", str(dataset), "--workers", "1"]) == 130
    assert "5 new hashes kept in the cache" in capsys.readouterr().out
    assert not (dataset / "duplicate_report_phash.json").exists()
    monkeypatch.setattr(by_phash, "hash_file", real_hash_file)
    assert by_phash.main(["--dataset-dir", str(dataset), "--workers", "1"]) == 0
    first = load(dataset / "duplicate_report_phash.json")
    assert (first["hashed"], first["from_cache"]) == (11, 5)
    copy(dataset, "train/bird/bird_000.jpg", "val/bird/new_copy.jpg")
    assert by_phash.main(["--dataset-dir", str(dataset), "--workers", "1"]) == 0
    again = load(dataset / "duplicate_report_phash.json")
    assert (again["hashed"], again["from_cache"]) == (1, 16)  # only the new file
    assert {"train/bird/bird_000.jpg", "val/bird/new_copy.jpg"} in group_paths(again)["same_class_diff_set"]
    assert by_phash.main(["--dataset-dir", str(dataset), "--workers", "1", "--hash-size", "6"]) == 0
    assert load(dataset / "duplicate_report_phash.json")["hashed"] == 17  # other settings: another hash


def test_the_cache_keeps_non_utf8_names(tmp_path: Path) -> None:
    key = (f"train/bird/{BAD_NAME}", 10, 20)
    columns = {"value": ("i", (3,))}
    file_cache.save(tmp_path / "c.npz", "s", {key: {"value": np.arange(3)}})
    assert list(file_cache.load(tmp_path / "c.npz", "s", columns, 10**6)) == [key]
    assert file_cache.load(tmp_path / "c.npz", "other settings", columns, 10**6) == {}


def test_hash_detectors_do_not_import_torch() -> None:
    code = (
        "import sys; sys.path[:0] = [sys.argv[1]]; import detect_duplicates_by_filesize, detect_duplicates_by_phash; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "data_collection")], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def write_npz(path: Path, arrays: dict[str, np.ndarray], declared_zeros: int = 0) -> None:
    """An .npz like file_cache.save writes; ``declared_zeros``: one more member of that many zero bytes (a bomb)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as handle:
                np.lib.format.write_array(handle, np.asarray(array), allow_pickle=False)
        if declared_zeros:
            with archive.open("column_bomb.npy", "w", force_zip64=True) as handle:
                chunk = bytes(1 << 20)
                for _ in range(declared_zeros >> 20):
                    handle.write(chunk)


@pytest.mark.parametrize("damage", ["truncated", "integer_paths", "wrong_column_type", "bomb", "header_lies"])
def test_a_bad_cache_is_ignored_with_one_warning_and_rebuilt(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture
) -> None:
    """Issue 17: a truncated .phash_cache.npz gave BadZipFile, integer paths a TypeError, a 195 KB deflate bomb used
    1.8 GB before its traceback. Each is ignored with one warning (nothing unpacked for the bomb), then rebuilt."""
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1)
    args = ["--dataset-dir", str(dataset), "--workers", "1"]
    assert by_phash.main(args) == 0
    cache = dataset / ".phash_cache.npz"
    with np.load(cache) as data:
        arrays = {name: data[name] for name in data.files}
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    elif damage == "integer_paths":
        write_npz(cache, {**arrays, "paths": np.arange(len(arrays["paths"]))})
    elif damage == "wrong_column_type":
        write_npz(cache, {**arrays, "column_packed": arrays["column_packed"].astype(np.float64)})
    elif damage == "bomb":  # 100 MB of zeros deflate to about 100 KB: refused from the zip directory alone
        write_npz(cache, arrays, declared_zeros=100 << 20)
        assert cache.stat().st_size < 200_000
    else:  # an array header declaring a billion rows in a member of a few bytes
        header = {"descr": "<i8", "fortran_order": False, "shape": (10**9,)}
        write_npz(cache, {name: array for name, array in arrays.items() if name != "column_width"})
        with zipfile.ZipFile(cache, "a") as archive, archive.open("column_width.npy", "w") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
    capsys.readouterr()
    peak_before = resource_peak_mb()
    assert by_phash.main(args) == 0
    err = capsys.readouterr().err
    assert err.count("Ignoring unusable cache") == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert resource_peak_mb() - peak_before < 50  # nothing was unpacked into memory
    report = load(dataset / "duplicate_report_phash.json")
    assert report["from_cache"] == 0 and report["hashed"] == report["images_read"] == 8
    assert by_phash.main(args) == 0  # rebuilt: the next run takes everything from it
    assert load(dataset / "duplicate_report_phash.json")["from_cache"] == 8 and "cache" not in capsys.readouterr().err


def resource_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_cache_path_that_is_a_folder_costs_one_warning_not_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1)
    (dataset / ".phash_cache.npz" / "mine").mkdir(parents=True)  # a folder where the cache goes, not ours to replace
    assert by_phash.main(["--dataset-dir", str(dataset), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "Cache not saved" in err and "Traceback" not in err
    assert load(dataset / "duplicate_report_phash.json")["images_read"] == 8
    assert (dataset / ".phash_cache.npz" / "mine").is_dir()
    assert not [path for path in dataset.iterdir() if path.name.endswith(".tmp")]  # no temp file left behind
