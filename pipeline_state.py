"""The pipeline's state file (``<dataset>/pipeline_state.json``) and the fingerprints it records.

Imported by run_pipeline.py and html_report.py (the undo logs it lists); not a script; standard library, cli and fileio
only. The state says, per stage, whether it last finished (``done``), was interrupted (``started``) or left nothing
usable (``incomplete``), a fingerprint of what its result depended on, and its exit code; plus the undo logs of what
the dedupe stage removed. A state file is read as untrusted input: it only decides which stages are skipped, whether
an interrupted training resumes, and which undo logs (inside the dataset) are listed; every path and flag value a
stage uses comes from the command line and the defaults. A record this module would not have written is dropped with
a warning, so that stage runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cli
import fileio

logger = logging.getLogger(__name__)

STATE_NAME = "pipeline_state.json"  # in the dataset folder: it describes that dataset's stages
STATE_SCHEMA_VERSION = 1
STATE_TYPE = "birdplane_pipeline_state"
STATE_STATUSES = ("started", "done", "incomplete")  # what a stage's record says
MAX_DELETION_LOGS = 1000  # undo logs considered, the last ones listed: a dedupe run writes two at most, so an honest
# file stays far below; each is resolved on disk, and a crafted list of 500k took 15 s before a dry run printed


def digest(value: Any) -> str:
    """SHA-256 of a JSON-able value (sorted keys): equal inputs, equal digest, whatever the order they were built in."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def content_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return fileio.sha256_file(path)
    except OSError:
        return "unreadable"


def file_stamp(path: Path) -> list[Any]:
    """[name, size, mtime_ns] of a file (following links), or [name, None, None] when it is absent or unreadable."""
    try:
        info = path.stat()
    except OSError:
        return [str(path), None, None]
    return [str(path), info.st_size, info.st_mtime_ns]


def dataset_listing(dataset_dir: Path) -> list[list[Any]]:
    """Sorted [relative path, size, mtime_ns] of every file under the split folders; hidden files and folders skipped.

    Never opens a file, so a FIFO cannot hang it; what it names changes when images are added, removed or rewritten.
    """
    listing = []
    for split in fileio.SPLITS:
        top = dataset_dir / split
        for folder, subfolders, names in os.walk(top):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            for name in names:
                if not name.startswith("."):
                    path = Path(folder) / name
                    listing.append([path.relative_to(dataset_dir).as_posix(), *file_stamp(path)[1:]])
    return sorted(listing)


def files_below(folder: Path, pattern: str) -> list[Path]:
    try:
        return sorted(folder.glob(pattern))
    except OSError:
        return []


def read_optional_json(path: Path, what: str, max_bytes: int = fileio.MAX_REPORT_BYTES) -> Any:
    """A JSON file the pipeline only reads for what it prints or decides to skip; None (with a warning when it exists
    but is unusable: not a file, too big, not JSON, nested too deep) instead of an exception."""
    data, problem = fileio.read_optional_json(path, what, max_bytes)
    if problem:
        logger.warning("%s: ignored", cli.printable(problem))
    return data


def is_inside(path: str, folder: Path) -> bool:
    """fileio.is_inside, False for what is not a path at all (a NUL byte)."""
    try:
        return fileio.is_inside(path, folder)
    except (OSError, ValueError):
        return False


def stage_record_problem(record: Any) -> str | None:
    """Why a stage's entry in the state file is not one run_pipeline.record_stage wrote, else None."""
    if not isinstance(record, dict):
        return "not an object"
    if record.get("status") not in STATE_STATUSES:
        return f"status must be one of {', '.join(STATE_STATUSES)}"
    if not isinstance(record.get("fingerprint"), str):
        return "fingerprint must be a string"
    code = record.get("exit_code")
    if code is not None and (type(code) is not int or code not in (cli.EXIT_OK, cli.EXIT_PARTIAL)):
        return "exit_code must be 0, 1 or null"
    return None


def load_state(dataset_dir: Path, stage_names: Sequence[str] | None) -> dict[str, Any]:
    """The state file, or an empty state (every stage runs) when it is missing or unusable; never raises.

    The state only decides which stages are skipped, whether an interrupted training resumes, and which undo logs the
    page lists: every path and flag value a stage uses comes from the command line and the defaults. A stage record
    that is not one run_pipeline.py wrote is dropped (that stage runs), as is an undo log outside the dataset.
    ``stage_names`` None (the page, which only wants the undo logs): no stage records are read.
    """
    path = dataset_dir / STATE_NAME
    shown = cli.printable(path)
    empty = {"schema_version": STATE_SCHEMA_VERSION, "state_type": STATE_TYPE, "stages": {}}
    data = read_optional_json(path, "pipeline state", fileio.MAX_SMALL_JSON_BYTES)
    if data is None:
        return empty
    if (
        not isinstance(data, dict)
        or data.get("state_type") != STATE_TYPE
        or data.get("schema_version") != STATE_SCHEMA_VERSION
        or not isinstance(data.get("stages"), dict)
    ):
        logger.warning("%s is not a pipeline state file of this version; every stage will run", shown)
        return empty
    stages = {}
    with cli.CappedWarnings(logger, shown, "such stage records ignored") as warn:
        for name, record in data["stages"].items() if stage_names is not None else ():
            problem = "not a stage" if name not in stage_names else stage_record_problem(record)
            if problem:
                warn("%s: stage %s ignored (%s); it will run", shown, cli.printable(str(name)[:40]), problem)
            else:
                stages[name] = record
    logs = data.get("deletion_logs", [])
    logs = logs if isinstance(logs, list) else [logs]
    if len(logs) > MAX_DELETION_LOGS:
        logger.warning(
            "%s: %d undo log(s) before the last %d ignored", shown, len(logs) - MAX_DELETION_LOGS, MAX_DELETION_LOGS
        )
        logs = logs[-MAX_DELETION_LOGS:]
    kept = [log for log in logs if isinstance(log, str) and is_inside(log, dataset_dir)]
    if len(kept) != len(logs):
        logger.warning("%s: %d undo log(s) that are not files in the dataset ignored", shown, len(logs) - len(kept))
    return {**empty, "stages": stages, "deletion_logs": kept}


def save_state(dataset_dir: Path, state: dict[str, Any]) -> None:
    fileio.write_json(dataset_dir / STATE_NAME, state)


if __name__ == "__main__":
    cli.refuse_running_as_script(__file__, "run python run_pipeline.py", "run_pipeline.py")
