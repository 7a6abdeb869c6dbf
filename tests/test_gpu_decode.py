"""classifier.py's GPU input pipeline, checked on the CPU: which decoder each file gets, and the fallbacks.

No GPU here: the tensor path (torchvision.io.decode_jpeg, then the crop through torchvision.transforms.v2) runs with
the CPU as its device, by letting ``choose_decoder`` answer as it would on CUDA. That checks the selection, the
per-file fallback and the resize/crop arithmetic the GPU runs; nvJPEG itself is only measured by
benchmarks/bench_gpu.py on a machine with a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.io
from conftest import ROOT, exif_rotated_jpeg, make_class_image, save_image
from PIL import Image

import classifier

CLASSES = ["bird", "plane", "superman", "other"]
SIZES = [(300, 225), (640, 480), (1000, 750), (200, 400), (96, 80)]  # all at least resize_size (73) on the short side


@pytest.fixture(scope="module")
def clf(tmp_path_factory) -> classifier.BirdPlaneSupermanClassifier:
    path = tmp_path_factory.mktemp("model") / "best_model.pth"
    torch.manual_seed(0)
    model = classifier.build_model("resnet18", len(CLASSES), weights=None).eval()
    checkpoint = classifier.make_checkpoint(model, arch="resnet18", classes=CLASSES, image_size=64)
    torch.save(checkpoint, path)
    return classifier.BirdPlaneSupermanClassifier(path, confidence_threshold=0.0, device="cpu")


@pytest.fixture
def jpegs(tmp_path) -> list[Path]:
    return [save_image(make_class_image(i, 40 + i, size), tmp_path / f"photo_{i}.jpg") for i, size in enumerate(SIZES)]


@pytest.fixture
def tensor_path(clf, monkeypatch) -> list:
    """Sends every file the GPU would take through the tensor path, decoded on the CPU; records decode_jpeg calls."""
    real_choose, real_decode, calls = classifier.choose_decoder, torchvision.io.decode_jpeg, []

    def record(data, *args, **kwargs):
        calls.append(data)
        return real_decode(data, *args, **kwargs)

    monkeypatch.setattr(
        classifier, "choose_decoder", lambda source, device, min_side=0: real_choose(source, "cuda", min_side)
    )
    monkeypatch.setattr(torchvision.io, "decode_jpeg", record)
    monkeypatch.setattr(clf, "decode_on_gpu", True)
    return calls


def probabilities(results) -> np.ndarray:
    return np.array([[probs[c] for c in CLASSES] for _, _, _, probs in results])


# -- which decoder for which file and device ------------------------------------------------------------------------


def test_choose_decoder_gives_the_gpu_only_plain_colour_jpegs_on_cuda(tmp_path, bad_files):
    plain = save_image(make_class_image(0, 1, (300, 200)), tmp_path / "plain.jpg")
    for device in ("cuda", "cuda:1", torch.device("cuda")):
        assert classifier.choose_decoder(plain, device) == "gpu", device
    for device in ("cpu", "mps", torch.device("cpu"), None):
        assert classifier.choose_decoder(plain, device) == "cpu", device
    assert classifier.choose_decoder(bad_files["symlink.jpg"], "cuda") == "gpu"  # a link to a JPEG is a JPEG

    grey = tmp_path / "grey.jpg"
    make_class_image(1, 2, (300, 200)).convert("L").save(grey, "JPEG")
    trailing = tmp_path / "trailing.jpg"
    trailing.write_bytes(plain.read_bytes() + b"extra bytes after the end marker")
    png = save_image(make_class_image(0, 3, (300, 200)), tmp_path / "photo.png")
    cpu_only = {
        "PNG": png,
        "JPEG with EXIF rotation": exif_rotated_jpeg(tmp_path / "rotated.jpg"),
        "greyscale JPEG": grey,
        "CMYK JPEG": bad_files["cmyk.jpg"],
        "truncated JPEG": bad_files["truncated.jpg"],
        "JPEG with bytes after its end": trailing,
        "HTML named .jpg": bad_files["html_page.jpg"],
        "empty file": bad_files["zero_bytes.jpg"],
        "broken symlink": bad_files["broken_symlink.jpg"],
        "WEBP": bad_files["image.webp"],
        "PNG bomb": bad_files["bomb.png"],
        "a folder": tmp_path,
        "a PIL image": Image.open(plain),
    }
    for what, source in cpu_only.items():
        assert classifier.choose_decoder(source, "cuda") == "cpu", what
    # smaller than min_side would be upscaled: the CPU reader does that exactly
    assert classifier.choose_decoder(plain, "cuda", min_side=200) == "gpu"
    assert classifier.choose_decoder(plain, "cuda", min_side=201) == "cpu"


def test_choose_decoder_never_opens_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    code = f"import classifier; print(classifier.choose_decoder({str(tmp_path / 'pipe.jpg')!r}, 'cuda'))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cpu"


def test_on_cpu_the_batch_methods_never_touch_the_tensor_path(clf, jpegs, monkeypatch):
    def must_not_decode(*args, **kwargs):
        raise AssertionError("decode_jpeg called on a CPU classifier")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", must_not_decode)
    assert clf.decode_on_gpu is False
    results = clf.predict_batch(jpegs, batch_size=2)
    assert [r[0] for r in results] == jpegs and all(r[1] is not None for r in results)
    assert all(vector is not None for _, vector, _ in clf.embed_batch(jpegs, batch_size=2))


# -- the tensor path against the PIL path ----------------------------------------------------------------------------


def test_tensor_crops_match_the_pil_crops(clf, jpegs, tensor_path):
    batch = [(path, path.read_bytes(), None) for path in jpegs]
    clf._decode_jpegs(batch, read_on_cpu=lambda source: pytest.fail(f"{source} fell back to the CPU"))
    assert any(isinstance(data, list) and len(data) == len(jpegs) for data in tensor_path)  # one batched call
    for path, crop, error in batch:
        assert error is None and crop.dtype == torch.uint8 and tuple(crop.shape) == (64, 64, 3)
        difference = np.abs(crop.numpy().astype(float) - clf._prepare(path).astype(float))
        assert difference.mean() < 1.5, (path.name, difference.mean())  # same picture, not shifted or rescaled


def test_batch_methods_on_the_tensor_path_give_the_pil_paths_answers(clf, jpegs, tensor_path, monkeypatch):
    monkeypatch.setattr(clf, "decode_on_gpu", False)
    on_cpu = clf.predict_batch(jpegs, batch_size=3)
    on_cpu_vectors = np.stack([vector for _, vector, _ in clf.embed_batch(jpegs, batch_size=3)])
    assert not tensor_path  # the PIL path so far

    monkeypatch.setattr(clf, "decode_on_gpu", True)
    through_tensors = clf.predict_batch(jpegs, batch_size=3)
    assert len(tensor_path) >= 2  # both batches went through decode_jpeg
    assert [r[0] for r in through_tensors] == jpegs
    np.testing.assert_allclose(probabilities(through_tensors), probabilities(on_cpu), atol=0.005)
    vectors = np.stack([vector for _, vector, _ in clf.embed_batch(jpegs, batch_size=3)])
    assert (vectors * on_cpu_vectors).sum(axis=1).min() > 0.999  # cosine similarity of unit vectors


# -- fallbacks: a file the GPU decoder refuses, a broken GPU decoder ----------------------------------------------


def test_a_file_the_decoder_refuses_is_read_on_the_cpu_in_its_place(clf, jpegs, bad_files, tensor_path, monkeypatch):
    refused = jpegs[1]
    refused_bytes = torch.frombuffer(bytearray(refused.read_bytes()), dtype=torch.uint8)
    recording_decode = torchvision.io.decode_jpeg

    def refuse_one(data, *args, **kwargs):
        items = data if isinstance(data, list) else [data]
        if any(item.shape == refused_bytes.shape and torch.equal(item, refused_bytes) for item in items):
            raise RuntimeError("nvjpegDecode failed: the decoder refused this file")
        return recording_decode(data, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", refuse_one)
    png = save_image(make_class_image(2, 9, (120, 90)), jpegs[0].parent / "drawing.png")
    sources = [jpegs[0], refused, png, bad_files["truncated.jpg"], jpegs[2], bad_files["html_page.jpg"], jpegs[3]]
    results = clf.predict_batch(sources, batch_size=4)

    assert [r[0] for r in results] == sources  # every file, in its place
    by_name = {Path(r[0]).name: r for r in results}
    assert by_name["truncated.jpg"][1:] == (None, 0.0, {}) and by_name["html_page.jpg"][1:] == (None, 0.0, {})
    assert by_name[refused.name][3] == pytest.approx(clf.predict(refused)[2], abs=1e-6)  # read by the CPU reader
    assert by_name["drawing.png"][3] == pytest.approx(clf.predict(png)[2], abs=1e-6)
    # the first batch failed as a whole and was retried file by file: its other JPEG still decoded as a tensor
    assert [len(data) for data in tensor_path if isinstance(data, list)] == [2]  # the second batch: its two JPEGs
    assert [data.numel() for data in tensor_path if not isinstance(data, list)] == [jpegs[0].stat().st_size]
    np.testing.assert_allclose(
        probabilities([by_name[jpegs[0].name]]), probabilities([("", *clf.predict(jpegs[0]))]), atol=0.01
    )


def test_a_broken_gpu_decoder_leaves_every_file_to_the_cpu_reader(clf, jpegs, tensor_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("nvjpeg is not available")

    on_cpu = probabilities([("", *clf.predict(path)) for path in jpegs])  # predict: always the CPU reader
    monkeypatch.setattr(torchvision.io, "decode_jpeg", broken)
    results = clf.predict_batch(jpegs, batch_size=2)
    assert [r[0] for r in results] == jpegs
    np.testing.assert_allclose(probabilities(results), on_cpu, atol=1e-6)  # the CPU reader's answers
    assert not [record for record in caplog.records if record.levelname == "WARNING"]  # nothing was lost


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the benchmark measures for minutes")
def test_bench_gpu_without_a_gpu_says_so_and_exits_0(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_gpu

    assert bench_gpu.main([]) == 0
    assert capsys.readouterr().out.startswith("no GPU: nothing to measure")
