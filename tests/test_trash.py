"""Tests of trash.py: the one trash-and-undo (lock, log, apply, undo) and every attack on it from BAD_INPUTS 18-25."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _race_helpers import FolderSwapper, race_every_move
from conftest import IS_ROOT, ROOT, tree_snapshot

import fileio
import trash


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "dataset"
    for name in ("train/bird/a.jpg", "train/bird/b.jpg", "train/plane/c.jpg", "val/bird/d.jpg"):
        write(root / name, f"image {name}".encode() * 50)
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the dataset holding a file an attacker wants moved, deleted or overwritten."""
    folder = tmp_path / "outside"
    write(folder / "precious.jpg", b"precious bytes")
    write(folder / "sub/v3.jpg", b"victim three")
    return folder


def run(dataset: Path, moves: list[trash.Move], extra: dict | None = None) -> tuple[Path, trash.Result]:
    with trash.lock(dataset, "test_tool.py"):
        log_path = trash.new_log(dataset, "test_tool", moves, extra)
        return log_path, trash.apply(dataset, log_path)


def undo(dataset: Path, log_path: Path) -> trash.Result:
    with trash.lock(dataset, "test_tool.py"):
        return trash.undo(dataset, log_path)


def load(path: Path) -> dict:
    return json.loads(path.read_bytes().decode("utf-8"))  # strict UTF-8: the log stays valid UTF-8


def without_trash(snapshot: dict[str, bytes]) -> dict[str, bytes]:
    return {path: data for path, data in snapshot.items() if not path.startswith(".trash/")}


def craft(dataset: Path, log_path: Path, **changes) -> None:
    """Rewrite one move of a log as an attacker would (its sha256 stays a valid one of a real file)."""
    data = load(log_path)
    data["moves"][0].update(changes)
    fileio.write_json(log_path, data)


# ---------------------------------------------------------------------------------------------------------------------
# The normal path


def test_apply_then_undo_restores_every_file_byte_for_byte(dataset: Path) -> None:
    before = tree_snapshot(dataset)
    moves = [trash.Move("train/bird/b.jpg", kept=("train/bird/a.jpg",), note="copy of a"),
             trash.Move("val/bird/d.jpg", "val/plane/d.jpg", "relabel")]  # fmt: skip
    (dataset / "val/plane").mkdir()
    log_path, result = run(dataset, moves, {"strategy": "all"})
    assert result.errors == [] and result.done == ["train/bird/b.jpg", "val/bird/d.jpg"]
    assert log_path.parent == dataset / ".trash" and log_path.name.startswith("test_tool_")
    log = load(log_path)
    run_id = log["run_id"]
    assert run_id == log_path.stem and log["extra"] == {"strategy": "all"} and log["dataset_dir"] == str(dataset)
    assert [m["status"] for m in log["moves"]] == ["done", "done"]
    assert log["moves"][0]["destination"] == f".trash/{run_id}/train/bird/b.jpg"
    assert [m["size"] for m in log["moves"]] == [len(before["train/bird/b.jpg"]), len(before["val/bird/d.jpg"])]
    assert log["moves"][0]["sha256"] == fileio.sha256_file(dataset / ".trash" / run_id / "train/bird/b.jpg")
    assert (dataset / ".trash" / run_id / "train/bird/b.jpg").read_bytes() == before["train/bird/b.jpg"]
    assert (dataset / "val/plane/d.jpg").is_file() and not (dataset / "val/bird/d.jpg").exists()
    assert not (dataset / ".trash/.lock").exists()  # released

    result = undo(dataset, log_path)
    assert result.errors == [] and sorted(result.done) == ["train/bird/b.jpg", "val/bird/d.jpg"]
    assert without_trash(tree_snapshot(dataset)) == before
    assert not (dataset / ".trash" / run_id).exists()  # the empty folders the run made are gone
    log = load(log_path)
    assert log["undone"] and [m["status"] for m in log["moves"]] == ["undone", "undone"]


def test_log_names_and_run_ids_never_collide(dataset: Path) -> None:
    with trash.lock(dataset, "t"):
        paths = [trash.new_log(dataset, "t", [trash.Move("train/bird/a.jpg")]) for _ in range(3)]
    assert len({path.name for path in paths}) == 3 and len({load(path)["run_id"] for path in paths}) == 3
    destinations = {load(path)["moves"][0]["destination"] for path in paths}
    assert len(destinations) == 3


def log_field_at_each_rename(dataset: Path, monkeypatch: pytest.MonkeyPatch, key: str) -> list[list[Any]]:
    """Trash two files; for each os.rename, ``key`` of every move as the log on disk says just before it."""
    seen, real_rename = [], os.rename

    def rename(source, destination, **options):
        (log_path,) = (dataset / ".trash").glob("*.json")
        seen.append([move[key] for move in load(log_path)["moves"]])
        real_rename(source, destination, **options)

    monkeypatch.setattr(os, "rename", rename)
    run(dataset, [trash.Move("train/bird/a.jpg"), trash.Move("train/bird/b.jpg")])
    return seen


def test_log_is_written_before_any_file_moves(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = log_field_at_each_rename(dataset, monkeypatch, "sha256")
    assert len(seen) == 2 and all(len(digest) == 64 for digest in seen[0])


def test_statuses_follow_each_move_when_the_interval_is_zero(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trash, "LOG_WRITE_INTERVAL_S", 0.0)
    statuses = log_field_at_each_rename(dataset, monkeypatch, "status")
    assert statuses == [["planned", "planned"], ["done", "planned"]]


def test_delete_is_logged_and_undo_says_it_cannot_come_back(dataset: Path) -> None:
    log_path, result = run(dataset, [trash.Move("train/bird/b.jpg", "", "delete", kept=("train/bird/a.jpg",))])
    assert result.done == ["train/bird/b.jpg"] and not (dataset / "train/bird/b.jpg").exists()
    assert load(log_path)["moves"][0]["status"] == "done"
    result = undo(dataset, log_path)
    assert result.errors == [("train/bird/b.jpg", "was deleted for good (delete): it cannot be restored")]


def test_a_relabel_needs_an_existing_class_folder(dataset: Path) -> None:
    log_path, result = run(dataset, [trash.Move("train/bird/a.jpg", "train/nonexistent/a.jpg", "relabel")])
    assert result.errors == [("train/bird/a.jpg", "the folder of train/nonexistent/a.jpg does not exist")]
    assert (dataset / "train/bird/a.jpg").is_file() and not (dataset / "train/nonexistent").exists()


def test_a_non_utf8_file_name_round_trips(dataset: Path) -> None:
    name = os.fsdecode(b"train/bird/bad\xffname.jpg")
    write(dataset / name, b"odd name")
    log_path, result = run(dataset, [trash.Move(name)])
    assert result.done == [name] and not (dataset / name).exists()
    assert load(log_path)["moves"][0]["source"] == name  # valid UTF-8 on disk, the same bytes back
    assert undo(dataset, log_path).errors == [] and (dataset / name).read_bytes() == b"odd name"


def test_a_fifo_is_refused_and_never_opened(dataset: Path) -> None:
    os.mkfifo(dataset / "train/bird/pipe.jpg")
    _, result = run(dataset, [trash.Move("train/bird/pipe.jpg")])
    assert result.errors == [("train/bird/pipe.jpg", "is a named pipe (FIFO), not a file")]


def test_new_log_apply_and_undo_need_the_lock(dataset: Path) -> None:
    with pytest.raises(RuntimeError):
        trash.new_log(dataset, "t", [trash.Move("train/bird/a.jpg")])
    assert (dataset / "train/bird/a.jpg").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# The lock (BAD_INPUTS 25)


def test_a_held_lock_refuses_a_second_run_with_a_sentence(dataset: Path) -> None:
    with trash.lock(dataset, "remove_duplicates.py"):
        with pytest.raises(trash.TrashError) as info, trash.lock(dataset, "review_problematic_images.py"):
            pass
        message = str(info.value)
        assert f"another run (remove_duplicates.py, pid {os.getpid()}" in message
        assert f"is changing {dataset}; wait for it or remove {dataset}/.trash/.lock if it is not running" in message
        assert (dataset / ".trash/.lock").exists()  # the refused run did not remove the holder's lock
    assert not (dataset / ".trash").exists()  # created for the lock, empty again: removed


def test_a_stale_lock_of_a_dead_process_is_taken_over(dataset: Path) -> None:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(process.stdout)
    write(dataset / ".trash/.lock", json.dumps({"pid": dead_pid, "host": socket.gethostname(), "tool": "x"}).encode())
    with trash.lock(dataset, "test_tool.py") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists() and not list((dataset / ".trash").glob(".lock*"))


def test_a_lock_of_another_host_is_not_taken_over(dataset: Path) -> None:
    write(dataset / ".trash/.lock", json.dumps({"pid": 1, "host": "elsewhere", "tool": "x.py"}).encode())
    with pytest.raises(trash.TrashError, match="pid 1 on elsewhere"), trash.lock(dataset, "t"):
        pass


def test_a_killed_run_never_leaves_the_lock_stuck(dataset: Path) -> None:
    code = (
        f"import sys, os; sys.path.insert(0, {str(ROOT)!r}); import trash\n"
        f"with trash.lock({str(dataset)!r}, 'killed.py'):\n    os.kill(os.getpid(), 9)\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    assert (dataset / ".trash/.lock").exists()
    with trash.lock(dataset, "next.py"):
        pass


@pytest.mark.parametrize("kind", ["fifo", "link to a fifo outside", "link to /dev/zero"])
def test_a_lock_that_is_not_a_regular_file_refuses_without_hanging(dataset: Path, outside: Path, kind: str) -> None:
    lock_path = dataset / ".trash/.lock"
    lock_path.parent.mkdir()
    if kind == "fifo":
        os.mkfifo(lock_path)
    elif kind == "link to a fifo outside":
        os.mkfifo(outside / "pipe")
        lock_path.symlink_to(outside / "pipe")
    else:
        lock_path.symlink_to("/dev/zero")
    before = tree_snapshot(outside)
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); import trash\n"
        f"try:\n    with trash.lock({str(dataset)!r}, 't'):\n        print('ran')\n"
        "except trash.TrashError as error:\n    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "its lock file is being written or is damaged" in result.stdout
    assert os.path.lexists(lock_path)  # not its own lock: left for the person (taken over only once stale)
    assert tree_snapshot(outside) == before


def test_two_threads_at_once_one_runs_one_refuses(dataset: Path) -> None:
    barrier, outcomes = threading.Barrier(2), []

    def attempt(source: str) -> None:
        barrier.wait()
        try:
            with trash.lock(dataset, "t"):
                log_path = trash.new_log(dataset, "t", [trash.Move(source)])
                barrier_done.wait(timeout=5)
                outcomes.append(("ran", trash.apply(dataset, log_path)))
        except trash.TrashError as error:
            barrier_done.wait(timeout=5)
            outcomes.append(("refused", str(error)))

    barrier_done = threading.Barrier(2)
    threads = [threading.Thread(target=attempt, args=(s,)) for s in ("train/bird/a.jpg", "train/bird/b.jpg")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(kind for kind, _ in outcomes) == ["ran", "refused"]
    assert len(list((dataset / ".trash").glob("*.json"))) == 1


# ---------------------------------------------------------------------------------------------------------------------
# Escapes (BAD_INPUTS 18, 19)


def test_a_symlinked_folder_pointing_outside_is_never_followed(dataset: Path, outside: Path) -> None:
    os.symlink(outside, dataset / "train/evil")
    before = tree_snapshot(outside)
    for action in ("trash", "delete"):
        log_path, result = run(dataset, [trash.Move("train/evil/precious.jpg", "", action)])
        assert result.errors == [("train/evil/precious.jpg", "leads outside the dataset through a symlinked folder")]
        # a crafted log that says the move is planned, with the file's real hash, is refused too
        with trash.lock(dataset, "t"):
            craft(dataset, log_path, status="planned", reason=None, sha256=fileio.sha256_file(outside / "precious.jpg"))
            result = trash.apply(dataset, log_path)
        assert result.errors == [("train/evil/precious.jpg", "leads outside the dataset through a symlinked folder")]
    assert tree_snapshot(outside) == before


def test_a_symlinked_file_is_refused(dataset: Path, outside: Path) -> None:
    os.symlink(outside / "precious.jpg", dataset / "train/bird/link.jpg")
    _, result = run(dataset, [trash.Move("train/bird/link.jpg", "", "delete")])
    assert result.errors == [("train/bird/link.jpg", "is a symbolic link")]
    assert (dataset / "train/bird/link.jpg").is_symlink() and (
        outside / "precious.jpg"
    ).read_bytes() == b"precious bytes"


def test_a_symlinked_trash_is_refused_for_the_whole_run(dataset: Path, outside: Path) -> None:
    os.symlink(outside, dataset / ".trash")
    before = tree_snapshot(outside)
    message = "is a symbolic link: files are never moved through it"
    with pytest.raises(trash.TrashError, match=message), trash.lock(dataset, "t"):
        pass
    assert tree_snapshot(outside) == before and sorted(os.listdir(outside)) == ["precious.jpg", "sub"]


def test_a_symlinked_run_folder_inside_the_trash_is_refused(dataset: Path, outside: Path) -> None:
    with trash.lock(dataset, "t"):
        log_path = trash.new_log(dataset, "t", [trash.Move("train/bird/a.jpg")])
        os.symlink(outside, dataset / ".trash" / log_path.stem)  # planted between plan and apply
        result = trash.apply(dataset, log_path)
    assert result.errors == [("train/bird/a.jpg", "leads outside the dataset through a symlinked folder")]
    assert (dataset / "train/bird/a.jpg").is_file() and sorted(os.listdir(outside)) == ["precious.jpg", "sub"]


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"source": "/etc/passwd"}, "source '/etc/passwd' is not a relative path inside the dataset"),
        ({"source": "../outside/precious.jpg"}, "is not a relative path inside the dataset"),
        ({"destination": "/tmp/x.jpg"}, "destination '/tmp/x.jpg' is not a relative path inside the dataset"),
        ({"destination": ".trash/../../outside/new.jpg"}, "is not a relative path inside the dataset"),
        ({"destination": "train/bird/z.jpg"}, "a trash destination must lie inside .trash/"),
        ({"destination": ".trash/.lock"}, "must lie in a run folder inside .trash/"),
        ({"source": ".trash/other_run/x.jpg"}, "the source lies in the trash folder"),
        ({"action": "relabel", "destination": ".trash/r/a.jpg"}, "a relabel destination must lie outside .trash/"),
    ],
)
def test_crafted_moves_are_refused_by_path_with_a_reason(
    dataset: Path, outside: Path, changes: dict, reason: str
) -> None:
    before, outside_before = tree_snapshot(dataset), tree_snapshot(outside)
    with trash.lock(dataset, "t"):
        log_path = trash.new_log(dataset, "t", [trash.Move("train/bird/a.jpg"), trash.Move("train/bird/b.jpg")])
        craft(dataset, log_path, **changes)
        result = trash.apply(dataset, log_path)
        assert len(result.errors) == 1 and reason in result.errors[0][1]
        assert result.done == ["train/bird/b.jpg"]  # the rest of the run goes on
        craft(dataset, log_path, status="done")  # and a log crafted after the run: undo refuses it too
        undone = trash.undo(dataset, log_path)
    assert undone.done == ["train/bird/b.jpg"] and len(undone.errors) == 1 and reason in undone.errors[0][1]
    assert without_trash(tree_snapshot(dataset)) == before and tree_snapshot(outside) == outside_before
    assert sorted(os.listdir(outside)) == ["precious.jpg", "sub"]


def test_undo_never_restores_through_a_symlinked_folder(dataset: Path, outside: Path) -> None:
    log_path, _ = run(dataset, [trash.Move("train/bird/a.jpg")])
    os.rename(dataset / "train/bird", dataset / "train/bird_moved")
    os.symlink(outside / "sub", dataset / "train/bird")  # the source folder now leads outside
    result = undo(dataset, log_path)
    assert result.errors == [("train/bird/a.jpg", "leads outside the dataset through a symlinked folder")]
    assert sorted(os.listdir(outside / "sub")) == ["v3.jpg"]


def test_undo_never_pulls_in_an_outside_file_through_a_symlink_in_the_trash(dataset: Path, outside: Path) -> None:
    log_path, _ = run(dataset, [trash.Move("train/bird/a.jpg")])
    trashed = dataset / load(log_path)["moves"][0]["destination"]
    trashed.unlink()
    os.symlink(outside / "precious.jpg", trashed)
    result = undo(dataset, log_path)
    assert result.errors == [
        ("train/bird/a.jpg", f"{trashed.relative_to(dataset)} is a symbolic link; left where it is")
    ]
    assert (outside / "precious.jpg").read_bytes() == b"precious bytes" and not (dataset / "train/bird/a.jpg").exists()


def test_undo_with_a_crafted_path_that_would_create_a_file_outside(dataset: Path, outside: Path) -> None:
    os.symlink(outside / "sub", dataset / "train/evil")
    log_path, _ = run(dataset, [trash.Move("train/bird/a.jpg")])
    craft(dataset, log_path, source="train/evil/new.jpg")  # restoring would create outside/sub/new.jpg
    result = undo(dataset, log_path)
    assert result.errors == [("train/evil/new.jpg", "leads outside the dataset through a symlinked folder")]
    assert sorted(os.listdir(outside / "sub")) == ["v3.jpg"]


def test_a_log_never_chooses_the_folder(dataset: Path, tmp_path: Path, outside: Path) -> None:
    log_path, _ = run(dataset, [trash.Move("train/bird/a.jpg")])
    craft(dataset, log_path)
    data = load(log_path)
    fileio.write_json(log_path, dict(data, dataset_dir=str(outside)))
    with pytest.raises(trash.TrashError, match=f"was written for {outside}, not {dataset}: a log never chooses"):
        undo(dataset, log_path)
    fileio.write_json(log_path, data)
    elsewhere = tmp_path / "copy_of_log.json"
    fileio.write_json(elsewhere, data)
    with pytest.raises(trash.TrashError, match="does not lie in .*a trash log is only used from the trash folder"):
        undo(dataset, elsewhere)
    assert trash.dataset_of_log(log_path) == dataset
    assert undo(dataset, log_path).errors == []


# ---------------------------------------------------------------------------------------------------------------------
# Checks right before each operation


def test_a_file_changed_since_the_plan_is_refused(dataset: Path) -> None:
    with trash.lock(dataset, "t"):
        log_path = trash.new_log(dataset, "t", [trash.Move("train/bird/a.jpg")])
        write(dataset / "train/bird/a.jpg", b"changed")
        result = trash.apply(dataset, log_path)
    assert result.errors == [("train/bird/a.jpg", "changed since the log was written (its SHA-256 differs)")]
    assert (dataset / "train/bird/a.jpg").read_bytes() == b"changed"


def test_nothing_is_ever_overwritten(dataset: Path) -> None:
    with trash.lock(dataset, "t"):
        log_path = trash.new_log(dataset, "t", [trash.Move("train/bird/a.jpg", "train/plane/c.jpg", "relabel")])
        result = trash.apply(dataset, log_path)
    assert result.errors == [("train/bird/a.jpg", "train/plane/c.jpg already exists: nothing is ever overwritten")]
    log_path, _ = run(dataset, [trash.Move("train/bird/b.jpg")])
    write(dataset / "train/bird/b.jpg", b"a new file at the old place")
    result = undo(dataset, log_path)
    assert "a file is already at train/bird/b.jpg" in result.errors[0][1]
    assert (dataset / "train/bird/b.jpg").read_bytes() == b"a new file at the old place"


def test_the_last_copy_is_never_removed(dataset: Path) -> None:
    os.symlink("bird", dataset / "train/alias")
    with trash.lock(dataset, "t"):
        moves = [trash.Move("train/bird/a.jpg", kept=("train/alias/a.jpg",)),  # the same file, another spelling
                 trash.Move("train/bird/b.jpg", kept=("train/bird/gone.jpg",))]  # fmt: skip
        result = trash.apply(dataset, trash.new_log(dataset, "t", moves))
    assert result.errors == [
        ("train/bird/a.jpg", "it is its kept copy train/alias/a.jpg on disk: not removing the last copy"),
        ("train/bird/b.jpg", "its kept copy train/bird/gone.jpg is gone: not removing the last copy"),
    ]
    assert (dataset / "train/bird/a.jpg").is_file() and (dataset / "train/bird/b.jpg").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# Kills and re-runs


def test_a_kill_9_during_apply_leaves_a_log_that_undo_completes(dataset: Path) -> None:
    before = tree_snapshot(dataset)
    code = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
import trash
dataset = {str(dataset)!r}
real_rename, count = os.rename, [0]
def rename(a, b, **options):
    count[0] += 1
    if count[0] == 3:
        os.kill(os.getpid(), 9)
    real_rename(a, b, **options)
os.rename = rename
moves = [trash.Move(p) for p in ("train/bird/a.jpg", "train/bird/b.jpg", "train/plane/c.jpg", "val/bird/d.jpg")]
with trash.lock(dataset, "killed.py"):
    trash.apply(dataset, trash.new_log(dataset, "killed", moves))
"""
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    (log_path,) = (dataset / ".trash").glob("*.json")
    assert [m["status"] for m in load(log_path)["moves"]] == ["planned"] * 4  # killed within the write interval
    assert not (dataset / "train/bird/a.jpg").exists()
    result = undo(dataset, log_path)
    assert result.errors == [] and without_trash(tree_snapshot(dataset)) == before
    again = undo(dataset, log_path)  # a re-run: quiet, every file counts as back
    assert again.errors == [] and len(again.done) == 4


def test_rerunning_undo_after_a_killed_undo_reports_no_false_warnings(dataset: Path) -> None:
    before = tree_snapshot(dataset)
    log_path, _ = run(dataset, [trash.Move(p) for p in ("train/bird/a.jpg", "train/bird/b.jpg", "val/bird/d.jpg")])
    data = load(log_path)
    os.rename(dataset / data["moves"][2]["destination"], dataset / "val/bird/d.jpg")  # what the killed undo did first
    result = undo(dataset, log_path)
    assert result.errors == [] and len(result.done) == 3
    assert without_trash(tree_snapshot(dataset)) == before


def test_a_changed_file_in_the_trash_is_left_there(dataset: Path) -> None:
    log_path, _ = run(dataset, [trash.Move("train/bird/a.jpg")])
    trashed = dataset / load(log_path)["moves"][0]["destination"]
    write(trashed, b"tampered")
    result = undo(dataset, log_path)
    assert "changed since the log was written" in result.errors[0][1]
    assert trashed.read_bytes() == b"tampered" and not (dataset / "train/bird/a.jpg").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Logs with the right keys and wrong values (BAD_INPUTS 20)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("tool", 3, "field 'tool' must be text (it is 3)"),
        ("dataset_dir", None, "field 'dataset_dir' must be text (it is null)"),
        ("run_id", "../x", "field 'run_id' must be a plain name"),
        ("moves", {}, "field 'moves' must be a list (it is dict)"),
        ("extra", [], "field 'extra' must be an object (it is list)"),
        ("undone", 5, "field 'undone' must be null or a time (it is 5)"),
        ("moves[0].source", 7, "field 'moves[0].source' must be text (it is 7)"),
        ("moves[0].size", "abc", "field 'moves[0].size' must be a whole number of bytes or null (it is 'abc')"),
        ("moves[0].sha256", "zz", "field 'moves[0].sha256' must be 64 hexadecimal digits"),
        ("moves[0].action", "shred", "field 'moves[0].action' must be one of trash, relabel, delete"),
        ("moves[0].status", None, "field 'moves[0].status' must be one of planned, done, refused, undone"),
        ("moves[0].kept", "a.jpg", "field 'moves[0].kept' must be a list of paths"),
        ("moves[0]", [], "field 'moves[0]' must be an object (it is list)"),
    ],
)
def test_wrong_types_in_a_log_are_one_sentence_naming_the_field(
    dataset: Path, field: str, value: object, words: str
) -> None:
    log_path, _ = run(dataset, [trash.Move("train/bird/a.jpg")])
    data = load(log_path)
    if field.startswith("moves[0]."):
        data["moves"][0][field.split(".", 1)[1]] = value
    elif field == "moves[0]":
        data["moves"][0] = value
    else:
        data[field] = value
    fileio.write_json(log_path, data)
    before = tree_snapshot(dataset)
    with pytest.raises(trash.TrashError) as info:
        undo(dataset, log_path)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert tree_snapshot(dataset) == before


def test_an_old_deletion_log_is_refused_with_a_sentence_naming_its_format(dataset: Path) -> None:
    old = {"schema_version": 1, "kind": "deletion_log", "trash_dir": ".trash/20261201_101500", "entries": []}
    write(dataset / "deletion_log_20261201_101500.json", json.dumps(old).encode())  # where the old script wrote it
    with pytest.raises(trash.TrashError, match="old remove_duplicates.py format .kind 'deletion_log'.*by hand"):
        trash.load_log(dataset, dataset / "deletion_log_20261201_101500.json")


@pytest.mark.skipif(IS_ROOT, reason="root may write into a read-only folder")
def test_a_read_only_dataset_gives_one_sentence(dataset: Path) -> None:
    os.chmod(dataset, 0o555)
    try:
        if os.access(dataset, os.W_OK):
            pytest.skip("chmod does not deny writes here")
        with pytest.raises(trash.TrashError, match="cannot create .*\\.trash"), trash.lock(dataset, "t"):
            pass
    finally:
        os.chmod(dataset, 0o755)


def test_a_file_missing_from_the_trash_is_reported(dataset: Path) -> None:
    log_path, _ = run(dataset, [trash.Move("train/bird/a.jpg"), trash.Move("train/bird/b.jpg")])
    destination = load(log_path)["moves"][0]["destination"]
    (dataset / destination).unlink()  # someone emptied part of the trash
    result = undo(dataset, log_path)
    assert result.errors == [("train/bird/a.jpg", f"not found in the trash {destination}, and not back in place")]
    assert result.done == ["train/bird/b.jpg"] and (dataset / "train/bird/b.jpg").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# A folder swapped for a symlink while files move (issue 17 item 2, BAD_INPUTS 27)


def test_a_folder_swapped_for_a_link_to_outside_during_apply_and_undo_moves_nothing_outside(tmp_path: Path) -> None:
    dataset, outside = tmp_path / "dataset", tmp_path / "outside"
    names = [f"img{number:03d}.jpg" for number in range(120)]
    for name in names:  # the same names on both sides: a redirected rename would find its file
        write(dataset / "train/bird" / name, f"dataset {name}".encode() * 20)
        write(outside / name, f"outside {name}".encode() * 20)
    os.symlink(outside, dataset / "train/evil")
    before_outside, before_dataset = tree_snapshot(outside), tree_snapshot(dataset)
    swaps = 0
    for round_number in range(3):
        with FolderSwapper(dataset / "train/bird", dataset / "train/evil") as swapper:
            log_path, _ = run(dataset, [trash.Move(f"train/bird/{name}") for name in names])
            undo(dataset, log_path)
        swaps += swapper.swaps
        assert tree_snapshot(outside) == before_outside, f"round {round_number}"
        undo(dataset, log_path)  # no race now: whatever the race made it refuse comes back
        assert without_trash(tree_snapshot(dataset)) == before_dataset
    assert swaps >= 10  # the race really ran


def test_remove_duplicates_through_a_swapping_class_folder_moves_nothing_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import detect_duplicates_by_filesize as by_filesize
    import remove_duplicates as rd
    from conftest import make_dataset

    dataset, outside = make_dataset(tmp_path / "dataset", ("bird", "plane"), 1, 1), tmp_path / "outside"
    image = (dataset / "train/bird/bird_000.jpg").read_bytes()
    names = [f"copy_{number:03d}.jpg" for number in range(40)]
    for name in names:
        write(dataset / "train/bird" / name, image)
        write(outside / name, b"outside " + name.encode())
    assert by_filesize.main(["--dataset-dir", str(dataset)]) == 0
    os.symlink(outside, dataset / "train/evil")
    before_outside, before_dataset = tree_snapshot(outside), tree_snapshot(dataset)
    report = str(dataset / "duplicate_report_filesize.json")
    swaps = race_every_move(monkeypatch, dataset / "train/bird", dataset / "train/evil")
    assert rd.main(["--report", report, "--strategy", "all", "--apply", "--yes"]) in (0, 1)
    (log_path,) = (dataset / ".trash").glob("remove_duplicates_*.json")
    assert rd.main(["--undo", str(log_path)]) in (0, 1)
    assert tree_snapshot(outside) == before_outside and sorted(os.listdir(outside)) == names
    monkeypatch.undo()
    rd.main(["--undo", str(log_path)])
    assert without_trash(tree_snapshot(dataset)) == before_dataset and sum(swaps) >= 10


def test_a_kill_9_while_hashing_leaves_an_empty_log_that_undo_explains(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import remove_duplicates as rd

    before = tree_snapshot(dataset)
    code = f"""
import hashlib, os, sys
sys.path.insert(0, {str(ROOT)!r})
import trash
real_digest, count = hashlib.file_digest, [0]
def digest(*args, **options):
    count[0] += 1
    if count[0] == 2:
        os.kill(os.getpid(), 9)
    return real_digest(*args, **options)
hashlib.file_digest = digest
with trash.lock({str(dataset)!r}, "remove_duplicates.py"):
    trash.new_log({str(dataset)!r}, "remove_duplicates", [trash.Move(f"train/bird/{{n}}.jpg") for n in "ab"])
"""
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    (log_path,) = (dataset / ".trash").glob("*.json")
    assert log_path.stat().st_size == 0
    assert rd.main(["--undo", str(log_path)]) == 2
    err = capsys.readouterr().err
    assert "nothing was moved by that run" in err and len(err.splitlines()) == 1
    assert without_trash(tree_snapshot(dataset)) == before


def test_remove_duplicates_undo_of_an_undone_log_says_already_undone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import detect_duplicates_by_filesize as by_filesize
    import remove_duplicates as rd
    from conftest import make_dataset

    dataset = make_dataset(tmp_path / "dataset", ("bird", "plane"), 2, 1)
    write(dataset / "train/bird/copy.jpg", (dataset / "train/bird/bird_000.jpg").read_bytes())
    assert by_filesize.main(["--dataset-dir", str(dataset)]) == 0
    before = tree_snapshot(dataset)
    report = str(dataset / "duplicate_report_filesize.json")
    assert rd.main(["--report", report, "--strategy", "all", "--apply", "--yes"]) == 0
    (log_path,) = (dataset / ".trash").glob("remove_duplicates_*.json")
    assert rd.main(["--undo", str(log_path)]) == 0 and "Restored 1 files" in capsys.readouterr().out
    assert rd.main(["--undo", str(log_path)]) == 0
    out = capsys.readouterr().out
    assert "nothing to restore: already undone" in out and "Restored" not in out
    assert without_trash(tree_snapshot(dataset)) == before


def test_a_trash_folder_swapped_for_a_link_to_outside_during_apply_and_undo_receives_nothing_outside(
    dataset: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trash, "LOG_WRITE_INTERVAL_S", 0.0)  # a log write after every move: many chances to escape
    names = [f"img{number:03d}.jpg" for number in range(60)]
    for name in names:
        write(dataset / "train/bird" / name, f"dataset {name}".encode() * 20)
    before_outside, before_dataset = tree_snapshot(outside), tree_snapshot(dataset)
    os.symlink(outside, dataset / "evil_trash")
    swaps = 0
    with trash.lock(dataset, "t.py"):
        log_path = trash.new_log(dataset, "t", [trash.Move(f"train/bird/{name}") for name in names])
        for step in (trash.apply, trash.undo):
            for _ in range(20):  # until one starts while .trash is the real folder (else: "is a symbolic link")
                swapper = FolderSwapper(dataset / ".trash", dataset / "evil_trash")
                with swapper, contextlib.suppress(trash.TrashError):
                    step(dataset, log_path)
                    break
                swaps += swapper.swaps
            swaps += swapper.swaps
            assert tree_snapshot(outside) == before_outside and sorted(os.listdir(outside)) == ["precious.jpg", "sub"]
        trash.undo(dataset, log_path)  # no race now
    assert without_trash(tree_snapshot(dataset)) == before_dataset and swaps >= 10


def test_taking_the_lock_while_the_trash_folder_is_swapped_creates_nothing_outside(
    dataset: Path, outside: Path
) -> None:
    (dataset / ".trash").mkdir()
    (dataset / ".trash" / ".t_1.json.x.tmp").write_bytes(b"a stale temp file of ours")
    os.utime(dataset / ".trash" / ".t_1.json.x.tmp", (1, 1))
    (dataset / ".trash" / "t_1.json").write_text("{}")
    for folder in (dataset / ".trash", outside):  # the same names outside: a redirected clean-up would remove it
        (folder / ".t_1.json.y.tmp").write_bytes(b"precious")
        os.utime(folder / ".t_1.json.y.tmp", (1, 1))
    (outside / "t_1.json").write_text("{}")
    before = tree_snapshot(outside)
    os.symlink(outside, dataset / "evil_trash")
    taken = 0
    deadline = time.monotonic() + 3
    with FolderSwapper(dataset / ".trash", dataset / "evil_trash") as swapper:
        while taken < 30 and time.monotonic() < deadline:  # most attempts start while it is a link: refused
            with contextlib.suppress(trash.TrashError), trash.lock(dataset, "t.py"):
                taken += 1
            time.sleep(0.0005)  # let the swapper run between attempts
    assert tree_snapshot(outside) == before  # no lock created there, no temp file of its removed
    assert sorted(os.listdir(outside)) == [".t_1.json.y.tmp", "precious.jpg", "sub", "t_1.json"]
    assert taken > 0 and swapper.swaps >= 10


def test_a_file_listed_twice_is_moved_once_and_a_log_repeating_it_is_refused(dataset: Path) -> None:
    moves = [trash.Move("train/bird/b.jpg"), trash.Move("train/bird/b.jpg", note="again"), trash.Move("val/bird/d.jpg")]
    log_path, result = run(dataset, moves, {})
    assert result.errors == [] and result.done == ["train/bird/b.jpg", "val/bird/d.jpg"]  # the repeat dropped
    data = load(log_path)
    data["moves"] = data["moves"] * 1000  # a crafted log: restore counts would lie (2,000 "restored")
    fileio.write_json(log_path, data)
    with pytest.raises(trash.TrashError, match=r"moves\[2\]\.source' must be a file not listed before"):
        undo(dataset, log_path)


def test_a_move_planned_for_other_content_is_refused_when_the_log_is_written(dataset: Path) -> None:
    before = tree_snapshot(dataset)
    planned_for = fileio.sha256_file(dataset / "val/bird/d.jpg")  # the plan saw d.jpg's bytes, b.jpg has others now
    log_path, result = run(dataset, [trash.Move("train/bird/b.jpg", sha256=planned_for)], {})
    assert result.done == [] and result.errors == [("train/bird/b.jpg", "changed since the plan (another SHA-256)")]
    assert without_trash(tree_snapshot(dataset)) == before
