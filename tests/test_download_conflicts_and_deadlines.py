"""download_images.py against hostile and unlucky inputs: a server that drips, Ctrl-C mid-download, the same photo
offered under two labels (two URLs, or one URL on two lines of a URL file with malformed lines), and classes too small
for the hash split to give them a val image."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import detect_duplicates_by_filesize
import download_images
import image_fetch
import pytest
import remove_duplicates
from _download_helpers import FakeSearch, ImageServer, Route, encode_good_image, good_routes
from conftest import ROOT
from download_images import REPORT_NAME, parse_url_lines, split_for_hash
from download_manifest import MANIFEST_NAME, latest_records, read_manifest
from image_fetch import DEADLINE_POOLS, Candidate, DeadlineAdapter, Fetcher, FetchLimits

from fileio import ReportError

FAST = ["--workers", "4", "--retries", "0", "--min-size", "32", "--no-progress"]
SLACK_S = 2.0  # what a loaded 2-core machine may add to a deadline: start-up, the watchdog's poll, the thread switch


def latest_by_url(dataset: Path) -> dict[str, dict]:
    return {url: record for (_, url), record in latest_records(read_manifest(dataset / MANIFEST_NAME)).items()}


def run(argv: list[str]) -> int:
    return download_images.main(argv, search_backend=FakeSearch({}), sleep=lambda seconds: None)


def image_files(dataset: Path) -> dict[str, bytes]:
    return {
        path.relative_to(dataset).as_posix(): path.read_bytes()
        for split in ("train", "val")
        for path in sorted((dataset / split).rglob("*"))
        if path.is_file()
    }


def write_urls(path: Path, lines: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{name},{url}\n" for name, url in lines), encoding="utf-8")
    return path


def png(class_index: int, seed: int) -> bytes:
    return encode_good_image("png", class_index, seed)


def train_only_images(class_index: int, count: int, val_fraction: float = 0.2) -> list[bytes]:
    """``count`` distinct images that the hash rule alone would all put in train/ (so no val image by chance)."""
    images, seed = [], 0
    while len(images) < count:
        data = png(class_index, seed)
        if split_for_hash(hashlib.sha256(data).hexdigest(), val_fraction) == "train":
            images.append(data)
        seed += 1
    return images


# ------------------------------------------------------------------------------------------------ deadlines


def test_a_server_dripping_body_or_headers_is_cut_at_the_timeout(tmp_path: Path, capsys) -> None:
    good = png(0, 1)
    drip = png(0, 2) * 4  # a Content-Length that would take minutes at one byte per 0.05 s
    routes = {
        "/good.png": Route(good, content_type="image/png"),
        "/drip-body.png": Route(drip, content_type="image/png", drip_s=0.05),
        "/drip-headers.png": Route(drip, content_type="image/png", drip_s=0.05, drip_headers=True),
    }
    dataset = tmp_path / "dataset"
    with ImageServer(routes) as server:
        urls = write_urls(tmp_path / "urls.csv", [("bird", server.url(path)) for path in routes])
        started = time.monotonic()
        argv = ["--urls-file", str(urls), "--dataset-dir", str(dataset), "--timeout", "1", *FAST, "--retries", "2"]
        status = run(argv)  # a server cut mid-answer is not retried in the same run: the next run tries it
        elapsed = time.monotonic() - started
    assert status == 1  # two URLs unusable
    assert server.hits["/drip-body.png"] == server.hits["/drip-headers.png"] == 1
    assert elapsed < 1 + SLACK_S, f"took {elapsed:.1f} s with --timeout 1"
    latest = latest_by_url(dataset)
    assert latest[server.url("/good.png")]["status"] == "saved"
    for path in ("/drip-body.png", "/drip-headers.png"):
        record = latest[server.url(path)]
        assert (record["status"], record["reason"], record["retryable"]) == ("failed", "timeout", True)
    assert list(image_files(dataset).values()) == [good]  # nothing half-received was kept
    assert "timeout (--timeout 1 s): 2" in capsys.readouterr().out


@pytest.fixture
def hung_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """socket.getaddrinfo never answers for names ending in ``.hung`` (until the test ends), like a resolver that
    waits on a dead name server; "localhost" resolves as usual. Yields the names looked up."""
    real, release, asked = socket.getaddrinfo, threading.Event(), []

    def getaddrinfo(host: str, *args: object, **options: object) -> object:
        asked.append(host)
        if str(host).endswith(".hung"):
            release.wait(60)
            raise socket.gaierror(socket.EAI_AGAIN, "the name server gave up")
        return real(host, *args, **options)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield asked
    release.set()
    deadline = time.monotonic() + 5
    while image_fetch._lookups and time.monotonic() < deadline:  # the abandoned lookups end: none joins the next test
        time.sleep(0.01)


def test_a_hung_name_holds_one_lookup_however_many_downloads_wait_for_it(hung_dns: list[str]) -> None:
    failures: list[BaseException] = []

    def wait() -> None:
        try:
            image_fetch.resolve("same.hung", 80, 0.3)
        except TimeoutError as error:
            failures.append(error)

    threads = [threading.Thread(target=wait) for _ in range(10)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(failures) == 10 and time.monotonic() - started < 0.3 + SLACK_S
    assert hung_dns.count("same.hung") == 1  # one thread blocked in the resolver, not ten


def test_a_dns_lookup_that_never_answers_costs_one_url_within_the_timeout(tmp_path: Path, hung_dns: list[str]) -> None:
    routes = {f"/good-{number}.png": Route(png(0, number), content_type="image/png") for number in range(2)}
    dataset = tmp_path / "dataset"
    with ImageServer(routes) as server:
        by_name = server.url("/good-1.png").replace("127.0.0.1", "localhost")  # a name: looked up through resolve
        lines = [("bird", server.url("/good-0.png")), ("bird", by_name), ("bird", "http://images.hung/a.png")]
        urls = write_urls(tmp_path / "urls.csv", lines)
        started = time.monotonic()
        status = run(["--urls-file", str(urls), "--dataset-dir", str(dataset), "--timeout", "1", *FAST])
        elapsed = time.monotonic() - started
    assert status == 1 and "images.hung" in hung_dns and "localhost" in hung_dns
    assert elapsed < 2 + SLACK_S, f"took {elapsed:.1f} s with --timeout 1"  # the lookup, then the network check
    record = latest_by_url(dataset)["http://images.hung/a.png"]
    assert (record["status"], record["reason"], record["retryable"]) == ("failed", "connection error", True)
    assert "DNS lookup of images.hung did not answer within 1 s" in record["detail"]
    assert sorted(image_files(dataset).values()) == sorted(route.body for route in routes.values())


def test_a_resolver_that_never_answers_is_no_network_in_one_sentence_within_seconds(
    tmp_path: Path, hung_dns: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    urls = write_urls(tmp_path / "urls.csv", [("bird", f"http://img{number}.hung/a.png") for number in range(3)])
    started = time.monotonic()
    status = run(["--urls-file", str(urls), "--dataset-dir", str(tmp_path / "dataset"), "--timeout", "1", *FAST])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert status == 2 and elapsed < 2 + SLACK_S, f"took {elapsed:.1f} s with --timeout 1"
    first = err.removeprefix("error: no network: cannot reach ")[:9]  # the URL that failed first: any of the three
    assert first in ("img0.hung", "img1.hung", "img2.hung")
    expected = f"error: no network: cannot reach {first} or any of 2 other hosts; connect, or check the URLs in {urls}"
    assert err == expected


def test_a_name_with_two_addresses_is_fetched_from_the_one_that_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: object, *args: object, **options: object) -> object:
        if host == "two.test":  # nothing listens on 127.0.0.2 (refused at once), the server is on 127.0.0.1
            return [*real("127.0.0.2", port, *args, **options), *real("127.0.0.1", port, *args, **options)]
        return real(host, port, *args, **options)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with ImageServer({"/a.png": Route(png(0, 1), content_type="image/png")}) as server:
        url = server.url("/a.png").replace("127.0.0.1", "two.test")
        result = Fetcher(FetchLimits(timeout_s=5, retries=0, min_size=32)).fetch(Candidate("bird", url, "urls-file"))
    assert result.reason is None and result.data == png(0, 1)


@contextlib.contextmanager
def unanswering(count: int) -> Iterator[list[str]]:
    """``count`` local addresses (127.0.0.2, ...) on one port where a connect never completes: listeners whose backlog
    is full, so Linux drops further SYNs. Skips the test where this kernel answers anyway."""
    sockets: list[socket.socket] = []
    try:
        port = 0
        for index in range(count):
            listener = socket.socket()
            listener.bind((f"127.0.0.{index + 2}", port))
            port = listener.getsockname()[1]
            listener.listen(0)
            sockets.append(listener)
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex((f"127.0.0.{index + 2}", port))
                sockets.append(filler)
        time.sleep(0.2)
        try:
            socket.create_connection(("127.0.0.2", port), timeout=0.3).close()
            pytest.skip("connects to a full backlog complete on this kernel")
        except TimeoutError:
            pass
        yield [f"127.0.0.{index + 2}:{port}" for index in range(count)]
    finally:
        for sock in sockets:
            sock.close()


def test_a_name_whose_addresses_never_answer_a_connect_still_ends_within_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with unanswering(3) as places:
        real, port = socket.getaddrinfo, int(places[0].split(":")[1])

        def getaddrinfo(host: str, *args: object, **options: object) -> object:
            if host == "three.test":
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (place.split(":")[0], port)) for place in places]
            return real(host, *args, **options)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        urls = write_urls(tmp_path / "urls.csv", [("bird", f"http://three.test:{port}/a.png")])
        started = time.monotonic()
        status = run(["--urls-file", str(urls), "--dataset-dir", str(tmp_path / "dataset"), "--timeout", "1", *FAST])
        elapsed = time.monotonic() - started
        fetcher = Fetcher(FetchLimits(timeout_s=30, retries=0))  # and Ctrl-C ends a connect in progress at once
        threading.Timer(0.3, fetcher.cancel).start()
        cancelled = time.monotonic()
        result = fetcher.fetch(Candidate("bird", f"http://{places[0]}/a.png", "urls-file"))
        cancelled = time.monotonic() - cancelled
    assert status == 1 and elapsed < 1.5 + SLACK_S, elapsed  # 1 s on the first address, what was left on the next
    record = latest_by_url(tmp_path / "dataset")[f"http://three.test:{port}/a.png"]
    assert (record["reason"], record["retryable"]) == ("timeout", True)
    assert cancelled < 0.3 + SLACK_S and result.reason in ("timeout", "interrupted")


def test_the_network_check_ends_within_its_timeout_however_many_names_hang_and_leaves_no_probe_running(
    hung_dns: list[str],
) -> None:
    hosts = [(f"host{number}.hung", 80) for number in range(64)]
    started = time.monotonic()
    assert not image_fetch.network_reachable(hosts, timeout_s=1)
    assert time.monotonic() - started < 1 + SLACK_S  # every lookup at once; was 4 rounds of 16, each waiting 1 s
    time.sleep(0.3)
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("probe")]


def test_a_url_whose_name_cannot_be_valid_is_a_bad_url_even_in_the_network_check(tmp_path: Path, capsys) -> None:
    invalid = ["http://a..b/c.png", f"http://{'x' * 64}.b/"]  # an empty label, a label over 63 characters
    dataset = tmp_path / "dataset"
    with ImageServer({"/good.png": Route(png(0, 1), content_type="image/png")}) as server:
        lines = [("bird", url) for url in ["http://127.0.0.1:1/refused.png", *invalid, server.url("/good.png")]]
        urls = write_urls(tmp_path / "urls.csv", lines)  # the refusal starts the network check, which probes them all
        status = run(["--urls-file", str(urls), "--dataset-dir", str(dataset), "--timeout", "1", *FAST])
    assert status == 1 and "Traceback" not in capsys.readouterr().err
    assert [latest_by_url(dataset)[url]["reason"] for url in invalid] == ["bad url", "bad url"]
    assert latest_by_url(dataset)[server.url("/good.png")]["status"] == "saved"


def test_cancel_ends_a_download_waiting_on_a_dns_lookup_at_once(hung_dns: list[str]) -> None:
    fetcher = Fetcher(FetchLimits(timeout_s=60))
    threading.Timer(0.3, fetcher.cancel).start()  # Ctrl-C
    started = time.monotonic()
    result = fetcher.fetch(Candidate("bird", "http://images.hung/a.png", "urls-file"))
    assert time.monotonic() - started < 0.3 + SLACK_S and result.reason in ("timeout", "interrupted")


def test_https_and_proxied_requests_get_the_same_deadline() -> None:
    fetcher = Fetcher(FetchLimits())
    adapter = fetcher._session().get_adapter("https://img.example/a.jpg")
    assert isinstance(adapter, DeadlineAdapter)
    for url in ("https://img.example/a.jpg", "http://img.example/a.jpg"):
        assert type(adapter.poolmanager.connection_from_url(url)) is DEADLINE_POOLS[url.split(":")[0]]
        proxied = adapter.proxy_manager_for("http://proxy.example:3128").connection_from_url(url)
        assert type(proxied) is DEADLINE_POOLS[url.split(":")[0]]


def test_ctrl_c_ends_the_run_within_seconds_and_keeps_what_finished(tmp_path: Path) -> None:
    good = {f"/good-{number}.png": Route(png(1, number), content_type="image/png") for number in range(3)}
    forever = {
        f"/drip-{number}.png": Route(png(1, 9) * 50, content_type="image/png", drip_s=0.5) for number in range(2)
    }
    dataset = tmp_path / "dataset"
    with ImageServer(good | forever) as server:
        urls = write_urls(tmp_path / "urls.csv", [("plane", server.url(path)) for path in [*good, *forever]])
        argv = [sys.executable, str(ROOT / "data_collection" / "download_images.py"), "--urls-file", str(urls)]
        argv += ["--dataset-dir", str(dataset), "--timeout", "60", *FAST]
        process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            manifest = dataset / MANIFEST_NAME
            waited = time.monotonic()
            while not (manifest.exists() and len(read_manifest(manifest)) == len(good)):
                assert process.poll() is None and time.monotonic() - waited < 60, "the good images never arrived"
                time.sleep(0.05)
            while sum(server.hits[path] for path in forever) < len(forever):  # both drips in flight
                time.sleep(0.05)
            interrupted = time.monotonic()
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=30)
            elapsed = time.monotonic() - interrupted
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130, stderr
    assert elapsed < 3.0, f"the run took {elapsed:.1f} s to end after Ctrl-C"
    assert "re-run the same command to resume" in stderr and "Traceback" not in stderr
    assert sorted(image_files(dataset).values()) == sorted(route.body for route in good.values())
    records = read_manifest(dataset / MANIFEST_NAME)  # whole lines, one per finished image
    assert len(records) == len(good) and {record["status"] for record in records} == {"saved"}
    assert not [path for path in dataset.rglob("*.part")]


# ------------------------------------------------------------------------------------------------ label conflicts


def test_the_same_photo_under_two_labels_is_kept_in_both_and_reported_as_a_conflict(tmp_path: Path, capsys) -> None:
    shared = png(2, 77)
    routes = {"/bird/shared.png": Route(shared, content_type="image/png")}
    routes |= {f"/bird/{n}.png": Route(png(0, n), content_type="image/png") for n in range(3)}
    routes |= {f"/plane/{n}.png": Route(png(1, n), content_type="image/png") for n in range(3)}
    routes["/plane/also-shared.png"] = Route(shared, content_type="image/png")
    dataset = tmp_path / "dataset"
    with ImageServer(routes) as server:
        urls = write_urls(tmp_path / "urls.csv", [(path.split("/")[1], server.url(path)) for path in routes])
        argv = ["--urls-file", str(urls), "--dataset-dir", str(dataset), "--timeout", "5", *FAST]
        assert run(argv) == 0
        first = image_files(dataset)
        assert run(argv) == 0  # a re-run changes nothing and still counts the conflict
    assert image_files(dataset) == first
    digest = hashlib.sha256(shared).hexdigest()
    copies = sorted(path for path, data in first.items() if data == shared)
    assert [path.split("/")[1] for path in copies] == ["bird", "plane"]  # visible under both labels
    assert len({path.split("/")[0] for path in copies}) == 1  # one split: a conflict, not also a leak
    out = capsys.readouterr().out
    assert "label conflicts" in out.splitlines()[0]
    report = json.loads((dataset / REPORT_NAME).read_text(encoding="utf-8"))
    assert report["label_conflicts"] == [
        {
            "sha256": digest,
            "classes": ["bird", "plane"],
            "files": copies,
            "urls": [server.url("/bird/shared.png"), server.url("/plane/also-shared.png")],
        }
    ]
    assert report["classes"]["bird"]["label_conflicts"] == report["classes"]["plane"]["label_conflicts"] == 1
    latest = latest_by_url(dataset)
    assert latest[server.url("/plane/also-shared.png")]["label_conflict_with"] == [copies[0]]

    # The exact-copy detector sees a label conflict; the remover's automatic strategies leave it alone.
    assert detect_duplicates_by_filesize.main(["--dataset-dir", str(dataset), "--no-progress"]) == 0
    duplicates = json.loads((dataset / "duplicate_report_filesize.json").read_text(encoding="utf-8"))
    groups = duplicates["duplicate_groups"]
    assert [sorted(entry["path"] for entry in group["files"]) for group in groups["diff_class_same_set"]] == [copies]
    report_path = str(dataset / "duplicate_report_filesize.json")
    assert remove_duplicates.main(["--report", report_path, "--strategy", "all", "--apply", "--yes"]) in (0, 1)
    assert all((dataset / path).read_bytes() == shared for path in copies)


def test_urls_file_names_malformed_lines_and_downloads_the_rest(tmp_path: Path, capsys) -> None:
    routes = good_routes("cat", 0, 3)
    with ImageServer(routes) as server:
        good = [server.url(path) for path in routes]
        lines = [
            "class,url",
            "# my own list",
            f"cat,{good[0]}",
            "cat no comma here",
            f"cat,{good[1]}",
            "cat,ftp://example.com/x.jpg",
            f"../up,{good[2]}",
            "",
            f'"cat","{good[2]}"',
            f"dog,{good[0]}",  # the same URL under another class: fetched for both, a label conflict
            f"cat,{good[0]}",  # the same line again: once
        ]
        urls = tmp_path / "urls.csv"
        urls.write_text("\n".join(lines) + "\n")
        dataset = tmp_path / "dataset"
        assert run(["--urls-file", str(urls), "--dataset-dir", str(dataset), *FAST]) == 1
    err = capsys.readouterr().err
    for line_number in (4, 6, 7):
        assert f"urls.csv line {line_number}:" in err
    assert "line 10: URL also listed as 'cat' on line 3: downloaded for both, a label conflict" in err
    files = image_files(dataset)
    assert sorted(Path(relative).parent.name for relative in files) == ["cat"] * 3 + ["dog"]
    assert [server.hits[path] for path in routes] == [2, 1, 1]
    report = json.loads((dataset / REPORT_NAME).read_text())
    assert sum("line" in error.get("input", "") for error in report["errors"]) == 3
    assert [conflict["classes"] for conflict in report["label_conflicts"]] == [["cat", "dog"]]


# ------------------------------------------------------------------------------------------------ small classes


def test_every_class_with_two_or_more_images_gets_a_val_image_stably(tmp_path: Path) -> None:
    sizes = {"bird": 10, "superman": 3, "lonely": 1}
    images = {name: train_only_images(index, count) for index, (name, count) in enumerate(sizes.items())}
    routes = {
        f"/{name}/{n}.png": Route(data, content_type="image/png")
        for name in sizes
        for n, data in enumerate(images[name])
    }
    with ImageServer(routes) as server:
        urls = write_urls(tmp_path / "urls.csv", [(path.split("/")[1], server.url(path)) for path in routes])
        trees = []
        for dataset in (tmp_path / "one", tmp_path / "two"):
            argv = ["--urls-file", str(urls), "--dataset-dir", str(dataset), "--timeout", "5", *FAST]
            assert run(argv) == 0
            trees.append(image_files(dataset))
            assert run(argv) == 0  # a re-run moves nothing
            assert image_files(dataset) == trees[-1]
        assert trees[0] == trees[1]  # the same choice from scratch
    tree = trees[0]
    for name, data in images.items():
        val = [path for path in tree if path.startswith(f"val/{name}/")]
        if len(data) >= 2:  # the one with the smallest hash went to val
            smallest = min(hashlib.sha256(item).hexdigest() for item in data)
            assert val == [f"val/{name}/{smallest}.png"]
        else:
            assert val == []
    latest = latest_by_url(tmp_path / "one")
    assert {record["path"] for record in latest.values()} == set(tree)  # the manifest follows the move
    report = json.loads((tmp_path / "one" / REPORT_NAME).read_text(encoding="utf-8"))
    assert report["classes"]["superman"]["val"] == 1 and report["classes"]["superman"]["train"] == 2


def test_val_fraction_zero_asks_for_no_val_images(tmp_path: Path) -> None:
    routes = {f"/bird/{n}.png": Route(png(0, n), content_type="image/png") for n in range(3)}
    dataset = tmp_path / "dataset"
    with ImageServer(routes) as server:
        urls = write_urls(tmp_path / "urls.csv", [("bird", server.url(path)) for path in routes])
        assert run(["--urls-file", str(urls), "--dataset-dir", str(dataset), "--val-fraction", "0", *FAST]) == 0
    assert all(path.startswith("train/") for path in image_files(dataset))


def test_a_url_line_python_cannot_parse_is_one_skipped_line_not_the_end_of_the_run() -> None:
    lines = ["bird,http://[::1:80/x.jpg", "bird,http://a/" + "a" * 300_000, "bird,http://a/ok.jpg"]
    entries, problems = parse_url_lines(lines, "urls.csv")
    assert entries == [(3, "bird", "http://a/ok.jpg")]
    assert [problem.split(":")[0] for problem in problems] == ["urls.csv line 1", "urls.csv line 2"]
    assert all(len(problem) < 300 for problem in problems)


def test_a_manifest_line_json_cannot_hold_is_skipped_like_a_cut_one(tmp_path: Path, caplog) -> None:
    manifest = tmp_path / MANIFEST_NAME
    good = {"class": "bird", "url": "http://a/x.jpg", "status": "failed", "reason": "http 404"}
    lines = ["[" * 100_000 + "]" * 100_000, '{"n": ' + "9" * 5000 + "}", json.dumps(good)]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_manifest(manifest) == [good]
    assert caplog.text.count("is not a JSON record") == 2
    caplog.clear()
    huge = '{"url": "' + "x" * (3 * 2**20) + '"}'  # a line of 3 MiB: longer than any record
    manifest.write_text("\n".join([huge, json.dumps(good), "{cut"]) + "\n", encoding="utf-8")
    assert read_manifest(manifest) == [good]
    assert caplog.text.count("line 1 is longer than any record") == 1 and caplog.text.count("WARNING") == 2
    assert "line 3 is not a JSON record" in caplog.text  # the line numbers after the long line stay right
    manifest.unlink()
    os.mkfifo(manifest)  # swapped in after a check: refused on the open file, never a hang
    with pytest.raises(ReportError, match="is a named pipe"):
        read_manifest(manifest)


def test_a_urls_file_of_gigabytes_is_refused_before_it_is_read(tmp_path: Path, capsys) -> None:
    urls = tmp_path / "urls.csv"
    with open(urls, "wb") as handle:
        handle.truncate(4 << 30)  # sparse: costs no disk, but read whole it would take 4 GB of memory
    assert run(["--urls-file", str(urls), "--dataset-dir", str(tmp_path / "dataset"), *FAST]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --urls-file") and "bytes, more than a URL list needs" in error
    assert len(error.splitlines()) == 1 and not (tmp_path / "dataset").exists()


@pytest.mark.parametrize("linked", ["train", "val"])
def test_the_val_move_never_goes_through_a_class_folder_that_became_a_link(tmp_path: Path, linked: str) -> None:
    dataset, outside = tmp_path / "dataset", tmp_path / "outside"
    outside.mkdir()
    (outside / "a.jpg").write_bytes(b"outside")
    (dataset / "train").mkdir(parents=True)
    (dataset / "val").mkdir()
    real = dataset / linked / "bird"
    if linked == "train":
        real.symlink_to(outside, target_is_directory=True)  # train/bird/a.jpg is the outside file
    else:
        (dataset / "train/bird").mkdir()
        (dataset / "train/bird/a.jpg").write_bytes(b"ours")
        real.symlink_to(outside, target_is_directory=True)
    before = sorted((path.name, path.read_bytes()) for path in outside.iterdir())
    assert download_images.move_new_name(dataset, "train/bird/a.jpg", "val/bird/b.jpg") is False
    assert sorted((path.name, path.read_bytes()) for path in outside.iterdir()) == before
