"""A local image server and a fake image search, for the downloader's tests and benchmark (no network needed).

``ImageServer`` serves a dict of routes on 127.0.0.1 from a thread: good images in several formats and every bad
download case of shared/BAD_INPUTS.md (404, 500, timeout, redirect loop, over the size cap, HTML served as an image,
truncated JPEG, decompression bomb, tiny image, the same bytes under two URLs). It counts the requests per path and
can be stopped mid-run and started again on the same port.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from conftest import _png_declaring_size, make_class_image
from PIL import Image

# Formats a search engine hands out, with the Content-Type a server sends them with.
GOOD_FORMATS = ("jpeg", "png", "rgba_png", "palette_png", "gray_png", "cmyk_jpeg", "gif", "webp", "bmp", "exif_jpeg")
CONTENT_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "rgba_png": "image/png",
    "palette_png": "image/png",
    "gray_png": "image/png",
    "cmyk_jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "exif_jpeg": "image/jpeg",
}
EXTENSIONS = {"jpeg": ".jpg", "cmyk_jpeg": ".jpg", "exif_jpeg": ".jpg", "gif": ".gif", "webp": ".webp", "bmp": ".bmp"}


@dataclass
class Route:
    """What the server answers for one path."""

    body: bytes = b""
    status: int = 200
    content_type: str | None = "image/jpeg"
    delay_s: float = 0.0  # before answering: longer than the client's timeout makes a timeout
    location: str | None = None  # answer a 302 redirect to here
    send_length: bool = True  # False: no Content-Length, the body ends when the connection closes
    drip_s: float = 0.0  # > 0: send the body one byte per drip_s seconds (a server that never quite answers)
    drip_headers: bool = False  # with drip_s: drip the status line and headers too


def encode_good_image(kind: str, class_index: int, seed: int, size: tuple[int, int] = (64, 64)) -> bytes:
    """A valid image of the given kind, unique per (class_index, seed)."""
    image = make_class_image(class_index, seed, size)
    buffer = io.BytesIO()
    if kind == "jpeg":
        image.save(buffer, "JPEG", quality=90)
    elif kind == "png":
        image.save(buffer, "PNG")
    elif kind == "rgba_png":
        rgba = image.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(buffer, "PNG")
    elif kind == "palette_png":
        palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        palette.save(buffer, "PNG", transparency=0)
    elif kind == "gray_png":
        image.convert("L").save(buffer, "PNG")
    elif kind == "cmyk_jpeg":
        image.convert("CMYK").save(buffer, "JPEG", quality=90)
    elif kind == "gif":
        frames = [image, make_class_image(class_index, seed + 1, size)]
        frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif kind == "webp":
        image.save(buffer, "WEBP")
    elif kind == "bmp":
        image.save(buffer, "BMP")
    elif kind == "exif_jpeg":
        exif = Image.Exif()
        exif[0x0112] = 6
        image.save(buffer, "JPEG", exif=exif.tobytes(), quality=90)
    else:
        raise ValueError(kind)
    return buffer.getvalue()


def good_routes(prefix: str, class_index: int, count: int, seed: int = 0) -> dict[str, Route]:
    """``count`` good images, cycling through GOOD_FORMATS, at /<prefix>/<n>.<ext>."""
    routes = {}
    for number in range(count):
        kind = GOOD_FORMATS[number % len(GOOD_FORMATS)]
        path = f"/{prefix}/{number:03d}{EXTENSIONS.get(kind, '.png')}"
        routes[path] = Route(encode_good_image(kind, class_index, seed + number), content_type=CONTENT_TYPES[kind])
    return routes


def bad_routes(max_bytes: int, slow_s: float) -> dict[str, tuple[Route, str]]:
    """Every bad download case: path -> (route, the failure reason the downloader must record)."""
    jpeg = encode_good_image("jpeg", 3, 999)
    png = encode_good_image("png", 3, 998)
    return {
        "/bad/missing.jpg": (Route(b"not found", status=404, content_type="text/plain"), "http 404"),
        "/bad/server-error.jpg": (Route(b"oops", status=500, content_type="text/plain"), "http 500"),
        "/bad/slow.jpg": (Route(jpeg, delay_s=slow_s), "timeout"),
        "/bad/loop.jpg": (Route(status=302, location="/bad/loop.jpg"), "redirect loop"),
        "/bad/big.jpg": (Route(b"\xff" * (max_bytes + 1)), "too large"),
        "/bad/big-unannounced.jpg": (Route(b"\xff" * (max_bytes + 1), send_length=False), "too large"),
        "/bad/page.jpg": (Route(b"<!DOCTYPE html><html><body>Hotlinking denied</body></html>"), "not an image"),
        "/bad/empty.jpg": (Route(b""), "not an image"),
        "/bad/served-as-html.png": (Route(png, content_type="text/html; charset=utf-8"), "wrong content type"),
        "/bad/truncated.jpg": (Route(jpeg[: len(jpeg) // 2]), "corrupt image"),
        "/bad/bomb.png": (Route(_png_declaring_size(30000, 30000), content_type="image/png"), "decompression bomb"),
        "/bad/tiny.png": (Route(_tiny_png(), content_type="image/png"), "too small"),
    }


def _tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(buffer, "PNG")
    return buffer.getvalue()


class _QuietThreadingServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 drops connections when 8+ workers connect at once: 1 s SYN retries


class ImageServer:
    """Serves ``routes`` on 127.0.0.1 from a background thread; ``latency_s`` is added to every answer."""

    def __init__(self, routes: dict[str, Route], latency_s: float = 0.0) -> None:
        self.routes = routes
        self.latency_s = latency_s
        self.hits: Counter = Counter()
        self.port = 0
        self.stop_after: int | None = None  # stop serving once this many requests were answered
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> ImageServer:
        """Start (or restart on the same port after stop())."""
        server = _QuietThreadingServer(("127.0.0.1", self.port), self._handler_class())
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering: new connections are refused from now on."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _count(self, path: str) -> None:
        with self._lock:
            self.hits[path] += 1
            total = sum(self.hits.values())
            should_stop = self.stop_after is not None and total >= self.stop_after
            if should_stop:
                self.stop_after = None
        if should_stop:
            threading.Thread(target=self.stop, daemon=True).start()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                path = self.path.split("?")[0]
                owner._count(path)
                route = owner.routes.get(path, Route(b"no such path", status=404, content_type="text/plain"))
                time.sleep(owner.latency_s + route.delay_s)
                if route.drip_s:
                    self._drip(route)
                    return
                try:
                    self.send_response(route.status)
                    if route.location is not None:
                        self.send_header("Location", route.location)
                    if route.content_type is not None:
                        self.send_header("Content-Type", route.content_type)
                    if route.send_length:
                        self.send_header("Content-Length", str(len(route.body)))
                    self.end_headers()
                    self.wfile.write(route.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

            def _drip(self, route: Route) -> None:
                head = f"HTTP/1.1 {route.status} OK\r\nContent-Type: {route.content_type}\r\n"
                head += f"Content-Length: {len(route.body)}\r\n\r\n"
                dripped = head.encode() + route.body if route.drip_headers else route.body
                try:
                    if not route.drip_headers:
                        self.wfile.write(head.encode())
                    for index in range(len(dripped)):
                        self.wfile.write(dripped[index : index + 1])
                        self.wfile.flush()
                        time.sleep(route.drip_s)
                except OSError:
                    pass  # the client hung up: what a deadline does
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
                pass

        return Handler


class FakeSearch:
    """Stands in for ddgs: returns the given URLs for each query on page 1 and nothing after.

    ``failures[query]`` errors are raised first (the exception ``error_type``), as a rate-limited engine does.
    """

    def __init__(
        self,
        urls_by_query: dict[str, list[str]],
        failures: dict[str, int] | None = None,
        error_type: type[BaseException] = RuntimeError,
    ) -> None:
        self.urls_by_query = urls_by_query
        self.failures = dict(failures or {})
        self.error_type = error_type
        self.calls: list[tuple[str, int]] = []

    def __call__(self, query: str, page: int, options: object) -> list[dict[str, Any]]:
        self.calls.append((query, page))
        if self.failures.get(query, 0) > 0:
            self.failures[query] -= 1
            raise self.error_type(f"fake search error for {query!r}")
        if page > 1:
            return []
        return [
            {"image": url, "url": f"https://pages.example/{query}/{number}", "title": f"{query} {number}"}
            for number, url in enumerate(self.urls_by_query.get(query, []))
        ]
