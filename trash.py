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
import errno
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import cli
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
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | fileio.CLOEXEC  # never a link; a FIFO cannot hang
ALREADY_UNDONE = "nothing to restore: already undone"  # what --undo of an undone log says (both tools)

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
    sha256: str | None = None  # the content the plan was made for: a file that no longer has it is refused


@dataclass
class Result:
    """What apply or undo did: the sources done (moved, deleted, or back in place) and the refusals (path, reason)."""

    done: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    moved: int = 0  # undo: files this call put back (the rest of ``done`` were back already)
    undone_before: str | None = None  # undo: when an earlier undo of the same log finished, if one did

    @property
    def is_already_undone(self) -> bool:
        """An undo that found the log undone before and had nothing left to put back: say ALREADY_UNDONE."""
        return self.undone_before is not None and self.moved == 0 and not self.errors


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
        return f"source {cli.short_repr(move['source'])} is not a relative path inside the dataset (absolute or '..')"
    if is_trash_path(move["source"]):
        return "the source lies in the trash folder"
    if move["action"] == "delete":
        return None
    destination = move["destination"]
    if not fileio.is_safe_relative(destination):
        return f"destination {cli.short_repr(destination)} is not a relative path inside the dataset (absolute or '..')"
    if (move["action"] == "trash") != is_trash_path(destination):
        where = "inside" if move["action"] == "trash" else "outside"
        return f"a {move['action']} destination must lie {where} {TRASH_FOLDER}/ (it is {cli.short_repr(destination)})"
    if move["action"] == "trash" and len(PurePosixPath(destination).parts) < 3:
        return (
            f"a trash destination must lie in a run folder inside {TRASH_FOLDER}/ (it is {cli.short_repr(destination)})"
        )
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
        raise TrashError(
            f"{where} is not a trash log of birdplane (its log_type is {cli.short_repr(data.get('log_type'))})"
        )
    if data.get("schema_version") != SCHEMA_VERSION:
        raise TrashError(
            f"{where} has schema_version {cli.short_repr(data.get('schema_version'))}; this version reads 1"
        )
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
    sources: set[str] = set()
    for index, move in enumerate(data["moves"]):
        name = f"moves[{index}]"
        if not isinstance(move, dict):
            raise refuse(name, "an object", move)
        for key in ("source", "destination", "note"):
            if not isinstance(move.get(key), str):
                raise refuse(f"{name}.{key}", "text", move.get(key))
        if move["source"] in sources:  # new_log lists each file once: a repeat would be counted (and undone) twice
            raise refuse(f"{name}.source", "a file not listed before", move["source"])
        sources.add(move["source"])
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
    still empty. TrashError (one sentence) when the lock is held or cannot be created. The lock and the clean-up of
    stale temp files act relative to a descriptor of ``.trash`` opened without following a link, like every move.
    """
    existed = os.path.lexists(Path(dataset_dir) / TRASH_FOLDER)
    folder = trash_folder(dataset_dir, create=True)
    try:
        with contextlib.ExitStack() as stack:
            with _Tree(Path(dataset_dir)) as tree:
                try:
                    trash_fd = tree.open_folder((TRASH_FOLDER,))
                except (fileio.UnsafePathError, FileNotFoundError):
                    raise TrashError(f"{folder} was replaced while the run started: nothing was changed") from None
            stack.callback(os.close, trash_fd)
            try:
                lock_file = fileio.hold_lock(folder / LOCK_NAME, tool, f"changing {dataset_dir}", dir_fd=trash_fd)
                path = stack.enter_context(lock_file)
            except fileio.LockHeldError as error:
                raise TrashError(str(error)) from None
            fileio.remove_stale_temp_files(folder, "*.json", dir_fd=trash_fd)  # a killed run's log-write temp files
            yield path
    finally:
        if not existed:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: the dataset is as it was when nothing happened


def _require_lock(dataset_dir: str | os.PathLike) -> None:
    """RuntimeError unless this process holds the lock (a programming error); TrashError when .trash is not a folder."""
    with _Tree(Path(dataset_dir)) as tree:
        try:
            folder = tree.open_folder((TRASH_FOLDER,))  # never through a link, even one swapped in meanwhile
        except fileio.UnsafePathError:
            raise TrashError(f"{Path(dataset_dir) / TRASH_FOLDER} was replaced while the run started") from None
        except FileNotFoundError:
            folder = None
        try:
            owner = None if folder is None else fileio.lock_owner(LOCK_NAME, dir_fd=folder)[0]
        finally:
            if folder is not None:
                os.close(folder)
    if owner is None or owner.get("pid") != os.getpid():
        raise RuntimeError("trash.new_log, apply and undo must run inside trash.lock(dataset_dir, tool)")


# ---------------------------------------------------------------------------------------------------------------------
# Checked paths
# ---------------------------------------------------------------------------------------------------------------------


def _inside(root: str | os.PathLike, relative: str, within: Path) -> Path:
    """``root / relative`` with its folders resolved, after checking that real folder lies in ``within`` (real).

    Raises UnsafePathError with the reason. The last component is not followed (callers check it is a regular file).
    A missing folder on the way is allowed (resolved as far as it exists): ``_Tree.open_folder`` creates or refuses it.
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


class _Tree:
    """The dataset folder opened once; every file moved, removed or hashed relative to a descriptor of its folder.

    A path is checked by resolving its folders (``_inside``: a symlinked class folder that stays inside the dataset is
    read through), then reached from the dataset's descriptor one real name at a time with O_NOFOLLOW|O_DIRECTORY, and
    the file is renamed or unlinked relative to the folder's descriptor. So what was checked is what is moved: a folder
    swapped for a symlink to outside after the check (``renameat2(RENAME_EXCHANGE)`` in a loop) makes the open fail
    and the move is refused; it never redirects the move, and a folder already open stays the one that was checked.
    """

    def __init__(self, dataset_dir: Path) -> None:
        self.dataset_dir, self.real = dataset_dir, dataset_dir.resolve()
        self.fd = os.open(self.real, os.O_RDONLY | os.O_DIRECTORY | fileio.CLOEXEC)  # the folder the user named

    def __enter__(self) -> _Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def parts(self, relative: str, in_trash: bool = False) -> tuple[str, ...]:
        """The real names from the dataset down to ``relative`` (checked inside it, or its trash when ``in_trash``)."""
        path = _inside(self.dataset_dir, relative, self.real / TRASH_FOLDER if in_trash else self.real)
        return path.relative_to(self.real).parts

    def open_folder(self, parts: Sequence[str], create: bool = False) -> int:
        """A descriptor of the folder ``parts`` (real names below the dataset), each opened without following a link.

        ``create`` makes the missing ones (the trash's run folders, an undo's class folder). FileNotFoundError when one
        is missing; UnsafePathError when one is a symlink or a file (it took the folder's place after the check).
        """
        try:
            return fileio.open_folder_below(self.fd, parts, create)
        except OSError as error:
            if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            raise fileio.UnsafePathError(
                f"a folder of {'/'.join(parts)} is not a real folder now (a symbolic link or a file took its place): "
                "not followed"
            ) from None


def _exists(folder: int, name: str) -> bool:
    """Whether anything (a link too) has the name ``name`` in the folder ``folder`` (a descriptor)."""
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _read_regular(folder: int, name: str) -> tuple[os.stat_result, str]:
    """(stat, SHA-256) of the regular file ``name`` in ``folder``, never through a link and never opening a FIFO.

    UnsafePathError(why not) for anything else; OSError when it cannot be read.
    """
    try:
        info = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        raise fileio.UnsafePathError("does not exist") from None
    if not stat.S_ISREG(info.st_mode):
        raise fileio.UnsafePathError(fileio.describe_kind(info.st_mode))
    with open(os.open(name, FILE_FLAGS, dir_fd=folder), "rb") as handle:
        opened = os.fstat(handle.fileno())
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise fileio.UnsafePathError("was replaced while being checked")
        return opened, hashlib.file_digest(handle, "sha256").hexdigest()


def _file_problem(folder: int, name: str, sha256: str | None) -> str | None:
    """Why ``name`` in ``folder`` is not the regular file the log recorded (a link, gone, changed), or None."""
    try:
        _, digest = _read_regular(folder, name)
    except fileio.UnsafePathError as error:
        return str(error)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    return None if digest == sha256 else "changed since the log was written (its SHA-256 differs)"


def _kept_problem(tree: _Tree, source_id: os.stat_result, kept: Sequence[str]) -> str | None:
    """Why removing the file ``source_id`` would remove the last copy (a kept file gone, or the same file), or None."""
    for other in kept:
        try:
            parts = tree.parts(other)
            folder = tree.open_folder(parts[:-1])
            try:
                kept_id = os.stat(parts[-1], dir_fd=folder)  # a kept symlink counts through its target
            finally:
                os.close(folder)
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
    """Rewrites a log atomically (fileio.write_json), at most every LOG_WRITE_INTERVAL_S unless forced.

    Written relative to a descriptor of the log's folder, opened once from the dataset down like every folder a move
    uses: a ``.trash`` swapped for a symlink to outside mid-run never receives a log write.
    """

    def __init__(self, tree: _Tree, path: Path, data: dict[str, Any]) -> None:
        try:  # load_log checked the log lies in the real trash: it can only fail if a folder was swapped since
            parts = path.resolve().relative_to(tree.real).parts
            self.folder, self.name = tree.open_folder(parts[:-1]), parts[-1]
        except (ValueError, OSError, fileio.UnsafePathError):
            raise TrashError(f"the folder of {path} was replaced while the run started; nothing was moved") from None
        self.data, self.written_at = data, time.monotonic()

    def changed(self) -> None:
        if time.monotonic() - self.written_at >= LOG_WRITE_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        fileio.write_json(self.name, self.data, dir_fd=self.folder)
        self.written_at = time.monotonic()

    def close(self) -> None:
        os.close(self.folder)


def _planned(tree: _Tree, run_id: str, move: Move) -> dict[str, Any]:
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
            parts = tree.parts(move.source)
            folder = tree.open_folder(parts[:-1])
            try:
                info, record["sha256"] = _read_regular(folder, parts[-1])
            finally:
                os.close(folder)
            record["size"] = info.st_size
            if move.sha256 is not None and record["sha256"] != move.sha256:
                record["reason"] = "changed since the plan (another SHA-256)"
        except fileio.UnsafePathError as error:
            record["reason"] = str(error)
        except FileNotFoundError:
            record["reason"] = "does not exist"
        except OSError as error:
            record["reason"] = f"cannot be read ({error.strerror or error})"
    if record["reason"] is not None:
        record["status"] = "refused"
        record["sha256"] = None
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
    seen: set[str] = set()  # each file once (a crafted report may list one file in two groups): the first move kept
    moves = [move for move in moves if not (move.source in seen or seen.add(move.source))]
    folder = trash_folder(dataset_dir, create=True)
    with _Tree(Path(dataset_dir)) as tree, contextlib.ExitStack() as stack:
        trash_fd = tree.open_folder((TRASH_FOLDER,))  # the log is created and written here, never through a link
        stack.callback(os.close, trash_fd)
        log_path = fileio.create_exclusive(folder, f"{tool_stem(tool)}_{fileio.utc_stamp()}", ".json", dir_fd=trash_fd)
        try:
            records = [_planned(tree, log_path.stem, move) for move in (progress or list)(moves)]
            fileio.write_json(log_path.name, _log_data(tree, tool, log_path.stem, records, extra), dir_fd=trash_fd)
        except BaseException:
            with contextlib.suppress(OSError):  # an empty log (Ctrl-C while hashing) would only confuse a later undo
                os.unlink(log_path.name, dir_fd=trash_fd)
            raise
    return log_path


def _log_data(
    tree: _Tree, tool: str, run_id: str, records: list[dict[str, Any]], extra: dict[str, Any] | None
) -> dict[str, Any]:
    """A new log's fields; ``run_id`` (the log's name) is also the run's trash folder: unique, as logs are kept."""
    return {
        "schema_version": SCHEMA_VERSION,
        "log_type": LOG_TYPE,
        "tool": tool_stem(tool),
        "run_id": run_id,
        "created": fileio.utc_now(),
        "dataset_dir": str(tree.real),
        "extra": dict(extra or {}),
        "moves": records,
        "undone": None,
    }


def dataset_of_log(log_path: str | os.PathLike) -> Path:
    """The dataset a log belongs to by where it lies (``<dataset>/.trash/<log>``); load_log checks it is so."""
    return Path(os.path.abspath(log_path)).parent.parent


def load_log(dataset_dir: str | os.PathLike, log_path: str | os.PathLike) -> dict[str, Any]:
    """The validated log; TrashError (one sentence) unless it is a well-formed log of this dataset in its trash."""
    log_path = Path(log_path)
    try:
        info = os.stat(log_path)  # one look: the name may change meanwhile
    except OSError:
        info = None  # read_json says what is wrong
    if info is not None and stat.S_ISREG(info.st_mode) and info.st_size == 0:  # new_log names the log before hashing
        raise TrashError(
            f"the trash log {log_path} is empty: its run was stopped while it was hashing files, before anything "
            "moved; nothing was moved by that run, so there is nothing to undo"
        )
    try:
        data = fileio.read_json(log_path, "trash log", fileio.MAX_LOG_BYTES)
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


def _carry_out(tree: _Tree, move: dict[str, Any]) -> None:
    """Perform one planned move after every check; raises UnsafePathError(reason) when it must not happen."""
    source = tree.parts(move["source"])
    if source[0] == TRASH_FOLDER:
        raise fileio.UnsafePathError("lies in the trash folder")
    with contextlib.ExitStack() as stack:
        try:
            source_folder = tree.open_folder(source[:-1])
        except FileNotFoundError:
            raise fileio.UnsafePathError("does not exist") from None
        stack.callback(os.close, source_folder)
        problem = _file_problem(source_folder, source[-1], move["sha256"])
        if not problem:
            source_id = os.stat(source[-1], dir_fd=source_folder, follow_symlinks=False)
            problem = _kept_problem(tree, source_id, move["kept"])
        if problem:
            raise fileio.UnsafePathError(problem)
        if move["action"] == "delete":
            os.unlink(source[-1], dir_fd=source_folder)
            return
        destination = tree.parts(move["destination"], in_trash=move["action"] == "trash")
        if move["action"] == "relabel" and destination[0] == TRASH_FOLDER:
            raise fileio.UnsafePathError("a relabel destination lies in the trash folder")
        try:  # the trash creates its folders; a relabel needs an existing class folder
            destination_folder = tree.open_folder(destination[:-1], create=move["action"] == "trash")
        except FileNotFoundError:
            raise fileio.UnsafePathError(f"the folder of {move['destination']} does not exist") from None
        stack.callback(os.close, destination_folder)
        if _exists(destination_folder, destination[-1]):
            raise fileio.UnsafePathError(f"{move['destination']} already exists: nothing is ever overwritten")
        os.rename(source[-1], destination[-1], src_dir_fd=source_folder, dst_dir_fd=destination_folder)


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
    result = Result()
    with _Tree(dataset_dir) as tree:
        writer = _LogWriter(tree, Path(log_path), data)
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
                    _carry_out(tree, move)
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
            writer.close()
    return result


def _open_if_there(tree: _Tree, parts: Sequence[str], stack: contextlib.ExitStack) -> int | None:
    """A descriptor of the folder ``parts`` (closed with ``stack``), or None when it does not exist."""
    try:
        folder = tree.open_folder(parts)
    except FileNotFoundError:
        return None
    stack.callback(os.close, folder)
    return folder


def _restore(tree: _Tree, move: dict[str, Any]) -> str:
    """Put one move back: "moved" (now), "back" (already in place) or "never" (never moved, changed since).

    UnsafePathError(reason) when it cannot be put back.
    """
    problem = lexical_problem(move)
    if problem:
        raise fileio.UnsafePathError(problem)
    source = tree.parts(move["source"])
    with contextlib.ExitStack() as stack:
        source_folder = _open_if_there(tree, source[:-1], stack)
        is_at_source = source_folder is not None and _exists(source_folder, source[-1])
        is_source_intact = is_at_source and _file_problem(source_folder, source[-1], move["sha256"]) is None
        if move["action"] == "delete":
            if is_at_source:  # never deleted (the run stopped before it)
                return "back" if is_source_intact else "never"
            raise fileio.UnsafePathError("was deleted for good (delete): it cannot be restored")
        destination_text = move["destination"]
        destination = tree.parts(destination_text, in_trash=move["action"] == "trash")
        destination_folder = _open_if_there(tree, destination[:-1], stack)
        if destination_folder is None or not _exists(destination_folder, destination[-1]):
            if is_source_intact:
                return "back"  # an earlier undo, or never moved
            if move["status"] == "planned" and is_at_source:
                return "never"  # it was changed or replaced before the run reached it
            where = "in the trash" if move["action"] == "trash" else "at"
            if is_at_source:
                raise fileio.UnsafePathError(f"not found {where} {destination_text}; a different file is at its place")
            raise fileio.UnsafePathError(f"not found {where} {destination_text}, and not back in place")
        problem = _file_problem(destination_folder, destination[-1], move["sha256"])
        if problem:
            raise fileio.UnsafePathError(f"{destination_text} {problem}; left where it is")
        if is_at_source:
            raise fileio.UnsafePathError(f"a file is already at {move['source']}; {destination_text} left where it is")
        if source[0] == TRASH_FOLDER:
            raise fileio.UnsafePathError("the place it came from is not free")
        if source_folder is None:
            source_folder = tree.open_folder(source[:-1], create=True)
            stack.callback(os.close, source_folder)
        if _exists(source_folder, source[-1]):
            raise fileio.UnsafePathError("the place it came from is not free")
        os.rename(destination[-1], source[-1], src_dir_fd=destination_folder, dst_dir_fd=source_folder)
        return "moved"


def _remove_empty_trash_folders(tree: _Tree, moves: Sequence[dict[str, Any]]) -> None:
    """Remove the empty folders below .trash on the way to each trash destination (the ones the run created)."""
    folders = set()
    for move in moves:
        if move["action"] == "trash" and is_trash_path(move["destination"]) and not lexical_problem(move):
            parent = PurePosixPath(move["destination"]).parent
            while parent.parts[1:]:
                folders.add(parent)
                parent = parent.parent
    for folder in sorted(folders, key=lambda item: -len(item.parts)):
        with contextlib.suppress(OSError, fileio.UnsafePathError):
            parent = tree.open_folder(folder.parts[:-1])  # lexical names, none followed: stays in the real trash
            try:
                os.rmdir(folder.name, dir_fd=parent)  # fails (and is left) unless an empty real folder
            finally:
                os.close(parent)


def undo(
    dataset_dir: str | os.PathLike, log_path: str | os.PathLike, progress: ProgressWrapper | None = None
) -> Result:
    """Put back every move of a validated log, last first, each checked like apply; mark the log undone. Needs ``lock``.

    The disk decides, not the statuses: a file found at its destination with the logged SHA-256 goes back (never over
    another file); a file already at its source with that SHA-256 counts as restored, so a re-run after a killed undo
    is quiet and succeeds. Files deleted for good are reported. Empty folders the run made in the trash are removed.
    ``result.moved`` counts the files this call put back and ``result.undone_before`` is the time of an earlier
    complete undo, so a tool can say ALREADY_UNDONE instead of "restored" again.
    """
    _require_lock(dataset_dir)
    dataset_dir = Path(dataset_dir)
    data = load_log(dataset_dir, log_path)
    result = Result(undone_before=data["undone"])
    with _Tree(dataset_dir) as tree:
        writer = _LogWriter(tree, Path(log_path), data)
        try:
            for move in progress(list(reversed(data["moves"]))) if progress else reversed(data["moves"]):
                if move["status"] == "refused":
                    continue
                try:
                    outcome = _restore(tree, move)
                except (fileio.UnsafePathError, OSError) as error:
                    reason = str(error) if isinstance(error, fileio.UnsafePathError) else (error.strerror or str(error))
                    result.errors.append((move["source"], reason))
                else:
                    if outcome != "never":
                        result.done.append(move["source"])
                        move["status"] = "undone" if move["action"] != "delete" else move["status"]
                    result.moved += outcome == "moved"
                writer.changed()
            data["undone"] = fileio.utc_now()
        finally:
            writer.flush()
            writer.close()
        _remove_empty_trash_folders(tree, data["moves"])
    return result


if __name__ == "__main__":
    cli.refuse_running_as_script(__file__, "see README.md")
