"""Tests of detect_duplicates_by_embedding.py with a tiny random ResNet18 checkpoint made by classifier.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import detect_duplicates_by_embedding as by_embedding
import numpy as np
import pytest
import similarity_search as search
import torch
from conftest import (
    DEFAULT_CLASSES,
    ROOT,
    make_class_image,
    make_dataset,
    make_near_duplicates,
    refused_bad_files,
    save_image,
    write_bad_files,
)

import classifier
import duplicate_report as dr
import fileio

SIZE = (128, 96)
# Measured with the seed-0 ResNet18 below: distinct generated images reach 0.995 cosine similarity (a random
# network sees mostly the colour), resized and recompressed copies 0.9996, byte-identical copies 1.0.
NEAR_THRESHOLD = "0.998"
STRICT_THRESHOLD = "0.9999"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = classifier.build_model("resnet18", len(DEFAULT_CLASSES), None)
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    checkpoint = classifier.make_checkpoint(model, arch="resnet18", classes=list(DEFAULT_CLASSES), image_size=64)
    with fileio.atomic_write(path, "wb") as handle:
        torch.save(checkpoint, handle)
    return path


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=2, val_per_class=1, size=SIZE)
    original = make_class_image(0, 900, SIZE)
    save_image(original, dataset / "train" / "bird" / "original.jpg")
    shutil.copyfile(dataset / "train" / "bird" / "original.jpg", dataset / "val" / "bird" / "exact.jpg")
    save_image(make_near_duplicates(original)["resized_50"], dataset / "train" / "bird" / "resized.jpg")
    save_image(make_near_duplicates(original)["jpeg_q40"], dataset / "train" / "plane" / "recompressed.jpg")
    return dataset


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def groups_of(report: dict) -> list[set[str]]:
    return [{entry["path"] for entry in group["files"]} for group in dr.iter_groups(report)]


def run(dataset: Path, model: Path, threshold: str, *extra: str) -> tuple[int, dict]:
    code = by_embedding.main(["--dataset-dir", str(dataset), "--model", str(model), "--threshold", threshold, *extra])
    return code, load(dataset / "duplicate_report_embedding.json")


def test_groups_copies_not_distinct_images_and_reuses_the_cache(
    planted: Path, tiny_model: Path, capsys: pytest.CaptureFixture
) -> None:
    code, strict = run(planted, tiny_model, STRICT_THRESHOLD)
    assert code == 0 and strict["embedded"] == strict["images_read"] == 16 and strict["from_cache"] == 0
    exact = {"train/bird/original.jpg", "val/bird/exact.jpg"}
    assert groups_of(strict) == [exact]
    group = strict["duplicate_groups"]["same_class_diff_set"][0]
    assert all(abs(entry["similarity"] - 1.0) < 1e-4 for entry in group["files"])
    assert strict["embedding_dim"] == 512 and (planted / ".embedding_cache.npz").is_file()

    code, near = run(planted, tiny_model, NEAR_THRESHOLD)
    assert code == 0 and near["embedded"] == 0 and near["from_cache"] == 16  # the second run embeds nothing
    assert groups_of(near) == [exact | {"train/bird/resized.jpg", "train/plane/recompressed.jpg"}]
    assert near["duplicate_groups"]["diff_class_diff_set"]  # bird and plane, train and val: a label conflict

    save_image(make_class_image(3, 5, SIZE), planted / "val" / "other" / "new.jpg")
    code, again = run(planted, tiny_model, NEAR_THRESHOLD)
    assert again["embedded"] == 1 and again["from_cache"] == 16  # only the new image

    cache = planted / ".embedding_cache.npz"  # issue 17: a bad cache is one warning and a rebuild, never a traceback
    with np.load(cache) as data:
        arrays = {name: data[name] for name in data.files}
    for damage in ("truncated", "text embeddings", "another width"):
        if damage == "truncated":
            cache.write_bytes(cache.read_bytes()[:1000])
        elif damage == "text embeddings":
            np.savez(cache, **{**arrays, "column_embedding": arrays["column_embedding"].astype(str)})
        else:  # the model's own sha256 in its settings, but vectors np.stack cannot stack with the new ones
            np.savez(cache, **{**arrays, "column_embedding": arrays["column_embedding"][:, :7]})
        capsys.readouterr()
        code, rebuilt = run(planted, tiny_model, NEAR_THRESHOLD)
        err = capsys.readouterr().err
        assert code == 0 and rebuilt["embedded"] == 17 and rebuilt["from_cache"] == 0
        assert err.count("Ignoring unusable cache") == 1 and "Traceback" not in err


def test_bad_files_are_skipped_with_reasons(tmp_path: Path, tiny_model: Path) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1, size=(64, 48))
    files = write_bad_files(dataset / "train" / "other")
    try:
        code, report = run(dataset, tiny_model, STRICT_THRESHOLD, "--no-cache")
    finally:
        os.chmod(files["unreadable.jpg"], 0o644)
    assert code == 1
    assert {Path(error["path"]).name for error in report["errors"]} == refused_bad_files()
    assert report["images_read"] == report["files_scanned"] - len(report["errors"])
    assert not (dataset / ".embedding_cache.npz").exists()


def test_a_missing_or_wrong_model_is_one_clear_sentence(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture
) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1, size=(64, 48))
    (tmp_path / "not_a_model.pth").write_text("hello", encoding="utf-8")
    for model, message in ((tmp_path / "missing.pth", "not found"), (tmp_path / "not_a_model.pth", "cannot use")):
        code = by_embedding.main(["--dataset-dir", str(dataset), "--model", str(model), "--threshold", "0.95"])
        assert code == 2
        assert message in capsys.readouterr().err
    assert not (dataset / "duplicate_report_embedding.json").exists()


def test_help_runs_as_a_script() -> None:
    script = ROOT / "data_collection" / "detect_duplicates_by_embedding.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--model" in result.stdout and "models/best_model.pth" in result.stdout


def test_a_weak_model_gets_a_warning_no_chained_groups_and_no_removal_command(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture
) -> None:
    """A random network maps unrelated images close together: at 0.95 nearly everything is "similar"."""
    dataset = make_dataset(tmp_path / "dataset", train_per_class=12, val_per_class=3, size=(64, 48))
    code, report = run(dataset, tiny_model, "0.95", "--no-cache", "--no-gallery")
    out = capsys.readouterr().out
    assert code == 0 and report["warnings"]
    assert "WARNING" in out and "weak model" in out and "--threshold" in out
    assert "remove_duplicates" not in out and "--apply" not in out  # no removal command at all
    assert report["random_pair_median"] > by_embedding.IMPLAUSIBLE_MEDIAN
    for group in dr.iter_groups(report):  # no chains: every member is near its group's representative
        assert all(entry["similarity"] >= 0.95 - 1e-5 for entry in group["files"])
        assert group["representative"] in {entry["path"] for entry in group["files"]}


def test_implausible_output_is_named() -> None:
    plausible = by_embedding.implausibility_warnings(1000, [[0, 1], [2, 3, 4]], 0.35)
    assert plausible == []
    too_many = by_embedding.implausibility_warnings(100, [list(range(30))], 0.35)
    assert len(too_many) == 2 and "30 of 100 images (30%)" in too_many[0] and "a group has 30 images" in too_many[1]
    bunched = by_embedding.implausibility_warnings(1000, [], 0.93)
    assert len(bunched) == 1 and "median cosine similarity of 0.930" in bunched[0] and "weak model" in bunched[0]


def test_auto_threshold_follows_the_spread_of_random_pairs() -> None:
    rng = np.random.default_rng(0)
    strong, strong_figures = by_embedding.auto_threshold(rng.uniform(0.1, 0.7, 20_000))
    weak, weak_figures = by_embedding.auto_threshold(rng.uniform(0.97, 0.995, 20_000))
    assert 0.84 < strong < 0.86 and 0.997 < weak < 0.998
    assert strong_figures["chosen"] == strong and strong_figures["random_pairs"] == 20_000
    assert set(strong_figures["quantiles"]) == {"0.5", "0.9", "0.99", "0.999"} and "quantile" in weak_figures["rule"]


def test_auto_threshold_is_the_default_and_its_figures_are_in_the_report(planted: Path, tiny_model: Path) -> None:
    code = by_embedding.main(["--dataset-dir", str(planted), "--model", str(tiny_model), "--no-gallery"])
    report = load(planted / "duplicate_report_embedding.json")
    threshold = report["threshold"]
    assert code == 0 and threshold["source"] == "auto" and report["arguments"]["threshold"] == "auto"
    top = threshold["quantiles"]["0.999"]
    assert threshold["value"] == pytest.approx(top + 0.5 * (1 - top), abs=1e-4) and threshold["random_pairs"] == 120
    assert {"train/bird/original.jpg", "val/bird/exact.jpg"} in groups_of(report)


def test_odd_files_and_no_progress_bars(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1, size=(64, 48))
    bad_name = os.fsdecode(b"bad\xffname.jpg")
    shutil.copyfile(dataset / "train" / "bird" / "bird_000.jpg", dataset / "train" / "bird" / bad_name)
    os.mkfifo(dataset / "train" / "plane" / "pipe")
    code, report = run(dataset, tiny_model, STRICT_THRESHOLD)
    err = capsys.readouterr().err
    assert code == 1 and report["errors"] == [
        {"path": "train/plane/pipe", "reason": "is a named pipe (FIFO), not a file"}
    ]
    assert {"train/bird/bird_000.jpg", f"train/bird/{bad_name}"} in groups_of(report)
    (dataset / "duplicate_report_embedding.json").read_bytes().decode("utf-8")  # strict UTF-8
    assert "it/s" not in err and "img/s" not in err and "%|" not in err
    assert (dataset / "duplicate_report_embedding.png").is_file()  # the gallery is written by default


def test_search_choice_is_in_the_report_and_a_missing_faiss_is_one_sentence(
    planted: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, exact = run(planted, tiny_model, NEAR_THRESHOLD, "--no-gallery", "--search", "numpy")  # the old name
    assert code == 0 and exact["search"] == "numpy" and exact["search_settings"] == {"engine": "numpy", "exact": True}
    assert exact["arguments"]["search"] == "exact" and "numpy (exact: every pair)" in capsys.readouterr().out
    monkeypatch.setattr(search, "import_faiss", lambda: None)
    code, fallback = run(planted, tiny_model, NEAR_THRESHOLD, "--no-gallery", "--search", "faiss")
    err = capsys.readouterr().err
    assert code == 0 and fallback["search"] == "numpy" and groups_of(fallback) == groups_of(exact)
    assert err.count("FAISS is not installed (pip install faiss-cpu)") == 1
    assert by_embedding.main(["--dataset-dir", str(planted), "--model", str(tiny_model), "--nprobe", "0"]) == 2
    assert "--nprobe must be at least 1" in capsys.readouterr().err


def test_faiss_search_in_the_detector_gives_the_same_groups(planted: Path, tiny_model: Path) -> None:
    pytest.importorskip("faiss")
    code, exact = run(planted, tiny_model, NEAR_THRESHOLD, "--no-gallery", "--search", "exact")
    code_faiss, with_faiss = run(planted, tiny_model, NEAR_THRESHOLD, "--no-gallery", "--search", "faiss")
    assert code == code_faiss == 0 and with_faiss["search"] == "faiss-ivf"
    assert with_faiss["search_settings"]["exact"] is True  # 16 images: one cell, searched whole
    assert with_faiss["duplicate_groups"] == exact["duplicate_groups"] and groups_of(exact)
