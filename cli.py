"""The command-line convention every birdplane script follows, written once.

Imported by every script except classifier.py (which imports nothing of ours); not a script. Standard library and
tqdm only.

- Exit codes (one table for every script): 0 done, 1 done but some inputs unusable (reported), 2 usage error or
  unusable input (one sentence), 130 interrupted.
- One error printer: ``error(message)`` writes ``error: <message>`` on stderr and returns EXIT_USAGE; a sibling module
  run as a script ends with ``refuse_running_as_script`` (one such line, exit 2).
- One verbosity flag and one progress switch: ``add_output_flags(parser)`` adds ``-v/--verbose`` and
  ``--no-progress``; ``apply_output_flags(args)`` acts on them (only scripts' ``main`` calls it).
- Progress on stderr: ``progress(iterable, ...)`` draws a tqdm bar on a terminal; into a log file or a pipe it writes
  a plain line (the bar's text) at least every PROGRESS_LINE_SECONDS of long work, and nothing for short work.
- One piece of advice after Ctrl-C, the same in every script that can carry on: ``CARRY_ON_ADVICE``.
- Report flags are named the same way everywhere: ``add_report_flag(parser, ...)`` adds ``--report`` and keeps a
  script's old spellings as hidden aliases so existing commands still work.
- Everything printed that holds a file name goes through ``printable`` so control and right-to-left characters
  cannot spoof a listing; a value read from a file goes through ``short_repr`` or ``shown``, cut to
  MAX_SHOWN_CHARACTERS (a crafted field of megabytes is named by its length, never echoed whole).
- One yes/no question before a change: ``confirm(question)`` (no unless the answer is y or yes; end of input is no).
- Warnings about the bad lines or records of one file are capped: ``CappedWarnings`` says the first
  MAX_WARNINGS_PER_FILE, then one line counting the rest.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn, TypeVar

EXIT_OK = 0  # done
EXIT_PARTIAL = 1  # done, but some inputs were unusable (each reported by path with the reason)
EXIT_USAGE = 2  # usage error or unusable input (one sentence on stderr); nothing was changed
EXIT_INTERRUPTED = 130  # Ctrl-C: the shell's convention (128 + SIGINT)
CARRY_ON_ADVICE = (  # what an interrupted trainer and an interrupted pipeline both say, word for word
    "Run the same command again to carry on; train_classifier.py needs --resume added, run_pipeline.py resumes by "
    "itself."
)
PROGRESS_LINE_SECONDS = 30.0  # without a terminal, a plain progress line this often: a log shows the run is alive
MAX_WARNINGS_PER_FILE = 5  # bad lines of one file named one by one; the rest are counted in one line: a damaged or
# crafted file of a million bad lines would otherwise print a million warnings (about 90 MB)
EXIT_CODES_HELP = (
    "exit codes: 0 done, 1 done but some inputs unusable, 2 usage error or unusable input, 130 interrupted"
)

T = TypeVar("T")


def printable(text: Any) -> str:
    """``text`` with control, format (bidi overrides, zero-width) and surrogate characters escaped, for printing.

    A file name such as ``"a\\nb.jpg"`` or one with U+202E cannot break a listing into false lines or reverse it; a
    non-UTF-8 name (lone surrogates) is shown as ``\\xff`` escapes. Ordinary letters of any script are left alone.
    """
    text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    out = []
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            code = ord(char)
            if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by Python's surrogateescape
                out.append(f"\\x{code - 0xDC00:02x}")
            elif code <= 0xFF:
                out.append(f"\\x{code:02x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


MAX_SHOWN_CHARACTERS = 200  # of a value from a file in a message: enough to recognise it, never megabytes


def short_repr(value: Any, limit: int = MAX_SHOWN_CHARACTERS) -> str:
    """repr(value) for a message, cut to ``limit`` characters with the whole length named: a crafted or damaged file
    may put megabytes in one field. repr shows control and right-to-left characters escaped."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python converts to text
        text = "an integer too long to show"
    return _cut(text, limit)


def shown(text: Any, limit: int = MAX_SHOWN_CHARACTERS) -> str:
    """``printable(text)`` cut to ``limit`` characters: text from a file (a tool name, a reason) in a message."""
    return _cut(printable(text), limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def error(message: str) -> int:
    """Print ``error: <message>`` on stderr (the one format every script uses) and return EXIT_USAGE."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def refuse_running_as_script(module_file: str, instead: str, imported_by: str = "the birdplane scripts") -> NoReturn:
    """What a sibling module does when run as ``python module.py``: one ``error:`` line saying what it is and what to
    run ``instead``, exit EXIT_USAGE (2: a usage error). Called from its ``if __name__ == "__main__":`` block."""
    name = os.path.basename(module_file)
    raise SystemExit(error(f"{name} is a module imported by {imported_by}, not a script; {instead}"))


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose`` and ``--no-progress``: the same two switches in every script."""
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail on stderr (default: off)")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress output (default: bars on a terminal, a plain line every 30 s of long work in a log)",
    )


def add_report_flag(
    parser: argparse.ArgumentParser | Any,
    help_text: str,
    aliases: Sequence[str] = (),
    **options: Any,
) -> None:
    """``--report PATH`` with ``help_text``; each old spelling in ``aliases`` still works but is hidden from --help."""
    parser.add_argument("--report", dest="report", help=help_text, **options)
    for alias in aliases:
        parser.add_argument(
            alias, dest="report", help=argparse.SUPPRESS, **{k: v for k, v in options.items() if k != "default"}
        )


class CappedWarnings:
    """The warnings about one file's bad lines or records: the first ``limit`` logged, then one line counting the rest.

    ``with CappedWarnings(logger, "download_manifest.jsonl", "such lines skipped") as warn: warn("line %d ...", n)``
    ends with ``download_manifest.jsonl: ... and 99995 more such lines skipped`` when there were 100,000.
    """

    def __init__(self, logger: logging.Logger, where: str, more: str, limit: int = MAX_WARNINGS_PER_FILE) -> None:
        self.logger, self.where, self.more, self.limit = logger, where, more, limit
        self.count = 0

    def __call__(self, message: str, *args: Any) -> None:
        self.count += 1
        if self.count <= self.limit:
            self.logger.warning(message, *args)

    def __enter__(self) -> CappedWarnings:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.count > self.limit:
            self.logger.warning("%s: ... and %d more %s", self.where, self.count - self.limit, self.more)


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with --verbose) as ``LEVEL: message`` on stderr; called once, from a script's ``main``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


_progress_enabled = True


def apply_output_flags(args: argparse.Namespace) -> None:
    """Act on ``add_output_flags``' two switches: logging level from ``-v``, bars off with ``--no-progress``."""
    setup_logging(args.verbose)
    set_progress(not args.no_progress)


def set_progress(enabled: bool) -> None:
    """Turn progress bars off for this process (``--no-progress``)."""
    global _progress_enabled
    _progress_enabled = enabled


def _plain_progress_class() -> type:
    """tqdm for a log file or a pipe: no bar redrawn with carriage returns, one plain line of the bar's text each
    time PROGRESS_LINE_SECONDS have passed since the last (none at the start or end of short work)."""
    from tqdm import tqdm

    class PlainProgress(tqdm):
        monitor_interval = 0  # no monitor thread: every update checks the clock (at most once a second)

        def __init__(self, *args: Any, **options: Any) -> None:
            self._line_at: float | None = None
            super().__init__(*args, **{**options, "leave": False})  # close() then only "clears" (see display)

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            now = self._time()
            if self._line_at is None:
                self._line_at = now
            elif msg is None and now - self._line_at >= PROGRESS_LINE_SECONDS:
                self._line_at = now
                self.fp.write(f"{self}\n")
                self.fp.flush()
            return False  # nothing on screen to clear or move past: tqdm writes no carriage return after it

        def clear(self, nolock: bool = False) -> None:
            """Nothing to clear in a log (tqdm.write calls this around each line it writes)."""

    return PlainProgress


def progress_wanted() -> bool:
    """True when bars should be drawn: not switched off and stderr is a terminal (never into a log file)."""
    return _progress_enabled and sys.stderr.isatty()


def progress(iterable: Iterable[T] | None = None, **options: Any) -> Any:
    """A tqdm bar on stderr when ``progress_wanted()``; without a terminal plain lines for long work (see
    ``_plain_progress_class``); with --no-progress tqdm's no-op (same interface, draws nothing)."""
    from tqdm import tqdm

    if _progress_enabled and not sys.stderr.isatty():
        options = {"ascii": True, "miniters": 1, "mininterval": min(1.0, PROGRESS_LINE_SECONDS), **options}
        return _plain_progress_class()(iterable, file=sys.stderr, **options)
    return tqdm(iterable, disable=not progress_wanted(), file=sys.stderr, **options)


def confirm(question: str) -> bool:
    """Ask ``<question> [y/N]`` on stdin; True only for y or yes, so Enter and end of input (EOF) mean no.

    Ctrl-C is not caught: KeyboardInterrupt reaches the script, which says nothing was changed and exits 130.
    """
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        print()  # end the prompt's line, so what follows starts on its own
        return False


if __name__ == "__main__":
    refuse_running_as_script(__file__, "see README.md")
