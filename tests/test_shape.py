"""The project's shape, as the developers' guide states it: scripts are imported only by run_pipeline.py, and no
module grows past what one reading can hold (classifier.py, the one file people copy whole, a little more)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

SOURCES = sorted([*ROOT.glob("*.py"), *(ROOT / "data_collection").glob("*.py")])
SCRIPTS = {path.stem for path in SOURCES if "\ndef main(" in path.read_text(encoding="utf-8")}
MAX_LINES = {"classifier.py": 1100}  # every other module: 900


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_the_scripts_are_found() -> None:
    assert {"train_classifier", "run_pipeline", "remove_duplicates", "download_images", "classifier"} <= SCRIPTS


@pytest.mark.parametrize("path", [path for path in SOURCES if path.name != "run_pipeline.py"], ids=lambda p: p.name)
def test_no_module_but_the_pipeline_imports_a_script(path: Path) -> None:
    # classifier.py is also the one definition of the model, preprocessing and checkpoint (the guide says so);
    # search_queries.py is the default queries' data file, with a small CLI that prints or checks them
    allowed = {"classifier", "search_queries"}
    assert imported_names(path) & (SCRIPTS - allowed - {path.stem}) == set()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_module_is_longer_than_one_reading(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES.get(path.name, 900), f"{path.name} has {lines} lines"


@pytest.mark.parametrize("name", sorted(SCRIPTS), ids=str)
def test_every_script_has_the_switches_the_readme_promises(name: str) -> None:
    # README "Command-line convention": every script takes -v/--verbose and --no-progress
    import importlib

    parser = importlib.import_module(name).get_args_parser()
    options = {option for action in parser._actions for option in action.option_strings}
    assert {"-v", "--verbose", "--no-progress"} <= options, f"{name}.py lacks one of them"
