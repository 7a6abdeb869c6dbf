"""The docs keep their promises: README.md stays within 16,000 bytes, and every `python SCRIPT ...` command in a shell
block of README.md or USAGE_EXAMPLES.md parses with that script's own parser (flags renamed or removed fail here)."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest
from conftest import ROOT

DOCS = ("README.md", "USAGE_EXAMPLES.md")
README_MAX_BYTES = 16_000  # the developers' guide's limit: explanations go to USAGE_EXAMPLES.md
SHELL_END = re.compile(r"\s(?:#|\||>|2>|&&|;)")  # a comment, pipe, redirection or next command ends the arguments


def shell_blocks(text: str) -> list[tuple[str, str]]:
    """(body, language) of the ```bash, ```text and unlabelled fenced blocks, line continuations joined."""
    blocks, body, language, inside = [], [], "", False
    for line in text.splitlines():
        if line.startswith("```"):
            if inside and language in ("", "bash", "sh", "text"):
                blocks.append(("\n".join(body).replace("\\\n", " "), language))
            body, language, inside = [], line[3:].strip(), not inside
        elif inside:
            body.append(line)
    return blocks


def documented_commands() -> list[tuple[str, str, str]]:
    """(doc, script path, argument text) of each `python SCRIPT.py ...` command of our own scripts."""
    found = []
    for doc in DOCS:
        for block, language in shell_blocks((ROOT / doc).read_text(encoding="utf-8")):
            for line in block.splitlines():  # in a ```text block (a transcript) only the "$ python" lines
                prompt = r"\$ " if language == "text" else r"(?:\$ )?"
                match = re.match(prompt + r"python3? (\S+\.py)(.*)", line.strip())
                if match and (ROOT / match.group(1)).is_file() and not match.group(1).startswith("benchmarks/"):
                    found.append((doc, match.group(1), SHELL_END.split(" " + match.group(2))[0]))
    return found


def test_readme_stays_within_its_size() -> None:
    assert (ROOT / "README.md").stat().st_size <= README_MAX_BYTES


def test_the_docs_show_many_commands() -> None:
    assert len(documented_commands()) >= 90  # the extraction still finds them


@pytest.mark.parametrize("doc, script, arguments", documented_commands(), ids=lambda value: str(value)[:60])
def test_every_documented_command_parses(doc: str, script: str, arguments: str) -> None:
    parser = importlib.import_module(Path(script).stem).get_args_parser()
    parse = parser.parse_intermixed_args if script == "classifier.py" else parser.parse_args
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parse(shlex.split(arguments))
    except SystemExit as stop:
        assert not stop.code, f"{doc}: python {script}{arguments}: {stderr.getvalue().strip().splitlines()[-1]}"
