"""The trainer's output folder and what --resume reads back from it.

Imported by train_classifier.py, not a script. Paths a run writes come from its command line and the defaults only:
a checkpoint restores training state and hyper-parameters, never a path.

- ``claim_output_folder``: before any work, the folders the run writes into must be writable; the run then holds
  ``<output-dir>/.train_classifier.lock`` (fileio.hold_lock), so a second trainer on the same folder refuses, and
  removes the temp files a killed run of the trainer left there (no other run can be writing them).
- ``resume_settings``: last_checkpoint.pth and the run's settings: the flags given now, the checkpoint's stored
  hyper-parameters for the others (each re-parsed through the trainer's own flag, so a stored ``epochs: "abc"`` is
  one sentence, not a traceback), and the defaults; a stored path is never used, and one line says which differ.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import classifier
import cli
import fileio
import problematic_analysis
import training_data
import training_report

logger = logging.getLogger(__name__)

LOCK_NAME = ".train_classifier.lock"  # one trainer per output folder: a second one would mix two runs' files
# What last_checkpoint.pth holds beyond classifier.py's format (a best-model checkpoint lacks them).
RESUME_KEYS = (
    "epoch", "arguments", "history", "optimizer_state_dict", "scheduler_state_dict", "scaler_state_dict", "rng_states",
)  # fmt: skip
PATH_ARGUMENTS = ("dataset_dir", "output_dir", "cache_dir", "report", "weights")  # never taken from a checkpoint
NOT_RESTORED = ("resume", "verbose", "no_progress")  # how this run is asked to behave, not how the model trains
WEIGHT_NAMES = ("imagenet", "none")  # --weights values that are not paths, so a checkpoint may restore them
RENAMED = (("num_workers", "workers"), ("problematic_report", "report"))  # old checkpoints' names of the flags
FIGURES = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "macro_f1", "learning_rate")  # printed per epoch
SKIP_KEYS = ("path", "split", "reason")  # of each skipped file
_NOT_GIVEN = object()


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions


def restored_value(action: argparse.Action, value: Any) -> Any:
    """``value`` stored for the flag of ``action``, as that flag would have parsed it when typed; ValueError saying
    what the flag needs when it cannot be (a wrong type, a choice that does not exist)."""
    if action.nargs == 0:  # store_true and --x/--no-x switches: a bool (or None: the switch's own default)
        if value is True or value is False or (value is None and action.default is None):
            return value
        raise ValueError("true or false")
    if value is None:
        if action.default is None:
            return None
        raise ValueError(f"a value (its default is {action.default})")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{getattr(action.type, '__name__', 'text')}, as typed on the command line")
    try:
        parsed = action.type(str(value)) if action.type is not None else str(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
        raise ValueError(
            str(error)[: cli.MAX_SHOWN_CHARACTERS] or getattr(action.type, "__name__", "another value")
        ) from None
    if action.choices is not None and parsed not in action.choices:
        raise ValueError("one of " + ", ".join(map(str, action.choices)))
    return parsed


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The destinations of the flags given on this command line (argparse fills only the missing ones with defaults)."""
    placeholders = {action.dest: _NOT_GIVEN for action in parser._actions if action.dest != argparse.SUPPRESS}
    parsed = parser.parse_args(argv, namespace=argparse.Namespace(**placeholders))
    return {dest for dest, value in vars(parsed).items() if value is not _NOT_GIVEN}


def is_restorable(dest: str, value: Any) -> bool:
    """Whether a checkpoint may set this flag: a hyper-parameter, or --weights naming no file."""
    if dest == "weights":
        return isinstance(value, str) and value.lower() in WEIGHT_NAMES
    return dest not in PATH_ARGUMENTS and dest not in NOT_RESTORED


# ---------------------------------------------------------------------------------------------------------------------
# The output folder and the checkpoint on disk


def claim_output_folder(
    args: argparse.Namespace, output_dir: Path, own_names: Sequence[str], held: contextlib.ExitStack
) -> str | None:
    """One sentence when this run cannot write where it must or another trainer holds ``output_dir``; else None,
    with the folder's lock entered into ``held`` and the temp files a killed run left removed."""
    report = problematic_analysis.report_path(args) if args.detect_problematic else None
    folders = [(output_dir, "")]
    if report:
        folders.append((report.parent, "; the problematic-images report goes there: pass --report PATH elsewhere"))
    if args.cache_dir:
        folders.append((Path(args.cache_dir), "; choose another --cache-dir"))
    for folder, hint in folders:
        reason = fileio.writable_folder_reason(folder)
        if reason:
            return reason + hint
    splits = [Path(args.dataset_dir) / split for split in ("train", "val")]
    for flag, folder in (("--output-dir", output_dir), ("--report", report), ("--cache-dir", args.cache_dir)):
        inside = [split for split in splits if folder and fileio.is_inside(folder, split)]
        if inside:  # read back as a class folder or a non-image: the next run would train on its own outputs
            return f"{flag} {folder} is inside {inside[0]}; choose a place outside the dataset's train/ and val/"
    analysis = output_dir / training_report.ERROR_ANALYSIS_NAME  # written per epoch: a planted link would lead out
    for folder in (analysis, *([] if analysis.is_symlink() else sorted(analysis.glob("epoch_*")))):
        if folder.is_symlink():
            return f"{folder} is a symbolic link: the trainer never writes through one; remove it or pick another"
    try:
        created = [folder for folder in (output_dir, *output_dir.parents) if not folder.exists()]  # innermost first
        output_dir.mkdir(parents=True, exist_ok=True)
        held.callback(remove_empty_folders, created)  # a run that wrote nothing leaves no folder behind
        lock = fileio.hold_lock(output_dir / LOCK_NAME, "train_classifier.py", f"training into {output_dir}")
        held.enter_context(lock)
    except fileio.LockHeldError as error:
        held.close()
        return str(error)
    except OSError as error:
        return f"cannot create the output folder {output_dir} ({error.strerror or error})"
    # This run holds the folder: a temp file of ours in it is a killed run's, whatever its age. In the report's
    # folder (the dataset's, not locked by us) only those older than an hour are.
    removed = sum(fileio.remove_stale_temp_files(output_dir, name, max_age_s=0) for name in own_names)
    if report and report.parent.is_dir():
        removed += fileio.remove_stale_temp_files(report.parent, report.name)
    if removed:
        logger.info("Removed %d temp file(s) left by an interrupted run.", removed)
    return None


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """Remove each folder that is empty (rmdir never removes anything else), in the order given."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_epoch_record(record: Any) -> bool:
    """An epoch of the stored history as the trainer reads and prints it: whole epoch, is_best, numbers."""
    if not isinstance(record, dict) or not is_whole(record.get("epoch")) or not isinstance(record.get("is_best"), bool):
        return False
    figures = [record.get(key) for key in FIGURES]  # finite: a NaN or inf cannot be written to the JSON metadata
    return all(fileio.is_finite_number(value) for value in figures)


def checked_state(checkpoint: dict[str, Any], path: Path) -> None:
    """CheckpointError (one sentence) when the training state a resume reads is missing or of the wrong kind."""
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    missing += [
        key for key, kind in (("arguments", dict), ("history", list)) if not isinstance(checkpoint.get(key), kind)
    ]
    if missing:
        raise classifier.CheckpointError(
            f"{path} holds a model but not the training state --resume needs (no {missing[0]}): "
            "it is a copy of a best model or from another program; run without --resume to start a new training."
        )
    epoch, history, skipped = checkpoint["epoch"], checkpoint["history"], checkpoint.get("skipped_files", [])
    problems = (
        (not is_whole(epoch) or epoch < 0, f"epoch {cli.short_repr(epoch)}"),
        (not all(is_epoch_record(record) for record in history), "history"),
        (
            not isinstance(skipped, list)
            or not all(isinstance(i, dict) and all(isinstance(i.get(k), str) for k in SKIP_KEYS) for i in skipped),
            "skipped_files",
        ),
    )
    for failed, what in problems:
        if failed:
            raise classifier.CheckpointError(
                f"{path} stores an unusable {what}; run without --resume to start a new training."
            )


def restore_state(optimization: Any, checkpoint: dict[str, Any]) -> None:
    """Load the optimizer, scheduler and loss scaler states (``optimization``: the trainer's Optimization) and the
    RNG states stored in the last checkpoint; CheckpointError (one sentence) when they do not fit this run."""
    try:
        optimization.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        optimization.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        optimization.scaler.load_state_dict(checkpoint["scaler_state_dict"])
        training_data.restore_rng_states(checkpoint["rng_states"])
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError) as error:
        raise classifier.CheckpointError(
            f"the training state in the last checkpoint does not fit this run ({type(error).__name__}); run without "
            "--resume to start a new training."
        ) from None


def resume_settings(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, path: Path
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The run's settings and the last checkpoint: flags given now win, then the checkpoint's hyper-parameters,
    then the defaults. Paths never come from the checkpoint; one line names the stored ones this run does not use."""
    if not path.is_file():
        raise training_data.DatasetError(f"There is no {path} to resume from; run without --resume to start training.")
    checkpoint = classifier.load_checkpoint(path)
    checked_state(checkpoint, path)
    stored = dict(checkpoint["arguments"])
    for old, new in RENAMED:
        if old in stored:
            stored.setdefault(new, stored.pop(old))
    given = given_flags(parser, argv)
    args = parser.parse_args(argv)
    not_used, seen = [], set()
    for action in parser._actions:
        dest = action.dest
        if dest not in stored or dest in given or dest in NOT_RESTORED or dest in seen:
            continue
        seen.add(dest)  # a flag's hidden old spelling shares its destination
        if not is_restorable(dest, stored[dest]):
            now = getattr(args, dest)
            if stored[dest] != (str(now) if now is not None else None):
                this_run = "none" if now is None else cli.short_repr(str(now))
                not_used.append(f"{action.option_strings[0]} {cli.short_repr(stored[dest])} (this run: {this_run})")
            continue
        try:
            setattr(args, dest, restored_value(action, stored[dest]))
        except ValueError as error:
            raise classifier.CheckpointError(
                f"{path} stores {action.option_strings[0]} {cli.short_repr(stored[dest])}, which that flag "
                f"does not accept (it needs {error}); give {action.option_strings[0]} on the command line or train "
                "from scratch."
            ) from None
    if not_used:
        logger.warning(
            "Not taken from %s: %s; paths come from this command line and the defaults only.",
            cli.printable(path),
            cli.printable("; ".join(not_used)),
        )
    for name in ("arch", "image_size"):
        if getattr(args, name) != checkpoint[name]:
            raise training_data.DatasetError(
                f"The checkpoint in {path} was trained with --{name.replace('_', '-')} {checkpoint[name]}, not "
                f"{getattr(args, name)}; resume with the same setting or train from scratch."
            )
    return args, checkpoint


if __name__ == "__main__":
    cli.refuse_running_as_script(__file__, "run train_classifier.py")
