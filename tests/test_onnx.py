"""classifier.py's ONNX route: the export, its metadata, the .pth's results with onnxruntime alone, crafted files."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, exif_rotated_jpeg, make_class_image, make_dataset, save_image
from onnx import TensorProto, helper
from PIL import Image
from test_classifier import CLASSES, save_tiny_model

import classifier
import train_classifier
from classifier import BirdPlaneSupermanClassifier

TOLERANCE = 1e-4  # the bound on the difference between the .pth and the .onnx probabilities


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny .pth (threshold 0.3, temperature 1.7), exported through the command line, and a few test images."""
    root = tmp_path_factory.mktemp("onnx")
    models, images = root / "models", root / "images"
    models.mkdir()
    save_tiny_model(models / "best_model.pth", confidence_threshold=0.3, temperature=1.7)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = classifier.main([str(models / "best_model.pth"), "--export-onnx", str(models / "best_model.onnx")])
    paths = [
        save_image(make_class_image(0, 1, (400, 300)), images / "big.jpg"),  # decoded in draft mode
        save_image(make_class_image(1, 2, (50, 90)).convert("RGBA"), images / "alpha.png"),
        save_image(make_class_image(2, 3, (64, 64)).convert("L"), images / "grey.png"),
        exif_rotated_jpeg(images / "rotated.jpg"),
        images / "empty.jpg",
        save_image(make_class_image(3, 4, (120, 70)), images / "wide.jpg"),
    ]
    paths[4].write_bytes(b"")
    return {"code": code, "stdout": printed.getvalue(), "models": models, "paths": paths}


def probabilities(results: list) -> np.ndarray:
    return np.array([[probs.get(c, np.nan) for c in CLASSES] for _, _, _, probs in results])


def test_cli_export_writes_one_file_carrying_every_setting(exported: dict) -> None:
    models = exported["models"]
    assert exported["code"] == 0 and "best_model.onnx" in exported["stdout"] and "within" in exported["stdout"]
    assert sorted(p.name for p in models.iterdir()) == ["best_model.onnx", "best_model.pth"]  # no temp file left
    model = onnx.load(models / "best_model.onnx")
    metadata = {prop.key: json.loads(prop.value) for prop in model.metadata_props}
    checkpoint = classifier.load_checkpoint(models / "best_model.pth")
    assert metadata == {key: checkpoint[key] for key in classifier.ONNX_METADATA}
    assert metadata["classes"] == CLASSES and metadata["temperature"] == 1.7 and metadata["image_size"] == 64
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # any batch size
    assert [output.name for output in model.graph.output] == ["logits", "embedding"]


def test_onnx_gives_the_pth_results_through_every_method(exported: dict, caplog: pytest.LogCaptureFixture) -> None:
    models, paths = exported["models"], exported["paths"]
    pth = BirdPlaneSupermanClassifier(models / "best_model.pth", device="cpu")
    ort = BirdPlaneSupermanClassifier(models / "best_model.onnx")
    assert ort.session is not None and ort.model is None and ort.device == "cpu"
    assert (ort.classes, ort.confidence_threshold, ort.temperature) == (pth.classes, 0.3, 1.7)

    expected, got = pth.predict_batch(paths, batch_size=4), ort.predict_batch(paths, batch_size=4)  # 4, then 2
    assert [r[0] for r in got] == paths and [r[1] for r in got] == [r[1] for r in expected]
    assert got[4] == (paths[4], None, 0.0, {}) and "empty file" in caplog.text  # the same refusal, in its place
    good = [i for i in range(len(paths)) if i != 4]
    np.testing.assert_allclose(probabilities(got)[good], probabilities(expected)[good], atol=TOLERANCE)
    assert np.abs(probabilities(got)[good] - probabilities(expected)[good]).max() > 0  # two engines really ran
    assert list(ort.iter_predictions(paths[:2], batch_size=1)) == got[:2]

    image = Image.open(paths[0])  # a PIL image, a single predict and the threshold rule
    pred_class, confidence, probs = ort.predict(image)
    np.testing.assert_allclose(list(probs.values()), list(pth.predict(paths[0])[2].values()), atol=TOLERANCE)
    for clf in (pth, ort):
        clf.set_confidence_threshold(min(1.0, confidence + 1e-3))
    assert ort.predict(paths[0])[0] == pth.predict(paths[0])[0] == "other"

    vectors = {clf: [vector for _, vector, _ in clf.embed_batch(paths, batch_size=3)] for clf in (pth, ort)}
    assert vectors[ort][4] is None
    for mine, theirs in zip(vectors[ort], vectors[pth]):
        if mine is not None:
            np.testing.assert_allclose(mine, theirs, atol=TOLERANCE)
            assert np.linalg.norm(mine) == pytest.approx(1.0, abs=1e-5)


BLOCK_TORCH = "import sys\nfor name in ('torch', 'torchvision'):\n    sys.modules[name] = None  # import fails\n"


def test_no_torch_needed_to_import_and_run_an_onnx_model(exported: dict) -> None:
    onnx_path, paths = exported["models"] / "best_model.onnx", exported["paths"]
    code = BLOCK_TORCH + (
        "import json, classifier\n"
        "try:\n    import torch\nexcept ImportError:\n    print('no torch')\n"
        f"clf = classifier.BirdPlaneSupermanClassifier({str(onnx_path)!r})\n"
        f"print(json.dumps(clf.predict({str(paths[1])!r})))\n"
        f"vectors = [v for _, v, _ in clf.embed_batch([{str(paths[1])!r}, {str(paths[4])!r}])]\n"
        "assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-5 and vectors[1] is None\n"
        f"code = classifier.main([{str(onnx_path)!r}, {str(paths[1])!r}, {str(paths[4])!r}, '--json'])\n"
        f"export = classifier.main([{str(exported['models'] / 'best_model.pth')!r}, '--export-onnx', 'x.onnx'])\n"
        "print(code, export, 'torch' in sys.modules and sys.modules['torch'] is not None)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "no torch" and lines[-1] == "1 2 False"  # one unusable image; export needs torch
    pred_class, confidence, probs = json.loads(lines[1])
    expected = BirdPlaneSupermanClassifier(exported["models"] / "best_model.pth", device="cpu").predict(paths[1])
    assert pred_class == expected[0] and confidence == pytest.approx(expected[1], abs=TOLERANCE)
    assert json.loads(lines[2])["probabilities"] == pytest.approx(probs, abs=1e-6)
    assert json.loads(lines[3])["error"] == "empty file (0 bytes)"
    assert "error: exporting to ONNX needs torch: pip install torch" in result.stderr


def test_missing_onnxruntime_or_exporter_is_one_sentence(
    exported: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    models, image = exported["models"], str(exported["paths"][1])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert classifier.main([str(models / "best_model.onnx"), image]) == 2
    assert classifier.main([str(models / "best_model.pth"), "--export-onnx", str(models / "again.onnx")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
    assert errors[0].endswith("is an ONNX model, which needs onnxruntime: pip install onnxruntime.")
    assert errors[1] == "error: exporting to ONNX needs onnxscript and onnxruntime: pip install onnxscript onnxruntime"
    assert not (models / "again.onnx").exists()


def tiny_graph(metadata: dict[str, str], outputs: int = 4, size: int = 64) -> bytes:
    """A valid ONNX model (mean colour times a matrix) with the given metadata: loads in onnxruntime in no time."""
    pixels = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, size, size])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", outputs])
    embedding = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, outputs], np.ones(3 * outputs).tolist())
    nodes = [
        helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "w"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [pixels], [logits, embedding], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, metadata)
    return model.SerializeToString()


def test_a_crafted_tiny_graph_with_good_metadata_runs(exported: dict, tmp_path: Path) -> None:
    metadata = {p.key: p.value for p in onnx.load(exported["models"] / "best_model.onnx").metadata_props}
    (tmp_path / "tiny.onnx").write_bytes(tiny_graph(metadata))
    pred_class, confidence, probs = BirdPlaneSupermanClassifier(tmp_path / "tiny.onnx").predict(exported["paths"][2])
    assert probs == pytest.approx(dict.fromkeys(CLASSES, 0.25)) and pred_class == "other"  # below 0.3


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("text.onnx", "text", "is a text file, not an ONNX model"),
        ("photo.onnx", "jpeg", "is a JPEG image, not an ONNX model"),
        ("empty.onnx", "empty", "is empty (0 bytes)"),
        ("checkpoint.onnx", "pth", "not an ONNX model"),
        ("truncated.onnx", "truncated", "is truncated or damaged"),
        ("plain.onnx", {}, "metadata lacks format_version, arch, classes"),
        ("five.onnx", {"classes": '["a", "b", "c", "d", "e"]'}, "4 outputs but its metadata lists 5 classes"),
        ("threshold.onnx", {"confidence_threshold": "high"}, "invalid confidence_threshold 'high'"),
        ("nan.onnx", {"temperature": "NaN"}, "invalid temperature nan"),
        ("version.onnx", {"format_version": "2"}, "format version 2"),
        ("size.onnx", {"image_size": "32", "resize_size": "36"}, "takes inputs tensor(float)"),
        ("deep.onnx", {"classes": "[" * 100_000 + "]" * 100_000}, "has no list of class names"),
        ("arch.onnx", {"arch": "\"__import__('os')\""}, "unknown architecture"),
        ("digits.onnx", {"image_size": "9" * 5_000}, "invalid image_size '99999"),  # too long for int(): text
        ("float.onnx", {"temperature": "1" + "0" * 400}, "invalid temperature 1000"),  # an int no float holds
        ("long.onnx", {"arch": '"' + "x" * 3_000_000 + '"'}, "… (3,000,002 characters) (known: resnet18"),
    ],
)
def test_bad_and_crafted_onnx_files_are_one_sentence(
    exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, change, message: str
) -> None:
    real = (exported["models"] / "best_model.onnx").read_bytes()
    path = tmp_path / name
    if isinstance(change, dict):
        good = {p.key: p.value for p in onnx.load_from_string(real).metadata_props}
        path.write_bytes(tiny_graph({**good, **change} if change else {}))
    else:
        content = {"text": b"hello\n", "empty": b"", "truncated": real[: len(real) // 2]}
        content["jpeg"] = exported["paths"][0].read_bytes()
        content["pth"] = (exported["models"] / "best_model.pth").read_bytes()
        path.write_bytes(content[change])
    assert classifier.main([str(path), str(exported["paths"][1])]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {path}") and len(error.splitlines()) == 1 and message in error, error
    assert len(error) < len(str(path)) + 400  # a crafted field is cut, not echoed whole


def test_cli_export_refuses_what_it_cannot_do(exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pth, onnx_file = str(exported["models"] / "best_model.pth"), str(exported["models"] / "best_model.onnx")
    cases = [
        ([pth, "--export-onnx", str(tmp_path / "model.pth")], "must end in .onnx"),
        ([onnx_file, "--export-onnx", str(tmp_path / "x.onnx")], "needs a .pth checkpoint"),
        ([pth, "img.jpg", "--export-onnx", str(tmp_path / "x.onnx")], "classifies nothing"),
        ([pth, "--export-onnx", str(tmp_path / "no" / "x.onnx")], "does not exist"),
        ([str(tmp_path / "missing.pth"), "--export-onnx", str(tmp_path / "x.onnx")], "does not exist"),
        ([onnx_file, "--set-threshold", "0.6"], "set it in the .pth and rerun --export-onnx"),  # not "binary data"
    ]
    for argv, message in cases:
        assert classifier.main(argv) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and len(error.splitlines()) == 1 and message in error, error
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_trainer_export_onnx_exports_the_finished_best_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    calls = []  # the export itself is tested above; here: when and with which files the trainer calls it

    def export(model_path: Path, onnx_path: Path) -> float:
        calls.append((model_path, onnx_path, Path(model_path).read_bytes()))
        return 3e-7

    monkeypatch.setattr(classifier, "export_onnx", export)
    dataset = make_dataset(tmp_path / "dataset", ("bird", "plane"), train_per_class=2, val_per_class=1, size=(32, 32))
    models = tmp_path / "models"
    argv = ["--dataset-dir", str(dataset), "--output-dir", str(models), "--arch", "resnet18", "--image-size", "32"]
    argv += ["--weights", "none", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu"]
    assert train_classifier.main([*argv, "--export-onnx"]) == 0
    assert [call[:2] for call in calls] == [(models / "best_model.pth", models / "best_model.onnx")]
    assert calls[0][2] == (models / "best_model.pth").read_bytes()  # the final, calibrated model
    assert f"ONNX model: {models / 'best_model.onnx'} (within 3e-07" in capsys.readouterr().out

    def failing(model_path: Path, onnx_path: Path) -> float:
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(classifier, "export_onnx", failing)  # a failed export never costs the trained model
    assert train_classifier.main([*argv, "--export-onnx"]) == 0 and (models / "best_model.pth").is_file()
    assert "ONNX export failed (exporter broke)" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert train_classifier.main([*argv, "--export-onnx"]) == 2  # said before any training
    expected = "error: --export-onnx: exporting to ONNX needs onnxscript: pip install onnxscript\n"
    assert capsys.readouterr().err == expected


def test_external_data_is_never_read_from_the_working_folder(
    exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A crafted .onnx whose weights name "external data" ("w.bin"): onnxruntime, loading bytes, looked for it in the
    working folder, so a model could read any file there (the probe: it did). Refused; the file is never opened."""
    model = onnx.load_from_string(
        tiny_graph({p.key: p.value for p in onnx.load(exported["models"] / "best_model.onnx").metadata_props})
    )
    weights = model.graph.initializer[0]
    raw = np.ones(12, dtype=np.float32).tobytes()
    weights.ClearField("float_data")
    weights.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "w.bin", "offset": "0", "length": str(len(raw))}.items():
        weights.external_data.add(key=key, value=value)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "evil.onnx").write_bytes(model.SerializeToString())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "w.bin").write_bytes(raw)  # an outside file the model names, in the folder the user runs from
    monkeypatch.chdir(elsewhere)
    assert classifier.main([str(tmp_path / "models" / "evil.onnx"), str(exported["paths"][1])]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and len(error.splitlines()) == 1, error


def test_a_crafted_graph_that_loads_but_fails_to_run_is_one_sentence(
    exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    metadata = {p.key: p.value for p in onnx.load(exported["models"] / "best_model.onnx").metadata_props}
    model = onnx.load_from_string(tiny_graph(metadata))
    model.graph.node[-1].output[0] = "raw"  # logits = Reshape(raw, [7, -1]): fails for a batch of one at run time
    model.graph.initializer.append(helper.make_tensor("shape", TensorProto.INT64, [2], [7, -1]))
    model.graph.node.append(helper.make_node("Reshape", ["raw", "shape"], ["logits"]))
    path = tmp_path / "reshape.onnx"
    path.write_bytes(model.SerializeToString())
    assert classifier.main([str(path), str(exported["paths"][0])]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 1 and "does not run" in err
