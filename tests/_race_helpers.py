"""A folder swapper for race tests (BAD_INPUTS 27): a thread that exchanges a dataset folder with a symlink to outside.

Imported by tests/test_trash.py, tests/test_review_safety.py and tests/test_remove_duplicates.py. On Linux the swap
is one atomic ``renameat2(RENAME_EXCHANGE)`` through ctypes, the attack issue 17 used; elsewhere two plain renames do
the same job less atomically.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

AT_FDCWD = -100  # "relative to the working directory" for the *at() calls
RENAME_EXCHANGE = 2  # linux/fs.h: swap the two names atomically


def _renameat2() -> ctypes._CFuncPtr | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


class FolderSwapper:
    """``with FolderSwapper(real_folder, link_to_outside):`` swaps the two names as fast as it can until the block ends.

    On exit the names are back in their places. ``swaps`` counts the exchanges made, so a test can show the race ran.
    While it runs, the interpreter switches threads every 20 microseconds instead of every 5 ms, and the block starts
    only after the first exchange: on a loaded machine the race still interleaves with short work (CI once saw 2
    exchanges in a whole block with the defaults).
    """

    SWITCH_INTERVAL_S = 2e-5
    START_TIMEOUT_S = 5.0

    def __init__(self, folder: Path, link: Path) -> None:
        self.folder, self.link = os.fsencode(folder), os.fsencode(link)
        self.swaps, self.stop, self.renameat2 = 0, threading.Event(), _renameat2()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _exchange(self) -> None:
        if self.renameat2 is not None:
            if self.renameat2(AT_FDCWD, self.folder, AT_FDCWD, self.link, RENAME_EXCHANGE) == 0:
                self.swaps += 1
                return
            if ctypes.get_errno() not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                return  # a passing failure: try again
            self.renameat2 = None  # not supported here (old kernel, odd filesystem): fall back
        aside = self.folder + b".swap"
        os.rename(self.folder, aside)
        os.rename(self.link, self.folder)
        os.rename(aside, self.link)
        self.swaps += 1

    def _run(self) -> None:
        while not self.stop.is_set():
            self._exchange()
            time.sleep(0)  # give the run under attack the GIL: as often in the swapped state as in the real one

    def __enter__(self) -> FolderSwapper:
        self.interval = sys.getswitchinterval()
        sys.setswitchinterval(self.SWITCH_INTERVAL_S)
        self.thread.start()
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while self.swaps == 0 and time.monotonic() < deadline:
            time.sleep(0.0001)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        sys.setswitchinterval(self.interval)
        if os.path.islink(self.folder):
            self._exchange()  # the real folder back at its name


def race_every_move(monkeypatch: Any, folder: Path, link: Path) -> list[int]:
    """Make trash.apply and trash.undo run while ``folder`` and ``link`` swap: the race starts after a tool's own
    checks, when files move. Returns the list of swap counts, one per apply or undo, to show the race ran."""
    import trash

    counts: list[int] = []

    def racing(function: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **options: Any) -> Any:
            with FolderSwapper(folder, link) as swapper:
                try:
                    return function(*args, **options)
                finally:
                    counts.append(swapper.swaps)

        return run

    monkeypatch.setattr(trash, "apply", racing(trash.apply))
    monkeypatch.setattr(trash, "undo", racing(trash.undo))
    return counts
