"""classifier.py: checkpoint round trip, preprocessing of every bad file, threshold semantics, refusals, CLI."""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
import os
import pickle
import re
import socket
import subprocess
import sys
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    BAD_FILE_EXPECTATIONS,
    ROOT,
    exif_rotated_jpeg,
    make_class_image,
    make_dataset,
    refused_bad_files,
    save_image,
)
from PIL import Image

import classifier
from classifier import BirdPlaneSupermanClassifier, CheckpointError, ImageLoadError

CLASSES = ["bird", "plane", "superman", "other"]
ALLOWED_IMPORTS = {"torch", "torchvision", "PIL", "numpy", "onnx", "onnxruntime"}


def save_tiny_model(path: Path, *, classes=CLASSES, arch="resnet18", image_size=64, **fields) -> torch.nn.Module:
    torch.manual_seed(0)
    model = classifier.build_model(arch, len(classes), weights=None).eval()
    checkpoint = classifier.make_checkpoint(model, arch=arch, classes=classes, image_size=image_size, **fields)
    torch.save(checkpoint, path)  # how the trainer writes it (through fileio.atomic_write)
    return model


def save_constant_model(path: Path, probabilities: list[float], temperature: float = 1.0, **fields) -> None:
    """A model whose logits are log(probabilities) * temperature whatever the image: its outputs are known."""
    model = classifier.build_model("resnet18", len(probabilities), weights=None)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.log(torch.tensor(probabilities)) * temperature)
    checkpoint = classifier.make_checkpoint(
        model, arch="resnet18", classes=CLASSES[: len(probabilities)], image_size=32, temperature=temperature, **fields
    )
    torch.save(checkpoint, path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "best_model.pth"
    save_tiny_model(path, confidence_threshold=0.0)
    return path


@pytest.fixture(scope="module")
def clf(model_path) -> BirdPlaneSupermanClassifier:
    return BirdPlaneSupermanClassifier(model_path, device="cpu")


def plain_types_only(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_types_only(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(plain_types_only(v) for v in value)
    return isinstance(value, str | int | float | bool | torch.Tensor) or value is None


# -- checkpoint round trip ---------------------------------------------------------------------------------------


def test_round_trip_predicts_what_the_model_computes(tmp_path):
    path = tmp_path / "m.pth"
    model = save_tiny_model(path, confidence_threshold=0.0, extra={"epoch": 3, "metrics": {"macro_f1": 0.5}})
    raw = torch.load(path, weights_only=True)
    assert plain_types_only(raw)
    assert raw["format_version"] == classifier.CHECKPOINT_FORMAT_VERSION
    assert raw["classes"] == CLASSES and raw["arch"] == "resnet18" and raw["image_size"] == 64
    assert raw["resize_size"] == 73 and raw["temperature"] == 1.0 and raw["epoch"] == 3

    image_path = save_image(make_class_image(1, 5, (100, 80)), tmp_path / "img.png")
    pixels = classifier.image_to_uint8(classifier.load_image(image_path), 64, 73)
    expected_input = classifier.normalize_batch(
        torch.from_numpy(pixels[None].copy()), classifier.IMAGENET_MEAN, classifier.IMAGENET_STD
    )
    with torch.no_grad():
        expected = torch.softmax(model(expected_input), dim=1)[0].numpy()

    clf = BirdPlaneSupermanClassifier(path, device="cpu")
    pred_class, confidence, probs = clf.predict(image_path)
    assert list(probs) == CLASSES
    np.testing.assert_allclose([probs[c] for c in CLASSES], expected, atol=1e-5)
    assert pred_class == CLASSES[int(np.argmax(expected))]
    assert confidence == pytest.approx(float(expected.max()), abs=1e-5)
    # a PIL image gives the same answer as its file
    assert clf.predict(Image.open(image_path))[2] == pytest.approx(probs, abs=1e-6)


def test_settings_come_from_the_checkpoint(tmp_path):
    path = tmp_path / "m.pth"
    save_tiny_model(
        path,
        classes=["cat", "dog"],
        image_size=48,
        resize_size=60,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        confidence_threshold=0.55,
        temperature=1.7,
    )
    clf = BirdPlaneSupermanClassifier(path, device="cpu")
    assert clf.classes == ["cat", "dog"]
    assert (clf.image_size, clf.resize_size) == (48, 60)
    assert clf.mean == (0.5, 0.5, 0.5) and clf.std == (0.25, 0.25, 0.25)
    assert clf.confidence_threshold == 0.55 and clf.temperature == 1.7
    assert BirdPlaneSupermanClassifier(path, confidence_threshold=0.9, device="cpu").confidence_threshold == 0.9


# -- threshold and temperature -----------------------------------------------------------------------------------


def test_threshold_below_gives_other_and_exactly_at_keeps_the_class(tmp_path):
    path = tmp_path / "m.pth"
    save_constant_model(path, [0.1, 0.6, 0.2, 0.1], confidence_threshold=0.5)
    image = make_class_image(0, 1, (40, 40))
    clf = BirdPlaneSupermanClassifier(path, device="cpu")
    pred_class, confidence, probs = clf.predict(image)
    assert pred_class == "plane" and confidence == pytest.approx(0.6, abs=1e-5)

    clf.set_confidence_threshold(confidence)  # exactly at: kept
    assert clf.predict(image)[0] == "plane"
    clf.set_confidence_threshold(math.nextafter(confidence, 1.0))  # just above: fallback, numbers unchanged
    below_class, below_confidence, below_probs = clf.predict(image)
    assert below_class == classifier.FALLBACK_LABEL
    assert below_confidence == confidence and below_probs == probs

    for bad in (-0.01, 1.01, float("nan")):
        with pytest.raises(ValueError):
            clf.set_confidence_threshold(bad)
    with pytest.raises(ValueError):
        BirdPlaneSupermanClassifier(path, confidence_threshold=2.0, device="cpu")


def test_probabilities_use_the_stored_temperature(tmp_path):
    path = tmp_path / "m.pth"
    # logits are log(p) * 2; with T = 2 the probabilities come back as p
    save_constant_model(path, [0.1, 0.6, 0.2, 0.1], temperature=2.0)
    _, _, probs = BirdPlaneSupermanClassifier(path, device="cpu").predict(make_class_image(0, 1, (40, 40)))
    np.testing.assert_allclose([probs[c] for c in CLASSES], [0.1, 0.6, 0.2, 0.1], atol=1e-5)


# -- preprocessing of bad inputs ---------------------------------------------------------------------------------


def test_every_bad_file_through_predict(clf, bad_files):
    refused = refused_bad_files()
    for name, path in bad_files.items():
        if name in refused:
            with pytest.raises(ImageLoadError):
                clf.predict(path)
        else:
            _, _, probs = clf.predict(path)
            assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4), name


def test_every_bad_file_through_predict_batch_keeps_order_and_warns(clf, bad_files, caplog):
    names = sorted(bad_files)
    paths = [bad_files[name] for name in names]
    with caplog.at_level(logging.WARNING, logger="classifier"):
        results = list(clf.predict_batch(paths, batch_size=4))
    assert [r[0] for r in results] == paths
    refused = refused_bad_files()
    for name, (path, pred_class, confidence, probs) in zip(names, results):
        if name in refused:
            assert (pred_class, confidence, probs) == (None, 0.0, {})
            assert any(path.name in record.getMessage() for record in caplog.records), name
        else:
            assert pred_class in CLASSES + [classifier.FALLBACK_LABEL] and probs, name
    assert len(refused) >= 4


def test_load_image_respects_exif_alpha_and_16_bit(bad_files, tmp_path):
    upright = classifier.load_image(exif_rotated_jpeg(tmp_path / "rot.jpg"))
    assert upright.size == (40, 80)
    top, bottom = np.asarray(upright)[5, 20], np.asarray(upright)[75, 20]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200  # red half on top after the rotation

    rgba = np.asarray(classifier.load_image(bad_files["rgba.png"]))
    assert tuple(rgba[40, 40]) == (255, 255, 255)  # transparent -> white, not black
    assert tuple(rgba[2, 2]) == (255, 0, 0)

    eight = np.asarray(classifier.load_image(bad_files["grayscale.png"]), dtype=float)
    sixteen = np.asarray(classifier.load_image(bad_files["sixteen_bit.png"]), dtype=float)
    assert np.abs(eight - sixteen).max() <= 1  # scaled down, not clipped to white

    gif = classifier.load_image(bad_files["animated.gif"])
    assert gif.mode == "RGB" and np.asarray(gif)[..., 0].mean() > np.asarray(gif)[..., 2].mean()  # first (red) frame

    with pytest.raises(ImageLoadError, match="bomb"):
        classifier.load_image(bad_files["bomb.png"])
    with pytest.raises(ImageLoadError, match="HTML"):
        classifier.load_image(bad_files["html_page.jpg"])


def test_draft_decoding_is_close_to_full_decoding(tmp_path):
    path = save_image(make_class_image(2, 9, (1000, 750)), tmp_path / "big.jpg", quality=90)
    drafted = classifier.load_image(path, draft_size=(256, 256))
    assert min(drafted.size) >= 256 and drafted.size[0] < 1000  # decoded at reduced scale, still big enough
    full = classifier.image_to_uint8(classifier.load_image(path), 224, 256).astype(float)
    fast = classifier.image_to_uint8(drafted, 224, 256).astype(float)
    assert np.abs(full - fast).mean() < 3.0


def test_extreme_aspect_ratio_is_cropped_without_a_giant_resize():
    box = classifier.center_crop_box(2000, 10, 224, 256)
    side = 10 * 224 / 256  # the square the centre crop keeps, in original pixels
    assert box[3] - box[1] == pytest.approx(side) and box[2] - box[0] == pytest.approx(side)
    assert (box[0] + box[2]) / 2 == pytest.approx(1000)
    array = classifier.image_to_uint8(make_class_image(0, 0, (2000, 10)), 224, 256)
    assert array.shape == (224, 224, 3)


def test_find_image_files_by_content_and_any_case(bad_files):
    found = {path.name for path in classifier.find_image_files(bad_files["IMG.JPG"].parent)}
    assert {"IMG.JPG", "photo.Jpeg", "no_extension", "my photo.jpg", "fötö_鳥.png", "-dash.jpg"} <= found
    assert found == set(BAD_FILE_EXPECTATIONS)


# -- refusing bad model files -------------------------------------------------------------------------------------


class _RunsCode:
    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_refuses_bad_model_files(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a model")
    with pytest.raises(CheckpointError, match="is a text file, not a birdplane checkpoint"):
        BirdPlaneSupermanClassifier(text, device="cpu")

    state_only = tmp_path / "state.pth"
    torch.save(classifier.build_model("resnet18", 4).state_dict(), state_only)
    with pytest.raises(CheckpointError, match="bare state dict .*not a birdplane checkpoint"):
        BirdPlaneSupermanClassifier(state_only, device="cpu")

    future = tmp_path / "future.pth"
    checkpoint = classifier.make_checkpoint(classifier.build_model("resnet18", 4), arch="resnet18", classes=CLASSES)
    torch.save({**checkpoint, "format_version": 99}, future)
    with pytest.raises(CheckpointError, match="format version 99"):
        BirdPlaneSupermanClassifier(future, device="cpu")

    other_arch = tmp_path / "arch.pth"
    torch.save({**checkpoint, "arch": "resnet34"}, other_arch)
    with pytest.raises(CheckpointError, match="do not match a resnet34"):
        BirdPlaneSupermanClassifier(other_arch, device="cpu")

    other_count = tmp_path / "count.pth"
    torch.save({**checkpoint, "classes": CLASSES[:3], "num_classes": 3}, other_count)
    with pytest.raises(CheckpointError, match="4 outputs but the checkpoint lists 3 classes"):
        BirdPlaneSupermanClassifier(other_count, device="cpu")

    with pytest.raises(CheckpointError, match="does not exist"):
        BirdPlaneSupermanClassifier(tmp_path / "missing.pth", device="cpu")


def test_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "code_ran"
    payload = _RunsCode()
    payload.marker = marker
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"format_version": 1, "model_state_dict": payload}))
    with pytest.raises(CheckpointError, match="weights_only"):
        BirdPlaneSupermanClassifier(evil, device="cpu")
    assert not marker.exists()
    # the same payload through torch.save's zip format is refused too
    evil_zip = tmp_path / "evil_zip.pth"
    torch.save({"format_version": 1, "model_state_dict": payload}, evil_zip)
    with pytest.raises(CheckpointError, match="weights_only"):
        classifier.load_checkpoint(evil_zip)
    assert not marker.exists()


def test_build_model_weights_from_file_and_without_network(tmp_path, monkeypatch):
    donor = classifier.build_model("resnet18", 10)
    weights_file = tmp_path / "backbone.pth"
    torch.save(donor.state_dict(), weights_file)
    model = classifier.build_model("resnet18", 4, weights=str(weights_file))
    assert torch.equal(model.layer4[0].conv1.weight, donor.layer4[0].conv1.weight)
    assert model.fc.out_features == 4
    with pytest.raises(CheckpointError, match="do not fit a resnet34"):
        classifier.build_model("resnet34", 4, weights=str(weights_file))
    with pytest.raises(ValueError, match="resnet50"):
        classifier.build_model("vgg16", 4)

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(classifier.WeightsUnavailableError, match="--weights none"):
        classifier.build_model("resnet18", 4, weights="imagenet")


def test_embed_batch_gives_unit_vectors_in_order(clf, bad_files):
    paths = [bad_files["IMG.JPG"], bad_files["zero_bytes.jpg"], bad_files["rgba.png"]]
    results = list(clf.embed_batch(paths, batch_size=2))
    assert [r[0] for r in results] == paths
    assert results[1][1] is None and "empty" in results[1][2]
    for _, vector, _ in (results[0], results[2]):
        assert vector.shape == (512,) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


# -- command line --------------------------------------------------------------------------------------------------


def test_cli_on_a_file_and_a_folder(model_path, tmp_path, capsys):
    folder = make_dataset(tmp_path / "ds", classes=("bird", "plane"), train_per_class=2, val_per_class=0) / "train"
    image = folder / "bird" / "bird_000.jpg"
    assert classifier.main([str(model_path), str(image)]) == 0
    table = capsys.readouterr().out
    assert "bird_000.jpg" in table and "1 classified, 0 failed" in table

    assert classifier.main([str(model_path), str(folder), "--recursive", "--json", "--top-k", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["bird_000.jpg", "bird_001.jpg", "plane_000.jpg", "plane_001.jpg"]
    for row in rows:
        assert len(row["top_k"]) == 2 and sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert classifier.main([str(model_path), str(folder)]) == 2  # no images directly in train/, only in subfolders
    assert capsys.readouterr().err.startswith("error: no image files found")


def test_cli_reports_bad_files_with_exit_code_1_and_writes_csv(model_path, bad_files, tmp_path, capsys):
    out_csv = tmp_path / "predictions.csv"
    code = classifier.main([str(model_path), str(bad_files["IMG.JPG"].parent), "--csv", str(out_csv), "--json"])
    assert code == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    failed = {Path(r["path"]).name for r in rows if r["error"]}
    assert failed == refused_bad_files()
    with open(out_csv, newline="", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)


def test_cli_bad_model_is_one_sentence(tmp_path, bad_files, capsys):
    bogus = tmp_path / "bogus.pth"
    bogus.write_text("hello")
    assert classifier.main([str(bogus), str(bad_files["IMG.JPG"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_help_runs_in_a_subprocess():
    result = subprocess.run([sys.executable, str(ROOT / "classifier.py"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--threshold" in result.stdout and "--top-k" in result.stdout


def test_classifier_imports_nothing_of_ours():
    tree = ast.parse((ROOT / "classifier.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported - ALLOWED_IMPORTS <= set(sys.stdlib_module_names)
    ours = {p.stem for p in ROOT.glob("*.py")} | {p.stem for p in (ROOT / "data_collection").glob("*.py")}
    code = "import sys, classifier; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(result.stdout.split())
    assert loaded & (ours - {"classifier"}) == set()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("confidence_threshold", 1.5, "confidence_threshold"),
        ("temperature", "abc", "temperature"),
        ("temperature", 0.0, "temperature"),
        ("mean", [0.5], "mean"),
        ("std", [0.2, 0.2, 0.0], "std"),
        ("image_size", -4, "image_size"),
    ],
)
def test_refuses_checkpoints_with_invalid_settings(tmp_path, field, value, message):
    checkpoint = classifier.make_checkpoint(classifier.build_model("resnet18", 4), arch="resnet18", classes=CLASSES)
    path = tmp_path / "odd.pth"
    torch.save({**checkpoint, field: value}, path)
    with pytest.raises(CheckpointError, match=f"invalid {message}"):
        BirdPlaneSupermanClassifier(path, device="cpu")


def test_cli_refuses_unavailable_device_and_missing_csv_folder(model_path, bad_files, tmp_path, capsys):
    image = str(bad_files["IMG.JPG"])
    for device in ("bogus", "cuda:7" if torch.cuda.is_available() else "cuda"):
        assert classifier.main([str(model_path), image, "--device", device]) == 2
        assert capsys.readouterr().err.startswith("error: --device")
    assert classifier.main([str(model_path), image, "--csv", str(tmp_path / "no_such_folder" / "out.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # an existing CSV is replaced whole, never left half-written
    out_csv = tmp_path / "out.csv"
    out_csv.write_text("old\n")
    assert classifier.main([str(model_path), image, "--csv", str(out_csv)]) == 0
    assert out_csv.read_text(encoding="utf-8").splitlines()[0].startswith("path,predicted_class,confidence")


# -- import cost, the list API, reasons in the output ---------------------------------------------------------------


def test_import_and_image_reading_leave_torch_unloaded(bad_files):
    code = (
        "import sys, classifier\n"
        f"files = classifier.find_image_files({str(bad_files['IMG.JPG'].parent)!r})\n"
        "classifier.load_image(files[0], mode='L')\n"
        "print(len(files), 'torch' in sys.modules, 'torchvision' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(len(BAD_FILE_EXPECTATIONS)), "False", "False"]


def test_predict_batch_is_a_list_of_the_inputs_length_and_order(clf, bad_files):
    paths = [bad_files["IMG.JPG"], bad_files["zero_bytes.jpg"], bad_files["rgba.png"], bad_files["html_page.jpg"]]
    paths.append(make_class_image(1, 3, (50, 40)))  # a PIL image among the paths
    results = clf.predict_batch(paths, batch_size=2)
    assert isinstance(results, list) and len(results) == len(paths)
    assert [r[0] for r in results] == paths and results[0] == results[0:1][0]  # indexable, and again the same
    assert results[1][1:] == (None, 0.0, {}) and results[3][1:] == (None, 0.0, {})  # unreadable: kept in place
    assert all(r[1] is not None for r in (results[0], results[2], results[4]))
    assert list(results) == results  # a second pass yields everything again

    streamed = clf.iter_predictions(iter(paths), batch_size=2)
    assert not isinstance(streamed, list) and next(streamed)[0] == paths[0]
    assert [r[0] for r in streamed] == paths[1:]


def test_csv_and_json_error_field_holds_the_reason(model_path, bad_files, tmp_path, capsys):
    out_csv = tmp_path / "predictions.csv"
    inputs = [str(bad_files[name]) for name in ("zero_bytes.jpg", "html_page.jpg", "IMG.JPG")]
    assert classifier.main([str(model_path), *inputs, "--json", "--csv", str(out_csv)]) == 1
    rows = {Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["zero_bytes.jpg"]["error"] == "empty file (0 bytes)"
    assert rows["html_page.jpg"]["error"] == "not an image: HTML page saved with an image name"
    assert rows["IMG.JPG"]["error"] is None
    with open(out_csv, newline="", encoding="utf-8") as handle:
        errors = {Path(r["path"]).name: r["error"] for r in csv.DictReader(handle)}
    assert errors == {
        "zero_bytes.jpg": "empty file (0 bytes)",
        "html_page.jpg": "not an image: HTML page saved with an image name",
        "IMG.JPG": "",
    }


# -- absurd and odd model files -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image_size", 100_000, r"invalid image_size 100000 \(a whole number of pixels from 16 to 1024"),
        ("image_size", 8, "invalid image_size 8"),
        ("image_size", 64.0, "invalid image_size 64.0"),
        ("resize_size", 10**9, r"invalid resize_size 1000000000 \(a whole number from image_size 64 to 128"),
        ("resize_size", 32, "invalid resize_size 32"),
        ("std", [0.2, -0.2, 0.2], r"invalid std \[0.2, -0.2, 0.2\] \(each must be above 0"),
        ("std", [0.0, 0.2, 0.2], "invalid std"),
        ("mean", [0.5, 0.5, 0.5, 0.5], r"invalid mean \[0.5, 0.5, 0.5, 0.5\] \(three numbers, one per colour channel"),
        ("mean", [0.5, 300.0, 0.5], "invalid mean"),
        ("num_classes", 7, "says 7 classes but lists 4"),
        ("confidence_threshold", -0.1, r"invalid confidence_threshold -0.1 \(a number from 0 to 1"),
        ("temperature", 1e-30, "invalid temperature"),
        ("classes", ["bird", "bird", "plane", "other"], "the same class name twice"),
        ("classes", [f"c{i}" for i in range(20_000)], "20000 classes, more than the 10000"),
        pytest.param(
            "arch", "x" * 3_000_000, r"architecture 'x{199}… \(3,000,002 characters\) \(known: resnet18", id="long"
        ),
        pytest.param(
            "mean", [0.5] * 100_000, r"mean \[0\.5, 0\.5, .{189}… \(500,000 characters\) \(three numbers", id="many"
        ),
    ],
)
def test_absurd_settings_are_refused_before_anything_is_built(tmp_path, monkeypatch, field, value, message):
    checkpoint = classifier.make_checkpoint(
        classifier.build_model("resnet18", 4), arch="resnet18", classes=CLASSES, image_size=64
    )
    path = tmp_path / "absurd.pth"
    torch.save({**checkpoint, field: value}, path)

    def must_not_build(*args, **kwargs):
        raise AssertionError("a model was built from an absurd checkpoint")

    monkeypatch.setattr(classifier, "build_model", must_not_build)
    with pytest.raises(CheckpointError, match=message) as refused:
        BirdPlaneSupermanClassifier(path, device="cpu")
    assert str(refused.value).startswith(str(path)) and str(refused.value).count(". ") == 0
    assert len(str(refused.value)) < len(str(path)) + 400  # a crafted field is cut, not echoed whole


def test_cli_refuses_an_absurd_model_with_exit_2_and_one_line(tmp_path, bad_files, capsys):
    checkpoint = classifier.make_checkpoint(classifier.build_model("resnet18", 4), arch="resnet18", classes=CLASSES)
    path = tmp_path / "huge.pth"
    torch.save({**checkpoint, "image_size": 100_000}, path)
    assert classifier.main([str(path), str(bad_files["IMG.JPG"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path} has an invalid image_size 100000") and len(err.strip().splitlines()) == 1


def test_model_files_that_are_something_else_say_what_they_are(tmp_path, bad_files):
    expected = r"\(expected a checkpoint file written by train_classifier.py\)"
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    photo = tmp_path / "photo.pth"
    photo.write_bytes(bad_files["IMG.JPG"].read_bytes())
    page = tmp_path / "page.pth"
    page.write_text("<!DOCTYPE html><html><body>404</body></html>", encoding="utf-8")
    archive = tmp_path / "archive.pth"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("readme.txt", "hello")
    good = tmp_path / "good.pth"
    save_tiny_model(good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    legacy = tmp_path / "legacy.pth"
    torch.save(torch.load(good, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    legacy_truncated = tmp_path / "legacy_truncated.pth"
    legacy_truncated.write_bytes(legacy.read_bytes()[: legacy.stat().st_size // 2])

    cases = [
        (empty, f"^{re.escape(str(empty))} is empty \\(0 bytes\\), not a birdplane checkpoint {expected}\\.$"),
        (photo, f"^{re.escape(str(photo))} is a JPEG image, not a birdplane checkpoint {expected}\\.$"),
        (page, f"^{re.escape(str(page))} is an HTML page, not a birdplane checkpoint {expected}\\.$"),
        (
            archive,
            f"^{re.escape(str(archive))} is a zip archive but not a PyTorch file, so not a birdplane checkpoint",
        ),
        (
            truncated,
            f"^{re.escape(str(truncated))} is truncated or damaged: it starts like a PyTorch file but cannot be read",
        ),
        (legacy_truncated, f"^{re.escape(str(legacy_truncated))} is truncated or damaged"),
        (tmp_path, f"^{re.escape(str(tmp_path))} is a folder, not a birdplane checkpoint {expected}"),
        (tmp_path / "missing.pth", "does not exist; train one with train_classifier.py"),
    ]
    for path, message in cases:
        with pytest.raises(CheckpointError, match=message):
            classifier.load_checkpoint(path)
    assert classifier.load_checkpoint(legacy)["classes"] == CLASSES  # the old container still loads


# -- files that are not regular files, symlinked folders --------------------------------------------------------------


def test_fifo_socket_and_device_are_listed_by_name_only_and_never_opened(tmp_path, model_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    save_image(make_class_image(0, 1), folder / "real.jpg")
    os.mkfifo(folder / "pipe.jpg")
    os.mkfifo(folder / "pipe_without_extension")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "sock.jpg"))
    (folder / "null.jpg").symlink_to(os.devnull)  # a device node, reached through a symlink
    os.mkfifo(tmp_path / "model_pipe.pth")
    # in a subprocess with a timeout: opening a FIFO would hang for ever instead of failing
    code = f"""
import json, classifier
from pathlib import Path
folder = Path({str(folder)!r})
found = [p.name for p in classifier.find_image_files(folder)]
reasons = {{}}
for name in ("pipe.jpg", "sock.jpg", "null.jpg", "pipe_without_extension"):
    try:
        classifier.load_image(folder / name)
    except classifier.ImageLoadError as error:
        reasons[name] = str(error)
sniffed = classifier.is_image_file(folder / "pipe_without_extension")
content = classifier.describe_content(folder / "pipe.jpg")
try:
    classifier.load_checkpoint({str(tmp_path / "model_pipe.pth")!r})
except classifier.CheckpointError as error:
    model_error = str(error)
print(json.dumps([found, reasons, sniffed, content, model_error]))
"""
    try:
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    found, reasons, sniffed, content, model_error = json.loads(result.stdout)
    assert found == ["null.jpg", "pipe.jpg", "real.jpg", "sock.jpg"]  # by name; the pipe without one is not sniffed
    assert reasons == {
        "pipe.jpg": "is a named pipe (FIFO), not a file",
        "sock.jpg": "is a socket, not a file",
        "null.jpg": "is a device node, not a file",
        "pipe_without_extension": "is a named pipe (FIFO), not a file",
    }
    assert sniffed is False and content == "a named pipe (FIFO), never opened"
    assert model_error.endswith(
        "model_pipe.pth is a named pipe (FIFO), not a birdplane checkpoint "
        "(expected a checkpoint file written by train_classifier.py)."
    )


def test_symlinked_folders_are_followed_once_and_loops_end(tmp_path):
    outside = tmp_path / "elsewhere" / "bird"
    save_image(make_class_image(0, 1), outside / "far.jpg")
    train = tmp_path / "dataset" / "train"
    save_image(make_class_image(1, 2), train / "plane" / "near.jpg")
    (train / "bird").symlink_to(outside, target_is_directory=True)  # a symlinked class folder: read through
    (train / "a_plane_alias").symlink_to(train / "plane", target_is_directory=True)  # the same folder twice
    (train / "plane" / "loop").symlink_to(train, target_is_directory=True)  # a loop back up
    found = [path.relative_to(train).as_posix() for path in classifier.find_image_files(train)]
    assert found == ["bird/far.jpg", "plane/near.jpg"]  # the alias and the loop add nothing; real names win
    assert classifier.find_image_files(train / "bird") == [train / "bird" / "far.jpg"]


# -- names that would break output ----------------------------------------------------------------------------------


def test_non_utf8_file_name_in_table_json_and_csv(model_path, tmp_path, capsys):
    if sys.platform != "linux" or sys.getfilesystemencoding().lower() != "utf-8":
        pytest.skip("needs a file system that accepts any bytes in names (Linux)")
    folder = tmp_path / "odd_names"
    folder.mkdir()
    raw_name = b"bad\xffname.jpg"
    save_image(make_class_image(0, 4), Path(os.fsdecode(os.path.join(os.fsencode(folder), raw_name))))
    out_csv = tmp_path / "out.csv"

    assert classifier.main([str(model_path), str(folder), "--json", "--csv", str(out_csv)]) == 0
    line = capsys.readouterr().out.strip()
    line.encode("utf-8")  # valid UTF-8: no lone surrogate reached stdout
    assert "\\udcff" in line
    assert os.fsencode(json.loads(line)["path"]).endswith(b"/" + raw_name)  # lossless
    text = out_csv.read_bytes().decode("utf-8")  # strict: the CSV is valid UTF-8
    assert "bad\\udcffname.jpg" in text

    assert classifier.main([str(model_path), str(folder)]) == 0
    table = capsys.readouterr().out
    assert "bad\\xffname.jpg" in table and "1 classified, 0 failed" in table


def test_table_escapes_control_and_right_to_left_characters(model_path, tmp_path, capsys):
    folder = tmp_path / "spoof"
    save_image(make_class_image(0, 5), folder / "evil\nbird 0.99.jpg")
    save_image(make_class_image(1, 6), folder / "photo\u202egpj.exe.jpg")
    assert classifier.main([str(model_path), str(folder)]) == 0
    out = capsys.readouterr().out
    assert "\u202e" not in out and "evil\nbird" not in out
    assert "evil\\x0abird 0.99.jpg" in out and "photo\\u202egpj.exe.jpg" in out
    assert len(out.strip().splitlines()) == 1 + 2 + 2  # header, two rows, blank line and summary
    assert classifier.main([str(model_path), str(folder), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "\u202e" not in "".join(lines) and "\\u202e" in lines[1]
    assert [Path(json.loads(line)["path"]).name for line in lines] == ["evil\nbird 0.99.jpg", "photo\u202egpj.exe.jpg"]


# -- command-line convention ----------------------------------------------------------------------------------------


def test_model_flag_verbose_and_no_progress(model_path, bad_files, capsys):
    image = str(bad_files["IMG.JPG"])
    assert classifier.main([str(model_path), image, "--json"]) == 0
    positional = json.loads(capsys.readouterr().out)
    assert classifier.main(["--model", str(model_path), image, "--json", "-v", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == positional
    assert "INFO: Model " in err and "resnet18, classes bird, plane, superman, other, 64 px" in err  # -v: settings
    assert classifier.main(["--model", str(model_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no images given")


def test_options_may_come_between_the_model_and_the_images(model_path, bad_files, capsys):
    image = str(bad_files["IMG.JPG"])  # `classifier.py MODEL --threshold 0.5 IMAGE` is how people type it
    assert classifier.main([str(model_path), "--threshold", "0.5", "--json", image]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == image
    assert classifier.main([str(model_path), "--set-threshold", "0.5", image]) == 2  # our sentence, not argparse's
    assert capsys.readouterr().err == "error: --set-threshold changes the model file only: give no images with it\n"


def test_missing_model_exits_2_with_one_error_line(tmp_path, bad_files, capsys):
    missing = tmp_path / "models" / "best_model.pth"
    assert classifier.main([str(missing), str(bad_files["IMG.JPG"])]) == 2
    err = capsys.readouterr().err
    sentence = (
        f"The birdplane checkpoint {missing} does not exist; train one with train_classifier.py or pass its path."
    )
    assert err == f"error: {sentence}\n"


def test_threshold_help_says_what_it_measures():
    text = " ".join(classifier.get_args_parser().format_help().split())
    assert "--threshold THRESHOLD minimum softmax confidence (0-1) below which the prediction becomes 'other'" in text
    assert "--model FILE" in text and "-v, --verbose" in text and "--no-progress" in text


def test_ctrl_c_exits_130_and_writes_no_csv(model_path, bad_files, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(classifier, "write_csv", interrupted)
    out_csv = tmp_path / "out.csv"
    assert classifier.main([str(model_path), str(bad_files["IMG.JPG"]), "--csv", str(out_csv)]) == 130
    assert not out_csv.exists() and "Interrupted" in capsys.readouterr().err


def test_printable_is_the_same_as_cli_printable():
    import cli  # classifier.py imports nothing of ours, so it keeps the one deliberate copy; this keeps them equal

    nasty = ["plain.jpg", "a\nb.jpg", "tab\there", "\x1b[31mred\x1b[0m", "evil\u202egpj.exe", "zero\u200bwidth"]
    nasty += ["bad\udcff\udc80name", "line\u2028sep\u2029para", "\x00\x7f\x85\x9f", "鳥 fötö.png", "\ufeffbom"]
    nasty += [Path("dir/a\rb.png"), 42, "\ud800lone", "\U0001f426"]
    for text in nasty:
        assert classifier._printable(text) == cli.printable(text), repr(text)


def test_predict_of_a_path_and_of_the_opened_image_agree_and_leave_it_untouched(clf, tmp_path):
    path = save_image(make_class_image(2, 9, (1000, 750)), tmp_path / "big.jpg", quality=90)  # decoded in draft mode
    by_path = clf.predict(path)[2]
    image = Image.open(path)
    assert clf.predict(image)[2] == by_path  # the same decoding as training's, not a full-size decode
    assert image.size == (1000, 750) and image.tile  # the caller's image is still the whole, undecoded file
    assert np.asarray(image).shape == (750, 1000, 3)
    decoded = clf.predict(Image.open(path).convert("RGB"))[2]  # already decoded: used at full size (README says so)
    assert decoded != by_path and decoded == pytest.approx(by_path, abs=0.05)
