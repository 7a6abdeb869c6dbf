"""The images an HTML report shows: each found safely inside the dataset, hashed, and given a cached thumbnail.

Imported by html_report.py, not a script. A report names images by relative path; ``locate`` turns such a path into a
file only when it is a regular file really inside the dataset (no '..', no absolute path, no symlinked folder or link
leading out), and says why not otherwise. ``Catalog`` gives every image the page shows one entry (an image in several
sections shares it, and so shares one decision), with its SHA-256 for the decisions file and a JPEG thumbnail in
``<page name>_files/thumbs/``, named by path, size and modification time, so a rebuild reuses what did not change and
``remove_stale_thumbs`` deletes only this module's own files that the page no longer uses. Images are read by
classifier.py's rules (upright, alpha on white, decompression bombs refused), imported only when a thumbnail is made.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cli
import fileio

THUMB_PIXELS = 160  # longer side of a thumbnail: enough to judge a label
THUMB_QUALITY = 80  # with THUMB_PIXELS: 4-7 KB a photo (measured 4.1, 4.9, 6.5 KB on three 640x427/512x600 photos)
THUMB_NAME = re.compile(r"^[0-9a-f]{20}\.jpg$")  # the only files this module ever removes (its own stale thumbnails)
PROC_FD = Path("/proc/self/fd")  # Linux: an open file's path, so classifier.load_image reads exactly that file
THUMB_TEMP_NAME = re.compile(r"^\.[0-9a-f]{20}\.jpg\.\w+\.tmp$")  # and its half-written ones (fileio's), once old


def locate(dataset_dir: Path, relative: Any) -> tuple[Path | None, str | None]:
    """(the file, None) when ``relative`` names a regular file really inside the dataset; else (None, why not)."""
    if not isinstance(relative, str) or not fileio.is_safe_relative(relative):
        return None, "outside the dataset: not shown"
    try:
        path = fileio.resolve_inside(dataset_dir, relative)
    except fileio.UnsafePathError:
        return None, "outside the dataset (through a symlinked folder): not shown"
    if not os.path.lexists(path):
        return None, "no longer on disk"
    if not fileio.is_inside(path, dataset_dir):
        return None, "a link to a file outside the dataset: not shown"
    reason = fileio.regular_file_reason(path.resolve())
    if reason:
        return None, f"{reason}: not shown"
    return path, None


def open_thumbs_folder(thumbs_dir: Path, create: bool = True) -> int:
    """A descriptor of ``<page folder>/<page>_files/thumbs``: the page folder as named, the two folders below it each
    opened without following a link (created when ``create``). Every thumbnail is read, written and removed relative to
    it, so neither folder can be swapped for a symlink to outside between html_report's check and a write.

    OSError (ELOOP or ENOTDIR for a link or a file in their place) when it cannot be opened.
    """
    page_folder = os.open(thumbs_dir.parent.parent, os.O_RDONLY | os.O_DIRECTORY | fileio.CLOEXEC)
    try:
        return fileio.open_folder_below(page_folder, (thumbs_dir.parent.name, thumbs_dir.name), create)
    finally:
        os.close(page_folder)


def open_located(dataset_dir: Path, path: Path) -> int:
    """A read-only descriptor of the file ``locate`` found, reached from the dataset folder by its real names, none
    followed (fileio.open_folder_below), so what is hashed and shown is the file that was checked even when a class
    folder is swapped for a link to outside meanwhile. OSError, or ValueError when its real path has left the dataset.
    """
    real_root = dataset_dir.resolve()
    parts = path.resolve().relative_to(real_root).parts
    root = os.open(real_root, os.O_RDONLY | os.O_DIRECTORY | fileio.CLOEXEC)
    try:
        folder = fileio.open_folder_below(root, parts[:-1])
    finally:
        os.close(root)
    try:
        descriptor = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | fileio.CLOEXEC, dir_fd=folder)
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise OSError(f"{path} is not a regular file now")
    return descriptor


def write_thumbnail(source: Path, name: str, folder: int) -> tuple[int, int]:
    """The JPEG ``name`` in the open folder ``folder``, at most THUMB_PIXELS a side, read by classifier.py's rules
    (upright, alpha on white, bombs refused); returns its size.

    Written through fileio.atomic_write (an exclusive temp name, renamed over whatever is at ``name``, a planted
    symlink included, never through it), so a half-written thumbnail is never used; not fsynced: it is a cache, made
    again if lost, and an fsync per thumbnail took more than half the time of a first build.
    """
    import classifier

    thumbnail = classifier.load_image(source, draft_size=(THUMB_PIXELS, THUMB_PIXELS))
    thumbnail.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
    buffer = io.BytesIO()
    thumbnail.save(buffer, "JPEG", quality=THUMB_QUALITY)
    with fileio.atomic_write(name, "wb", fsync=False, dir_fd=folder) as handle:
        handle.write(buffer.getvalue())
    return thumbnail.size


def own_thumbnail_size(name: str, folder: int) -> tuple[int, int] | None:
    """The size of the thumbnail ``name`` in ``folder`` when it is one this module wrote, else None (written again).

    Ours means: a regular file, not a symbolic link (opened with O_NOFOLLOW, so one swapped in meanwhile fails too),
    with one name (a hard link planted there would share an outside file's bytes) and owned by this user. Anything
    else at the predictable name, such as a link to an image outside the dataset, is never shown.
    """
    try:
        descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except OSError:
        return None
    with open(descriptor, "rb") as handle:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != os.geteuid():
            return None
        from PIL import Image

        try:
            with Image.open(handle) as image:
                return image.size
        except OSError:  # damaged (a killed run cannot leave one, but a disk can): written again
            return None


@dataclass
class Shown:
    """An image the page shows: where it is, or why it is not shown."""

    index: int
    path: str
    split: str | None
    class_name: str | None
    problem: str | None = None
    href: str | None = None
    thumb: str | None = None
    size: tuple[int, int] = (THUMB_PIXELS, THUMB_PIXELS)
    sha256: str | None = None


@dataclass
class Catalog:
    """Every image the page shows, once each (an image in several sections shares one entry and one decision)."""

    dataset_dir: Path
    page_dir: Path
    thumbs_dir: Path
    images: dict[str, Shown] = field(default_factory=dict)
    unreadable: int = 0
    bar: Any = None  # a cli.progress bar counting the images read (drawn only on a terminal)

    def add(self, relative: Any) -> Shown:
        key = relative if isinstance(relative, str) else repr(relative)
        if key in self.images:
            return self.images[key]
        parts = key.split("/")
        shown = Shown(len(self.images), key, parts[0] if len(parts) > 2 else None, parts[1] if len(parts) > 2 else None)
        self.images[key] = shown
        if self.bar is not None:
            self.bar.update()
        path, shown.problem = locate(self.dataset_dir, relative)
        if path is None:
            return shown
        shown.href = link_to(path, self.page_dir)
        try:
            descriptor = open_located(self.dataset_dir, path)
        except (OSError, ValueError):
            shown.problem = "changed while the page was built (a folder on its way was replaced): not shown"
            return shown
        try:
            with open(descriptor, "rb") as handle:
                info = os.fstat(descriptor)
                shown.sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
                stamp = f"{key}\0{info.st_size}\0{info.st_mtime_ns}".encode(errors="surrogateescape")
                name = hashlib.sha256(stamp).hexdigest()
                thumb = f"{name[:20]}.jpg"
                source = Path(f"/proc/self/fd/{descriptor}") if PROC_FD.is_dir() else path  # the file checked
                folder = open_thumbs_folder(self.thumbs_dir)
                try:
                    shown.size = own_thumbnail_size(thumb, folder) or write_thumbnail(source, thumb, folder)
                finally:
                    os.close(folder)
            shown.thumb = link_to(self.thumbs_dir / thumb, self.page_dir)
        except Exception as error:  # noqa: BLE001 - one unreadable image must not stop the page
            shown.thumb = None
            shown.problem = f"unreadable ({cli.printable(str(error) or type(error).__name__)})"
            self.unreadable += 1
        return shown

    def used_thumbs(self) -> set[str]:
        return {Path(urllib.parse.unquote(image.thumb)).name for image in self.images.values() if image.thumb}


def link_to(path: Path, page_dir: Path) -> str:
    """A relative URL from the page's folder to ``path`` (percent-encoded, non-UTF-8 bytes kept)."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(page_dir))
    return urllib.parse.quote(os.fsencode(Path(relative).as_posix()), safe="/")


def remove_stale_thumbs(thumbs_dir: Path, keep: set[str]) -> None:
    """Delete this script's thumbnails that no image of the page uses any more (only names it creates, only regular
    files, relative to the folder opened by ``open_thumbs_folder``: never a file elsewhere through a swapped link)."""
    cutoff = time.time() - fileio.STALE_TEMP_SECONDS
    try:
        folder = open_thumbs_folder(thumbs_dir, create=False)
    except OSError:
        return  # no thumbnails folder (or not a real one): nothing of ours to remove
    try:
        for name in os.listdir(folder):
            with contextlib.suppress(OSError):
                info = os.stat(name, dir_fd=folder, follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and (
                    (THUMB_NAME.match(name) and name not in keep)
                    or (THUMB_TEMP_NAME.match(name) and info.st_mtime < cutoff)
                ):
                    os.unlink(name, dir_fd=folder)
    finally:
        os.close(folder)


if __name__ == "__main__":
    cli.refuse_running_as_script(__file__, "run html_report.py")
