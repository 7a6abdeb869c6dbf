"""Demo (issue 18's closing check): the whole pipeline on a tiny crawl served from 127.0.0.1, judged as a user would.

Three classes of 6 generated photos each, one photo also offered (same bytes, another URL) under a second label, and
one URL that answers 404, listed in a ``class,url`` file and downloaded by ``run_pipeline.py --urls-file`` from a
local HTTP server; then a 2-epoch resnet18 at 64 px without ImageNet weights. It checks what the issue asks for: the
run ends with a model, every class has val images, the label conflict and the 404 are on the page, and the exit code
and last line say that an input was unusable. Nothing leaves the machine; about 25 s on 2 cores.

    python benchmarks/demo_small_pipeline.py                 # in a temporary folder, removed at the end
    python benchmarks/demo_small_pipeline.py --keep demo     # keep demo/dataset, demo/models (open the page)

Prints the pipeline's output, then one line per check; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "data_collection", ROOT / "tests"):
    sys.path.insert(0, str(_path))

from _download_helpers import ImageServer, Route, encode_good_image  # noqa: E402

import duplicate_report  # noqa: E402 - the one reader of the duplicate report
import run_pipeline  # noqa: E402

CLASSES = ("bird", "plane", "other")
PER_CLASS = 6
TRAINING = ["--arch", "resnet18", "--image-size", "64", "--weights", "none", "--epochs", "2", "--batch-size", "8"]
TRAINING += ["--export-onnx"]  # issue 20: the report stage names models/best_model.onnx


def routes() -> tuple[dict[str, Route], list[tuple[str, str]], str]:
    """The server's routes, the (class, path) lines of the URL list, and the 404's path."""
    served: dict[str, Route] = {}
    lines = []
    for index, name in enumerate(CLASSES):
        for number in range(PER_CLASS):
            path = f"/{name}/{number}.jpg"
            served[path] = Route(encode_good_image("jpeg", index, 100 * index + number, size=(128, 128)))
            lines.append((name, path))
    twice = "/mirror/bird-0.jpg"  # the same bytes as /bird/0.jpg, offered as a plane
    served[twice] = served["/bird/0.jpg"]
    lines.append(("plane", twice))
    missing = "/plane/gone.jpg"
    served[missing] = Route(b"not found", status=404, content_type="text/plain")
    lines.append(("plane", missing))
    return served, lines, missing


def val_counts(dataset: Path) -> dict[str, int]:
    return {name: sum(1 for _ in (dataset / "val" / name).glob("*")) for name in CLASSES}


def checks(root: Path, code: int, output: str, missing_url: str) -> list[tuple[str, bool, str]]:
    """(what, passed, detail) for each thing the issue asks for."""
    dataset, models = root / "dataset", root / "models"
    onnx = models / "best_model.onnx"
    page_path = dataset / "report.html"
    page = page_path.read_text(encoding="utf-8") if page_path.is_file() else ""
    counts = val_counts(dataset)
    images = sum(1 for split in ("train", "val") for path in (dataset / split).glob("*/*") if path.is_file())
    exact = dataset / "duplicate_report_filesize.json"
    groups = duplicate_report.load_report(exact, "duplicate report")["duplicate_groups"] if exact.is_file() else {}
    conflicts = [group for name in duplicate_report.CONFLICT_CATEGORIES for group in groups.get(name, [])]
    conflict_files = [entry["path"] for group in conflicts for entry in group["files"]]
    return [
        ("a model", (models / "best_model.pth").is_file(), str(models / "best_model.pth")),
        ("its ONNX export, named", f"ONNX model (runs with onnxruntime, no PyTorch): {onnx}" in output, str(onnx)),
        ("every class in val", all(counts.values()), f"val images per class: {counts}"),
        (
            "the conflict in the exact-copy report",
            len(conflicts) == 1,
            f"{len(conflicts)} label-conflict group(s): {conflict_files}; {images} images in train/ and val/",
        ),
        (
            "the conflict on the page",
            bool(conflict_files) and all(path in page for path in conflict_files),
            "both files of the group named in report.html",
        ),
        ("the 404 on the page", missing_url in page, missing_url),
        ("exit code 1 (one input unusable)", code == 1, f"exit code {code}"),
        ("last line counts it", "input unusable" in output or "inputs unusable" in output, output.strip()[-200:]),
    ]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help)
    parser.add_argument("--keep", type=Path, default=None, help="folder to run in and keep (default: a temporary one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="birdplane_demo_")))
        root.mkdir(parents=True, exist_ok=True)
        served, lines, missing = routes()
        server = stack.enter_context(ImageServer(served))
        urls = root / "urls.csv"
        urls.write_text("".join(f"{name},{server.url(path)}\n" for name, path in lines), encoding="utf-8")
        command = ["--dataset-dir", str(root / "dataset"), "--models-dir", str(root / "models")]
        command += ["--urls-file", str(urls), *TRAINING, "--no-progress"]
        print("$ python run_pipeline.py " + " ".join(command), flush=True)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = run_pipeline.main(command)
        output = out.getvalue()
        print(output)
        results = checks(root, code, output, server.url(missing))
    for what, passed, detail in results:
        print(f"{'PASS' if passed else 'FAIL'}  {what}: {detail}")
    return 0 if all(passed for _, passed, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
