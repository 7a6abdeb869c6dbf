"""Tests for train_classifier.py --detect-problematic: the analysis functions, the report, and tiny real runs.

The runs use 32 px images, resnet18 and colour-coded classes with one deliberately mislabeled image per class pair.
A stand-in for ImageNet weights (no network in tests) is trained once per module on other colour images, so the
analysis runs start, like real ones, from features that already see colour.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_class_image, make_dataset, save_image
from PIL import Image

import classifier
import problematic_analysis
import problematic_report
import review_problematic_images
import train_classifier

SIZE = (32, 32)
CLASSES = ("bird", "plane", "superman")  # colours of conftest.CLASS_COLOURS: red, green, blue
TINY = ["--arch", "resnet18", "--image-size", "32", "--num-workers", "0", "--device", "cpu", "--batch-size", "8"]
ANALYSIS = ["--learning-rate", "0.001", "--freeze-until", "layer3", "--warmup-epochs", "1", "--patience", "0"]
# (image colour, folder it is wrongly placed in): every mislabel is the only one of its colour pair, so with
# cross-validation no model ever trains on a wrong label like the one it scores.
MISLABELED = {"red_in_superman": (0, "superman"), "green_in_bird": (1, "bird"), "blue_in_plane": (2, "plane")}
AMBIGUOUS_PER_CLASS = 2  # correctly labelled but faded towards grey: hard, not mislabeled
GREY, FADE = (128, 128, 128), 0.6  # 40 % of the class colour left: the model is unsure, but of no other class


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """Two spinning intra-op threads on a loaded 2-core machine are ten times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_mislabeled_dataset(root: Path, train_per_class: int = 14, seed: int = 5) -> tuple[Path, set[str], set[str]]:
    """(dataset, planted relative paths, ambiguous relative paths): colour classes plus hard and mislabeled images."""
    dataset = make_dataset(root, CLASSES, train_per_class=train_per_class, val_per_class=2, size=SIZE, seed=seed)
    planted, ambiguous = set(), set()
    for number, (name, (colour, folder)) in enumerate(MISLABELED.items()):
        path = save_image(make_class_image(colour, 50_000 + number, SIZE), dataset / "train" / folder / f"{name}.jpg")
        planted.add(path.relative_to(dataset).as_posix())
    for index, name in enumerate(CLASSES):
        for number in range(AMBIGUOUS_PER_CLASS):
            faded = Image.blend(make_class_image(index, 60_000 + number, SIZE), Image.new("RGB", SIZE, GREY), FADE)
            path = save_image(faded, dataset / "train" / name / f"ambiguous_{number}.jpg")
            ambiguous.add(path.relative_to(dataset).as_posix())
    return dataset, planted, ambiguous


@pytest.fixture(scope="module")
def colour_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet18 weights that tell six colours apart: the stand-in for ImageNet weights, which need the network.

    Thirty plain optimisation steps on 48 generated images (a third of what the trainer would take with its
    per-epoch plots and checkpoints); their BatchNorm statistics are what --freeze-until layer3 then keeps.
    """
    torch.manual_seed(0)
    images = [make_class_image(colour, 900 + i, SIZE) for colour in range(6) for i in range(8)]
    pixels = torch.from_numpy(np.stack([np.asarray(image) for image in images]))
    inputs = classifier.normalize_batch(pixels, classifier.IMAGENET_MEAN, classifier.IMAGENET_STD).contiguous()
    labels = torch.arange(6).repeat_interleave(8)
    model = classifier.build_model("resnet18", 6, "none").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(30):
        batch = torch.randperm(len(labels), generator=generator)[:12]
        batch_inputs = inputs[batch].flip(3) if step % 2 else inputs[batch]
        loss = torch.nn.functional.cross_entropy(model(batch_inputs), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("weights") / "colour_resnet18.pth"
    torch.save(model.state_dict(), path)
    return path


def entries_by_path(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["path"]: entry for entries in report["problematic_images"].values() for entry in entries}


# ----------------------------------------------------------------------------------------------------------------
# Pure functions


def test_confident_learning_rule_needs_both_conditions() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array(
        [
            [0.9, 0.1],  # confident and right
            [0.8, 0.2],
            [0.1, 0.9],  # labelled 0, the model is sure it is 1: flagged
            [0.2, 0.8],
            [0.3, 0.7],
            [0.6, 0.4],  # labelled 1, below 1's threshold, but 0.6 < 0's threshold: hard, not flagged
        ]
    )
    thresholds = problematic_analysis.class_thresholds(probabilities, labels, 2)
    np.testing.assert_allclose(thresholds, [(0.9 + 0.8 + 0.1) / 3, (0.8 + 0.7 + 0.4) / 3])
    is_issue, other = problematic_analysis.find_label_issues(probabilities, labels, thresholds)
    assert is_issue.tolist() == [False, False, True, False, False, False]
    assert other[2] == 1
    # a class without images has no threshold, and nothing is ever flagged towards it
    thresholds = problematic_analysis.class_thresholds(probabilities[:3, :], labels[:3], 3)
    assert np.isnan(thresholds[2])
    padded = np.hstack([probabilities[:3], np.full((3, 1), 0.99)])
    assert not problematic_analysis.find_label_issues(padded, labels[:3], thresholds)[0][:2].any()


def test_folds_are_stratified_disjoint_and_reproducible() -> None:
    labels = np.array([0] * 7 + [1] * 5 + [2] * 4)
    folds = problematic_analysis.assign_folds(labels, 3, seed=4)
    assert set(folds.tolist()) == {0, 1, 2}
    for label in range(3):
        per_fold = np.bincount(folds[labels == label], minlength=3)
        assert per_fold.max() - per_fold.min() <= 1
    assert np.bincount(folds).max() - np.bincount(folds).min() <= 1
    np.testing.assert_array_equal(folds, problematic_analysis.assign_folds(labels, 3, seed=4))


def test_report_keeps_top_n_plus_every_label_issue_and_reads_back() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 6 + [1] * 6)
    probabilities = np.where(np.eye(2)[labels] == 1, 0.9, 0.1)
    probabilities[5] = [0.02, 0.98]  # a class-0 image the model calls class 1
    loss_history = rng.uniform(0.1, 0.5, size=(12, 3))
    loss_history[5] = [0.2, 0.2, 0.3]  # low loss so far: outside the top 2, but a label issue
    loss_history[0] = [3.0, 2.0, 2.5]
    paths = [f"train/{'ab'[label]}/{index:02d}.jpg" for index, label in enumerate(labels)]
    report = problematic_analysis.build_problematic_report(
        relative_paths=paths,
        labels=labels,
        classes=["a", "b"],
        loss_history=loss_history,
        probabilities=probabilities,
        top_n=2,
        method=problematic_analysis.IN_SAMPLE,
        arguments={"top_n_problematic": 2},
        dataset_dir="dataset",
    )
    report = json.loads(json.dumps(report, allow_nan=False))  # plain JSON types only
    assert review_problematic_images.validate_report(report) is report
    class_a = report["problematic_images"]["a"]
    by_mean_loss = sorted(range(6), key=lambda index: -loss_history[index].mean())
    assert [entry["path"] for entry in class_a[:2]] == [paths[by_mean_loss[0]], paths[by_mean_loss[1]]]
    assert by_mean_loss[0] == 0
    assert class_a[-1]["path"] == "train/a/05.jpg" and class_a[-1]["is_label_issue"] and class_a[-1]["rank"] > 2
    first = class_a[0]
    assert first["losses"] == pytest.approx(loss_history[0].tolist())
    assert (first["mean_loss"], first["max_loss"], first["min_loss"]) == pytest.approx((2.5, 3.0, 2.0))
    assert first["std_loss"] == pytest.approx(np.std([3.0, 2.0, 2.5]))
    assert class_a[-1]["suggested_class"] == "b" and class_a[-1]["predicted_class"] == "b"
    assert "p(a)=0.02 < a threshold" in class_a[-1]["label_issue_reason"]
    summary = report["summary_by_class"]["a"]
    assert (summary["count"], summary["reported"], summary["label_issues"]) == (6, 3, 1)
    assert summary["highest_mean_loss"] == pytest.approx(2.5)
    assert summary["average_mean_loss"] == pytest.approx(loss_history[:6].mean())
    assert report["analysis_epochs"] == 3 and report["num_images"] == 12


def test_analysis_flags_need_detect_problematic_and_sane_values(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (
        (["--stop-after-analysis"], "only works with --detect-problematic"),
        (["--detect-problematic", "--cross-val-folds", "1"], "--cross-val-folds must be at least 2"),
        (["--detect-problematic", "--analysis-epochs", "5", "--epochs", "3"], "needs --epochs of at least 5"),
        (["--detect-problematic", "--analysis-epochs", "4", "--patience", "1"], "could stop training before"),
    ):
        assert train_classifier.main(argv) == 2
        assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Real runs


def test_cross_validation_scores_each_image_once_out_of_fold_and_flags_the_mislabels(
    tmp_path: Path, colour_weights: Path
) -> None:
    dataset, planted, ambiguous = make_mislabeled_dataset(tmp_path / "dataset")
    report_path = tmp_path / "report.json"
    output = tmp_path / "models"
    code = train_classifier.main(
        ["--dataset-dir", str(dataset), "--output-dir", str(output), *TINY, *ANALYSIS, "--weights", str(colour_weights)]
        + ["--detect-problematic", "--cross-val-folds", "2", "--analysis-epochs", "6", "--epochs", "6"]
        + [
            "--top-n-problematic",
            "100",
            "--stop-after-analysis",
            "--problematic-report",
            str(report_path),
            "--seed",
            "0",
        ]
    )
    assert code == 0
    report = review_problematic_images.validate_report(json.loads(report_path.read_text(encoding="utf-8")))
    assert report["method"] == "out-of-fold" and report["cross_val_folds"] == 2
    assert report["evidence_note"] == problematic_report.evidence_note("out-of-fold")
    entries = entries_by_path(report)
    train_images = {p.relative_to(dataset).as_posix() for p in (dataset / "train").rglob("*.jpg")}
    assert set(entries) == train_images and report["num_images"] == len(train_images)  # each scored exactly once
    assert all(len(entry["losses"]) == 6 for entry in entries.values())
    for name in CLASSES:  # stratified folds: each class split evenly
        per_fold = np.bincount([entry["fold"] for entry in report["problematic_images"][name]], minlength=2)
        assert abs(per_fold[0] - per_fold[1]) <= 1
    for path in planted:
        entry = entries[path]
        assert entry["rank"] == 1, f"{path} is not the highest mean loss of {entry['class']}"
        assert entry["is_label_issue"], f"{path} not flagged: {entry['probabilities']}"
        assert entry["suggested_class"] == CLASSES[MISLABELED[Path(path).stem][0]]
    flagged = {path for path, entry in entries.items() if entry["is_label_issue"]}
    assert flagged - planted <= ambiguous, flagged - planted  # no typical, correctly labelled image is flagged
    assert not output.exists()  # no training after a cross-validated analysis with --stop-after-analysis


def test_in_sample_analysis_ranks_mislabels_first_then_training_continues(
    tmp_path: Path, colour_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, planted, _ = make_mislabeled_dataset(tmp_path / "dataset", train_per_class=8)
    output = tmp_path / "models"
    code = train_classifier.main(
        ["--dataset-dir", str(dataset), "--output-dir", str(output), *TINY, *ANALYSIS, "--weights", str(colour_weights)]
        + ["--detect-problematic", "--analysis-epochs", "2", "--epochs", "3", "--top-n-problematic", "3", "--seed", "0"]
    )
    assert code == 0
    report_path = dataset / problematic_report.DEFAULT_NAME  # the default: where the reviewer looks
    report = review_problematic_images.validate_report(json.loads(report_path.read_text(encoding="utf-8")))
    assert report["method"] == "in-sample" and report["analysis_epochs"] == 2
    assert "weak evidence" in report["evidence_note"] and "--cross-val-folds" in report["evidence_note"]
    printed = capsys.readouterr().out
    assert "weak evidence" in printed and "--cross-val-folds 5" in printed  # the summary says so too
    entries = entries_by_path(report)
    assert all(len(entry["losses"]) == 2 for entry in entries.values())
    for path in planted:
        assert entries[path]["rank"] == 1, f"{path} is not the highest mean loss of its class"
    metadata = json.loads((output / train_classifier.METADATA_NAME).read_text(encoding="utf-8"))
    assert len(metadata["epochs"]) == 3  # training went on to --epochs after the analysis
    assert metadata["problematic_analysis"]["report"] == str(report_path)
    # the reviewer reads it as it is
    assert review_problematic_images.main(["--report-path", str(report_path), "--mode", "summary"]) == 0


def test_stop_after_analysis_keeps_the_trained_model_and_resumes_after_an_interruption(
    tmp_path: Path, colour_weights: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path / "dataset", CLASSES, train_per_class=4, val_per_class=1, size=SIZE)
    output = tmp_path / "models"
    output.mkdir()
    (output / "best_model.pth").write_bytes(b"a model trained for hours")
    argv = ["--dataset-dir", str(dataset), "--output-dir", str(output), *TINY, *ANALYSIS]
    argv += [
        "--weights",
        str(colour_weights),
        "--detect-problematic",
        "--analysis-epochs",
        "2",
        "--stop-after-analysis",
    ]
    real_train_one_epoch, calls = train_classifier.train_one_epoch, []

    def interrupted_in_second_epoch(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(train_classifier, "train_one_epoch", interrupted_in_second_epoch)
    assert train_classifier.main(argv) == 130  # like Ctrl-C during the second analysis epoch
    monkeypatch.undo()
    report_path = dataset / problematic_report.DEFAULT_NAME
    assert not report_path.exists()  # no report from half an analysis
    capsys.readouterr()
    assert train_classifier.main([*argv, "--resume"]) == 0  # the first epoch's losses come from the checkpoint
    lines = capsys.readouterr().out.splitlines()
    order = [
        next(i for i, line in enumerate(lines) if line.startswith(prefix))
        for prefix in ("epoch   2", "Problematic-images report", "Stopping after the 2 analysis epoch(s)")
    ]
    assert order == sorted(order)  # the report and the stop follow the last epoch line
    assert not any(line.startswith(("Temperature", "threshold", "Recommended")) for line in lines)

    assert (output / "best_model.pth").read_bytes() == b"a model trained for hours"
    analysis_run = output / problematic_analysis.ANALYSIS_OUTPUT_SUBDIR
    metadata = json.loads((analysis_run / train_classifier.METADATA_NAME).read_text(encoding="utf-8"))
    assert len(metadata["epochs"]) == 2  # stopped after the analysis epochs, not at --epochs 15
    assert metadata["calibration"] is None  # no calibration of the throwaway model
    assert classifier.load_checkpoint(analysis_run / "best_model.pth")["temperature"] == 1.0
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["num_images"] == 12 and all(len(e["losses"]) == 2 for e in entries_by_path(report).values())


def test_help_lists_the_analysis_flags() -> None:
    text = train_classifier.get_args_parser().format_help()  # the --help subprocess runs in test_train_classifier
    for flag in ("--detect-problematic", "--analysis-epochs", "--top-n-problematic", "--stop-after-analysis"):
        assert flag in text
    assert "--cross-val-folds" in text and "--report" in text and "--problematic-report" not in text
