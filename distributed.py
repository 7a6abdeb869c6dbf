"""torchrun / DistributedDataParallel helpers: imported by train_classifier.py, not a script.

Like torchvision's references/classification/utils.init_distributed_mode, and as little of it as the trainer needs:
which process this is (``Ranks``, from torchrun's RANK / WORLD_SIZE / LOCAL_RANK), its device, the process group
(``process_group``: nccl between GPUs, gloo on CPUs, joined and left in one place), what the processes share (the
per-image results gathered by dataset index, rank 0's result broadcast to the others, the BatchNorm statistics),
the checks and sentences of a run that cannot work (more processes than batches, a device they cannot share), and
how a run ends when torchrun stops it or another process is lost.

With one process every sharing function returns at once: a plain ``python train_classifier.py`` (or torchrun with
one process) never creates a process group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import math
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import classifier
import cli
import training_data
from training_report import Predictions

# How long a process waits in a collective for the others before giving up. When a process dies torchrun stops the
# others at once (SIGTERM); this bounds only a hang, and is long enough for what rank 0 does alone between two
# collectives (writing an epoch's plots, contact sheets and checkpoints) and for the slowest process's image checks.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)
# The one-sentence errors (unusable data, checkpoint or weights) a process passes on to the others, so every process
# ends with rank 0's sentence instead of waiting in a collective for one that has stopped.
SHARED_ERRORS = (training_data.DatasetError, classifier.CheckpointError, classifier.WeightsUnavailableError)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place among torchrun's processes; ``Ranks()`` is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the process's number on its machine: which GPU it uses

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, logs and writes files."""
        return self.rank == 0


SINGLE_PROCESS = Ranks()  # a plain ``python train_classifier.py`` run (or torchrun with one process)


class Stopped(KeyboardInterrupt):
    """torchrun ended this process (SIGTERM): another process failed, or the run was interrupted. A
    KeyboardInterrupt, so it takes the same way out: the metadata says "interrupted", the checkpoints stay as they
    are."""


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions


def ranks_from_environment(environ: Mapping[str, str]) -> Ranks:
    """torchrun's RANK, WORLD_SIZE and LOCAL_RANK; ``Ranks()`` when they are not set. ValueError for values that
    are not a process's place among the others."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return Ranks()
    try:
        rank, world_size = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        local_rank = int(environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (they are set by torchrun)") from None
    if not (world_size >= 1 and 0 <= rank < world_size and local_rank >= 0):
        raise ValueError(f"RANK {rank} and WORLD_SIZE {world_size} do not fit together (they are set by torchrun)")
    return Ranks(rank, world_size, local_rank)


def rank_count_problem(world_size: int, usable_train_images: int, batch_size: int) -> str | None:
    """One sentence when there are more processes than batches in an epoch (a process would have no images of its
    own, only repeats of the others'), else None."""
    batches = math.ceil(usable_train_images / batch_size)
    if world_size <= batches:
        return None
    return (
        f"torchrun started {world_size} training processes but the {usable_train_images} usable training images make "
        f"only {batches} batch{'es' if batches > 1 else ''} of --batch-size {batch_size}: start at most {batches} "
        f"process{'es' if batches > 1 else ''} (--nproc_per_node times --nnodes) or lower --batch-size"
    )


def is_lost_contact(error: BaseException) -> bool:
    """True for the error a collective raises when another process is gone (gloo) or it waited too long (nccl)."""
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and "gloo" in str(error))


def short_reason(error: BaseException) -> str:
    """The first sentence of a collective's error, without gloo's source location: "Read error [host]:port:
    Connection reset by peer"."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". ", 1)[0].rstrip(".")


def lost_contact_cause(error: BaseException, ranks: Ranks) -> str | None:
    """Why the run stops when a collective failed because another process is gone (the start of the interruption
    sentence); None for any other error, which is a bug to raise."""
    if not (ranks.is_distributed and is_lost_contact(error)):
        return None
    return (
        f"rank {ranks.rank} of {ranks.world_size} lost contact with the other training processes "
        f"({cli.printable(short_reason(error))}; torchrun names the process that ended)"
    )


def interruption_cause(interruption: KeyboardInterrupt) -> str:
    """Ctrl-C, or torchrun's SIGTERM (``Stopped``): the start of the interruption sentence."""
    if isinstance(interruption, Stopped):
        return "Stopped by torchrun (a training process ended or the run was interrupted; see below)"
    return "Interrupted"


def merge_skipped(parts: Sequence[Sequence[dict[str, str]]]) -> list[dict[str, str]]:
    """The files set aside by any process (``{path, split, reason}``), each once, in the order first found."""
    merged: dict[str, dict[str, str]] = {}
    for part in parts:
        for item in part:
            merged.setdefault(item["path"], item)
    return list(merged.values())


def merge_failures(parts: Sequence[Sequence[tuple[int, str]]]) -> list[tuple[int, str]]:
    """The (index, reason) decode failures of all processes, each image once, by index."""
    return sorted({int(index): reason for part in parts for index, reason in part}.items())


def merge_predictions(parts: Sequence[Predictions]) -> Predictions:
    """The per-image results of all processes as one: rows sorted by dataset index, each image once (an image that
    two processes scored, such as a padding repeat, keeps its first row), so the result is the single-process one."""
    indices = torch.cat([part.indices for part in parts])
    _, first_rows = np.unique(indices.numpy(), return_index=True)  # sorted by index
    rows = torch.from_numpy(first_rows)
    return Predictions(
        torch.cat([part.logits for part in parts])[rows],
        torch.cat([part.labels for part in parts])[rows],
        indices[rows],
        merge_failures([part.failures for part in parts]),
    )


# ---------------------------------------------------------------------------------------------------------------------
# The process group: device, joining and leaving, stopping


def distributed_device(requested: str | None, ranks: Ranks) -> torch.device:
    """This process's device under torchrun: the GPU numbered by its LOCAL_RANK with CUDA (the default when there
    is one), else the CPU. ValueError (one sentence) for a device the processes cannot share this way."""
    kind = "cuda" if requested is None and torch.cuda.is_available() else "cpu"
    if requested is not None:
        try:
            chosen = torch.device(requested)
        except RuntimeError:
            raise ValueError(f"unknown device {requested!r}; use cpu or cuda") from None
        if chosen.type not in ("cuda", "cpu"):
            raise ValueError(f"under torchrun the processes train on CUDA (nccl) or the CPU (gloo), not {requested}")
        if chosen.type == "cuda" and chosen.index is not None:
            raise ValueError(
                f"under torchrun each process uses the GPU numbered by its LOCAL_RANK, so --device {requested} would "
                "put them all on one GPU: pass --device cuda (choose GPUs with CUDA_VISIBLE_DEVICES)"
            )
        kind = chosen.type
    if kind == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if ranks.local_rank >= count:
        raise ValueError(
            f"process {ranks.local_rank} on this machine has no GPU of its own ({count} visible): start at most "
            f"{count} processes per machine (--nproc_per_node {max(1, count)}) or pass --device cpu"
        )
    return torch.device("cuda", ranks.local_rank)


def process_device(requested: str | None, ranks: Ranks) -> torch.device:
    """This process's device: --device as classifier.pick_device reads it (default: cuda, then mps, then cpu), or
    under torchrun ``distributed_device``. ValueError (one sentence) for a device it cannot use."""
    return distributed_device(requested, ranks) if ranks.is_distributed else classifier.pick_device(requested)


def stop_on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up that follows is not cut short
    raise Stopped


def ignore_sigterm(ranks: Ranks) -> None:
    """Under torchrun, from now on ignore its SIGTERM: what this process still prints or writes on its way out is
    not cut short when torchrun stops the processes."""
    if ranks.is_distributed:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[str]:
    """Join torchrun's processes (its environment says where rank 0 listens) and yield the backend's name: nccl
    between GPUs, gloo on CPUs. Meanwhile torchrun's SIGTERM raises ``Stopped``; on the way out the group is left
    and the previous SIGTERM handler restored, whatever happened."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    previous_handler = signal.signal(signal.SIGTERM, stop_on_sigterm)  # how torchrun ends the other processes
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend, timeout=PROCESS_GROUP_TIMEOUT, device_id=device if device.type == "cuda" else None
        )
        yield backend
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        if dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def quiet_unless_main(ranks: Ranks) -> Iterator[None]:
    """On every process but rank 0: nothing on stdout, no progress bars, only errors in the log. Rank 0 prints and
    logs for the run; the others would repeat its lines (the same skipped files, the same epochs)."""
    if ranks.is_main:
        yield
        return
    root = logging.getLogger()
    level = root.level
    cli.set_progress(False)
    root.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w", encoding="utf-8") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        root.setLevel(level)


# ---------------------------------------------------------------------------------------------------------------------
# What the processes share


def gather_objects(value: T, ranks: Ranks) -> list[T]:
    """Every process's ``value`` (picklable), in rank order."""
    if not ranks.is_distributed:
        return [value]
    values: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(values, value)
    return values


def gather_predictions(predictions: Predictions, ranks: Ranks) -> Predictions:
    """The per-image results of every process's share as one, each image once, in index order (``merge_predictions``):
    the whole set, on every process, as one process would have it."""
    return merge_predictions(gather_objects(predictions, ranks)) if ranks.is_distributed else predictions


def gather_failures(failures: list[tuple[int, str]], ranks: Ranks) -> list[tuple[int, str]]:
    """The (index, reason) decode failures of every process, each image once, by index."""
    return merge_failures(gather_objects(failures, ranks)) if ranks.is_distributed else failures


def skipped_files_agreement(ranks: Ranks) -> Callable[[list[dict[str, str]]], list[dict[str, str]]] | None:
    """For training_data.build_datasets: the files any process set aside, so all processes skip the same ones
    (None with one process)."""
    if not ranks.is_distributed:
        return None
    return lambda skipped: merge_skipped(gather_objects(skipped, ranks))


def sum_over_processes(totals: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """``totals`` summed over every process (in place), such as an epoch's loss sums and image counts."""
    if ranks.is_distributed:
        dist.all_reduce(totals)
    return totals


def from_main(ranks: Ranks, compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0 alone, its result (or its one-sentence error) passed to every process: for what only
    rank 0 may touch or need have, the output folder (other machines may not share it)."""
    if not ranks.is_distributed:
        return compute()
    message: list[Any] = [None]
    if ranks.is_main:
        try:
            message[0] = ("result", compute())
        except SHARED_ERRORS as error:
            message[0] = ("error", error)
    dist.broadcast_object_list(message, src=0)
    kind, value = message[0]
    if kind == "error":
        raise value
    return value


def first_on_each_machine(ranks: Ranks, build: Callable[[], T]) -> T:
    """``build()`` on the first process of each machine, then on the others: what it downloads into the machine's
    cache (the ImageNet weights) is fetched once per machine, never by two processes at once. A one-sentence
    error of a first process is raised on every process."""
    if not ranks.is_distributed:
        return build()
    result, problem = None, None
    if ranks.local_rank == 0:
        try:
            result = build()
        except SHARED_ERRORS as error:
            problem = error
    problems = [error for error in gather_objects(problem, ranks) if error is not None]
    if problems:
        raise problems[0]
    return result if ranks.local_rank == 0 else build()


# ---------------------------------------------------------------------------------------------------------------------
# The model under DistributedDataParallel


def wrap_for_training(model: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """The model as it trains: under torchrun in DistributedDataParallel (gradients averaged over the processes at
    every step), else itself."""
    if not ranks.is_distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself inside its DistributedDataParallel wrapper (checkpoints hold its state_dict: no "module.")."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def share_buffers(model: nn.Module, ranks: Ranks) -> None:
    """Give every process rank 0's BatchNorm statistics: each process's last training batch changed its own, and
    evaluation, checkpoints and the next epoch must all see the one model."""
    if ranks.is_distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


if __name__ == "__main__":
    cli.refuse_running_as_script(__file__, "run train_classifier.py")
