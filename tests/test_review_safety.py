"""review_problematic_images.py against hostile and odd input: crafted decisions files, symlinked folders, a second run,
a read-only dataset, a non-UTF-8 file name; and --apply-decisions, the HTML report's way to act (issues 10 and 13).

Every test asserts what a user would check: the files outside the dataset are byte-identical, the dataset is unchanged
when a decision is refused, the sentence on stderr, the exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from _race_helpers import race_every_move
from conftest import IS_ROOT, ROOT, make_class_image, make_dataset, save_image, tree_snapshot
from test_review_problematic_images import CLASSES, make_reviewed, run_interactive, trash_logs

import cli
import review_problematic_images as review
import trash
from fileio import sha256_file, write_json

Reviewed = tuple[Path, Path, dict[str, Any]]


@pytest.fixture
def reviewed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Reviewed:
    """(dataset, report path, report) of tests/test_review_problematic_images.py."""
    return make_reviewed(tmp_path, monkeypatch)


def decisions_file(path: Path, dataset: Path, decisions: dict[str, Any], **fields: Any) -> Path:
    """A decisions file as the HTML report exports it (fields override the defaults)."""
    write_json(path, {"schema_version": 1, "dataset_dir": str(dataset.resolve()), "decisions": decisions, **fields})
    return path


def make_victim(tmp_path: Path) -> Path:
    """A folder outside the dataset with files that must never move: victim/sub/v3.jpg and victim/v.jpg."""
    victim = tmp_path / "victim"
    save_image(make_class_image(0, 999), victim / "sub" / "v3.jpg")
    save_image(make_class_image(1, 998), victim / "v.jpg")
    return victim


def apply(decisions: Path, dataset: Path, *extra: str) -> int:
    return review.main(["--apply-decisions", str(decisions), "--dataset-dir", str(dataset), *extra])


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, errors
    return errors[0]


# --------------------------------------------------------------------------------------------------- escapes


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlinked-folder"])
@pytest.mark.parametrize("how", ["apply-decisions", "interactive"])
def test_decision_naming_a_file_outside_is_refused_and_nothing_moves(
    reviewed: Reviewed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    how: str,
) -> None:
    dataset, report_path, report = reviewed
    victim = make_victim(tmp_path)
    (dataset / "train" / "evil").symlink_to(victim / "sub", target_is_directory=True)
    hostile = {
        "dotdot": "../victim/sub/v3.jpg",
        "absolute": str((victim / "sub" / "v3.jpg").resolve()),
        "symlinked-folder": "train/evil/v3.jpg",
    }[kind]
    honest = report["problematic_images"]["bird"][0]["path"]  # valid, and listed first: still not moved
    decisions = {honest: {"action": "delete"}, hostile: {"action": "delete"}}
    victim_before, dataset_before = tree_snapshot(victim), tree_snapshot(dataset)
    if how == "apply-decisions":
        code = apply(decisions_file(tmp_path / "decisions.json", dataset, decisions), dataset, "--yes")
    else:
        path = report_path.with_name(review.DECISIONS_FILE_NAME)
        decisions_file(path, dataset, decisions, decisions_type=review.DECISIONS_TYPE, report_created=report["created"])
        dataset_before = tree_snapshot(dataset)
        code, _ = run_interactive(monkeypatch, report_path, ["q", "y"])
    assert code == 2
    error = one_error_line(capsys)
    assert cli.printable(hostile) in error and "nothing was moved" in error
    assert tree_snapshot(victim) == victim_before
    assert tree_snapshot(dataset) == dataset_before  # the honest decision was not carried out either
    assert not (dataset / ".trash").exists()


def test_relabel_target_that_is_a_path_is_refused(
    reviewed: Reviewed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, _, report = reviewed
    victim = make_victim(tmp_path)
    image = report["problematic_images"]["bird"][0]["path"]
    decisions = {image: {"action": "relabel", "target_class": "../../victim/sub"}}
    victim_before, dataset_before = tree_snapshot(victim), tree_snapshot(dataset)
    assert apply(decisions_file(tmp_path / "d.json", dataset, decisions), dataset, "--yes") == 2
    error = one_error_line(capsys)
    assert "target_class '../../victim/sub' is not a class folder of train/" in error
    assert tree_snapshot(victim) == victim_before and tree_snapshot(dataset) == dataset_before


def test_relabel_to_a_class_that_does_not_exist_is_refused(
    reviewed: Reviewed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, _, report = reviewed
    image = report["problematic_images"]["bird"][0]["path"]
    before = tree_snapshot(dataset)
    decisions = {image: {"action": "relabel", "target_class": "dragon"}}
    assert apply(decisions_file(tmp_path / "d.json", dataset, decisions), dataset, "--yes") == 2
    assert "'dragon' is not a class folder of train/ (classes there: bird, other, plane, superman)" in one_error_line(
        capsys
    )
    assert tree_snapshot(dataset) == before


def test_report_entry_through_a_symlinked_folder_is_never_moved(
    reviewed: Reviewed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, report_path, report = reviewed
    victim = make_victim(tmp_path)
    (dataset / "train" / "evil").symlink_to(victim / "sub", target_is_directory=True)
    report["problematic_images"]["bird"].insert(
        0, {**report["problematic_images"]["bird"][0], "path": "train/evil/v3.jpg"}
    )
    write_json(report_path, report)
    before = tree_snapshot(victim)
    code, _ = run_interactive(monkeypatch, report_path, ["d", "q", "y"])  # the first prompt is the honest bird
    assert code == 1  # done, one entry skipped
    captured = capsys.readouterr()
    assert "train/evil/v3.jpg leads outside" in captured.err and "never moved" in captured.err
    assert tree_snapshot(victim) == before
    assert not (dataset / report["problematic_images"]["bird"][1]["path"]).exists()  # the honest one was deleted


def test_a_class_folder_leading_outside_is_never_offered_as_a_relabel_target(
    reviewed: Reviewed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, report_path, report = reviewed
    victim = make_victim(tmp_path)
    (dataset / "train" / "evilclass").symlink_to(victim / "sub", target_is_directory=True)
    before = tree_snapshot(victim)
    code, _ = run_interactive(monkeypatch, report_path, ["r evilclass", "q"])
    assert code == 0
    assert "there is no class folder 'evilclass' to move it to" in capsys.readouterr().out  # refused at the prompt
    decisions = report_path.with_name(review.DECISIONS_FILE_NAME)
    assert not decisions.exists() or "evilclass" not in decisions.read_text(encoding="utf-8")
    assert tree_snapshot(victim) == before


def test_decisions_made_for_another_dataset_are_refused(
    reviewed: Reviewed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, _, report = reviewed
    other = make_dataset(tmp_path / "other", classes=CLASSES, train_per_class=1, val_per_class=0)
    image = report["problematic_images"]["bird"][0]["path"]
    before = tree_snapshot(dataset)
    path = decisions_file(tmp_path / "d.json", other, {image: {"action": "delete"}})
    assert apply(path, dataset, "--yes") == 2
    assert f"was made for the dataset {other.resolve()}, not {dataset}" in one_error_line(capsys)
    assert tree_snapshot(dataset) == before


def test_symlinked_trash_folder_is_refused(
    reviewed: Reviewed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, _, report = reviewed
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (dataset / ".trash").symlink_to(outside, target_is_directory=True)
    image = report["problematic_images"]["bird"][0]["path"]
    before = tree_snapshot(dataset)
    assert apply(decisions_file(tmp_path / "d.json", dataset, {image: {"action": "delete"}}), dataset, "--yes") == 2
    assert "symbolic link" in one_error_line(capsys)
    assert list(outside.iterdir()) == [] and tree_snapshot(dataset) == before


# --------------------------------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"schema_version": 1, "decisions": []}, "'decisions'"),
        ({"schema_version": 1, "decisions": {"IMAGE": 5}}, "is not an object"),
        ({"schema_version": 1, "decisions": {"IMAGE": {"action": "explode"}}}, "'action' 'explode'"),
        ({"schema_version": 1, "decisions": {"IMAGE": {"action": "relabel"}}}, "relabel without a 'target_class'"),
        ({"schema_version": 1, "decisions": {"IMAGE": {"action": "relabel", "target_class": 5}}}, "'target_class'"),
        ({"schema_version": 1, "dataset_dir": 5, "decisions": {}}, "'dataset_dir' is not a path"),
        ({"schema_version": 1, "decisions": {"IMAGE": {"action": "delete", "sha256": 7}}}, "'sha256'"),
        ({"schema_version": 1, "decisions": {"IMAGE": {"action": "delete", "applied": "yes"}}}, "'applied'"),
        ({"decisions": {}}, "'schema_version' is None"),
        ([1, 2], "not a JSON object"),
    ],
    ids=["list", "number", "unknown-action", "no-target", "number-target", "dir", "sha", "applied", "version", "array"],
)
def test_decisions_with_wrong_types_give_one_sentence_naming_the_field(
    reviewed: Reviewed, tmp_path: Path, capsys: pytest.CaptureFixture[str], data: Any, field: str
) -> None:
    dataset, _, report = reviewed
    image = report["problematic_images"]["bird"][0]["path"]
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps(data).replace("IMAGE", image), encoding="utf-8")
    before = tree_snapshot(dataset)
    assert apply(path, dataset, "--yes") == 2
    error = one_error_line(capsys)
    assert field in error and "Traceback" not in error
    assert tree_snapshot(dataset) == before


# --------------------------------------------------------------------------------------------------- --apply-decisions


def test_apply_decisions_moves_three_marked_images_and_undo_restores_the_tree(
    reviewed: Reviewed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, _, report = reviewed
    before = tree_snapshot(dataset)
    bird, plane, other = (report["problematic_images"][name][1]["path"] for name in ("bird", "plane", "other"))
    kept = report["problematic_images"]["bird"][0]["path"]
    decisions = {
        bird: {"action": "delete", "sha256": sha256_file(dataset / bird)},
        plane: {"action": "relabel", "target_class": "superman"},
        other: {"action": "delete"},
        kept: {"action": "keep"},
    }
    path = decisions_file(tmp_path / "exported.json", dataset, decisions)
    exported = path.read_bytes()
    assert apply(path, dataset, "--yes") == 0
    assert not (dataset / bird).exists() and not (dataset / plane).exists() and not (dataset / other).exists()
    relabelled = dataset / "train" / "superman" / PurePosixPath(plane).name
    assert relabelled.read_bytes() == before[plane]
    assert (dataset / kept).read_bytes() == before[kept]
    assert path.read_bytes() == exported  # the exported file is not rewritten
    [log] = trash_logs(dataset)
    assert f"--undo {log}" in capsys.readouterr().out

    assert review.main(["--undo", str(log)]) == 0
    after = tree_snapshot(dataset)
    assert {name: data for name, data in after.items() if not name.startswith(".trash/")} == before
    capsys.readouterr()
    assert review.main(["--undo", str(log)]) == 0  # again: says so, instead of "Restored 3 file(s)" a second time
    out = capsys.readouterr().out
    assert "nothing to restore: already undone" in out and "Restored" not in out and tree_snapshot(dataset) == after


def test_apply_decisions_asks_first_and_no_changes_nothing(
    reviewed: Reviewed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, _, report = reviewed
    image = report["problematic_images"]["plane"][0]["path"]
    before = tree_snapshot(dataset)
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("n\n"))
    assert apply(decisions_file(tmp_path / "d.json", dataset, {image: {"action": "delete"}}), dataset) == 0
    out = capsys.readouterr().out
    assert f"delete   {image} -> .trash/ (undoable)" in out and "Nothing changed on disk" in out
    assert tree_snapshot(dataset) == before and not (dataset / ".trash").exists()


def test_file_changed_since_the_decision_is_refused(
    reviewed: Reviewed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, _, report = reviewed
    changed, other = (report["problematic_images"]["bird"][index]["path"] for index in (0, 1))
    decisions = {
        other: {"action": "delete", "sha256": sha256_file(dataset / other)},
        changed: {"action": "delete", "sha256": sha256_file(dataset / changed)},
    }
    (dataset / changed).write_bytes((dataset / changed).read_bytes() + b"edited")
    before = tree_snapshot(dataset)
    assert apply(decisions_file(tmp_path / "d.json", dataset, decisions), dataset, "--yes") == 2
    assert f"{changed} changed since it was decided" in one_error_line(capsys)
    assert tree_snapshot(dataset) == before


# --------------------------------------------------------------------------------------------------- odd situations


def test_second_run_on_the_same_dataset_refuses_while_the_first_holds_the_lock(
    reviewed: Reviewed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, report_path, report = reviewed
    release = tmp_path / "release"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, pathlib, trash\n"
            f"with trash.lock({str(dataset)!r}, 'review_problematic_images.py'):\n"
            "    print('locked', flush=True)\n"
            f"    while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.05)\n",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        image = report["problematic_images"]["bird"][0]["path"]
        before = tree_snapshot(dataset)
        assert apply(decisions_file(tmp_path / "d.json", dataset, {image: {"action": "delete"}}), dataset, "--yes") == 2
        assert f"pid {holder.pid}" in one_error_line(capsys)
        code, unused = run_interactive(monkeypatch, report_path, ["d", "q", "y"])
        assert code == 2 and unused == ["d", "q", "y"]  # refused before the first question
        assert "is changing" in one_error_line(capsys)
        assert tree_snapshot(dataset) == before
    finally:
        release.touch()
        holder.wait(timeout=30)
    assert apply(tmp_path / "d.json", dataset, "--yes") == 0  # once the first run is over, it goes ahead


@pytest.mark.parametrize("how", ["apply-decisions", "interactive", "undo"])
@pytest.mark.parametrize("chmod", [True, False], ids=["chmod", "access-denied"])
def test_read_only_dataset_gives_one_sentence_before_any_work(
    reviewed: Reviewed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    how: str,
    chmod: bool,
) -> None:
    """chmod: a real read-only folder (root writes anyway, so skipped as root); access-denied: os.access says so."""
    if chmod and IS_ROOT:
        pytest.skip("root writes into read-only folders")
    dataset, report_path, report = reviewed
    image = report["problematic_images"]["bird"][0]["path"]
    path = decisions_file(tmp_path / "d.json", dataset, {image: {"action": "delete"}})
    log = dataset / ".trash" / "review_problematic_images_20260101T000000Z.json"
    if how == "undo":
        log.parent.mkdir()
        log.write_text("{}", encoding="utf-8")
    before = tree_snapshot(dataset)
    folders = [dataset, *(folder for folder in dataset.rglob("*") if folder.is_dir())]
    real_access, real_dataset = os.access, dataset.resolve()

    def access(target: Any, mode: int, **options: Any) -> bool:
        if mode & os.W_OK and Path(target).resolve().is_relative_to(real_dataset):
            return False
        return real_access(target, mode, **options)

    for folder in folders if chmod else []:
        folder.chmod(0o555)
    if not chmod:
        monkeypatch.setattr(os, "access", access)
    try:
        if how == "apply-decisions":
            code, unused = apply(path, dataset, "--yes"), []
        elif how == "undo":
            code, unused = review.main(["--undo", str(log)]), []
        else:
            code, unused = run_interactive(monkeypatch, report_path, ["d", "q", "y"])
        assert code == 2 and unused in ([], ["d", "q", "y"])
        error = one_error_line(capsys)
        assert f"{dataset} is read-only" in error and "nothing was changed" in error
    finally:
        for folder in folders if chmod else []:
            folder.chmod(0o755)
    assert tree_snapshot(dataset) == before


def test_non_utf8_file_name_is_reviewed_deleted_and_restored(
    reviewed: Reviewed, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path
) -> None:
    dataset, report_path, report = reviewed
    name = os.fsdecode(b"bad\xffname.jpg")
    save_image(make_class_image(0, 4242), dataset / "train" / "bird" / name)
    entry = {**report["problematic_images"]["bird"][0], "path": f"train/bird/{name}", "rank": 0}
    report["problematic_images"]["bird"].insert(0, entry)
    write_json(report_path, report)
    before = tree_snapshot(dataset / "train")

    assert review.main(["--report", str(report_path), "--mode", "summary"]) == 0
    assert review.main(["--report", str(report_path), "--class", "bird", "--save", str(tmp_path / "g.png")]) == 0
    out = capsysbinary.readouterr().out.decode("utf-8")  # valid UTF-8, the odd byte shown escaped
    assert "train/bird/bad\\xffname.jpg" in out

    code, _ = run_interactive(monkeypatch, report_path, ["d", "q", "y"])
    assert code == 0 and not (dataset / "train" / "bird" / name).exists()
    [log] = trash_logs(dataset)
    for written in (log, report_path.with_name(review.DECISIONS_FILE_NAME)):
        written.read_bytes().decode("utf-8")  # raises if the file is not valid UTF-8
    assert review.main(["--undo", str(log)]) == 0
    assert tree_snapshot(dataset / "train") == before


def test_undo_refuses_a_log_of_another_tool(reviewed: Reviewed, capsys: pytest.CaptureFixture[str]) -> None:
    dataset, _, report = reviewed
    image = report["problematic_images"]["bird"][0]["path"]
    with trash.lock(dataset, "remove_duplicates.py"):
        log = trash.new_log(dataset, "remove_duplicates", [trash.Move(image)])
        trash.apply(dataset, log)
    before = tree_snapshot(dataset)
    assert review.main(["--undo", str(log)]) == 2
    assert "was written by remove_duplicates; undo it with that tool" in one_error_line(capsys)
    assert tree_snapshot(dataset) == before


def test_save_into_an_unusable_place_is_one_sentence(
    reviewed: Reviewed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, report_path, _ = reviewed
    (tmp_path / "a_file").write_text("not a folder", encoding="utf-8")
    for mode in ("summary", "grid"):
        code = review.main(["--report", str(report_path), "--mode", mode, "--save", str(tmp_path / "a_file" / "x")])
        assert code == 2
        assert str(tmp_path / "a_file") in one_error_line(capsys)


def test_a_path_spelled_oddly_in_the_report_is_moved_marked_and_restored(
    reviewed: Reviewed, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, report_path, report = reviewed
    entry = report["problematic_images"]["bird"][0]
    odd = entry["path"].replace("train/bird/", "train//bird/./")
    entry["path"] = odd
    write_json(report_path, report)
    before = tree_snapshot(dataset / "train")
    code, _ = run_interactive(monkeypatch, report_path, ["d", "q", "y"])
    assert code == 0 and not (dataset / odd).exists()
    decisions = json.loads(report_path.with_name(review.DECISIONS_FILE_NAME).read_text(encoding="utf-8"))["decisions"]
    assert decisions[odd]["applied"] is True
    assert review.main(["--undo", str(trash_logs(dataset)[0])]) == 0
    assert tree_snapshot(dataset / "train") == before
    assert (
        odd
        not in json.loads(report_path.with_name(review.DECISIONS_FILE_NAME).read_text(encoding="utf-8"))["decisions"]
    )


def test_undo_refuses_a_log_whose_dataset_dir_is_another_folder(
    reviewed: Reviewed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, report_path, _ = reviewed
    victim = make_victim(tmp_path)
    assert run_interactive(monkeypatch, report_path, ["d", "q", "y"])[0] == 0
    [log] = trash_logs(dataset)
    data = json.loads(log.read_text(encoding="utf-8"))
    data["dataset_dir"] = str(victim.resolve())  # a log never chooses the folder it works on
    log.write_text(json.dumps(data), encoding="utf-8")
    before, victim_before = tree_snapshot(dataset), tree_snapshot(victim)
    assert review.main(["--undo", str(log)]) == 2
    assert f"was written for {victim.resolve()}" in one_error_line(capsys)
    assert tree_snapshot(dataset) == before and tree_snapshot(victim) == victim_before


# --------------------------------------------------------------------------------------------------- races (issue 17)


def test_a_class_folder_swapped_for_a_link_to_outside_while_applying_and_undoing_moves_nothing_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread exchanges train/bird with a symlink to outside thousands of times while the files move and come back."""
    dataset, outside = tmp_path / "dataset", tmp_path / "outside"
    names = [f"img{number:03d}.jpg" for number in range(80)]
    for name in names:  # the same names outside: a redirected rename would find a file to move
        for folder, text in ((dataset / "train/bird", "dataset"), (outside, "outside")):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(f"{text} {name}".encode() * 20)
    (dataset / "train/plane").mkdir()
    os.symlink(outside, dataset / "train/evil")
    before_outside, before_dataset = tree_snapshot(outside), tree_snapshot(dataset)
    decisions = {f"train/bird/{name}": {"action": "delete"} for name in names[::2]}
    decisions |= {f"train/bird/{name}": {"action": "relabel", "target_class": "plane"} for name in names[1::2]}
    path = decisions_file(tmp_path / "decisions.json", dataset, decisions)
    swaps = race_every_move(monkeypatch, dataset / "train/bird", dataset / "train/evil")
    assert apply(path, dataset, "--yes") in (0, 1)  # 1: some moves refused because the folder was a link just then
    [log] = trash_logs(dataset)
    assert review.main(["--undo", str(log)]) in (0, 1)
    assert tree_snapshot(outside) == before_outside and sorted(os.listdir(outside)) == names
    monkeypatch.undo()  # no race now: whatever the race made undo refuse comes back
    review.main(["--undo", str(log)])
    assert {name: data for name, data in tree_snapshot(dataset).items() if not name.startswith(".trash/")} == (
        before_dataset
    )
    assert sum(swaps) >= 10, swaps  # the race really ran


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("pipeline_state.json", "is not in a class folder of train/ or val/"),
        ("train/notes.txt", "is not in a class folder of train/ or val/"),
        ("models/best_model.pth", "is not in a class folder of train/ or val/"),
        ("train/bird/readme.txt", "is not an image"),
    ],
)
def test_a_decision_only_moves_images_of_the_class_folders(
    reviewed: Reviewed, tmp_path: Path, capsys: pytest.CaptureFixture[str], path: str, expected: str
) -> None:
    dataset, _, _ = reviewed
    (dataset / path).parent.mkdir(parents=True, exist_ok=True)
    (dataset / path).write_text('{"stages": {}}')
    before = tree_snapshot(dataset)
    decisions = decisions_file(tmp_path / "d.json", dataset, {path: {"action": "delete"}})
    assert apply(decisions, dataset, "--yes") == 2
    error = one_error_line(capsys)
    assert f"{path} {expected}" in error and "nothing was moved" in error
    assert tree_snapshot(dataset) == before
