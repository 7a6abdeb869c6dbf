"""Tests of duplicate_report.py, the report's format: every reader (the remover, the HTML page, the pipeline's counts)
refuses the same reports with the same sentence, and accepts what the detectors write."""

from __future__ import annotations

import copy
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import remove_duplicates
from conftest import tree_snapshot

import duplicate_report as dr
import fileio
import html_report
import run_pipeline


def entry(dataset: Path, relative: str) -> dict:
    info = os.stat(dataset / relative)
    set_name, class_name = relative.split("/")[:2]
    return {"path": relative, "size": info.st_size, "mtime_ns": info.st_mtime_ns, "set": set_name,
            "class": class_name, "width": 4, "height": 4}  # fmt: skip


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Two byte-identical files in train/bird and a third in train/plane; a valid report grouping the bird pair."""
    folder = tmp_path / "dataset"
    for relative in ("train/bird/a.jpg", "train/bird/b.jpg", "train/plane/c.jpg"):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(b"same bytes" if "bird" in relative else b"other bytes")
    return folder


def valid_report(dataset: Path) -> dict:
    files = [entry(dataset, "train/bird/a.jpg"), entry(dataset, "train/bird/b.jpg")]
    groups = {category: [] for category in dr.CATEGORIES}
    groups["same_class_and_set"].append({"id": 1, "category": "same_class_and_set", "files": files})
    return {"schema_version": 1, "method": "filesize", "dataset_dir": str(dataset), "duplicate_groups": groups}


def broken(report: dict, dataset: Path, disagreement: str) -> dict:
    """The report with one of the flaws the four old readers disagreed about."""
    report = copy.deepcopy(report)
    groups = report["duplicate_groups"]
    group = groups["same_class_and_set"][0]
    if disagreement == "one_file_group":  # the page and the remover refused it; the detectors' check and counts not
        del group["files"][1]
    elif disagreement == "unknown_category":  # the detectors' check refused it, the page skipped it, counts kept it
        groups["near_copies"] = []
    elif disagreement == "wrong_type":  # only the remover checked value types
        group["files"][0]["width"] = "abc"
    elif disagreement == "category_not_its_files":  # only the remover compared the category with the files
        group["files"][1] = entry(dataset, "train/plane/c.jpg")
    elif disagreement == "group_not_an_object":  # counted as a group by the pipeline
        groups["same_class_diff_set"] = [5]
    elif disagreement == "old_schema":  # the pipeline read any version
        report["schema_version"] = 0
    elif disagreement == "same_id_twice":  # only the remover required distinct ids
        groups["same_class_diff_set"] = [{**group, "id": 1, "category": "same_class_diff_set"}]
        groups["same_class_diff_set"][0]["files"] = [entry(dataset, "train/bird/a.jpg"), {**entry(dataset,
                                                     "train/bird/b.jpg"), "set": "val"}]  # fmt: skip
    return report


SENTENCES = {  # the words of the one refusal every reader gives
    "one_file_group": "duplicate_groups.same_class_and_set[0].files must be a list of at least two files (it has 1)",
    "unknown_category": "duplicate_groups.near_copies must be one of same_class_and_set",
    "wrong_type": "duplicate_groups.same_class_and_set[0].files[0].width must be a whole number (it is 'abc')",
    "category_not_its_files": "same_class_and_set[0].category must be 'diff_class_same_set' (its files' classes and",
    "group_not_an_object": "duplicate_groups.same_class_diff_set[0] must be a group object (it is 5)",
    "old_schema": "schema_version must be 1 (run the detector again) (it is 0)",
    "same_id_twice": "same_class_diff_set[0].id must be a whole number no other group has (it is 1)",
}


def readers(dataset: Path, report_path: Path, capsys: pytest.CaptureFixture) -> dict[str, tuple[bool, str]]:
    """{reader: (accepted, what it said)} for the remover (a dry run), the page and the pipeline's counts."""
    code = remove_duplicates.main(["--report", str(report_path), "--dataset-dir", str(dataset), "--strategy", "safe"])
    said = capsys.readouterr()
    remover = (code != 2, said.err)
    output = dataset.parent / "page.html"
    html_report.main(["--dataset-dir", str(dataset), "--models-dir", str(dataset.parent / "models"), "--report",
                      str(output)])  # fmt: skip
    capsys.readouterr()
    page_text = html.unescape(output.read_text(encoding="utf-8"))
    page = ("Unusable:" not in page_text, page_text)
    counts = run_pipeline.read_groups(report_path)
    pipeline = (counts is not None, json.dumps(counts))
    return {"remover": remover, "page": page, "pipeline": pipeline}


def test_a_valid_report_is_read_alike_by_every_reader(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    report_path = dataset / dr.report_name("filesize")
    fileio.write_json(report_path, valid_report(dataset))
    seen = readers(dataset, report_path, capsys)
    assert all(accepted for accepted, _ in seen.values())
    assert run_pipeline.read_groups(report_path) == {**dict.fromkeys(dr.CATEGORIES, 0), "same_class_and_set": 1}
    assert "Group 1: 2 files" in seen["page"][1]


@pytest.mark.parametrize("disagreement", sorted(SENTENCES))
def test_every_reader_refuses_the_same_reports_with_the_same_sentence(
    dataset: Path, disagreement: str, capsys: pytest.CaptureFixture
) -> None:
    """Issue 16: the remover, the page, the pipeline and the detectors' check each had their own idea of a valid
    report (only two required two files per group). Now one validator decides, for all of them."""
    report_path = dataset / dr.report_name("filesize")
    fileio.write_json(report_path, broken(valid_report(dataset), dataset, disagreement))
    before = tree_snapshot(dataset)
    seen = readers(dataset, report_path, capsys)
    assert not any(accepted for accepted, _ in seen.values()), seen
    assert SENTENCES[disagreement] in seen["remover"][1] and seen["remover"][1].startswith("error: ")
    assert SENTENCES[disagreement] in seen["page"][1]
    with pytest.raises(fileio.ReportError, match=re.escape(SENTENCES[disagreement])):
        dr.load_report(report_path)
    after = tree_snapshot(dataset)  # nothing in the dataset changed (the page may add its own files)
    assert {path: after.get(path) for path in before} == before


def test_categories_follow_classes_and_sets() -> None:
    def files(*pairs: tuple[str, str]) -> list[dict]:
        return [{"set": set_name, "class": class_name} for set_name, class_name in pairs]

    assert dr.categorize(files(("train", "bird"), ("train", "bird"))) == "same_class_and_set"
    assert dr.categorize(files(("train", "bird"), ("val", "bird"))) == "same_class_diff_set"
    assert dr.categorize(files(("train", "bird"), ("train", "plane"))) == "diff_class_same_set"
    assert dr.categorize(files(("train", "bird"), ("val", "plane"))) == "diff_class_diff_set"
    assert set(dr.CONFLICT_CATEGORIES) | {dr.COPY_CATEGORY, dr.LEAK_CATEGORY} == set(dr.CATEGORIES)


def test_the_format_module_is_standard_library_only() -> None:
    code = "import sys; sys.path[:0] = [sys.argv[1]]; import duplicate_report; print(sorted(m for m in ('numpy', 'PIL', 'torch') if m in sys.modules))"  # noqa: E501
    result = subprocess.run([sys.executable, "-c", code, str(Path(dr.__file__).parent)], capture_output=True, text=True)
    assert result.stdout.strip() == "[]"
