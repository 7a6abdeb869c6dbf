"""html_report.py: the page from real detector reports, a problematic-images report and training files; bad reports;
and, in headless Chromium driven by selenium, console errors, counts, filters, decisions export, apply and undo.

The browser tests skip (saying why) where Chromium, its driver or selenium is missing; .ci/run installs them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import detect_duplicates_by_filesize
import download_manifest
import pytest
from conftest import ROOT, make_dataset, refused_bad_files, tree_snapshot, write_bad_files
from image_fetch import Candidate
from PIL import Image

import fileio
import html_report
import problematic_report
import report_downloads
import report_images
import review_problematic_images

CLASSES = ("bird", "plane", "superman")
COPY = ("train/bird/bird_000.jpg", "train/bird/bird_000_copy.jpg")  # plain copy
CONFLICT = ("train/bird/bird_001.jpg", "train/plane/bird_001.jpg")  # label conflict
LEAK = ("train/plane/plane_000.jpg", "val/plane/plane_000_leak.jpg")  # train/val leak
PROBLEMS = {  # path -> (suggested class, is a label issue, mean loss)
    "train/bird/bird_002.jpg": ("plane", True, 2.1),
    "train/plane/plane_001.jpg": ("bird", False, 0.9),
    "train/superman/superman_000.jpg": ("bird", True, 1.7),
    "train/superman/superman_001.jpg": ("plane", False, 0.4),
    "train/bird/bird_003.jpg": ("superman", False, 1.2),
}
COUNTS = {"train": {"bird": 5, "plane": 5, "superman": 4}, "val": {"bird": 2, "plane": 3, "superman": 2}}
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path(  # where a person looks at it: $BIRDPLANE_SCREENSHOT, else tests/artifacts/ (git ignores it)
    os.environ.get("BIRDPLANE_SCREENSHOT") or ROOT / "tests" / "artifacts" / "report_screenshot.png"
)


def problem_entry(path: str, suggested: str, is_issue: bool, loss: float, classes: tuple[str, ...]) -> dict[str, Any]:
    own = path.split("/")[1]
    probabilities = {name: 0.1 for name in classes}
    probabilities[suggested] = 0.7 if is_issue else 0.3
    probabilities[own] = round(1 - sum(value for name, value in probabilities.items() if name != own), 3)
    return {"path": path, "class": own, "mean_loss": loss, "losses": [loss + 0.3, loss, loss - 0.2],
            "suggested_class": suggested, "is_label_issue": is_issue, "given_label_probability": probabilities[own],
            "probabilities": probabilities, "predicted_class": suggested if is_issue else own}  # fmt: skip


def write_problematic(dataset: Path, problems: dict[str, tuple[str, bool, float]] = PROBLEMS) -> dict[str, Any]:
    per_class: dict[str, list[dict[str, Any]]] = {name: [] for name in CLASSES}
    for path, (suggested, is_issue, loss) in problems.items():
        per_class[path.split("/")[1]].append(problem_entry(path, suggested, is_issue, loss, CLASSES))
    report = {"schema_version": 1, "report_type": "problematic_images", "created": "2026-11-29T10:00:00+00:00",
              "dataset_dir": str(dataset), "arguments": {}, "classes": list(CLASSES), "analysis_epochs": 3,
              "method": "in-sample", "cross_val_folds": None, "num_images": 12, "class_thresholds": {},
              "summary_by_class": {}, "problematic_images": per_class, "errors": []}  # fmt: skip
    problematic_report.write_report(dataset / problematic_report.DEFAULT_NAME, report)
    return report


def write_training(models: Path, dataset: Path) -> dict[str, Any]:
    """training_metadata.json and error-analysis files in the layout train_classifier.py writes."""
    matrix = [[2, 0, 0], [1, 1, 0], [0, 0, 2]]
    epochs = [
        {"epoch": number, "train_loss": 1.2 / number, "val_loss": 1.0 / number, "train_accuracy": 0.4 * number,
         "val_accuracy": 0.35 * number, "macro_f1": 0.3 * number, "is_best": number == 2, "confusion_matrix": matrix,
         "per_class": {name: {"precision": 0.8, "recall": 0.7, "f1": 0.75, "support": 2} for name in CLASSES}}
        for number in (1, 2)
    ]  # fmt: skip
    thresholds = [{"threshold": t, "accuracy": 0.8 - t / 10, "sent_to_other": t / 2, "accepted_accuracy": 0.9}
                  for t in (0.5, 0.6, 0.7)]  # fmt: skip
    metadata = {"schema_version": 1, "status": "completed", "updated": "2026-11-29T10:00:00+00:00",
                "classes": list(CLASSES), "config": {"arch": "resnet18", "image_size": 64}, "epochs": epochs,
                "best_epoch": 2, "best_macro_f1": 0.6, "calibration": {"temperature": 1.3, "ece_before": 0.2,
                "ece_after": 0.05, "nll_before": 0.9, "nll_after": 0.7, "val_images": 6},
                "thresholds": thresholds, "recommended_threshold": 0.6,
                "class_counts": COUNTS}  # fmt: skip
    fileio.write_json(models / "training_metadata.json", metadata)
    error = {"image_path": "val/plane/plane_001.jpg", "true_label": "plane", "predicted_label": "bird",
             "confidence": 0.81, "all_probabilities": {}}  # fmt: skip
    fileio.write_json(
        models / "error_analysis" / "epoch_02" / "plane_errors.json",
        {"schema_version": 1, "epoch": 2, "true_class": "plane", "split": "val", "errors": [error]},
    )
    return metadata


def build_dataset(root: Path) -> dict[str, Any]:
    """A dataset with a plain copy, a label conflict and a leak; its exact-copy report; a problematic report; models."""
    dataset = make_dataset(root / "dataset", CLASSES, train_per_class=4, val_per_class=2, seed=21)
    for source, copy in (COPY, CONFLICT, LEAK):
        shutil.copyfile(dataset / source, dataset / copy)
    assert detect_duplicates_by_filesize.main(["--dataset-dir", str(dataset)]) == 0
    problems = write_problematic(dataset)
    metadata = write_training(root / "models", dataset)
    return {"dataset": dataset, "models": root / "models", "problems": problems, "metadata": metadata,
            "page": dataset / "report.html"}  # fmt: skip


def make_page(setup: dict[str, Any], *extra: str) -> int:
    argv = ["--dataset-dir", str(setup["dataset"]), "--models-dir", str(setup["models"]), *extra]
    return html_report.main(argv)


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Any]:
    return build_dataset(tmp_path)


def images_and_links(page: str) -> tuple[list[str], list[str]]:
    return re.findall(r'<img [^>]*src="([^"]*)"', page), re.findall(r'href="([^"]*)"', page)


# ------------------------------------------------------------------------------------------------ the page


def test_page_shows_every_section_with_the_reports_counts(setup) -> None:
    assert make_page(setup) == 0
    page = setup["page"].read_text(encoding="utf-8")
    for split, counts in COUNTS.items():
        for name, count in counts.items():
            assert f'id="count-{split}-{name}">{count}<' in page
    report = json.loads((setup["dataset"] / "duplicate_report_filesize.json").read_text(encoding="utf-8"))
    for category, groups in report["duplicate_groups"].items():
        assert f'data-count="{category}">{len(groups)}<' in page
    assert page.count('class="group"') == len(COPY + CONFLICT + LEAK) // 2
    order = re.findall(r'<span class="cat cat-(\w+)">', page)
    assert order == ["conflict", "leak", "copies"]  # worst first
    assert page.count("What each removal strategy would remove") == 3
    problems = page[page.index('id="problem-cards"') : page.index('id="training"')]
    assert problems.count('<figure class="card"') == len(PROBLEMS)
    paths = re.findall(r'<div class="path">([^<]*)</div>', problems)
    assert paths == ["train/bird/bird_002.jpg", "train/superman/superman_000.jpg", "train/bird/bird_003.jpg",
                     "train/plane/plane_001.jpg", "train/superman/superman_001.jpg"]  # fmt: skip # issues, then loss
    assert problems.count("<polyline") == len(PROBLEMS)  # a loss sparkline each
    issues, hard = problems.split('id="hard-examples"')
    assert issues.count('<figure class="card"') == 2 and hard.count('<figure class="card"') == 3  # apart
    assert "<details" in problems and "<details open" not in problems  # hard examples collapsed by default
    assert "suggested" not in hard and "more likely" not in hard  # a hard example names no other class
    assert "labelled bird, more likely <b>plane</b>" in issues and "p(plane) 0.70 &gt; p(bird) 0.20" in issues
    assert '<b id="recommended">0.60</b>' in page and "<tr class=recommended><td>0.60</td>" in page
    assert 'id="confusion"' in page and "val/plane/plane_001.jpg" in page  # a confident mistake of the best epoch
    assert page.count('<svg class="chart"') == 3
    glance = re.search(r'<nav class="glance">(.*?)</nav>', page).group(1)
    assert re.findall(r">([^<]+)</a>", glance) == [
        "21 images in 3 classes",
        "filesize: 3 duplicate groups (1 label conflict, 1 train/val leak)",
        "2 likely label issues (3 hard examples listed apart)",
        "val macro F1 0.600, recommended threshold 0.60",
    ]


def test_the_page_needs_no_server_and_no_network(setup) -> None:
    assert make_page(setup) == 0
    page = setup["page"].read_text(encoding="utf-8")
    images, links = images_and_links(page)
    assert images and all(src.startswith("report_files/thumbs/") for src in images)
    assert all(not re.match(r"[a-z]+:", link) or link == "data:," for link in links)  # relative links only
    assert "http://" not in page and "https://" not in page and '<link rel="stylesheet"' not in page
    assert all('loading="lazy"' in tag for tag in re.findall(r"<img [^>]*>", page))
    thumbs = sorted((setup["dataset"] / "report_files" / "thumbs").iterdir())
    assert len(thumbs) == len(set(images))
    for thumb in thumbs:
        with Image.open(thumb) as image:
            assert image.format == "JPEG" and max(image.size) <= report_images.THUMB_PIXELS


def test_thumbnails_no_longer_used_are_removed_and_nothing_else(setup) -> None:
    assert make_page(setup) == 0
    thumbs = setup["dataset"] / "report_files" / "thumbs"
    (thumbs / "notes.txt").write_text("mine")
    old_temp, new_temp = thumbs / f".{'a' * 20}.jpg.99.tmp", thumbs / f".{'b' * 20}.jpg.98.tmp"
    for temp in (old_temp, new_temp):
        temp.write_bytes(b"half a thumbnail")
    os.utime(old_temp, (time.time() - 2 * fileio.STALE_TEMP_SECONDS,) * 2)  # left by a run killed long ago
    before = {path.name for path in thumbs.glob("*.jpg")}
    write_problematic(setup["dataset"], {"train/bird/bird_002.jpg": ("plane", True, 2.0)})
    (setup["dataset"] / "duplicate_report_filesize.json").unlink()
    shutil.rmtree(setup["models"])
    assert make_page(setup) == 0
    after = {path.name for path in thumbs.glob("*.jpg")}
    assert len(after) == 1 and after < before and (thumbs / "notes.txt").read_text() == "mine"
    assert not old_temp.exists() and new_temp.exists()  # a fresh one may belong to a run still going


def test_bad_image_files_are_named_on_the_page_never_crash_it(setup) -> None:
    dataset = setup["dataset"]
    files = write_bad_files(dataset / "train" / "bird")
    os.mkfifo(dataset / "train" / "bird" / "pipe.jpg")  # never opened: reading it would hang
    listed = {f"train/bird/{name}": ("plane", False, 1.0) for name in [*files, "pipe.jpg"]}
    write_problematic(dataset, listed)
    try:
        assert make_page(setup) == 1  # done, but some images could not be shown
    finally:
        os.chmod(files["unreadable.jpg"], 0o644)
    page = setup["page"].read_text(encoding="utf-8")
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page).group(1))
    index = {image["path"]: number for number, image in enumerate(data["images"])}
    for name in [*files, "pipe.jpg"]:
        card = re.search(rf'<figure class="card" data-i="{index[f"train/bird/{name}"]}".*?</figure>', page).group(0)
        if name in refused_bad_files() or name == "pipe.jpg":
            assert "<img " not in card and 'class="thumb missing"' in card, name
        else:
            assert "<img " in card, name
    assert "is a named pipe (FIFO), not a file: not shown" in page


def test_missing_reports_are_named_and_the_rest_renders(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "dataset", CLASSES, train_per_class=2, val_per_class=1)
    assert html_report.main(["--dataset-dir", str(dataset), "--models-dir", str(tmp_path / "none")]) == 0
    page = (dataset / "report.html").read_text(encoding="utf-8")
    assert "No duplicate report in the dataset folder" in page
    assert "No problematic-images report at" in page and "No training metadata at" in page
    assert 'id="count-train-superman">2<' in page


def test_unusable_and_stale_reports_say_so_and_exit_1(setup, caplog) -> None:
    (setup["dataset"] / "duplicate_report_phash.json").write_text('{"schema_version": 1, "duplicate_gr', "utf-8")
    (setup["models"] / "training_metadata.json").write_text("[1, 2]", encoding="utf-8")
    (setup["dataset"] / COPY[1]).unlink()  # listed in the exact-copy report: that report is now stale
    (setup["dataset"] / "train/bird/bird_002.jpg").unlink()  # listed in the problematic report
    assert make_page(setup) == 1
    page = setup["page"].read_text(encoding="utf-8")
    assert "Unusable: the duplicate report" in page and "not valid JSON" in page
    assert "Unusable: the training metadata" in page and "is not a JSON object" in page
    assert page.count('class="note stale"') == 2
    assert "no longer on disk" in page
    assert 'data-count="diff_class_same_set">1<' in page  # the usable report still renders


def test_the_problematic_section_reads_the_report_as_the_reviewer_does(setup) -> None:
    path = setup["dataset"] / problematic_report.DEFAULT_NAME
    report = json.loads(path.read_text(encoding="utf-8"))
    assert make_page(setup) == 0
    page = setup["page"].read_text(encoding="utf-8")
    assert "in-sample flags are weak evidence" in page and "p(bird) 0.20" in page  # bird_002: given_label_probability
    report["method"] = "cross_validation"  # what older trainers wrote for --cross-val-folds
    (entry,) = [entry for entry in report["problematic_images"]["bird"] if entry["path"] == "train/bird/bird_002.jpg"]
    entry["last_probability"] = 0.42  # the field's name in drafts of the schema, read by the reviewer too
    del entry["given_label_probability"]
    fileio.write_json(path, report)
    assert make_page(setup) == 0
    page = setup["page"].read_text(encoding="utf-8")
    assert "out-of-fold flags" in page and "in-sample flags" not in page and "p(bird) 0.42" in page
    assert problematic_report.is_out_of_fold(report) and problematic_report.label_probability(entry) == 0.42


def test_a_weak_label_check_is_said_beside_its_flags_on_the_page_and_in_the_summary(setup, capsys) -> None:
    path = setup["dataset"] / problematic_report.DEFAULT_NAME
    report = json.loads(path.read_text(encoding="utf-8"))
    report["summary_by_class"] = {"bird": {"label_issues": 2}, "plane": {"label_issues": 1}}
    for agreement, is_weak in ((0.45, True), (0.97, False)):
        fileio.write_json(path, {**report, "check_agreement": agreement})
        assert make_page(setup) == 0
        page = setup["page"].read_text(encoding="utf-8")
        assert review_problematic_images.main(["--report-path", str(path), "--mode", "summary"]) == 0
        summary = capsys.readouterr().out
        caution = "The check is weak here: its classifier agrees with only 45% of the given labels, and checks that"
        assert (caution in page) is is_weak and (caution in summary) is is_weak
        assert ("expect most of the 3 flagged images" in page) is is_weak
        word = "possible" if is_weak else "likely"  # a weak check's flags are never called likely
        assert f"<h3>{word.capitalize()} label issues (" in page and f'badge issue">{word} label issue<' in page
        assert f"{word.capitalize()} label issues (the evidence prefers another class)" in summary
        other = "likely" if is_weak else "possible"
        assert f"{other} label issue" not in page.lower() and f"{other} label issue" not in summary.lower()


def test_numbers_too_large_for_a_float_are_shown_as_missing_never_a_crash(setup, capsys) -> None:
    huge = 10**400  # valid JSON, under the 4,300-digit limit, but float(huge) raises
    metadata_path = setup["models"] / "training_metadata.json"
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    metadata["best_macro_f1"] = metadata["calibration"]["temperature"] = huge
    metadata["epochs"][0]["val_loss"] = metadata["thresholds"][0]["accuracy"] = huge
    fileio.write_json(metadata_path, metadata)
    path = setup["dataset"] / problematic_report.DEFAULT_NAME
    report = json.loads(path.read_text(encoding="utf-8"))
    report["problematic_images"]["bird"][0]["mean_loss"] = huge
    fileio.write_json(path, report)
    assert make_page(setup) in (0, 1)
    assert "Traceback" not in capsys.readouterr().err
    fileio.write_json(metadata_path, {**metadata, "epochs": 1})  # not a list: the curves are left out, no crash
    assert make_page(setup) in (0, 1)
    assert "Traceback" not in capsys.readouterr().err
    assert review_problematic_images.main(["--report-path", str(path), "--mode", "summary"]) == 2  # refused: a sentence
    assert "'mean_loss' or 'losses' value that is not a number" in capsys.readouterr().err


def test_paths_outside_the_dataset_are_never_linked_read_or_offered(setup, tmp_path: Path) -> None:
    dataset = setup["dataset"]
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (40, 40), "red").save(outside / "secret.jpg")
    (dataset / "train" / "linked").symlink_to(outside, target_is_directory=True)
    (dataset / "train" / "bird" / "leaked.jpg").symlink_to(outside / "secret.jpg")
    outside_before = tree_snapshot(outside)
    report_path = dataset / "duplicate_report_filesize.json"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    bad = ["../outside/secret.jpg", str(outside / "secret.jpg"), "train/linked/secret.jpg", "train/bird/leaked.jpg"]
    files = [{"path": path, "set": "train", "class": "bird", "size": 1, "mtime_ns": 1} for path in bad]
    report["duplicate_groups"]["same_class_and_set"].append(
        {"id": 99, "category": "same_class_and_set", "files": files}
    )
    fileio.write_json(report_path, report)
    assert make_page(setup) == 0
    page = setup["page"].read_text(encoding="utf-8")
    images, links = images_and_links(page)
    assert not [link for link in links if "secret" in link or "outside" in link or "leaked" in link]
    assert len(set(images)) == len(list((dataset / "report_files" / "thumbs").iterdir()))
    assert page.count("outside the dataset") >= 3 and "a link to a file outside the dataset" in page
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page).group(1))
    shown = {image["path"]: image["sha256"] for image in data["images"]}
    assert all(shown[path] is None for path in bad)  # no hash read, so no decision can name them
    assert tree_snapshot(outside) == outside_before


def test_text_from_reports_and_file_names_is_escaped(setup) -> None:
    dataset = setup["dataset"]
    hostile = "<img src=x onerror=alert(1)>\u202egpj.jpg"
    shutil.copyfile(dataset / "train/plane/plane_002.jpg", dataset / "train/plane" / hostile)
    assert detect_duplicates_by_filesize.main(["--dataset-dir", str(dataset)]) == 0
    report = write_problematic(dataset, {f"train/plane/{hostile}": ("bird", True, 3.0)})
    assert report["problematic_images"]["plane"]
    assert make_page(setup) == 0
    page = setup["page"].read_text(encoding="utf-8")
    assert "<img src=x" not in page and "\u202e" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;\\u202egpj.jpg" in page


def test_a_non_utf8_file_name_keeps_its_bytes_in_links_and_page_data(setup) -> None:
    dataset = setup["dataset"]
    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1, not UTF-8
    shutil.copyfile(dataset / "train/superman/superman_002.jpg", dataset / "train/superman" / name)
    assert detect_duplicates_by_filesize.main(["--dataset-dir", str(dataset)]) == 0
    assert make_page(setup) == 0
    raw = setup["page"].read_bytes()
    page = raw.decode("utf-8")  # strict: the page is valid UTF-8
    assert 'href="train/superman/caf%E9.jpg"' in page  # relative to the page, the raw byte percent-encoded
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page).group(1))
    assert f"train/superman/{name}" in {image["path"] for image in data["images"]}


def test_a_symlinked_thumbnail_folder_is_refused(setup, tmp_path: Path, capsys) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (setup["dataset"] / "report_files").symlink_to(elsewhere, target_is_directory=True)
    assert make_page(setup) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == [] and not setup["page"].exists()


def test_a_thumbnail_planted_as_a_symlink_is_replaced_never_shown(setup, tmp_path: Path) -> None:
    """Thumbnail names are predictable (path, size, mtime): a link planted at one must not put an outside picture
    on the page, and the picture it points to stays as it was."""
    assert make_page(setup) == 0
    thumbs = setup["dataset"] / "report_files" / "thumbs"
    secret = tmp_path / "private.jpg"
    Image.new("RGB", (300, 100), (0, 0, 0)).save(secret)
    before = secret.read_bytes()
    for thumb in thumbs.glob("*.jpg"):
        thumb.unlink()
        thumb.symlink_to(secret)
        (thumbs / f".{thumb.name}.{os.getpid()}.tmp").symlink_to(secret)  # and at its temp name (pid is guessable)
    assert make_page(setup) == 0
    assert secret.read_bytes() == before
    for thumb in thumbs.glob("*.jpg"):
        assert not thumb.is_symlink()
        with Image.open(thumb) as image:
            assert image.size != (160, 53)  # a thumbnail of the dataset's image, not of the planted one


def test_sparkline_and_chart_read_values_defensively() -> None:
    line = html_report.sparkline_svg([1.0, "x", None, 0.5, float("nan"), 0.25], reference=0.69)
    assert len(re.search(r'points="([^"]*)"', line).group(1).split()) == 3 and 'class="ref"' in line
    assert "no loss history" in html_report.sparkline_svg(["a"])
    chart = html_report.line_chart_svg("loss", [1, 2, 3], {"train": [1.0, None, 0.5], "val": ["?", "?", "?"]})
    assert chart.count("<polyline") == 1 and chart.count("<circle") == 2
    assert "no values" in html_report.line_chart_svg("loss", [], {})
    # crafted training metadata: every number 1e308, where "flat +- 0.5" rounds back to a zero range (a traceback)
    huge = html_report.line_chart_svg("loss", [1e308, 1e308], {"train": [1e308, 1e308]})
    assert huge.count("<polyline") == 1 and "1e+308" in huge
    html_report.sparkline_svg([1e308, 1e308], reference=1e308)


def test_help_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "html_report.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--report" in result.stdout and "exit codes" in result.stdout


# ------------------------------------------------------------------------------------------------ in a browser


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through selenium with the system's chromedriver (Selenium Manager never downloads)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None or not os.access(CHROMEDRIVER, os.X_OK):
        pytest.skip("Chromium or its driver is missing (apt-get install chromium chromium-driver; .ci/run does it)")
    downloads = Path(tempfile.mkdtemp(prefix="birdplane_downloads_"))
    profile = tempfile.mkdtemp(prefix="birdplane_chromium_")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1280,900", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
    shutil.rmtree(downloads, ignore_errors=True)


def open_page(browser, setup: dict[str, Any]) -> None:
    assert make_page(setup) == 0
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(setup["page"].resolve().as_uri())


def severe_messages(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def visible(browser, selector: str) -> list[Any]:
    return [element for element in browser.find_elements("css selector", selector) if element.is_displayed()]


def card_of(browser, path: str) -> Any:
    index = browser.execute_script(
        "var wanted = arguments[0], d = JSON.parse(document.getElementById('report-data').textContent);"
        "return d.images.findIndex(function (i) { return i.path === wanted; });",
        path,
    )
    browser.execute_script("document.getElementById('hard-examples').open = true")  # as a person opens it
    card = browser.find_element("css selector", f'#problematic .card[data-i="{index}"]')
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", card)
    return card


def test_browser_page_opens_without_console_errors_and_counts_match(browser, setup) -> None:
    open_page(browser, setup)
    assert severe_messages(browser) == []
    report = json.loads((setup["dataset"] / "duplicate_report_filesize.json").read_text(encoding="utf-8"))
    for category, groups in report["duplicate_groups"].items():
        cell = browser.find_element("css selector", f'#dup-filesize [data-count="{category}"]')
        assert int(cell.text) == len(groups)
    assert len(browser.find_elements("css selector", "#dup-filesize .group")) == sum(
        len(groups) for groups in report["duplicate_groups"].values()
    )
    entries = [entry for items in setup["problems"]["problematic_images"].values() for entry in items]
    issues = [entry for entry in entries if entry["is_label_issue"]]
    assert len(browser.find_elements("css selector", "#problem-cards .card")) == len(issues)
    assert len(browser.find_elements("css selector", "#hard-cards .card")) == len(entries) - len(issues)
    assert visible(browser, "#hard-cards .card") == []  # collapsed until opened
    for name in CLASSES:
        issues = sum(entry["is_label_issue"] for entry in setup["problems"]["problematic_images"][name])
        assert browser.find_element("css selector", f'#problematic [data-issues="{name}"]').text == str(issues)
    assert browser.find_element("id", "recommended").text == f"{setup['metadata']['recommended_threshold']:.2f}"
    shown = browser.find_element("id", "shown-count").text
    assert shown == f"shown: 3 duplicate groups, {len(entries) + 1} other images"  # + 1 confident mistake
    loaded = browser.execute_script(
        "return Array.from(document.images).filter(function (i) { return i.complete && i.naturalWidth > 0; }).length"
    )
    assert loaded > 0  # thumbnails load from disk relative to the page


def test_browser_filters_by_class_and_by_category(browser, setup) -> None:
    from selenium.webdriver.support.select import Select

    open_page(browser, setup)
    everything = len(visible(browser, "#problem-cards .card"))
    Select(browser.find_element("id", "filter-class")).select_by_value("superman")
    cards = visible(browser, "#problem-cards .card")
    assert len(cards) == 1 < everything  # superman's label issue; its hard example stays collapsed
    assert all("train/superman/" in card.find_element("css selector", ".path").text for card in cards)
    assert visible(browser, ".group") == []  # no duplicate group has a superman image
    Select(browser.find_element("id", "filter-class")).select_by_value("")
    Select(browser.find_element("id", "filter-tag")).select_by_value("conflict")
    groups = visible(browser, ".group")
    assert len(groups) == 1 and "label conflict" in groups[0].text
    assert visible(browser, "#problem-cards .card") == []
    Select(browser.find_element("id", "filter-tag")).select_by_value("label-issue")
    assert len(visible(browser, "#problem-cards .card")) == 2
    assert severe_messages(browser) == []


def test_browser_decisions_export_apply_and_undo(browser, setup, tmp_path: Path) -> None:
    from selenium.webdriver.support.select import Select

    dataset = setup["dataset"]
    before = {split: tree_snapshot(dataset / split) for split in ("train", "val")}
    open_page(browser, setup)
    deleted, relabelled, kept = "train/bird/bird_002.jpg", "train/superman/superman_000.jpg", "train/bird/bird_003.jpg"
    card_of(browser, deleted).find_element("css selector", 'button[data-act="delete"]').click()
    Select(card_of(browser, relabelled).find_element("css selector", "select")).select_by_value("bird")
    card_of(browser, kept).find_element("css selector", 'button[data-act="keep"]').click()
    assert browser.find_element("id", "decision-count").text == "1 keep, 1 delete, 1 relabel"
    assert "d-delete" in card_of(browser, deleted).get_attribute("class")
    download = browser.downloads / html_report.DECISIONS_FILE_NAME
    download.unlink(missing_ok=True)
    browser.find_element("id", "export").click()
    text = browser.find_element("id", "decisions-json").get_attribute("value")
    exported = json.loads(text)
    for _ in range(100):  # the Blob download lands in Chromium's download folder
        if download.is_file():
            break
        time.sleep(0.1)
    assert json.loads(download.read_text(encoding="utf-8")) == exported
    download.unlink()
    assert exported["schema_version"] == 1 and exported["decisions_type"] == "problematic_review_decisions"
    assert exported["dataset_dir"] == str(dataset.resolve())
    actions = {path: (item["action"], item.get("target_class")) for path, item in exported["decisions"].items()}
    assert actions == {deleted: ("delete", None), relabelled: ("relabel", "bird"), kept: ("keep", None)}
    for path, decision in exported["decisions"].items():
        assert decision["sha256"] == fileio.sha256_file(dataset / path)
    assert {split: tree_snapshot(dataset / split) for split in before} == before  # marking changed nothing
    assert severe_messages(browser) == []

    if "--apply-decisions" not in review_problematic_images.get_args_parser().format_help():
        pytest.skip("review_problematic_images.py has no --apply-decisions yet")
    decisions = tmp_path / "decisions.json"
    decisions.write_text(text, encoding="utf-8")
    argv = ["--apply-decisions", str(decisions), "--dataset-dir", str(dataset), "--yes"]
    assert review_problematic_images.main(argv) == 0
    assert not (dataset / deleted).exists() and (dataset / kept).is_file()
    assert not (dataset / relabelled).exists()
    assert (dataset / "train/bird/superman_000.jpg").read_bytes() == before["train"]["superman/superman_000.jpg"]
    trashed = [path for path in (dataset / ".trash").rglob("bird_002.jpg")]
    assert len(trashed) == 1 and trashed[0].read_bytes() == before["train"]["bird/bird_002.jpg"]
    logs = sorted((dataset / ".trash").glob("*.json"), key=lambda path: path.stat().st_mtime_ns)
    assert review_problematic_images.main(["--undo", str(logs[-1])]) == 0
    assert {split: tree_snapshot(dataset / split) for split in before} == before


def test_browser_clear_forgets_marks_and_an_empty_page_has_no_errors(browser, setup, tmp_path: Path) -> None:
    open_page(browser, setup)
    card_of(browser, "train/bird/bird_002.jpg").find_element("css selector", 'button[data-act="delete"]').click()
    browser.find_element("id", "clear").click()
    assert browser.find_element("id", "decision-count").text == "0 keep, 0 delete, 0 relabel"
    assert "d-delete" not in card_of(browser, "train/bird/bird_002.jpg").get_attribute("class")
    empty = {"dataset": make_dataset(tmp_path / "empty", CLASSES, 1, 1), "models": tmp_path / "none"}
    empty["page"] = empty["dataset"] / "report.html"
    open_page(browser, empty)  # no report at all: nothing to mark
    browser.find_element("id", "clear").click()
    assert json.loads(browser.execute_script("return window.birdplaneExport()"))["decisions"] == {}
    assert severe_messages(browser) == []


def test_browser_screenshot_at_1280_px(browser, setup, tmp_path: Path) -> None:
    open_page(browser, setup)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(max(height, 900), 4000))
    try:
        width = browser.execute_script("return window.innerWidth")
        browser.set_window_size(1280 + (1280 - width), min(max(height, 900), 4000))  # the viewport is 1280 wide
        shot = tmp_path / "report_screenshot.png"
        assert browser.save_screenshot(str(shot))
    finally:
        browser.set_window_size(1280, 900)
    with Image.open(shot) as image:
        assert image.width == 1280 and image.height >= 900
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)


# ------------------------------------------------------------------------------------------------ the crawl


def add_crawl(setup: dict[str, Any]) -> dict[str, Any]:
    """What download_images.py leaves: hash-named images (64-character names) with their manifest lines, and URLs it
    refused (a 404, two too small, one with markup in its URL); the exact-copy report written again."""
    dataset = setup["dataset"]
    data = (dataset / "train" / "plane" / "plane_002.jpg").read_bytes()
    named = f"train/plane/{hashlib.sha256(data).hexdigest()}.jpg"  # a plain copy of plane_002 under its hash
    (dataset / named).write_bytes(data)
    assert detect_duplicates_by_filesize.main(["--dataset-dir", str(dataset), "--no-progress"]) == 0
    found = Candidate("plane", "https://img.example/planes/a380.jpg", "duckduckgo", query="airliner landing")
    refused = {
        Candidate("bird", "https://img.example/gone.jpg", "urls-file"): ("http 404", "Not Found"),
        Candidate("bird", "https://img.example/thumb.jpg", "urls-file"): ("too small", "40x30, under 100 pixels"),
        Candidate("plane", "https://img.example/icon.png", "urls-file"): ("too small", "16x16, under 100 pixels"),
        Candidate("plane", 'https://x.example/"><script>alert(1)</script>', "urls-file"): ("not an image", "<b>hi"),
    }
    writer = download_manifest.ManifestWriter(dataset / download_manifest.MANIFEST_NAME)
    writer.write(download_manifest.new_record(found) | {"status": "saved", "path": named, "split": "train"})
    for candidate, (reason, detail) in refused.items():
        writer.write(download_manifest.new_record(candidate) | {"status": "failed", "reason": reason, "detail": detail})
    writer.close()
    return {"named": named, "found": found}


def test_the_page_shows_what_the_crawl_refused_and_where_images_came_from(setup) -> None:
    crawl = add_crawl(setup)
    assert make_page(setup) == 0
    page = setup["page"].read_text(encoding="utf-8")
    section = page[page.index('<section id="refused">') : page.index('<section id="duplicates">')]
    rows = dict(re.findall(r"<tr><th>([^<]+)</th>((?:<td>\d+</td>)+)</tr>", section))
    assert rows["too small"] == "<td>1</td><td>1</td><td>2</td>"  # bird, plane, total
    assert rows["http 404"] == "<td>1</td><td>0</td><td>1</td>"
    assert "<details><summary>too small: 2</summary>" in section and "<details open" not in section
    assert "https://img.example/gone.jpg" in section and "https://img.example/icon.png" in section
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in section  # escaped
    assert "&lt;b&gt;hi" in section
    assert "4 URLs refused" in page  # the line at the top
    card = page[page.index(f'<div class="path">{crawl["named"]}</div>') :][:600]
    assert f'from <a href="{crawl["found"].url}"' in card and "(query airliner landing)" in card


def test_a_manifest_of_20000_reasons_and_classes_makes_a_small_page_quickly(tmp_path: Path) -> None:
    """Grouped once (a scan of every refusal per reason took 16 s here) and cut to the most frequent reasons and
    classes, each cut said; before, the page held all 20,000 rows and lists (3.5 MB)."""
    dataset = make_dataset(tmp_path / "dataset", ("bird", "plane"), train_per_class=1, val_per_class=1)
    common = [
        {"url": f"http://h/404/{i}", "class": f"k{i % 100}", "status": "failed", "reason": "http 404"}
        for i in range(300)
    ]
    odd = [{"url": f"http://h/{i}", "class": "k0", "status": "failed", "reason": f"r{i}"} for i in range(20_000)]
    lines = (json.dumps(record) for record in [*common, *odd])
    (dataset / download_manifest.MANIFEST_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
    started = time.monotonic()
    assert html_report.main(["--dataset-dir", str(dataset), "--models-dir", str(tmp_path / "none")]) == 0
    assert time.monotonic() - started < 3
    page = (dataset / "report.html").read_text(encoding="utf-8")
    section = page[page.index('<section id="refused">') : page.index('<section id="duplicates">')]
    assert len(section) < 100_000 and "20300 URLs refused" in page
    assert section.count("<details>") == report_downloads.MAX_REASONS_SHOWN
    assert "... and 19951 more reasons (19951 URLs) not shown: download_manifest.jsonl has them." in section
    assert "<details><summary>http 404: 300</summary>" in section  # the most frequent first, its count whole
    assert section.count("http://h/404/") == report_downloads.MAX_URLS_SHOWN and "... and 100 more in" in section
    assert section.count("<th>k") == report_downloads.MAX_CLASSES_SHOWN and "<th>other classes</th>" in section
    assert "<tr><th>http 404</th>" + "<td>3</td>" * 50 + "<td>150</td><td>300</td></tr>" in section  # 50 more classes


def test_browser_page_fits_a_390_px_phone_without_sideways_scrolling(browser, setup) -> None:
    add_crawl(setup)
    open_page(browser, setup)
    browser.set_window_size(390, 844)
    try:
        width = browser.execute_script("return window.innerWidth")
        browser.set_window_size(390 + (390 - width), 844)  # the viewport is 390 wide
        assert browser.execute_script("return window.innerWidth") == 390
        for details in browser.find_elements("css selector", "details"):
            browser.execute_script("arguments[0].open = true", details)  # the long names inside count too
        scroll_width = browser.execute_script("return document.documentElement.scrollWidth")
        wide = browser.execute_script(
            "return Array.from(document.querySelectorAll('body *')).filter(function (e) {"
            " return e.getBoundingClientRect().right > 391; }).slice(0, 5).map(function (e) {"
            " return e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right); })"
        )
        assert scroll_width <= 390, f"the page is {scroll_width} px wide; widest: {wide}"
    finally:
        browser.set_window_size(1280, 900)
    assert severe_messages(browser) == []


def test_a_crafted_or_odd_download_manifest_never_breaks_the_page(setup) -> None:
    manifest = setup["dataset"] / download_manifest.MANIFEST_NAME
    lines = [
        '{"url": 5, "status": "failed"}',
        "[1, 2]",
        '{"url": "https://a.example/x", "status": "saved", "path": 7}',
        '{"url": "javascript:alert(1)", "class": "bird", "status": "saved", "path": "train/bird/bird_000.jpg", '
        '"query": ["q"]}',
        '{"url": "https://a.example/y", "status": "failed", "reason": ["odd"], "class": "<i>b"}',
        "{cut",
    ]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert make_page(setup) == 0
    page = setup["page"].read_text(encoding="utf-8")
    assert 'href="javascript:' not in page and "from javascript:alert(1)" in page  # shown, never a link
    assert "https://a.example/y" in page and "&lt;i&gt;b" in page and "<i>b" not in page
    manifest.unlink()
    os.mkfifo(manifest)  # a read would block forever
    assert make_page(setup) == 1
    assert "download_manifest.jsonl is a named pipe" in setup["page"].read_text(encoding="utf-8")


def test_the_page_lists_only_undo_logs_inside_the_dataset_whatever_the_state_file_says(setup, tmp_path) -> None:
    outside = tmp_path / "outside_log.json"
    outside.write_text("{}", encoding="utf-8")
    inside = setup["dataset"] / ".trash" / "remove_duplicates_20261206T000000Z.json"
    inside.parent.mkdir(exist_ok=True)
    inside.write_text("{}", encoding="utf-8")
    state = {
        "schema_version": 1,
        "state_type": "birdplane_pipeline_state",
        "stages": {},
        "deletion_logs": [str(outside), str(inside), "../../etc/passwd", 7],
    }
    (setup["dataset"] / "pipeline_state.json").write_text(json.dumps(state), encoding="utf-8")
    make_page(setup)
    page = setup["page"].read_text(encoding="utf-8")
    assert f"--undo {inside}" in page and "outside_log.json" not in page and "passwd" not in page
