"""Every JSON reader against hostile JSON (issue 17 item 6, BAD_INPUTS 30): nested 1,000 deep (2 KB), a 5,000-digit
number, NaN and Infinity, and a file of hundreds of MB. Each gives one sentence (exit 2 where a script stops), never a
traceback, and memory stays bounded: a file over its kind's limit is refused unread. A file of many bad lines or
records gives a few warnings and one count, not one warning each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import remove_duplicates
import search_queries
from _race_helpers import FolderSwapper
from conftest import ROOT, make_class_image, make_dataset, save_image
from download_manifest import read_manifest
from image_search import read_search_cache

import cli
import fileio
import pipeline_state
import review_problematic_images as review
import run_pipeline
import trash
from report_images import Catalog, remove_stale_thumbs

HOSTILE = {
    "deep": "[" * 1000 + "]" * 1000,  # 2 KB: RecursionError inside json.loads before
    "deep-object": '{"a": ' * 5000 + "1" + "}" * 5000,
    "huge-number": '{"schema_version": 1, "n": ' + "9" * 5000 + "}",  # ValueError (int max str digits) before
    "nan": '{"schema_version": 1, "extra": {"report": NaN}}',  # Python reads NaN; an undo then crashed writing it
    "infinity": '{"schema_version": 1, "n": -Infinity}',
}
EXPECTED = {
    "deep": "nested too deeply",
    "deep-object": "nested too deeply",
    "huge-number": "more than 4300 digits",
    "nan": "holds NaN, which is not a JSON number",
    "infinity": "holds -Infinity, which is not a JSON number",
}


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, captured.err
    return errors[0]


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_every_script_that_reads_json_refuses_hostile_json_in_one_sentence(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = tmp_path / "dataset"
    (dataset / "train/bird").mkdir(parents=True)
    (dataset / ".trash").mkdir()
    hostile = tmp_path / "hostile.json"
    hostile.write_text(HOSTILE[kind])
    log = dataset / ".trash" / "review_problematic_images_20261201T000000Z.json"
    log.write_text(HOSTILE[kind])
    runs = {
        "review --apply-decisions": lambda: review.main(
            ["--apply-decisions", str(hostile), "--dataset-dir", str(dataset)]
        ),
        "review --undo": lambda: review.main(["--undo", str(log)]),
        "review --report": lambda: review.main(["--report", str(hostile), "--mode", "summary"]),
        "remove_duplicates --report": lambda: remove_duplicates.main(["--report", str(hostile), "--strategy", "all"]),
        "remove_duplicates --undo": lambda: remove_duplicates.main(["--undo", str(log)]),
        "search_queries --queries": lambda: search_queries.main(["--queries", str(hostile)]),
    }
    for name, run in runs.items():
        assert run() == 2, name
        assert EXPECTED[kind] in one_error_line(capsys), name
    assert log.read_text() == HOSTILE[kind]  # nothing rewritten


def test_a_megabyte_field_is_cut_in_every_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import classifier
    import cli

    huge = "\x1b[2J" + "A" * 3_000_000  # and an escape sequence that would clear the terminal
    dataset = tmp_path / "dataset"
    (dataset / "train/bird").mkdir(parents=True)
    (dataset / ".trash").mkdir()
    files = {
        "report.json": {"report_type": "problematic_images", "schema_version": huge},
        "decisions.json": {"schema_version": 1, "decisions_type": huge},
        "queries.json": {huge: ["a query"]},
    }
    for name, data in files.items():
        (tmp_path / name).write_text(json.dumps(data))
    log = dataset / ".trash" / "review_problematic_images_20261201T000000Z.json"
    log.write_text(json.dumps({"schema_version": 1, "log_type": huge}))
    runs = {
        "review --report": lambda: review.main(["--report", str(tmp_path / "report.json"), "--mode", "summary"]),
        "review --apply-decisions": lambda: review.main(
            ["--apply-decisions", str(tmp_path / "decisions.json"), "--dataset-dir", str(dataset)]
        ),
        "review --undo": lambda: review.main(["--undo", str(log)]),
        "remove_duplicates --undo": lambda: remove_duplicates.main(["--undo", str(log)]),
        "search_queries --queries": lambda: search_queries.main(["--queries", str(tmp_path / "queries.json")]),
    }
    for name, run in runs.items():
        assert run() == 2, name
        line = one_error_line(capsys)
        assert len(line) < 1000 and f"{len(repr(huge)):,} characters" in line and "\x1b" not in line, (name, line[:300])
    for value in (huge, [0.5] * 100_000, 10**400, {"a": huge}):
        assert classifier.short_repr(value) == cli.short_repr(value)  # the one allowed copy stays the same


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_every_module_reader_turns_hostile_json_into_a_sentence_or_a_fresh_start(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "hostile.json"
    path.write_text(HOSTILE[kind])
    assert EXPECTED[kind] in fileio.read_optional_json(path, "duplicate report")[1]  # shown on the page
    with pytest.raises(trash.TrashError, match=EXPECTED[kind]):
        trash.load_log(tmp_path, path)
    (tmp_path / pipeline_state.STATE_NAME).write_text(HOSTILE[kind])
    state = pipeline_state.load_state(tmp_path, run_pipeline.STAGES)  # unusable state: a warning, every stage runs
    assert state["stages"] == {} and EXPECTED[kind] in caplog.text
    assert read_search_cache(path, "birds") is None  # searched again
    assert fileio.lock_owner(path) == (None, HOSTILE[kind])  # a lock with no readable owner, never a crash
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"url": "http://a/1.jpg"}\n' + HOSTILE[kind] + '\n{"url": "http://a/2.jpg"}\n')
    assert [record["url"] for record in read_manifest(manifest)] == ["http://a/1.jpg", "http://a/2.jpg"]


def test_a_file_of_hundreds_of_megabytes_is_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = tmp_path / "dataset"
    (dataset / "train/bird").mkdir(parents=True)
    huge = tmp_path / "decisions.json"
    with open(huge, "wb") as handle:  # sparse: 300 MB on paper, nothing on disk
        handle.truncate(300 << 20)
    started = time.monotonic()
    assert review.main(["--apply-decisions", str(huge), "--dataset-dir", str(dataset), "--yes"]) == 2
    assert "larger than 64 MiB" in one_error_line(capsys)
    assert search_queries.main(["--queries", str(huge)]) == 2
    assert "larger than 16 MiB" in one_error_line(capsys)
    assert time.monotonic() - started < 5  # refused from its size, not after reading it
    with pytest.raises(fileio.ReportError, match="larger than"):  # the reports' limit holds too
        fileio.read_json(huge, "report")


def test_a_real_sized_report_still_loads(tmp_path: Path) -> None:
    """The limits are far above real files: a decisions file of 100,000 images (about 15 MB) loads."""
    decisions = {
        f"train/bird/{number:06d}_{'x' * 40}.jpg": {"action": "delete", "sha256": "a" * 64} for number in range(100_000)
    }
    path = tmp_path / "decisions.json"
    fileio.write_json(path, {"schema_version": 1, "decisions": decisions})
    assert os.path.getsize(path) > 10 << 20
    assert len(fileio.read_json(path, "decisions file", fileio.MAX_DECISIONS_BYTES)["decisions"]) == 100_000


def test_a_lock_file_holding_hostile_json_is_a_damaged_lock_not_a_crash(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    (dataset / ".trash").mkdir(parents=True)
    (dataset / ".trash" / trash.LOCK_NAME).write_text(HOSTILE["deep"])
    with pytest.raises(trash.TrashError, match="damaged"), trash.lock(dataset, "t.py"):
        pass


def warning_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("WARNING")]


def test_a_manifest_of_200000_bad_lines_gives_a_few_warnings_and_one_count(tmp_path: Path, caplog) -> None:
    """One warning per line gave 86 MB of log for a million lines; the good lines among them are still read."""
    manifest = tmp_path / "download_manifest.jsonl"
    manifest.write_text('{"url": "http://a/1.jpg"}\n' + "x\n" * 200_000 + '{"url": "http://a/2.jpg"}\n')
    started = time.monotonic()
    assert [record["url"] for record in read_manifest(manifest)] == ["http://a/1.jpg", "http://a/2.jpg"]
    assert time.monotonic() - started < 5
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) <= 10 and len(warnings) == cli.MAX_WARNINGS_PER_FILE + 1
    assert warnings[0] == "download_manifest.jsonl line 2 is not a JSON record (cut off?): ignored"
    assert warnings[-1] == "download_manifest.jsonl: ... and 199995 more such lines skipped"


def test_a_state_file_of_200000_bad_stages_and_undo_logs_is_read_quickly_with_a_few_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One warning per bad stage gave 90 MB for a million; each undo log was resolved on disk (500k: 15 s)."""
    dataset = make_dataset(tmp_path / "dataset", ("bird", "plane"), train_per_class=1, val_per_class=1)
    logs = [f"{number}.json" for number in range(199_000)]  # short: the file must stay under 16 MiB to be read
    logs += [str(dataset / ".trash" / f"removal_{number:04d}.json") for number in range(1000)]
    stages = {str(number): 0 for number in range(200_000)}
    state = {"schema_version": 1, "state_type": "birdplane_pipeline_state", "stages": stages, "deletion_logs": logs}
    (dataset / pipeline_state.STATE_NAME).write_text(json.dumps(state), encoding="utf-8")
    started = time.monotonic()
    assert run_pipeline.main(["--dataset-dir", str(dataset), "--no-collect", "--dry-run"]) == 0
    assert time.monotonic() - started < 5
    captured = capsys.readouterr()
    assert captured.out.count("would run") == 4 and len(warning_lines(captured.err)) <= 10, captured.err
    assert f"{pipeline_state.STATE_NAME}: ... and 199995 more such stage records ignored" in captured.err
    assert "199000 undo log(s) before the last 1000 ignored" in captured.err
    kept = pipeline_state.load_state(dataset, run_pipeline.STAGES)["deletion_logs"]
    assert kept == logs[-pipeline_state.MAX_DELETION_LOGS :]  # the newest, as run_pipeline.py sorts them


# ------------------------------------------------------------------------------------------ page thumbnails (issue 17)


@pytest.mark.parametrize("planted", ["symlink", "hardlink"])
def test_a_link_planted_at_a_thumbnail_name_is_never_shown_and_the_outside_file_stays(
    tmp_path: Path, planted: str
) -> None:
    dataset, outside = tmp_path / "dataset", tmp_path / "outside.jpg"
    save_image(make_class_image(0, 1), dataset / "train/bird/a.jpg")
    save_image(make_class_image(2, 7, size=(200, 100)), outside)
    secret = outside.read_bytes()
    thumbs = dataset / "report_files/thumbs"
    first = Catalog(dataset, dataset, thumbs).add("train/bird/a.jpg")
    ours = (dataset / first.thumb).read_bytes()
    thumb = dataset / first.thumb
    thumb.unlink()
    (thumb.symlink_to if planted == "symlink" else thumb.hardlink_to)(outside)  # the predictable name, planted
    shown = Catalog(dataset, dataset, thumbs).add("train/bird/a.jpg")
    assert shown.thumb == first.thumb and shown.problem is None
    assert not thumb.is_symlink() and thumb.read_bytes() == ours  # rewritten: the page shows our thumbnail
    assert outside.read_bytes() == secret and shown.size == first.size  # the outside file is neither shown nor written


# ------------------------------------------------------------------------------- a module run as a script (issue 18)

MODULES = sorted(
    path.relative_to(ROOT).as_posix()
    for path in [*ROOT.glob("*.py"), *(ROOT / "data_collection").glob("*.py")]
    if "\ndef main(" not in path.read_text(encoding="utf-8")
)


RUN_AS_SCRIPTS = """
import os, runpy, sys, traceback
root, base_path = sys.argv[1], sys.path[1:]
for name in sys.argv[2:]:
    ours = [key for key, value in sys.modules.items() if (getattr(value, "__file__", None) or "").startswith(root)]
    for module in ours:
        del sys.modules[module]  # each run imports our modules afresh, as a new process would (torch stays loaded)
    path = os.path.join(root, name)
    sys.path[:] = [os.path.dirname(path), *base_path]  # what python puts first for a script
    print("@@ " + name, file=sys.stderr, flush=True)
    try:
        runpy.run_path(path, run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    print("@@ exit %d" % code, file=sys.stderr, flush=True)
"""


@pytest.fixture(scope="module")
def modules_run_as_scripts() -> tuple[str, dict[str, tuple[int, str]]]:
    """(stdout, {module: (exit code, stderr)}) of every sibling module run as a script, the way ``python module.py``
    runs it (its folder first on sys.path, our modules imported afresh), in one process so torch loads once."""
    result = subprocess.run(
        [sys.executable, "-c", RUN_AS_SCRIPTS, str(ROOT), *MODULES], cwd="/", capture_output=True, text=True
    )
    runs = {}
    for chunk in result.stderr.split("@@ ")[1:]:
        if not chunk.startswith("exit "):
            name, _, text = chunk.partition("\n")
            runs[name] = text
        else:
            runs[name] = (int(chunk.split()[1]), runs[name])
    return result.stdout, runs


@pytest.mark.parametrize("name", MODULES)
def test_a_module_run_as_a_script_exits_2_with_one_error_line(
    modules_run_as_scripts: tuple[str, dict[str, tuple[int, str]]], name: str
) -> None:
    stdout, runs = modules_run_as_scripts
    code, stderr = runs[name]
    assert code == 2 and stdout == "", stderr
    assert stderr.startswith(f"error: {Path(name).name} is a module") and len(stderr.splitlines()) == 1


def test_a_thumbnail_folder_swapped_for_a_link_to_outside_while_the_page_builds_receives_nothing(
    tmp_path: Path,
) -> None:
    dataset, outside = tmp_path / "dataset", tmp_path / "outside"
    for number in range(30):
        save_image(make_class_image(number % 3, number, size=(32, 32)), dataset / f"train/bird/{number:02d}.jpg")
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    thumbs = dataset / "report_files/thumbs"
    thumbs.mkdir(parents=True)
    os.symlink(outside, dataset / "report_files/evil")
    with FolderSwapper(thumbs, dataset / "report_files/evil") as swapper:
        for _ in range(20):  # whole builds again until the race has really run (a loaded machine swaps less often)
            catalog = Catalog(dataset, dataset, thumbs)
            for number in range(30):
                catalog.add(f"train/bird/{number:02d}.jpg")  # a refusal while swapped shows as an unreadable thumbnail
            remove_stale_thumbs(thumbs, set())  # and removing every thumbnail while swapped
            if swapper.swaps >= 10:
                break
    assert sorted(os.listdir(outside)) == ["keep.txt"] and swapper.swaps >= 10


def test_a_class_folder_swapped_after_the_check_never_puts_an_outside_image_on_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race made deterministic: train/bird is exchanged with a link to outside right after ``locate`` checked it."""
    import report_images

    dataset, outside = tmp_path / "dataset", tmp_path / "outside"
    save_image(make_class_image(0, 1, size=(32, 32)), dataset / "train/bird/a.jpg")
    save_image(make_class_image(2, 2, size=(32, 32)), outside / "a.jpg")  # another picture under the same name
    os.symlink(outside, dataset / "train/evil")
    real_locate = report_images.locate

    def locate_then_swap(dataset_dir: Path, relative: str) -> tuple[Path | None, str | None]:
        found = real_locate(dataset_dir, relative)
        os.rename(dataset / "train/bird", dataset / "train/aside")
        os.rename(dataset / "train/evil", dataset / "train/bird")  # bird now leads outside
        return found

    monkeypatch.setattr(report_images, "locate", locate_then_swap)
    shown = Catalog(dataset, tmp_path / "page", tmp_path / "page/report_files/thumbs").add("train/bird/a.jpg")
    assert shown.sha256 is None and shown.thumb is None and "changed while the page was built" in shown.problem
    assert not list((tmp_path / "page").rglob("*.jpg"))  # no thumbnail of the outside picture


def test_a_folder_given_where_a_json_file_belongs_is_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "report.json"
    folder.mkdir()
    assert remove_duplicates.main(["--report", str(folder), "--strategy", "all"]) == 2
    assert "is a folder" in one_error_line(capsys)
    assert search_queries.main(["--queries", str(folder)]) == 2
    one_error_line(capsys)
