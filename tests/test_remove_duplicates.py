"""Tests of remove_duplicates.py: every strategy's plan, dry run, apply + undo, bad reports, interruptions, attacks."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import detect_duplicates_by_filesize as by_filesize
import detect_duplicates_by_phash as by_phash
import numpy as np
import pytest
import removal_plan
import remove_duplicates as rd
from conftest import IS_ROOT, ROOT, make_class_image, make_dataset, make_near_duplicates, save_image, tree_snapshot

import cli
import duplicate_report as dr
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
        if group["category"] in dr.CONFLICT_CATEGORIES:  # label conflicts: left for the user by every strategy
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
            plan = removal_plan.plan_group(group, strategy, choose=lambda g: [int(rng.integers(0, len(g["files"])))])
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
        is_conflict = group["category"] in dr.CONFLICT_CATEGORIES  # label conflicts: untouched
        expected = len(group["files"]) if is_conflict else 1
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

    monkeypatch.setattr(cli, "confirm", delete_the_kept_copy)
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply"]) == 1
    assert (copies_dataset / "val/plane/leaked.jpg").exists() and (
        copies_dataset / "val/plane/leaked_again.jpg"
    ).exists()
    err = capsys.readouterr().err  # seen by the content re-check right before acting (a file-size report), or by trash
    assert "train/plane/plane_001.jpg" in err and ("cannot read" in err or "is gone: not removing the last copy" in err)


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

    def rename_then_interrupt(source, destination, **options) -> None:
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_rename(source, destination, **options)

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

    def refuse_leaked(source, destination, **options) -> None:
        if Path(source).name == "leaked.jpg":
            raise PermissionError(13, "Permission denied")
        real_rename(source, destination, **options)

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


def test_end_of_input_or_enter_at_the_confirmation_is_no(
    copies_dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    before = tree_snapshot(copies_dataset)

    def end_of_input(prompt: str = "") -> str:
        raise EOFError

    for answer in (end_of_input, lambda prompt="": "", lambda prompt="": "yess"):
        monkeypatch.setattr(builtins, "input", answer)
        assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply"]) == 0
        assert "Cancelled: nothing was changed." in capsys.readouterr().out
        assert tree_snapshot(copies_dataset) == before
    monkeypatch.setattr(builtins, "input", lambda prompt="": " YES ")
    assert cli.confirm("Go?") is True


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


# ----------------------------------------------------------------------------------------------------------------
# Attacks and odd inputs (shared/BAD_INPUTS.md 18-25; issues 10 and 11)


def hand_report(dataset: Path, groups: list[list[str]], path: Path | None = None, **fields) -> Path:
    """A report grouping ``groups`` (lists of paths, each file's real size and mtime), written to ``path``
    (default: dataset/report.json); ``fields`` replace top-level values (dataset_dir=None drops it)."""

    def entry_of(relative: str) -> dict:
        info = os.stat(dataset / relative)
        set_name, class_name = relative.split("/")[:2]
        return {"path": relative, "size": info.st_size, "mtime_ns": info.st_mtime_ns, "set": set_name,
                "class": class_name, "width": 64, "height": 64, "filename": relative.rsplit("/", 1)[-1]}  # fmt: skip

    grouped: dict[str, list] = {category: [] for category in dr.CATEGORIES}
    for number, paths in enumerate(groups, start=1):
        files = [entry_of(relative) for relative in paths]
        category = dr.categorize(files)
        grouped[category].append({"id": number, "category": category, "files": files})
    report = {"schema_version": dr.SCHEMA_VERSION, "method": "filesize", "dataset_dir": str(dataset),
              "duplicate_groups": grouped, **fields}  # fmt: skip
    report = {key: value for key, value in report.items() if value is not None}
    path = path or dataset / "report.json"
    fileio.write_json(path, report)
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the dataset with the file an attacker wants removed: a byte copy of train/bird/bird_000.jpg."""
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def escape_dataset(tmp_path: Path, outside: Path, link: str) -> tuple[Path, Path]:
    """A dataset whose folder ``link`` is a symlink to ``outside``, where precious.jpg is a copy of train/bird/a.jpg;
    and its report grouping the two. (dataset, report)"""
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1)
    shutil.copyfile(dataset / "train/bird/bird_000.jpg", dataset / "train/bird/a.jpg")
    shutil.copyfile(dataset / "train/bird/a.jpg", outside / "precious.jpg")
    os.symlink(outside, dataset / link)
    return dataset, hand_report(dataset, [["train/bird/a.jpg", f"{link}/precious.jpg"]])


@pytest.mark.parametrize("link", ["train/evil", "train/bird/evil"])  # another class, and inside the same class
@pytest.mark.parametrize("strategy", [s for s in rd.STRATEGIES if s != "safe"] + ["safe"])
@pytest.mark.parametrize("delete", [False, True])
def test_a_symlinked_folder_pointing_outside_never_loses_the_outside_file(
    tmp_path: Path,
    outside: Path,
    link: str,
    strategy: str,
    delete: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    dataset, report = escape_dataset(tmp_path, outside, link)
    before, victim = tree_snapshot(dataset), (outside / "precious.jpg").read_bytes()
    monkeypatch.setattr(builtins, "input", lambda prompt="": "1")  # interactive: keep the dataset's copy
    arguments = ["--report", str(report), "--strategy", strategy, "--apply", "--yes"] + ["--delete"] * delete
    assert rd.main(arguments) == 1
    assert f"{link}/precious.jpg leads outside the dataset through a symlinked folder" in capsys.readouterr().out
    assert (outside / "precious.jpg").read_bytes() == victim and os.listdir(outside) == ["precious.jpg"]
    assert tree_snapshot(dataset) == before


@pytest.mark.parametrize("delete", [False, True])
def test_a_folder_swapped_for_a_symlink_after_the_plan_is_refused_at_the_move(
    tmp_path: Path, outside: Path, delete: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1)
    (dataset / "train/bird/sub").mkdir()
    shutil.copyfile(dataset / "train/bird/bird_000.jpg", dataset / "train/bird/sub/precious.jpg")
    report = hand_report(dataset, [["train/bird/bird_000.jpg", "train/bird/sub/precious.jpg"]])
    shutil.copy2(dataset / "train/bird/sub/precious.jpg", outside / "precious.jpg")  # same bytes: same SHA-256
    victim = (outside / "precious.jpg").read_bytes()

    def swap_then_confirm(question: str) -> bool:  # while the user reads the plan, sub/ becomes a link outside
        shutil.rmtree(dataset / "train/bird/sub")
        os.symlink(outside, dataset / "train/bird/sub")
        return True

    monkeypatch.setattr(cli, "confirm", swap_then_confirm)
    arguments = ["--report", str(report), "--strategy", "shortest-path", "--apply"] + ["--delete"] * delete
    assert rd.main(arguments) == 1
    assert "Not removed train/bird/sub/precious.jpg: leads outside the dataset" in capsys.readouterr().err
    assert (outside / "precious.jpg").read_bytes() == victim and os.listdir(outside) == ["precious.jpg"]
    assert (dataset / "train/bird/bird_000.jpg").is_file()


def test_a_symlinked_trash_is_refused_before_any_work(
    copies_dataset: Path, outside: Path, capsys: pytest.CaptureFixture
) -> None:
    os.symlink(outside, copies_dataset / trash.TRASH_FOLDER)
    before = tree_snapshot(copies_dataset)
    for arguments in (["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes"],
                      ["--undo", str(copies_dataset / ".trash/remove_duplicates_x.json")]):  # fmt: skip
        assert rd.main(arguments) == 2
    error = capsys.readouterr().err
    assert "is a symbolic link: files are never moved through it" in error
    assert os.listdir(outside) == [] and tree_snapshot(copies_dataset) == before


def applied_log(copies_dataset: Path) -> Path:
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes"]) == 0
    return the_log(copies_dataset)


def test_a_crafted_log_naming_another_dataset_is_refused(
    copies_dataset: Path, outside: Path, capsys: pytest.CaptureFixture
) -> None:
    log_path = applied_log(copies_dataset)
    (outside / "victim.jpg").write_bytes(b"victim")
    log = load(log_path)
    fileio.write_json(log_path, dict(log, dataset_dir=str(outside)))
    assert rd.main(["--undo", str(log_path)]) == 2
    assert "a log never chooses the folder it works on" in capsys.readouterr().err
    elsewhere = outside / "log.json"  # a log outside the trash, named with --dataset-dir
    fileio.write_json(elsewhere, log)
    assert rd.main(["--undo", str(elsewhere), "--dataset-dir", str(copies_dataset)]) == 2
    assert "a trash log is only used from the trash folder" in capsys.readouterr().err
    assert (
        sorted(os.listdir(outside)) == ["log.json", "victim.jpg"] and (outside / "victim.jpg").read_bytes() == b"victim"
    )


@pytest.mark.parametrize(
    "field, value",
    [("source", "/etc/passwd"), ("source", "../outside/victim.jpg"), ("destination", "/tmp/x.jpg"),
     ("destination", ".trash/../../outside/victim.jpg"), ("source", "train/evil/victim.jpg"),
     ("destination", ".trash/evil/victim.jpg")],
)  # fmt: skip
def test_crafted_log_paths_are_refused_by_path_with_a_reason(
    copies_dataset: Path, outside: Path, field: str, value: str, capsys: pytest.CaptureFixture
) -> None:
    (outside / "victim.jpg").write_bytes(b"victim")
    os.symlink(outside, copies_dataset / "train/evil")
    log_path = applied_log(copies_dataset)
    os.symlink(outside, copies_dataset / ".trash/evil")
    log = load(log_path)
    if value == ".trash/evil/victim.jpg":  # the victim's real hash: only the path check can stop it
        log["moves"][0]["sha256"] = fileio.sha256_file(outside / "victim.jpg")
    log["moves"][0][field] = value
    fileio.write_json(log_path, log)
    capsys.readouterr()
    assert rd.main(["--undo", str(log_path)]) == 1
    error = capsys.readouterr().err
    assert error.count("WARNING") == 1 and ("relative path inside the dataset" in error or "outside" in error)
    assert sorted(os.listdir(outside)) == ["victim.jpg"] and (outside / "victim.jpg").read_bytes() == b"victim"
    assert all((copies_dataset / m["source"]).is_file() for m in log["moves"][1:])  # the rest of the undo went on


def test_undo_never_pulls_in_an_outside_file_through_a_symlink_in_the_trash(
    copies_dataset: Path, outside: Path, capsys: pytest.CaptureFixture
) -> None:
    log_path = applied_log(copies_dataset)
    move = load(log_path)["moves"][0]
    shutil.copyfile(copies_dataset / move["destination"], outside / "victim.jpg")  # the same bytes
    (copies_dataset / move["destination"]).unlink()
    os.symlink(outside / "victim.jpg", copies_dataset / move["destination"])
    assert rd.main(["--undo", str(log_path)]) == 1
    assert "is a symbolic link; left where it is" in capsys.readouterr().err
    assert os.listdir(outside) == ["victim.jpg"] and not (copies_dataset / move["source"]).exists()


WRONG_VALUES = {  # what a report says -> the words of the refusal
    "width": ("abc", "files[0].width must be a whole number (it is 'abc')"),
    "files": ([], "files must be a list of at least two files (it has 0)"),
    "category": (None, ".category must be 'same_class_and_set' (it is NoneType)"),
    "path": (5, "files[0].path must be text (it is 5)"),
    "size": ("12", "files[0].size must be a whole number (it is '12')"),
    "id": (2, ".id must be a whole number no other group has (it is 2)"),  # another group's id
    "class": ("plane", "category must be 'diff_class_same_set' (its files' classes and sets)"),
    "dataset_dir": (7, "dataset_dir must be a folder name (it is 7)"),
}


@pytest.mark.parametrize("field", sorted(WRONG_VALUES))
def test_wrong_value_types_in_a_report_are_one_sentence_naming_the_field(
    copies_dataset: Path, field: str, capsys: pytest.CaptureFixture
) -> None:
    report = load(Path(report_of(copies_dataset)))
    group = report["duplicate_groups"]["same_class_and_set"][0]
    value, words = WRONG_VALUES[field]
    if field in ("files", "id"):
        group[field] = value
    elif field == "category":
        del group["category"]
    elif field == "dataset_dir":
        report["dataset_dir"] = value
    else:
        group["files"][0][field] = value
    path = copies_dataset / "wrong.json"
    fileio.write_json(path, report)
    before = tree_snapshot(copies_dataset)
    assert rd.main(["--report", str(path), "--strategy", "all", "--apply", "--yes"]) == 2
    error = capsys.readouterr().err
    assert words in error and error.count("\n") == 1 and "Traceback" not in error
    assert tree_snapshot(copies_dataset) == before and not (copies_dataset / trash.TRASH_FOLDER).exists()


def test_the_report_never_chooses_the_dataset(
    copies_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)  # not the dataset: a report without dataset_dir uses its own folder, not the cwd
    report = load(Path(report_of(copies_dataset)))
    fileio.write_json(copies_dataset / "no_dir.json", {k: v for k, v in report.items() if k != "dataset_dir"})
    assert rd.main(["--report", str(copies_dataset / "no_dir.json"), "--strategy", "all"]) == 0
    assert "remove  val/plane/leaked.jpg" in capsys.readouterr().out
    other = make_dataset(tmp_path / "other", train_per_class=1, val_per_class=1)
    before = tree_snapshot(other)
    assert rd.main(["--report", report_of(copies_dataset), "--dataset-dir", str(other), "--apply", "--yes"]) == 2
    assert f"was made for {copies_dataset}, not {other} (--dataset-dir)" in capsys.readouterr().err
    fileio.write_json(other / "moved_report.json", report)  # a report elsewhere still names copies_dataset
    assert rd.main(["--report", str(other / "moved_report.json"), "--strategy", "all", "--apply", "--yes"]) == 2
    assert f"pass --dataset-dir {copies_dataset} if that is the dataset you mean" in capsys.readouterr().err
    assert tree_snapshot(other) == {**before, "moved_report.json": (other / "moved_report.json").read_bytes()}


@pytest.mark.parametrize("strategy", [s for s in rd.STRATEGIES if s != "interactive"])
def test_label_conflicts_survive_every_non_interactive_strategy(
    copies_dataset: Path, strategy: str, capsys: pytest.CaptureFixture
) -> None:
    conflict_files = ["train/other/conflict.jpg", "train/superman/superman_002.jpg", "train/other/other_000.jpg",
                      "val/bird/conflict_and_leak.jpg"]  # fmt: skip
    before = {path: (copies_dataset / path).read_bytes() for path in conflict_files}
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", strategy, "--apply", "--yes"]) == 0
    assert {path: (copies_dataset / path).read_bytes() for path in conflict_files} == before
    assert "2 label-conflict groups left for you" in capsys.readouterr().out


def test_an_embedding_report_needs_the_categories_named(copies_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    report = load(Path(report_of(copies_dataset)))
    path = copies_dataset / "duplicate_report_embedding.json"
    fileio.write_json(path, dict(report, method="embedding"))
    before = tree_snapshot(copies_dataset)
    assert rd.main(["--report", str(path), "--strategy", "prefer-train", "--apply", "--yes"]) == 2
    error = capsys.readouterr().err
    assert "made by the embedding detector" in error and "--categories same_class_and_set" in error
    assert tree_snapshot(copies_dataset) == before
    assert rd.main(["--report", str(path), "--strategy", "all", "--categories", "same_class_and_set"]) == 0
    assert "remove  train/bird/bird_copy.jpg" in capsys.readouterr().out


def test_two_apply_runs_at_once_the_second_refuses(
    copies_dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    second: dict = {}

    def run_another_while_asked(question: str) -> bool:  # the first run holds the lock while it asks
        script = ROOT / "data_collection" / "remove_duplicates.py"
        arguments = ["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes"]
        second["process"] = subprocess.run([sys.executable, str(script), *arguments], capture_output=True, text=True)
        second["thread"] = []
        thread = threading.Thread(target=lambda: second["thread"].append(rd.main(arguments)))
        thread.start()
        thread.join()
        return True

    monkeypatch.setattr(cli, "confirm", run_another_while_asked)
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply"]) == 0
    process = second["process"]
    assert process.returncode == 2 and second["thread"] == [2]
    assert f"another run (remove_duplicates.py, pid {os.getpid()}" in process.stderr
    assert f"wait for it or remove {copies_dataset}/.trash/.lock if it is not running" in process.stderr
    assert len(list((copies_dataset / trash.TRASH_FOLDER).glob("*.json"))) == 1
    assert rd.main(["--undo", str(the_log(copies_dataset))]) == 0  # the one run is undoable


@pytest.mark.skipif(IS_ROOT, reason="root may write into a read-only folder")
def test_a_read_only_dataset_is_one_sentence_before_any_work(
    copies_dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    before = tree_snapshot(copies_dataset)
    os.chmod(copies_dataset, 0o555)
    try:
        if os.access(copies_dataset, os.W_OK):
            pytest.skip("chmod does not deny writes here")
        assert rd.main(["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes"]) == 2
        error = capsys.readouterr().err
        assert f"{copies_dataset} is read-only" in error and error.count("\n") == 1
        assert "Plan for" not in capsys.readouterr().out
    finally:
        os.chmod(copies_dataset, 0o755)
    assert tree_snapshot(copies_dataset) == before


def test_printed_plans_escape_control_and_bidi_characters(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1)
    spoof = "train/bird/x\u202egpj.exe\nremove  fake.jpg"
    shutil.copyfile(dataset / "train/bird/bird_000.jpg", dataset / spoof)
    report = hand_report(dataset, [["train/bird/bird_000.jpg", spoof]])
    assert rd.main(["--report", str(report), "--strategy", "shortest-path"]) == 0
    output = capsys.readouterr().out
    assert "\u202e" not in output and "x\\u202egpj.exe\\x0aremove  fake.jpg" in output
    assert not any(line.startswith("remove  fake.jpg") for line in output.splitlines())


def test_a_non_utf8_file_name_is_removed_and_restored(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1)
    odd = os.fsdecode(b"train/bird/zz_bad\xffname.jpg")
    shutil.copyfile(dataset / "train/bird/bird_000.jpg", dataset / odd)
    report = hand_report(dataset, [["train/bird/bird_000.jpg", odd]])
    before = tree_snapshot(dataset)
    assert rd.main(["--report", str(report), "--strategy", "first-alpha", "--apply", "--yes"]) == 0
    assert not os.path.exists(dataset / odd) and "bad\\xffname.jpg" in capsys.readouterr().out
    log_path = the_log(dataset)
    assert load(log_path)["moves"][0]["source"] == odd  # valid UTF-8 on disk (load decodes strictly)
    assert rd.main(["--undo", str(log_path)]) == 0
    assert snapshot_without_logs(dataset) == before


def test_stale_temp_files_of_its_logs_are_cleaned(copies_dataset: Path) -> None:
    log_path = applied_log(copies_dataset)
    stale = log_path.with_name(f".{log_path.name}.abc123.tmp")
    stale.write_text("half a log")
    os.utime(stale, (1, 1))
    fresh = log_path.with_name(f".{log_path.name}.def456.tmp")  # another run may be writing it right now
    fresh.write_text("being written")
    assert rd.main(["--undo", str(log_path)]) == 0
    assert not stale.exists() and fresh.exists()


def test_undo_refuses_a_log_of_another_tool(copies_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    with trash.lock(copies_dataset, "review_problematic_images.py"):
        log_path = trash.new_log(copies_dataset, "review_problematic_images", [trash.Move("val/plane/leaked.jpg")])
        trash.apply(copies_dataset, log_path)
    assert rd.main(["--undo", str(log_path)]) == 2
    assert "was written by review_problematic_images; undo it with that tool" in capsys.readouterr().err
    assert not (copies_dataset / "val/plane/leaked.jpg").exists()


def test_a_dataset_the_os_reports_read_only_is_one_sentence_before_any_work(
    copies_dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The same check as the chmod test above, where the tests run as root (root writes into read-only folders)."""
    log_path = applied_log(copies_dataset)
    capsys.readouterr()
    before = tree_snapshot(copies_dataset)
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda path, mode: real_access(path, mode) and not (mode & os.W_OK and Path(path) == copies_dataset),
    )
    for arguments in (["--report", report_of(copies_dataset), "--strategy", "all", "--apply", "--yes"],
                      ["--undo", str(log_path)]):  # fmt: skip
        assert rd.main(arguments) == 2
        captured = capsys.readouterr()
        assert captured.err == f"error: {copies_dataset} is read-only: files cannot be moved or logged there; " \
                               "nothing was changed\n"  # fmt: skip
        assert "Plan for" not in captured.out
    assert tree_snapshot(copies_dataset) == before


def test_a_fifo_in_a_report_is_skipped_never_opened(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = make_dataset(tmp_path / "dataset", train_per_class=1, val_per_class=1)
    os.mkfifo(dataset / "train/bird/pipe.jpg")
    report = hand_report(dataset, [["train/bird/bird_000.jpg", "train/bird/pipe.jpg"]])
    assert rd.main(["--report", str(report), "--strategy", "safe", "--apply", "--yes"]) == 1  # safe would hash it
    assert "train/bird/pipe.jpg is a named pipe (FIFO), not a file" in capsys.readouterr().out
    assert (dataset / "train/bird/bird_000.jpg").is_file()


@pytest.mark.parametrize("method", ["filesize", "phash"])
def test_a_report_calling_two_different_files_byte_identical_is_not_believed(
    tmp_path: Path, method: str, capsys: pytest.CaptureFixture
) -> None:
    """Issue 17: a report gave two different files one sha256; safe printed "byte-identical copy" and --delete removed
    one for good. Both files are hashed again before acting; the group is skipped with the reason."""
    dataset = make_dataset(tmp_path / "dataset", train_per_class=2, val_per_class=1)
    pair = ["train/bird/bird_000.jpg", "train/bird/bird_001.jpg"]
    assert (dataset / pair[0]).read_bytes() != (dataset / pair[1]).read_bytes()
    path = hand_report(dataset, [pair], method=method)
    report = load(path)
    for entry_ in report["duplicate_groups"]["same_class_and_set"][0]["files"]:
        entry_["sha256"] = fileio.sha256_file(dataset / pair[0])  # the lie: the second file has other bytes
    fileio.write_json(path, report)
    before = tree_snapshot(dataset)
    for strategy in ("safe", "first-alpha") if method == "filesize" else ("safe",):
        code = rd.main(["--report", str(path), "--strategy", strategy, "--apply", "--yes", "--delete"])
        out = capsys.readouterr().out
        assert code == 1 and "byte-identical copy" not in out and "does not have the content" in out
        assert tree_snapshot(dataset) == before  # nothing deleted, nothing moved


def test_a_copy_changed_between_the_plan_and_the_removal_is_left_alone(
    copies_dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def confirm_while_someone_edits(question: str) -> bool:
        (copies_dataset / "train/bird/bird_copy.jpg").write_bytes(b"edited while the question was open")
        return True

    monkeypatch.setattr(cli, "confirm", confirm_while_someone_edits)
    report = report_of(copies_dataset)
    assert rd.main(["--report", report, "--strategy", "safe", "--categories", "same_class_and_set", "--apply"]) == 1
    out = capsys.readouterr().out
    assert "Nothing to remove" in out and (copies_dataset / "train/bird/bird_copy.jpg").exists()
    assert not (copies_dataset / trash.TRASH_FOLDER).exists() or not list((copies_dataset / ".trash").glob("*.json"))


@pytest.mark.parametrize("strategy", ["safe", "prefer-train", "all"])
def test_a_report_that_lies_about_a_files_class_or_set_never_decides_a_removal(
    copies_dataset: Path, strategy: str, capsys: pytest.CaptureFixture
) -> None:
    report = load(Path(report_of(copies_dataset)))
    groups = report["duplicate_groups"]
    conflict = groups.pop("diff_class_same_set")[0]  # train/superman and train/other: the same picture, two labels
    for file in conflict["files"]:
        file["class"] = "superman"  # passed off as plain copies, so a strategy would remove one
    leak = groups["same_class_diff_set"][0]  # train/plane/plane_001.jpg and its val copies
    for file in leak["files"]:
        file["set"] = "val" if file["set"] == "train" else "train"  # prefer-train would remove the train copy
    groups["same_class_and_set"].append({**conflict, "category": "same_class_and_set"})
    groups["diff_class_same_set"] = []
    Path(report_of(copies_dataset)).write_text(json.dumps(report), encoding="utf-8")
    conflict_paths = [file["path"] for file in conflict["files"]]
    assert rd.main(["--report", report_of(copies_dataset), "--strategy", strategy, "--apply", "--yes"]) == 1
    assert all((copies_dataset / path).is_file() for path in [*conflict_paths, "train/plane/plane_001.jpg"])
    assert "do not match its path" in capsys.readouterr().out


def test_a_report_path_too_long_for_the_file_system_leaves_its_group_alone_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path / "dataset", ("bird", "plane"), 2, 1)
    copy = dataset / "train/bird/copy.jpg"
    copy.write_bytes((dataset / "train/bird/bird_000.jpg").read_bytes())
    assert by_filesize.main(["--dataset-dir", str(dataset)]) == 0
    report_path = dataset / "duplicate_report_filesize.json"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    text = json.dumps(report).replace("train/bird/copy.jpg", "train/bird/" + "A" * 300 + ".jpg")
    report_path.write_text(text, encoding="utf-8")
    before = tree_snapshot(dataset)
    code = rd.main(["--report", str(report_path), "--strategy", "all", "--apply", "--yes"])
    captured = capsys.readouterr()
    assert code in (0, 1) and "Traceback" not in captured.err  # was OSError ENAMETOOLONG
    assert "cannot be examined (File name too long)" in captured.out + captured.err
    assert tree_snapshot(dataset) == before  # its group was left alone
