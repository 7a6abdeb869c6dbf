"""File helpers shared by every birdplane script except classifier.py (which imports nothing of ours).

Imported by train_classifier.py, review_problematic_images.py, the trainer's sibling modules, trash.py and the scripts
in data_collection/; not a script. Standard library only, so importing it costs nothing (no torch, no numpy).

One meaning per helper:
- ``atomic_write`` / ``write_json``: temp file beside the target, fsync, ``os.replace``; the result has ordinary
  permissions (0666 minus the umask), never mkstemp's 0600. Readers see the old file or the new one, never half.
- ``sha256_file``: hex SHA-256 of a file's bytes.
- ``is_safe_relative`` is lexical (no absolute path, no '..'); ``resolve_inside`` resolves symlinks and checks the
  real path against the real folder. Use the second right before touching a file.
- ``utc_now``: every timestamp the project writes is UTC, ISO 8601, to the second.
- ``read_json``: parsed JSON of a bounded size (``MAX_*_BYTES`` per kind of file), or ``ReportError`` with one
  sentence; ``parse_json`` is its parser for text read otherwise (a JSONL line), failing the same way.
- ``hold_lock``: one run at a time on a folder (an O_EXCL lock file naming its owner; a dead owner's is taken over);
  ``is_process_alive`` says whether a pid recorded in a lock or a temp file name still runs.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import math
import os
import secrets
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

HASH_CHUNK_BYTES = 1 << 20  # read files in 1 MiB pieces: constant memory, few system calls
TEMP_SUFFIX = ".tmp"  # every temp file the project writes is ".<name>.<random>.tmp" beside its target
MAX_WRITTEN_NAME_BYTES = 255 - 16  # NAME_MAX less the temp file's "." + ".<random>" + TEMP_SUFFIX (at most 14 bytes)
STALE_TEMP_SECONDS = 3600  # a temp file of our kind older than this belongs to a killed run and may be removed
UNREADABLE_LOCK_STALE_S = 60.0  # a lock file with no readable owner (killed while writing it) is stale after this
LOCK_READ_LIMIT = 65536  # a lock record is about 100 bytes; a lock file is never read beyond this
# The most bytes read_json reads of each kind of file: far above what a 100,000-image dataset writes, far below what
# would exhaust memory once parsed (a JSON text takes several times its size as Python objects).
MAX_REPORT_BYTES = 256 << 20  # duplicate report ~30 MB, problematic report ~100 MB at 100k images (300 B / 1 KB each)
MAX_LOG_BYTES = 256 << 20  # a trash log: ~45 MB for 100k moves (450 B a move)
MAX_DECISIONS_BYTES = 64 << 20  # a decisions file: ~15 MB for 100k decisions
MAX_SMALL_JSON_BYTES = 16 << 20  # pipeline state, --queries, a search cache: a few KB each
MAX_JSON_LINE_BYTES = 1 << 20  # one line of a JSONL file (the download manifest): ~400 B a record
CLOEXEC = getattr(os, "O_CLOEXEC", 0)  # descriptors never leak into a child process
SPLITS = ("train", "val")  # a dataset's two folders of class folders: <dataset>/<split>/<class>/<image>


class ReportError(ValueError):
    """A report, log or decisions file that cannot be used; ``str(error)`` is one sentence saying why."""


class UnsafePathError(ValueError):
    """A path that would leave the folder it must stay in (absolute, '..', or a symlink pointing out)."""


class LockHeldError(ReportError):
    """Another run holds the lock, or it cannot be created; ``str(error)`` is one sentence naming it."""


# ---------------------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------------------


def utc_now() -> str:
    """Now, in UTC, ISO 8601 to the second: ``2026-11-29T20:01:02+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def utc_stamp() -> str:
    """Now, in UTC, for file names: ``20261129T200102Z``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def is_safe_relative(path: str) -> bool:
    """True for a non-empty relative POSIX path with no '..' part (lexical: says nothing about symlinks)."""
    if not isinstance(path, str) or not path or path.startswith(("/", "\\")) or "\x00" in path:
        return False
    pure = PurePosixPath(path)
    return not pure.is_absolute() and ".." not in pure.parts and not (len(path) > 1 and path[1] == ":")


def relative_posix(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to ``root`` in POSIX form (lexical; both as given, not resolved)."""
    return Path(path).relative_to(root).as_posix()


def is_valid_utf8_name(path: str | os.PathLike) -> bool:
    """False for a name Linux allows but UTF-8 cannot hold (Python keeps its bytes as lone surrogates)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------------
# Paths on disk
# ---------------------------------------------------------------------------------------------------------------------


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when ``path`` with every symlink and '..' resolved is ``folder`` (resolved too) or lies below it."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def resolve_inside(root: str | os.PathLike, relative: str) -> Path:
    """``root / relative`` after checking it cannot leave ``root``; raises UnsafePathError(reason) otherwise.

    The check is made on the real path: every parent folder is resolved through its symlinks and must lie inside the
    real ``root``. The last component itself is not followed, so a symlinked file is returned as the link (callers that
    remove files must refuse links: see ``regular_file_reason``).
    """
    if not is_safe_relative(relative):
        raise UnsafePathError(f"{relative!r} is not a relative path inside the dataset")
    real_root = Path(root).resolve()
    candidate = Path(root) / relative
    real_parent = candidate.parent.resolve()
    if not real_parent.is_relative_to(real_root):
        raise UnsafePathError(f"{relative} leads outside {root} through a symlinked folder")
    return real_parent / candidate.name


def open_folder_below(start: int, names: Sequence[str], create: bool = False) -> int:
    """A new descriptor of the folder ``start/names[0]/names[1]/...``, each name opened with O_NOFOLLOW|O_DIRECTORY
    relative to the one before (``start`` is an open folder), made first when ``create``.

    What is reached is a real folder below ``start`` whatever any name points to: a folder swapped for a symlink after
    a check makes the open fail (OSError ELOOP, or ENOTDIR for a file in its place), it never leads elsewhere; and a
    folder once open stays the one that was checked. FileNotFoundError when one is missing and not ``create``.
    """
    descriptor = os.dup(start)
    try:
        for name in names:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, dir_fd=descriptor)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | CLOEXEC, dir_fd=descriptor)
            os.close(descriptor)
            descriptor = child
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def regular_file_reason(path: str | os.PathLike) -> str | None:
    """None for a regular file (not followed through a symlink); else why not, as words for the user."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as error:
        return f"cannot be examined ({error.strerror or error})"
    if stat.S_ISREG(mode):
        return None
    return describe_kind(mode)


def describe_kind(mode: int) -> str:
    """Words for a file that is not a regular file, from its ``st_mode``."""
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if stat.S_ISDIR(mode):
        return "is a folder"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device node, not a file"
    return "is not a regular file"


def is_regular_file(path: str | os.PathLike, follow_symlinks: bool = True) -> bool:
    """True for a regular file (through a symlink when ``follow_symlinks``); never opens it, so a FIFO cannot hang."""
    try:
        return stat.S_ISREG(os.stat(path, follow_symlinks=follow_symlinks).st_mode)
    except OSError:
        return False


def class_folders(split_dir: str | os.PathLike) -> list[str]:
    """The class folders of ``<dataset>/<split>/``, sorted; hidden folders (``.trash``, caches) skipped.

    A symlinked class folder counts as a class everywhere (trainer, detectors, reviewer): it is read through, but no
    tool ever moves, creates or deletes a file whose real path is outside the dataset (see ``resolve_inside``).
    """
    folder = Path(split_dir)
    if not folder.is_dir():
        return []
    return sorted(child.name for child in folder.iterdir() if not child.name.startswith(".") and child.is_dir())


def writable_folder_reason(folder: str | os.PathLike) -> str | None:
    """None when files can be created in ``folder`` (or in the nearest existing parent); else one sentence."""
    probe = Path(folder)
    try:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
    except OSError as error:  # a name longer than the file system takes, a folder that cannot be listed
        return f"{folder} cannot be used ({error.strerror or error})"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is read-only: cannot write there"
    return None


def file_name_problem(path: str | os.PathLike) -> str | None:
    """One sentence when the file name of ``path`` is too long for ``atomic_write`` (its temp file adds a prefix and
    a suffix to the name, and a file system takes NAME_MAX bytes per name); else None. Checked before any work, so a
    long --report name fails at once, not after the training."""
    name = os.fsencode(Path(path).name)
    if len(name) > MAX_WRITTEN_NAME_BYTES:
        return f"the file name of {path} is {len(name)} bytes long; at most {MAX_WRITTEN_NAME_BYTES} can be written"
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Reading and writing
# ---------------------------------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes, read in pieces (follows symlinks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", fsync: bool = True, dir_fd: int | None = None
) -> Iterator[Any]:
    """A handle on a temp file beside ``path``; on success it is fsynced and renamed over ``path``, else removed.

    The temp file is created exclusively (a link planted at a guessable name is never written through) and the rename
    replaces whatever is at ``path``, a symlink included, without following it. With ``dir_fd`` (a descriptor of an
    open folder) ``path`` is a name in that folder and every step is taken relative to it, so the folder cannot be
    swapped for a symlink between a check and the write. ``fsync=False`` for a cache that is made again if lost
    (thumbnails). Text mode writes UTF-8; a lone surrogate (a non-UTF-8 file name) is written as ``\\udcXX``.
    """
    if dir_fd is None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; the result is an ordinary file
    else:
        tmp_name = f".{os.fspath(path)}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | CLOEXEC
        fd = os.open(tmp_name, flags, 0o666, dir_fd=dir_fd)  # 0666 minus the umask: an ordinary file
    try:
        text_options = {"encoding": "utf-8", "errors": "backslashreplace", "newline": ""}
        with os.fdopen(fd, mode, **({} if "b" in mode else text_options)) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp_name, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name, dir_fd=dir_fd)
        raise


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2, dir_fd: int | None = None) -> None:
    """Strict JSON (no NaN), UTF-8, written atomically: the way every birdplane report and log reaches the disk.

    Strings holding a non-UTF-8 file name (lone surrogates) are written as ``\\udcXX`` escapes, so the file stays valid
    UTF-8 and ``read_json`` gives back the same string (``os.fsencode`` then gives back the same bytes).
    """
    with atomic_write(path, "w", dir_fd=dir_fd) as handle:  # dir_fd: see atomic_write
        json.dump(data, handle, indent=indent, ensure_ascii=False, allow_nan=False)
        handle.write("\n")


class _NotJsonNumber(ValueError):
    """NaN, Infinity or -Infinity in a JSON text (the message is the constant)."""


def _refuse_constant(name: str) -> Any:
    raise _NotJsonNumber(name)


def is_finite_number(value: Any) -> bool:
    """An int or float (never a bool) that is finite as a float: an integer of hundreds of digits is not, since every
    reader formats numbers as floats (``float(10**400)`` raises)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def parse_json(text: str | bytes, where: str) -> Any:
    """``json.loads(text)``, every way it can fail turned into ReportError with one sentence that starts with ``where``.

    Besides malformed text: nesting deeper than Python's recursion limit (``'[' * 1000``, 2 KB) and an integer of more
    than 4,300 digits (``sys.get_int_max_str_digits``) fail inside the parser; both are named, never a traceback.
    ``NaN`` and ``Infinity``, which Python's parser accepts but JSON has not (and ``write_json`` never writes), are
    refused too: no reader has to guard every number against them.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except _NotJsonNumber as error:
        raise ReportError(f"{where} holds {error}, which is not a JSON number (never written by birdplane)") from None
    except json.JSONDecodeError as error:
        raise ReportError(
            f"{where} is not valid JSON (line {error.lineno}: {error.msg}; truncated or corrupted?)"
        ) from None
    except RecursionError:
        raise ReportError(f"{where} is nested too deeply to be read (lists or objects inside each other)") from None
    except ValueError as error:  # "Exceeds the limit (4300 digits) for integer string conversion"
        if "digits" in str(error):
            raise ReportError(f"{where} holds a number of more than {sys.get_int_max_str_digits()} digits") from None
        raise ReportError(f"{where} holds a value that cannot be read ({error})") from None
    except MemoryError:
        raise ReportError(f"{where} is too large to be read in memory") from None


def read_bounded(path: str | os.PathLike, what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (through a symlink), at most ``max_bytes``; else ReportError (a sentence).

    Opened without blocking (a FIFO swapped in cannot hang) and checked on the open file; never reads past the limit,
    so memory stays bounded whatever the file claims or grows to.
    """
    path = Path(path)
    if not path.exists():
        raise ReportError(f"the {what} {path} does not exist")
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | CLOEXEC)
    except OSError as error:
        raise ReportError(f"the {what} {path} cannot be read ({error.strerror or error})") from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):  # checked before fdopen, which refuses a folder with a traceback of its own
        os.close(descriptor)
        raise ReportError(f"the {what} {path} {describe_kind(info.st_mode)}")
    with os.fdopen(descriptor, "rb") as handle:
        try:
            data = b"" if info.st_size > max_bytes else handle.read(max_bytes + 1)  # too big: refused unread
        except OSError as error:
            raise ReportError(f"the {what} {path} cannot be read ({error.strerror or error})") from None
    if info.st_size > max_bytes or len(data) > max_bytes:
        raise ReportError(
            f"the {what} {path} is larger than {max_bytes / 2**20:.0f} MiB, more than a {what} can be: not read"
        )
    return data


def read_json(path: str | os.PathLike, what: str, max_bytes: int = MAX_REPORT_BYTES) -> Any:
    """Parsed JSON of at most ``max_bytes`` (one of the MAX_*_BYTES); ReportError with one sentence when the file is
    missing, not a file, unreadable, too large, not UTF-8 or not JSON (malformed, nested too deeply, a huge number)."""
    data = read_bounded(path, what, max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ReportError(f"the {what} {path} cannot be read ({error})") from None
    return parse_json(text, f"the {what} {path}")


def read_optional_json(path: str | os.PathLike, what: str, max_bytes: int = MAX_REPORT_BYTES) -> tuple[Any, str | None]:
    """(parsed JSON, None); (None, None) when nothing is at ``path``; (None, read_json's one sentence) when unusable.
    For files a tool only shows or consults (the page's reports, the pipeline's records)."""
    if not os.path.lexists(path):
        return None, None
    try:
        return read_json(path, what, max_bytes), None
    except ReportError as error:
        return None, str(error)


def create_exclusive(
    folder: str | os.PathLike, stem: str, suffix: str, limit: int = 100_000, dir_fd: int | None = None
) -> Path:
    """Create and return a new empty file ``stem<suffix>``, ``stem_1<suffix>``, ... that did not exist (O_EXCL).

    Two runs started in the same second never get the same name, so one never overwrites the other's file. With
    ``dir_fd`` (a descriptor of ``folder``, open) the file is created relative to it, whatever ``folder`` now names.
    """
    folder = Path(folder)
    if dir_fd is None:
        folder.mkdir(parents=True, exist_ok=True)
    for number in range(limit):
        name = f"{stem}{suffix}" if number == 0 else f"{stem}_{number}{suffix}"
        candidate = folder / name
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            os.close(os.open(candidate if dir_fd is None else name, flags, 0o666, dir_fd=dir_fd))
        except FileExistsError:
            continue
        return candidate
    raise OSError(f"no free name for {stem}{suffix} in {folder}")


def remove_stale_temp_files(
    folder: str | os.PathLike, name: str, max_age_s: float = STALE_TEMP_SECONDS, dir_fd: int | None = None
) -> int:
    """Remove ``.<name>.*.tmp`` files that a killed run left in ``folder`` (older than ``max_age_s``); returns count.

    Only regular temp files of the given target name (a glob pattern allowed) are touched, so other tools' files and
    live writers are left alone. Listed and removed relative to one descriptor of the folder (``dir_fd``, or opened
    here), so a folder swapped for a symlink meanwhile cannot lead the removal elsewhere.
    """
    removed = 0
    cutoff = time.time() - max_age_s
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY) if dir_fd is None else dir_fd
    except OSError:
        return 0
    try:
        candidates = fnmatch.filter(os.listdir(descriptor), f".{name}.*{TEMP_SUFFIX}")
    except OSError:
        candidates = []
    for candidate in candidates:
        try:
            info = os.stat(candidate, dir_fd=descriptor, follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                os.unlink(candidate, dir_fd=descriptor)
                removed += 1
        except OSError:
            continue
    if dir_fd is None:
        os.close(descriptor)
    return removed


# ---------------------------------------------------------------------------------------------------------------------
# One run at a time: lock files
# ---------------------------------------------------------------------------------------------------------------------


def is_process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (one owned by another user counts as running)."""
    if pid <= 0:
        return False  # os.kill(0 or -n, ...) would ask about a whole process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def lock_owner(path: str | os.PathLike, dir_fd: int | None = None) -> tuple[dict[str, Any] | None, str]:
    """(the owner a lock file records, or None when it is unreadable, the file's raw text).

    Only a regular file is read, never through a symlink and at most LOCK_READ_LIMIT bytes, so a FIFO, a device or a
    link to one at the lock's place cannot hang or exhaust memory: it counts as a lock with no readable owner. With
    ``dir_fd`` (an open folder), ``path`` is a name in it.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None, ""
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None, ""
        text = os.read(descriptor, LOCK_READ_LIMIT).decode("utf-8", errors="replace")
    except OSError:
        return None, ""
    finally:
        os.close(descriptor)
    try:
        owner = parse_json(text, "the lock")
    except ReportError:  # damaged, or crafted (deeply nested, a huge number): no readable owner
        return None, text
    return (owner if isinstance(owner, dict) else None), text


def _is_stale_lock(path: str | os.PathLike, owner: dict[str, Any] | None, dir_fd: int | None = None) -> bool:
    """True when the run that wrote the lock is gone: its pid is dead on this host, or it died while writing it."""
    if owner is None:
        try:
            return time.time() - os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mtime > UNREADABLE_LOCK_STALE_S
        except FileNotFoundError:
            return True
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False  # another machine (a shared disk) or a pid we cannot check: assume it is running
    return not is_process_alive(pid)


def _take_over_lock(path: Path, stale_text: str, dir_fd: int | None = None) -> None:
    """Set a stale lock aside; if another run replaced it meanwhile (a live lock), put that one back untouched."""
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}.{time.monotonic_ns()}")
    fds = {"src_dir_fd": dir_fd, "dst_dir_fd": dir_fd}
    try:
        os.rename(path, aside, **fds)
    except FileNotFoundError:
        return  # another run took it over first: the next attempt sees its lock
    if lock_owner(aside, dir_fd)[1] != stale_text:
        with contextlib.suppress(OSError):
            os.link(aside, path, **fds, follow_symlinks=False)  # a hard link never replaces a lock created meanwhile
    with contextlib.suppress(FileNotFoundError):
        os.unlink(aside, dir_fd=dir_fd)


def _lock_held_message(path: Path, owner: dict[str, Any] | None, doing: str) -> str:
    if owner is None:
        who = "an unknown run (its lock file is being written or is damaged)"
    else:
        who = f"another run ({owner.get('tool', '?')}, pid {owner.get('pid', '?')}"
        if owner.get("host") != socket.gethostname():
            who += f" on {owner.get('host', '?')}"
        who += f", started {owner.get('started', '?')})"
    return f"{who} is {doing}; wait for it or remove {path} if it is not running"


@contextlib.contextmanager
def hold_lock(path: str | os.PathLike, tool: str, doing: str, dir_fd: int | None = None) -> Iterator[Path]:
    """Hold the lock file ``path`` while the block runs: a second run that asks for it refuses.

    Created with O_EXCL, it records pid, host, ``tool`` and start time. A lock whose process is dead (same host), or
    that has had no readable owner for UNREADABLE_LOCK_STALE_S, is stale and taken over, so a killed run never leaves
    it stuck. Removed on exit if it is still this run's. LockHeldError (one sentence: who is ``doing`` what, e.g.
    "changing dataset") when another run holds it or it cannot be created. With ``dir_fd`` (a descriptor of the
    lock's folder, open) every step uses the name ``path.name`` in that folder; ``path`` only names it in messages.
    """
    path = Path(path)
    name = path if dir_fd is None else Path(path.name)
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "tool": tool, "started": utc_now()}).encode()
    for _ in range(5):
        try:
            descriptor = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=dir_fd)
        except FileExistsError:
            owner, text = lock_owner(name, dir_fd)
            if _is_stale_lock(name, owner, dir_fd):
                _take_over_lock(name, text, dir_fd)
                continue
            raise LockHeldError(_lock_held_message(path, owner, doing)) from None
        except OSError as error:
            raise LockHeldError(f"cannot create the lock {path} ({error.strerror or error})") from None
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(record)
            handle.flush()
            os.fsync(handle.fileno())
        break
    else:
        raise LockHeldError(_lock_held_message(path, lock_owner(name, dir_fd)[0], doing))
    try:
        yield path
    finally:
        if lock_owner(name, dir_fd)[1].encode() == record:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)


if __name__ == "__main__":
    import cli

    cli.refuse_running_as_script(__file__, "see README.md")
