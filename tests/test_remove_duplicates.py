"""Tests of remove_duplicates.py: every strategy's plan, dry run, apply + undo, bad reports, interruptions."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import detect_duplicates_by_filesize as by_filesize
import detect_duplicates_by_phash as by_phash
import duplicate_report as dr
import numpy as np
import pytest
import remove_duplicates as rd
from conftest import ROOT, make_class_image, make_dataset, make_near_duplicates, save_image, tree_snapshot


def entry(path: str, width: int = 64, height: int = 64, size: int = 1000, sha256: str | None = None) -> dict:
    set_name, class_name = path.split("/")[:2]
    return {"path": path, "set": set_name, "class": class_name, "width": width, "height": height, "size": size,
            "mtime_ns": 0, "sha256": sha256, "filename": path.rsplit("/", 1)[-1]}  # fmt: skip


GROUPS = [
    {"id": 1, "category": "same_class_and_set", "files": [
        entry("train/bird/a.jpg", sha256="A"), entry("train/bird/b_copy.jpg", sha256="A"),
        entry("train/bird/c_resized.jpg", 32, 32, 400, sha256="C")]},
    {"id": 2, "category": "same_class_diff_set", "files": [
        entry("train/plane/p.jpg", 100, 100), entry("val/plane/long_name_p.jpg", 200, 200), entry("val/plane/p2.jpg")]},
    {"id": 3, "category": "diff_class_same_set", "files": [entry("train/bird/x.jpg"), entry("train/plane/x.jpg")]},
    {"id": 4, "category": "diff_class_diff_set", "files": [
        entry("train/bird/y.jpg"), entry("val/superman/y.jpg", size=2000)]},
]  # fmt: skip

EXPECTED_KEPT = {  # strategy -> {group id: kept paths}; groups not listed keep every file
    "safe": {1: {"train/bird/a.jpg", "train/bird/c_resized.jpg"}},
    "prefer-train": {2: {"train/plane/p.jpg"}, 4: {"train/bird/y.jpg"}},
    "prefer-val": {2: {"val/plane/long_name_p.jpg", "val/plane/p2.jpg"}, 4: {"val/superman/y.jpg"}},
    "first-alpha": {
        1: {"train/bird/a.jpg"}, 2: {"train/plane/p.jpg"}, 3: {"train/bird/x.jpg"}, 4: {"train/bird/y.jpg"}},
    "shortest-path": {
        1: {"train/bird/a.jpg"}, 2: {"val/plane/p2.jpg"}, 3: {"train/bird/x.jpg"}, 4: {"train/bird/y.jpg"}},
    "keep-best": {
        1: {"train/bird/a.jpg"}, 2: {"val/plane/long_name_p.jpg"}, 3: {"train/bird/x.jpg"}, 4: {"val/superman/y.jpg"}},
    "all": {1: {"train/bird/a.jpg"}, 2: {"train/plane/p.jpg"}, 3: {"train/bird/x.jpg"}, 4: {"train/bird/y.jpg"}},
}  # fmt: skip


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def copies_dataset(tmp_path: Path) -> Path:
    """A small dataset with planted exact copies in every category, and its file-size report."""
    dataset = make_dataset(tmp_path / "dataset", train_per_class=3, val_per_class=1)
    for source, destination in [
        ("train/bird/bird_000.jpg", "train/bird/bird_copy.jpg"),
        ("train/plane/plane_001.jpg", "val/plane/leaked.jpg"),
        ("train/plane/plane_001.jpg", "val/plane/leaked_again.jpg"),
        ("train/superman/superman_002.jpg", "train/other/conflict.jpg"),
        ("train/other/other_000.jpg", "val/bird/conflict_and_leak.jpg"),
    ]:
        shutil.copyfile(dataset / source, dataset / destination)
    assert by_filesize.main(["--dataset-dir", str(dataset)]) == 0
    return dataset


def report_of(dataset: Path) -> str:
    return str(dataset / "duplicate_report_filesize.json")


def snapshot_without_logs(dataset: Path) -> dict[str, bytes]:
    return {path: data for path, data in tree_snapshot(dataset).items() if not path.startswith(rd.LOG_PREFIX)}


# ----------------------------------------------------------------------------------------------------------------
# Plans (pure)


@pytest.mark.parametrize("strategy", sorted(EXPECTED_KEPT))
def test_every_strategy_plans_as_documented(strategy: str) -> None:
    plans = rd.make_plan(GROUPS, strategy)
    for group, plan in zip(GROUPS, plans):
        expected = EXPECTED_KEPT[strategy].get(group["id"], {e["path"] for e in group["files"]})
        assert {e["path"] for e in plan.keep} == expected, (strategy, group["id"])
        assert {e["path"] for e, _ in plan.remove} == {e["path"] for e in group["files"]} - expected
        assert all(reason for _, reason in plan.remove)
        if plan.remove and group["category"] in rd.CROSS_CLASS:
            assert any("label conflict" in note for note in plan.notes)


def test_safe_never_touches_label_conflicts_or_similar_files() -> None:
    plans = rd.make_plan(GROUPS, "safe")
    assert [len(plan.remove) for plan in plans] == [1, 0, 0, 0]
    assert plans[0].remove[0][0]["path"] == "train/bird/b_copy.jpg"


def test_no_strategy_ever_removes_a_whole_group() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        count = int(rng.integers(2, 6))
        files = [
            entry(f"{rng.choice(['train', 'val'])}/{rng.choice(['bird', 'plane'])}/f{trial}_{i}.jpg",
                  int(rng.integers(1, 4)) * 10, 10, int(rng.integers(1, 3)), sha256=str(rng.integers(0, 2)))
            for i in range(count)
        ]  # fmt: skip
        group = {"id": trial, "category": dr.categorize(files), "files": files}
        for strategy in rd.STRATEGIES:
            plan = rd.plan_group(group, strategy, choose=lambda g: [int(rng.integers(0, len(g["files"])))])
            kept, removed = {e["path"] for e in plan.keep}, {e["path"] for e, _ in plan.remove}
            assert kept and not kept & removed and kept | removed == {e["path"] for e in files}


def test_interactive_reads_the_choices(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    answers = iter(["2", "nonsense", "9", "s", "", "q"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(answers))
    groups = GROUPS + [dict(GROUPS[0], id=5)]
    plans = rd.make_plan(groups, "interactive", lambda g: rd.ask_keep(g, 0))
    assert [e["path"] for e in plans[0].keep] == ["train/bird/b_copy.jpg"]  # typed 2
    assert plans[1].remove == []  # two bad answers, then s: skipped
    assert [e["path"] for e in plans[2].keep] == ["train/bird/x.jpg"]  # Enter: the suggestion
    assert plans[3].remove == [] and plans[4].remove == []  # q: the rest stay as they are
    assert "Please type numbers" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------
# Dry run, apply, undo


def test_dry_run_changes_nothing(copies_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    before = tree_snapshot(copies_dataset)
    for strategy in sorted(EXPECTED_KEPT):
        assert rd.main(["--report", report_of(copies_dataset), "--strategy", strategy]) == 0
    assert tree_snapshot(copies_dataset) == before
    assert not (copies_dataset / rd.TRASH_DIR).exists()
    output = capsys.readouterr().out
    assert "Dry run: nothing was changed" in output and "remove  val/plane/leaked.jpg" in output


def test_apply_then_undo_restores_the_tree_byte_for_byte(copies_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    before = tree_snapshot(copies_dataset)
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes"]) == 0
    assert not (copies_dataset / "val/plane/leaked.jpg").exists()
    for group in dr.iter_groups(load(Path(report_of(copies_dataset)))):  # one copy of each group is left
        assert sum((copies_dataset / e["path"]).exists() for e in group["files"]) == 1
    (log_path,) = copies_dataset.glob(f"{rd.LOG_PREFIX}*.json")
    log = load(log_path)
    assert log["finished"] and len(log["entries"]) == 5
    assert all(r["status"] == "moved" and (copies_dataset / r["trash_path"]).is_file() for r in log["entries"])
    assert {r["reason"] for r in log["entries"]} and all(len(r["sha256"]) == 64 for r in log["entries"])
    assert (copies_dataset / rd.TRASH_DIR / log_path.stem[len(rd.LOG_PREFIX) :] / "val/plane/leaked.jpg").is_file()

    assert rd.main(["--undo", str(log_path)]) == 0
    assert snapshot_without_logs(copies_dataset) == before
    assert not (copies_dataset / rd.TRASH_DIR).exists()
    assert {r["status"] for r in load(log_path)["entries"]} == {"restored"}
    assert "Restored 5 files" in capsys.readouterr().out


def test_prefer_train_fixes_leakage_on_a_phash_report(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=2, val_per_class=1, size=(256, 192))
    image = make_class_image(1, 77, (256, 192))
    save_image(image, dataset / "train/plane/original.jpg")
    save_image(make_near_duplicates(image)["resized_50"], dataset / "val/plane/small.jpg")
    save_image(make_near_duplicates(image)["jpeg_q40"], dataset / "train/plane/q40.jpg")
    assert by_phash.main(["--dataset-dir", str(dataset), "--workers", "1"]) == 0
    report = str(dataset / "duplicate_report_phash.json")
    assert rd.main(["--report", report, "--strategy", "prefer-train", "--apply", "--yes"]) == 0
    assert not (dataset / "val/plane/small.jpg").exists()
    assert (dataset / "train/plane/original.jpg").exists() and (dataset / "train/plane/q40.jpg").exists()


def test_safe_removes_only_byte_identical_copies(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1, size=(256, 192))
    image = make_class_image(0, 5, (256, 192))
    save_image(image, dataset / "train/bird/original.jpg")
    save_image(image, dataset / "train/bird/same_bytes.jpg")
    save_image(make_near_duplicates(image)["jpeg_q40"], dataset / "train/bird/recompressed.jpg")
    assert by_phash.main(["--dataset-dir", str(dataset), "--workers", "1"]) == 0
    rd.main(["--report", str(dataset / "duplicate_report_phash.json"), "--apply", "--yes"])
    assert not (dataset / "train/bird/same_bytes.jpg").exists()
    assert (dataset / "train/bird/original.jpg").exists() and (dataset / "train/bird/recompressed.jpg").exists()


def test_changed_or_deleted_files_skip_their_group(copies_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    (copies_dataset / "val/plane/leaked_again.jpg").unlink()  # deleted between scan and removal
    with open(copies_dataset / "train/bird/bird_copy.jpg", "ab") as handle:  # changed since the scan
        handle.write(b"\0")
    code = rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes"])
    assert code == 1
    output = capsys.readouterr().out
    assert "no longer exists" in output and "changed since the report" in output
    assert (copies_dataset / "val/plane/leaked.jpg").exists()  # its group was skipped
    assert (copies_dataset / "train/bird/bird_copy.jpg").exists() and (
        copies_dataset / "train/bird/bird_000.jpg"
    ).exists()
    assert (
        not (copies_dataset / "train/other/conflict.jpg").exists()
        or not (copies_dataset / "train/superman/superman_002.jpg").exists()
    )  # the untouched groups were still handled


def test_the_last_copy_is_never_removed(copies_dataset: Path) -> None:
    record = {"path": "val/plane/leaked.jpg", "kept": ["train/plane/plane_001.jpg"], "action": "trash",
              "trash_path": ".trash/x/val/plane/leaked.jpg",
              "sha256": dr.sha256_file(copies_dataset / "val/plane/leaked.jpg")}  # fmt: skip
    (copies_dataset / "train/plane/plane_001.jpg").unlink()  # the kept copy vanished after planning
    status, note = rd.remove_one(record, copies_dataset)
    assert status == "skipped" and "last copy" in note
    assert (copies_dataset / "val/plane/leaked.jpg").exists()


def test_a_kept_symlink_keeps_its_target(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1)
    os.symlink(dataset / "train/bird/bird_000.jpg", dataset / "train/bird/a_link.jpg")  # first alphabetically
    assert by_filesize.main(["--dataset-dir", str(dataset)]) == 0
    assert rd.main(["--report", str(dataset / "duplicate_report_filesize.json"), "--strategy", "first-alpha",
                    "--apply", "--yes"]) == 0  # fmt: skip
    assert (dataset / "train/bird/a_link.jpg").exists() and (dataset / "train/bird/bird_000.jpg").is_file()


def one_file_twice_report(tmp_path: Path, second_spelling: str) -> tuple[Path, Path]:
    """A dataset with one image and a hand-made report whose only group lists it as train/bird/a.jpg and again as
    ``second_spelling``; (dataset, report)."""
    dataset = tmp_path / "dataset"
    image = save_image(make_class_image(0, seed=1), dataset / "train/bird/a.jpg")
    os.symlink("train", dataset / "alias")  # a second way into the same folder
    stat = image.stat()
    files = [{"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "set": "train", "class": "bird",
              "width": 64, "height": 64} for path in ("train/bird/a.jpg", second_spelling)]  # fmt: skip
    report = {"schema_version": dr.SCHEMA_VERSION, "method": "filesize", "dataset_dir": str(dataset),
              "duplicate_groups": {"same_class_and_set": [{"id": 1, "category": "same_class_and_set",
                                                           "files": files}]}}  # fmt: skip
    report_path = tmp_path / "report.json"
    report_path.write_text(json.dumps(report), encoding="utf-8")
    return dataset, report_path


@pytest.mark.parametrize(
    "spelling", ["train/bird/./a.jpg", "train//bird/a.jpg", "./train/bird/a.jpg", "alias/bird/a.jpg"]
)
@pytest.mark.parametrize("strategy", ["all", "first-alpha", "shortest-path", "keep-best"])
def test_one_file_under_two_spellings_is_never_removed(
    tmp_path: Path, spelling: str, strategy: str, capsys: pytest.CaptureFixture
) -> None:
    dataset, report_path = one_file_twice_report(tmp_path, spelling)
    before = tree_snapshot(dataset)
    assert rd.main(["--report", str(report_path), "--strategy", strategy, "--apply", "--yes"]) == 0
    assert "Summary: remove 0 files" in capsys.readouterr().out
    assert tree_snapshot(dataset) == before and (dataset / "train/bird/a.jpg").is_file()
    assert not list(dataset.glob(f"{rd.LOG_PREFIX}*")) and not (dataset / rd.TRASH_DIR).exists()


def test_the_removal_step_never_removes_a_kept_file_under_another_spelling(tmp_path: Path) -> None:
    dataset, _ = one_file_twice_report(tmp_path, "alias/bird/a.jpg")
    for kept in ("train/bird/./a.jpg", "alias/bird/a.jpg"):  # a log written by a planner without the checks
        record = {"path": "train/bird/a.jpg", "kept": [kept], "action": "trash", "trash_path": ".trash/x/a.jpg",
                  "sha256": dr.sha256_file(dataset / "train/bird/a.jpg")}  # fmt: skip
        status, note = rd.remove_one(record, dataset)
        assert status == "skipped" and "last copy" in note
    assert (dataset / "train/bird/a.jpg").is_file()


def test_report_paths_are_normalised_and_listed_once() -> None:
    files = [entry("train/bird/a.jpg"), entry("train//bird/./a.jpg"), entry("train/bird/b.jpg/")]
    group = {"id": 7, "category": "same_class_and_set", "files": files}
    normal, problem = rd.normalise_group(group)
    assert problem is None and [e["path"] for e in normal["files"]] == ["train/bird/a.jpg", "train/bird/b.jpg"]
    for bad in ("/etc/passwd", "train/../../x.jpg", "", "."):
        _, problem = rd.normalise_group(
            dict(group, files=[entry("train/bird/a.jpg"), dict(entry("train/b/c"), path=bad)])
        )
        assert problem and "not a path inside the dataset" in problem


def test_ctrl_c_during_removal_leaves_an_exact_log_and_undo_works(
    copies_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tree_snapshot(copies_dataset)
    real_move, calls, journals = rd.move_file, [], []

    def move_then_interrupt(source: Path, destination: Path) -> None:
        calls.append(source)
        if len(calls) == 3:  # what a kill at this moment would leave: the log and its journal
            journals.extend(path.read_text(encoding="utf-8") for path in copies_dataset.glob("*.journal"))
            raise KeyboardInterrupt
        real_move(source, destination)

    monkeypatch.setattr(rd, "move_file", move_then_interrupt)
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes"]) == 130
    (log_path,) = copies_dataset.glob(f"{rd.LOG_PREFIX}*.json")
    log = load(log_path)
    assert not log["finished"] and not rd.journal_path(log_path).exists()
    assert [r["status"] for r in log["entries"]] == ["moved", "moved", "pending", "pending", "pending"]
    assert journals == ["0\tmoved\n1\tmoved\n"]
    for record in log["entries"]:
        assert (copies_dataset / record["path"]).exists() == (record["status"] == "pending")
    monkeypatch.setattr(rd, "move_file", real_move)
    assert rd.main(["--undo", str(log_path)]) == 0
    assert snapshot_without_logs(copies_dataset) == before


def test_undo_after_a_kill_uses_the_journal_and_the_trash(copies_dataset: Path) -> None:
    before = tree_snapshot(copies_dataset)
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes"]) == 0
    (log_path,) = copies_dataset.glob(f"{rd.LOG_PREFIX}*.json")
    log = load(log_path)
    for record in log["entries"]:  # as written before anything moved: a kill left the log like this
        record["status"] = "pending"
    log["finished"] = False
    dr.write_json_atomic(log_path, log)
    rd.journal_path(log_path).write_text("0\tmoved\n1\tmoved\n", encoding="utf-8")  # entries 2.. had no line yet
    assert [r["status"] for r in rd.load_log(log_path)["entries"]] == ["moved", "moved"] + ["pending"] * 3
    assert rd.main(["--undo", str(log_path)]) == 0
    assert snapshot_without_logs(copies_dataset) == before


def test_a_failing_move_is_reported_and_the_rest_goes_on(copies_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_move = rd.move_file

    def refuse_leaked(source: Path, destination: Path) -> None:
        if source.name == "leaked.jpg":
            raise PermissionError(13, "Permission denied")
        real_move(source, destination)

    monkeypatch.setattr(rd, "move_file", refuse_leaked)
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes"]) == 1
    (log_path,) = copies_dataset.glob(f"{rd.LOG_PREFIX}*.json")
    statuses = {r["path"]: r["status"] for r in load(log_path)["entries"]}
    assert statuses.pop("val/plane/leaked.jpg") == "failed" and set(statuses.values()) == {"moved"}
    assert (copies_dataset / "val/plane/leaked.jpg").exists()


def test_delete_is_permanent_and_undo_says_so(copies_dataset: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "my_log.json"
    arguments = ["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes", "--delete"]
    assert rd.main([*arguments, "--output", str(log_path)]) == 0
    assert not (copies_dataset / "val/plane/leaked.jpg").exists() and not (copies_dataset / rd.TRASH_DIR).exists()
    with pytest.raises(SystemExit):  # an existing log is never overwritten
        rd.main([*arguments, "--output", str(log_path)])
    assert {r["status"] for r in load(log_path)["entries"]} == {"deleted"}
    assert rd.main(["--undo", str(log_path)]) == 1


def test_apply_asks_first(copies_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = tree_snapshot(copies_dataset)
    monkeypatch.setattr(builtins, "input", lambda prompt="": "n")
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply"]) == 1
    assert tree_snapshot(copies_dataset) == before
    monkeypatch.setattr(builtins, "input", lambda prompt="": "y")
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply"]) == 0
    assert not (copies_dataset / "val/plane/leaked.jpg").exists()


@pytest.mark.parametrize("where", ["confirmation", "interactive"])
def test_ctrl_c_at_a_prompt_changes_nothing(
    copies_dataset: Path, where: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    before = tree_snapshot(copies_dataset)
    prompts = []

    def interrupt(prompt: str = "") -> str:
        prompts.append(prompt)
        raise KeyboardInterrupt

    monkeypatch.setattr(builtins, "input", interrupt)
    strategy = "all" if where == "confirmation" else "interactive"
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", strategy, "--apply"]) == 130
    assert "Interrupted: nothing was changed." in capsys.readouterr().out
    assert ("Move" in prompts[0]) == (where == "confirmation") and len(prompts) == 1
    assert tree_snapshot(copies_dataset) == before  # no file moved, no log, no trash


# ----------------------------------------------------------------------------------------------------------------
# Bad reports and logs


@pytest.mark.parametrize("problem", ["missing", "truncated", "wrong_schema", "not_a_report", "outside_path"])
def test_bad_reports_are_refused_with_one_sentence(
    copies_dataset: Path, problem: str, capsys: pytest.CaptureFixture
) -> None:
    path = copies_dataset / "bad_report.json"
    text = Path(report_of(copies_dataset)).read_text(encoding="utf-8")
    report = json.loads(text)
    if problem == "truncated":
        path.write_text(text[: len(text) // 2], encoding="utf-8")
    elif problem == "wrong_schema":
        path.write_text(json.dumps(dict(report, schema_version=0)), encoding="utf-8")
    elif problem == "not_a_report":
        path.write_text(json.dumps({"entries": []}), encoding="utf-8")
    elif problem == "outside_path":
        report["duplicate_groups"]["same_class_and_set"][0]["files"][0]["path"] = "../../etc/passwd"
        path.write_text(json.dumps(report), encoding="utf-8")
    before = tree_snapshot(copies_dataset)
    if problem == "outside_path":
        assert rd.main(["--report", str(path), "--strategy", "all"]) == 1
        assert "not a path inside the dataset" in capsys.readouterr().out
    else:
        with pytest.raises(SystemExit) as exit_info:
            rd.main(["--report", str(path), "--strategy", "all"])
        assert exit_info.value.code == 2
        assert str(path) in capsys.readouterr().err
    assert tree_snapshot(copies_dataset) == before


def test_a_bad_log_is_refused(tmp_path: Path) -> None:
    (tmp_path / "log.json").write_text('{"kind": "deletion_log", "schema_version": 1, "entries": [{"path": "/etc/x", '
                                       '"status": "moved", "sha256": "0", "trash_path": "/etc/x"}]}')  # fmt: skip
    for path in (tmp_path / "log.json", tmp_path / "missing.json"):
        with pytest.raises(SystemExit) as exit_info:
            rd.main(["--undo", str(path)])
        assert exit_info.value.code == 2


def test_help_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "data_collection" / "remove_duplicates.py"), "--help"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "--strategy" in result.stdout and "default: safe" in result.stdout
