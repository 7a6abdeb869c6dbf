"""Tests of remove_duplicates.py: every strategy's plan, dry run, apply + undo, bad reports, interruptions, attacks."""

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

import fileio
import trash


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

EXPECTED_KEPT = {  # strategy -> {group id: kept paths}; groups not listed keep every file (3 and 4: label conflicts)
    "safe": {1: {"train/bird/a.jpg", "train/bird/c_resized.jpg"}},
    "prefer-train": {2: {"train/plane/p.jpg"}},
    "prefer-val": {2: {"val/plane/long_name_p.jpg", "val/plane/p2.jpg"}},
    "first-alpha": {1: {"train/bird/a.jpg"}, 2: {"train/plane/p.jpg"}},
    "shortest-path": {1: {"train/bird/a.jpg"}, 2: {"val/plane/p2.jpg"}},
    "keep-best": {1: {"train/bird/a.jpg"}, 2: {"val/plane/long_name_p.jpg"}},
    "all": {1: {"train/bird/a.jpg"}, 2: {"train/plane/p.jpg"}},
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
    return {path: data for path, data in tree_snapshot(dataset).items() if not path.startswith(".trash/")}


def the_log(dataset: Path) -> Path:
    (log_path,) = (dataset / trash.TRASH_FOLDER).glob("remove_duplicates_*.json")
    return log_path


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
        if group["category"] in rd.CROSS_CLASS:  # label conflicts: left for the user by every strategy
            assert plan.remove == [] and plan.is_left_for_user
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
    answers, prompts = iter(["2", "nonsense", "9", "s", "", "2", "", "q"]), []
    monkeypatch.setattr(builtins, "input", lambda prompt="": prompts.append(prompt) or next(answers))
    groups = [GROUPS[0], GROUPS[1], GROUPS[2], dict(GROUPS[0], id=5), GROUPS[3], dict(GROUPS[1], id=6)]
    plans = rd.make_plan(groups, "interactive", lambda g: rd.ask_keep(g, 0))
    assert [e["path"] for e in plans[0].keep] == ["train/bird/b_copy.jpg"]  # typed 2
    assert plans[1].remove == []  # two bad answers, then s: skipped
    assert [e["path"] for e in plans[2].keep] == ["train/plane/x.jpg"]  # a label conflict: Enter asked again, then 2
    assert [e["path"] for e in plans[3].keep] == ["train/bird/a.jpg"]  # Enter: the suggestion
    assert plans[4].remove == [] and plans[5].remove == []  # q: the rest stay as they are
    output = capsys.readouterr().out
    assert "Please type numbers" in output and "label conflict: there is no default" in output
    assert "Enter =" not in prompts[4] and "no default" in prompts[4] and "Enter = 1" in prompts[6]


# ----------------------------------------------------------------------------------------------------------------
# Dry run, apply, undo


def test_dry_run_changes_nothing(copies_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    before = tree_snapshot(copies_dataset)
    for strategy in sorted(EXPECTED_KEPT):
        assert rd.main(["--report", report_of(copies_dataset), "--strategy", strategy]) == 0
    assert tree_snapshot(copies_dataset) == before
    assert not (copies_dataset / trash.TRASH_FOLDER).exists()
    output = capsys.readouterr().out
    assert "Dry run: nothing was changed" in output and "remove  val/plane/leaked.jpg" in output
    assert "2 label-conflict groups left for you" in output
    assert "train/other/conflict.jpg (other), train/superman/superman_002.jpg (superman)" in output


def test_apply_then_undo_restores_the_tree_byte_for_byte(copies_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    before = tree_snapshot(copies_dataset)
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes"]) == 0
    assert not (copies_dataset / "val/plane/leaked.jpg").exists()
    for group in dr.iter_groups(load(Path(report_of(copies_dataset)))):  # one copy of each group of copies is left
        expected = len(group["files"]) if group["category"] in rd.CROSS_CLASS else 1  # label conflicts: untouched
        assert sum((copies_dataset / e["path"]).exists() for e in group["files"]) == expected
    log_path = the_log(copies_dataset)
    log = load(log_path)
    assert log["log_type"] == trash.LOG_TYPE and log["extra"]["strategy"] == "all" and len(log["moves"]) == 3
    assert all(m["status"] == "done" and (copies_dataset / m["destination"]).is_file() for m in log["moves"])
    assert all("group" in m["note"] and len(m["sha256"]) == 64 and m["kept"] for m in log["moves"])
    assert (copies_dataset / trash.TRASH_FOLDER / log_path.stem / "val/plane/leaked.jpg").is_file()

    assert rd.main(["--undo", str(log_path)]) == 0
    assert snapshot_without_logs(copies_dataset) == before
    assert os.listdir(copies_dataset / trash.TRASH_FOLDER) == [log_path.name]  # only the log stays
    assert {m["status"] for m in load(log_path)["moves"]} == {"undone"} and load(log_path)["undone"]
    assert "Restored 3 files" in capsys.readouterr().out


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
    shutil.copyfile(copies_dataset / "train/plane/plane_000.jpg", copies_dataset / "train/plane/plane_copy.jpg")
    assert by_filesize.main(["--dataset-dir", str(copies_dataset)]) == 0
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
    assert not (copies_dataset / "train/plane/plane_copy.jpg").exists()  # the untouched group was still handled
    assert (copies_dataset / "train/other/conflict.jpg").exists()  # label conflicts stay
    assert (copies_dataset / "train/superman/superman_002.jpg").exists()


def test_the_last_copy_is_never_removed(
    copies_dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def delete_the_kept_copy(question: str) -> bool:  # the kept copy vanishes while the user is asked
        (copies_dataset / "train/plane/plane_001.jpg").unlink()
        return True

    monkeypatch.setattr(rd, "confirm", delete_the_kept_copy)
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply"]) == 1
    assert (copies_dataset / "val/plane/leaked.jpg").exists() and (
        copies_dataset / "val/plane/leaked_again.jpg"
    ).exists()
    assert "its kept copy train/plane/plane_001.jpg is gone: not removing the last copy" in capsys.readouterr().err


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
    arguments = ["--report", str(report_path), "--dataset-dir", str(dataset), "--strategy", strategy]
    assert rd.main([*arguments, "--apply", "--yes"]) == 0
    assert "Summary: remove 0 files" in capsys.readouterr().out
    assert tree_snapshot(dataset) == before and (dataset / "train/bird/a.jpg").is_file()
    assert not (dataset / trash.TRASH_FOLDER).exists()


def test_the_removal_step_never_removes_a_kept_file_under_another_spelling(tmp_path: Path) -> None:
    dataset, _ = one_file_twice_report(tmp_path, "alias/bird/a.jpg")
    for kept in ("train/bird/./a.jpg", "alias/bird/a.jpg"):  # a log written by a planner without the checks
        with trash.lock(dataset, rd.TOOL):
            log_path = trash.new_log(dataset, rd.TOOL, [trash.Move("train/bird/a.jpg", kept=(kept,))])
            result = trash.apply(dataset, log_path)
        assert result.done == [] and "not removing the last copy" in result.errors[0][1]
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
    copies_dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    before = tree_snapshot(copies_dataset)
    real_rename, calls = os.rename, []

    def rename_then_interrupt(source, destination) -> None:
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", rename_then_interrupt)
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes"]) == 130
    monkeypatch.setattr(os, "rename", real_rename)
    assert "lists exactly what was moved; --undo puts it back" in capsys.readouterr().out
    log = load(the_log(copies_dataset))
    assert [m["status"] for m in log["moves"]] == ["done", "planned", "planned"]
    for move in log["moves"]:
        assert (copies_dataset / move["source"]).exists() == (move["status"] == "planned")
    assert not (copies_dataset / trash.TRASH_FOLDER / trash.LOCK_NAME).exists()  # the lock was released
    assert rd.main(["--undo", str(the_log(copies_dataset))]) == 0
    assert snapshot_without_logs(copies_dataset) == before


def test_undo_after_a_kill_reads_the_disk(copies_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    before = tree_snapshot(copies_dataset)
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes"]) == 0
    log_path = the_log(copies_dataset)
    log = load(log_path)
    for move in log["moves"]:  # as written before anything moved: a kill -9 within the write interval leaves this
        move["status"] = "planned"
    fileio.write_json(log_path, log)
    first = log["moves"][0]  # and a killed undo had already put the first file back
    os.rename(copies_dataset / first["destination"], copies_dataset / first["source"])
    assert rd.main(["--undo", str(log_path)]) == 0
    assert snapshot_without_logs(copies_dataset) == before
    assert rd.main(["--undo", str(log_path)]) == 0  # and again: quiet, no false "not found" warnings
    captured = capsys.readouterr()
    assert "not found" not in captured.err and "Restored 3 files" in captured.out


def test_a_failing_move_is_reported_and_the_rest_goes_on(copies_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_rename = os.rename

    def refuse_leaked(source, destination) -> None:
        if Path(source).name == "leaked.jpg":
            raise PermissionError(13, "Permission denied")
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", refuse_leaked)
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes"]) == 1
    moves = {m["source"]: m for m in load(the_log(copies_dataset))["moves"]}
    refused = moves.pop("val/plane/leaked.jpg")
    assert refused["status"] == "refused" and refused["reason"] == "Permission denied"
    assert {m["status"] for m in moves.values()} == {"done"}
    assert (copies_dataset / "val/plane/leaked.jpg").exists()


def test_delete_is_permanent_and_undo_says_so(copies_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    arguments = ["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes", "--delete"]
    assert rd.main([*arguments, "--output", "my_log.json"]) == 2  # the log always goes to the trash folder
    assert "--output is no longer used" in capsys.readouterr().err
    assert rd.main(arguments) == 0
    assert not (copies_dataset / "val/plane/leaked.jpg").exists()
    log_path = the_log(copies_dataset)
    assert os.listdir(copies_dataset / trash.TRASH_FOLDER) == [log_path.name]  # nothing kept in the trash
    assert {(m["action"], m["status"]) for m in load(log_path)["moves"]} == {("delete", "done")}
    assert rd.main(["--undo", str(log_path)]) == 1
    assert "was deleted for good" in capsys.readouterr().err


def test_apply_asks_first(copies_dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    before = tree_snapshot(copies_dataset)
    monkeypatch.setattr(builtins, "input", lambda prompt="": "n")
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply"]) == 0  # declining: exit 0
    assert "Cancelled: nothing was changed." in capsys.readouterr().out
    assert tree_snapshot(copies_dataset) == before and not (copies_dataset / trash.TRASH_FOLDER).exists()
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
        assert rd.main(["--report", str(path), "--strategy", "all"]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and str(path) in error and error.count("\n") == 1
    assert tree_snapshot(copies_dataset) == before


def test_a_bad_log_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "log.json").write_text('{"kind": "deletion_log", "schema_version": 1, "entries": [{"path": "/etc/x", '
                                       '"status": "moved", "sha256": "0", "trash_path": "/etc/x"}]}')  # fmt: skip
    for path in (tmp_path / "log.json", tmp_path / "missing.json"):
        assert rd.main(["--undo", str(path)]) == 2
    error = capsys.readouterr().err
    assert "old remove_duplicates.py format" in error and "missing.json does not exist" in error


def test_help_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "data_collection" / "remove_duplicates.py"), "--help"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "--strategy" in result.stdout and "default: safe" in result.stdout
