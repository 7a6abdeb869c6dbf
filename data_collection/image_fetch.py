"""Fetch one image URL and verify its bytes: the downloader's network and image checks.

Imported by download_images.py and its other sibling modules; not a script. A ``Fetcher`` downloads one
URL in a worker thread (size cap, Content-Type check, retries with backoff for answers that may pass), then decodes
the bytes fully with Pillow (bombs refused from the header). It writes nothing: the caller decides what to keep.
``network_reachable`` is the honest "is there a network at all" check: it tries to open a connection.
"""

from __future__ import annotations

import hashlib
import io
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

import requests
from PIL import Image, UnidentifiedImageError
from urllib3.exceptions import ReadTimeoutError

DEFAULT_TIMEOUT_S = 10.0
TOTAL_TIME_FACTOR = 4  # one download may take at most 4x --timeout in all, so a server dripping bytes cannot stall it
DEFAULT_MAX_BYTES = 20_000_000  # a photo worth training on is well under 20 MB
DEFAULT_MIN_SIZE = 100  # pixels on the shorter side; smaller ones are thumbnails or icons, useless at 224 px
MAX_PIXELS = 50_000_000  # refuse to decode more: no training photo needs it, and a bomb would eat the memory
DEFAULT_RETRIES = 3  # for timeouts and 5xx answers, which often pass; a 404 never does
DOWNLOAD_BACKOFF_S = 1.0  # first wait before retrying a download; doubles each try
MAX_REDIRECTS = 5  # real image links redirect once or twice; more is a loop
CHUNK_BYTES = 64 * 1024
# A browser-like User-Agent: many image hosts refuse the python-requests default outright.
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
# Content types an image may come with; octet-stream is what many CDNs send for any file.
ALLOWED_CONTENT_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")
# The formats kept, with the extension each is saved under: the extensions every script of this project reads.
FORMAT_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",  # a camera JPEG with extra frames: a plain JPEG to every reader
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
RETRYABLE_REASONS = {"timeout", "connection error"}  # a later run tries these URLs again; "http 5xx" too
PROBE_TIMEOUT_S = 3.0  # to open one connection in the network check: a reachable host answers in well under that
MAX_PROBED_HOSTS = 64  # hosts tried by the network check; one that answers is enough
PROBE_THREADS = 16  # the network check tries this many hosts at once

SleepFn = Callable[[float], None]


class NoNetworkError(Exception):
    """Nothing can be reached at all; the message names what was tried ("cannot reach <host>")."""


class ImageRejectedError(Exception):
    """Downloaded bytes that are not a usable image; ``reason`` is a short key for the summary table."""

    def __init__(self, reason: str, detail: str, facts: ImageFacts | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.facts = facts  # format and size when the header was readable (a "too small" image has them)


@dataclass(frozen=True)
class Candidate:
    """One image URL to try, with where it came from."""

    class_name: str
    url: str
    source: str  # "duckduckgo" or "urls-file"
    query: str | None = None
    source_page: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class FetchLimits:
    """The limits a download must pass; each (but max_pixels) is a command-line flag, named in refusals."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    max_bytes: int = DEFAULT_MAX_BYTES
    min_size: int = DEFAULT_MIN_SIZE
    retries: int = DEFAULT_RETRIES
    ignore_content_type: bool = False
    max_pixels: int = MAX_PIXELS


@dataclass(frozen=True)
class ImageFacts:
    image_format: str
    width: int
    height: int


@dataclass
class FetchResult:
    """What one URL gave: bytes and facts when ``reason`` is None, else why it failed."""

    candidate: Candidate
    reason: str | None = None
    detail: str = ""
    has_response: bool = False  # the server answered at all: the network works
    data: bytes | None = None
    sha256: str | None = None
    facts: ImageFacts | None = None  # also set for a refusal made after reading the header ("too small")
    declared_bytes: int | None = None  # Content-Length of a refusal as "too large", when the server sent it


class Answer(NamedTuple):
    """One GET: the body, or why there is none."""

    data: bytes | None
    reason: str | None = None
    detail: str = ""
    has_response: bool = True
    declared_bytes: int | None = None


# ---------------------------------------------------------------------------------------------------------- pure


def backoff_delay(attempt: int, base_s: float, jitter: float) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): doubling, plus up to one ``base_s`` of jitter.

    ``jitter`` in [0, 1) spreads retries of parallel clients apart; the delays still grow strictly.
    """
    return base_s * 2**attempt + base_s * jitter


def is_retryable(reason: str) -> bool:
    """Whether a later run should try the URL again on its own: the failure may pass (timeouts, server errors)."""
    if reason in RETRYABLE_REASONS:
        return True
    if reason.startswith("http "):
        code = int(reason.split()[1])
        return code >= 500 or code in (408, 429)
    return False


def is_allowed_content_type(content_type: str | None) -> bool:
    """True when the header is absent or says image (or an untyped binary file); HTML and text are refused."""
    if not content_type:
        return True
    media_type = content_type.split(";")[0].strip().lower()
    return any(media_type.startswith(allowed) for allowed in ALLOWED_CONTENT_TYPES)


def describe_non_image(data: bytes) -> str:
    """A few words on what bytes that are not an image look like, for the failure detail."""
    if not data:
        return "empty response"
    start = data[:512].lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    if start.startswith(b"<"):
        return "an XML or SVG document"
    return f"{len(data)} bytes in no image format Pillow knows"


def inspect_image(data: bytes, min_size: int, max_pixels: int = MAX_PIXELS) -> ImageFacts:
    """Fully decode ``data`` and return its format and size; raises ImageRejectedError with the reason.

    The size is checked from the header before decoding, so a decompression bomb is refused without being decoded.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image_format = image.format or "unknown"
            facts = ImageFacts(image_format, width, height)
            if width * height > max_pixels:
                raise ImageRejectedError(
                    "decompression bomb", f"{width}x{height} pixels is over the limit of {max_pixels}", facts
                )
            if image_format not in FORMAT_EXTENSIONS:
                raise ImageRejectedError(
                    "unsupported format", f"{image_format} is not one of {sorted(FORMAT_EXTENSIONS)}", facts
                )
            if min(width, height) < min_size:
                raise ImageRejectedError(
                    "too small", f"{width}x{height}, the shorter side is under {min_size} pixels", facts
                )
            image.load()
    except ImageRejectedError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageRejectedError("decompression bomb", str(error)) from error
    except UnidentifiedImageError as error:
        raise ImageRejectedError("not an image", describe_non_image(data)) from error
    except Exception as error:  # Pillow raises many types on broken files; every one means "cannot use it"
        raise ImageRejectedError("corrupt image", f"{type(error).__name__}: {error}") from error
    return facts


def host_and_port(url: str) -> tuple[str, int] | None:
    """Where a connection to ``url`` goes; None for a URL without a host."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


# ------------------------------------------------------------------------------------------------------ network


def can_connect(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` opens (DNS resolves and something listens)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def network_reachable(hosts: Iterable[tuple[str, int]], timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True as soon as one of ``hosts`` (the first MAX_PROBED_HOSTS distinct ones) accepts a connection.

    This is the check behind "No network": it is false only when DNS fails or every connection is refused or times
    out, never because servers answered with something the downloader refused.
    """
    distinct = list(dict.fromkeys(hosts))[:MAX_PROBED_HOSTS]
    if not distinct:
        return False
    with ThreadPoolExecutor(max_workers=min(PROBE_THREADS, len(distinct)), thread_name_prefix="probe") as pool:
        futures = [pool.submit(can_connect, host, port, timeout_s) for host, port in distinct]
        for future in as_completed(futures):
            if future.result():
                for other in futures:
                    other.cancel()
                return True
    return False


class Fetcher:
    """Downloads and verifies URLs, one per call, from any number of worker threads; writes nothing.

    Timeouts and 5xx answers are retried with backoff (``sleep`` waits; tests pass one that does not).
    """

    def __init__(self, limits: FetchLimits, sleep: SleepFn = time.sleep) -> None:
        self.limits = limits
        self.sleep = sleep
        self._local = threading.local()

    def fetch(self, candidate: Candidate) -> FetchResult:
        """Download one URL, then verify the bytes are a usable image; never raises for a bad URL or image."""
        result = FetchResult(candidate)
        limits = self.limits
        try:
            for attempt in range(limits.retries + 1):
                if attempt:
                    self.sleep(backoff_delay(attempt - 1, DOWNLOAD_BACKOFF_S, random.random()))
                answer = self._get(candidate.url)
                result.has_response = result.has_response or answer.has_response
                if answer.reason is None or answer.reason == "connection error" or not is_retryable(answer.reason):
                    break
            if answer.reason is not None:
                result.reason, result.detail, result.declared_bytes = (
                    answer.reason,
                    answer.detail,
                    answer.declared_bytes,
                )
                return result
            assert answer.data is not None
            result.facts = inspect_image(answer.data, limits.min_size, limits.max_pixels)
            result.data, result.sha256 = answer.data, hashlib.sha256(answer.data).hexdigest()
        except ImageRejectedError as error:
            result.reason, result.detail, result.facts = error.reason, error.detail, error.facts
        except Exception as error:  # a bug or an odd library error must cost one URL, not the run
            result.reason, result.detail = "unexpected error", f"{type(error).__name__}: {error}"
        return result

    def _session(self) -> requests.Session:
        """One requests.Session per worker thread (a session is not safe to share), reused for keep-alive."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.max_redirects = MAX_REDIRECTS
            session.headers["User-Agent"] = USER_AGENT
            session.headers["Accept"] = "image/avif,image/webp,image/*,*/*;q=0.8"
            self._local.session = session
        return session

    def _get(self, url: str) -> Answer:
        """One GET within the limits."""
        limits = self.limits
        deadline = time.monotonic() + limits.timeout_s * TOTAL_TIME_FACTOR
        has_response = False
        try:
            with self._session().get(url, timeout=limits.timeout_s, stream=True) as response:
                has_response = True
                if not 200 <= response.status_code < 300:
                    return Answer(None, f"http {response.status_code}", response.reason or "")
                content_type = response.headers.get("Content-Type")
                if not limits.ignore_content_type and not is_allowed_content_type(content_type):
                    return Answer(None, "wrong content type", f"served as {content_type}")
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > limits.max_bytes:
                    detail = f"{declared} bytes declared, over --max-bytes {limits.max_bytes}"
                    return Answer(None, "too large", detail, declared_bytes=int(declared))
                chunks, received = [], 0
                for chunk in response.iter_content(CHUNK_BYTES):
                    received += len(chunk)
                    if received > limits.max_bytes:
                        return Answer(None, "too large", f"over --max-bytes {limits.max_bytes}")
                    if time.monotonic() > deadline:
                        return Answer(
                            None, "timeout", f"still downloading after {limits.timeout_s * TOTAL_TIME_FACTOR:g} s"
                        )
                    chunks.append(chunk)
                return Answer(b"".join(chunks))
        except requests.TooManyRedirects:
            return Answer(None, "redirect loop", f"more than {MAX_REDIRECTS} redirects", has_response)
        except requests.Timeout as error:
            return Answer(
                None, "timeout", f"no answer within {limits.timeout_s:g} s ({type(error).__name__})", has_response
            )
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ) as e:
            return Answer(None, "bad url", str(e), has_response)
        except requests.RequestException as error:
            if any(isinstance(arg, ReadTimeoutError) for arg in error.args):
                return Answer(None, "timeout", f"no data for {limits.timeout_s:g} s mid-download", has_response)
            return Answer(None, "connection error", f"{type(error).__name__}: {error}"[:300], has_response)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py: the project root
    import cli

    cli.refuse_running_as_script(__file__, "run data_collection/download_images.py")
