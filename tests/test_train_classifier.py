"""Tests for train_classifier.py: tiny runs (resnet18, 64 px, random weights) on generated data, and the pure parts.

Each run takes a few seconds on 2 CPU cores; the full file stays well under a minute.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import (
    IS_ROOT,
    ROOT,
    make_class_image,
    make_dataset,
    refused_bad_files,
    save_image,
    tree_snapshot,
    without_timing,
    write_bad_files,
)
from PIL import Image

import classifier
import cli
import fileio
import train_classifier
import training_data
import training_report

TINY = ["--arch", "resnet18", "--image-size", "64", "--workers", "0", "--device", "cpu", "--seed", "3"]
FROZEN_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")  # what --freeze-until layer3 keeps fixed


def run_trainer(dataset: Path, output: Path, *extra: str) -> int:
    return train_classifier.main(["--dataset-dir", str(dataset), "--output-dir", str(output), *TINY, *extra])


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and two threads spin against each other on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------------
# One real training run, shared by the tests that inspect its outputs


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("trained")
    dataset = make_dataset(root / "dataset", train_per_class=[8, 4, 4, 4], val_per_class=4)
    torch.manual_seed(0)
    initial = torchvision.models.resnet18(num_classes=4).state_dict()
    torch.save(initial, root / "init.pth")
    output = root / "models"
    arguments = [
        "--weights", str(root / "init.pth"), "--epochs", "4", "--batch-size", "4", "--learning-rate", "0.002",
        "--warmup-epochs", "0", "--patience", "0",
    ]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = run_trainer(dataset, output, *arguments)
    return {
        "code": code, "dataset": dataset, "output": output, "initial": initial, "arguments": arguments,
        "stdout": printed.getvalue(),
    }  # fmt: skip


def test_run_writes_every_output_and_they_parse(trained: dict) -> None:
    output = trained["output"]
    assert trained["code"] == 0
    metadata = read_json(output / "training_metadata.json")
    assert metadata["schema_version"] == 1 and metadata["status"] == "completed"
    assert metadata["classes"] == ["bird", "other", "plane", "superman"]
    assert metadata["class_counts"]["train"] == {"bird": 8, "other": 4, "plane": 4, "superman": 4}
    assert metadata["sampling"]["class_weights"]["bird"] == pytest.approx(1 / 8)
    assert metadata["augmentation"]["policy"]["bird"]["vertical_flip"] == 0.0
    assert metadata["skipped_files"] == []
    assert [record["epoch"] for record in metadata["epochs"]] == [1, 2, 3, 4]
    for name in ("training_curves.png", "confusion_matrix.png"):
        with Image.open(output / name) as image:
            assert image.format == "PNG" and image.width > 100
    for epoch in (1, 2, 3, 4):
        folder = output / "error_analysis" / f"epoch_{epoch:02d}"
        with Image.open(folder / "contact_sheet.png") as image:
            assert image.format == "PNG"
        for name in metadata["classes"]:
            report = read_json(folder / f"{name}_errors.json")
            assert report["true_class"] == name and len(report["errors"]) <= 10
            for error in report["errors"]:
                assert set(error) == {"image_path", "true_label", "predicted_label", "confidence", "all_probabilities"}
                assert error["true_label"] == name != error["predicted_label"]
                assert error["image_path"].startswith(f"val/{name}/")
                assert error["confidence"] == max(error["all_probabilities"].values())
    last = torch.load(output / "last_checkpoint.pth", weights_only=True)
    assert last["epoch"] == 4 and len(last["history"]) == 4 and "optimizer_state_dict" in last


def test_best_model_is_a_calibrated_classifier_checkpoint(trained: dict, tmp_path: Path) -> None:
    output, dataset = trained["output"], trained["dataset"]
    metadata = read_json(output / "training_metadata.json")
    checkpoint = classifier.load_checkpoint(output / "best_model.pth")
    assert checkpoint["epoch"] == metadata["best_epoch"]
    assert checkpoint["confidence_threshold"] == 0.7
    assert checkpoint["temperature"] == pytest.approx(metadata["calibration"]["temperature"])
    assert metadata["calibration"]["nll_after"] <= metadata["calibration"]["nll_before"] + 1e-6
    assert [row["threshold"] for row in metadata["thresholds"]] == pytest.approx([0.5 + 0.05 * i for i in range(10)])
    assert metadata["recommended_threshold"] in [row["threshold"] for row in metadata["thresholds"]]
    recommended = f"{metadata['recommended_threshold']:.2f}"
    last_lines = trained["stdout"].strip().splitlines()[-2:]  # the stored threshold, the recommended one, the command
    if recommended == "0.70":
        assert last_lines[-1] == "Confidence threshold stored in the model: 0.70, the one the val sweep recommends."
    else:
        assert (
            last_lines[0] == f"Confidence threshold stored in the model: 0.70; the val sweep recommends {recommended}."
        )
        command = shlex.split(last_lines[1].removeprefix("To store it: "))
        assert command[:3] == ["python", "classifier.py", str(output / "best_model.pth")]
        copy = tmp_path / "copy.pth"  # the user's command, run on a copy of the shared model
        copy.write_bytes((output / "best_model.pth").read_bytes())
        assert classifier.main([str(copy), *command[3:]]) == 0
        assert classifier.load_checkpoint(copy)["confidence_threshold"] == metadata["recommended_threshold"]
    for refused in (
        ["--set-threshold", "1.5"],
        [str(dataset / "val" / "plane" / "plane_000.jpg"), "--set-threshold", "0.5"],
    ):
        assert classifier.main([str(output / "best_model.pth"), *refused]) == 2  # out of range; images: a mistake
    assert classifier.load_checkpoint(output / "best_model.pth")["confidence_threshold"] == 0.7
    clf = classifier.BirdPlaneSupermanClassifier(output / "best_model.pth", device="cpu")
    predicted, confidence, probabilities = clf.predict(dataset / "val" / "plane" / "plane_000.jpg")
    assert set(probabilities) == set(metadata["classes"]) and 0 <= confidence <= 1


def test_metrics_agree_with_the_confusion_matrix_and_beat_chance(trained: dict) -> None:
    metadata = read_json(trained["output"] / "training_metadata.json")
    classes = metadata["classes"]
    for record in metadata["epochs"]:
        matrix = np.array(record["confusion_matrix"])
        assert matrix.sum() == record["val_images"] == 16
        assert record["val_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
        f1s = []
        for i, name in enumerate(classes):
            precision = matrix[i, i] / matrix[:, i].sum() if matrix[:, i].sum() else 0.0
            recall = matrix[i, i] / matrix[i].sum()
            assert record["per_class"][name]["precision"] == pytest.approx(precision)
            assert record["per_class"][name]["recall"] == pytest.approx(recall)
            assert record["per_class"][name]["support"] == matrix[i].sum() == 4
            f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        assert record["macro_f1"] == pytest.approx(np.mean(f1s))
    best = max(metadata["epochs"], key=lambda record: record["macro_f1"])
    assert metadata["best_epoch"] == best["epoch"]
    assert best["val_accuracy"] >= 0.75  # four clearly separable classes: chance is 0.25


def test_frozen_parameters_and_their_batchnorm_statistics_do_not_change(trained: dict) -> None:
    state = classifier.load_checkpoint(trained["output"] / "best_model.pth")["model_state_dict"]
    initial = trained["initial"]
    frozen = [key for key in state if key.startswith(FROZEN_PREFIXES)]
    assert any("running_mean" in key for key in frozen)
    for key in frozen:
        assert torch.equal(state[key], initial[key]), key
    changed = [key for key in state if key.startswith("layer4.") and not torch.equal(state[key], initial[key])]
    assert any(key.endswith("conv1.weight") for key in changed)
    assert any(key.endswith("running_mean") for key in changed)  # layer4's BatchNorm does train
    assert not torch.equal(state["fc.weight"], initial["fc.weight"])


# ----------------------------------------------------------------------------------------------------------------
# Resume


def test_resume_after_an_interruption_gives_the_same_history(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = read_json(trained["output"] / "training_metadata.json")["epochs"]  # 4 epochs without a break

    real_train_one_epoch = train_classifier.train_one_epoch
    calls = []

    def interrupted_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(train_classifier, "train_one_epoch", interrupted_in_second_epoch)
    assert run_trainer(trained["dataset"], tmp_path / "resumed", *trained["arguments"]) == 130  # like Ctrl-C
    monkeypatch.undo()
    partial = read_json(tmp_path / "resumed" / "training_metadata.json")
    assert partial["status"] == "interrupted" and len(partial["epochs"]) == 1
    classifier.load_checkpoint(tmp_path / "resumed" / "best_model.pth")  # still a valid model

    code = train_classifier.main(
        ["--resume", "--dataset-dir", str(trained["dataset"]), "--output-dir", str(tmp_path / "resumed")]
    )
    assert code == 0
    resumed = read_json(tmp_path / "resumed" / "training_metadata.json")["epochs"]
    assert without_timing(resumed) == without_timing(straight)


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train_classifier.main(["--resume", "--output-dir", str(tmp_path / "nothing")]) == 2
    assert "last_checkpoint.pth" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("cache_gb", ["4", "0"], ids=["checked-up-front", "found-mid-epoch"])
def test_bad_files_are_skipped_and_listed(tmp_path: Path, cache_gb: str, capsys: pytest.CaptureFixture) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=4, val_per_class=2)
    files = write_bad_files(dataset / "train" / "bird")
    try:
        refused = refused_bad_files()
        usable = 4 * 4 + len(files) - len(refused) + (1 if cache_gb == "0" else 0)  # truncated passes a header check
        code = run_trainer(
            dataset, tmp_path / "models", "--weights", "none", "--freeze-until", "layer3", "--epochs", "1",
            "--cache-max-gb", cache_gb, "--no-weighted-sampling", "--batch-size", str(usable),
        )  # fmt: skip
    finally:
        os.chmod(files["unreadable.jpg"], 0o644)
    assert code == 1
    metadata = read_json(tmp_path / "models" / "training_metadata.json")
    skipped = {Path(item["path"]).name: item for item in metadata["skipped_files"]}
    assert set(skipped) == refused
    assert all(item["reason"] and item["split"] == "train" for item in skipped.values())
    assert "truncated" in skipped["truncated.jpg"]["reason"] or "corrupt" in skipped["truncated.jpg"]["reason"]
    assert metadata["status"] == "completed" and len(metadata["epochs"]) == 1
    assert metadata["epochs"][0]["train_images"] == 4 * 4 + len(files) - len(refused)
    usable_birds = metadata["class_counts"]["train"]["bird"]  # counted before training: the truncated file was
    assert usable_birds == 4 + len(files) - len(refused) + (1 if cache_gb == "0" else 0)  # still usable then
    assert metadata["sampling"]["class_weights"]["bird"] == pytest.approx(1 / usable_birds)
    assert (tmp_path / "models" / "best_model.pth").is_file()
    warning = next(line for line in capsys.readouterr().err.splitlines() if "--weights none" in line)
    assert "--freeze-until layer3" in warning and "--freeze-until none" in warning  # the warning names the fix


def test_a_small_dataset_trains_with_a_class_missing_from_val_and_a_non_utf8_class_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """3 images per class, val/superman missing, a class folder train/pl\\xffane (not UTF-8), --weights none with no
    --freeze-until, --confidence-threshold auto, output to a pipe: it trains, and says so."""
    plane = os.fsdecode(b"pl\xffane")
    dataset = make_dataset(tmp_path / "dataset", ("bird", plane, "superman"), 3, [1, 1, 0], size=(32, 32))
    for path in dataset.glob(f"*/{plane}/*"):
        path.rename(path.with_name(path.name.replace(plane, "plane")))  # the folder's name is the odd one
    (dataset / "val" / "superman").rmdir()
    monkeypatch.setattr(cli, "PROGRESS_LINE_SECONDS", 0.0)  # a plain line at every step instead of every 30 s
    argv = ["--weights", "none", "--epochs", "1", "--batch-size", "3", "--image-size", "32"]
    assert run_trainer(dataset, tmp_path / "models", *argv, "--confidence-threshold", "auto") == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "pl\\xffane" in out and "No val images for superman: training anyway" in out
    metadata = read_json(tmp_path / "models" / "training_metadata.json")
    assert metadata["config"]["frozen_blocks"] == [] and metadata["arguments"]["freeze_until"] == "none"
    assert metadata["epochs"][0]["per_class"]["superman"] == {
        "precision": None,
        "recall": None,
        "f1": None,
        "support": 0,
    }
    assert metadata["epochs"][0]["per_class"][plane]["support"] == 1  # the odd name comes back losslessly
    with Image.open(tmp_path / "models" / "confusion_matrix.png") as image:
        assert image.format == "PNG"
    checkpoint = classifier.load_checkpoint(tmp_path / "models" / "best_model.pth")
    assert checkpoint["confidence_threshold"] == metadata["recommended_threshold"] == metadata["confidence_threshold"]
    assert out.strip().splitlines()[-1].endswith(", the one the val sweep recommends.")
    steps = [line for line in err.splitlines() if line.startswith("epoch 1 train:")]
    assert steps and all("\r" not in line and "/" in line for line in steps)  # plain lines a log file can show


@pytest.mark.parametrize("problem", ["empty-class", "only-bad-files", "empty-split", "no-dataset"])
def test_unusable_datasets_stop_before_training(tmp_path: Path, problem: str, capsys: pytest.CaptureFixture) -> None:
    dataset = make_dataset(tmp_path / "dataset", classes=("bird", "plane"), train_per_class=2, val_per_class=1)
    if problem == "empty-class":
        for path in (dataset / "train" / "plane").iterdir():
            path.unlink()
    elif problem == "only-bad-files":  # in all of val/ (a class with none in val/ is trained anyway)
        for path in (dataset / "val").rglob("*.jpg"):
            path.write_bytes(b"")
    elif problem == "empty-split":
        for folder in (dataset / "train").iterdir():
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()
    else:
        dataset = tmp_path / "missing"
    assert run_trainer(dataset, tmp_path / "models", "--weights", "none") == 2
    error = capsys.readouterr().err
    # warnings about the skipped files may come first; the run ends with one "error:" sentence
    assert error.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in error
    expected = {"empty-class": "train/plane", "only-bad-files": "The val/ split", "empty-split": "class folders"}
    assert expected.get(problem, "does not exist") in error
    assert not (tmp_path / "models" / "best_model.pth").exists()


def test_no_network_for_imagenet_weights_is_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    dataset = make_dataset(tmp_path / "dataset", classes=("bird", "plane"), train_per_class=2, val_per_class=1)
    assert run_trainer(dataset, tmp_path / "models", "--weights", "imagenet") == 2  # nothing was done
    error = capsys.readouterr().err.strip()
    assert "--weights none" in error and "--weights FILE" in error and "Traceback" not in error


def test_help_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_classifier.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert "--freeze-until" in result.stdout and "--uniform-augmentation" in result.stdout


# ----------------------------------------------------------------------------------------------------------------
# Safety: resume, earlier runs, temp files, odd files, read-only folders (shared/BAD_INPUTS.md 21-23)

TWO_CLASSES = ("bird", "plane")


def test_resume_from_a_best_model_checkpoint_is_one_sentence(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "models"
    output.mkdir()
    (output / "last_checkpoint.pth").write_bytes((trained["output"] / "best_model.pth").read_bytes())
    assert train_classifier.main(["--resume", "--output-dir", str(output)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: ") and "last_checkpoint.pth" in error
    assert "without --resume" in error and "KeyError" not in error and "Traceback" not in error


def test_a_new_run_keeps_the_previous_best_model_until_it_finishes(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "models"
    output.mkdir()
    previous = (trained["output"] / "best_model.pth").read_bytes()
    (output / "best_model.pth").write_bytes(previous)
    hour_ago = time.time() - 2 * 3600
    stale = [output / ".best_model.pth.k1ll3d.tmp", output / ".training_metadata.json.x9.tmp"]
    stale.append(output / ".last_checkpoint.pth.just.tmp")  # a kill -9 a moment ago: no run holds the folder now
    other = output / ".notes.txt.abc.tmp"  # not a file of the trainer's
    for path in [*stale, other]:
        path.write_bytes(b"partial")
    for path in [*stale[:2], other]:
        os.utime(path, (hour_ago, hour_ago))
    dataset = make_dataset(tmp_path / "dataset", TWO_CLASSES, train_per_class=3, val_per_class=2, size=(32, 32))
    real_train_one_epoch, calls = train_classifier.train_one_epoch, []

    def interrupted_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(train_classifier, "train_one_epoch", interrupted_in_second_epoch)
    argv = ["--weights", "none", "--freeze-until", "none", "--epochs", "2", "--batch-size", "2", "--image-size", "32"]
    assert run_trainer(dataset, output, *argv) == 130
    monkeypatch.undo()
    assert (output / "best_model.pth").read_bytes() == previous  # one epoch of the new run replaced nothing
    assert not any(path.exists() for path in stale) and other.exists()
    assert classifier.load_checkpoint(output / "best_model.pending.pth")["epoch"] == 1
    assert "best_model.pending.pth" in capsys.readouterr().err

    assert train_classifier.main(["--resume", "--dataset-dir", str(dataset), "--output-dir", str(output)]) == 0
    assert not (output / "best_model.pending.pth").exists()
    final = classifier.load_checkpoint(output / "best_model.pth")  # the new run's, now that it has finished
    assert final["classes"] == list(TWO_CLASSES) and final["image_size"] == 32
    assert read_json(output / "training_metadata.json")["best_model"] == "best_model.pth"


def crafted_checkpoint(trained: dict, output: Path, **arguments: object) -> Path:
    """The trained run's last_checkpoint.pth with some stored arguments changed, saved as plain dicts into
    ``output`` (what an attacker or a damaged file gives --resume)."""
    checkpoint = torch.load(trained["output"] / "last_checkpoint.pth", weights_only=True)
    checkpoint["arguments"].update(arguments)
    output.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, output / "last_checkpoint.pth")
    return output / "last_checkpoint.pth"


def test_a_checkpoint_never_chooses_where_a_resumed_run_writes(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    outside = tmp_path / "elsewhere"
    (outside / "dataset").mkdir(parents=True)
    (outside / "victim.json").write_text('{"keep": true}\n', encoding="utf-8")
    before = tree_snapshot(outside)
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for path in trained["dataset"].rglob("*.jpg"):
        (dataset / path.relative_to(trained["dataset"])).parent.mkdir(parents=True, exist_ok=True)
        (dataset / path.relative_to(trained["dataset"])).write_bytes(path.read_bytes())
    stored = {
        "report": str(outside / "victim.json"), "cache_dir": str(outside / "cache"), "epochs": 5,
        "dataset_dir": str(outside / "dataset"), "output_dir": str(outside / "models"), "detect_problematic": True,
        "analysis_epochs": 1, "weights": str(outside / "weights.pth"),
    }  # fmt: skip
    crafted_checkpoint(trained, tmp_path / "models", **stored)
    argv = ["--resume", "--dataset-dir", str(dataset), "--output-dir", str(tmp_path / "models"), "--device", "cpu"]
    assert train_classifier.main(argv) == 0
    assert tree_snapshot(outside) == before and sorted(outside.iterdir()) == [
        outside / "dataset",
        outside / "victim.json",
    ]
    metadata = read_json(tmp_path / "models" / "training_metadata.json")
    assert len(metadata["epochs"]) == 5  # the stored hyper-parameter (epochs 5) was restored
    notice = [line for line in capsys.readouterr().err.splitlines() if "Not taken from" in line]
    assert len(notice) == 1 and "--report" in notice[0] and "--cache-dir" in notice[0] and "victim.json" in notice[0]


@pytest.mark.parametrize(
    ("name", "value", "flag"),
    [("epochs", "abc", "--epochs"), ("batch_size", None, "--batch-size"), ("freeze_until", "layer9", "--freeze-until"),
     ("learning_rate", True, "--learning-rate")],
)  # fmt: skip
def test_wrong_types_in_stored_arguments_are_one_sentence(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, value: object, flag: str
) -> None:
    crafted_checkpoint(trained, tmp_path / "models", **{name: value})
    argv = ["--resume", "--dataset-dir", str(trained["dataset"]), "--output-dir", str(tmp_path / "models")]
    assert train_classifier.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: ") and f"{flag} {value!r}" in error
    assert f"give {flag} on the command line" in error
    if flag == "--batch-size":  # giving the flag, as the sentence says, is enough
        assert train_classifier.main([*argv, flag, "4"]) == 0


def test_a_megabyte_in_a_stored_argument_is_cut_in_the_error_and_the_notice(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    crafted_checkpoint(trained, tmp_path / "models", epochs="x" * 3_000_000)
    argv = ["--resume", "--dataset-dir", str(trained["dataset"]), "--output-dir", str(tmp_path / "models")]
    assert train_classifier.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error) < 1000 and "--epochs 'xxxx" in error and "(3,000,002 characters)" in error
    crafted_checkpoint(trained, tmp_path / "models", report="/" + "x" * 3_000_000)  # a path: never used, named once
    assert train_classifier.main([*argv, "--epochs", "1"]) == 0
    notice = [line for line in capsys.readouterr().err.splitlines() if "Not taken from" in line]
    assert len(notice) == 1 and len(notice[0]) < 1000 and "--report '/xxxx" in notice[0]


@pytest.mark.parametrize(
    ("key", "value"),
    [("epoch", "abc"), ("history", [{"epoch": 1, "is_best": True, "macro_f1": "x"}]), ("rng_states", {"torch": 1})],
)
def test_a_damaged_training_state_is_one_sentence(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture, key: str, value: object
) -> None:
    path = crafted_checkpoint(trained, tmp_path / "models")
    checkpoint = torch.load(path, weights_only=True)
    torch.save({**checkpoint, key: value}, path)
    argv = ["--resume", "--dataset-dir", str(trained["dataset"]), "--output-dir", str(tmp_path / "models")]
    assert train_classifier.main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the line naming the stored --weights file
    assert error.startswith("error: ") and "without --resume" in error
    assert f"stores an unusable {key}" in error or "does not fit this run" in error


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--learning-rate", "inf"),
        ("--weight-decay", "nan"),
        ("--seed", str(2**80)),
        ("--cache-max-gb", "nan"),
        ("--workers", str(10**6)),
    ],  # a million loader processes from a crafted checkpoint would exhaust the machine
)
def test_values_no_run_can_use_are_one_sentence_typed_or_stored(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture, flag: str, value: str
) -> None:
    argv = ["--dataset-dir", str(trained["dataset"]), "--output-dir", str(tmp_path / "models")]
    assert train_classifier.main([*argv, flag, value]) == 2  # typed
    stored = float(value) if "." in value or value.isalpha() else int(value)
    crafted_checkpoint(trained, tmp_path / "models", **{flag[2:].replace("-", "_"): stored})
    assert train_classifier.main([*argv, "--resume"]) == 2  # stored in a crafted checkpoint
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all(flag in error for error in errors)
    training_history = torch.load(trained["output"] / "last_checkpoint.pth", weights_only=True)["history"]
    damaged = [{**record, "val_loss": float("nan")} for record in training_history]  # NaN cannot go into JSON
    path = crafted_checkpoint(trained, tmp_path / "nan_history")
    torch.save({**torch.load(path, weights_only=True), "history": damaged}, path)
    assert train_classifier.main([*argv[:2], "--output-dir", str(tmp_path / "nan_history"), "--resume"]) == 2
    assert "stores an unusable history" in capsys.readouterr().err


def test_a_second_trainer_on_the_same_output_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = make_dataset(tmp_path / "dataset", TWO_CLASSES, train_per_class=2, val_per_class=1, size=(32, 32))
    output = tmp_path / "models"
    output.mkdir()
    killed = output / ".last_checkpoint.pth.k1ll3d.tmp"  # the other run may still be writing it: left alone
    killed.write_bytes(b"partial")
    with fileio.hold_lock(output / ".train_classifier.lock", "train_classifier.py", f"training into {output}"):
        assert run_trainer(dataset, output, "--weights", "none") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: another run (train_classifier.py, pid ")
    assert f"is training into {output}" in error
    assert sorted(path.name for path in output.iterdir()) == [killed.name]  # nothing written, nothing removed


@pytest.mark.parametrize("planted", ["error_analysis", "error_analysis/epoch_01"])
def test_a_symlinked_error_analysis_folder_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture, planted: str
) -> None:
    dataset = make_dataset(tmp_path / "dataset", TWO_CLASSES, train_per_class=2, val_per_class=1, size=(32, 32))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    link = tmp_path / "models" / planted
    link.parent.mkdir(parents=True)
    link.symlink_to(outside, target_is_directory=True)
    assert run_trainer(dataset, tmp_path / "models", "--weights", "none") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "is a symbolic link" in error and planted in error
    assert list(outside.iterdir()) == []


def test_fifos_and_non_utf8_names_are_skipped_with_their_reasons(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = make_dataset(tmp_path / "dataset", TWO_CLASSES, train_per_class=3, val_per_class=2, size=(32, 32))
    folder = dataset / "train" / "bird"
    bad_name = os.fsdecode(b"bad\xffname.jpg")  # Linux allows any bytes; Python keeps them as lone surrogates
    save_image(make_class_image(0, 77, (32, 32)), folder / bad_name)
    (folder / "spoof\u202egpj.jpg").write_bytes(b"")  # a right-to-left override in the name: printed escaped
    os.mkfifo(folder / "pipe.jpg")
    os.mkfifo(folder / "pipe")  # no extension: a reader that sniffs its content would wait forever
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the trainer opened a named pipe"))
    signal.alarm(300)
    try:
        code = run_trainer(
            dataset, tmp_path / "models", "--weights", "none", "--epochs", "1", "--batch-size", "2",
            "--image-size", "32", "--detect-problematic", "--analysis-epochs", "1",
            "--report", str(tmp_path / "report.json"),
        )  # fmt: skip
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert code == 1  # done, some inputs unusable
    texts = {path: path.read_bytes().decode("utf-8") for path in tmp_path.rglob("*.json")}  # all valid UTF-8
    assert len(texts) > 3
    metadata = read_json(tmp_path / "models" / "training_metadata.json")
    reasons = {item["path"]: item["reason"] for item in metadata["skipped_files"]}
    assert "UTF-8" in reasons[f"train/bird/{bad_name}"]  # the name comes back losslessly
    assert "named pipe" in reasons["train/bird/pipe.jpg"] and "named pipe" in reasons["train/bird/pipe"]
    report = read_json(tmp_path / "report.json")
    assert {"path": f"train/bird/{bad_name}", "reason": reasons[f"train/bird/{bad_name}"]} in report["errors"]
    assert all(bad_name not in entry["path"] for entries in report["problematic_images"].values() for entry in entries)
    err = capsys.readouterr().err
    assert "bad\\xffname.jpg" in err and "spoof\\u202egpj.jpg" in err and "\u202e" not in err
    assert "Traceback" not in err


def test_read_only_output_or_report_folder_is_one_sentence_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    dataset = make_dataset(tmp_path / "dataset", TWO_CLASSES, train_per_class=2, val_per_class=1, size=(32, 32))
    locked = tmp_path / "locked"
    locked.mkdir()
    for folder in (locked, dataset):
        folder.chmod(0o555)
    real_access = os.access
    if IS_ROOT:  # root may write anywhere: make the check see the folders as a user would
        monkeypatch.setattr(
            os, "access", lambda path, mode: Path(path) not in (locked, dataset) and real_access(path, mode)
        )
    try:
        assert run_trainer(dataset, locked / "models", "--weights", "none") == 2
        first = capsys.readouterr().err.strip()
        assert run_trainer(dataset, tmp_path / "models", "--weights", "none", "--detect-problematic") == 2
        second = capsys.readouterr().err.strip()
    finally:
        for folder in (locked, dataset):
            folder.chmod(0o755)
    assert len(first.splitlines()) == 1 and first.startswith("error: ") and str(locked) in first
    assert "read-only" in first and not (locked / "models").exists()
    assert len(second.splitlines()) == 1 and "read-only" in second and "--report" in second
    assert not (tmp_path / "models").exists()  # refused before any work


# ----------------------------------------------------------------------------------------------------------------
# Pure parts: sampling, augmentation, metrics, calibration, schedule


def test_weighted_sampler_balances_skewed_classes() -> None:
    labels = [0] * 40 + [1] * 10 + [2] * 10 + [3] * 10
    counts = np.zeros(4)
    for epoch in range(100):
        draw = training_data.draw_epoch(labels, 4, True, seed=1, epoch=epoch)
        assert len(draw) == len(labels)
        counts += np.bincount([labels[index] for index, _ in draw], minlength=4)
    assert counts / counts.sum() == pytest.approx([0.25] * 4, abs=0.02)
    plain = training_data.draw_epoch(labels, 4, False, seed=1, epoch=0)
    assert sorted(index for index, _ in plain) == list(range(70))  # without weighting: each image once
    assert training_data.draw_epoch(labels, 4, True, 1, 5) == training_data.draw_epoch(labels, 4, True, 1, 5)
    assert training_data.draw_epoch(labels, 4, True, 1, 5) != training_data.draw_epoch(labels, 4, True, 1, 6)
    excluded = training_data.draw_epoch(labels, 4, True, 1, 0, excluded=frozenset(range(40, 50)))
    assert not {index for index, _ in excluded} & set(range(40, 50))


def _top_red_bottom_blue(size: int = 96) -> np.ndarray:
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[: size // 2] = (230, 20, 20)
    pixels[size // 2 :] = (20, 20, 230)
    return pixels


def _is_upside_down(pixels: np.ndarray) -> bool:
    half = pixels.shape[0] // 2
    redness = pixels[..., 0].astype(float) - pixels[..., 2]
    return redness[:half].mean() < redness[half:].mean()


def test_augmentation_never_flips_birds_or_planes_upside_down() -> None:
    assert training_data.AUGMENTATION_TABLE["bird"].vertical_flip == 0.0
    assert training_data.AUGMENTATION_TABLE["plane"].vertical_flip == 0.0
    image = _top_red_bottom_blue()
    flips = {}
    for name in ("bird", "plane", "other"):
        transform = training_data.build_augmentation(training_data.augmentation_policy_for(name), 64)
        views = [training_data.augment(image, transform, seed) for seed in range(200)]
        assert all(view.shape == (64, 64, 3) and view.dtype == np.uint8 for view in views)
        flips[name] = sum(_is_upside_down(view) for view in views)
    assert flips["bird"] == 0 and flips["plane"] == 0
    assert 60 < flips["other"] < 140  # the check does see flips: "other" is flipped half the time


def test_unknown_classes_and_uniform_augmentation_use_the_default_row() -> None:
    default = training_data.DEFAULT_AUGMENTATION
    assert training_data.augmentation_policy_for("cat") == default
    assert all(training_data.augmentation_policy_for(name, is_uniform=True) == default for name in ("bird", "other"))
    assert training_data.augmentation_policy_for("superman").vertical_flip > 0


def test_augmentation_depends_only_on_the_seed_and_follows_the_table() -> None:
    image = np.array(make_class_image(1, 1, (90, 70)))
    transform = training_data.build_augmentation(training_data.augmentation_policy_for("other"), 48)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = training_data.augment(image, transform, 7)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is left as it was
    assert first.shape == (48, 48, 3) and first.dtype == np.uint8
    assert np.array_equal(first, training_data.augment(image, transform, 7))
    assert not np.array_equal(first, training_data.augment(image, transform, 8))
    with ThreadPoolExecutor(4) as pool:  # the loader's threads: same seed, same view, whatever the thread
        views = list(pool.map(lambda seed: training_data.augment(image, transform, seed % 3), range(24)))
    assert all(np.array_equal(view, views[i % 3]) for i, view in enumerate(views))
    steps = {type(step).__name__: step for step in transform.transforms}
    assert steps["RandomVerticalFlip"].p == 0.5 and steps["RandomGrayscale"].p == 0.1
    assert steps["ColorJitter"].brightness == pytest.approx((0.6, 1.4))
    bird = training_data.build_augmentation(training_data.augmentation_policy_for("bird"), 48)
    assert "RandomVerticalFlip" not in {type(step).__name__ for step in bird.transforms}


def test_training_copies_keep_the_shorter_side_and_centre_of_panoramas(tmp_path: Path) -> None:
    wide = save_image(make_class_image(0, 1, (2000, 10)), tmp_path / "wide.png")
    pixels = training_data.decode_training_copy(wide, 73)
    assert pixels.shape[0] == 73 and pixels.shape[1] <= 2 * 73 + 1
    photo = save_image(make_class_image(1, 1, (400, 300)), tmp_path / "photo.jpg")
    assert training_data.decode_training_copy(photo, 73).shape == (73, 97, 3)


def test_classification_metrics_match_sklearn() -> None:
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 200)
    predicted = np.where(rng.random(200) < 0.7, labels, rng.integers(0, 4, 200))  # class 3 is never true
    metrics = training_report.classification_metrics(labels, predicted, ["a", "b", "c", "d"])
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (4, 4) and matrix[3].sum() == 0  # rows: true class, and class 3 is never true
    assert matrix.sum(axis=0).tolist() == np.bincount(predicted, minlength=4).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=[0, 1, 2, 3], zero_division=0
    )
    for i, name in enumerate("abc"):
        assert metrics["per_class"][name]["precision"] == pytest.approx(precision[i])
        assert metrics["per_class"][name]["recall"] == pytest.approx(recall[i])
        assert metrics["per_class"][name]["support"] == support[i]
    # class d has no images: recall and F1 are undefined (None), its precision (it was predicted) is 0
    assert metrics["per_class"]["d"] == {"precision": 0.0, "recall": None, "f1": None, "support": 0}
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predicted, labels=[0, 1, 2], average="macro"))
    assert metrics["accuracy"] == pytest.approx((labels == predicted).mean())


def test_temperature_fit_recovers_a_known_temperature() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 4, generator=generator) * 4
    labels = torch.multinomial(torch.softmax(logits / 2.5, dim=1), 1, generator=generator).squeeze(1)
    temperature = training_report.fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.5, rel=0.1)
    before = training_report.expected_calibration_error(torch.softmax(logits, 1).numpy(), labels.numpy())
    after = training_report.expected_calibration_error(torch.softmax(logits / temperature, 1).numpy(), labels.numpy())
    assert after < before / 2


def test_calibration_never_raises_the_expected_calibration_error() -> None:
    kept = 0
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, 3, (40,), generator=generator)
        logits = torch.randn(40, 3, generator=generator) * 2 + 1.5 * F.one_hot(labels, 3)
        predictions = training_report.Predictions(logits, labels, torch.arange(40), [])
        calibration, table, _ = training_report.calibrate(predictions, ["a", "b", "other"])
        assert calibration["ece_after"] <= calibration["ece_before"]
        if not calibration["is_fit_used"]:  # the fit would have made it worse: T = 1, the table of T = 1
            kept += 1
            assert calibration["ece_fitted"] >= calibration["ece_before"] and calibration["temperature"] == 1.0
            assert table == training_report.threshold_table(
                predictions.probabilities(), labels.tolist(), ["a", "b", "other"]
            )
    assert 0 < kept < 20  # both cases occur


def test_threshold_table_sends_unsure_predictions_to_other() -> None:
    classes = ["bird", "other", "plane"]
    probabilities = np.array([[0.9, 0.05, 0.05], [0.62, 0.08, 0.3], [0.2, 0.1, 0.7], [0.56, 0.4, 0.04]])
    labels = [0, 1, 2, 1]  # the two unsure "bird" predictions are really "other"
    table = {row["threshold"]: row for row in training_report.threshold_table(probabilities, labels, classes)}
    assert (table[0.5]["accuracy"], table[0.5]["sent_to_other"]) == (0.5, 0.0)
    assert (table[0.6]["accuracy"], table[0.6]["sent_to_other"]) == (0.75, 0.25)
    assert (table[0.65]["accuracy"], table[0.65]["sent_to_other"]) == (1.0, 0.5)
    assert table[0.7]["accuracy"] == 1.0  # a probability exactly at the threshold keeps its class
    assert (table[0.95]["accuracy"], table[0.95]["sent_to_other"], table[0.95]["accepted_accuracy"]) == (0.5, 1.0, None)
    assert training_report.recommend_threshold(list(table.values())) == 0.65  # ties go to the lowest threshold


def test_confidence_threshold_refusals_say_what_is_needed(capsys: pytest.CaptureFixture) -> None:
    parser = train_classifier.get_args_parser()
    for value in ("1.5", "foo", "nan"):  # "foo" said "invalid threshold_setting value"
        with pytest.raises(SystemExit):
            parser.parse_args(["--confidence-threshold", value])
        assert f"a number from 0 to 1, or auto, is needed, got {value}" in capsys.readouterr().err
    assert parser.parse_args(["--confidence-threshold", " AUTO"]).confidence_threshold == "auto"


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    factors = [train_classifier.learning_rate_factor(step, 10, 100) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert train_classifier.learning_rate_factor(100, 10, 100) == pytest.approx(0.0)


def test_only_val_classes_that_train_lacks_are_refused() -> None:
    message = training_data.compare_class_sets(["bird", "plane"], ["bird", "cat"])
    assert "cat" in message and "plane" not in message  # plane, missing from val/, is trained anyway
    assert training_data.compare_class_sets(["a", "b"], ["b", "a"]) is None
    assert training_data.compare_class_sets(["a", "b"], ["a"]) is None


def test_an_unavailable_device_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = make_dataset(tmp_path / "dataset", classes=("bird", "plane"), train_per_class=2, val_per_class=1)
    assert run_trainer(dataset, tmp_path / "models", "--weights", "none", "--device", "bogus") == 2
    assert "--device" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("size", ["15", "1025"])
def test_an_image_size_classifier_py_refuses_is_refused_up_front(
    tmp_path: Path, size: str, capsys: pytest.CaptureFixture
) -> None:
    dataset = tmp_path / "dataset"  # never read: the size is refused before any work
    assert (
        train_classifier.main(
            ["--dataset-dir", str(dataset), "--output-dir", str(tmp_path / "m"), "--image-size", size]
        )
        == 2
    )
    error = capsys.readouterr().err
    assert error == f"error: --image-size must be 16 to 1024 pixels (classifier.py refuses other sizes), got {size}\n"
    assert not (tmp_path / "m").exists()


def test_progress_into_a_log_is_a_plain_line_every_30_seconds_of_long_work(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import tqdm.std

    clock = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])  # tqdm's clock
    cli.set_progress(True)
    for _ in cli.progress(range(5), desc="short"):  # a few seconds of work: nothing in the log
        clock[0] += 1.0
    for _ in cli.progress(range(10), desc="epoch 1 train"):  # 10 steps of 10 s each
        clock[0] += 10.0
    err = capsys.readouterr().err  # not a terminal, like a log file
    lines = err.splitlines()
    assert len(lines) == 3 and all(line.startswith("epoch 1 train: ") for line in lines) and "\r" not in err
    assert [line.split("|")[2].split()[0] for line in lines] == ["3/10", "6/10", "9/10"]  # every 30 s of work


def test_contact_sheet_names_are_shortened_to_the_thumbnail_width() -> None:
    from PIL import ImageFont

    font = ImageFont.load_default(size=12)
    long_name = "a_very_long_file_name_straight_from_an_image_search_0123456789.jpg"
    short = training_report.fit_text(long_name, font, 120)
    assert font.getlength(short) <= 120 and "\u2026" in short
    assert short.startswith("a_very") and short.endswith(".jpg")
    assert training_report.fit_text("bird_001.jpg", font, 120) == "bird_001.jpg"


def test_ctrl_c_in_the_first_epoch_says_to_run_the_same_command_not_resume(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_classifier, "train_one_epoch", interrupted)
    assert run_trainer(trained["dataset"], tmp_path / "models", *trained["arguments"]) == 130
    err = capsys.readouterr().err
    assert "before the first epoch ended: nothing to resume yet" in err and "--resume" not in err  # none to read
    monkeypatch.undo()
    assert run_trainer(trained["dataset"], tmp_path / "models", *trained["arguments"][:-6], "--epochs", "1") == 0


def test_outputs_inside_the_datasets_splits_and_a_users_file_as_report_are_refused(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dataset = trained["dataset"]
    mine = tmp_path / "notes.txt"
    mine.write_text("keep me")
    long_name = tmp_path / ("r" * 248 + ".json")  # fits the file system, not its temp file beside it
    for extra, message in (
        (["--output-dir", str(dataset / "train/bird/models")], "is inside"),
        (["--output-dir", str(dataset / "val")], "is inside"),
        (["--detect-problematic", "--report", str(dataset / "train/bird/r.json")], "is inside"),
        (["--detect-problematic", "--report", str(mine)], "exists and is not a problematic-images report"),
        (["--detect-problematic", "--report", str(long_name)], "at most 239 can be written"),
        (["--output-dir", str(tmp_path / ("x" * 300))], "cannot be used (File name too long)"),
    ):
        argv = [*TINY, "--dataset-dir", str(dataset), "--output-dir", str(tmp_path / "out"), "--epochs", "1", *extra]
        argv += ["--analysis-epochs", "1"] if "--detect-problematic" in extra else []
        assert train_classifier.main(argv) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert mine.read_text() == "keep me" and not (dataset / "train/bird/models").exists()
    assert not (dataset / "val/error_analysis").exists()


def test_the_trainer_names_a_class_too_small_to_learn_well(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = make_dataset(tmp_path / "dataset", ("bird", "plane"), [1, 3], [1, 2])
    argv = ["--dataset-dir", str(dataset), "--output-dir", str(tmp_path / "models"), *TINY, "--epochs", "1"]
    assert train_classifier.main([*argv, "--batch-size", "2", "--weights", "none"]) == 0
    assert "WARNING: Few training images in bird (1), plane (3): under 20" in capsys.readouterr().err
