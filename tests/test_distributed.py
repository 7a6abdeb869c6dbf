"""Tests for train_classifier.py under torchrun: the epoch shares, the gather, and real 2-process runs on CPU (gloo).

The pure parts run in-process. The runs start ``python -m torch.distributed.run --nproc_per_node=2 --standalone
train_classifier.py`` as a subprocess on tiny data (resnet18, random weights, 32-64 px, a dozen images); a
sitecustomize on PYTHONPATH records every file each rank opens for writing (Python audit hooks), so the tests see
that rank 1 never writes. The two runs take about 20-40 s each on 2 busy cores.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed
from conftest import ROOT, make_class_image, make_dataset, without_timing

import classifier
import cli
import distributed
import train_classifier
import training_data
import training_report
from training_report import Predictions

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")

CLASSES = ("bird", "plane")
TINY = ["--arch", "resnet18", "--weights", "none", "--freeze-until", "none", "--workers", "0", "--no-progress"]
RUN_TIMEOUT = 300  # seconds for one torchrun run on a loaded machine; a run takes 20-40 s

# Records what each rank opens for writing, renames, removes or creates, one line per event in <log dir>/rank<N>.txt.
WRITE_RECORDER = """
import os, sys
_folder = os.environ.get("BIRDPLANE_WRITE_LOG")
if _folder and "RANK" in os.environ:
    _log = os.open(os.path.join(_folder, "rank" + os.environ["RANK"] + ".txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    _WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _record(event, args):
        if event == "open" and not isinstance(args[0], int):
            path, mode, flags = args
            if (mode is not None and any(c in mode for c in "wax+")) or (mode is None and flags & _WRITING):
                os.write(_log, ("open " + os.fsdecode(path) + "\\n").encode("utf-8", "backslashreplace"))
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree"):
            for path in args[:2] if event == "os.rename" else args[:1]:  # a rename: where from and where to
                os.write(_log, (event + " " + os.fsdecode(path) + "\\n").encode("utf-8", "backslashreplace"))

    sys.addaudithook(_record)
"""


def torchrun_command(*arguments: str, processes: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--standalone",
        str(ROOT / "train_classifier.py"), *arguments,
    ]  # fmt: skip


def torchrun_environment(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """OMP_NUM_THREADS=1 (two processes on two cores) and the write recorder; returns the env and the log folder."""
    hook, log = tmp_path / "hook", tmp_path / "writes"
    hook.mkdir()
    log.mkdir()
    (hook / "sitecustomize.py").write_text(WRITE_RECORDER, encoding="utf-8")
    python_path = os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path, "BIRDPLANE_WRITE_LOG": str(log)}
    return env, log


def writes_of(log: Path, rank: int, inside: Path) -> list[str]:
    """What ``rank`` wrote, renamed, removed or created inside ``inside``."""
    path = log / f"rank{rank}.txt"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [line for line in lines if line.split(" ", 1)[1].startswith(str(inside))]


def truncated_jpeg(path: Path) -> Path:
    """A JPEG cut in half: its header reads fine, so it is found only when an epoch decodes it."""
    buffer = io.BytesIO()
    make_class_image(1, 77, (256, 256)).save(buffer, "JPEG", quality=95)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def worker_pids(parent: int) -> dict[int, int]:
    """{RANK: pid} of the worker processes torchrun (``parent``) started, read from /proc."""
    workers = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            environ = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in environ:
            workers[int(environ["RANK"])] = int(entry.name)
    return workers


# ----------------------------------------------------------------------------------------------------------------
# Pure parts: the shares of an epoch and the gather


@pytest.mark.parametrize("is_weighted", [True, False], ids=["weighted", "permutation"])
@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_the_shares_of_an_epoch_together_are_the_single_process_draw(is_weighted: bool, world_size: int) -> None:
    labels = [0] * 9 + [1] * 3 + [2] * 2  # skewed, 14 images, one of them excluded: 13 is no multiple of 2, 3, 4
    samples = [training_data.Sample(Path(f"{i}.jpg"), label, f"train/{i}.jpg") for i, label in enumerate(labels)]
    policies = [training_data.DEFAULT_AUGMENTATION] * 3
    dataset = training_data.ImageDataset(samples, "train", 32, 37, policies=policies)
    dataset.excluded.add(4)
    single = training_data.EpochSampler(dataset, 3, is_weighted, seed=7)
    for epoch in (0, 5):
        single.set_epoch(epoch)
        draw = list(single)
        shares = []
        for rank in range(world_size):
            sampler = training_data.EpochSampler(dataset, 3, is_weighted, 7, rank, world_size)
            sampler.set_epoch(epoch)
            shares.append(list(sampler))
            assert len(shares[-1]) == len(sampler) == -(-len(draw) // world_size)  # the same step count everywhere
        # Dealt round-robin, the shares are the single-process draw, then a few repeats from its start (padding).
        dealt = [shares[i % world_size][i // world_size] for i in range(world_size * len(shares[0]))]
        assert dealt[: len(draw)] == draw and dealt[len(draw) :] == draw[: len(dealt) - len(draw)]
        assert len(dealt) - len(draw) < world_size
        assert all(index != 4 for index, _ in dealt)
        # so each class comes as often as in one process, and each image with the same augmentation seed
        assert Counter(labels[i] for i, _ in dealt[: len(draw)]) == Counter(labels[i] for i, _ in draw)


def test_the_shares_of_an_evaluation_are_disjoint_and_cover_every_usable_image() -> None:
    samples = [training_data.Sample(Path(f"{i}.jpg"), i % 2, f"val/{i}.jpg") for i in range(11)]
    dataset = training_data.ImageDataset(samples, "eval", 32, 37)
    dataset.excluded.update({3, 8})
    shares = [list(training_data.UsableIndices(dataset, rank, 3)) for rank in range(3)]
    assert [len(training_data.UsableIndices(dataset, rank, 3)) for rank in range(3)] == [len(s) for s in shares]
    assert sorted(sum(shares, [])) == list(training_data.UsableIndices(dataset)) == [0, 1, 2, 4, 5, 6, 7, 9, 10]
    assert training_data.shard([], 1, 2) == []


def test_gathered_predictions_equal_the_single_process_ones() -> None:
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(9, 3, generator=generator), torch.tensor([0, 1, 2] * 3)
    single = Predictions(logits, labels, torch.arange(9), [])
    parts = [
        Predictions(logits[[0, 2, 4, 6, 8]], labels[[0, 2, 4, 6, 8]], torch.tensor([0, 2, 4, 6, 8]), [(5, "bad")]),
        Predictions(logits[[1, 3, 7, 0]], labels[[1, 3, 7, 0]], torch.tensor([1, 3, 7, 0]), [(5, "bad"), (9, "x")]),
    ]  # image 5 failed on both (a padding repeat), image 0 came twice
    merged = distributed.merge_predictions(parts)
    keep = [0, 1, 2, 3, 4, 6, 7, 8]
    assert merged.indices.tolist() == keep
    assert torch.equal(merged.logits, single.logits[keep]) and torch.equal(merged.labels, single.labels[keep])
    assert merged.failures == [(5, "bad"), (9, "x")]
    stats = {"train_loss": 0.0, "train_accuracy": 0.0, "train_images": 1}
    record = training_report.epoch_record(0, stats, merged, ["a", "b", "c"], 0.001, 1.0)
    assert sum(map(sum, record["confusion_matrix"])) == 8


def test_process_settings_that_cannot_work_are_one_sentence() -> None:
    assert distributed.ranks_from_environment({}) == distributed.Ranks()
    ranks = distributed.ranks_from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (ranks.rank, ranks.world_size, ranks.is_distributed, ranks.is_main) == (1, 2, True, False)
    with pytest.raises(ValueError, match="RANK 2 and WORLD_SIZE 2"):
        distributed.ranks_from_environment({"RANK": "2", "WORLD_SIZE": "2"})
    assert distributed.distributed_device("cpu", ranks) == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cuda:1 would put them all on one GPU"):
        distributed.distributed_device("cuda:1", ranks)
    with pytest.raises(ValueError, match="CUDA .nccl. or the CPU .gloo., not mps"):
        distributed.distributed_device("mps", ranks)
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match="process 1 on this machine has no GPU of its own"):
            distributed.distributed_device("cuda", ranks)
    gloo = RuntimeError("[/src/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:5017: Connection reset by "
                        "peer. This is typically caused by a remote worker hanging. GLHF!")  # fmt: skip
    assert distributed.is_lost_contact(gloo) and not distributed.is_lost_contact(RuntimeError("a bug"))
    assert distributed.short_reason(gloo) == "Read error [127.0.0.1]:5017: Connection reset by peer"
    assert distributed.rank_count_problem(3, 10, 4) is None  # 3 batches: one per process
    problem = distributed.rank_count_problem(4, 10, 4)
    assert problem == (
        "torchrun started 4 training processes but the 10 usable training images make only 3 batches of "
        "--batch-size 4: start at most 3 processes (--nproc_per_node times --nnodes) or lower --batch-size"
    )


# ----------------------------------------------------------------------------------------------------------------
# Real runs under torchrun (2 processes, gloo)


def test_torchrun_trains_gathers_writes_once_resumes_and_survives_a_killed_process(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "dataset", CLASSES, train_per_class=5, val_per_class=3, size=(64, 64))
    (dataset / "train" / "bird" / "zero_bytes.jpg").write_bytes(b"")  # refused before training
    truncated_jpeg(dataset / "train" / "plane" / "truncated.jpg")  # found in epoch 1, by whichever rank draws it
    output, report_path = tmp_path / "models", tmp_path / "report.json"
    env, log = torchrun_environment(tmp_path)
    arguments = [
        "--dataset-dir", str(dataset), "--output-dir", str(output), *TINY, "--image-size", "64",
        "--epochs", "2", "--batch-size", "1", "--cache-max-gb", "0", "--no-weighted-sampling", "--seed", "1",
        "--detect-problematic", "--analysis-epochs", "2", "--report", str(report_path), "--patience", "0",
    ]  # fmt: skip
    # batch size 1 with --no-weighted-sampling: the rank that draws the truncated image has an empty batch in
    # epoch 1 and must still take part in that step (idle_step), or the other rank would wait for ever
    started = time.perf_counter()
    result = subprocess.run(
        torchrun_command(*arguments), capture_output=True, text=True, env=env, cwd=tmp_path, timeout=RUN_TIMEOUT
    )
    seconds = time.perf_counter() - started
    assert result.returncode == 1, result.stderr[-3000:]  # done, two files skipped (torchrun reports rank 0's 1)
    assert "]: Traceback" not in result.stderr, result.stderr[-3000:]  # no rank crashed
    assert "exitcode  : 1 " in result.stderr  # rank 0's code, which torchrun reports (and exits 1)

    metadata = read_json(output / "training_metadata.json")
    assert metadata["status"] == "completed" and len(metadata["epochs"]) == 2
    assert metadata["config"]["world_size"] == 2 and metadata["config"]["distributed_backend"] == "gloo"
    for record in metadata["epochs"]:  # every val image, counted once, whichever rank scored it
        assert record["val_images"] == 6 == np.sum(record["confusion_matrix"])
    assert sorted(item["path"] for item in metadata["skipped_files"]) == [
        "train/bird/zero_bytes.jpg", "train/plane/truncated.jpg",
    ]  # fmt: skip
    for name in ("zero_bytes.jpg", "truncated.jpg"):  # listed once (rank 0), though every rank skips it
        assert sum("Skipping train/" in line and name in line for line in result.stderr.splitlines()) == 1
    assert result.stdout.count("epoch   1  train loss") == 1  # one set of printed lines

    report = read_json(report_path)
    entries = [entry for items in report["problematic_images"].values() for entry in items]
    bad = {"zero_bytes.jpg", "truncated.jpg"}
    usable = sorted(p.relative_to(dataset).as_posix() for p in (dataset / "train").rglob("*.jpg") if p.name not in bad)
    assert sorted(entry["path"] for entry in entries) == usable and report["num_images"] == 10
    assert all(len(entry["losses"]) == 2 for entry in entries)  # exactly one loss per image per analysis epoch
    assert {error["path"] for error in report["errors"]} == {"train/bird/zero_bytes.jpg", "train/plane/truncated.jpg"}

    checkpoint = torch.load(output / "best_model.pth", map_location="cpu", weights_only=True)
    assert not any(key.startswith("module.") for key in checkpoint["model_state_dict"])  # the unwrapped model
    clf = classifier.BirdPlaneSupermanClassifier(output / "best_model.pth", device="cpu")
    assert clf.predict(dataset / "val" / "bird" / "bird_000.jpg")[0] in (*CLASSES, classifier.FALLBACK_LABEL)

    assert writes_of(log, 1, tmp_path) == []  # rank 1 never wrote, created, renamed or removed a file of ours
    written = {Path(line.split(" ", 1)[1]).name for line in writes_of(log, 0, tmp_path)}
    assert {"best_model.pth", "last_checkpoint.pth", "training_metadata.json", "report.json"} <= written

    # --resume with one process (plain python, in-process) carries on from the 2-process checkpoint
    paths = ["--dataset-dir", str(dataset), "--output-dir", str(output), "--report", str(report_path)]
    assert train_classifier.main(["--resume", *paths, "--epochs", "3"]) == 1
    resumed = read_json(output / "training_metadata.json")
    assert resumed["status"] == "completed" and [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3]
    assert without_timing(resumed["epochs"][:2]) == without_timing(metadata["epochs"])
    assert resumed["config"]["world_size"] == 1

    # --resume with 2 processes again, now with --cache-dir (rank 0 writes the copies, rank 1 reads them); rank 1
    # is killed after the next epoch: the run stops with one sentence
    last_written = (output / "last_checkpoint.pth").stat().st_mtime_ns
    cache = tmp_path / "cache"
    process = subprocess.Popen(
        torchrun_command(*paths, "--resume", "--epochs", "50", "--cache-dir", str(cache)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while (output / "last_checkpoint.pth").stat().st_mtime_ns == last_written and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1][-3000:]
            time.sleep(0.1)
        workers = worker_pids(process.pid)
        assert sorted(workers) == [0, 1], workers
        os.kill(workers[1], signal.SIGKILL)  # rank 1 dies without a word (out of memory, a lost machine)
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0 and "Resuming after epoch 3 of 50." in stdout
    # Rank 0 learns it from gloo (the connection drops) or from torchrun (SIGTERM), whichever comes first.
    lines = [line for line in stderr.splitlines() if cli.CARRY_ON_ADVICE in line]
    assert len(lines) == 1, stderr[-3000:]
    assert "Stopped by torchrun" in lines[0] or "rank 0 of 2 lost contact with the other training" in lines[0]
    stopped = read_json(output / "training_metadata.json")
    assert stopped["status"] == "interrupted" and 4 <= len(stopped["epochs"]) < 50
    last = torch.load(output / "last_checkpoint.pth", weights_only=True)  # a whole, valid checkpoint
    assert last["epoch"] == len(stopped["epochs"])
    classifier.load_checkpoint(output / "best_model.pth")
    assert writes_of(log, 1, tmp_path) == []  # in either torchrun run
    assert len(list(cache.glob("*.npy"))) == 10 + 6  # every usable image, once, by rank 0

    epochs = len(stopped["epochs"]) + 1
    assert train_classifier.main(["--resume", *paths, "--epochs", str(epochs)]) == 1
    assert len(read_json(output / "training_metadata.json")["epochs"]) == epochs
    print(f"first torchrun run: {seconds:.1f} s")
