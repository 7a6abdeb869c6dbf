"""download_images.py and search_queries.py against a local image server and a fake search: no network needed."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import types
from collections import Counter
from pathlib import Path

import download_images
import image_search
import pytest
import search_queries
from _download_helpers import FakeSearch, ImageServer, Route, bad_routes, encode_good_image, good_routes
from conftest import IS_ROOT, ROOT
from download_images import REPORT_NAME, parse_url_lines, split_for_hash
from download_manifest import MANIFEST_NAME, ManifestWriter, latest_records, read_manifest, should_fetch
from image_fetch import (
    FORMAT_EXTENSIONS,
    FetchLimits,
    ImageRejectedError,
    NoNetworkError,
    backoff_delay,
    inspect_image,
    is_allowed_content_type,
    is_retryable,
)
from image_search import SEARCH_BACKOFF_S, SEARCH_RETRIES, interleave, take_evenly
from PIL import Image

import fileio

try:
    from ddgs.exceptions import DDGSException
except ImportError:  # ddgs is a runtime requirement, but these tests never need it

    class DDGSException(Exception):
        pass


MAX_BYTES = 200_000
FAST = ["--workers", "4", "--timeout", "0.25", "--retries", "1", "--min-size", "32", "--max-bytes", str(MAX_BYTES)]
FAST += ["--no-progress"]


class RecordingSleep:
    """Stands in for time.sleep: records the delays asked for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def run(argv: list[str], search: FakeSearch | None = None, sleep: RecordingSleep | None = None) -> int:
    return download_images.main(argv, search_backend=search or FakeSearch({}), sleep=sleep or RecordingSleep())


def image_files(dataset: Path) -> dict[str, bytes]:
    """Every file under train/ and val/ (relative POSIX path -> bytes), hidden ones included."""
    return {
        path.relative_to(dataset).as_posix(): path.read_bytes()
        for split in ("train", "val")
        if (dataset / split).exists()
        for path in sorted((dataset / split).rglob("*"))
        if path.is_file()
    }


def by_url(records: list[dict]) -> dict[str, dict]:
    """The latest record of each URL (for URLs offered under one class: the last class's otherwise)."""
    return {url: record for (_, url), record in latest_records(records).items()}


def latest_manifest(dataset: Path) -> dict[str, dict]:
    return by_url(read_manifest(dataset / MANIFEST_NAME))


def write_queries(path: Path, queries: dict[str, list[str]]) -> Path:
    path.write_text(json.dumps(queries), encoding="utf-8")
    return path


def check_saved_file(dataset: Path, relative: str, data: bytes, class_name: str, val_fraction: float = 0.2) -> None:
    """A saved image sits in its class folder, in the split its hash picks, named by hash + its real extension."""
    digest = hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as image:
        extension = FORMAT_EXTENSIONS[image.format]
        image.load()
    assert relative == f"{split_for_hash(digest, val_fraction)}/{class_name}/{digest}{extension}"


# ------------------------------------------------------------------------------------------------ the whole flow


@pytest.fixture
def web(tmp_path: Path):
    """A server with 16 distinct good images per class, every bad case, a redirect and two copies of one image;
    a fake search returning them (bad cases first, so all are tried before the class is full)."""
    bad = bad_routes(MAX_BYTES, slow_s=1.0)
    bird_good = good_routes("bird", 0, 15)
    other_good = good_routes("other", 3, 14)  # + the hidden one + the one shared with bird = 16
    copy = encode_good_image("png", 0, 500)
    hidden = encode_good_image("jpeg", 3, 501)
    routes = {path: route for path, (route, _) in bad.items()} | bird_good | other_good
    routes["/bird/copy-a.png"] = Route(copy, content_type="image/png")
    routes["/bird/copy-b.png"] = Route(copy, content_type="image/png")
    routes["/other/moved.jpg"] = Route(status=301, location="/hidden/final.jpg")
    routes["/hidden/final.jpg"] = Route(hidden)
    bird_bad = ["missing", "server-error", "slow", "loop", "big", "big-unannounced", "page"]
    bird_paths = [f"/bad/{name}.jpg" for name in bird_bad] + ["/bird/copy-a.png", "/bird/copy-b.png", *bird_good]
    other_bad = ["/bad/served-as-html.png", "/bad/truncated.jpg", "/bad/bomb.png", "/bad/tiny.png", "/bad/empty.jpg"]
    shared_path = next(iter(bird_good))  # also found by the "other" search: a label conflict, kept in both
    other_paths = [*other_bad, shared_path, "/other/moved.jpg", *other_good]
    with ImageServer(routes) as server:
        search = FakeSearch(
            {"bird q": [server.url(path) for path in bird_paths], "other q": [server.url(path) for path in other_paths]}
        )
        yield types.SimpleNamespace(
            server=server,
            search=search,
            bad=bad,
            bird_good={route.body for route in bird_good.values()} | {copy},
            other_good={route.body for route in other_good.values()} | {hidden, bird_good[shared_path].body},
            shared=shared_path,
            queries=write_queries(tmp_path / "queries.json", {"bird": ["bird q"], "other": ["other q"]}),
            dataset=tmp_path / "dataset",
        )


def test_download_saves_exactly_the_good_images_and_records_every_url(web, capsys) -> None:
    argv = ["--duckduckgo", "--queries", str(web.queries), "--dataset-dir", str(web.dataset), "--per-class", "16"]
    assert run(argv + FAST, web.search) == 0
    output = capsys.readouterr()

    files = image_files(web.dataset)
    saved = {data for data in files.values()}
    assert len(files) == 32 and len(saved) == 31  # each good image once per class, no temporary files left
    for class_name, expected in (("bird", web.bird_good), ("other", web.other_good)):
        assert {data for relative, data in files.items() if relative.split("/")[1] == class_name} == expected
    for relative, data in files.items():
        check_saved_file(web.dataset, relative, data, relative.split("/")[1])

    latest = latest_manifest(web.dataset)
    for url in web.search.urls_by_query["bird q"] + web.search.urls_by_query["other q"]:
        assert url in latest, f"{url} missing from the manifest"
    for path, (_, reason) in web.bad.items():
        record = latest[web.server.url(path)]
        assert (record["status"], record["reason"]) == ("failed", reason), path
        assert record["retryable"] == (reason in ("http 500", "timeout"))
        assert record["path"] is None
        flag = {"timeout": "--timeout", "too large": "--max-bytes", "too small": "--min-size"}.get(reason)
        value = {"--timeout": 0.25, "--max-bytes": MAX_BYTES, "--min-size": 32}.get(flag)
        if reason == "wrong content type":
            flag, value = "--ignore-content-type", False
        assert record["limit"] == (None if flag is None else {"flag": flag, "value": value}), path
    copies = [latest[web.server.url(f"/bird/copy-{name}.png")] for name in "ab"]
    assert sorted(record["status"] for record in copies) == ["duplicate", "saved"]
    kept = next(record for record in copies if record["status"] == "saved")
    assert next(record for record in copies if record["status"] == "duplicate")["duplicate_of"] == kept["path"]
    for record in latest.values():
        if record["status"] == "saved":
            assert files[record["path"]] and record["sha256"] == Path(record["path"]).stem
            assert (record["width"], record["height"]) == (64, 64) and record["query"] in ("bird q", "other q")
            assert record["source_page"].startswith("https://pages.example/") and record["title"]
    assert latest[web.server.url("/other/moved.jpg")]["status"] == "saved"

    hits = web.server.hits
    for url in web.search.urls_by_query["bird q"] + web.search.urls_by_query["other q"]:
        path = "/" + url.split("/", 3)[3]
        if not path.startswith("/bad/"):
            expected = 2 if path == web.shared else 1  # once for each class it was offered under
            assert hits[path] == expected, f"{path} fetched {hits[path]} times"
    assert hits["/bad/server-error.jpg"] == hits["/bad/slow.jpg"] == 2  # --retries 1
    assert hits["/bad/missing.jpg"] == 1  # a 404 is not retried

    report = json.loads((web.dataset / REPORT_NAME).read_text())
    assert report["schema_version"] == 3
    assert {error["url"] for error in report["errors"]} == {web.server.url(path) for path in web.bad}
    assert report["classes"]["bird"]["downloaded"] == report["classes"]["other"]["downloaded"] == 16
    assert report["classes"]["bird"]["duplicates"] == 1 and report["classes"]["other"]["duplicates"] == 0
    assert report["classes"]["bird"]["label_conflicts"] == report["classes"]["other"]["label_conflicts"] == 1
    assert report["classes"]["bird"]["failures_by_reason"]["too large"] == 2
    assert "bird" in output.out and "other" in output.out
    assert "bird: too large (> --max-bytes 200000): 2 — raise --max-bytes to retry" in output.out
    assert "missing.jpg: http 404" in output.err

    # A re-run finds everything done: no search, no download, the same files.
    hits_before, calls_before = dict(hits), len(web.search.calls)
    assert run(argv + FAST, web.search) == 0
    assert image_files(web.dataset) == files
    assert dict(web.server.hits) == hits_before and len(web.search.calls) == calls_before


def test_split_is_80_20_and_stable_when_more_images_are_added(tmp_path: Path) -> None:
    routes = good_routes("bird", 0, 100)
    paths = list(routes)
    dataset = tmp_path / "dataset"
    queries = write_queries(tmp_path / "q.json", {"bird": ["birds"]})
    with ImageServer(routes) as server:
        search = FakeSearch({"birds": [server.url(path) for path in paths[:40]]})
        argv = ["--duckduckgo", "--queries", str(queries), "--dataset-dir", str(dataset), *FAST]
        assert run([*argv, "--per-class", "40"], search) == 0
        first = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in dataset.glob("*/bird/*")}
        search.urls_by_query["birds"] = [server.url(path) for path in paths]
        assert run([*argv, "--per-class", "100", "--refresh-search"], search) == 0
    files = image_files(dataset)
    assert len(files) == 100
    for path, (data, mtime) in first.items():  # nothing existing was moved, rewritten or touched
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime
    for relative, data in files.items():
        check_saved_file(dataset, relative, data, "bird")
    val = sum(relative.startswith("val/") for relative in files)
    # The split is per image, by hash, so it is binomial: 20 +- 3 standard deviations.
    assert abs(val - 20) <= 3 * math.sqrt(100 * 0.2 * 0.8)


def test_split_by_hash_is_80_20_over_many_images() -> None:
    hashes = [hashlib.sha256(str(number).encode()).hexdigest() for number in range(20000)]
    for fraction in (0.1, 0.2, 0.5):
        share = sum(split_for_hash(digest, fraction) == "val" for digest in hashes) / len(hashes)
        assert abs(share - fraction) < 0.012
    assert {split_for_hash(hashes[7], 0.2) for _ in range(3)} == {split_for_hash(hashes[7], 0.2)}
    assert all(split_for_hash(digest, 0.0) == "train" for digest in hashes[:200])


def test_interrupted_run_resumes_to_the_same_tree(tmp_path: Path) -> None:
    routes = good_routes("bird", 0, 12) | good_routes("plane", 1, 12)
    routes["/bad/missing.jpg"] = Route(status=404, content_type="text/plain")
    queries = write_queries(tmp_path / "q.json", {"bird": ["b"], "plane": ["p"]})
    with ImageServer(routes) as server:
        urls = {name: [server.url(path) for path in routes if name in path] for name in ("bird", "plane")}
        urls["bird"].insert(3, server.url("/bad/missing.jpg"))
        search = FakeSearch({"b": urls["bird"], "p": urls["plane"]})

        def download(dataset: Path) -> int:
            argv = ["--duckduckgo", "--queries", str(queries), "--dataset-dir", str(dataset), "--per-class", "12"]
            return run(argv + FAST, search)

        assert download(tmp_path / "reference") == 0
        server.stop_after = sum(server.hits.values()) + 9  # the server goes away 9 requests into the next run
        assert download(tmp_path / "interrupted") == 1  # some images are missing: the classes came up short
        partial = image_files(tmp_path / "interrupted")
        assert 0 < len(partial) < 24
        for data in partial.values():  # what the interrupted run kept is whole
            Image.open(io.BytesIO(data)).load()
        refused = [r for r in latest_manifest(tmp_path / "interrupted").values() if r["reason"] == "connection error"]
        assert refused and all(record["retryable"] for record in refused)
        server.start()
        assert download(tmp_path / "interrupted") == 0
    assert image_files(tmp_path / "interrupted") == image_files(tmp_path / "reference")


def test_ctrl_c_keeps_complete_files_and_a_rerun_finishes(tmp_path: Path, capsys) -> None:
    routes = good_routes("bird", 0, 5) | good_routes("plane", 1, 5)
    queries = write_queries(tmp_path / "q.json", {"bird": ["b"], "plane": ["p"]})
    dataset = tmp_path / "dataset"
    with ImageServer(routes) as server:
        urls = {name: [server.url(path) for path in routes if name in path] for name in ("bird", "plane")}
        search = FakeSearch({"b": urls["bird"], "p": urls["plane"]}, failures={"p": 1}, error_type=KeyboardInterrupt)
        argv = ["--duckduckgo", "--queries", str(queries), "--dataset-dir", str(dataset), "--per-class", "5", *FAST]
        assert run(argv, search) == 130
        assert "re-run the same command to resume" in capsys.readouterr().err
        files = image_files(dataset)
        assert len(files) == 5 and all(relative.split("/")[1] == "bird" for relative in files)
        lines = (dataset / MANIFEST_NAME).read_text().splitlines()
        assert len(lines) == 5 and all(json.loads(line)["status"] == "saved" for line in lines)
        assert run(argv, search) == 0
    assert len(image_files(dataset)) == 10 and image_files(dataset).items() >= files.items()


# ------------------------------------------------------------------------------------------------ search


def test_search_errors_are_retried_with_growing_backoff(tmp_path: Path, capsys) -> None:
    routes = good_routes("bird", 0, 8)
    queries = write_queries(tmp_path / "q.json", {"bird": ["flaky", "broken"]})
    with ImageServer(routes) as server:
        search = FakeSearch(
            {"flaky": [server.url(path) for path in routes]},
            failures={"flaky": 2, "broken": 99},
            error_type=DDGSException,
        )
        sleep = RecordingSleep()
        argv = ["--duckduckgo", "--queries", str(queries), "--dataset-dir", str(tmp_path / "d"), "--per-class", "4"]
        assert run(argv + FAST, search, sleep) == 0  # the broken query's share is made up from the flaky one
    assert [query for query, _ in search.calls] == ["flaky"] * 3 + ["broken"] * (SEARCH_RETRIES + 1)
    first, second = sleep.delays[:2]  # the two waits before flaky's 2nd and 3rd tries
    assert SEARCH_BACKOFF_S <= first < second <= 3 * SEARCH_BACKOFF_S
    assert len(image_files(tmp_path / "d")) == 4
    output = capsys.readouterr()
    assert "'broken'" in output.out and "search failed" in output.out  # named at the end as short
    assert "retrying in" in output.err


def test_search_stops_when_queries_keep_failing_and_says_which(tmp_path: Path, capsys) -> None:
    queries = write_queries(tmp_path / "q.json", {"bird": ["a", "b", "c", "d"]})
    search = FakeSearch({}, failures={name: 99 for name in "abcd"}, error_type=DDGSException)
    argv = ["--duckduckgo", "--queries", str(queries), "--dataset-dir", str(tmp_path / "d"), "--per-class", "4"]
    assert run(argv + FAST, search) == 1  # the class ended with fewer images than asked
    assert {query for query, _ in search.calls} == {"a", "b", "c"}  # after 3 failed queries it stops asking
    out = capsys.readouterr().out
    assert all(f"'{name}' gave 0" in out for name in "abcd") and "failed in a row" in out
    assert "fewer than the 4 asked" in out


def test_search_results_are_cached_until_refresh(tmp_path: Path) -> None:
    queries = write_queries(tmp_path / "q.json", {"bird": ["nothing here"]})
    search = FakeSearch({"nothing here": ["http://127.0.0.1:9/none.jpg"]})
    argv = ["--duckduckgo", "--queries", str(queries), "--dataset-dir", str(tmp_path / "d"), "--per-class", "1"]
    run(argv + FAST, search)
    calls = len(search.calls)
    assert calls >= 1 and list((tmp_path / "d" / ".search_cache").glob("*.json"))
    run(argv + FAST, search)
    assert len(search.calls) == calls
    run([*argv, *FAST, "--refresh-search"], search)
    assert len(search.calls) == 2 * calls


class FakeDDGS:
    """Replaces ddgs.DDGS: records the keyword arguments of images() and answers with ``behaviour``."""

    calls: list[dict] = []
    behaviour: object = None

    def __init__(self, timeout: int | None = None) -> None:
        pass

    def images(self, query: str, **kwargs: object) -> list[dict]:
        FakeDDGS.calls.append({"query": query, **kwargs})
        if isinstance(FakeDDGS.behaviour, Exception):
            raise FakeDDGS.behaviour
        return []


def install_fake_ddgs(monkeypatch, behaviour: object) -> None:
    module = types.ModuleType("ddgs")
    module.DDGS = FakeDDGS
    FakeDDGS.calls, FakeDDGS.behaviour = [], behaviour
    monkeypatch.setitem(sys.modules, "ddgs", module)


def test_real_backend_passes_the_search_options_through(tmp_path: Path, monkeypatch) -> None:
    install_fake_ddgs(monkeypatch, behaviour=None)
    argv = ["--duckduckgo", "--classes", "bird", "--per-class", "1", "--dataset-dir", str(tmp_path / "d"), *FAST]
    argv += ["--safesearch", "off", "--size", "Large", "--type-image", "photo", "--license", "Public"]
    assert download_images.main(argv, sleep=RecordingSleep()) == 1  # no results at all: bird is short
    assert len(FakeDDGS.calls) == len(search_queries.QUERIES["bird"])
    call = FakeDDGS.calls[0]
    assert call["query"] == search_queries.QUERIES["bird"][0] and call["page"] == 1
    assert (call["safesearch"], call["size"], call["type_image"], call["license_image"]) == (
        "off",
        "Large",
        "photo",
        "Public",
    )
    assert call["backend"] == "duckduckgo"


def test_no_network_during_search_says_so_in_one_sentence(tmp_path: Path, monkeypatch, capsys) -> None:
    install_fake_ddgs(monkeypatch, behaviour=DDGSException("DNSError: error resolving DNS"))
    monkeypatch.setattr(image_search, "can_connect", lambda host, port, timeout_s=None: False)
    dataset = tmp_path / "dataset"
    assert download_images.main(["--duckduckgo", "--dataset-dir", str(dataset), "--no-progress"]) == 2  # nothing done
    output = capsys.readouterr()
    err = output.err.strip()
    assert err == "error: no network: cannot reach duckduckgo.com; connect, or pass --urls-file FILE with image URLs"
    assert output.out.split()[:3] == ["class", "URLs", "already"]  # the table all the same
    assert len(err.splitlines()) == 1 and len(FakeDDGS.calls) == 1
    assert not dataset.exists()


def test_network_lost_after_some_images_keeps_them_and_exits_1(tmp_path: Path, capsys) -> None:
    queries = write_queries(tmp_path / "q.json", {"bird": ["bird q"], "plane": ["plane q"]})
    routes = good_routes("bird", 0, 3)
    with ImageServer(routes) as server:
        search = FakeSearch(
            {"bird q": [server.url(path) for path in routes]}, failures={"plane q": 1}, error_type=NoNetworkError
        )
        dataset = tmp_path / "dataset"
        argv = ["--duckduckgo", "--queries", str(queries), "--dataset-dir", str(dataset), "--per-class", "3", *FAST]
        assert run(argv, search) == 1  # done in part: the bird images are saved, plane could not be searched
    output = capsys.readouterr()
    assert "WARNING: no network: fake search error for 'plane q'" in output.err
    assert "re-run the same command to carry on" in output.err and "error:" not in output.err
    assert "3 images downloaded into" in output.out
    assert sorted(Path(path).parent.name for path in image_files(dataset)) == ["bird"] * 3
    assert (dataset / REPORT_NAME).is_file()


# ------------------------------------------------------------------------------------------------ --urls-file


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_no_network_for_url_list_leaves_nothing_behind(tmp_path: Path, capsys) -> None:
    port = closed_port()
    urls = tmp_path / "urls.csv"
    urls.write_text("".join(f"bird,http://127.0.0.1:{port}/{n}.jpg\n" for n in range(5)))
    dataset = tmp_path / "dataset"
    assert run(["--urls-file", str(urls), "--dataset-dir", str(dataset), *FAST]) == 2  # nothing done
    output = capsys.readouterr()
    assert output.err.strip() == f"error: no network: cannot reach 127.0.0.1; connect, or check the URLs in {urls}"
    assert output.out.split()[:3] == ["class", "URLs", "already"]  # the table all the same
    assert not dataset.exists()


def test_existing_images_are_respected(tmp_path: Path) -> None:
    routes = good_routes("bird", 0, 4)
    paths = list(routes)
    dataset = tmp_path / "dataset"
    users_copy = dataset / "train" / "bird" / "my photo.jpg"  # the same bytes as one the server has
    users_own = dataset / "val" / "bird" / "-keep me.png"
    users_copy.parent.mkdir(parents=True)
    users_own.parent.mkdir(parents=True)
    users_copy.write_bytes(routes[paths[0]].body)
    users_own.write_bytes(encode_good_image("png", 0, 777))
    before = image_files(dataset)
    with ImageServer(routes) as server:
        urls = tmp_path / "urls.csv"
        urls.write_text("".join(f"bird,{server.url(path)}\n" for path in paths))
        assert run(["--urls-file", str(urls), "--dataset-dir", str(dataset), "--per-class", "5", *FAST]) == 0
        latest = latest_manifest(dataset)
    after = image_files(dataset)
    assert {key: after[key] for key in before} == before  # the user's files: untouched
    assert len(after) == 5  # 2 of the user's + 3 new; the copy was not saved again
    record = latest[server.url(paths[0])]
    assert record["status"] == "duplicate" and record["duplicate_of"] == "train/bird/my photo.jpg"


def test_leftovers_of_a_killed_run_are_cleaned_up_or_adopted(tmp_path: Path) -> None:
    routes = good_routes("bird", 0, 3)
    paths = list(routes)
    dataset = tmp_path / "dataset"
    with ImageServer(routes) as server:
        urls = tmp_path / "urls.csv"
        urls.write_text("".join(f"bird,{server.url(path)}\n" for path in paths[:2]))
        assert run(["--urls-file", str(urls), "--dataset-dir", str(dataset), *FAST]) == 0
        # Killed mid-line, after renaming an image into place but before its manifest line, and mid-write.
        manifest = dataset / MANIFEST_NAME
        manifest.write_text(manifest.read_text() + '{"url": "http://half-written')
        data = routes[paths[2]].body
        digest = hashlib.sha256(data).hexdigest()
        landed = dataset / split_for_hash(digest, 0.2) / "bird" / f"{digest}.png"
        landed.parent.mkdir(parents=True, exist_ok=True)
        landed.write_bytes(data)
        dead_pid = next(pid for pid in range(999_999, 2_000_000) if not fileio.is_process_alive(pid))
        half = dataset / "train" / "bird" / f".{'0' * 64}.jpg.{dead_pid}.part"
        half.write_bytes(data[:10])
        urls.write_text("".join(f"bird,{server.url(path)}\n" for path in paths))
        assert run(["--urls-file", str(urls), "--dataset-dir", str(dataset), *FAST]) == 0
        assert sum(server.hits.values()) == 3  # only the URL without a manifest line was fetched again
    assert not half.exists() and landed.read_bytes() == data
    assert len(image_files(dataset)) == 3
    records = read_manifest(manifest)
    assert {record["status"] for record in records} == {"saved"}
    latest = by_url(records)
    assert len(latest) == 3 and {record["path"] for record in latest.values()} == set(image_files(dataset))
    assert latest[server.url(paths[2])]["path"] == landed.relative_to(dataset).as_posix()


# ------------------------------------------------------------------------------------------------ re-runs and limits


def write_urls(path: Path, urls: list[str], class_name: str = "bird") -> Path:
    path.write_text("".join(f"{class_name},{url}\n" for url in urls), encoding="utf-8")
    return path


def report_of(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_a_changed_limit_retries_exactly_the_urls_it_refused(tmp_path: Path, capsys) -> None:
    routes = {
        "/small-40.png": Route(encode_good_image("png", 0, 1, size=(40, 40)), content_type="image/png"),
        "/small-50.png": Route(encode_good_image("png", 0, 2, size=(50, 50)), content_type="image/png"),
        "/small-64.png": Route(encode_good_image("png", 0, 3, size=(64, 64)), content_type="image/png"),
        "/missing.jpg": Route(b"gone", status=404, content_type="text/plain"),
    }
    dataset = tmp_path / "dataset"
    with ImageServer(routes) as server:
        urls = write_urls(tmp_path / "urls.csv", [server.url(path) for path in routes])
        argv = ["--urls-file", str(urls), "--dataset-dir", str(dataset), *FAST]

        assert run([*argv, "--min-size", "100"]) == 1
        out = capsys.readouterr().out
        assert "bird: too small (< --min-size 100): 3 — lower --min-size to retry" in out
        assert "bird: http 404: 1 — pass --retry-failed to retry" in out
        record = latest_manifest(dataset)[server.url("/small-64.png")]
        assert (record["reason"], record["limit"], record["width"]) == (
            "too small",
            {"flag": "--min-size", "value": 100},
            64,
        )

        hits = dict(server.hits)
        assert run([*argv, "--min-size", "60"]) == 1  # the 404 is still failed
        assert server.hits - Counter(hits) == Counter({"/small-64.png": 1})  # only the image 60 now lets through
        out = capsys.readouterr().out
        assert "1 images downloaded" in out
        assert "bird: too small (< --min-size 60): 2 in earlier runs — lower --min-size to retry" in out

        hits = dict(server.hits)
        assert run([*argv, "--min-size", "32"]) == 1
        assert server.hits - Counter(hits) == Counter({"/small-40.png": 1, "/small-50.png": 1})
        assert "2 images downloaded" in capsys.readouterr().out

        hits = dict(server.hits)
        assert run([*argv, "--min-size", "32", "--retry-failed"]) == 1
        assert server.hits - Counter(hits) == Counter({"/missing.jpg": 1})  # the rest: the 404 only
    assert len(image_files(dataset)) == 3


def test_raising_max_bytes_and_ignoring_the_content_type_retry_those_refusals(tmp_path: Path, capsys) -> None:
    big = encode_good_image("png", 1, 7, size=(300, 300))
    routes = {
        "/big.png": Route(big, content_type="image/png"),
        "/as-html.png": Route(encode_good_image("png", 1, 8), content_type="text/html"),
    }
    dataset = tmp_path / "dataset"
    with ImageServer(routes) as server:
        urls = write_urls(tmp_path / "urls.csv", [server.url(path) for path in routes])
        argv = ["--urls-file", str(urls), "--dataset-dir", str(dataset), *FAST]
        assert run([*argv, "--max-bytes", "1000"]) == 1
        out = capsys.readouterr().out
        assert "too large (> --max-bytes 1000): 1 — raise --max-bytes to retry" in out
        assert "wrong content type: 1 — pass --ignore-content-type to retry" in out
        latest = latest_manifest(dataset)
        assert latest[server.url("/big.png")]["limit"] == {"flag": "--max-bytes", "value": 1000}
        assert latest[server.url("/as-html.png")]["limit"] == {"flag": "--ignore-content-type", "value": False}

        assert run([*argv, "--max-bytes", "1000", "--retry-failed"]) == 1  # not these: a limit refused them
        assert sum(server.hits.values()) == 2
        assert run([*argv, "--max-bytes", str(len(big))]) == 1
        assert server.hits["/big.png"] == 2 and server.hits["/as-html.png"] == 1
        assert run([*argv, "--max-bytes", str(len(big)), "--ignore-content-type"]) == 0
        assert server.hits["/big.png"] == 2 and server.hits["/as-html.png"] == 2
    assert len(image_files(dataset)) == 2


def test_deleting_the_manifest_counts_files_found_on_disk_not_downloaded(tmp_path: Path, capsys) -> None:
    routes = good_routes("bird", 0, 6)
    dataset = tmp_path / "dataset"
    with ImageServer(routes) as server:
        paths = list(routes)
        urls = write_urls(tmp_path / "urls.csv", [server.url(path) for path in paths[:5]])
        argv = ["--urls-file", str(urls), "--dataset-dir", str(dataset), *FAST]
        assert run(argv) == 0
        assert "5 images downloaded" in capsys.readouterr().out
        files = image_files(dataset)
        (dataset / MANIFEST_NAME).unlink()
        write_urls(urls, [server.url(path) for path in paths])  # one new URL
        assert run(argv) == 0
    out = capsys.readouterr().out
    assert "1 images downloaded" in out
    bird = report_of(dataset / REPORT_NAME)["classes"]["bird"]
    assert (bird["found_on_disk"], bird["downloaded"], bird["already_done"]) == (5, 1, 0)
    assert image_files(dataset).items() >= files.items() and len(image_files(dataset)) == 6
    assert {record["status"] for record in latest_manifest(dataset).values()} == {"saved"}


def test_a_rerun_that_only_retries_dead_hosts_prints_the_table_not_no_network(tmp_path: Path, capsys) -> None:
    routes = good_routes("bird", 0, 3)
    dead = f"http://127.0.0.1:{closed_port()}"
    dataset = tmp_path / "dataset"
    with ImageServer(routes) as server:
        urls = write_urls(
            tmp_path / "urls.csv", [f"{dead}/a.jpg", *(server.url(path) for path in routes), f"{dead}/b.jpg"]
        )
        argv = ["--urls-file", str(urls), "--dataset-dir", str(dataset), *FAST]
        assert run(argv) == 1
        capsys.readouterr()
        assert run(argv) == 1  # only the two dead-host URLs are tried again
        assert sum(server.hits.values()) == 3
    output = capsys.readouterr()
    assert "no network" not in output.err.lower()
    assert "bird: connection error: 2 — tried again on the next run" in output.out
    assert "URLs" in output.out and "0 images downloaded" in output.out


def test_no_network_is_not_said_when_every_url_was_refused_for_another_reason(tmp_path: Path, capsys) -> None:
    routes = {
        f"/tiny-{n}.png": Route(encode_good_image("png", 0, n, size=(8, 8)), content_type="image/png") for n in range(3)
    }
    dataset = tmp_path / "dataset"
    with ImageServer(routes) as server:
        urls = write_urls(tmp_path / "urls.csv", [server.url(path) for path in routes])
        argv = ["--urls-file", str(urls), "--dataset-dir", str(dataset), *FAST]
        assert run(argv) == 1
        assert run(argv) == 1  # nothing to do: the table all the same
    output = capsys.readouterr()
    assert "no network" not in output.err.lower() and output.out.count("already done") == 2
    assert "too small (< --min-size 32): 3 in earlier runs — lower --min-size to retry" in output.out


# ---------------------------------------------------------------------------------------------- hostile and concurrent


def test_two_concurrent_runs_each_count_what_they_saved(tmp_path: Path) -> None:
    routes = good_routes("bird", 0, 40)
    dataset = tmp_path / "dataset"
    with ImageServer(routes, latency_s=0.01) as server:
        urls = write_urls(tmp_path / "urls.csv", [server.url(path) for path in routes])
        codes: dict[str, int] = {}

        def download(name: str) -> None:
            argv = ["--urls-file", str(urls), "--dataset-dir", str(dataset), "--report", str(tmp_path / f"{name}.json")]
            codes[name] = run([*argv, *FAST])

        threads = [threading.Thread(target=download, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert codes == {"a": 0, "b": 0}
    counts = [report_of(tmp_path / f"{name}.json")["classes"]["bird"] for name in ("a", "b")]
    assert counts[0]["downloaded"] + counts[1]["downloaded"] == 40
    for bird in counts:
        assert bird["downloaded"] + bird["found_on_disk"] + bird["already_done"] + bird["duplicates"] == 40
    assert len(image_files(dataset)) == 40  # no temporary file left
    lines = (dataset / MANIFEST_NAME).read_bytes().decode("utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    assert {record["url"] for record in records if record["status"] == "saved"} == {server.url(p) for p in routes}


def test_manifest_lines_stay_whole_with_two_writers(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME

    def append(name: str) -> None:
        writer = ManifestWriter(path)
        for number in range(300):
            writer.write({"url": f"{name}{number}", "detail": name * 20_000})  # lines longer than any buffer
        writer.close()

    threads = [threading.Thread(target=append, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 600 and len({json.loads(line)["url"] for line in lines}) == 600


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_read_only_dataset_is_refused_in_one_sentence_before_any_work(tmp_path: Path, capsys) -> None:
    dataset = tmp_path / "dataset"
    (dataset / "train" / "bird").mkdir(parents=True)
    dataset.chmod(0o555)
    try:
        search = FakeSearch({"q": ["http://127.0.0.1:9/x.jpg"]})
        queries = write_queries(tmp_path / "q.json", {"bird": ["q"]})
        assert run(["--duckduckgo", "--queries", str(queries), "--dataset-dir", str(dataset), *FAST], search) == 2
    finally:
        dataset.chmod(0o755)
    err = capsys.readouterr().err
    assert err.startswith("error: cannot download into") and "read-only" in err and len(err.splitlines()) == 1
    assert search.calls == [] and sorted(os.listdir(dataset)) == ["train"]


def test_read_only_class_folder_is_refused_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    """The same refusal as above, on a machine where the tests run as root (os.access says what a user would see)."""
    dataset = tmp_path / "dataset"
    locked = dataset / "val" / "bird"
    locked.mkdir(parents=True)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    search = FakeSearch({"q": ["http://127.0.0.1:9/x.jpg"]})
    queries = write_queries(tmp_path / "q.json", {"bird": ["q"]})
    assert run(["--duckduckgo", "--queries", str(queries), "--dataset-dir", str(dataset), *FAST], search) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot download into {dataset}: {locked} is read-only: cannot write there\n"
    assert search.calls == [] and sorted(os.listdir(dataset)) == ["val"]


def test_a_class_folder_linked_outside_the_dataset_is_refused(tmp_path: Path, capsys) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "precious.jpg").write_bytes(b"mine")
    dataset = tmp_path / "dataset"
    (dataset / "train").mkdir(parents=True)
    (dataset / "train" / "bird").symlink_to(outside)
    routes = good_routes("bird", 0, 2)
    with ImageServer(routes) as server:
        urls = write_urls(tmp_path / "urls.csv", [server.url(path) for path in routes])
        assert run(["--urls-file", str(urls), "--dataset-dir", str(dataset), *FAST]) == 2
        assert sum(server.hits.values()) == 0
    assert "leads outside" in capsys.readouterr().err
    assert os.listdir(outside) == ["precious.jpg"] and (outside / "precious.jpg").read_bytes() == b"mine"


def test_stale_temp_files_of_our_kind_are_removed_at_start(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    cache = dataset / ".search_cache"
    cache.mkdir(parents=True)
    hour_ago = time.time() - 7200
    stale = [dataset / f".{REPORT_NAME}.k1ll3d.tmp", cache / ".birds-0123456789ab.json.x9y8.tmp"]
    fresh = dataset / f".{REPORT_NAME}.l1ve00.tmp"  # another run may be writing it right now
    not_ours = dataset / ".notes.txt.abc.tmp"
    for path in [*stale, fresh, not_ours]:
        path.write_text("{")
    for path in [*stale, not_ours]:
        os.utime(path, (hour_ago, hour_ago))
    routes = good_routes("bird", 0, 1)
    with ImageServer(routes) as server:
        urls = write_urls(tmp_path / "urls.csv", [server.url(path) for path in routes])
        assert run(["--urls-file", str(urls), "--dataset-dir", str(dataset), *FAST]) == 0
    assert not any(path.exists() for path in stale)
    assert fresh.exists() and not_ours.exists()


def test_printed_urls_are_escaped(tmp_path: Path, capsys) -> None:
    with ImageServer({}) as server:
        spoof = server.url("/x\u202egnp.jpg\x1b[2J")
        urls = write_urls(tmp_path / "urls.csv", [spoof])
        assert run(["--urls-file", str(urls), "--dataset-dir", str(tmp_path / "dataset"), *FAST]) == 1
    err = capsys.readouterr().err
    assert "\u202e" not in err and "\x1b" not in err
    assert "x\\u202egnp.jpg\\x1b[2J: http 404" in err


def test_odd_files_in_a_class_folder_do_not_break_the_scan(tmp_path: Path, capsys) -> None:
    routes = good_routes("bird", 0, 3)
    first, second, third = routes
    dataset = tmp_path / "dataset"
    folder = dataset / "train" / "bird"
    folder.mkdir(parents=True)
    odd_name = os.fsencode(folder) + b"/bad\xffname.png"
    with open(odd_name, "wb") as file:  # a name that is not UTF-8, holding the first image's bytes
        file.write(routes[first].body)
    os.mkfifo(folder / "pipe.jpg")  # never opened: reading it would hang
    (folder / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    (tmp_path / "mine.png").write_bytes(routes[second].body)
    (folder / "linked.png").symlink_to(tmp_path / "mine.png")  # read through, never written
    before = sorted(os.listdir(os.fsencode(folder)))
    with ImageServer(routes) as server:
        urls = write_urls(tmp_path / "urls.csv", [server.url(path) for path in routes])
        assert run(["--urls-file", str(urls), "--dataset-dir", str(dataset), *FAST]) == 0
        latest = latest_manifest(dataset)
    first_record, second_record = latest[server.url(first)], latest[server.url(second)]
    assert first_record["status"] == second_record["status"] == "duplicate"
    assert os.fsencode(dataset / first_record["duplicate_of"]) == odd_name  # lossless, and the manifest is valid UTF-8
    assert second_record["duplicate_of"] == "train/bird/linked.png"
    (dataset / MANIFEST_NAME).read_bytes().decode("utf-8")
    assert latest[server.url(third)]["status"] == "saved"
    assert (
        set(before) <= set(os.listdir(os.fsencode(folder)))
        and (tmp_path / "mine.png").read_bytes() == routes[second].body
    )
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ pure functions


def test_inspect_image_refuses_each_bad_download() -> None:
    cases = {reason: route.body for route, reason in bad_routes(MAX_BYTES, 0).values() if route.status == 200}
    for reason, data in cases.items():
        if reason in ("too large", "wrong content type", "timeout"):
            continue  # decided from the HTTP answer, not the bytes
        with pytest.raises(ImageRejectedError) as refused:
            inspect_image(data, min_size=32)
        assert refused.value.reason == reason
    with pytest.raises(ImageRejectedError, match="an HTML page"):
        inspect_image(b"<!DOCTYPE html><html></html>", 32)
    facts = inspect_image(encode_good_image("cmyk_jpeg", 0, 1), min_size=32)
    assert (facts.image_format, facts.width, facts.height) == ("JPEG", 64, 64)
    with pytest.raises(ImageRejectedError, match="too small"):
        inspect_image(encode_good_image("png", 0, 1, size=(2000, 10)), min_size=32)


def test_small_pure_helpers() -> None:
    delays = [backoff_delay(attempt, 4.0, jitter) for attempt, jitter in enumerate([0.99, 0.0, 0.99, 0.0])]
    assert delays == sorted(delays) and delays[0] >= 4.0
    assert is_retryable("timeout") and is_retryable("http 503") and is_retryable("http 429")
    assert not is_retryable("http 404") and not is_retryable("too small")
    assert is_allowed_content_type(None) and is_allowed_content_type("image/webp")
    assert is_allowed_content_type("application/octet-stream")
    assert not is_allowed_content_type("text/html; charset=utf-8")
    assert interleave([[1, 2, 3], [4], [5, 6]]) == [1, 4, 5, 2, 6, 3]
    assert take_evenly([[1, 2, 3, 4], [5], []], per_group=2, wanted=6) == [[1, 2, 3, 4], [5], []]
    assert take_evenly([[1, 2, 3], [4, 5, 6]], per_group=1, wanted=3) == [[1, 2], [4]]
    entries, problems = parse_url_lines(["bird,http://a/x.jpg?a=1,2", "bad", "bird,file:///etc/passwd"], "f")
    assert entries == [(1, "bird", "http://a/x.jpg?a=1,2")]
    assert problems[0].startswith("f line 2:") and problems[1].startswith("f line 3:")
    records = [{"url": "u", "class": "c", "status": "failed", "retryable": True}]
    records += [{"url": "u", "class": "c", "status": "saved"}, {"url": "u", "class": "d", "status": "failed"}]
    limits = FetchLimits()
    latest = latest_records(records)
    assert latest["c", "u"] == records[1] and latest["d", "u"] == records[2] and len(latest) == 2
    assert not should_fetch(latest["c", "u"], limits)
    assert should_fetch(records[0], limits) and should_fetch(None, limits)
    assert not should_fetch({"status": "failed", "reason": "http 404", "retryable": False}, limits)
    assert should_fetch({"status": "failed", "reason": "http 404", "retryable": False}, limits, retry_failed=True)


def test_manifest_writer_ends_a_cut_line_before_appending(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    path.write_text('{"url": "a", "status": "saved"}\n{"url": "b", "sta')
    writer = ManifestWriter(path)
    writer.write({"url": "c", "status": "saved"})
    writer.close()
    assert [record["url"] for record in read_manifest(path)] == ["a", "c"]


# ------------------------------------------------------------------------------------------------ queries and CLI


def test_default_queries_are_varied_with_hard_negatives_in_other() -> None:
    queries = search_queries.load_queries()
    assert list(queries) == ["bird", "plane", "superman", "other"]
    assert all(len(set(class_queries)) >= 10 for class_queries in queries.values())
    other = " ".join(queries["other"])
    assert all(word in other for word in ("kite", "drone", "batman", "helicopter"))
    assert len(queries["other"]) > 2 * len(queries["bird"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON (line 1"),
        ('["bird"]', "expected a JSON object"),
        ('{"bird": "one query"}', "must map to a list"),
        ('{"../bird": ["x"]}', "cannot be a folder name"),
        ('{"bird\\n": ["x"]}', "cannot be a folder name"),  # a newline in a folder name; "$" let it through
        ('{"bird.": ["x"]}', "cannot be a folder name"),  # Windows drops the dot
        pytest.param('{"' + "b" * 5000 + '": ["x"]}', "cannot be a folder name", id="5000-characters"),  # was a crash
        ('{"bird": ["  "]}', "has no queries"),
    ],
)
def test_bad_query_files_are_refused_with_the_reason(tmp_path: Path, content: str, message: str, capsys) -> None:
    path = tmp_path / "q.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        search_queries.load_queries(path)
    assert run(["--duckduckgo", "--queries", str(path), "--dataset-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert search_queries.main(["--queries", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_query_file_round_trip_and_usage_errors(tmp_path: Path, capsys) -> None:
    assert search_queries.main([]) == 0
    path = tmp_path / "mine.json"
    path.write_text(capsys.readouterr().out)
    assert search_queries.load_queries(path) == search_queries.QUERIES
    for argv, message in [
        (["--duckduckgo", "--classes", "cat"], "no queries for class cat"),
        (["--duckduckgo", "--val-fraction", "1.5"], "--val-fraction"),
        (["--urls-file", str(tmp_path / "none.csv")], "no such file"),
    ]:
        assert run([*argv, "--dataset-dir", str(tmp_path / "d")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own check
        run(["--duckduckgo", "--urls-file", str(path), "--dataset-dir", str(tmp_path / "d")])
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("script", ["download_images.py", "search_queries.py"])
def test_help_runs(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "data_collection" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0 and "(default" in result.stdout
