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
from fileio import ReportError

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


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of a random classifier: 2-6 classes, often imbalanced, often rounded into ties."""
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 7))
    size = int(rng.integers(3 * num_classes, 250))
    shares = rng.dirichlet(np.full(num_classes, 0.4 if seed % 3 == 0 else 3.0))  # every third case: imbalanced
    labels = rng.choice(num_classes, size, p=shares)
    labels[:num_classes] = np.arange(num_classes)
    logits = rng.normal(0, 2, (size, num_classes))
    logits[np.arange(size), labels] += rng.uniform(0, 4)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if seed % 2 == 0:  # ties: equal probabilities within and across rows
        probabilities = np.round(probabilities, 1)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
    return probabilities, labels


@pytest.mark.filterwarnings("ignore::UserWarning")  # cleanlab's note about classes too small to prune
@pytest.mark.parametrize("rule", problematic_analysis.LABEL_ISSUE_RULES)
def test_label_issue_rules_equal_cleanlabs(rule: str) -> None:
    cleanlab_filter = pytest.importorskip("cleanlab.filter")  # a development requirement only
    flagged = 0
    for seed in range(60):
        probabilities, labels = random_case(seed)
        expected = cleanlab_filter.find_label_issues(labels, probabilities, filter_by=rule, n_jobs=1)
        ours = problematic_analysis.find_label_issues(probabilities, labels, rule)
        np.testing.assert_array_equal(ours, expected, err_msg=f"case {seed}")
        flagged += int(ours.sum())
    assert flagged > 100  # the cases do flag images, so the equality says something


def test_label_issue_rule_flags_what_another_class_claims_and_never_the_predicted_label() -> None:
    labels = np.array([0] * 6 + [1] * 6)
    probabilities = np.where(np.eye(2)[labels] == 1, 0.85, 0.15)
    probabilities[2] = [0.1, 0.9]  # labelled 0, the evidence is sure of 1
    probabilities[8] = [0.55, 0.45]  # labelled 1, below 1's threshold: yet 1 is not the most probable, hard
    for rule in problematic_analysis.LABEL_ISSUE_RULES:
        is_issue = problematic_analysis.find_label_issues(probabilities, labels, rule)
        assert np.flatnonzero(is_issue).tolist() in ([2], [2, 8]), rule
        assert not is_issue[probabilities.argmax(axis=1) == labels].any()  # never one whose label is most probable
    with pytest.raises(ValueError, match="prune_by_noise_rate"):
        problematic_analysis.find_label_issues(probabilities, labels, "both")


def blended_images(per_class: int, flips: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(NHWC uint8 images, given labels, is_flipped): four colour classes, each image blended 40 % with an image of
    a random class (so colours overlap and the classes are not trivially separable), ``flips`` labels moved."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(4):
        for number in range(per_class):
            other = make_class_image(int(rng.integers(4)), 70_000 + number * 4 + label, SIZE)
            images.append(np.asarray(Image.blend(make_class_image(label, number, SIZE), other, 0.4)))
            labels.append(label)
    labels = np.array(labels)
    flipped = rng.choice(len(labels), flips, replace=False)
    given = labels.copy()
    given[flipped] = (labels[flipped] + rng.integers(1, 4, flips)) % 4
    return np.stack(images), given, given != labels


def test_the_default_analysis_finds_planted_mislabels_from_pixels_alone() -> None:
    images, labels, is_flipped = blended_images(per_class=100, flips=20, seed=3)  # 5 % flipped
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    features = problematic_analysis.pixel_features(pixels).numpy()
    assert features.shape == (len(labels), problematic_analysis.PIXEL_FEATURE_WIDTH)
    is_issue, probabilities = problematic_analysis.label_issues_from_features([features], labels, seed=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    found = int((is_issue & is_flipped).sum())
    precision, recall = found / max(int(is_issue.sum()), 1), found / int(is_flipped.sum())
    # the naive rule a person might write: out-of-fold prediction differs from the label
    naive = probabilities.argmax(axis=1) != labels
    naive_precision = int((naive & is_flipped).sum()) / max(int(naive.sum()), 1)
    assert recall >= 0.85 and precision >= 0.5, (precision, recall)  # measured 0.95 and 0.66 (0.50 to 0.66 by seed)
    assert precision >= naive_precision + 0.1, (precision, naive_precision)  # the naive rule: 0.43


def test_a_class_of_one_image_is_never_flagged_and_warns_nothing(recwarn: pytest.WarningsRecorder) -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 12 + [1] * 12 + [2])  # class 2 has one image: no fold can learn it out of fold
    features = rng.normal(size=(len(labels), 6)) + labels[:, None] * 3.0
    for rule in problematic_analysis.LABEL_ISSUE_RULES:
        is_issue, probabilities = problematic_analysis.label_issues_from_features([features], labels, rule=rule)
        assert not is_issue[-1] and probabilities[-1, 2] == 1.0
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


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
        method=problematic_analysis.LINEAR_OUT_OF_FOLD,
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
    assert "p(b)=0.98 > p(a)=0.02" in class_a[-1]["label_issue_reason"]
    assert class_a[0]["is_hard_example"] and not class_a[0]["is_label_issue"]
    assert class_a[0]["suggested_class"] is None  # p(a) 0.9 > p(b): nothing to suggest for a hard example
    summary = report["summary_by_class"]["a"]
    assert (summary["count"], summary["reported"], summary["label_issues"], summary["hard_examples"]) == (6, 3, 1, 2)
    assert [item["path"] for item in report["all_images"]] == paths  # every image, not only the listed ones
    assert report["all_images"][5]["probabilities"] == pytest.approx([0.02, 0.98])
    assert summary["highest_mean_loss"] == pytest.approx(2.5)
    assert summary["average_mean_loss"] == pytest.approx(loss_history[:6].mean())
    assert report["analysis_epochs"] == 3 and report["num_images"] == 12
    assert report["check_agreement"] == pytest.approx(11 / 12)  # image 5's most probable class is not its label
    assert "weak" not in problematic_report.report_evidence_note(report)  # 92% agreement: a sharp check
    for bad in ("high", 1.5, -0.1, True):
        with pytest.raises(ReportError, match="'check_agreement' is not a number from 0 to 1"):
            problematic_report.validate_report({**report, "check_agreement": bad})


def test_a_weak_check_says_so_with_its_numbers_and_a_sharp_one_says_nothing() -> None:
    note = problematic_report.weak_check_note(0.523, 564, 1435)
    assert note is not None and "agrees with only 52% of the given labels" in note
    assert "564 flagged images (39% of 1,435)" in note and "--weights imagenet" in note
    assert problematic_report.weak_check_note(0.95, 3, 1435) is None
    assert problematic_report.weak_check_note(None, 564, 1435) is None  # a report from before the field
    assert problematic_report.weak_check_note(0.523, 0, 1435) is None  # nothing flagged: nothing to caution about
    report = {"method": problematic_analysis.LINEAR_OUT_OF_FOLD, "num_images": 1435, "check_agreement": 0.523,
              "summary_by_class": {"a": {"label_issues": 500}, "b": {"label_issues": 64}}}  # fmt: skip
    assert problematic_report.report_evidence_note(report).endswith("another class. " + note[0].upper() + note[1:])
    crafted = {**report, "num_images": 1e308, "summary_by_class": {"a": {"label_issues": 1e308}, "b": "x", "c": {}}}
    assert problematic_report.report_weak_check_note(crafted) is None  # counts that are not counts: nothing flagged
    crafted["summary_by_class"]["d"] = {"label_issues": 7}
    assert "expect most of the 7 flagged images to be labelled right" in problematic_report.report_weak_check_note(
        crafted
    )


def test_analysis_flags_need_detect_problematic_and_sane_values(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (
        (["--stop-after-analysis"], "only works with --detect-problematic"),
        (["--detect-problematic", "--cross-val-folds", "1"], "--cross-val-folds must be at least 2"),
        (["--detect-problematic", "--analysis-epochs", "5", "--epochs", "3"], "needs --epochs of at least 5"),
        (["--detect-problematic", "--analysis-epochs", "4", "--patience", "1"], "could stop training before"),
        (["--detect-problematic", "--report", str(Path(__file__).parent)], "is a folder"),  # was a traceback at the end
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


def test_default_analysis_flags_the_mislabels_out_of_fold_keeps_every_image_then_training_continues(
    tmp_path: Path, colour_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, planted, ambiguous = make_mislabeled_dataset(tmp_path / "dataset", train_per_class=8)
    output = tmp_path / "models"
    code = train_classifier.main(
        ["--dataset-dir", str(dataset), "--output-dir", str(output), *TINY, *ANALYSIS, "--weights", str(colour_weights)]
        + ["--detect-problematic", "--analysis-epochs", "2", "--epochs", "3", "--top-n-problematic", "3", "--seed", "0"]
    )
    assert code == 0
    report_path = dataset / problematic_report.DEFAULT_NAME  # the default: where the reviewer looks
    report = review_problematic_images.validate_report(json.loads(report_path.read_text(encoding="utf-8")))
    assert report["method"] == "linear-out-of-fold" and report["analysis_epochs"] == 2
    assert report["label_issue_rule"] == "prune_by_noise_rate" and report["schema_version"] == 2
    assert "out-of-fold" in report["evidence_note"]
    printed = capsys.readouterr().out
    assert "label issue: more likely" in printed and "weak evidence" not in printed
    entries = entries_by_path(report)
    assert all(len(entry["losses"]) == 2 for entry in entries.values())
    flagged = {path for path, entry in entries.items() if entry["is_label_issue"]}
    assert planted <= flagged, planted - flagged  # every planted mislabel, from features that never saw a label
    assert flagged - planted <= ambiguous, flagged - planted  # and no typical, correctly labelled image
    for path in planted:
        assert entries[path]["suggested_class"] == CLASSES[MISLABELED[Path(path).stem][0]]
    for entry in entries.values():  # no card contradicts itself
        if entry["suggested_class"] is not None:
            assert entry["probabilities"][entry["suggested_class"]] > entry["given_label_probability"]
        assert entry["is_hard_example"] != entry["is_label_issue"]
    train_images = {p.relative_to(dataset).as_posix() for p in (dataset / "train").rglob("*.jpg")}
    everything = {item["path"]: item for item in report["all_images"]}
    assert set(everything) == train_images  # every training image's probabilities, not only the listed ones
    assert all(sum(item["probabilities"]) == pytest.approx(1, abs=1e-4) for item in everything.values())
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


@pytest.mark.parametrize(
    "state",
    ["x", {"epochs": "12"}, {"epochs": [1], "relpaths": ["a.jpg"], "losses": "x"},
     {"epochs": [1], "relpaths": ["a.jpg"], "losses": [[1.0]], "probabilities": [["x"]], "report": ["/elsewhere"]}],
)  # fmt: skip
def test_a_damaged_analysis_state_in_a_checkpoint_is_the_same_as_none(state: Any) -> None:
    tracker = problematic_analysis.ProblematicImageTracker(["a.jpg"], 2, analysis_epochs=2)
    tracker.load_state_dict(state)  # was AttributeError or ValueError: a resumed run crashed
    assert tracker.epochs == [] and tracker.report_path is None and np.isnan(tracker.scores.losses).all()
