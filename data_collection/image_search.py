"""Image search for the downloader: candidates per class from DuckDuckGo (through ddgs), paced, retried and cached.

Imported by download_images.py (and download_report.py, for ShortQuery); not a script.

A search backend is any function ``(query, page, options) -> results`` (``ddgs_search`` is the real one; tests pass a
fake). ``ImageSearch`` wraps it with what a run needs: requests paced apart, every error retried with exponential
backoff and jitter (ddgs reports a rate limit, a network error and "no results" alike), each page cached under
``<dataset>/.search_cache/`` as it arrives so a re-run carries on, and a stop for the run once several queries in a
row have failed. Each class's candidates are spread evenly over its queries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from image_fetch import Candidate, NoNetworkError, backoff_delay, can_connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py and fileio.py: the project root
from cli import printable  # noqa: E402
from fileio import MAX_SMALL_JSON_BYTES, read_optional_json, write_json  # noqa: E402

SEARCH_CACHE_DIR = ".search_cache"
CACHE_SCHEMA_VERSION = 1  # of a cached query's JSON file
SEARCH_HOST = "duckduckgo.com"
SEARCH_TIMEOUT_S = 10
SEARCH_RETRIES = 3  # tries after the first failure of one search request
SEARCH_BACKOFF_S = 4.0  # first wait after a search error (likely a rate limit); doubles each try, plus jitter
SEARCH_PAUSE_S = 1.0  # between search requests, to stay under the rate limit in the first place
MAX_SEARCH_PAGES = 10  # per query; a query that needs more is too narrow anyway
MAX_FAILED_QUERIES_IN_A_ROW = 3  # then the engine is refusing us: stop searching for this run

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class SearchOptions:
    """Filters passed through to the image search as they are."""

    safesearch: str = "moderate"
    size: str | None = None
    type_image: str | None = None
    license_image: str | None = None


SearchBackend = Callable[[str, int, SearchOptions], list[dict[str, Any]]]
SleepFn = Callable[[float], None]


class SearchFailedError(Exception):
    """One search request kept failing after every retry."""


@dataclass(frozen=True)
class ShortQuery:
    class_name: str
    query: str
    found: int
    wanted: int
    reason: str


# ---------------------------------------------------------------------------------------------------------- pure


def interleave(groups: Sequence[Sequence[T]]) -> list[T]:
    """Round-robin over ``groups``: the first of each, then the second of each, ...; keeps variety up front."""
    longest = max((len(group) for group in groups), default=0)
    return [group[index] for index in range(longest) for group in groups if index < len(group)]


def take_evenly(groups: Sequence[Sequence[T]], per_group: int, wanted: int) -> list[list[T]]:
    """The first ``per_group`` of each group, then one more from each group that has spare, round by round, until
    ``wanted`` are taken in all or no group has spare."""
    taken = [min(len(group), per_group) for group in groups]
    missing = wanted - sum(taken)
    while missing > 0:
        has_spare = [index for index, group in enumerate(groups) if taken[index] < len(group)]
        if not has_spare:
            break
        for index in has_spare[:missing]:
            taken[index] += 1
        missing -= min(missing, len(has_spare))
    return [list(group[:count]) for group, count in zip(groups, taken)]


def unique_by_url(candidates: Iterable[Candidate]) -> list[Candidate]:
    seen: set[str] = set()
    unique = []
    for candidate in candidates:
        if candidate.url not in seen:
            seen.add(candidate.url)
            unique.append(candidate)
    return unique


def cache_file_name(query: str, options: SearchOptions) -> str:
    """A readable, unique file name for the cached results of ``query`` with these search options."""
    key = json.dumps([query, options.safesearch, options.size, options.type_image, options.license_image])
    slug = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-")[:40] or "query"
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def candidates_from_results(class_name: str, query: str, results: Iterable[dict[str, Any]]) -> list[Candidate]:
    """Search results to candidates; results without an http(s) image URL are dropped."""
    candidates = []
    for result in results:
        url = result.get("image")
        if isinstance(url, str) and urlsplit(url).scheme in ("http", "https"):
            page, title = result.get("url"), result.get("title")
            candidates.append(
                Candidate(
                    class_name=class_name,
                    url=url,
                    source="duckduckgo",
                    query=query,
                    source_page=page if isinstance(page, str) else None,
                    title=title if isinstance(title, str) else None,
                )
            )
    return candidates


# ------------------------------------------------------------------------------------------------------ network


def ddgs_search(query: str, page: int, options: SearchOptions) -> list[dict[str, Any]]:
    """One page of DuckDuckGo image results through ``ddgs`` (about 100 per page): the real search backend.

    ddgs reports rate limits, network errors and the end of the results alike as ``DDGSException``; the caller
    retries any error with backoff. An empty page after the first means the results ran out. Raises NoNetworkError
    when, after an error, not even a connection to the search host opens.
    """
    from ddgs import DDGS  # only this backend needs ddgs; tests pass their own search function

    extra = {
        name: value
        for name, value in (
            ("size", options.size),
            ("type_image", options.type_image),
            ("license_image", options.license_image),
        )
        if value
    }
    try:
        return DDGS(timeout=SEARCH_TIMEOUT_S).images(
            query, safesearch=options.safesearch, page=page, max_results=None, backend="duckduckgo", **extra
        )
    except Exception as error:
        if not can_connect(SEARCH_HOST, 443):
            raise NoNetworkError(f"cannot reach {SEARCH_HOST}") from error
        if page > 1 and "No results found" in str(error):
            return []  # past the last page; on page 1 the same words usually mean a rate limit
        raise


def read_search_cache(path: Path, query: str) -> dict[str, Any] | None:
    cached, problem = read_optional_json(path, "search cache", MAX_SMALL_JSON_BYTES)
    if problem:
        logger.warning("%s: searching again", printable(problem))
    if cached is None:
        return None
    if (
        not isinstance(cached, dict)
        or cached.get("schema_version") != CACHE_SCHEMA_VERSION
        or cached.get("query") != query
        or not isinstance(cached.get("results"), list)
    ):
        logger.warning("search cache %s is not ours or is outdated: searching again", printable(path.name))
        return None
    return cached


class ImageSearch:
    """Candidates per class from ``backend``: paced, retried with backoff, cached per query, stopped when refused.

    One object serves a whole run: the pacing and the count of failed queries in a row span every class.
    """

    def __init__(
        self,
        backend: SearchBackend,
        options: SearchOptions,
        cache_dir: Path,
        refresh: bool = False,
        sleep: SleepFn = time.sleep,
    ) -> None:
        self.backend = backend
        self.options = options
        self.cache_dir = cache_dir
        self.refresh = refresh
        self.sleep = sleep
        self.requests_made = 0
        self.failed_in_a_row = 0
        self.stop_reason: str | None = None

    def candidates(
        self, class_name: str, queries: Sequence[str], wanted: int
    ) -> tuple[list[Candidate], list[ShortQuery]]:
        """About ``wanted`` candidates for one class, spread evenly over its queries and interleaved.

        Queries that came back short are made up for with the spare results the others already returned.
        """
        per_query = math.ceil(wanted / len(queries))
        found: list[list[Candidate]] = []
        short: list[ShortQuery] = []
        for query in queries:
            results, short_reason = self.results(query, per_query)
            found.append(candidates_from_results(class_name, query, results))
            if short_reason is not None:
                short.append(ShortQuery(class_name, query, len(results), per_query, short_reason))
        return unique_by_url(interleave(take_evenly(found, per_query, wanted))), short

    def results(self, query: str, wanted: int) -> tuple[list[dict[str, Any]], str | None]:
        """Results for ``query`` (at least ``wanted`` if it has them), from the cache or by paging; and why it came
        back short, if it did. Whole pages are returned: the spare results make up for short queries.

        Each page is cached as it arrives, so a later run carries on where this one stopped.
        """
        cache_path = self.cache_dir / cache_file_name(query, self.options)
        cached = None if self.refresh else read_search_cache(cache_path, query)
        results: list[dict[str, Any]] = list(cached["results"]) if cached else []
        pages = int(cached.get("pages", 0)) if cached else 0
        is_exhausted = bool(cached.get("exhausted", False)) if cached else False
        seen = {result.get("image") for result in results}
        short_reason = None
        while len(results) < wanted and not is_exhausted and pages < MAX_SEARCH_PAGES:
            if self.stop_reason:
                short_reason = self.stop_reason
                break
            try:
                page_results = self.page(query, pages + 1)
            except SearchFailedError as error:
                self.failed_in_a_row += 1
                if self.failed_in_a_row >= MAX_FAILED_QUERIES_IN_A_ROW:
                    self.stop_reason = f"not searched: {self.failed_in_a_row} queries failed in a row (rate limit?)"
                short_reason = f"{error}; a re-run asks again"
                break
            self.failed_in_a_row = 0
            pages += 1
            new = [
                {key: result.get(key) for key in ("image", "url", "title", "width", "height")}
                for result in page_results
                if isinstance(result, dict) and result.get("image") not in seen
            ]
            seen.update(result["image"] for result in new)
            results.extend(new)
            is_exhausted = not new
            cache = {"query": query, "options": vars(self.options), "pages": pages, "exhausted": is_exhausted}
            write_json(cache_path, {"schema_version": CACHE_SCHEMA_VERSION, **cache, "results": results})
        if len(results) < wanted and short_reason is None:
            short_reason = "results ran out" if is_exhausted else f"stopped after {MAX_SEARCH_PAGES} pages"
        return results, short_reason

    def page(self, query: str, page: int) -> list[dict[str, Any]]:
        """One page of results; any error may be a rate limit, so it is retried with exponential backoff and jitter.

        Raises SearchFailedError after SEARCH_RETRIES retries, NoNetworkError (and KeyboardInterrupt) at once.
        """
        last_error: Exception | None = None
        for attempt in range(SEARCH_RETRIES + 1):
            if attempt:
                delay = backoff_delay(attempt - 1, SEARCH_BACKOFF_S, random.random())
                logger.warning(
                    "search %s page %d failed (%s); retrying in %.0f s",
                    printable(repr(query)),
                    page,
                    printable(last_error),
                    delay,
                )
                self.sleep(delay)
            elif self.requests_made:
                self.sleep(SEARCH_PAUSE_S)
            self.requests_made += 1
            try:
                return list(self.backend(query, page, self.options))
            except NoNetworkError:
                raise
            except Exception as error:  # ddgs has one exception for every failure; treat each as a rate limit
                last_error = error
        raise SearchFailedError(f"search failed {SEARCH_RETRIES + 1} times ({type(last_error).__name__}: {last_error})")


if __name__ == "__main__":
    import cli

    cli.refuse_running_as_script(__file__, "run data_collection/download_images.py")
