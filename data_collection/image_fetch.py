"""Fetch one image URL and verify its bytes: the downloader's network and image checks.

Imported by download_images.py and its other sibling modules; not a script. A ``Fetcher`` downloads one
URL in a worker thread (size cap, Content-Type check, retries with backoff for answers that may pass), then decodes
the bytes fully with Pillow (bombs refused from the header). It writes nothing: the caller decides what to keep.
``network_reachable`` is the honest "is there a network at all" check: it tries to open a connection.

Each request has one deadline for all of it (connect, headers, body, redirects): a socket read waits for a whole
chunk, so a server that drips one byte a second would never let a check between reads run. A watchdog thread shuts the
request's socket down when its time is up (every connection a request uses is registered through ``DeadlineAdapter``),
and ``Fetcher.cancel`` does the same to every request in flight, so Ctrl-C never waits on a slow server. A DNS lookup
has no socket to shut and cannot be interrupted, so ``resolve`` runs it in a daemon thread and stops waiting for it
within the connect timeout: a hung resolver costs one "connection error", then the network check, never a silent wait.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import io
import ipaddress
import math
import os
import random
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import requests
from PIL import Image, UnidentifiedImageError
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
)

DEFAULT_TIMEOUT_S = 10.0  # for one whole download: a 5 MB photo at 4 Mbit/s, with room to connect
# The whole-request deadline is --timeout plus this: a silent server meets the per-read --timeout first (a plain
# timeout, retried at once); only a server that keeps sending, too slowly, meets the deadline (retried next run).
DEADLINE_GRACE_S = 0.5
WATCHDOG_POLL_S = 0.05  # how late past its deadline a request may end; the watchdog sleeps only while requests run
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
    is_worth_retrying_now: bool = True  # False when a server was cut at the deadline mid-answer: it would be again


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


_lookups: dict[tuple[str, int], tuple[threading.Event, list[Any]]] = {}  # (host, port) -> its lookup in flight
_lookups_lock = threading.Lock()


def resolve(host: str, port: int, timeout_s: float, is_cancelled: Callable[[], bool] = lambda: False) -> list[Any]:
    """``socket.getaddrinfo`` for a TCP connection to ``host:port``, given up after ``timeout_s`` or on cancel.

    The system resolver may wait far longer than any timeout asked for (several servers, retries), and a lookup cannot
    be interrupted: it runs in a daemon thread, which is left to finish on its own when the caller stops waiting. A
    lookup of the same name already in flight is waited for instead of started again, so a name server that never
    answers holds one thread per name, not one per URL. Raises ``socket.gaierror`` for a name that does not resolve,
    ``TimeoutError`` for a lookup that did not answer.
    """
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host.strip("[]"))
        return socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)  # a literal address: no lookup
    key = (host, port)
    with _lookups_lock:
        done, outcome = _lookups.get(key) or (threading.Event(), [])
        is_new = key not in _lookups
        _lookups[key] = (done, outcome)

    def lookup() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except Exception as error:  # noqa: BLE001 - handed to the callers whatever it is
            outcome.append(error)
        finally:
            with _lookups_lock:
                _lookups.pop(key, None)
            done.set()

    if is_new:
        threading.Thread(target=lookup, name="dns-lookup", daemon=True).start()
    give_up_at = time.monotonic() + timeout_s
    while not done.wait(min(WATCHDOG_POLL_S, max(0.0, give_up_at - time.monotonic()))):
        if time.monotonic() >= give_up_at or is_cancelled():
            raise TimeoutError(f"the DNS lookup of {host} did not answer within {timeout_s:g} s")
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


def connect_within(
    address: tuple[Any, ...],
    timeout_s: float,
    is_cancelled: Callable[[], bool] = lambda: False,
    options: Iterable[tuple[int, int, Any]] = (),
    source: tuple[str, int] | None = None,
) -> socket.socket:
    """A TCP socket connected to ``address`` (an entry of ``resolve``'s list), given up after ``timeout_s`` or at once
    on cancel: ``TimeoutError`` then, ``OSError`` for a refusal. The connect runs non-blocking and is polled every
    WATCHDOG_POLL_S (a blocking connect cannot be interrupted, and a socket still connecting has nothing the watchdog
    could shut). ``options``: (level, name, value) for setsockopt; the socket returned blocks, with ``timeout_s``."""
    family, kind, protocol, _, where = address
    sock = socket.socket(family, kind, protocol)
    try:
        for option in options:
            sock.setsockopt(*option)
        if source:
            sock.bind(source)
        sock.setblocking(False)
        give_up_at = time.monotonic() + timeout_s
        code = sock.connect_ex(where)
        if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_WRITE)
                while not selector.select(min(WATCHDOG_POLL_S, max(0.0, give_up_at - time.monotonic()))):
                    if time.monotonic() >= give_up_at or is_cancelled():
                        raise TimeoutError(f"no connection within {timeout_s:g} s")
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, os.strerror(code))
        sock.settimeout(timeout_s)
        return sock
    except BaseException:
        sock.close()
        raise


def can_connect(
    host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S, is_cancelled: Callable[[], bool] = lambda: False
) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout_s`` for the lookup and as much for each
    address (DNS resolves and something listens); False at once on cancel, and for a name that cannot be valid."""
    try:
        for address in resolve(host, port, timeout_s, is_cancelled):
            with contextlib.suppress(OSError), connect_within(address, timeout_s, is_cancelled):
                return True
    except (OSError, ValueError):  # no answer, no such name, or no valid name at all (UnicodeError: an empty label)
        pass
    return False


def network_reachable(hosts: Iterable[tuple[str, int]], timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True as soon as one of ``hosts`` (the first MAX_PROBED_HOSTS distinct ones) accepts a connection.

    This is the check behind "No network": it is false only when DNS fails or every connection is refused or times
    out, never because servers answered with something the downloader refused. Every host is tried at once, so the
    check ends within about twice ``timeout_s`` (a lookup, then a connect) however many hang; the probes still running
    when it ends (an answer, or Ctrl-C) stop at once.
    """
    distinct = list(dict.fromkeys(hosts))[:MAX_PROBED_HOSTS]
    if not distinct:
        return False
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=len(distinct), thread_name_prefix="probe")
    try:
        futures = [pool.submit(can_connect, host, port, timeout_s, stop.is_set) for host, port in distinct]
        for future in as_completed(futures, timeout=2 * timeout_s + 1):
            if future.result():
                return True
    except concurrent.futures.TimeoutError:
        pass
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
    return False


_current_request = threading.local()  # .deadline: the RequestDeadline of the request this thread is making


class RequestDeadline:
    """The end time of one request and the connections it uses; ``expire`` shuts their sockets down."""

    def __init__(self, seconds: float) -> None:
        self.expires_at = time.monotonic() + seconds
        self.is_expired = False
        self.was_connected = False  # a socket was open when it expired: the server was slow, not unreachable
        self._connections: list[Any] = []
        self._lock = threading.Lock()

    def watch(self, connection: Any) -> None:
        """Add a connection the request uses (a redirect may use several); shut at once if already late."""
        with self._lock:
            self._connections.append(connection)
        if self.is_expired:
            self.expire()

    def expire(self) -> None:
        """Mark the request late and shut down every socket it opened: a read blocked on one returns at once."""
        with self._lock:
            self.is_expired = True
            sockets = [getattr(connection, "sock", None) for connection in self._connections]
            self.was_connected = self.was_connected or any(sock is not None for sock in sockets)
        for sock in sockets:
            if sock is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's call: under TLS too


class Watchdog:
    """Expires late requests from one daemon thread, which runs only while requests are in flight."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._active: set[RequestDeadline] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, seconds: float) -> Iterator[RequestDeadline]:
        """The deadline of the request made inside the block, in this thread (connections register themselves)."""
        deadline = RequestDeadline(seconds)
        with self._lock:
            self._active.add(deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="download-deadlines", daemon=True)
                self._thread.start()
        if self.cancelled.is_set():
            deadline.expire()
        _current_request.deadline = deadline
        try:
            yield deadline
        finally:
            _current_request.deadline = None
            with self._lock:
                self._active.discard(deadline)

    def cancel(self) -> None:
        """End every request in flight now, and every later one at its start (Ctrl-C)."""
        self.cancelled.set()
        with self._lock:
            active = list(self._active)
        for deadline in active:
            deadline.expire()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._active:
                    self._thread = None
                    return
                now = time.monotonic()
                late = [d for d in self._active if d.expires_at <= now or self.cancelled.is_set()]
            for deadline in late:  # again on each pass: a socket still connecting at the first one has none yet
                deadline.expire()
            time.sleep(WATCHDOG_POLL_S)


class _DeadlineConnectionMixin:
    """Opens the connection within the connect timeout and what is left of the request's deadline, lookup included,
    and ends at once on cancel: the name through ``resolve``, then each address in turn through ``connect_within``
    (urllib3's socket options, source address and TLS name stay as they were)."""

    def _new_conn(self) -> socket.socket:
        deadline = getattr(_current_request, "deadline", None)
        if deadline is None:
            return super()._new_conn()  # type: ignore[misc]
        me: Any = self
        host, connect_s = me._dns_host, me.timeout if isinstance(me.timeout, int | float) else math.inf

        def limit() -> tuple[float, bool]:  # (seconds allowed, whether the request's deadline is what limits them)
            left = max(0.0, deadline.expires_at - time.monotonic())
            return min(left, connect_s), deadline.is_expired or left <= connect_s

        def is_cancelled() -> bool:
            return deadline.is_expired

        seconds, by_deadline = limit()
        try:
            addresses = resolve(host, me.port, seconds, is_cancelled)
        except socket.gaierror as error:
            raise NameResolutionError(me.host, me, error) from error
        except ValueError:  # UnicodeError: an empty label or one over 63 characters, as urllib3 says it
            raise LocationParseError(f"'{host}', label empty or too long") from None
        except TimeoutError as error:  # the deadline's end is a timeout; a name server that never answers is not
            raise (ConnectTimeoutError if by_deadline else NewConnectionError)(me, str(error)) from error
        failure: Exception = NewConnectionError(me, f"no address for {host}")
        for address in addresses:
            seconds, by_deadline = limit()
            try:
                sock = connect_within(address, seconds, is_cancelled, me.socket_options or (), me.source_address)
            except TimeoutError:
                failure = ConnectTimeoutError(me, f"Connection to {me.host} timed out. (connect timeout={seconds:g})")
                if by_deadline:
                    break  # no time left for another address
            except OSError as error:
                failure = NewConnectionError(me, f"Failed to establish a new connection: {error}")
            else:
                sock.settimeout(None if math.isinf(connect_s) else connect_s)  # urllib3's: not what was left to connect
                sys.audit("http.client.connect", me, me.host, me.port)
                return sock
        raise failure


class _DeadlineHTTPConnection(_DeadlineConnectionMixin, HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnectionMixin, HTTPSConnection):
    pass


class _DeadlinePoolMixin:
    """Hands each connection a request takes from the pool to that request's deadline."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)  # type: ignore[misc]
        deadline = getattr(_current_request, "deadline", None)
        if deadline is not None:
            deadline.watch(connection)
        return connection


class _DeadlineHTTPPool(_DeadlinePoolMixin, HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(_DeadlinePoolMixin, HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


DEADLINE_POOLS = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


class DeadlineAdapter(HTTPAdapter):
    """requests' transport, with connection pools that register every connection with the request's deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = DEADLINE_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # a SOCKS manager needs its own pools (and keeps --timeout only)
            manager.pool_classes_by_scheme = DEADLINE_POOLS
        return manager


class Fetcher:
    """Downloads and verifies URLs, one per call, from any number of worker threads; writes nothing.

    Timeouts and 5xx answers are retried with backoff (``sleep`` waits; tests pass one that does not; by default the
    wait ends early on ``cancel``). Each try must end within ``--timeout`` in all.
    """

    def __init__(self, limits: FetchLimits, sleep: SleepFn | None = None) -> None:
        self.limits = limits
        self.watchdog = Watchdog()
        self.sleep: Callable[[float], object] = sleep or self.watchdog.cancelled.wait
        self._local = threading.local()

    def cancel(self) -> None:
        """Stop: requests in flight end now (as timeouts), retries and new fetches do not start. For Ctrl-C."""
        self.watchdog.cancel()

    def fetch(self, candidate: Candidate) -> FetchResult:
        """Download one URL, then verify the bytes are a usable image; never raises for a bad URL or image."""
        result = FetchResult(candidate)
        limits = self.limits
        try:
            for attempt in range(limits.retries + 1):
                if attempt:
                    self.sleep(backoff_delay(attempt - 1, DOWNLOAD_BACKOFF_S, random.random()))
                if self.watchdog.cancelled.is_set():
                    result.reason, result.detail = "interrupted", "the run was stopped before this download ended"
                    return result
                answer = self._get(candidate.url)
                result.has_response = result.has_response or answer.has_response
                if answer.reason is None or answer.reason == "connection error" or not is_retryable(answer.reason):
                    break
                if not answer.is_worth_retrying_now:  # a later run tries it again (a "timeout" stays retryable)
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
            adapter = DeadlineAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def _get(self, url: str) -> Answer:
        """One GET that ends within --timeout (and DEADLINE_GRACE_S) in all, whatever the server does; a late one is
        a "timeout", not retried at once when the server was connected (dripping): it would be cut again."""
        timeout_s = self.limits.timeout_s
        answer = None
        with self.watchdog.guard(timeout_s + DEADLINE_GRACE_S) as deadline:
            try:
                answer = self._get_within_limits(url)
            except Exception:
                if not deadline.is_expired:
                    raise
        if not deadline.is_expired:
            assert answer is not None
            return answer
        session, self._local.session = getattr(self._local, "session", None), None  # its sockets were shut down
        if session is not None:
            session.close()
        has_response = answer.has_response if answer is not None else False
        detail = f"not complete within --timeout {timeout_s:g} s"
        return Answer(None, "timeout", detail, has_response, is_worth_retrying_now=not deadline.was_connected)

    def _get_within_limits(self, url: str) -> Answer:
        """One GET: status, Content-Type and size checked; the caller's deadline ends it when it is late."""
        limits = self.limits
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
            LocationParseError,  # a host name that cannot be valid (an empty label, one over 63 characters)
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
