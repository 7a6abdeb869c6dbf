"""One static HTML page from every report of a dataset, to look at the data as pictures and mark what to change.

    python html_report.py                                   # dataset/report.html from dataset/ and models/
    python html_report.py --dataset-dir photos --models-dir photos_models --report photos/review.html

Reads, each if present (a missing, unusable or stale one is named in its section and the rest still renders):
    <dataset>/train|val/<class>/                      class counts per split
    <dataset>/duplicate_report_*.json                 every duplicate detector's report (duplicate_report.py, schema 1)
    <dataset>/problematic_images_report.json          train_classifier.py --detect-problematic (problematic_report.py)
    <models>/training_metadata.json, <models>/error_analysis/epoch_XX/<class>_errors.json
    <dataset>/download_manifest.jsonl                 download_images.py: each image's source, the URLs refused
Writes the page (default <dataset>/report.html) and its thumbnails (report_images.py), small JPEGs in
<page name>_files/thumbs/ beside it, linked relatively: the page opens from disk in any browser with no server and no
network, and the folder can be zipped and shared. Thumbnails load lazily, so a page with a thousand images stays
responsive. The page's style and script live in report_assets/report.css and report.js (plain CSS and JavaScript, no
library), inlined at build time.

In the page a person filters by class and category and marks images keep / delete / relabel; "Export decisions"
downloads a JSON file (decisions_type "problematic_review_decisions", each image with its SHA-256) that
``python review_problematic_images.py --apply-decisions FILE`` applies with its confirm, trash and --undo. Nothing on
disk changes before that command runs. Image paths in a report that lead outside the dataset are never linked,
read or offered for a decision.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
for _folder in (ROOT, ROOT / "data_collection"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import cli  # noqa: E402 - needs the lines above when run from another folder
import duplicate_report  # noqa: E402
import fileio  # noqa: E402
import pipeline_state  # noqa: E402
import problematic_report  # noqa: E402
from problematic_report import DECISIONS_FILE_NAME, DECISIONS_SCHEMA_VERSION, DECISIONS_TYPE  # noqa: E402
from report_downloads import MANIFEST_NAME, Crawl, ReasonRow, is_web_link, read_crawl  # noqa: E402
from report_images import Catalog, Shown, locate, remove_stale_thumbs  # noqa: E402

logger = logging.getLogger(__name__)

ASSETS_DIR = ROOT / "report_assets"  # the page's report.css and report.js, inlined at build time (no file is loaded)
DEFAULT_NAME = "report.html"
MAX_ERRORS_SHOWN = 60  # most confident val mistakes on the page, across classes
PREVIEW_STRATEGIES = ("safe", "prefer-train", "prefer-val", "keep-best", "shortest-path", "first-alpha", "all")
FILTER_CATEGORIES = (
    ("copies", "plain copies"),
    ("leak", "train/val leaks"),
    ("conflict", "label conflicts"),
    ("label-issue", "label issues"),
    ("hard", "hard examples"),
    ("error", "confident val mistakes"),
)
CHART_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions: text, numbers, small SVG charts, ordering
# ---------------------------------------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    """Text from a report, safe in HTML text and attributes: control/bidi characters shown escaped, then escaped."""
    return html.escape(cli.printable("" if value is None else value), quote=True)


is_number = fileio.is_finite_number  # a number the page can format (no NaN, no integer of hundreds of digits)


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or an en dash for a missing or non-numeric value."""
    return f"{value:.{digits}f}" if is_number(value) else "\u2013"


def percent(value: Any) -> str:
    return f"{100 * value:.1f}%" if is_number(value) else "\u2013"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "es" if noun.endswith("s") else "s")


def json_for_script(data: Any) -> str:
    """JSON that can sit inside <script>: ASCII only, and no '<', '>' or '&' that could end the element."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def sparkline_svg(values: Sequence[Any], reference: float | None = None, width: int = 120, height: int = 30) -> str:
    """An inline SVG line of ``values`` (a loss per epoch); ``reference`` draws a dashed line (a uniform guess)."""
    numbers = [float(value) for value in values if is_number(value)]
    if not numbers:
        return '<span class="muted">no loss history</span>'
    low = min(numbers + ([reference] if reference is not None else []))
    high = max(numbers + ([reference] if reference is not None else []))
    span = (high - low) or 1.0
    step = (width - 4) / max(1, len(numbers) - 1)

    def y(value: float) -> float:
        return round(height - 2 - (value - low) / span * (height - 4), 1)

    points = " ".join(f"{round(2 + i * step, 1)},{y(value)}" for i, value in enumerate(numbers))
    parts = [f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    parts.append(f"<title>loss per analysis epoch: {', '.join(f'{value:.3f}' for value in numbers)}</title>")
    if reference is not None:
        parts.append(
            f'<line x1="0" x2="{width}" y1="{y(reference)}" y2="{y(reference)}" class="ref"><title>uniform guess'
            "</title></line>"
        )
    if len(numbers) == 1:
        parts.append(f'<circle cx="{width / 2}" cy="{y(numbers[0])}" r="2.5" class="pt"/>')
    else:
        parts.append(f'<polyline points="{points}" class="line"/>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart_svg(title: str, epochs: Sequence[int], series: dict[str, Sequence[Any]]) -> str:
    """A small line chart (one line per series over the epochs) as inline SVG; non-numbers leave gaps."""
    width, height, left, bottom, top = 320, 170, 44, 24, 22
    values = [float(v) for line in series.values() for v in line if is_number(v)]
    if not epochs or not values:
        return f'<div class="chart muted">{esc(title)}: no values</div>'
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    first, last = min(epochs), max(epochs)

    def x(epoch: float) -> float:
        return round(left + (epoch - first) / ((last - first) or 1) * (width - left - 8), 1)

    def y(value: float) -> float:
        return round(top + (high - value) / ((high - low) or 1.0) * (height - top - bottom), 1)  # 1e308 +- 0.5

    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    parts.append(f'<text x="{left}" y="14" class="ct">{esc(title)}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}" class="axis"/>')
    parts.append(f'<line x1="{left}" x2="{width - 8}" y1="{height - bottom}" y2="{height - bottom}" class="axis"/>')
    for value in (low, high):
        parts.append(f'<text x="{left - 4}" y="{y(value) + 4}" class="tick" text-anchor="end">{value:.3g}</text>')
    for epoch in sorted({first, last}):
        parts.append(f'<text x="{x(epoch)}" y="{height - 8}" class="tick" text-anchor="middle">{epoch}</text>')
    for number, (name, line) in enumerate(series.items()):
        colour = CHART_COLOURS[number % len(CHART_COLOURS)]
        points = [(x(epoch), y(float(value))) for epoch, value in zip(epochs, line) if is_number(value)]
        if len(points) > 1:
            joined = " ".join(f"{px},{py}" for px, py in points)
            parts.append(f'<polyline points="{joined}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.extend(f'<circle cx="{px}" cy="{py}" r="2.5" fill="{colour}"/>' for px, py in points)
        parts.append(
            f'<text x="{width - 10}" y="{top + 12 + 13 * number}" class="tick" text-anchor="end" '
            f'fill="{colour}">{esc(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def problem_order(entry: dict[str, Any]) -> tuple:
    """Largest problems first: likely label issues the most likely mislabelled first (``issue_rank_key``), then the
    highest mean loss, then the path."""
    loss = float(entry["mean_loss"]) if is_number(entry.get("mean_loss")) else 0.0
    is_issue = problematic_report.is_label_issue(entry)
    rank = problematic_report.issue_rank_key(entry) if is_issue else (0.0, 0.0)
    return (not is_issue, *rank, -loss, str(entry.get("path")))


def problem_caption(entry: dict[str, Any], likely: str = "likely") -> str:
    """A card's words: a label issue names the class the evidence prefers, with both probabilities; a hard example
    names only its own class (a suggestion appears only when that class is more probable than the given one).
    ``likely``: "possible" for the flags of a weak check (``problematic_report.issue_word``)."""
    given, probability = entry.get("class"), fmt(problematic_report.label_probability(entry), 2)
    suggested = problematic_report.suggested_class(entry)
    losses = f"mean loss {fmt(entry.get('mean_loss'))}"
    if problematic_report.is_label_issue(entry) and suggested is not None:
        other = fmt((entry.get("probabilities") or {}).get(suggested), 2)
        return (
            f'<div><span class="badge issue">{likely} label issue</span> labelled {esc(given)}, more likely '
            f"<b>{esc(suggested)}</b></div><div>p({esc(suggested)}) {other} &gt; p({esc(given)}) {probability}, "
            f"{losses}</div>"
        )
    badge = '<span class="badge">hard example</span>'
    return f"<div>{badge} {esc(given)}</div><div>p({esc(given)}) {probability}, {losses}</div>"


def duplicate_groups(data: Any) -> tuple[list[dict[str, Any]], str | None]:
    """(groups worst first, None) or ([], why the report is unusable), by duplicate_report's validator (the one every
    reader uses). Worst first: label conflicts (with a leak first), then train/val leaks, then plain copies; larger
    groups first.
    """
    problem = duplicate_report.report_problem(data)
    return ([], problem) if problem else (duplicate_report.problems_first(data), None)


def category_tags(category: str) -> tuple[str, ...]:
    """The filter tags of a duplicate category on the page: conflict and/or leak, else copies."""
    tags = ("conflict",) * (category in duplicate_report.CONFLICT_CATEGORIES)
    return tags + ("leak",) * (category in duplicate_report.LEAK_CATEGORIES) or ("copies",)


def strategy_previews(group: dict[str, Any]) -> list[tuple[str, list[str]]] | None:
    """(strategy, paths it would remove) for each removal strategy, from removal_plan.py, the remover's own planner.

    None when the planner cannot be imported (it is a separate script): the page then says previews are missing.
    """
    try:
        import removal_plan  # lazy: only needed when there are duplicate groups
    except Exception as error:  # noqa: BLE001 - any import problem means "no previews", never a broken page
        logger.debug("no strategy previews: %s", error)
        return None
    previews = []
    for strategy in PREVIEW_STRATEGIES:
        try:
            plan = removal_plan.plan_group(group, strategy)
            previews.append((strategy, [str(entry["path"]) for entry, _ in plan.remove]))
        except Exception:  # noqa: BLE001 - a group the planner refuses shows as "cannot plan"
            previews.append((strategy, ["?"]))
    return previews


def epoch_records(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """The metadata's per-epoch records that are objects (none when 'epochs' is not a list)."""
    listed = metadata.get("epochs")
    return [record for record in listed if isinstance(record, dict)] if isinstance(listed, list) else []


def best_epoch_record(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The history record of the best epoch (by best_epoch, else the last marked is_best), or None."""
    epochs = epoch_records(metadata)
    best = metadata.get("best_epoch")
    for record in reversed(epochs):
        if record.get("epoch") == best and best is not None:
            return record
    marked = [record for record in epochs if record.get("is_best")]
    return marked[-1] if marked else None


# ---------------------------------------------------------------------------------------------------------------------
# Disk: counting images, reading a report (locating images and their thumbnails: report_images.py)
# ---------------------------------------------------------------------------------------------------------------------


def count_images(dataset_dir: Path) -> dict[str, dict[str, int]]:
    """{split: {class: image files}}, found as the trainer finds them (classifier.find_image_files)."""
    import classifier  # the one image reader; imports no torch until a model is built

    return {
        split: {
            name: len(classifier.find_image_files(dataset_dir / split / name))
            for name in fileio.class_folders(dataset_dir / split)
        }
        for split in fileio.SPLITS
    }


# ---------------------------------------------------------------------------------------------------------------------
# Rendering: each section is a function of what was read; every report value passes through esc()
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Page:
    """What the sections share while the page is built."""

    dataset_dir: Path
    models_dir: Path
    catalog: Catalog
    counts: dict[str, dict[str, int]]
    unusable: list[str] = field(default_factory=list)  # reports present but unusable: exit code 1
    glance: dict[str, str] = field(default_factory=dict)  # section id -> one line for the summary at the top
    crawl: Crawl = field(default_factory=Crawl)  # the download manifest: sources of images, refused URLs

    @property
    def classes(self) -> list[str]:
        return sorted({name for split in self.counts.values() for name in split})


def filter_attrs(classes: Sequence[Any], tags: Sequence[str]) -> str:
    """data-* attributes the page's filters read: the classes (JSON) and category tags of one block."""
    class_json = json.dumps(sorted({str(name) for name in classes if name is not None}), ensure_ascii=True)
    return f' data-filter="1" data-classes="{html.escape(class_json)}" data-tags="{" ".join(tags)}"'


def render_card(
    page: Page, shown: Shown, caption: str, tags: Sequence[str], extra: str = "", is_filtered: bool = True
) -> str:
    """One image: thumbnail (lazy), caption, and the keep / delete / relabel controls when it may be decided.

    ``is_filtered``: the card hides itself under the filters (False inside a duplicate group, which the filters
    show or hide as a whole so a label conflict is always seen with all its copies).
    """
    attrs = filter_attrs([shown.class_name], tags) if is_filtered else ""
    parts = [f'<figure class="card" data-i="{shown.index}"{attrs}>']
    if shown.thumb:
        width, height = shown.size
        image = f'<img loading="lazy" src="{esc(shown.thumb)}" width="{width}" height="{height}" alt="">'
        parts.append(f'<a class="thumb" href="{esc(shown.href)}" target="_blank" rel="noopener">{image}</a>')
    else:
        parts.append(f'<div class="thumb missing">{esc(shown.problem or "no thumbnail")}</div>')
    parts.append(
        f'<figcaption><div class="path">{esc(shown.path)}</div>{render_source(page, shown.path)}{caption}'
        f"</figcaption>{extra}"
    )
    if shown.thumb and shown.split in fileio.SPLITS and shown.class_name:
        targets = [name for name in page.counts.get(shown.split, {}) if name != shown.class_name]
        options = "".join(f'<option value="{esc(name)}">{esc(name)}</option>' for name in targets)
        parts.append(
            '<div class="decide"><button type="button" data-act="keep">keep</button>'
            '<button type="button" data-act="delete">delete</button>'
            f'<select data-act="relabel" aria-label="relabel to"><option value="">relabel to\u2026</option>{options}'
            "</select></div>"
        )
    parts.append("</figure>")
    return "".join(parts)


def render_source(page: Page, path: str) -> str:
    """Where the downloader found the image (its URL, and the search query), from the manifest; empty if unknown."""
    record = page.crawl.sources.get(path)
    if record is None:
        return ""
    url = record.get("url")
    link = f'<a href="{esc(url)}" rel="noopener noreferrer">{esc(url)}</a>' if is_web_link(url) else esc(url)
    query = f" (query {esc(record['query'])})" if record.get("query") else ""
    return f'<div class="source">from {link}{query}</div>'


def render_refusals(page: Page) -> str:
    """What the crawl refused: URLs per reason and class, then every URL with its reason (collapsed)."""
    head = '<section id="refused"><h2>Refused by the crawl</h2>'
    crawl = page.crawl
    if crawl.problem:
        page.unusable.append(crawl.problem)
        return f'{head}<p class="note">{esc(crawl.problem)}.</p></section>'
    if not crawl.refusals:
        return f'{head}<p class="muted">No URL refused (or no download manifest).</p></section>'
    refused = crawl.table()  # grouped once, and cut: a crafted manifest cannot make the page huge
    other = "<th>other classes</th>" if refused.other_classes else ""
    cells = "".join(f"<th>{esc(name)}</th>" for name in refused.classes) + other
    rows = "".join(
        f"<tr><th>{esc(row.reason)}</th>{''.join(f'<td>{count}</td>' for count in refused.cells(row))}</tr>"
        for row in refused.rows
    )
    table = f'<table class="refusals"><tr><th>reason</th>{cells}<th>total</th></tr>{rows}</table>'
    lists = [render_refused_list(row) for row in refused.rows]
    if refused.reasons_left_out:
        lists.append(
            f'<p class="note">... and {plural(refused.reasons_left_out, "more reason")} '
            f"({plural(refused.urls_left_out, 'URL')}) not shown: {MANIFEST_NAME} has them.</p>"
        )
    hint = (
        "<p>The latest attempt of each URL (per class) in download_manifest.jsonl. A re-run retries timeouts and "
        "server errors; a changed limit (<code>--min-size</code>, <code>--max-bytes</code>) retries what it refused; "
        "<code>--retry-failed</code> retries the rest.</p>"
    )
    page.glance["refused"] = plural(len(crawl.refusals), "URL") + " refused"
    return f"{head}{hint}{table}{''.join(lists)}</section>"


def render_refused_list(row: ReasonRow) -> str:
    """One reason's refused URLs, collapsed; at most report_downloads.MAX_URLS_SHOWN, then how many more."""
    items = "".join(
        f"<li>{esc(record.get('class'))}: <span class=url>{esc(record.get('url'))}</span> "
        f"<span class=muted>{esc(record.get('detail'))}</span></li>"
        for record in row.records
    )
    if row.total > len(row.records):
        items += f'<li class="muted">... and {row.total - len(row.records)} more in {MANIFEST_NAME}</li>'
    return f"<details><summary>{esc(row.reason)}: {row.total}</summary><ul>{items}</ul></details>"


def render_counts(page: Page) -> str:
    rows = []
    for name in page.classes:
        cells = [page.counts[split].get(name) for split in fileio.SPLITS]
        total = sum(value or 0 for value in cells)
        shown = "".join(
            f'<td id="count-{split}-{esc(name)}">{value if value is not None else "missing"}</td>'
            for split, value in zip(fileio.SPLITS, cells)
        )
        warn = ' class="warn"' if any(value in (None, 0) for value in cells) else ""
        rows.append(f"<tr{warn}><th>{esc(name)}</th>{shown}<td>{total}</td></tr>")
    if not rows:
        body = (
            f'<p class="note">No class folders in {esc(page.dataset_dir)}/train or /val yet: run the collect stage.</p>'
        )
    else:
        head = "".join(f"<th>{split}</th>" for split in fileio.SPLITS)
        body = f'<table class="counts"><tr><th>class</th>{head}<th>total</th></tr>{"".join(rows)}</table>'
        if any(page.counts[split].get(name) in (None, 0) for name in page.classes for split in fileio.SPLITS):
            body += '<p class="note">A class with no images in a split (highlighted) cannot be trained or checked.</p>'
    images = sum(sum(split.values()) for split in page.counts.values())
    page.glance["counts"] = f"{plural(images, 'image')} in {plural(len(page.classes), 'class')}"
    return f'<section id="counts"><h2>Images per class and split</h2>{body}</section>'


def stale_entries(dataset_dir: Path, files: Sequence[dict[str, Any]]) -> int:
    """How many of a group's files changed (size or time) or disappeared since the report was written."""
    changed = 0
    for entry in files:
        path, problem = locate(dataset_dir, entry.get("path"))
        if path is None:
            changed += problem == "no longer on disk"
            continue
        info = path.stat()
        if entry.get("size") not in (None, info.st_size) or entry.get("mtime_ns") not in (None, info.st_mtime_ns):
            changed += 1
    return changed


def render_duplicate_report(page: Page, path: Path) -> str:
    method = path.stem.removeprefix(duplicate_report.REPORT_PREFIX)
    data, problem = fileio.read_optional_json(path, "duplicate report")
    groups, unusable = duplicate_groups(data) if problem is None else ([], problem)
    title = f"<h3>{esc(method)} <span class=muted>({esc(path.name)})</span></h3>"
    if unusable:
        page.unusable.append(f"{path}: {unusable}")
        return f'<div class="report" id="dup-{esc(method)}">{title}<p class="note">Unusable: {esc(unusable)}.</p></div>'
    parts = [f'<div class="report" id="dup-{esc(method)}">{title}']
    counts = duplicate_report.group_counts(data)
    cells = "".join(
        f'<tr><th>{esc(note)}</th><td data-count="{category}">{counts[category]}</td></tr>'
        for category, note in duplicate_report.CATEGORY_NOTES.items()
    )
    parts.append(
        f"<p>Created {esc(data.get('created', '?'))}; {len(groups)} groups, "
        f'{sum(len(group["files"]) for group in groups)} files.</p><table class="small">{cells}</table>'
    )
    stale = sum(stale_entries(page.dataset_dir, group["files"]) for group in groups)
    if stale:
        parts.append(
            f'<p class="note stale">Stale: {stale} files changed or disappeared since this report was written; run '
            f"the detector again (python data_collection/detect_duplicates_by_{esc(method)}.py).</p>"
        )
    for group in groups:
        note, tags = duplicate_report.CATEGORY_NOTES[group["category"]], category_tags(group["category"])
        classes = [entry.get("class") for entry in group["files"]]
        cards = []
        for entry in group["files"]:
            shown = page.catalog.add(entry["path"])
            size = f"{esc(entry.get('width', '?'))}x{esc(entry.get('height', '?'))}"
            caption = f"<div>{size}, {esc(entry.get('size', '?'))} B</div>"
            cards.append(render_card(page, shown, caption, tags, is_filtered=False))
        previews = strategy_previews(group)
        if previews is None:
            plan = '<p class="muted">Strategy previews unavailable (removal_plan.py could not be imported).</p>'
        else:
            rows = "".join(
                f"<tr><th>{esc(strategy)}</th><td>"
                + (esc(", ".join(removed)) if removed else '<span class="muted">removes nothing</span>')
                + "</td></tr>"
                for strategy, removed in previews
            )
            summary = "<summary>What each removal strategy would remove</summary>"
            plan = f'<details>{summary}<table class="small">{rows}</table></details>'
        parts.append(
            f'<div class="group"{filter_attrs(classes, tags)}><h4>Group {esc(group.get("id"))}: '
            f'{len(group["files"])} files, <span class="cat cat-{tags[0]}">{esc(note)}</span></h4>'
            f'<div class="cards">{"".join(cards)}</div>{plan}</div>'
        )
    parts.append("</div>")
    conflicts = sum(group["category"] in duplicate_report.CONFLICT_CATEGORIES for group in groups)
    leaks = sum(group["category"] in duplicate_report.LEAK_CATEGORIES for group in groups)
    page.glance[f"dup-{method}"] = (
        f"{method}: {plural(len(groups), 'duplicate group')} "
        f"({plural(conflicts, 'label conflict')}, {plural(leaks, 'train/val leak')})"
    )
    return "".join(parts)


def render_duplicates(page: Page) -> str:
    reports = sorted(page.dataset_dir.glob(f"{duplicate_report.REPORT_PREFIX}*.json"))
    intro = (
        "<p>Groups from every detector report, worst first: label conflicts, then train/val leaks, then plain "
        "copies; larger groups first. Label conflicts and near copies are never removed "
        "automatically; mark them below, or remove with <code>python data_collection/remove_duplicates.py --report "
        "REPORT --strategy STRATEGY</code> (a dry run first; trash and <code>--undo</code>).</p>"
    )
    if not reports:
        body = (
            '<p class="note">No duplicate report in the dataset folder: run the detect stage '
            "(python data_collection/detect_duplicates_by_filesize.py).</p>"
        )
    else:
        body = "".join(render_duplicate_report(page, path) for path in reports)
    return f'<section id="duplicates"><h2>Duplicates</h2>{intro}{render_removals(page.dataset_dir)}{body}</section>'


def render_removals(dataset_dir: Path) -> str:
    """What run_pipeline.py removed automatically (its state file lists the undo logs), with the undo commands."""
    logs = pipeline_state.load_state(dataset_dir, None).get("deletion_logs", [])  # only logs inside the dataset
    logs = [log for log in logs if os.path.lexists(log)]
    if not logs:
        return ""
    commands = "".join(
        f"<li><code>python data_collection/remove_duplicates.py --undo {esc(log)}</code></li>" for log in logs
    )
    return (
        '<div class="note">run_pipeline.py removed only certain copies automatically (byte-identical within one class '
        f"and split, and the val copies of exact train/val leaks), into the trash; undo with:<ul>{commands}</ul></div>"
    )


def render_problematic(page: Page, path: Path) -> tuple[str, dict[str, Any] | None]:
    """The problematic-images section, and the report (for the decisions' report_created) when usable."""
    head = '<section id="problematic"><h2>Problematic training images</h2>'
    if not os.path.lexists(path):
        note = (
            f"No problematic-images report at {esc(path)}: the train stage writes it "
            "(python train_classifier.py --detect-problematic)."
        )
        return f'{head}<p class="note">{note}</p></section>', None
    try:
        report = problematic_report.load_report(path)
    except fileio.ReportError as error:
        page.unusable.append(str(error))
        return f'{head}<p class="note">Unusable: {esc(error)}.</p></section>', None
    classes = report["classes"]
    reference = math.log(len(classes)) if len(classes) > 1 else None
    entries = sorted((entry for items in report["problematic_images"].values() for entry in items), key=problem_order)
    parts = [head]
    parts.append(
        f"<p>Created {esc(report.get('created', '?'))}, method {esc(report.get('method', '?'))}, "
        f"{esc(report.get('num_images', '?'))} train images scored. "
        f'<span class="muted">{esc(problematic_report.evidence_note(str(report.get("method"))))}</span></p>'
    )
    if weak := problematic_report.report_weak_check_note(report):
        parts.append(f'<p class="note" id="weak-check">{esc(weak)}.</p>')
    likely = problematic_report.issue_word(report)  # "possible" for a weak check's flags
    per_class = report["problematic_images"]
    summary = report.get("summary_by_class") if isinstance(report.get("summary_by_class"), dict) else {}
    rows = "".join(
        f'<tr><th>{esc(name)}</th><td data-issues="{esc(name)}">'
        f"{sum(problematic_report.is_label_issue(entry) for entry in per_class.get(name, []))}</td>"
        f"<td>{sum(not problematic_report.is_label_issue(entry) for entry in per_class.get(name, []))}</td>"
        f"<td>{fmt((summary.get(name) or {}).get('average_mean_loss'))}</td></tr>"
        for name in classes
    )
    parts.append(
        f'<table class="small"><tr><th>class</th><th>{likely} label issues</th><th>hard examples listed</th>'
        f"<th>average mean loss</th></tr>{rows}</table>"
    )
    rule = report.get("label_issue_rule", "confident learning")
    issue_cards, hard_cards, missing = [], [], 0
    for entry in entries:
        shown = page.catalog.add(entry["path"])
        missing += shown.problem == "no longer on disk"
        is_issue = problematic_report.is_label_issue(entry)
        spark = f'<div class="sparkwrap">{sparkline_svg(entry.get("losses") or [], reference)}</div>'
        caption = problem_caption(entry, likely)
        card = render_card(page, shown, caption, ("label-issue",) if is_issue else ("hard",), spark)
        (issue_cards if is_issue else hard_cards).append(card)
    if missing:
        parts.append(
            f'<p class="note stale">Stale: {missing} listed images are no longer on disk (moved or deleted since the '
            "report was written); the train stage writes a current one.</p>"
        )
    parts.append(
        f'<h3>{likely.capitalize()} label issues ({len(issue_cards)})</h3><p class="muted">The rule ({esc(rule)}) '
        "fired: the evidence prefers another class. Relabel, delete or keep each.</p>"
        f'<div class="cards" id="problem-cards">{"".join(issue_cards)}</div>'
        f'<details id="hard-examples"><summary>Hard examples ({len(hard_cards)}): the highest losses whose label is '
        "probably right; not counted as problems</summary>"
        f'<div class="cards" id="hard-cards">{"".join(hard_cards)}</div></details></section>'
    )
    page.glance["problematic"] = (
        f"{plural(len(issue_cards), f'{likely} label issue')} ({plural(len(hard_cards), 'hard example')} listed apart)"
    )
    return "".join(parts), report


def render_training(page: Page) -> str:
    head = '<section id="training"><h2>Training</h2>'
    path = page.models_dir / "training_metadata.json"
    metadata, problem = fileio.read_optional_json(path, "training metadata")
    if problem is None and metadata is not None and not isinstance(metadata, dict):
        problem = f"the training metadata {path} is not a JSON object"
    if problem:
        page.unusable.append(problem)
        return f'{head}<p class="note">Unusable: {esc(problem)}.</p></section>'
    if metadata is None:
        return f'{head}<p class="note">No training metadata at {esc(path)}: run the train stage.</p></section>'
    parts = [head]
    best = best_epoch_record(metadata)
    config = metadata.get("config") if isinstance(metadata.get("config"), dict) else {}
    parts.append(
        f"<p>Status {esc(metadata.get('status', '?'))}, updated {esc(metadata.get('updated', '?'))}; "
        f"{esc(config.get('arch', '?'))} at {esc(config.get('image_size', '?'))} px; best epoch "
        f"{esc(metadata.get('best_epoch', '?'))} (val macro F1 {fmt(metadata.get('best_macro_f1'))}).</p>"
    )
    trained_counts = metadata.get("class_counts")
    if isinstance(trained_counts, dict) and trained_counts != {
        split: {name: count for name, count in page.counts.get(split, {}).items()} for split in trained_counts
    }:
        parts.append(
            '<p class="note stale">Stale: the dataset\'s class counts differ from those this model was trained on; '
            "run the train stage again.</p>"
        )
    epochs = epoch_records(metadata)
    numbers = [record.get("epoch") for record in epochs]
    if epochs and all(is_number(number) for number in numbers):

        def series(key: str) -> list[Any]:
            return [record.get(key) for record in epochs]

        parts.append(
            '<div class="charts">'
            + line_chart_svg("loss", numbers, {"train": series("train_loss"), "val": series("val_loss")})
            + line_chart_svg("accuracy", numbers, {"train": series("train_accuracy"), "val": series("val_accuracy")})
            + line_chart_svg("val macro F1", numbers, {"val": series("macro_f1")})
            + "</div>"
        )
    else:
        parts.append('<p class="note">No finished epoch recorded yet.</p>')
    classes = [str(name) for name in metadata.get("classes") or []]
    if best is not None:
        parts.append(render_confusion(classes, best.get("confusion_matrix"), best.get("epoch")))
        per_class = best.get("per_class") if isinstance(best.get("per_class"), dict) else {}
        rows = "".join(
            f"<tr><th>{esc(name)}</th><td>{fmt(values.get('precision'))}</td><td>{fmt(values.get('recall'))}</td>"
            f"<td>{fmt(values.get('f1'))}</td><td>{esc(values.get('support', ''))}</td></tr>"
            for name, values in per_class.items()
            if isinstance(values, dict)
        )
        if rows:
            parts.append(
                '<table class="small"><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th>'
                f"</tr>{rows}</table>"
            )
    parts.append(render_calibration(metadata))
    threshold = metadata.get("recommended_threshold")
    page.glance["training"] = f"val macro F1 {fmt(metadata.get('best_macro_f1'))}" + (
        f", recommended threshold {fmt(threshold, 2)}" if is_number(threshold) else ""
    )
    parts.append(render_errors(page, metadata, best))
    parts.append("</section>")
    return "".join(parts)


def render_confusion(classes: Sequence[str], matrix: Any, epoch: Any) -> str:
    if (
        not isinstance(matrix, list)
        or len(matrix) != len(classes)
        or not all(isinstance(row, list) and len(row) == len(classes) for row in matrix)
        or not all(is_number(value) for row in matrix for value in row)
    ):
        return '<p class="note">No confusion matrix recorded.</p>'
    head = "".join(f"<th>{esc(name)}</th>" for name in classes)
    rows = []
    for name, row in zip(classes, matrix):
        total = sum(row) or 1
        cells = "".join(
            f'<td style="background: rgba(31,119,180,{value / total:.2f})"'
            f"{' class=dark' if value / total > 0.5 else ''}>{int(value)}</td>"
            for value in row
        )
        rows.append(f"<tr><th>{esc(name)}</th>{cells}</tr>")
    return (
        f'<h3>Confusion matrix (val, epoch {esc(epoch)})</h3><table class="confusion" id="confusion"><tr>'
        f'<th class="muted">true \u2193 / predicted \u2192</th>{head}</tr>{"".join(rows)}</table>'
    )


def render_calibration(metadata: dict[str, Any]) -> str:
    calibration = metadata.get("calibration")
    table = metadata.get("thresholds")
    recommended = metadata.get("recommended_threshold")
    if not isinstance(calibration, dict) and not isinstance(table, list):
        return '<h3>Calibration</h3><p class="note">No calibration recorded (it runs after the last epoch).</p>'
    parts = ["<h3>Calibration and confidence threshold</h3>"]
    if isinstance(calibration, dict):
        parts.append(
            f"<p>Temperature {fmt(calibration.get('temperature'))}: expected calibration error "
            f"{fmt(calibration.get('ece_before'), 4)} \u2192 {fmt(calibration.get('ece_after'), 4)}, NLL "
            f"{fmt(calibration.get('nll_before'), 4)} \u2192 {fmt(calibration.get('nll_after'), 4)} on "
            f"{esc(calibration.get('val_images', '?'))} val images.</p>"
        )
    if isinstance(table, list):
        rows = []
        for row in table:
            if not isinstance(row, dict):
                continue
            mark = is_number(recommended) and row.get("threshold") == recommended
            rows.append(
                f"<tr{' class=recommended' if mark else ''}><td>{fmt(row.get('threshold'), 2)}</td>"
                f"<td>{percent(row.get('accuracy'))}</td><td>{percent(row.get('sent_to_other'))}</td>"
                f"<td>{percent(row.get('accepted_accuracy'))}</td><td>{'recommended' if mark else ''}</td></tr>"
            )
        parts.append(
            '<table class="small" id="thresholds"><tr><th>threshold</th><th>accuracy</th><th>sent to "other"</th>'
            f"<th>accuracy of the kept</th><th></th></tr>{''.join(rows)}</table>"
        )
    if is_number(recommended):
        parts.append(f'<p>Recommended confidence threshold: <b id="recommended">{fmt(recommended, 2)}</b></p>')
    return "".join(parts)


def render_errors(page: Page, metadata: dict[str, Any], best: dict[str, Any] | None) -> str:
    """The best epoch's most confident val mistakes (error_analysis/epoch_XX/*_errors.json), most confident first."""
    folders = sorted((page.models_dir / "error_analysis").glob("epoch_*")) if page.models_dir.is_dir() else []
    epoch = best.get("epoch") if best else None
    wanted = page.models_dir / "error_analysis" / f"epoch_{epoch:02d}" if isinstance(epoch, int) else None
    folder = wanted if wanted is not None and wanted.is_dir() else (folders[-1] if folders else None)
    head = "<h3>Most confident mistakes (val)</h3>"
    if folder is None:
        return f'{head}<p class="note">No error analysis in {esc(page.models_dir / "error_analysis")}.</p>'
    errors = []
    for path in sorted(folder.glob("*_errors.json")):
        data, problem = fileio.read_optional_json(path, "error analysis")
        items = data.get("errors") if isinstance(data, dict) else None
        if problem or not isinstance(items, list):
            page.unusable.append(problem or f"{path} has no 'errors' list")
            continue
        errors.extend(item for item in items if isinstance(item, dict) and isinstance(item.get("image_path"), str))
    errors.sort(
        key=lambda item: (-(item["confidence"] if is_number(item.get("confidence")) else 0), item["image_path"])
    )
    if not errors:
        return f'{head}<p class="muted">No mistakes in {esc(folder.name)}.</p>'
    cards = []
    for item in errors[:MAX_ERRORS_SHOWN]:
        shown = page.catalog.add(item["image_path"])
        caption = (
            f"<div>true {esc(item.get('true_label'))}, predicted <b>{esc(item.get('predicted_label'))}</b> "
            f"({fmt(item.get('confidence'), 2)})</div>"
        )
        cards.append(render_card(page, shown, caption, ("error",)))
    more = f" (first {MAX_ERRORS_SHOWN} of {len(errors)})" if len(errors) > MAX_ERRORS_SHOWN else ""
    return (
        f'{head}<p class="muted">{esc(folder.name)}{more}</p><div class="cards" id="error-cards">{"".join(cards)}</div>'
    )


def page_asset(name: str) -> str:
    """The page's CSS or JavaScript from report_assets/, to inline (kept as files so they read as CSS and JS)."""
    text = (ASSETS_DIR / name).read_text(encoding="utf-8")
    if "</" in text:  # would close the <style> or <script> element it is inlined into
        raise ValueError(f"{ASSETS_DIR / name} must not contain '</'")
    return text


def render_page(page: Page, problematic_path: Path) -> str:
    counts = render_counts(page)
    refusals = render_refusals(page)
    duplicates = render_duplicates(page)
    problematic, report = render_problematic(page, problematic_path)
    training = render_training(page)
    images = sorted(page.catalog.images.values(), key=lambda image: image.index)
    data = {
        "decisions_schema_version": DECISIONS_SCHEMA_VERSION,
        "decisions_type": DECISIONS_TYPE,
        "decisions_file_name": DECISIONS_FILE_NAME,
        "dataset_dir": str(page.dataset_dir.resolve()),
        "report_path": str(problematic_path.resolve()),
        "report_created": report.get("created") if report else None,
        "images": [
            {"path": image.path, "sha256": image.sha256, "class": image.class_name, "split": image.split}
            for image in images
        ],
    }
    glance = " \u00b7 ".join(f'<a href="#{esc(key)}">{esc(text)}</a>' for key, text in page.glance.items())
    glance = f'<nav class="glance">{glance}</nav>' if glance else ""
    class_options = "".join(f'<option value="{esc(name)}">{esc(name)}</option>' for name in page.classes)
    tag_options = "".join(f'<option value="{tag}">{esc(label)}</option>' for tag, label in FILTER_CATEGORIES)
    header = (
        f"<header><h1>birdplane report</h1>"
        f'<label>class <select id="filter-class"><option value="">all classes</option>{class_options}</select>'
        f'</label><label>category <select id="filter-tag"><option value="">all categories</option>{tag_options}'
        "</select></label>"
        '<span id="shown-count" class="muted"></span>'
        '<span>decisions: <b id="decision-count">0 keep, 0 delete, 0 relabel</b></span>'
        '<button type="button" id="export">Export decisions (JSON)</button>'
        '<button type="button" id="clear">Clear</button>'
        '<textarea id="decisions-json" aria-hidden="true"></textarea></header>'
    )
    intro = (
        f'<p class="muted">Dataset {esc(page.dataset_dir.resolve())}, models {esc(page.models_dir)}; written '
        f"{esc(fileio.utc_now())}. Marking images changes nothing on disk: export the decisions, then run "
        f"<code>python review_problematic_images.py --apply-decisions {DECISIONS_FILE_NAME} --dataset-dir "
        f"{esc(page.dataset_dir)}</code> "
        "(it asks before moving anything; <code>--undo</code> restores).</p>"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>birdplane report: {esc(page.dataset_dir.name)}</title>"
        f"<style>{page_asset('report.css')}</style></head><body>"
        f"{header}<main>{intro}{glance}{counts}{refusals}{duplicates}{problematic}{training}</main>"
        f'<script type="application/json" id="report-data">{json_for_script(data)}</script>'
        f"<script>{page_asset('report.js')}</script></body></html>\n"
    )


def build_report(dataset_dir: Path, models_dir: Path, output: Path, problematic_path: Path | None = None) -> Page:
    """Read everything, write the thumbnails and the page; returns what was built (for the summary and tests)."""
    files_dir = output.with_name(f"{output.stem}_files")
    thumbs_dir = files_dir / "thumbs"
    for folder in (files_dir, thumbs_dir):
        if folder.is_symlink():
            raise fileio.UnsafePathError(f"{folder} is a symbolic link: the report never writes through one")
    catalog = Catalog(dataset_dir, output.parent, thumbs_dir)
    page = Page(dataset_dir, models_dir, catalog, count_images(dataset_dir), crawl=read_crawl(dataset_dir))
    with cli.progress(desc="Images for the report", unit="image") as catalog.bar:
        text = render_page(page, problematic_path or dataset_dir / problematic_report.DEFAULT_NAME)
    with fileio.atomic_write(output, "w") as handle:
        handle.write(text)
    remove_stale_thumbs(thumbs_dir, page.catalog.used_thumbs())
    return page


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write one static HTML page from the dataset's reports, to review images and export decisions.",
        epilog=cli.EXIT_CODES_HELP,
        add_help=add_help,
    )
    parser.add_argument("--dataset-dir", type=Path, default=Path("dataset"), help="dataset folder (default: dataset)")
    parser.add_argument(
        "--models-dir", type=Path, default=Path("models"), help="train_classifier.py's --output-dir (default: models)"
    )
    cli.add_report_flag(parser, f"the HTML page to write (default: <dataset-dir>/{DEFAULT_NAME})", type=Path)
    parser.add_argument(
        "--problematic-report",
        type=Path,
        default=None,
        help=f"the problematic-images report to show (default: <dataset-dir>/{problematic_report.DEFAULT_NAME})",
    )
    cli.add_output_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    cli.apply_output_flags(args)
    if not args.dataset_dir.is_dir():
        return cli.error(f"the dataset folder {args.dataset_dir} does not exist (pass --dataset-dir)")
    output = args.report if args.report is not None else args.dataset_dir / DEFAULT_NAME
    reason = fileio.writable_folder_reason(output.parent)
    if reason:
        return cli.error(f"cannot write the report: {reason}")
    try:
        page = build_report(args.dataset_dir, args.models_dir, output, args.problematic_report)
    except fileio.UnsafePathError as error:
        return cli.error(str(error))
    except KeyboardInterrupt:
        print("\nInterrupted: the previous report (if any) is intact.", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    for problem in page.unusable:
        logger.warning("%s", cli.printable(problem))
    shown = len(page.catalog.images)
    print(f"Report: {output} ({shown} images shown; thumbnails in {output.with_name(output.stem + '_files')}/thumbs)")
    if page.catalog.unreadable:
        logger.warning("%d images could not be read for a thumbnail (named on the page)", page.catalog.unreadable)
    return cli.EXIT_PARTIAL if page.unusable or page.catalog.unreadable else cli.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
