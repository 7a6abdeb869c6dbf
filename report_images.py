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

import hashlib
import io
import os
import re
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
THUMB_TEMP_NAME = re.compile(r"^\.[0-9a-f]{20}\.jpg\.\d+\.tmp$")  # and its half-written ones, once old


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


def write_thumbnail(source: Path, destination: Path) -> tuple[int, int]:
    """A JPEG of at most THUMB_PIXELS a side, read by classifier.py's rules (upright, alpha on white, bombs refused).

    Written to a temp name and renamed, so a half-written thumbnail is never used; not fsynced: it is a cache, made
    again if lost, and an fsync per thumbnail took more than half the time of a first build.
    """
    import classifier

    thumbnail = classifier.load_image(source, draft_size=(THUMB_PIXELS, THUMB_PIXELS))
    thumbnail.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
    buffer = io.BytesIO()
    thumbnail.save(buffer, "JPEG", quality=THUMB_QUALITY)
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}{fileio.TEMP_SUFFIX}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary.unlink(missing_ok=True)  # a leftover, or a link planted at this guessable name: never written through
    try:
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        with os.fdopen(handle, "wb") as file:
            file.write(buffer.getvalue())
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)
    return thumbnail.size


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
            info = path.stat()
            shown.sha256 = fileio.sha256_file(path)
            stamp = f"{key}\0{info.st_size}\0{info.st_mtime_ns}".encode(errors="surrogateescape")
            name = hashlib.sha256(stamp).hexdigest()
            thumb = self.thumbs_dir / f"{name[:20]}.jpg"
            if fileio.is_regular_file(thumb, follow_symlinks=False):  # a link planted at the name is replaced
                from PIL import Image

                with Image.open(thumb) as image:
                    shown.size = image.size
            else:
                shown.size = write_thumbnail(path, thumb)
            shown.thumb = link_to(thumb, self.page_dir)
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
    """Delete this script's thumbnails that no image of the page uses any more (only names it creates)."""
    cutoff = time.time() - fileio.STALE_TEMP_SECONDS
    for path in thumbs_dir.iterdir() if thumbs_dir.is_dir() else []:
        if not fileio.is_regular_file(path, follow_symlinks=False):
            continue
        if (THUMB_NAME.match(path.name) and path.name not in keep) or (
            THUMB_TEMP_NAME.match(path.name) and path.lstat().st_mtime < cutoff
        ):
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit("report_images.py is imported by html_report.py, not a script; run html_report.py")
