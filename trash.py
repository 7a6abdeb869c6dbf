"""One trash-and-undo for every birdplane tool that moves or deletes dataset files: lock, log, apply, undo.

Imported by data_collection/remove_duplicates.py and review_problematic_images.py, not a script. Standard library and
fileio only, so importing it costs nothing.

How a tool uses it::

    with trash.lock(dataset, "remove_duplicates.py"):      # one changing run per dataset; a second one refuses
        log_path = trash.new_log(dataset, "remove_duplicates", moves, extra={"report": ...})
        result = trash.apply(dataset, log_path)             # result.done, result.errors [(path, reason)]
    with trash.lock(dataset, "remove_duplicates.py"):
        result = trash.undo(trash.dataset_of_log(log_path), log_path)   # or the --dataset-dir the user named

Everything lives in ``<dataset>/.trash/`` (hidden, so no detector or trainer scans it): the lock ``.lock``, the logs
``<tool>_<UTC stamp>.json`` (``_1``, ``_2``... when taken: names never collide) and, per run, the trashed files at
their relative paths under ``<tool>_<UTC stamp>/``. Log layout (``SCHEMA_VERSION`` 1)::

    {"schema_version": 1, "log_type": "birdplane_trash_log", "tool": "remove_duplicates",
     "run_id": "remove_duplicates_20261201T101500Z", "created": "2026-12-01T10:15:00+00:00",
     "dataset_dir": "/abs/dataset", "extra": {...the tool's own: report, strategy, decisions_path...},
     "moves": [{"source": "train/bird/a.jpg", "destination": ".trash/<run_id>/train/bird/a.jpg",
                "action": "trash", "sha256": "<hex>", "size": 51234, "kept": ["train/bird/b.jpg"],
                "note": "why", "status": "planned", "reason": null}],
     "undone": null}

``action`` is "trash" (into the run's trash folder, undoable), "relabel" (to another class folder, undoable) or
"delete" (gone for good, logged, not undoable). ``status`` is planned, done, refused (``reason`` says why) or undone.
Paths are relative to the dataset folder, POSIX; a non-UTF-8 file name round-trips through fileio.write_json.

Safety, checked right before every single operation, whatever the log says: the source resolves (folders through their
symlinks) inside the real dataset folder and is a regular file itself, not a link; it still has the SHA-256 the log
recorded before anything moved; a trash destination lies inside the real ``<dataset>/.trash`` (a symlinked ``.trash``
is refused for the whole run), any other destination inside the real dataset; nothing is ever overwritten; the copies a
move keeps (``kept``) still exist and are not the same file. A move that fails a check is refused by path with the
reason and the rest of the run goes on. A log never chooses the folder it works on: its ``dataset_dir`` must be the
dataset in use and the log itself must lie inside that dataset's ``.trash``. Undo reads the disk, not the statuses (the
log is rewritten at most once a second while moving), so a run killed at any point leaves a log that undo completes,
and a file already back counts as restored.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import fileio

TRASH_FOLDER = ".trash"  # inside the dataset: hidden from every scanner, and on the dataset's filesystem (os.rename)
LOCK_NAME = ".lock"  # <dataset>/.trash/.lock: one changing run per dataset at a time
SCHEMA_VERSION = 1  # bump when the log layout changes; load_log refuses versions it does not know
LOG_TYPE = "birdplane_trash_log"
OLD_DELETION_LOG_KIND = "deletion_log"  # remove_duplicates.py's log before this module: refused with a sentence
ACTIONS = ("trash", "relabel", "delete")
STATUSES = ("planned", "done", "refused", "undone")
LOG_WRITE_INTERVAL_S = 1.0  # rewrite the log at most this often while moving: each write costs the whole log, and undo
# reads the disk rather than the statuses, so a kill between two writes loses nothing
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]+")  # tool names become file names
SHA256_HEX = re.compile(r"[0-9a-f]{64}")

ProgressWrapper = Callable[[Iterable[Any]], Iterable[Any]]  # e.g. lambda items: cli.progress(items, desc="Moving")


class TrashError(fileio.ReportError):
    """The whole run cannot go ahead (lock held, symlinked trash, unusable log); ``str(error)`` is one sentence."""


@dataclass(frozen=True)
class Move:
    """One planned file operation; paths relative to the dataset folder, POSIX.

    ``destination`` is "" for "delete", and may be "" for "trash" (then ``.trash/<run_id>/<source>``). ``kept`` lists
    the files that must still exist (and not be this file) for the move to go ahead: the copies a removal keeps.
    """

    source: str
    destination: str = ""
    action: str = "trash"
    kept: tuple[str, ...] = ()
    note: str = ""


@dataclass
class Result:
    """What apply or undo did: the sources done (moved, deleted, or back in place) and the refusals (path, reason)."""

    done: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------------------


def tool_stem(tool: str) -> str:
    """``"remove_duplicates.py"`` -> ``"remove_duplicates"``: the form used in log and folder names."""
    stem = tool.removesuffix(".py")
    if not TOOL_NAME.fullmatch(stem):
        raise ValueError(f"tool name {tool!r} must be letters, digits, '_' or '-'")
    return stem


def default_destination(run_id: str, source: str) -> str:
    """Where the "trash" action puts ``source``: its own relative path inside the run's trash folder."""
    return f"{TRASH_FOLDER}/{run_id}/{source}"


def is_trash_path(relative: str) -> bool:
    """True for a relative path whose first part is the trash folder (lexical)."""
    return PurePosixPath(relative).parts[:1] == (TRASH_FOLDER,)


def lexical_problem(move: dict[str, Any]) -> str | None:
    """Why a logged move can never be carried out, judged from its text alone (absolute, '..', wrong place), or None."""
    if not fileio.is_safe_relative(move["source"]):
        return f"source {move['source']!r} is not a relative path inside the dataset (absolute or '..')"
    if is_trash_path(move["source"]):
        return "the source lies in the trash folder"
    if move["action"] == "delete":
        return None
    destination = move["destination"]
    if not fileio.is_safe_relative(destination):
        return f"destination {destination!r} is not a relative path inside the dataset (absolute or '..')"
    if (move["action"] == "trash") != is_trash_path(destination):
        where = "inside" if move["action"] == "trash" else "outside"
        return f"a {move['action']} destination must lie {where} {TRASH_FOLDER}/ (it is {destination!r})"
    if move["action"] == "trash" and len(PurePosixPath(destination).parts) < 3:
        return f"a trash destination must lie in a run folder inside {TRASH_FOLDER}/ (it is {destination!r})"
    return None


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def validate_log(data: Any, where: str) -> dict[str, Any]:
    """The log if every field has its type; TrashError with one sentence naming the first field that does not."""

    def refuse(field_name: str, expected: str, value: Any) -> TrashError:
        is_plain = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        shown = repr(value)[:60] if is_plain else _type_name(value)
        return TrashError(f"{where}: field '{field_name}' must be {expected} (it is {shown}); the log cannot be used")

    if not isinstance(data, dict):
        raise TrashError(f"{where} is not a trash log (not a JSON object)")
    if data.get("kind") == OLD_DELETION_LOG_KIND and "log_type" not in data:
        raise TrashError(
            f"{where} is a deletion log of the old remove_duplicates.py format (kind 'deletion_log'), which this "
            "version cannot undo; its files are at their original relative paths under the folder named in its "
            "'trash_dir': move them back by hand"
        )
    if data.get("log_type") != LOG_TYPE:
        raise TrashError(f"{where} is not a trash log of birdplane (its log_type is {data.get('log_type')!r})")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise TrashError(f"{where} has schema_version {data.get('schema_version')!r}; this version reads 1")
    for name in ("tool", "run_id", "created", "dataset_dir"):
        if not isinstance(data.get(name), str) or not data[name]:
            raise refuse(name, "text", data.get(name))
    if not TOOL_NAME.fullmatch(data["run_id"]):
        raise refuse("run_id", "a plain name (letters, digits, '_', '-')", data["run_id"])
    if not isinstance(data.get("extra"), dict):
        raise refuse("extra", "an object", data.get("extra"))
    if data.get("undone") is not None and not isinstance(data["undone"], str):
        raise refuse("undone", "null or a time", data["undone"])
    if not isinstance(data.get("moves"), list):
        raise refuse("moves", "a list", data.get("moves"))
    for index, move in enumerate(data["moves"]):
        name = f"moves[{index}]"
        if not isinstance(move, dict):
            raise refuse(name, "an object", move)
        for key in ("source", "destination", "note"):
            if not isinstance(move.get(key), str):
                raise refuse(f"{name}.{key}", "text", move.get(key))
        if move.get("action") not in ACTIONS:
            raise refuse(f"{name}.action", f"one of {', '.join(ACTIONS)}", move.get("action"))
        if move.get("status") not in STATUSES:
            raise refuse(f"{name}.status", f"one of {', '.join(STATUSES)}", move.get("status"))
        sha = move.get("sha256")
        if not (sha is None and move["status"] == "refused") and not (
            isinstance(sha, str) and SHA256_HEX.fullmatch(sha)
        ):
            raise refuse(f"{name}.sha256", "64 hexadecimal digits", sha)
        size = move.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise refuse(f"{name}.size", "a whole number of bytes or null", size)
        kept = move.get("kept")
        if not isinstance(kept, list) or not all(isinstance(path, str) for path in kept):
            raise refuse(f"{name}.kept", "a list of paths", kept)
        if move.get("reason") is not None and not isinstance(move["reason"], str):
            raise refuse(f"{name}.reason", "null or text", move["reason"])
    return data


# ---------------------------------------------------------------------------------------------------------------------
# The trash folder and the lock
# ---------------------------------------------------------------------------------------------------------------------


def trash_folder(dataset_dir: str | os.PathLike, create: bool = False) -> Path:
    """``<dataset>/.trash`` after checking it is a real folder (a symlink would lead elsewhere); TrashError if not."""
    folder = Path(dataset_dir) / TRASH_FOLDER
    if folder.is_symlink():
        raise TrashError(
            f"{folder} is a symbolic link: files are never moved through it; replace it with a real folder"
        )
    if create:
        try:
            folder.mkdir(exist_ok=True)
        except OSError as error:
            raise TrashError(f"cannot create {folder} ({error.strerror or error})") from None
    if os.path.lexists(folder) and not folder.is_dir():
        raise TrashError(f"{folder} is not a folder: move it away so the trash can live there")
    return folder


@contextlib.contextmanager
def lock(dataset_dir: str | os.PathLike, tool: str) -> Iterator[Path]:
    """Hold ``<dataset>/.trash/.lock`` for the duration: a second changing run on the same dataset refuses.

    fileio.hold_lock's lock file (O_EXCL; pid, host, tool and start time; a dead process's lock is taken over, so a
    killed run never leaves the dataset locked). Creates ``.trash`` when needed and removes it again on exit if it is
    still empty. TrashError (one sentence) when the lock is held or cannot be created.
    """
    existed = os.path.lexists(Path(dataset_dir) / TRASH_FOLDER)
    folder = trash_folder(dataset_dir, create=True)
    try:
        with contextlib.ExitStack() as stack:
            try:
                path = stack.enter_context(fileio.hold_lock(folder / LOCK_NAME, tool, f"changing {dataset_dir}"))
            except fileio.LockHeldError as error:
                raise TrashError(str(error)) from None
            for log in folder.glob("*.json"):  # temp files of log writes a killed run left behind
                fileio.remove_stale_temp_files(folder, log.name)
            yield path
    finally:
        if not existed:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: the dataset is as it was when nothing happened


def _require_lock(dataset_dir: str | os.PathLike) -> None:
    owner, _ = fileio.lock_owner(Path(dataset_dir) / TRASH_FOLDER / LOCK_NAME)
    if owner is None or owner.get("pid") != os.getpid():
        raise RuntimeError("trash.new_log, apply and undo must run inside trash.lock(dataset_dir, tool)")


# ---------------------------------------------------------------------------------------------------------------------
# Checked paths
# ---------------------------------------------------------------------------------------------------------------------


def _inside(root: str | os.PathLike, relative: str, within: Path) -> Path:
    """``root / relative`` with its folders resolved, after checking that real folder lies in ``within`` (real).

    Raises UnsafePathError with the reason. The last component is not followed (callers check it is a regular file).
    """
    if not fileio.is_safe_relative(relative):
        raise fileio.UnsafePathError("is not a relative path inside the dataset (absolute or '..')")
    try:
        path = fileio.resolve_inside(root, relative)
    except fileio.UnsafePathError:
        raise fileio.UnsafePathError("leads outside the dataset through a symlinked folder") from None
    if not path.parent.is_relative_to(within):
        raise fileio.UnsafePathError(f"does not lie in {within}")
    return path


def _make_parent(root: str | os.PathLike, relative: str, within: Path) -> Path:
    """Create the folder of ``root / relative`` (inside ``within``, real) and return the checked path."""
    candidate = Path(root) / relative
    existing = candidate.parent
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    real_existing = existing.resolve()
    if not real_existing.is_relative_to(within):
        raise fileio.UnsafePathError("leads outside the dataset through a symlinked folder")
    if not real_existing.is_dir():
        raise fileio.UnsafePathError(f"cannot create its folder: {existing} is not a folder")
    (real_existing / candidate.parent.relative_to(existing)).mkdir(parents=True, exist_ok=True)
    return _inside(root, relative, within)


def _file_problem(path: Path, sha256: str | None) -> str | None:
    """Why ``path`` is not the regular file the log recorded (a link, gone, changed), or None."""
    reason = fileio.regular_file_reason(path)
    if reason:
        return reason
    try:
        if fileio.sha256_file(path) != sha256:
            return "changed since the log was written (its SHA-256 differs)"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    return None


def _kept_problem(dataset_dir: Path, source: Path, kept: Sequence[str], real_dataset: Path) -> str | None:
    """Why removing ``source`` would remove the last copy (a kept file gone, or the same file on disk), or None."""
    source_id = os.lstat(source)
    for other in kept:
        try:
            kept_path = _inside(dataset_dir, other, real_dataset)
            kept_id = os.stat(kept_path)  # a kept symlink counts through its target
        except fileio.UnsafePathError as error:
            return f"its kept copy {other} {error}"
        except OSError:
            return f"its kept copy {other} is gone: not removing the last copy"
        if (kept_id.st_dev, kept_id.st_ino) == (source_id.st_dev, source_id.st_ino):
            return f"it is its kept copy {other} on disk: not removing the last copy"
    return None


# ---------------------------------------------------------------------------------------------------------------------
# The log
# ---------------------------------------------------------------------------------------------------------------------


class _LogWriter:
    """Rewrites a log atomically (fileio.write_json), at most every LOG_WRITE_INTERVAL_S unless forced."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data, self.written_at = path, data, time.monotonic()

    def changed(self) -> None:
        if time.monotonic() - self.written_at >= LOG_WRITE_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        fileio.write_json(self.path, self.data)
        self.written_at = time.monotonic()


def _planned(dataset_dir: str | os.PathLike, real_dataset: Path, run_id: str, move: Move) -> dict[str, Any]:
    """The log record of one move, hashed now; "refused" with the reason when it can never be carried out."""
    destination = move.destination
    if move.action == "trash" and not destination:
        destination = default_destination(run_id, move.source)
    record = {
        "source": move.source,
        "destination": "" if move.action == "delete" else destination,
        "action": move.action,
        "sha256": None,
        "size": None,
        "kept": list(move.kept),
        "note": move.note,
        "status": "planned",
        "reason": lexical_problem({"source": move.source, "destination": destination, "action": move.action}),
    }
    if record["reason"] is None:
        try:
            source = _inside(dataset_dir, move.source, real_dataset)
            record["reason"] = fileio.regular_file_reason(source)
            if record["reason"] is None:
                record["size"] = source.lstat().st_size
                record["sha256"] = fileio.sha256_file(source)
        except fileio.UnsafePathError as error:
            record["reason"] = str(error)
        except OSError as error:
            record["reason"] = f"cannot be read ({error.strerror or error})"
    if record["reason"] is not None:
        record["status"] = "refused"
    return record


def new_log(
    dataset_dir: str | os.PathLike,
    tool: str,
    moves: Sequence[Move],
    extra: dict[str, Any] | None = None,
    progress: ProgressWrapper | None = None,
) -> Path:
    """Write the log of a run, every move "planned" with the SHA-256 and size of its source, before anything moves.

    The name ``.trash/<tool>_<UTC stamp>.json`` is created exclusively (``_1``, ``_2``... when taken), so neither the
    log nor the run's trash folder ever collides with another run's. A move that can never be carried out (a path
    outside the dataset, a source that is not a regular file) is logged "refused" with the reason. Needs ``lock``.
    """
    _require_lock(dataset_dir)
    unknown = sorted({move.action for move in moves} - set(ACTIONS))
    if unknown:
        raise ValueError(f"unknown action {unknown[0]!r}; choose one of {', '.join(ACTIONS)}")
    folder = trash_folder(dataset_dir, create=True)
    log_path = fileio.create_exclusive(folder, f"{tool_stem(tool)}_{fileio.utc_stamp()}", ".json")
    run_id = log_path.stem  # also the run's trash folder: unique because logs are never removed
    real_dataset = Path(dataset_dir).resolve()
    try:
        records = [_planned(dataset_dir, real_dataset, run_id, move) for move in (progress or list)(moves)]
        data = {
            "schema_version": SCHEMA_VERSION,
            "log_type": LOG_TYPE,
            "tool": tool_stem(tool),
            "run_id": run_id,
            "created": fileio.utc_now(),
            "dataset_dir": str(real_dataset),
            "extra": dict(extra or {}),
            "moves": records,
            "undone": None,
        }
        fileio.write_json(log_path, data)
    except BaseException:
        log_path.unlink(missing_ok=True)  # an empty log (Ctrl-C while hashing) would only confuse a later undo
        raise
    return log_path


def dataset_of_log(log_path: str | os.PathLike) -> Path:
    """The dataset a log belongs to by where it lies (``<dataset>/.trash/<log>``); load_log checks it is so."""
    return Path(os.path.abspath(log_path)).parent.parent


def load_log(dataset_dir: str | os.PathLike, log_path: str | os.PathLike) -> dict[str, Any]:
    """The validated log; TrashError (one sentence) unless it is a well-formed log of this dataset in its trash."""
    log_path = Path(log_path)
    try:
        data = fileio.read_json(log_path, "trash log")
    except fileio.ReportError as error:
        raise TrashError(str(error)) from None
    data = validate_log(data, f"the trash log {log_path}")
    real_trash = trash_folder(dataset_dir).resolve()
    if not log_path.resolve().is_relative_to(real_trash):
        raise TrashError(
            f"{log_path} does not lie in {Path(dataset_dir) / TRASH_FOLDER}: a trash log is only used from the trash "
            "folder of the dataset it belongs to"
        )
    if Path(data["dataset_dir"]).resolve() != Path(dataset_dir).resolve():
        raise TrashError(
            f"the trash log {log_path} was written for {data['dataset_dir']}, not {dataset_dir}: a log never chooses "
            "the folder it works on"
        )
    return data


# ---------------------------------------------------------------------------------------------------------------------
# Apply and undo
# ---------------------------------------------------------------------------------------------------------------------


def _carry_out(dataset_dir: Path, move: dict[str, Any], real_dataset: Path, real_trash: Path) -> None:
    """Perform one planned move after every check; raises UnsafePathError(reason) when it must not happen."""
    source = _inside(dataset_dir, move["source"], real_dataset)
    if source.is_relative_to(real_trash):
        raise fileio.UnsafePathError("lies in the trash folder")
    problem = _file_problem(source, move["sha256"]) or _kept_problem(dataset_dir, source, move["kept"], real_dataset)
    if problem:
        raise fileio.UnsafePathError(problem)
    if move["action"] == "delete":
        os.unlink(source)
        return
    within = real_trash if move["action"] == "trash" else real_dataset
    destination = _inside_or_created(dataset_dir, move, within)
    if move["action"] == "relabel" and destination.parent.is_relative_to(real_trash):
        raise fileio.UnsafePathError("a relabel destination lies in the trash folder")
    if os.path.lexists(destination):
        raise fileio.UnsafePathError(f"{move['destination']} already exists: nothing is ever overwritten")
    os.rename(source, destination)


def _inside_or_created(dataset_dir: Path, move: dict[str, Any], within: Path) -> Path:
    """The checked destination path; the trash creates its folders, a relabel needs an existing class folder."""
    if move["action"] == "trash":
        return _make_parent(dataset_dir, move["destination"], within)
    destination = _inside(dataset_dir, move["destination"], within)
    if not destination.parent.is_dir():
        raise fileio.UnsafePathError(f"the folder of {move['destination']} does not exist")
    return destination


def apply(
    dataset_dir: str | os.PathLike, log_path: str | os.PathLike, progress: ProgressWrapper | None = None
) -> Result:
    """Carry out every "planned" move of the log, each checked right before it happens; refusals go on the list.

    The log's statuses follow as it goes (atomically rewritten); Ctrl-C stops after the current file with the log
    written exactly, then re-raises. Needs ``lock``.
    """
    _require_lock(dataset_dir)
    dataset_dir = Path(dataset_dir)
    data = load_log(dataset_dir, log_path)
    real_dataset, real_trash = dataset_dir.resolve(), trash_folder(dataset_dir).resolve()
    writer, result = _LogWriter(Path(log_path), data), Result()
    try:
        for move in progress(data["moves"]) if progress else data["moves"]:
            if move["status"] == "refused":
                result.errors.append((move["source"], move["reason"] or "refused"))
            if move["status"] != "planned":
                continue
            try:
                problem = lexical_problem(move)
                if problem:
                    raise fileio.UnsafePathError(problem)
                _carry_out(dataset_dir, move, real_dataset, real_trash)
            except (fileio.UnsafePathError, OSError) as error:
                reason = str(error) if isinstance(error, fileio.UnsafePathError) else (error.strerror or str(error))
                move.update(status="refused", reason=reason)
                result.errors.append((move["source"], reason))
            else:
                move["status"] = "done"
                result.done.append(move["source"])
            writer.changed()
    finally:
        writer.flush()
    return result


def _restore(dataset_dir: Path, move: dict[str, Any], real_dataset: Path, real_trash: Path) -> bool:
    """Put one move back; True when the file is back in place (now or already). UnsafePathError(reason) otherwise."""
    problem = lexical_problem(move)
    if problem:
        raise fileio.UnsafePathError(problem)
    source = _inside(dataset_dir, move["source"], real_dataset)
    if move["action"] == "delete":
        if os.path.lexists(source):
            return _file_problem(source, move["sha256"]) is None  # never deleted (the run stopped before it)
        raise fileio.UnsafePathError("was deleted for good (delete): it cannot be restored")
    within = real_trash if move["action"] == "trash" else real_dataset
    destination = _inside(dataset_dir, move["destination"], within)
    if not os.path.lexists(destination):
        if _file_problem(source, move["sha256"]) is None:
            return True  # already back (an earlier undo, or never moved)
        if move["status"] == "planned" and os.path.lexists(source):
            return False  # never moved: it was changed or replaced before the run reached it
        where = "in the trash" if move["action"] == "trash" else "at"
        if os.path.lexists(source):
            raise fileio.UnsafePathError(f"not found {where} {move['destination']}; a different file is at its place")
        raise fileio.UnsafePathError(f"not found {where} {move['destination']}, and not back in place")
    problem = _file_problem(destination, move["sha256"])
    if problem:
        raise fileio.UnsafePathError(f"{move['destination']} {problem}; left where it is")
    if os.path.lexists(source):
        raise fileio.UnsafePathError(f"a file is already at {move['source']}; {move['destination']} left where it is")
    source = _make_parent(dataset_dir, move["source"], real_dataset)
    if source.is_relative_to(real_trash) or os.path.lexists(source):
        raise fileio.UnsafePathError("the place it came from is not free")
    os.rename(destination, source)
    return True


def _remove_empty_trash_folders(moves: Sequence[dict[str, Any]], dataset_dir: Path, real_trash: Path) -> None:
    """Remove the empty folders below .trash on the way to each trash destination (the ones the run created)."""
    folders = set()
    for move in moves:
        if move["action"] == "trash" and is_trash_path(move["destination"]) and not lexical_problem(move):
            parent = PurePosixPath(move["destination"]).parent
            while parent.parts[1:]:
                folders.add(parent)
                parent = parent.parent
    for folder in sorted(folders, key=lambda item: -len(item.parts)):
        path = dataset_dir / folder
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(path.lstat().st_mode) and path.resolve().is_relative_to(real_trash):
                path.rmdir()  # fails (and is left) unless empty


def undo(
    dataset_dir: str | os.PathLike, log_path: str | os.PathLike, progress: ProgressWrapper | None = None
) -> Result:
    """Put back every move of a validated log, last first, each checked like apply; mark the log undone. Needs ``lock``.

    The disk decides, not the statuses: a file found at its destination with the logged SHA-256 goes back (never over
    another file); a file already at its source with that SHA-256 counts as restored, so a re-run after a killed undo
    is quiet and succeeds. Files deleted for good are reported. Empty folders the run made in the trash are removed.
    """
    _require_lock(dataset_dir)
    dataset_dir = Path(dataset_dir)
    data = load_log(dataset_dir, log_path)
    real_dataset, real_trash = dataset_dir.resolve(), trash_folder(dataset_dir).resolve()
    writer, result = _LogWriter(Path(log_path), data), Result()
    try:
        for move in progress(list(reversed(data["moves"]))) if progress else reversed(data["moves"]):
            if move["status"] == "refused":
                continue
            try:
                if _restore(dataset_dir, move, real_dataset, real_trash):
                    result.done.append(move["source"])
                    move["status"] = "undone" if move["action"] != "delete" else move["status"]
            except (fileio.UnsafePathError, OSError) as error:
                reason = str(error) if isinstance(error, fileio.UnsafePathError) else (error.strerror or str(error))
                result.errors.append((move["source"], reason))
            writer.changed()
        data["undone"] = fileio.utc_now()
    finally:
        writer.flush()
    _remove_empty_trash_folders(data["moves"], dataset_dir, real_trash)
    return result


if __name__ == "__main__":
    raise SystemExit("trash.py is a module imported by the birdplane scripts, not a script; see README.md")
