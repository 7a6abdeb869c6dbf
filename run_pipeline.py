"""From class names to a checked classifier and one HTML report, in one command.

Runs the project's scripts in order, each through its own ``main(argv)`` and printed as the exact standalone command,
so any stage can be rerun by hand:

    collect   data_collection/download_images.py             images from DuckDuckGo (default) or --urls-file
    detect    data_collection/detect_duplicates_by_filesize.py and detect_duplicates_by_phash.py   exact, near copies
    dedupe    data_collection/remove_duplicates.py --apply    only what is certain: byte-identical copies within one
              class and split, and byte-identical train/val leaks (the train copy stays); trash + undo log
    train     train_classifier.py --detect-problematic       training, problematic-images analysis, calibration
    report    html_report.py                                 dataset/report.html, to review and mark images

    python run_pipeline.py --classes bird plane superman other --per-class 300
    python run_pipeline.py --urls-file my_urls.csv --arch resnet18 --epochs 10
    python run_pipeline.py --only report          # rebuild just the report;  --from train  retrains, then reports
    python run_pipeline.py --dry-run              # which stages are up to date, and the commands the others run
    python run_pipeline.py --no-collect --dataset-dir photos    # your own images in photos/train|val/<class>/
    python run_pipeline.py --urls-file my_urls.csv --min-size 30   # the downloader's limits are pipeline flags too

A stage whose inputs (the dataset's file list with sizes and times, its own arguments, the reports it reads) are
unchanged since it last finished is skipped, so a re-run after Ctrl-C or after adding images carries on where it
stopped; an interrupted training resumes from its last checkpoint. Label conflicts and near copies are never removed:
they go to the report for a person. The exit code is the worst stage's; the last line counts the unusable inputs and
names the reports that list them. Each stage is one ``Stage`` record in ``STAGE_TABLE``.

Writes what the stages write (dataset/train|val/<class>/, dataset/duplicate_report_{filesize,phash}.json, the
removed copies and their undo logs in dataset/.trash/, models/, dataset/problematic_images_report.json,
dataset/report.html and dataset/report_files/) and dataset/pipeline_state.json, the record of what each stage last
did (pipeline_state.py; it never chooses a path or flag value), and dataset/.pipeline.lock while it runs (a second
run on the same dataset refuses).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
for _folder in (ROOT, ROOT / "data_collection"):  # the scripts run in-process, imported by file name
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import download_images  # noqa: E402 - the collect stage's script: its defaults, its reading of a URLs file
import download_report  # noqa: E402 - its report's name, and the hint that names the flag to change
import search_queries  # noqa: E402

import cli  # noqa: E402 - needs the lines above when run from another folder
import duplicate_report  # noqa: E402
import fileio  # noqa: E402
import pipeline_state  # noqa: E402
from duplicate_report import CONFLICT_CATEGORIES, COPY_CATEGORY, LEAK_CATEGORY  # noqa: E402
from pipeline_state import content_digest, dataset_listing, digest, file_stamp, files_below, read_optional_json  # noqa: E402
from problematic_report import DEFAULT_NAME as PROBLEMATIC_REPORT_NAME  # noqa: E402
from trash import TRASH_FOLDER  # noqa: E402

logger = logging.getLogger(__name__)

LOCK_NAME = ".pipeline.lock"  # in the dataset folder: one pipeline run per dataset at a time (hidden: never scanned)
EXACT_METHOD, NEAR_METHOD = "filesize", "phash"
DEFAULT_ANALYSIS_EPOCHS = 3  # the trainer's default; lowered to --epochs when fewer epochs are asked for
DEFAULT_HTML_NAME = "report.html"
ONNX_MODEL_NAME = "best_model.onnx"  # classifier.py --export-onnx / the trainer's --export-onnx, in the models folder
MAX_REASONS_PER_CLASS = 5  # refusal reasons named per small class (the most frequent); the rest are counted
DOWNLOAD_FLAGS = {  # download_images.py's own flags, passed on as given: its messages suggest them
    "--min-size": "smallest width and height in pixels; lowering it retries the images refused as too small",
    "--max-bytes": "largest download in bytes; raising it retries the URLs refused as too large",
    "--timeout": "seconds to wait for a server",
    "--retries": "retries of a download that timed out or got a 5xx answer",
    "--workers": "parallel downloads",
    "--ignore-content-type": "download even when the server says it is not an image (the bytes are still verified)",
    "--retry-failed": "also try again URLs that failed in earlier runs (404, not an image, ...)",
}
SCRIPTS = {  # module name -> script path relative to the project root
    "download_images": "data_collection/download_images.py",
    "detect_duplicates_by_filesize": "data_collection/detect_duplicates_by_filesize.py",
    "detect_duplicates_by_phash": "data_collection/detect_duplicates_by_phash.py",
    "remove_duplicates": "data_collection/remove_duplicates.py",
    "train_classifier": "train_classifier.py",
    "html_report": "html_report.py",
}


class StageFailed(Exception):
    """A stage did nothing usable (its script exited with 2, or left no output): the pipeline stops, saying why."""

    def __init__(self, stage: str, reason: str, is_reported_above: bool = False) -> None:
        super().__init__(reason)
        self.stage = stage
        self.is_reported_above = is_reported_above  # the script printed its own error: line; ours is then plain


@dataclass(frozen=True)
class Command:
    """One script run: the module whose main() runs it in-process, and the argument list (the same by hand)."""

    module: str
    argv: tuple[str, ...]

    @property
    def script(self) -> str:
        return SCRIPTS[self.module]


@dataclass
class Run:
    """What one pipeline run knows and has done so far."""

    args: argparse.Namespace
    dataset_dir: Path
    models_dir: Path
    html_path: Path
    state: dict[str, Any]
    codes: dict[str, int] = field(default_factory=dict)  # stage -> exit code (a skipped stage's, as it last ran)
    deletion_logs: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions: commands and fingerprints
# ---------------------------------------------------------------------------------------------------------------------


def display_path(path: Path, cwd: Path) -> str:
    """``path`` relative to ``cwd`` when it lies below it (what a user types), else absolute."""
    try:
        return (
            Path(os.path.relpath(path, cwd)).as_posix() if path.resolve().is_relative_to(cwd.resolve()) else str(path)
        )
    except ValueError:  # another drive on Windows
        return str(path)


def command_line(command: Command, cwd: Path) -> str:
    """The command a user pastes to run the same thing by hand (printable: file names cannot spoof the line)."""
    script = display_path(ROOT / command.script, cwd)
    return cli.printable(shlex.join(["python", script, *command.argv]))


def analysis_epochs(args: argparse.Namespace) -> int | None:
    """--analysis-epochs, or the trainer's default lowered to --epochs (a 1-epoch run analyses 1 epoch)."""
    if args.analysis_epochs is not None:
        return args.analysis_epochs
    if args.epochs is not None and args.epochs < DEFAULT_ANALYSIS_EPOCHS:
        return args.epochs
    return None


def optional_flags(pairs: Sequence[tuple[str, Any]]) -> list[str]:
    """``--flag value`` for every value that is not None (lists become several values); ``--flag`` for True."""
    argv: list[str] = []
    for flag, value in pairs:
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
            continue
        argv.append(flag)
        argv.extend(str(item) for item in value) if isinstance(value, (list, tuple)) else argv.append(str(value))
    return argv


def collect_command(args: argparse.Namespace, dataset_dir: Path) -> Command:
    source = ["--urls-file", str(args.urls_file)] if args.urls_file is not None else ["--duckduckgo"]
    argv = ["--dataset-dir", str(dataset_dir), *source]
    argv += optional_flags(
        [
            ("--classes", args.classes),
            ("--per-class", args.per_class),
            ("--queries", args.queries),
            ("--val-fraction", args.val_fraction),
        ]
    )
    argv += optional_flags([(flag, getattr(args, flag[2:].replace("-", "_"))) for flag in DOWNLOAD_FLAGS])
    return Command("download_images", tuple(argv))


def detect_commands(args: argparse.Namespace, dataset_dir: Path) -> list[Command]:
    exact = Command("detect_duplicates_by_filesize", ("--dataset-dir", str(dataset_dir)))
    near = ["--dataset-dir", str(dataset_dir)] + optional_flags([("--threshold", args.phash_threshold)])
    return [exact, Command("detect_duplicates_by_phash", tuple(near))]


def removal_command(report: Path, strategy: str, category: str) -> Command:
    """remove_duplicates.py acting, without asking, on one category of the exact-copy report with one strategy."""
    argv = ("--report", str(report), "--strategy", strategy, "--categories", category, "--apply", "--yes")
    return Command("remove_duplicates", argv)


def train_command(args: argparse.Namespace, dataset_dir: Path, models_dir: Path) -> Command:
    """The trainer with the training settings given once to the pipeline, plus the analysis (and its calibration)."""
    argv = ["--dataset-dir", str(dataset_dir), "--output-dir", str(models_dir)]
    argv += optional_flags(
        [
            ("--arch", args.arch),
            ("--weights", args.weights),
            ("--image-size", args.image_size),
            ("--epochs", args.epochs),
            ("--batch-size", args.batch_size),
            ("--learning-rate", args.learning_rate),
            ("--freeze-until", args.freeze_until),
            ("--seed", args.seed),
            ("--device", args.device),
        ]
    )
    argv += ["--confidence-threshold", "auto", "--detect-problematic"]  # the model stores the recommended threshold
    argv += optional_flags(
        [
            ("--analysis-epochs", analysis_epochs(args)),
            ("--cross-val-folds", args.cross_val_folds),
            ("--top-n-problematic", args.top_n_problematic),
            ("--patience", args.patience),
            ("--export-onnx", args.export_onnx),
        ]
    )
    return Command("train_classifier", tuple(argv))


def report_command(dataset_dir: Path, models_dir: Path, html_path: Path) -> Command:
    argv = ("--dataset-dir", str(dataset_dir), "--models-dir", str(models_dir), "--report", str(html_path))
    return Command("html_report", argv)


def training_counts(listing: Sequence[Sequence[Any]]) -> dict[str, int]:
    """Files per class folder under train/, from ``dataset_listing``."""
    counts: Counter = Counter()
    for entry in listing:
        parts = str(entry[0]).split("/")
        if len(parts) == 3 and parts[0] == "train":
            counts[parts[1]] += 1
    return dict(sorted(counts.items()))


def small_class_lines(counts: dict[str, int], refusals: dict[str, Counter], hint: Callable[[str], str]) -> list[str]:
    """One line per small class (training_data.small_classes) and, from the download report, why URLs of it were
    refused. training_data imports torch: imported here, when the train stage is about to run anyway."""
    from training_data import MIN_CLASS_IMAGES, small_classes

    small = small_classes(counts)
    if not small:
        return []
    largest = max(counts, key=lambda name: counts[name])
    lines = [
        f"Few training images (under {MIN_CLASS_IMAGES}, or under a fifth of the largest class, "
        f"{cli.printable(largest)} with {counts[largest]}): such a class is learnt poorly, its val metrics are noise."
    ]
    for name in small:
        causes = refusals.get(name, Counter())
        shown = causes.most_common(MAX_REASONS_PER_CLASS)  # a crafted download report may list thousands
        why = "; ".join(f"{count} refused as {cli.shown(reason)} ({hint(reason)})" for reason, count in shown)
        why += f"; {len(causes) - len(shown)} more reasons in the download report" if len(causes) > len(shown) else ""
        lines.append(f"  {cli.printable(name)}: {counts[name]} training images" + (f"; {why}" if why else ""))
    return lines


# ---------------------------------------------------------------------------------------------------------------------
# Disk: the state file, the lock, running a script in-process
# ---------------------------------------------------------------------------------------------------------------------


def save_state(run: Run) -> None:
    pipeline_state.save_state(run.dataset_dir, run.state)


@contextlib.contextmanager
def pipeline_lock(dataset_dir: Path) -> Iterator[None]:
    """Hold ``<dataset>/.pipeline.lock`` (fileio.hold_lock) for the run: a second run on the same dataset refuses.

    A lock left by a process that no longer runs (kill -9, a crash) is taken over. Raises fileio.LockHeldError (a
    ReportError) with one sentence when another run holds it.
    """
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with fileio.hold_lock(dataset_dir / LOCK_NAME, "run_pipeline.py", f"working on {dataset_dir}"):
        yield


def import_main(module: str) -> Callable[[list[str]], int]:
    return importlib.import_module(module).main


def with_output_flags(command: Command, args: argparse.Namespace) -> Command:
    """The command plus --no-progress / --verbose when given to the pipeline (every script has both: cli.py).

    They change what is shown, not what is made, so they are left out of the stage fingerprints.
    """
    extra = tuple(flag for flag, is_on in (("--verbose", args.verbose), ("--no-progress", args.no_progress)) if is_on)
    return Command(command.module, command.argv + extra) if extra else command


def run_command(run: Run, stage: str, command: Command) -> int:
    """Print the command, run the script's main(argv) in this process and return its exit code.

    A script that ends through argparse's error (SystemExit) gives its code; KeyboardInterrupt passes through.
    """
    command = with_output_flags(command, run.args)
    print(f"$ {command_line(command, Path.cwd())}", flush=True)
    main = import_main(command.module)
    try:
        code = main(list(command.argv))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (cli.EXIT_OK if exit_.code is None else cli.EXIT_USAGE)
    sys.stdout.flush()
    code = cli.EXIT_OK if code is None else int(code)
    if code == cli.EXIT_INTERRUPTED:
        raise KeyboardInterrupt
    if code not in (cli.EXIT_OK, cli.EXIT_PARTIAL):
        raise StageFailed(stage, f"{command.script} exited with {code} (its reason is above)", is_reported_above=True)
    return code


# ---------------------------------------------------------------------------------------------------------------------
# The stages: each has inputs (its fingerprint), outputs that must exist, and a body
# ---------------------------------------------------------------------------------------------------------------------


def exact_report(run: Run) -> Path:
    return run.dataset_dir / duplicate_report.report_name(EXACT_METHOD)


def near_report(run: Run) -> Path:
    return run.dataset_dir / duplicate_report.report_name(NEAR_METHOD)


def problematic_report(run: Run) -> Path:
    return run.dataset_dir / PROBLEMATIC_REPORT_NAME


def collect_inputs(run: Run) -> Any:
    args = run.args
    argv = collect_command(args, run.dataset_dir).argv
    return {
        "argv": argv,
        "urls_file": content_digest(args.urls_file),
        "queries": content_digest(args.queries),
    }


def detect_inputs(run: Run) -> Any:
    argv = [command.argv for command in detect_commands(run.args, run.dataset_dir)]
    return {"argv": argv, "dataset": dataset_listing(run.dataset_dir)}


def dedupe_inputs(run: Run) -> Any:
    return {"dataset": dataset_listing(run.dataset_dir), "report": file_stamp(exact_report(run))}


def train_inputs(run: Run) -> Any:
    return {
        "argv": train_command(run.args, run.dataset_dir, run.models_dir).argv,
        "dataset": dataset_listing(run.dataset_dir),
    }


def report_inputs(run: Run) -> Any:
    dataset = run.dataset_dir
    reports = files_below(dataset, f"{duplicate_report.REPORT_PREFIX}*.json") + [problematic_report(run)]
    models = [run.models_dir / "training_metadata.json", *files_below(run.models_dir, "error_analysis/*/*.json")]
    return {
        "argv": report_command(dataset, run.models_dir, run.html_path).argv,
        "dataset": dataset_listing(dataset),
        "inputs": [file_stamp(path) for path in reports + models],
    }


def is_up_to_date(run: Run, stage: Stage) -> bool:
    """Finished, with the inputs it had then, and every output still there."""
    record = run.state["stages"].get(stage.name, {})
    if record.get("status") != "done" or record.get("fingerprint") != digest(stage.inputs(run)):
        return False
    return all(path.exists() for path in stage.outputs(run))


def record_stage(run: Run, stage: str, status: str, commands: Sequence[Command], code: int | None = None) -> None:
    """Write the stage's fingerprint (of its inputs as they are now) into the state file."""
    run.state["stages"][stage] = {
        "status": status,
        "fingerprint": digest(STAGE_BY_NAME[stage].inputs(run)),
        "updated": fileio.utc_now(),
        "exit_code": code,
        "commands": [command_line(command, Path.cwd()) for command in commands],
    }
    save_state(run)


def warn_about_small_classes(run: Run) -> None:
    """Before training: name each class too small to learn well, with the download refusals that made it so."""
    counts = training_counts(dataset_listing(run.dataset_dir))
    refusals = download_refusals(run)
    for line in small_class_lines(counts, refusals, download_report.failure_hint):
        print(line)


def run_commands(run: Run, stage: Stage) -> int:
    """Run the stage's commands in order and record it; the worst exit code."""
    commands = stage.commands(run)
    code = max(run_command(run, stage.name, command) for command in commands)
    record_stage(run, stage.name, "done", commands, code)
    return code


def listed_inputs(report: Any, key: str, field: str) -> set[str]:
    """The ``field`` of each entry in the list under ``key`` of a report: what a stage could not use."""
    listed = report.get(key) if isinstance(report, dict) else None
    entries = listed if isinstance(listed, list) else []
    return {str(entry[field]) for entry in entries if isinstance(entry, dict) and field in entry}


def download_refusals(run: Run) -> dict[str, Counter]:
    """From download_report.json: failed URLs per class and reason, this run's and earlier runs' not tried again."""
    report = read_optional_json(run.dataset_dir / download_report.REPORT_NAME, "download report")
    classes = report.get("classes") if isinstance(report, dict) else None
    refusals: dict[str, Counter] = {}
    for name, entry in (classes if isinstance(classes, dict) else {}).items():
        counts: Counter = Counter()
        for key in ("failures_by_reason", "failed_before_by_reason"):
            by_reason = entry.get(key) if isinstance(entry, dict) else None
            for reason, count in (by_reason if isinstance(by_reason, dict) else {}).items():
                counts[str(reason)] += count if type(count) is int and count > 0 else 0
        refusals[str(name)] = +counts
    return refusals


def collect_unusable(run: Run) -> tuple[set[str], list[Path]]:
    path = run.dataset_dir / download_report.REPORT_NAME
    report = read_optional_json(path, "download report")
    return listed_inputs(report, "errors", "url") | listed_inputs(report, "errors", "input"), [path]


def detect_unusable(run: Run) -> tuple[set[str], list[Path]]:
    paths = [exact_report(run), near_report(run)]
    return set().union(*(listed_inputs(load_duplicate_report(path), "errors", "path") for path in paths)), paths


def train_unusable(run: Run) -> tuple[set[str], list[Path]]:
    path = run.models_dir / "training_metadata.json"
    return listed_inputs(read_optional_json(path, "training metadata"), "skipped_files", "path"), [path]


def no_list(run: Run) -> tuple[set[str], list[Path]]:
    """A stage whose unusable inputs are only in what it printed."""
    return set(), []


def load_duplicate_report(path: Path) -> dict[str, Any] | None:
    """A duplicate report checked by its format's one validator; None when it is missing or unusable (a warning)."""
    if not path.exists():
        return None
    try:
        return duplicate_report.load_report(path, "duplicate report")
    except fileio.ReportError as error:
        logger.warning("%s", error)
        return None


def read_groups(path: Path) -> dict[str, int] | None:
    """Groups per category of a duplicate report; None when it is missing or unusable (named in a warning)."""
    report = load_duplicate_report(path)
    return None if report is None else duplicate_report.group_counts(report)


def conflicts(counts: dict[str, int]) -> int:
    return sum(counts.get(name, 0) for name in CONFLICT_CATEGORIES)


def removal_logs(dataset_dir: Path) -> set[Path]:
    """The undo logs in the dataset: remove_duplicates.py's deletion_log_*.json, and the shared trash's logs."""
    return set(files_below(dataset_dir, "deletion_log_*.json")) | set(files_below(dataset_dir / TRASH_FOLDER, "*.json"))


def remove_certain(run: Run, category: str, strategy: str, commands: list[Command]) -> int:
    """Run remove_duplicates on one category of the exact-copy report; note the undo log it wrote."""
    before = removal_logs(run.dataset_dir)
    command = removal_command(exact_report(run), strategy, category)
    commands.append(command)
    code = run_command(run, "dedupe", command)
    run.deletion_logs.extend(str(log) for log in sorted(removal_logs(run.dataset_dir) - before))
    return code


def run_dedupe(run: Run, stage: Stage) -> int:
    """Leaks first (a group with two train copies and one val copy becomes a plain-copy group), then plain copies.

    When anything was removed the detectors run again, so the reports (and the HTML page) describe the dataset as it
    now is.
    """
    start = dataset_listing(run.dataset_dir)
    code, commands = cli.EXIT_OK, []
    exact = read_groups(exact_report(run))
    if exact is None:
        print(f"No usable exact-copy report ({exact_report(run)}): nothing removed; the detect stage writes it.")
        record_stage(run, "dedupe", "done", commands, code)
        return code
    if exact.get(LEAK_CATEGORY):
        code = max(code, remove_certain(run, LEAK_CATEGORY, "prefer-train", commands))
        if dataset_listing(run.dataset_dir) != start:
            code = max(code, run_command(run, "dedupe", detect_commands(run.args, run.dataset_dir)[0]))
    if (read_groups(exact_report(run)) or {}).get(COPY_CATEGORY):
        code = max(code, remove_certain(run, COPY_CATEGORY, "safe", commands))
    if dataset_listing(run.dataset_dir) != start:
        print("Copies were removed: finding duplicates again so the reports match the dataset.")
        code = max(code, run_commands(run, STAGE_BY_NAME["detect"]))
    else:
        print("Nothing certain to remove: no byte-identical copy within one class and split, no exact train/val leak.")
    exact, near = read_groups(exact_report(run)) or {}, read_groups(near_report(run)) or {}
    print(
        "Left for a person (see the report; never removed automatically): exact copies under two labels: "
        f"{conflicts(exact)}; near-copy groups: {sum(near.values())} ({conflicts(near)} under two labels)."
    )
    for log in run.deletion_logs:
        undo = Command("remove_duplicates", ("--undo", log))
        print(f"Undo the removal with: {command_line(undo, Path.cwd())}")
    run.state["deletion_logs"] = sorted(set(run.state.get("deletion_logs", [])) | set(run.deletion_logs))
    record_stage(run, "dedupe", "done", commands, code)
    return code


def run_train(run: Run, stage: Stage) -> int:
    """Train with the analysis; a run interrupted with these same inputs resumes from its last checkpoint."""
    command = train_command(run.args, run.dataset_dir, run.models_dir)
    previous = run.state["stages"].get("train", {})
    fingerprint = digest(stage.inputs(run))
    warn_about_small_classes(run)
    resumable = (run.models_dir / "last_checkpoint.pth").is_file()
    if previous.get("status") == "started" and previous.get("fingerprint") == fingerprint and resumable:
        print("The last training with these settings was interrupted: resuming it.")
        command = Command(command.module, (*command.argv, "--resume"))
    record_stage(run, "train", "started", [command])
    code = run_command(run, "train", command)
    record_stage(run, "train", "done", [command], code)
    return code


def run_report(run: Run, stage: Stage) -> int:
    code = run_commands(run, stage)
    print(f"Open {run.html_path} in a browser (no server needed).")
    onnx = run.models_dir / ONNX_MODEL_NAME
    if onnx.is_file():
        print(f"ONNX model (runs with onnxruntime, no PyTorch): {onnx}")
    return code


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, described once: the table below is the only place that lists them."""

    name: str
    help: str  # the header line printed when it runs
    commands: Callable[[Run], list[Command]]  # what it runs (dedupe: each only when such groups exist)
    inputs: Callable[[Run], Any]  # what its result depends on: skipped while this is as it was when it finished
    outputs: Callable[[Run], list[Path]]  # what it must leave for the next stages; one missing and it runs again
    body: Callable[[Run, Stage], int]  # runs the commands, records the stage; the worst exit code
    unusable: Callable[[Run], tuple[set[str], list[Path]]] = no_list  # what it could not use, and where it is listed
    note: str = ""  # printed after each command in --dry-run


STAGE_TABLE = (
    Stage(
        "collect",
        "download images (DuckDuckGo, or --urls-file)",
        commands=lambda run: [collect_command(run.args, run.dataset_dir)],
        inputs=collect_inputs,
        outputs=lambda run: [run.dataset_dir / "train"],
        body=run_commands,
        unusable=collect_unusable,
    ),
    Stage(
        "detect",
        "find exact copies (file size + SHA-256) and near copies (perceptual hash)",
        commands=lambda run: detect_commands(run.args, run.dataset_dir),
        inputs=detect_inputs,
        outputs=lambda run: [exact_report(run), near_report(run)],
        body=run_commands,
        unusable=detect_unusable,
    ),
    Stage(
        "dedupe",
        "remove only certain copies: byte-identical within one class and split, train/val leaks (train kept)",
        commands=lambda run: [
            removal_command(exact_report(run), strategy, category)
            for category, strategy in ((LEAK_CATEGORY, "prefer-train"), (COPY_CATEGORY, "safe"))
        ],
        inputs=dedupe_inputs,
        outputs=lambda run: [],
        body=run_dedupe,
        note="   (if such groups exist)",
    ),
    Stage(
        "train",
        "train, score problematic images, calibrate",
        commands=lambda run: [train_command(run.args, run.dataset_dir, run.models_dir)],
        inputs=train_inputs,
        outputs=lambda run: [run.models_dir / "best_model.pth", problematic_report(run)],
        body=run_train,
        unusable=train_unusable,
    ),
    Stage(
        "report",
        "write the HTML report",
        commands=lambda run: [report_command(run.dataset_dir, run.models_dir, run.html_path)],
        inputs=report_inputs,
        outputs=lambda run: [run.html_path],
        body=run_report,
    ),
)
STAGES = tuple(stage.name for stage in STAGE_TABLE)
STAGE_BY_NAME = {stage.name: stage for stage in STAGE_TABLE}


def run_stage(run: Run, stage: Stage, position: str, is_forced: bool) -> None:
    """Run one stage unless it is up to date (and not forced); note its exit code (a skipped one's as it last ran)."""
    header = f"{position} {stage.name}: {stage.help}"
    if not is_forced and is_up_to_date(run, stage):
        print(f"{header}\n  up to date (inputs unchanged since it last ran): skipped; --from {stage.name} reruns it")
        run.codes[stage.name] = run.state["stages"][stage.name].get("exit_code") or cli.EXIT_OK
        return
    print(f"\n{header}", flush=True)
    run.codes[stage.name] = stage.body(run, stage)
    missing = [str(path) for path in stage.outputs(run) if not path.exists()]
    if missing:  # e.g. every URL failed (no train/), or no model: the later stages have nothing to work on
        run.state["stages"][stage.name]["status"] = "incomplete"
        save_state(run)
        raise StageFailed(stage.name, f"it finished without writing {', '.join(missing)} (see above)")


def chosen_stages(args: argparse.Namespace) -> tuple[list[str], set[str]]:
    """(stages to consider in order, stages forced to run whatever their state)."""
    if args.only:
        return [args.only], {args.only}
    stages = list(STAGES)
    if args.no_collect:
        stages.remove("collect")
    if args.from_stage:
        forced = STAGES[STAGES.index(args.from_stage) :]
        return [stage for stage in stages if stage in forced], set(forced)
    return stages, set()


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Collect images, remove certain duplicates, train with the problematic-images analysis and "
        "calibration, and write one HTML report; up-to-date stages are skipped.",
        epilog=f"stages: {', '.join(STAGES)}. {cli.EXIT_CODES_HELP}",
        add_help=add_help,
    )
    where = parser.add_argument_group("folders")
    where.add_argument("--dataset-dir", type=Path, default=Path("dataset"), help="dataset folder (default: dataset)")
    where.add_argument(
        "--models-dir", type=Path, default=Path("models"), help="trainer output folder (default: models)"
    )
    cli.add_report_flag(
        where, f"the HTML report to write (default: <dataset-dir>/{DEFAULT_HTML_NAME})", type=Path, default=None
    )

    stages = parser.add_argument_group("which stages")
    which = stages.add_mutually_exclusive_group()
    which.add_argument(
        "--from",
        dest="from_stage",
        choices=STAGES,
        help="rerun this stage and every later one, even if up to date; earlier ones are not run "
        "(default: every stage, skipping those up to date)",
    )
    which.add_argument("--only", choices=STAGES, help="rerun only this stage, even if up to date (default: off)")
    stages.add_argument(
        "--no-collect",
        action="store_true",
        help="use the images already in --dataset-dir; download nothing (default: off)",
    )
    stages.add_argument(
        "--dry-run",
        action="store_true",
        help="say which stages would run and their commands; run nothing (default: off)",
    )

    collect = parser.add_argument_group("collect (data_collection/download_images.py)")
    collect.add_argument(
        "--urls-file", type=Path, default=None, help="'class,url' lines to download (default: DuckDuckGo search)"
    )
    collect.add_argument(
        "--classes",
        nargs="+",
        default=None,
        metavar="CLASS",
        help="classes (default: every class of the queries or the URLs file)",
    )
    collect.add_argument(
        "--per-class", type=int, default=None, help="images wanted per class (default: 500 searched, every URL listed)"
    )
    collect.add_argument("--queries", type=Path, default=None, help="JSON {class: [query, ...]} (default: built-in)")
    downloader = download_images.get_args_parser()
    for flag, about in DOWNLOAD_FLAGS.items():
        default = downloader.get_default(flag[2:].replace("-", "_"))
        if isinstance(default, bool):
            collect.add_argument(flag, action="store_true", help=f"{about} (default: off)")
        else:
            collect.add_argument(flag, type=type(default), default=None, help=f"{about} (default: {default})")
    collect.add_argument("--val-fraction", type=float, default=None, help="share put in val/ (default: 0.2)")

    detect = parser.add_argument_group("detect (data_collection/detect_duplicates_by_phash.py)")
    detect.add_argument(
        "--phash-threshold",
        type=int,
        default=None,
        help="largest Hamming distance of 64-bit perceptual hashes that makes a candidate near copy, each then checked "
        "on its pixels (default: the script's, 12)",
    )

    train = parser.add_argument_group("train (train_classifier.py; given once, used by every stage that trains)")
    train.add_argument("--arch", default=None, help="resnet18/34/50/101/152 (default: resnet50)")
    train.add_argument("--weights", default=None, help="imagenet, none or a local file (default: imagenet)")
    train.add_argument("--image-size", type=int, default=None, help="model input size in pixels (default: 224)")
    train.add_argument("--epochs", type=int, default=None, help="training epochs (default: 15)")
    train.add_argument("--batch-size", type=int, default=None, help="images per step (default: 32)")
    train.add_argument("--learning-rate", type=float, default=None, help="peak learning rate (default: 0.0001)")
    train.add_argument(
        "--freeze-until",
        default=None,
        help="layer1, layer2, layer3 or none: freeze the stem and stages up to this one (default: layer3; none with "
        "--weights none, since random layers kept frozen never learn)",
    )
    train.add_argument("--seed", type=int, default=None, help="random seed (default: 42)")
    train.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    train.add_argument(
        "--analysis-epochs",
        type=int,
        default=None,
        help=f"epochs scored to find problematic images (default: {DEFAULT_ANALYSIS_EPOCHS}, at most --epochs)",
    )
    train.add_argument(
        "--cross-val-folds", type=int, default=None, metavar="K", help="out-of-fold scores (default: off)"
    )
    train.add_argument(
        "--top-n-problematic", type=int, default=None, help="images per class in the analysis (default: 50)"
    )
    train.add_argument(
        "--patience", type=int, default=None, help="epochs without a better val macro F1 before stopping (default: 5)"
    )
    train.add_argument(
        "--export-onnx",
        action="store_true",
        help=f"also write <models-dir>/{ONNX_MODEL_NAME} for onnxruntime (the trainer's --export-onnx) (default: off)",
    )
    cli.add_output_flags(parser)
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """parser.error (exit 2) before any work for what no stage could use."""
    if args.dataset_dir.exists() and not args.dataset_dir.is_dir():
        parser.error(f"--dataset-dir {args.dataset_dir} is a file, not a folder")
    if args.urls_file is not None and not fileio.is_regular_file(args.urls_file):
        parser.error(f"--urls-file {args.urls_file} is not a readable file")
    if args.urls_file is not None and args.queries is not None:
        parser.error("--queries only applies to the search; --urls-file lists the URLs itself")
    if args.no_collect and args.only == "collect":
        parser.error("--no-collect and --only collect contradict each other")
    reason = None if args.dry_run else fileio.writable_folder_reason(args.dataset_dir)
    if reason:
        parser.error(f"--dataset-dir: {reason}")


def collect_classes(args: argparse.Namespace) -> list[str] | None:
    """The classes the collect stage would download (--classes, else the URLs file's, else the queries'); None when
    the file cannot be read, which the downloader then says in its own sentence."""
    if args.classes:
        return list(dict.fromkeys(args.classes))
    try:
        if args.urls_file is not None:
            lines = args.urls_file.read_text(encoding="utf-8-sig").splitlines()
            entries, _ = download_images.parse_url_lines(lines, str(args.urls_file))
            return list(dict.fromkeys(name for _, name, _ in entries))
        return list(search_queries.load_queries(args.queries))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def one_class_problem(args: argparse.Namespace) -> str | None:
    """One sentence when the collect stage would make a dataset of a single class (no classifier can learn it)."""
    classes = collect_classes(args)
    if classes is None or len(classes) != 1:
        return None
    source = "--classes" if args.classes else f"--urls-file {args.urls_file}" if args.urls_file else "--queries"
    return (
        f"{source} names one class only ({classes[0]}): a classifier needs two or more; add another class "
        "(its URLs or queries, and list it in --classes)"
    )


def existing_one_class_problem(dataset_dir: Path) -> str | None:
    """The trainer's one-class refusal, said before the detect and dedupe stages work on a dataset that cannot train."""
    train = dataset_dir / "train"
    classes = sorted(path.name for path in train.iterdir() if path.is_dir()) if train.is_dir() else []
    if len(classes) != 1:
        return None  # none or several: the stages say what they find
    return f"{cli.printable(train)} has only the class {cli.printable(classes[0])!r}; a classifier needs two or more"


def summary_line(run: Run) -> str:
    """The last line: done, or done with N unusable inputs and where they are listed."""
    partial = [STAGE_BY_NAME[name] for name, code in run.codes.items() if code == cli.EXIT_PARTIAL]
    if not partial:
        return "Pipeline done."
    inputs: set[str] = set()  # URLs and dataset paths: an image two stages skipped counts once
    lists = []
    for stage in partial:
        found, paths = stage.unusable(run)
        inputs |= found
        lists += [cli.printable(path) for path in paths if path.is_file()]
    names = ", ".join(stage.name for stage in partial)
    where = f"see {', '.join(lists)} and the {names} output above" if lists else f"see the {names} output above"
    count = len(inputs)
    return f"Pipeline done, {count or 'some'} input{'' if count == 1 else 's'} unusable ({where})."


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    cli.apply_output_flags(args)
    check_args(parser, args)
    dataset_dir = args.dataset_dir
    html_path = args.report if args.report is not None else dataset_dir / DEFAULT_HTML_NAME
    stages, forced = chosen_stages(args)
    problem = one_class_problem(args) if "collect" in stages else None
    if "collect" not in stages and "train" in stages:  # a dataset that is there already
        problem = existing_one_class_problem(dataset_dir)
    if problem:
        return cli.error(problem)
    run = Run(args, dataset_dir, args.models_dir, html_path, pipeline_state.load_state(dataset_dir, STAGES))

    if args.dry_run:
        for number, name in enumerate(stages, start=1):
            step = STAGE_BY_NAME[name]
            skip = name not in forced and is_up_to_date(run, step)
            print(f"[{number}/{len(stages)}] {name}: {'up to date, would be skipped' if skip else 'would run'}")
            for command in [] if skip else step.commands(run):
                print(f"  $ {command_line(command, Path.cwd())}{step.note}")
        return cli.EXIT_OK

    stage = stages[0]
    try:
        with pipeline_lock(dataset_dir):
            for number, stage in enumerate(stages, start=1):
                run_stage(run, STAGE_BY_NAME[stage], f"[{number}/{len(stages)}]", stage in forced)
    except fileio.ReportError as error:
        return cli.error(str(error))
    except StageFailed as failure:
        message = (
            f"stage {failure.stage} stopped: {failure}; nothing after it ran. Fix that and run the same command again: "
            f"finished stages are skipped, so it starts at {failure.stage}"
        )
        if not failure.is_reported_above:
            return cli.error(message)
        print(message[0].upper() + message[1:], file=sys.stderr)  # one error: line per failure, the script's own
        return cli.EXIT_USAGE
    except KeyboardInterrupt:
        print(
            f"\nInterrupted during stage {stage}: what is finished stays finished. {cli.CARRY_ON_ADVICE}",
            file=sys.stderr,
        )
        return cli.EXIT_INTERRUPTED
    print(f"\n{summary_line(run)}" + (f" Report: {html_path}" if html_path.exists() else ""))
    return max(run.codes.values(), default=cli.EXIT_OK)


if __name__ == "__main__":
    raise SystemExit(main())
