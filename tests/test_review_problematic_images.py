"""Tests for review_problematic_images.py and its figures (review_figures.py), on reports following
PROBLEMATIC_REPORT.md over generated datasets."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, make_dataset, tree_snapshot
from PIL import Image

import cli
import problematic_report
import review_figures as figures
import review_problematic_images as review

CLASSES = ["bird", "other", "plane", "superman"]


def make_report(dataset: Path, per_class: int = 3, epochs: int = 3, seed: int = 0) -> dict[str, Any]:
    """A schema-1 report over the first ``per_class`` train images of each class, losses made up but consistent.

    The first image of every class is flagged as a label issue whose suggested class is the next class.
    """
    rng = np.random.default_rng(seed)
    problematic, summary = {}, {}
    for class_index, class_name in enumerate(CLASSES):
        files = sorted((dataset / "train" / class_name).iterdir())[:per_class]
        entries = []
        for rank, path in enumerate(files, start=1):
            base = 3.0 / rank
            losses = [float(base + rng.uniform(-0.2, 0.2)) for _ in range(epochs)]
            other = CLASSES[(class_index + 1) % len(CLASSES)]
            own_probability = float(math.exp(-np.mean(losses)))
            probabilities = {name: (1 - own_probability) / (len(CLASSES) - 1) for name in CLASSES}
            probabilities[class_name] = own_probability
            is_issue = rank == 1
            entries.append(
                {
                    "rank": rank,
                    "path": path.relative_to(dataset).as_posix(),
                    "class": class_name,
                    "mean_loss": float(np.mean(losses)),
                    "max_loss": max(losses),
                    "min_loss": min(losses),
                    "std_loss": float(np.std(losses)),
                    "losses": losses,
                    "predicted_class": other if is_issue else class_name,
                    "given_label_probability": own_probability,
                    "suggested_class": other,
                    "probabilities": probabilities,
                    "is_label_issue": is_issue,
                    "label_issue_reason": f"p({class_name})=0.05 < {class_name} threshold 0.81 while p({other})=0.90"
                    if is_issue
                    else None,
                }
            )
        problematic[class_name] = entries
        means = [entry["mean_loss"] for entry in entries]
        summary[class_name] = {
            "count": 8,
            "reported": len(entries),
            "label_issues": 1,
            "highest_mean_loss": max(means),
            "lowest_mean_loss": 0.01,
            "average_mean_loss": 0.5,
        }
    return {
        "schema_version": 1,
        "report_type": "problematic_images",
        "created": "2026-11-29T01:23:45+00:00",
        "dataset_dir": str(dataset),
        "arguments": {"analysis_epochs": epochs},
        "classes": CLASSES,
        "analysis_epochs": epochs,
        "method": "in_sample",
        "cross_val_folds": None,
        "num_images": 8 * len(CLASSES),
        "class_thresholds": {name: 0.8 for name in CLASSES},
        "summary_by_class": summary,
        "problematic_images": problematic,
    }


def make_reviewed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, dict[str, Any]]:
    """(dataset, report path, report) with no display, so every figure goes to a PNG file."""
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    dataset = make_dataset(tmp_path / "dataset", classes=CLASSES, train_per_class=4, val_per_class=1)
    report = make_report(dataset)
    report_path = dataset / "problematic_images_report.json"
    report_path.write_text(json.dumps(report), encoding="utf-8")
    return dataset, report_path, report


@pytest.fixture
def reviewed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, dict[str, Any]]:
    return make_reviewed(tmp_path, monkeypatch)


def run_interactive(
    monkeypatch: pytest.MonkeyPatch, report_path: Path, answers: list[str], *extra: str
) -> tuple[int, list[str]]:
    """Run --mode interactive with ``answers`` on stdin; returns (exit code, unused answers)."""
    stdin = io.StringIO("".join(f"{answer}\n" for answer in answers))
    monkeypatch.setattr(sys, "stdin", stdin)
    code = review.main(["--report-path", str(report_path), "--mode", "interactive", *extra])
    return code, stdin.read().splitlines()


def is_png(path: Path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and image.width > 100 and image.height > 100


# --------------------------------------------------------------------------------------------------- pure functions


def test_validate_report_accepts_generated_report_and_names_what_is_wrong(tmp_path: Path) -> None:
    report = make_report(make_dataset(tmp_path / "d", classes=CLASSES, train_per_class=3, val_per_class=0))
    assert review.validate_report(report) is report
    bad_version = {**report, "schema_version": 3}
    with pytest.raises(review.ReportError, match="schema_version 3 but this script reads versions 1 and 2"):
        review.validate_report(bad_version)
    with pytest.raises(review.ReportError, match="report_type"):
        review.validate_report({**report, "report_type": "duplicates"})
    broken = json.loads(json.dumps(report))
    del broken["problematic_images"]["plane"][1]["losses"]
    with pytest.raises(review.ReportError, match="entry 1 of class 'plane' lacks losses"):
        review.validate_report(broken)
    wrong_types = {  # each was a traceback in the reviewer's ordering or the page's card before
        "margin": ("big", "'margin' that is not a number"),
        "probabilities": ([0.5, 0.5], "'probabilities' that is not an object of numbers"),
        "class": ("<other>", "has 'class' '<other>', which is not in 'classes'"),
    }
    for key, (value, message) in wrong_types.items():
        crafted = json.loads(json.dumps(report))
        crafted["problematic_images"]["plane"][0][key] = value
        with pytest.raises(review.ReportError, match=message):
            review.validate_report(crafted)
    entry = report["problematic_images"]["plane"][0]
    version_2 = {**report, "schema_version": 2, "all_images": [{**entry, "probabilities": [0.5, 0.5]}]}
    assert review.validate_report(json.loads(json.dumps(version_2)))
    for change in ({"path": "../../outside.jpg"}, {"class": "<other>"}, {"probabilities": ["x", 0.5]}):
        crafted = {**version_2, "all_images": [{**version_2["all_images"][0], **change}]}
        with pytest.raises(review.ReportError, match="'all_images' is not a list of"):
            review.validate_report(crafted)


def test_select_and_limit_follow_class_order_and_rank(tmp_path: Path) -> None:
    report = make_report(make_dataset(tmp_path / "d", classes=CLASSES, train_per_class=3, val_per_class=0))
    report["problematic_images"]["bird"].reverse()  # listed out of order: rank decides
    selected = review.select_entries(report, ["plane", "bird"])
    assert [entry["class"] for entry in selected] == ["bird"] * 3 + ["plane"] * 3
    assert [entry["rank"] for entry in selected[:3]] == [1, 2, 3]
    limited = review.limit_per_class(selected, 2)
    assert [(entry["class"], entry["rank"]) for entry in limited] == [
        ("bird", 1),
        ("bird", 2),
        ("plane", 1),
        ("plane", 2),
    ]
    issues = review.select_entries(report, None, only_label_issues=True)
    assert [entry["class"] for entry in issues] == CLASSES and all(entry["is_label_issue"] for entry in issues)
    report["problematic_images"]["plane"][2]["is_label_issue"] = True  # a label issue ranked below a hard example
    planes = review.select_entries(report, ["plane"])
    assert [entry["is_label_issue"] for entry in planes] == [True, True, False]  # label issues first


def test_only_a_label_issue_is_offered_another_class_and_only_a_more_probable_one(tmp_path: Path) -> None:
    report = make_report(make_dataset(tmp_path / "d", classes=CLASSES, train_per_class=3, val_per_class=0))
    issue, hard = report["problematic_images"]["bird"][:2]  # a version-1 report names a suggestion for both
    less_probable = {**issue, "probabilities": {**issue["probabilities"], "bird": 0.95}}
    assert problematic_report.suggested_class(less_probable) is None  # p(bird) is higher: nothing to suggest
    assert "suggested" not in review.describe_entry(hard, 2, 3) and "label is probably right" in review.describe_entry(
        hard, 2, 3
    )
    assert f"suggested {issue['suggested_class']}" in review.describe_entry(issue, 1, 3)
    assert "LIKELY LABEL ISSUE" in review.describe_entry(issue, 1, 3)
    assert "POSSIBLE LABEL ISSUE" in review.describe_entry(issue, 1, 3, "possible")  # a weak check's flag
    with pytest.raises(ValueError, match="say which class"):  # a bare r has nothing to relabel to
        review.parse_answer("r", hard, CLASSES)
    assert review.parse_answer("r", issue, CLASSES) == ("relabel", issue["suggested_class"])
    assert (
        figures.title_of(hard) == "bird (hard example)"
        and figures.title_of(issue) == f"bird -> {issue['suggested_class']}?"
    )


def test_parse_answer_refuses_relabel_to_missing_or_same_class() -> None:
    entry = {"class": "bird", "suggested_class": "plane", "is_label_issue": True}
    targets = ["other", "plane"]
    assert review.parse_answer("k", entry, targets) == ("keep", None)
    assert review.parse_answer(" d ", entry, targets) == ("delete", None)
    assert review.parse_answer("r", entry, targets) == ("relabel", "plane")
    assert review.parse_answer("relabel other", entry, targets) == ("relabel", "other")
    assert review.parse_answer("", entry, targets) == ("next", None)
    with pytest.raises(ValueError, match="no class folder 'dragon'"):
        review.parse_answer("r dragon", entry, targets)
    with pytest.raises(ValueError, match="already in class"):
        review.parse_answer("r bird", entry, targets)
    with pytest.raises(ValueError, match="unknown answer"):
        review.parse_answer("maybe", entry, targets)


def test_plan_moves_never_overwrites_a_file_or_another_move() -> None:
    taken = {PurePosixPath("train/plane/a.jpg"), PurePosixPath("train/plane/a_1.jpg")}
    pending = [
        ("train/bird/a.jpg", {"action": "relabel", "target_class": "plane"}),
        ("train/other/a.jpg", {"action": "relabel", "target_class": "plane"}),
        ("train/bird/b.jpg", {"action": "delete"}),
    ]
    moves = review.plan_moves(pending, lambda path: path in taken)
    assert [(move.source, move.destination, move.action) for move in moves] == [
        ("train/bird/a.jpg", "train/plane/a_2.jpg", "relabel"),
        ("train/other/a.jpg", "train/plane/a_3.jpg", "relabel"),
        ("train/bird/b.jpg", "", "trash"),  # into .trash/<run>/, undoable; never trash.py's permanent "delete"
    ]
    decisions = {"train/bird/c.jpg": {"action": "keep"}, **{path: decision for path, decision in pending}}
    decisions["train/bird/b.jpg"]["applied"] = True
    assert [path for path, _ in review.pending_decisions(decisions)] == ["train/bird/a.jpg", "train/other/a.jpg"]
    assert figures.page_paths(Path("g.png"), 1) == [Path("g.png")]
    assert figures.page_paths(Path("g.png"), 2) == [Path("g_page1.png"), Path("g_page2.png")]
    assert [len(page) for page in figures.grid_pages(100, 48)] == [48, 48, 4]


# --------------------------------------------------------------------------------------------------- modes


def test_summary_is_text_only_and_respects_class_and_limit(
    reviewed: tuple[Path, Path, dict[str, Any]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dataset, report_path, report = reviewed
    out_file = tmp_path / "summary.txt"
    code = review.main(
        [
            "--report-path",
            str(report_path),
            "--mode",
            "summary",
            "--class",
            "plane",
            "--limit",
            "2",
            "--save",
            str(out_file),
        ]
    )
    assert code == 0
    text = out_file.read_text(encoding="utf-8")
    assert text in capsys.readouterr().out
    shown = [entry["path"] for entry in report["problematic_images"]["plane"][:2]]
    assert all(path in text for path in shown)
    assert report["problematic_images"]["plane"][2]["path"] not in text  # beyond --limit
    assert "train/bird/" not in text  # other class
    assert "Likely label issues" in text and "p(plane)=0.05" in text
    issues, hard = text.index("Likely label issues"), text.index("Hard examples")
    first, second = report["problematic_images"]["plane"][:2]  # rank 1 a label issue, rank 2 a hard example
    assert issues < text.index(first["path"]) < hard < text.index(second["path"])  # label issues first, apart
    hard_line = next(line for line in text.splitlines() if line.endswith(second["path"]))
    assert second["suggested_class"] not in hard_line  # p(plane) is higher: no suggestion on a hard example
    for class_name in CLASSES:  # the per-class summary lists every class
        assert f"\n{class_name} " in text


def test_dataset_dir_alone_reads_that_datasets_report(
    reviewed: tuple[Path, Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    dataset, _, _ = reviewed  # the trainer writes <dataset-dir>/problematic_images_report.json; the reviewer reads it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no ./dataset: the old default, dataset/..., was read whatever --dataset-dir said
    assert review.main(["--dataset-dir", str(dataset), "--mode", "summary"]) == 0
    assert "plane" in capsys.readouterr().out


def test_summary_imports_neither_matplotlib_nor_torch(reviewed: tuple[Path, Path, dict[str, Any]]) -> None:
    _, report_path, _ = reviewed
    code = (
        "import sys; import review_problematic_images as r; "
        f"rc = r.main(['--report-path', {str(report_path)!r}, '--mode', 'summary']); "
        "heavy = sorted(m for m in ('matplotlib', 'torch', 'torchvision', 'classifier') if m in sys.modules); "
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_help_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "review_problematic_images.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "--mode" in result.stdout and "--undo" in result.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        ('{"schema_version": 1, "report_type": "problematic_images", "classes": ["bi', "not valid JSON"),
        ('{"schema_version": 7, "report_type": "problematic_images"}', "schema_version 7"),
    ],
    ids=["missing", "truncated", "wrong-schema"],
)
def test_bad_report_gives_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, expected: str
) -> None:
    report_path = tmp_path / "report.json"
    if content is not None:
        report_path.write_text(content, encoding="utf-8")
    assert review.main(["--report-path", str(report_path), "--mode", "summary"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.endswith(".")


def test_unknown_class_is_a_usage_error(reviewed: tuple[Path, Path, dict[str, Any]]) -> None:
    _, report_path, _ = reviewed
    with pytest.raises(SystemExit) as raised:
        review.main(["--report-path", str(report_path), "--mode", "summary", "--class", "dragon"])
    assert raised.value.code == 2


def test_moved_and_deleted_files_are_skipped_with_a_note(
    reviewed: tuple[Path, Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, report_path, report = reviewed
    gone = report["problematic_images"]["bird"][0]["path"]
    moved = report["problematic_images"]["plane"][1]["path"]
    (dataset / gone).unlink()
    (dataset / moved).rename(dataset / "train" / "other" / "moved_here.jpg")
    assert review.main(["--report-path", str(report_path), "--mode", "summary"]) == 1
    captured = capsys.readouterr()
    skipped = captured.out.split("Skipped 2 image(s):")[1]
    assert gone in skipped and moved in skipped and "no longer on disk" in skipped
    assert any(line.startswith("WARNING: ") and gone in line for line in captured.err.splitlines())
    # the rest is still listed
    assert report["problematic_images"]["bird"][1]["path"] in captured.out.split("Skipped")[0]


def test_grid_without_display_writes_png_and_placeholder_for_unreadable(
    reviewed: tuple[Path, Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, report_path, report = reviewed
    broken = report["problematic_images"]["other"][0]["path"]
    (dataset / broken).write_bytes((dataset / broken).read_bytes()[:200])  # truncated JPEG
    code = review.main(["--report-path", str(report_path), "--limit", "2"])
    assert code == 1  # done, but one image could not be read
    png = report_path.with_name("problematic_images_report_grid.png")
    assert is_png(png)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING: ")]
    assert any(broken in line and "truncated" in line for line in warnings)


def test_grid_and_trajectory_save_to_given_file(reviewed: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    _, report_path, _ = reviewed
    grid, trajectory = tmp_path / "out" / "grid.png", tmp_path / "out" / "trajectory.png"
    assert review.main(["--report-path", str(report_path), "--class", "bird", "--save", str(grid)]) == 0
    assert review.main(["--report-path", str(report_path), "--mode", "trajectory", "--save", str(trajectory)]) == 0
    assert is_png(grid) and is_png(trajectory)
    assert not report_path.with_name("problematic_images_report_trajectory.png").exists()


def test_trajectory_without_display_writes_default_png(reviewed: tuple[Path, Path, dict[str, Any]]) -> None:
    _, report_path, _ = reviewed
    assert review.main(["--report-path", str(report_path), "--mode", "trajectory", "--label-issues-only"]) == 0
    assert is_png(report_path.with_name("problematic_images_report_trajectory.png"))


# --------------------------------------------------------------------------------------------------- interactive


def trash_logs(dataset: Path) -> list[Path]:
    """The trash logs the reviewer wrote into the dataset's shared trash folder, oldest first."""
    return sorted((dataset / ".trash").glob("review_problematic_images_*.json"), key=lambda path: path.stat().st_mtime)


def test_interactive_keep_delete_relabel_quit_then_undo_restores_bytes(
    reviewed: tuple[Path, Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, report_path, report = reviewed
    before = tree_snapshot(dataset / "train")
    birds = [entry["path"] for entry in report["problematic_images"]["bird"]]
    answers = ["k", "d", "r dragon", "r plane", "q", "y"]  # a refused relabel, then a valid one; quit; confirm
    code, unused = run_interactive(monkeypatch, report_path, answers)
    assert code == 0 and unused == []
    [log_path] = trash_logs(dataset)
    log = json.loads(log_path.read_text(encoding="utf-8"))
    assert [move["status"] for move in log["moves"]] == ["done", "done"]
    assert (dataset / birds[0]).exists()  # kept
    trashed = dataset / ".trash" / log["run_id"] / birds[1]
    assert not (dataset / birds[1]).exists() and trashed.read_bytes() == before[birds[1][len("train/") :]]
    relabelled = dataset / "train" / "plane" / PurePosixPath(birds[2]).name
    assert not (dataset / birds[2]).exists() and relabelled.read_bytes() == before[birds[2][len("train/") :]]
    decisions = json.loads(report_path.with_name(review.DECISIONS_FILE_NAME).read_text(encoding="utf-8"))["decisions"]
    assert {path: decision["action"] for path, decision in decisions.items()} == {
        birds[0]: "keep",
        birds[1]: "delete",
        birds[2]: "relabel",
    }
    assert decisions[birds[2]]["target_class"] == "plane" and decisions[birds[2]]["applied"] is True
    assert not (dataset / ".trash" / ".lock").exists()  # the lock is released

    assert review.main(["--undo", str(log_path)]) == 0
    assert tree_snapshot(dataset / "train") == before
    assert review.main(["--undo", str(log_path)]) == 0  # twice is harmless
    assert tree_snapshot(dataset / "train") == before


def test_interactive_declined_changes_nothing_and_rerun_resumes(
    reviewed: tuple[Path, Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, report_path, report = reviewed
    before = tree_snapshot(dataset)
    first_plane = report["problematic_images"]["plane"][0]["path"]
    # bird: skip the class; other: no decision; plane: delete, then end of input (quit) and no confirmation
    code, _ = run_interactive(monkeypatch, report_path, ["s", "", "n", "n", "d"])
    assert code == 0
    decisions_path = report_path.with_name(review.DECISIONS_FILE_NAME)
    after = tree_snapshot(dataset)
    assert after.pop(decisions_path.relative_to(dataset).as_posix())
    assert after == before  # only the decisions file is new
    assert not (dataset / ".trash").exists()  # the lock's folder is gone again
    assert json.loads(decisions_path.read_text(encoding="utf-8"))["decisions"][first_plane]["action"] == "delete"

    # the rerun skips the decided image, so the first prompt is bird's first image; quit and confirm
    code, _ = run_interactive(monkeypatch, report_path, ["q", "yes"])
    assert code == 0
    assert not (dataset / first_plane).exists()
    assert len(list((dataset / ".trash").rglob(PurePosixPath(first_plane).name))) == 1


def test_relabel_into_taken_name_does_not_overwrite(
    reviewed: tuple[Path, Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, report_path, report = reviewed
    source = dataset / report["problematic_images"]["bird"][0]["path"]
    occupant = dataset / "train" / "plane" / source.name
    occupant.write_bytes(b"occupant bytes")  # same name already in the target folder
    before = tree_snapshot(dataset / "train")
    code, _ = run_interactive(monkeypatch, report_path, ["r plane", "q", "y"])
    assert code == 0
    assert occupant.read_bytes() == b"occupant bytes"
    assert occupant.with_name(f"{source.stem}_1{source.suffix}").read_bytes() == before[f"bird/{source.name}"]
    assert review.main(["--undo", str(trash_logs(dataset)[0])]) == 0
    assert tree_snapshot(dataset / "train") == before


def test_interrupt_while_moving_leaves_no_half_moved_file_and_undo_restores(
    reviewed: tuple[Path, Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, report_path, report = reviewed
    before = tree_snapshot(dataset / "train")
    real_rename, calls = os.rename, []

    def rename_then_interrupt(source: Any, destination: Any, **options: Any) -> None:
        if str(destination).endswith((".jpg", ".png")):  # an image move, not a lock or log write
            calls.append(source)
            if len(calls) == 2:
                raise KeyboardInterrupt
        real_rename(source, destination, **options)

    monkeypatch.setattr(os, "rename", rename_then_interrupt)
    code, _ = run_interactive(monkeypatch, report_path, ["d", "d", "d", "q", "y"])
    monkeypatch.setattr(os, "rename", real_rename)
    assert code == cli.EXIT_INTERRUPTED
    [log_path] = trash_logs(dataset)
    log = json.loads(log_path.read_text(encoding="utf-8"))
    assert [move["status"] for move in log["moves"]] == ["done", "planned", "planned"]
    for move in log["moves"]:  # every file is in exactly one place, whole
        places = [path for path in (dataset / move["source"], dataset / move["destination"]) if path.exists()]
        assert len(places) == 1 and places[0].read_bytes() == before[move["source"][len("train/") :]]
    assert not (dataset / ".trash" / ".lock").exists()
    assert review.main(["--undo", str(log_path)]) == 0
    assert tree_snapshot(dataset / "train") == before


def test_undo_refuses_a_file_that_is_not_a_trash_log(
    reviewed: tuple[Path, Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, _, _ = reviewed
    (dataset / ".trash").mkdir()
    log = dataset / ".trash" / "log.json"
    log.write_text('{"log_type": "something else"}', encoding="utf-8")
    before = tree_snapshot(dataset)
    assert review.main(["--undo", str(log)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a trash log" in err and len(err.splitlines()) == 1
    assert tree_snapshot(dataset) == before


def test_undo_refuses_an_old_move_log_with_a_sentence(
    reviewed: tuple[Path, Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, _, report = reviewed
    source = report["problematic_images"]["bird"][0]["path"]
    old = dataset / ".trash" / "review_20261129_012345" / "move_log.json"
    old.parent.mkdir(parents=True)
    moved = dataset / ".trash" / "review_20261129_012345" / source
    moved.parent.mkdir(parents=True)
    (dataset / source).rename(moved)
    log = {"schema_version": 1, "log_type": "problematic_review_moves", "dataset_dir": str(dataset.resolve())}
    old.write_text(json.dumps({**log, "moves": [{"source": source, "destination": str(moved)}]}), encoding="utf-8")
    before = tree_snapshot(dataset)
    assert review.main(["--undo", str(old)]) == 2
    err = capsys.readouterr().err.strip()
    assert "older review_problematic_images.py" in err and "move them back by hand" in err
    assert len(err.splitlines()) == 1 and tree_snapshot(dataset) == before


def test_second_run_gets_its_own_log_and_both_undo(
    reviewed: tuple[Path, Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, report_path, report = reviewed
    before = tree_snapshot(dataset / "train")
    birds = [entry["path"] for entry in report["problematic_images"]["bird"]]
    assert run_interactive(monkeypatch, report_path, ["d", "q", "y"])[0] == 0
    [first_log] = trash_logs(dataset)
    first_text = first_log.read_text(encoding="utf-8")
    # the rerun resumes after the decided image, so its first prompt is the second bird; exit 1 notes the deleted one
    assert run_interactive(monkeypatch, report_path, ["r plane", "q", "y"])[0] == 1
    second_log = next(path for path in trash_logs(dataset) if path != first_log)
    assert f"log {second_log}" in capsys.readouterr().out
    assert first_log.read_text(encoding="utf-8") == first_text  # not overwritten
    assert [move["source"] for move in json.loads(second_log.read_text(encoding="utf-8"))["moves"]] == [birds[1]]
    assert not (dataset / birds[0]).exists() and not (dataset / birds[1]).exists()

    assert review.main(["--undo", str(first_log)]) == 0
    assert review.main(["--undo", str(second_log)]) == 0
    assert tree_snapshot(dataset / "train") == before


def test_undo_drops_restored_decisions_so_a_rerun_shows_them_again(
    reviewed: tuple[Path, Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, report_path, report = reviewed
    birds = [entry["path"] for entry in report["problematic_images"]["bird"]]
    assert run_interactive(monkeypatch, report_path, ["k", "d", "q", "y"])[0] == 0
    decisions_path = report_path.with_name(review.DECISIONS_FILE_NAME)
    assert json.loads(decisions_path.read_text(encoding="utf-8"))["decisions"][birds[1]]["applied"] is True
    assert review.main(["--undo", str(trash_logs(dataset)[0])]) == 0
    decisions = json.loads(decisions_path.read_text(encoding="utf-8"))["decisions"]
    assert set(decisions) == {birds[0]}  # the kept image's decision stays, the restored one is gone
    capsys.readouterr()
    # the rerun shows the restored image first again (the kept one stays decided)
    assert run_interactive(monkeypatch, report_path, ["q"])[0] == 0
    assert "[1/" in capsys.readouterr().out.split(birds[1])[0].splitlines()[-1]


def test_undo_never_writes_a_decisions_file_that_only_the_log_names(
    reviewed: tuple[Path, Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dataset, report_path, _ = reviewed
    assert run_interactive(monkeypatch, report_path, ["d", "q", "y"])[0] == 0
    outside = tmp_path / "outside_decisions.json"  # a valid decisions file of this dataset, outside it
    outside.write_bytes(report_path.with_name(review.DECISIONS_FILE_NAME).read_bytes())
    log_path = trash_logs(dataset)[0]
    log = json.loads(log_path.read_text(encoding="utf-8"))
    log["extra"]["decisions_path"] = str(outside)  # crafted: the log chooses which file undo rewrites
    log_path.write_text(json.dumps(log), encoding="utf-8")
    before = outside.read_bytes()
    assert review.main(["--undo", str(log_path)]) == 0
    assert outside.read_bytes() == before


# ------------------------------------------------------------------------------------------------ what the figures say


def test_grid_caption_says_what_each_figure_is() -> None:
    entry = {"path": "train/bird/x.jpg", "class": "bird", "suggested_class": "plane", "mean_loss": 1.2391}
    entry |= {"losses": [1.0, 1.3, 1.4171], "given_label_probability": 0.8612, "is_label_issue": True}
    assert figures.grid_caption(entry, out_of_fold=False).splitlines() == [
        "bird -> plane?",
        "mean loss 1.24 (3 ep)",
        "p(bird) 0.86 last epoch",
        "x.jpg",
    ]
    assert "p(bird) 0.86 out of fold" in figures.grid_caption(entry, out_of_fold=True)


def test_trajectory_legend_names_the_colours_and_the_dashed_line(reviewed: tuple[Path, Path, dict[str, Any]]) -> None:
    _, _, report = reviewed
    plt = figures.import_pyplot(headless=True)
    figure = figures.build_trajectory_figure(plt, review.select_entries(report), len(CLASSES), "t")
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    plt.close(figure)
    assert labels == ["label issue", "worse than chance", "hard", "uniform guess: loss ln(4) = 1.39"]


def test_grid_and_summary_print_the_evidence_note(
    reviewed: tuple[Path, Path, dict[str, Any]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, report_path, report = reviewed
    assert review.main(["--report", str(report_path), "--mode", "summary"]) == 0
    assert "Note: in-sample flags are weak evidence" in capsys.readouterr().out
    assert "--detect-problematic for out-of-fold" in problematic_report.report_evidence_note(report)
    plt = figures.import_pyplot(headless=True)
    entries = review.select_entries(report)[:2]
    figure = figures.build_grid_figure(plt, entries, [(None, "unreadable")] * 2, report, "t")
    texts = " ".join(text.get_text() for text in figure.texts)
    plt.close(figure)
    assert "in-sample flags are weak evidence" in texts and "--detect-problematic" in texts
    for method in ("out-of-fold", "cross_validation", "linear-out-of-fold"):  # "cross_validation": older trainers
        assert problematic_report.report_evidence_note({**report, "method": method}).startswith("out-of-fold flags")
        assert problematic_report.evidence_note(method).startswith("out-of-fold flags")


@pytest.mark.parametrize("count", [1, 12])
def test_grid_captions_legend_and_a_long_note_never_cover_a_picture_or_leave_the_figure(
    reviewed: tuple[Path, Path, dict[str, Any]], count: int
) -> None:
    _, _, report = reviewed
    report = {**report, "method": "linear-out-of-fold", "check_agreement": 0.5, "num_images": 12}  # the weak note
    entries = (review.select_entries(report) * 4)[:count]
    plt = figures.import_pyplot(headless=True)
    figure = figures.build_grid_figure(plt, entries, [(None, "unreadable")] * count, report, "title")
    figure.canvas.draw()
    renderer, inside = figure.canvas.get_renderer(), figure.bbox
    pictures = [axis.get_window_extent() for axis in figure.axes if axis.images]
    captions = [axis.title.get_window_extent(renderer) for axis in figure.axes if axis.images]
    words = [text.get_window_extent(renderer) for text in [*figure.texts, figure.legends[0]]]
    plt.close(figure)
    assert len(pictures) == count
    for box in [*captions, *words]:
        assert inside.x0 - 1 <= box.x0 and box.x1 <= inside.x1 + 1 and inside.y0 - 1 <= box.y0, box
        assert not any(box.overlaps(picture) for picture in pictures), box


def test_png_is_written_with_ordinary_permissions(reviewed: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    _, report_path, _ = reviewed
    umask = os.umask(0o022)
    try:
        assert review.main(["--report", str(report_path), "--class", "bird", "--save", str(tmp_path / "g.png")]) == 0
    finally:
        os.umask(umask)
    assert (tmp_path / "g.png").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")] == []


def test_a_report_with_millions_of_losses_is_refused_not_plotted_for_hours(
    reviewed: tuple[Path, Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The probe: 2 million 'losses' in one entry held --mode trajectory over 5 minutes (one x tick per epoch)."""
    _, report_path, report = reviewed
    next(iter(report["problematic_images"].values()))[0]["losses"] = [1.0] * 2_000_000
    report_path.write_text(json.dumps(report), encoding="utf-8")
    args = ["--report-path", str(report_path), "--mode", "trajectory", "--save", str(tmp_path / "t.png")]
    assert review.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "losses" in err and len(err.splitlines()) == 1, err
