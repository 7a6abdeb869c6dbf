"""Figures of review_problematic_images.py (grid pages, loss trajectories): imported by review_problematic_images.py,
not a script.

Also ``format_number`` (the captions' and the text summary's way of writing a figure) and the window that shows one
image during ``--mode interactive``; what a report's fields mean (out of fold or not, the evidence note, the labelled
class's probability) is problematic_report.py's. matplotlib, numpy and classifier (torch) are imported inside the
functions that draw or read images, so ``--mode summary`` loads none of them.
"""

from __future__ import annotations

import math
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import cli
import fileio
from fileio import ReportError
from problematic_report import is_out_of_fold, label_probability, report_evidence_note, suggested_class

THUMBNAIL_SIZE = 160  # pixels of the longer side in the grid: enough to judge a label, small enough for 40 a page
GRID_COLUMNS = 8  # thumbnails per grid row
NOTE_LINE_INCHES = 0.13  # one line of the 7 pt note under the grid, with its spacing
CAPTION_INCHES = 0.6  # the four 7 pt caption lines above each thumbnail of the grid
GRID_IMAGES_PER_PAGE = 48  # more per figure makes the thumbnails too small to judge; extra pages go to more files
CAPTION_NAME_CHARACTERS = 24  # a longer file name under a thumbnail runs into its neighbour's
TRAJECTORY_LEGEND_MAX_LINES = 12  # above this a legend of file names hides the lines it labels
FIGURE_DPI = 100
# Severity colours: a likely label issue is the thing to fix first; a loss above ln(number of classes) means the
# model does worse on the image than a uniform guess would; everything else in the report is merely the hardest.
SEVERITY_COLOURS = {"label issue": "#d62728", "worse than chance": "#ff7f0e", "hard": "#bcbd22"}
PLACEHOLDER_GREY = 0.85  # background of a thumbnail that could not be read


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions: what a caption, a colour and a page say
# ---------------------------------------------------------------------------------------------------------------------


def format_number(value: Any, digits: int = 3) -> str:
    """A float with ``digits`` decimals, or '-' for a missing value."""
    return "-" if value is None else f"{float(value):.{digits}f}"


def severity_of(entry: dict[str, Any], num_classes: int) -> str:
    """One of SEVERITY_COLOURS' keys: likely label issue, loss worse than a uniform guess, or merely hard."""
    if entry.get("is_label_issue"):
        return "label issue"
    if num_classes > 1 and float(entry["mean_loss"]) >= math.log(num_classes):
        return "worse than chance"
    return "hard"


def short_name(path: str, characters: int = CAPTION_NAME_CHARACTERS) -> str:
    """The file name of ``path``, printable and cut to ``characters`` so captions do not run into each other."""
    name = cli.printable(PurePosixPath(path).name)
    return name if len(name) <= characters else name[: characters - 3] + "..."


def title_of(entry: dict[str, Any]) -> str:
    """What an image is in a word or two: "bird -> plane?" for a likely label issue (the evidence prefers plane),
    "bird (hard example)" otherwise; a suggestion only when that class is more probable than the given one."""
    label, suggested = cli.printable(entry["class"]), suggested_class(entry)
    if entry.get("is_label_issue") and suggested is not None:
        return f"{label} -> {cli.printable(suggested)}?"
    return f"{label} (hard example)"


def grid_caption(entry: dict[str, Any], out_of_fold: bool) -> str:
    """The lines under a thumbnail: each figure says what it is (a mean over epochs, or one epoch's probability)."""
    label = cli.printable(entry["class"])
    return (
        f"{title_of(entry)}\n"
        f"mean loss {float(entry['mean_loss']):.2f} ({len(entry['losses'])} ep)\n"
        f"p({label}) {format_number(label_probability(entry), 2)} {'out of fold' if out_of_fold else 'last epoch'}\n"
        f"{short_name(entry['path'])}"
    )


def grid_pages(count: int, per_page: int) -> list[range]:
    """Index ranges of the grid figures: ``count`` images, at most ``per_page`` a figure."""
    return [range(start, min(start + per_page, count)) for start in range(0, count, per_page)]


def page_paths(path: Path, pages: int) -> list[Path]:
    """``path`` for a single figure, else ``stem_page1.png``, ``stem_page2.png``, ..."""
    if pages <= 1:
        return [path]
    return [path.with_name(f"{path.stem}_page{number}{path.suffix or '.png'}") for number in range(1, pages + 1)]


# ---------------------------------------------------------------------------------------------------------------------
# Drawing: the grid of thumbnails, the loss trajectories and the review window (matplotlib imported only here)
# ---------------------------------------------------------------------------------------------------------------------


def has_display() -> bool:
    """Whether a window can be opened: always on macOS and Windows, elsewhere only with X11 or Wayland."""
    return sys.platform in {"darwin", "win32"} or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def import_pyplot(headless: bool) -> Any:
    """matplotlib.pyplot, switched to the Agg backend when nothing is shown (imported here, never at module level)."""
    import matplotlib

    if headless:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_thumbnail(path: Path) -> tuple[Any, str | None]:
    """(RGB thumbnail as a PIL image, None), or (None, reason) for an image that cannot be read."""
    import classifier  # the one image reader; imported here so the summary never loads torch

    try:
        image = classifier.load_image(path, draft_size=(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    except (OSError, ValueError) as error:  # classifier.ImageLoadError is a ValueError
        return None, str(error) or type(error).__name__
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return image, None


def severity_handles(num_classes: int, with_uniform_line: bool = False) -> list[Any]:
    """Legend entries for the severity colours, and for the dashed uniform-guess line when the figure draws it."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(color=colour, label=name) for name, colour in SEVERITY_COLOURS.items()]
    if with_uniform_line and num_classes > 1:
        label = f"uniform guess: loss ln({num_classes}) = {math.log(num_classes):.2f}"
        handles.append(Line2D([], [], color="grey", linestyle="--", linewidth=1, label=label))
    return handles


def build_grid_figure(
    plt: Any, entries: Sequence[dict[str, Any]], thumbnails: Sequence[tuple[Any, str | None]], report: dict, title: str
) -> Any:
    """One grid figure: a thumbnail per image (or a grey placeholder with the reason), framed in its severity colour."""
    import numpy as np

    num_classes, out_of_fold = len(report["classes"]), is_out_of_fold(report)
    columns = max(1, min(GRID_COLUMNS, len(entries)))
    rows = max(1, math.ceil(len(entries) / columns))
    width = max(columns * 2.2, 6.6)  # inches; never so narrow that the title, legend and note are cut
    note = textwrap.wrap(f"Note: {report_evidence_note(report)}.", min(150, int(width * 18)))
    footer = len(note) * NOTE_LINE_INCHES + 0.45  # the note's lines, then the legend above them (inches)
    height = rows * (2.3 + CAPTION_INCHES) + 0.35 + footer
    figure, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
    for axis in axes.flat:
        axis.set_axis_off()
    for axis, entry, (image, reason) in zip(axes.flat, entries, thumbnails):
        colour = SEVERITY_COLOURS[severity_of(entry, num_classes)]
        if image is not None:
            axis.imshow(np.asarray(image))
        else:
            axis.imshow(np.full((THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3), PLACEHOLDER_GREY))
            wrapped = "\n".join(textwrap.wrap(f"unreadable: {cli.printable(reason)}", 22)[:6])
            axis.text(THUMBNAIL_SIZE / 2, THUMBNAIL_SIZE / 2, wrapped, ha="center", va="center", fontsize=6)
        axis.set_axis_on()
        axis.set(xticks=[], yticks=[])
        plt.setp(list(axis.spines.values()), edgecolor=colour, linewidth=4)
        axis.set_title(grid_caption(entry, out_of_fold), fontsize=7, color=colour)
    figure.suptitle(title, fontsize=10)
    figure.text(0.5, 0.005, "\n".join(note), ha="center", va="bottom", fontsize=7, style="italic")
    legend = figure.legend(handles=severity_handles(num_classes), loc="lower center", ncol=3, fontsize=7)
    legend.set_bbox_to_anchor((0.5, (len(note) * NOTE_LINE_INCHES + 0.05) / height), transform=figure.transFigure)
    # Placed by hand, in inches: tight_layout measured the axes before imshow's square aspect shrank them, so a second
    # row's captions covered the first row's pictures. Each row: its captions, then the picture.
    top, bottom = 1 - (0.35 + CAPTION_INCHES) / height, footer / height
    axes_height = ((top - bottom) * height - (rows - 1) * CAPTION_INCHES) / rows
    figure.subplots_adjust(
        left=0.01, right=0.99, top=top, bottom=bottom, wspace=0.08, hspace=CAPTION_INCHES / axes_height
    )
    return figure


def build_trajectory_figure(plt: Any, entries: Sequence[dict[str, Any]], num_classes: int, title: str) -> Any:
    """Loss per analysis epoch, one line per image, one panel per class; a dashed line marks a uniform guess."""
    classes = list(dict.fromkeys(entry["class"] for entry in entries))
    figure, axes = plt.subplots(len(classes), 1, figsize=(8, 3.2 * len(classes) + 1.0), squeeze=False)
    for axis, class_name in zip(axes[:, 0], classes):
        class_entries = [entry for entry in entries if entry["class"] == class_name]
        for entry in class_entries:
            severity = severity_of(entry, num_classes)
            style = {"color": SEVERITY_COLOURS[severity], "linewidth": 2 if severity == "label issue" else 1}
            epochs = range(1, len(entry["losses"]) + 1)
            axis.plot(epochs, entry["losses"], marker="o", alpha=0.9, label=short_name(entry["path"]), **style)
        if num_classes > 1:
            axis.axhline(math.log(num_classes), color="grey", linestyle="--", linewidth=1)
        axis.set_title(f"{cli.printable(class_name)}: {len(class_entries)} image(s)", fontsize=9)
        axis.set(xlabel="analysis epoch", ylabel="loss")
        axis.set_xticks(range(1, max(len(entry["losses"]) for entry in class_entries) + 1))
        if len(class_entries) <= TRAJECTORY_LEGEND_MAX_LINES:
            axis.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.suptitle(title, fontsize=10)
    handles = severity_handles(num_classes, with_uniform_line=True)
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7)
    figure.tight_layout(rect=(0, 0.03, 1, 0.98))
    return figure


def output_figures(plt: Any, figures: Sequence[Any], save_path: Path | None) -> None:
    """Show the figures, or write them as PNG files (atomically, ordinary permissions) and print their paths."""
    if save_path is None:
        plt.show()
        return
    for figure, path in zip(figures, page_paths(save_path, len(figures))):
        try:
            with fileio.atomic_write(path, "wb") as handle:
                figure.savefig(handle, format="png", dpi=FIGURE_DPI)
        except OSError as error:
            raise ReportError(f"cannot write {path} ({error.strerror or error}); pass --save FILE elsewhere") from None
        finally:
            plt.close(figure)
        print(f"wrote {cli.printable(path)}")


def draw(
    mode: str, entries: Sequence[dict[str, Any]], dataset_dir: Path, report: dict[str, Any], save_path: Path | None
) -> list[str]:
    """Show or save the grid (pages of thumbnails) or the trajectories; one error line per unreadable image."""
    plt = import_pyplot(headless=save_path is not None)
    method = report.get("method", "?")
    if mode == "trajectory":
        title = f"Loss per analysis epoch ({method}), {len(entries)} image(s)"
        output_figures(plt, [build_trajectory_figure(plt, entries, len(report["classes"]), title)], save_path)
        return []
    errors, figures = [], []
    pages = grid_pages(len(entries), GRID_IMAGES_PER_PAGE)
    for number, page in enumerate(pages, start=1):
        page_entries = [entries[index] for index in page]
        thumbnails = [load_thumbnail(dataset_dir / entry["path"]) for entry in page_entries]
        errors += [f"{entry['path']}: {reason}" for entry, (_, reason) in zip(page_entries, thumbnails) if reason]
        title = f"Flagged training images ({len(entries)}, {method})"
        title += f", page {number}/{len(pages)}" if len(pages) > 1 else ""
        figures.append(build_grid_figure(plt, page_entries, thumbnails, report, title))
    output_figures(plt, figures, save_path)
    return errors


class ImageViewer:
    """A matplotlib window that shows the image under review; only created when a display exists."""

    def __init__(self) -> None:
        self.plt = import_pyplot(headless=False)
        self.plt.ion()
        self.figure, self.axis = self.plt.subplots(figsize=(5, 5))

    def show(self, path: Path, title: str) -> None:
        import classifier  # the one image reader

        self.axis.clear()
        self.axis.set_axis_off()
        try:
            self.axis.imshow(classifier.load_image(path))
        except (OSError, ValueError) as error:
            self.axis.text(0.5, 0.5, f"unreadable: {cli.printable(error)}", ha="center", va="center", wrap=True)
        self.axis.set_title(cli.printable(title), fontsize=9)
        self.plt.pause(0.001)

    def close(self) -> None:
        self.plt.close(self.figure)


if __name__ == "__main__":
    cli.refuse_running_as_script(__file__, "run review_problematic_images.py")
