"""run_pipeline.py end to end on tiny data: URLs from a local server, planted copies, a 1-epoch resnet18 at 64 px.

One real run (module fixture) is shared by the tests, which run in file order: they look at what it did, re-run it
(everything skipped), rebuild only the report, add an image, interrupt a training, and finally undo the removals.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import remove_duplicates
from _download_helpers import ImageServer, Route, encode_good_image
from conftest import ROOT, make_class_image, make_dataset, save_image, tree_snapshot

import fileio
import pipeline_state
import run_pipeline
import train_classifier

CLASSES = ("bird", "plane")
TINY = ["--arch", "resnet18", "--image-size", "64", "--weights", "none", "--epochs", "1", "--batch-size", "8"]
TINY += ["--device", "cpu"]
PLANTED_COPY = "train/bird/bird_000 (1).jpg"  # byte-identical to train/bird/bird_000.jpg: removed
LEAK = "val/plane/plane_002_leak.jpg"  # byte-identical to train/plane/plane_002.jpg: the val copy is removed
CONFLICT = ("train/bird/bird_001.jpg", "train/plane/bird_001.jpg")  # same bytes, two labels: both stay
SCRIPT_OF_MODULE = {name: ROOT / path for name, path in run_pipeline.SCRIPTS.items()}


def run(argv: list[str]) -> tuple[int, str]:
    """run_pipeline.main in-process; (exit code, everything it printed on stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_pipeline.main(argv)
    return code, out.getvalue()


def printed_commands(output: str) -> list[list[str]]:
    """The '$ python SCRIPT ARGS' lines a run printed, split as a shell would."""
    lines = [line.strip() for line in output.splitlines()]  # --dry-run indents them
    return [shlex.split(line[2:])[1:] for line in lines if line.startswith("$ python ")]


def mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    """A dataset with a plain copy, a train/val leak and a label conflict, 4 more images served over HTTP, one run."""
    root = tmp_path_factory.mktemp("pipeline")
    dataset = make_dataset(root / "dataset", CLASSES, train_per_class=5, val_per_class=2, seed=11)
    shutil.copyfile(dataset / "train/bird/bird_000.jpg", dataset / PLANTED_COPY)
    shutil.copyfile(dataset / "train/plane/plane_002.jpg", dataset / LEAK)
    shutil.copyfile(dataset / CONFLICT[0], dataset / CONFLICT[1])
    planted = {path: (dataset / path).read_bytes() for path in (PLANTED_COPY, LEAK)}
    routes = {
        f"/{name}/{number}.jpg": Route(encode_good_image("jpeg", index, 700 + number, size=(128, 128)))
        for index, name in enumerate(CLASSES)
        for number in range(2)
    }
    routes["/plane/gone.jpg"] = Route(b"not here", status=404, content_type="text/html")  # exit 1, named at the end
    with ImageServer(routes) as server:
        urls = root / "urls.csv"
        urls.write_text("".join(f"{path.split('/')[1]},{server.url(path)}\n" for path in routes), encoding="utf-8")
        argv = ["--dataset-dir", str(dataset), "--models-dir", str(root / "models"), "--urls-file", str(urls), *TINY]
        code, output = run([*argv, "--no-progress"])
    yield {"root": root, "dataset": dataset, "models": root / "models", "argv": argv, "code": code,
           "output": output, "planted": planted}  # fmt: skip


def test_whole_run_prints_each_standalone_command_and_writes_every_output(pipeline) -> None:
    assert pipeline["code"] == 1, pipeline["output"]  # the worst stage's: collect met a 404
    report = pipeline["dataset"] / "download_report.json"
    assert f"Pipeline done, 1 input unusable (see {report} and the collect output above)." in pipeline["output"]
    dataset, models = pipeline["dataset"], pipeline["models"]
    commands = printed_commands(pipeline["output"])
    scripts = [Path(argv[0]).resolve() for argv in commands]
    order = [SCRIPT_OF_MODULE[name] for name in ("download_images", "detect_duplicates_by_filesize")]
    assert scripts[:2] == order
    for name in ("detect_duplicates_by_phash", "remove_duplicates", "train_classifier", "html_report"):
        assert SCRIPT_OF_MODULE[name] in scripts
    for argv in commands:  # each printed line is a valid command of its script, as a user would paste it
        module = next(name for name, path in SCRIPT_OF_MODULE.items() if path == Path(argv[0]).resolve())
        __import__(module).get_args_parser().parse_args(argv[1:])
    assert all("--no-progress" in argv for argv in commands)  # every script has the output switches (cli.py)
    train = next(argv for argv in commands if Path(argv[0]).name == "train_classifier.py")
    for flag, value in zip(TINY[::2], TINY[1::2]):  # the training settings reach the trainer as given
        assert train[train.index(flag) + 1] == value
    assert "--detect-problematic" in train and train[train.index("--analysis-epochs") + 1] == "1"
    assert "--freeze-until" not in train and train[train.index("--confidence-threshold") + 1] == "auto"
    metadata = json.loads((models / "training_metadata.json").read_text(encoding="utf-8"))
    assert metadata["config"]["frozen_blocks"] == []  # --weights none: the trainer's own default trains every layer
    assert metadata["confidence_threshold"] == metadata["recommended_threshold"]  # the model stores the recommended
    downloaded = [path for path in dataset.rglob("*.jpg") if len(path.stem) == 64]  # saved under their SHA-256
    assert len(downloaded) == 4
    for path in (models / "best_model.pth", dataset / "problematic_images_report.json", dataset / "report.html"):
        assert path.is_file(), path
    page = (dataset / "report.html").read_text(encoding="utf-8")
    assert 'id="recommended"' in page and 'id="confusion"' in page  # calibration and training from the real trainer
    report = json.loads((dataset / "problematic_images_report.json").read_text(encoding="utf-8"))
    listed = sum(len(entries) for entries in report["problematic_images"].values())
    assert page.count('<figure class="card"', page.index('id="problematic"'), page.index('id="training"')) == listed


def test_only_certain_copies_are_removed_label_conflicts_stay(pipeline) -> None:
    dataset = pipeline["dataset"]
    assert not (dataset / PLANTED_COPY).exists() and (dataset / "train/bird/bird_000.jpg").is_file()
    assert not (dataset / LEAK).exists() and (dataset / "train/plane/plane_002.jpg").is_file()
    assert all((dataset / path).is_file() for path in CONFLICT)
    trashed = {path.name for path in (dataset / ".trash").rglob("*.jpg")}
    assert trashed == {Path(PLANTED_COPY).name, Path(LEAK).name}
    exact = json.loads((dataset / "duplicate_report_filesize.json").read_text(encoding="utf-8"))
    groups = exact["duplicate_groups"]  # the reports were made again after the removal: they match the dataset
    assert not groups["same_class_and_set"] and not groups["same_class_diff_set"]
    assert [sorted(entry["path"] for entry in group["files"]) for group in groups["diff_class_same_set"]] == [
        sorted(CONFLICT)
    ]
    assert "never removed automatically): exact copies under two labels: 1; " in pipeline["output"]


def test_rerun_skips_every_stage(pipeline) -> None:
    dataset, models = pipeline["dataset"], pipeline["models"]
    before = {path: mtime(path) for path in (dataset / "report.html", models / "best_model.pth")}
    code, output = run(pipeline["argv"])  # without --no-progress: output switches do not make a stage stale
    assert code == 1 and "Pipeline done, 1 input unusable" in output  # the skipped collect's 404 still counts
    assert output.count("up to date (inputs unchanged since it last ran): skipped") == len(run_pipeline.STAGES)
    assert printed_commands(output) == []
    assert {path: mtime(path) for path in before} == before


def test_only_report_reruns_just_the_report(pipeline) -> None:
    dataset, models = pipeline["dataset"], pipeline["models"]
    model_time, page_time = mtime(models / "best_model.pth"), mtime(dataset / "report.html")
    code, output = run([*pipeline["argv"], "--only", "report"])
    assert code == 0 and "Pipeline done." in output and "ONNX" not in output
    assert [Path(argv[0]).name for argv in printed_commands(output)] == ["html_report.py"]
    (models / "best_model.onnx").write_bytes(b"exported")  # the trainer's or classifier.py's --export-onnx
    try:
        code, output = run([*pipeline["argv"], "--only", "report"])
        assert f"ONNX model (runs with onnxruntime, no PyTorch): {models / 'best_model.onnx'}" in output
    finally:
        (models / "best_model.onnx").unlink()
    assert mtime(models / "best_model.pth") == model_time and mtime(dataset / "report.html") != page_time


def test_an_added_image_makes_the_later_stages_run_again(pipeline) -> None:
    dataset = pipeline["dataset"]
    added = save_image(make_class_image(0, 4242), dataset / "train/bird/added.jpg")
    try:
        code, output = run([*pipeline["argv"], "--dry-run"])
        assert code == 0
        lines = [line for line in output.splitlines() if line.startswith("[")]
        assert lines == [
            "[1/5] collect: up to date, would be skipped",
            "[2/5] detect: would run",
            "[3/5] dedupe: would run",
            "[4/5] train: would run",
            "[5/5] report: would run",
        ]
    finally:
        added.unlink()
    code, output = run([*pipeline["argv"], "--dry-run"])
    assert output.count("up to date, would be skipped") == len(run_pipeline.STAGES)


def test_interrupted_training_resumes_from_its_checkpoint(pipeline, monkeypatch) -> None:
    calls: list[list[str]] = []

    def interrupted(argv: list[str]) -> int:
        calls.append(argv)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_classifier, "main", interrupted)
    code, output = run([*pipeline["argv"], "--from", "train"])
    assert code == 130 and len(calls) == 1 and "--resume" not in calls[0]
    monkeypatch.setattr(train_classifier, "main", lambda argv: calls.append(argv) or 0)
    code, output = run(pipeline["argv"])
    assert code == 1  # collect's 404, as it last ran
    assert calls[1] == [*calls[0], "--resume"]  # the same settings, carried on from models/last_checkpoint.pth
    assert "resuming it" in output


def test_undo_of_the_removal_log_restores_the_files_byte_for_byte(pipeline) -> None:
    dataset = pipeline["dataset"]
    state = json.loads((dataset / pipeline_state.STATE_NAME).read_text(encoding="utf-8"))
    logs = state["deletion_logs"]
    assert len(logs) == 2  # one for the leak, one for the plain copy
    page = (dataset / "report.html").read_text(encoding="utf-8")
    for log in logs:
        assert f"--undo {log}" in pipeline["output"] and f"remove_duplicates.py --undo {log}</code>" in page
        assert remove_duplicates.main(["--undo", str(log)]) == 0
    for path, data in pipeline["planted"].items():
        assert (dataset / path).read_bytes() == data


def test_a_crafted_state_file_and_checkpoint_change_nothing_outside_the_dataset(pipeline, tmp_path, capsys) -> None:
    """The state may say 'resume the interrupted training', never where a run writes; bad records are dropped."""
    import torch

    dataset = shutil.copytree(pipeline["dataset"], tmp_path / "dataset", symlinks=True)
    models, outside = tmp_path / "models", tmp_path / "outside"
    models.mkdir()
    outside.mkdir()
    victim = outside / "victim.json"
    victim.write_text("precious", encoding="utf-8")
    checkpoint = torch.load(pipeline["models"] / "last_checkpoint.pth", weights_only=True)
    stored = {"report": str(victim), "cache_dir": str(outside / "cache"), "output_dir": str(outside)}
    checkpoint["arguments"].update(stored, dataset_dir=str(outside))
    torch.save(checkpoint, models / "last_checkpoint.pth")
    shutil.copyfile(pipeline["models"] / "best_model.pth", models / "best_model.pth")  # as an interrupted run left it
    argv = ["--dataset-dir", str(dataset), "--models-dir", str(models), *TINY, "--no-progress", "--only", "train"]
    probe = run_pipeline.Run(run_pipeline.get_args_parser().parse_args(argv), dataset, models, tmp_path / "r", {})
    train_fingerprint = pipeline_state.digest(run_pipeline.STAGE_BY_NAME["train"].inputs(probe))
    state = {
        "schema_version": 1,
        "state_type": "birdplane_pipeline_state",
        "stages": {
            "train": {"status": "started", "fingerprint": train_fingerprint, "exit_code": None},
            "detect": {"status": "done", "fingerprint": ["x"], "exit_code": "0"},
            "../../etc": {"status": "done", "fingerprint": "x"},
        },
        "deletion_logs": [str(victim), 7, {"path": str(victim)}, "\x00"],
    }
    (dataset / pipeline_state.STATE_NAME).write_text(json.dumps(state), encoding="utf-8")
    code, output = run(argv)
    err = capsys.readouterr().err
    assert code in (0, 1), output + err
    assert "resuming it" in output  # what the state may decide
    assert victim.read_text(encoding="utf-8") == "precious" and sorted(outside.iterdir()) == [victim]
    assert (models / "best_model.pth").is_file() and (dataset / "problematic_images_report.json").is_file()
    assert "stage detect ignored (fingerprint must be a string)" in err and "4 undo log(s)" in err
    saved = json.loads((dataset / pipeline_state.STATE_NAME).read_text(encoding="utf-8"))
    assert saved["deletion_logs"] == [] and sorted(saved["stages"]) == ["train"]


# ------------------------------------------------------------------------------------------------ bad input


def test_contradictory_or_unusable_arguments_exit_2_before_any_work(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["--only", "train", "--from", "detect"], "not allowed with"),
        (["--dataset-dir", str(a_file), "--no-collect"], "is a file, not a folder"),
        (["--urls-file", str(tmp_path / "missing.csv")], "is not a readable file"),
        (["--only", "collect", "--no-collect"], "contradict"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_pipeline.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


def test_a_stage_that_cannot_work_stops_the_pipeline_with_one_sentence(tmp_path: Path, capsys) -> None:
    (tmp_path / "dataset" / "train").mkdir(parents=True)  # no images: the detectors refuse
    code = run_pipeline.main(["--dataset-dir", str(tmp_path / "dataset"), "--no-collect", *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert "Stage detect stopped" in err and "run the same command again" in err
    assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1  # the detector's own
    assert not (tmp_path / "dataset" / "report.html").exists()


def test_freeze_until_reaches_the_trainer_as_given_and_only_then(tmp_path: Path) -> None:
    def train_argv(extra: list[str]) -> list[str]:
        args = run_pipeline.get_args_parser().parse_args(extra)
        return list(run_pipeline.train_command(args, tmp_path / "d", tmp_path / "m").argv)

    assert "--freeze-until" not in train_argv(["--weights", "none"])  # the trainer's default follows --weights
    given = train_argv(["--weights", "None", "--freeze-until", "layer2"])
    assert given[given.index("--freeze-until") + 1] == "layer2"  # an explicit choice is kept (the trainer warns)
    assert "--freeze-until" not in train_argv([]) and "--freeze-until" not in train_argv(["--weights", "imagenet"])
    imagenet = train_argv(["--freeze-until", "layer1"])
    assert imagenet[imagenet.index("--freeze-until") + 1] == "layer1"


def test_training_that_does_nothing_stops_the_pipeline_and_says_how_to_rerun(tmp_path: Path, monkeypatch, capsys):
    dataset = make_dataset(tmp_path / "dataset", CLASSES, train_per_class=1, val_per_class=1)
    argv = ["--dataset-dir", str(dataset), "--models-dir", str(tmp_path / "models"), "--no-collect", *TINY]

    def refuses(argv: list[str]) -> int:
        print("error: the trainer's own sentence", file=sys.stderr)
        return 2

    monkeypatch.setattr(train_classifier, "main", refuses)
    code, output = run([*argv, "--from", "train"])
    err = capsys.readouterr().err
    assert code == 2 and "error: the trainer's own sentence" in err
    assert "\nStage train stopped: train_classifier.py exited with 2" in err and err.count("error: ") == 1
    assert "run the same command again" in err and "it starts at train" in err
    assert "report:" not in output and not (dataset / "report.html").exists()  # the report stage never ran

    monkeypatch.setattr(train_classifier, "main", lambda argv: 1)  # "done" yet no model: nothing to report on
    code, output = run([*argv, "--from", "train"])
    err = capsys.readouterr().err
    assert code == 2 and "error: stage train stopped: it finished without writing" in err and "best_model.pth" in err
    assert not (dataset / "report.html").exists()
    state = json.loads((dataset / pipeline_state.STATE_NAME).read_text(encoding="utf-8"))
    assert state["stages"]["train"]["status"] == "incomplete"  # not skipped as up to date next time


def test_dedupe_without_a_report_removes_nothing_and_says_why(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "dataset", CLASSES, train_per_class=1, val_per_class=1)
    shutil.copyfile(dataset / "train/bird/bird_000.jpg", dataset / "train/bird/copy.jpg")
    before = sorted(path.relative_to(dataset) for path in dataset.rglob("*.jpg"))
    code, output = run(["--dataset-dir", str(dataset), "--only", "dedupe"])
    assert code == 0 and "No usable exact-copy report" in output and printed_commands(output) == []
    assert sorted(path.relative_to(dataset) for path in dataset.rglob("*.jpg")) == before


def test_an_unusable_state_file_means_every_stage_runs(tmp_path: Path, capsys) -> None:
    dataset = make_dataset(tmp_path / "dataset", CLASSES, train_per_class=1, val_per_class=1)
    (dataset / pipeline_state.STATE_NAME).write_text('{"truncated', encoding="utf-8")
    assert run_pipeline.main(["--dataset-dir", str(dataset), "--no-collect", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("would run") == 4 and "not valid JSON" in captured.err


def test_a_second_run_on_the_same_dataset_refuses_and_a_dead_runs_lock_is_taken_over(tmp_path: Path, capsys) -> None:
    dataset = make_dataset(tmp_path / "dataset", CLASSES, train_per_class=1, val_per_class=1)
    argv = ["--dataset-dir", str(dataset), "--models-dir", str(tmp_path / "models"), "--only", "report"]
    lock = dataset / run_pipeline.LOCK_NAME
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = {"pid": other.pid, "host": socket.gethostname(), "tool": "run_pipeline.py", "started": "2026-11-29"}
        lock.write_text(json.dumps(owner), encoding="utf-8")
        assert run_pipeline.main(argv) == 2
        err = capsys.readouterr().err
        assert f"another run (run_pipeline.py, pid {other.pid}, started 2026-11-29) is working on {dataset};" in err
        assert f"remove {lock} if it is not running" in err
        assert lock.is_file() and not (dataset / "report.html").exists()
    finally:
        other.kill()
        other.wait()
    assert run_pipeline.main(argv) == 0  # its process is gone: the lock is stale and taken over
    assert (dataset / "report.html").is_file() and not lock.exists()


def test_help_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "run_pipeline.py"), "--help"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "COLUMNS": "120"},
    )  # fmt: skip
    assert result.returncode == 0
    assert "--from {collect,detect,dedupe,train,report}" in result.stdout and "exit codes" in result.stdout


def test_deep_or_huge_json_in_the_state_file_is_ignored_with_a_warning(tmp_path: Path, capsys) -> None:
    dataset = make_dataset(tmp_path / "dataset", CLASSES, train_per_class=1, val_per_class=1)
    argv = ["--dataset-dir", str(dataset), "--no-collect", "--dry-run"]
    huge = " " * (fileio.MAX_SMALL_JSON_BYTES + 1)
    for text in ("[" * 100_000 + "]" * 100_000, '{"schema_version": 1' + "1" * 5000 + "}", huge):
        (dataset / pipeline_state.STATE_NAME).write_text(text, encoding="utf-8")
        assert run_pipeline.main(argv) == 0
        captured = capsys.readouterr()
        assert captured.out.count("would run") == 4 and "pipeline state" in captured.err and "ignored" in captured.err


def test_a_one_class_dataset_is_refused_before_anything_is_downloaded(tmp_path: Path, capsys) -> None:
    urls = tmp_path / "urls.csv"
    urls.write_text("class,url\nbird,http://127.0.0.1:9/a.jpg\nbird,http://127.0.0.1:9/b.jpg\n", encoding="utf-8")
    queries = tmp_path / "queries.json"
    queries.write_text('{"bird": ["a bird"]}', encoding="utf-8")
    dataset = tmp_path / "dataset"
    for extra, named in (
        (["--urls-file", str(urls)], f"--urls-file {urls} names one class only (bird)"),
        (["--classes", "plane"], "--classes names one class only (plane)"),
        (["--queries", str(queries)], "--queries names one class only (bird)"),
    ):
        assert run_pipeline.main(["--dataset-dir", str(dataset), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and named in err and "needs two or more" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["queries.json", "urls.csv"]  # nothing made
    make_dataset(dataset, ("bird",), train_per_class=2, val_per_class=1)  # --no-collect: the dataset that is there
    before = tree_snapshot(dataset)
    assert run_pipeline.main(["--dataset-dir", str(dataset), "--no-collect"]) == 2  # before detect and dedupe run
    assert "has only the class 'bird'; a classifier needs two or more" in capsys.readouterr().err
    assert tree_snapshot(dataset) == before


def test_the_downloaders_limits_reach_it_and_small_classes_are_named_with_their_cause(tmp_path, monkeypatch) -> None:
    dataset = make_dataset(tmp_path / "dataset", CLASSES, train_per_class=3, val_per_class=1)
    for number in range(3, 16):
        save_image(make_class_image(0, number), dataset / f"train/bird/bird_{number:03d}.jpg")
    refused = {"failures_by_reason": {"too small": 258}, "failed_before_by_reason": {"http 404": 2}}
    report = {"schema_version": 2, "classes": {"plane": refused, "bird": {}}, "errors": []}
    (dataset / "download_report.json").write_text(json.dumps(report), encoding="utf-8")
    urls = tmp_path / "urls.csv"
    urls.write_text("bird,http://127.0.0.1:9/a.jpg\nplane,http://127.0.0.1:9/b.jpg\n", encoding="utf-8")
    models = tmp_path / "models"
    limits = ["--min-size", "30", "--max-bytes", "1000", "--timeout", "2.5", "--workers", "3", "--retry-failed"]
    argv = ["--dataset-dir", str(dataset), "--models-dir", str(models), "--urls-file", str(urls), *limits]
    code, output = run([*argv, "--dry-run", "--only", "collect"])
    (collect,) = printed_commands(output)
    assert code == 0 and collect[collect.index("--min-size") + 1] == "30" and "--retry-failed" in collect
    parsed = __import__("download_images").get_args_parser().parse_args(collect[1:])
    assert (parsed.min_size, parsed.max_bytes, parsed.timeout, parsed.workers) == (30, 1000, 2.5, 3)
    args = run_pipeline.get_args_parser().parse_args(["--patience", "0", "--export-onnx"])  # passed on as given
    trainer = train_classifier.get_args_parser().parse_args(run_pipeline.train_command(args, dataset, models).argv)
    assert trainer.patience == 0 and trainer.export_onnx  # --patience: the analysis' refusal suggests it

    def trains(argv: list[str]) -> int:  # the trainer's outputs, without the training
        models.mkdir(exist_ok=True)
        (models / "best_model.pth").write_bytes(b"model")
        (dataset / "problematic_images_report.json").write_text("{}", encoding="utf-8")
        return 0

    monkeypatch.setattr(train_classifier, "main", trains)
    code, output = run([*argv, "--only", "train"])
    lines = output.splitlines()
    assert code == 0
    assert (
        "  plane: 3 training images; 258 refused as too small (lower --min-size to retry); 2 refused as http 404"
        in (output)
    )
    assert "  bird: 16 training images" in lines  # under 20, no download refusal recorded
    assert lines.index("  bird: 16 training images") < next(i for i, line in enumerate(lines) if line.startswith("$"))


def test_a_small_class_names_its_five_most_frequent_refusals_and_counts_the_rest() -> None:
    from collections import Counter

    refusals = {"plane": Counter({f"reason {number}": 100 - number for number in range(20)})}
    lines = run_pipeline.small_class_lines({"bird": 100, "plane": 3}, refusals, lambda reason: "see the report")
    assert len(lines) == 2 and lines[1].count("refused as") == 5  # a crafted report may list thousands
    assert "100 refused as reason 0" in lines[1] and lines[1].endswith("; 15 more reasons in the download report")
