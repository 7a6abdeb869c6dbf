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

A stage whose inputs (the dataset's file list with sizes and times, its own arguments, the reports it reads) are
unchanged since it last finished is skipped, so a re-run after Ctrl-C or after adding images carries on where it
stopped; an interrupted training resumes from its last checkpoint. Label conflicts and near copies are never removed:
they go to the report for a person.

Writes what the stages write (dataset/train|val/<class>/, dataset/duplicate_report_{filesize,phash}.json, the
removed copies and their undo logs in dataset/.trash/, models/, dataset/problematic_images_report.json,
dataset/report.html and dataset/report_files/) and dataset/pipeline_state.json, the record of what each stage last
did (dataset/.pipeline.lock while it runs: a second run on the same dataset refuses).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
for _folder in (ROOT, ROOT / "data_collection"):  # the scripts run in-process, imported by file name
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import cli  # noqa: E402 - needs the lines above when run from another folder
import duplicate_report  # noqa: E402
import fileio  # noqa: E402
from duplicate_report import CONFLICT_CATEGORIES, COPY_CATEGORY, LEAK_CATEGORY  # noqa: E402
from problematic_report import DEFAULT_NAME as PROBLEMATIC_REPORT_NAME  # noqa: E402
from trash import TRASH_FOLDER  # noqa: E402

logger = logging.getLogger(__name__)

STAGES = ("collect", "detect", "dedupe", "train", "report")
STAGE_HELP = {
    "collect": "download images (DuckDuckGo, or --urls-file)",
    "detect": "find exact copies (file size + SHA-256) and near copies (perceptual hash)",
    "dedupe": "remove only certain copies: byte-identical within one class and split, train/val leaks (train kept)",
    "train": "train, score problematic images, calibrate",
    "report": "write the HTML report",
}
STATE_NAME = "pipeline_state.json"  # in the dataset folder: it describes that dataset's stages
STATE_SCHEMA_VERSION = 1
STATE_TYPE = "birdplane_pipeline_state"
LOCK_NAME = ".pipeline.lock"  # in the dataset folder: one pipeline run per dataset at a time (hidden: never scanned)
SPLITS = ("train", "val")  # the folders download_images.py fills and train_classifier.py reads
EXACT_METHOD, NEAR_METHOD = "filesize", "phash"
DEFAULT_ANALYSIS_EPOCHS = 3  # the trainer's default; lowered to --epochs when fewer epochs are asked for
DEFAULT_HTML_NAME = "report.html"
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

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage


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
    worst_code: int = cli.EXIT_OK
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
    """``--flag value`` for every value that is not None (lists become several values)."""
    argv: list[str] = []
    for flag, value in pairs:
        if value is None:
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
        ]
    )
    return Command("train_classifier", tuple(argv))


def report_command(dataset_dir: Path, models_dir: Path, html_path: Path) -> Command:
    argv = ("--dataset-dir", str(dataset_dir), "--models-dir", str(models_dir), "--report", str(html_path))
    return Command("html_report", argv)


def digest(value: Any) -> str:
    """SHA-256 of a JSON-able value (sorted keys): equal inputs, equal digest, whatever the order they were built in."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Disk: fingerprints, the state file, running a script in-process
# ---------------------------------------------------------------------------------------------------------------------


def file_stamp(path: Path) -> list[Any]:
    """[name, size, mtime_ns] of a file (following links), or [name, None, None] when it is absent or unreadable."""
    try:
        info = path.stat()
    except OSError:
        return [str(path), None, None]
    return [str(path), info.st_size, info.st_mtime_ns]


def dataset_listing(dataset_dir: Path) -> list[list[Any]]:
    """Sorted [relative path, size, mtime_ns] of every file under the split folders; hidden files and folders skipped.

    Never opens a file, so a FIFO cannot hang it; what it names changes when images are added, removed or rewritten.
    """
    listing = []
    for split in SPLITS:
        top = dataset_dir / split
        for folder, subfolders, names in os.walk(top):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            for name in names:
                if not name.startswith("."):
                    path = Path(folder) / name
                    listing.append([path.relative_to(dataset_dir).as_posix(), *file_stamp(path)[1:]])
    return sorted(listing)


def files_below(folder: Path, pattern: str) -> list[Path]:
    try:
        return sorted(folder.glob(pattern))
    except OSError:
        return []


def load_state(path: Path) -> dict[str, Any]:
    """The state file, or an empty state (every stage runs) when it is missing or unusable; never raises."""
    empty = {"schema_version": STATE_SCHEMA_VERSION, "state_type": STATE_TYPE, "stages": {}}
    if not path.exists():
        return empty
    try:
        data = fileio.read_json(path, "pipeline state", fileio.MAX_SMALL_JSON_BYTES)
    except fileio.ReportError as error:
        logger.warning("%s; every stage will run", error)
        return empty
    if (
        not isinstance(data, dict)
        or data.get("state_type") != STATE_TYPE
        or data.get("schema_version") != STATE_SCHEMA_VERSION
        or not isinstance(data.get("stages"), dict)
    ):
        logger.warning("%s is not a pipeline state file of this version; every stage will run", path)
        return empty
    data["stages"] = {name: value for name, value in data["stages"].items() if isinstance(value, dict)}
    return data


def save_state(run: Run) -> None:
    fileio.write_json(run.dataset_dir / STATE_NAME, run.state)


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


def accepts_flag(module: str, flag: str) -> bool:
    """Whether a script's parser knows ``flag`` (the output switches reach every script as the others adopt them)."""
    try:
        parser = importlib.import_module(module).get_args_parser()
    except Exception:  # noqa: BLE001 - a script that cannot build its parser fails visibly when it runs
        return False
    return flag in getattr(parser, "_option_string_actions", {})


def with_output_flags(command: Command, args: argparse.Namespace) -> Command:
    """The command plus --no-progress / --verbose when given to the pipeline and known to the script.

    They change what is shown, not what is made, so they are left out of the stage fingerprints.
    """
    wanted = [flag for flag, is_on in (("--verbose", args.verbose), ("--no-progress", args.no_progress)) if is_on]
    extra = tuple(flag for flag in wanted if accepts_flag(command.module, flag))
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
        raise StageFailed(stage, f"{command.script} exited with {code} (its reason is above)")
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


def content_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return fileio.sha256_file(path)
    except OSError:
        return "unreadable"


def stage_inputs(run: Run, stage: str) -> Any:
    """What a stage's result depends on; the stage is up to date while this is what it was when it last finished."""
    args, dataset = run.args, run.dataset_dir
    if stage == "collect":
        return {
            "argv": collect_command(args, dataset).argv,
            "urls_file": content_digest(args.urls_file),
            "queries": content_digest(args.queries),
        }
    if stage == "detect":
        return {
            "argv": [command.argv for command in detect_commands(args, dataset)],
            "dataset": dataset_listing(dataset),
        }
    if stage == "dedupe":
        return {"dataset": dataset_listing(dataset), "report": file_stamp(exact_report(run))}
    if stage == "train":
        return {"argv": train_command(args, dataset, run.models_dir).argv, "dataset": dataset_listing(dataset)}
    reports = files_below(dataset, "duplicate_report_*.json") + [problematic_report(run)]
    models = [run.models_dir / "training_metadata.json", *files_below(run.models_dir, "error_analysis/*/*.json")]
    return {
        "argv": report_command(dataset, run.models_dir, run.html_path).argv,
        "dataset": dataset_listing(dataset),
        "inputs": [file_stamp(path) for path in reports + models],
    }


def stage_outputs(run: Run, stage: str) -> list[Path]:
    """Files a finished stage leaves; if one is gone the stage runs again."""
    return {
        "collect": [run.dataset_dir / "train"],
        "detect": [exact_report(run), near_report(run)],
        "dedupe": [],
        "train": [run.models_dir / "best_model.pth", problematic_report(run)],
        "report": [run.html_path],
    }[stage]


def is_up_to_date(run: Run, stage: str) -> bool:
    record = run.state["stages"].get(stage, {})
    if record.get("status") != "done" or record.get("fingerprint") != digest(stage_inputs(run, stage)):
        return False
    return all(path.exists() for path in stage_outputs(run, stage))


def record_stage(run: Run, stage: str, status: str, commands: Sequence[Command], code: int | None = None) -> None:
    """Write the stage's fingerprint (of its inputs as they are now) into the state file."""
    run.state["stages"][stage] = {
        "status": status,
        "fingerprint": digest(stage_inputs(run, stage)),
        "updated": fileio.utc_now(),
        "exit_code": code,
        "commands": [command_line(command, Path.cwd()) for command in commands],
    }
    save_state(run)


def run_collect(run: Run) -> int:
    command = collect_command(run.args, run.dataset_dir)
    code = run_command(run, "collect", command)
    record_stage(run, "collect", "done", [command], code)
    return code


def run_detect(run: Run) -> int:
    commands = detect_commands(run.args, run.dataset_dir)
    code = max(run_command(run, "detect", command) for command in commands)
    record_stage(run, "detect", "done", commands, code)
    return code


def read_groups(path: Path) -> dict[str, int] | None:
    """Groups per category of a duplicate report; None when it is missing or unusable (named in a warning)."""
    if not path.exists():
        return None
    try:
        return duplicate_report.group_counts(duplicate_report.load_report(path, "duplicate report"))
    except fileio.ReportError as error:
        logger.warning("%s", error)
        return None


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


def run_dedupe(run: Run) -> int:
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
        code = max(code, run_detect(run))
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


def run_train(run: Run) -> int:
    """Train with the analysis; a run interrupted with these same inputs resumes from its last checkpoint."""
    command = train_command(run.args, run.dataset_dir, run.models_dir)
    previous = run.state["stages"].get("train", {})
    fingerprint = digest(stage_inputs(run, "train"))
    resumable = (run.models_dir / "last_checkpoint.pth").is_file()
    if previous.get("status") == "started" and previous.get("fingerprint") == fingerprint and resumable:
        print("The last training with these settings was interrupted: resuming it.")
        command = Command(command.module, (*command.argv, "--resume"))
    record_stage(run, "train", "started", [command])
    code = run_command(run, "train", command)
    record_stage(run, "train", "done", [command], code)
    return code


def run_report(run: Run) -> int:
    command = report_command(run.dataset_dir, run.models_dir, run.html_path)
    code = run_command(run, "report", command)
    record_stage(run, "report", "done", [command], code)
    print(f"Open {run.html_path} in a browser (no server needed).")
    return code


STAGE_BODIES: dict[str, Callable[[Run], int]] = {
    "collect": run_collect,
    "detect": run_detect,
    "dedupe": run_dedupe,
    "train": run_train,
    "report": run_report,
}


def planned_commands(run: Run, stage: str) -> list[str]:
    """The commands a stage would run, for --dry-run (dedupe's depend on what detect finds)."""
    cwd = Path.cwd()
    if stage == "collect":
        return [command_line(collect_command(run.args, run.dataset_dir), cwd)]
    if stage == "detect":
        return [command_line(command, cwd) for command in detect_commands(run.args, run.dataset_dir)]
    if stage == "dedupe":
        return [
            command_line(removal_command(exact_report(run), strategy, category), cwd) + "   (if such groups exist)"
            for category, strategy in ((LEAK_CATEGORY, "prefer-train"), (COPY_CATEGORY, "safe"))
        ]
    if stage == "train":
        return [command_line(train_command(run.args, run.dataset_dir, run.models_dir), cwd)]
    return [command_line(report_command(run.dataset_dir, run.models_dir, run.html_path), cwd)]


def run_stage(run: Run, stage: str, position: str, is_forced: bool) -> None:
    """Run one stage unless it is up to date (and not forced); keep the worst exit code."""
    header = f"{position} {stage}: {STAGE_HELP[stage]}"
    if not is_forced and is_up_to_date(run, stage):
        print(f"{header}\n  up to date (inputs unchanged since it last ran): skipped; --from {stage} reruns it")
        return
    print(f"\n{header}", flush=True)
    run.worst_code = max(run.worst_code, STAGE_BODIES[stage](run))
    missing = [str(path) for path in stage_outputs(run, stage) if not path.exists()]
    if missing:  # e.g. every URL failed (no train/), or no model: the later stages have nothing to work on
        run.state["stages"][stage]["status"] = "incomplete"
        save_state(run)
        raise StageFailed(stage, f"it finished without writing {', '.join(missing)} (see above)")


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
    collect.add_argument("--val-fraction", type=float, default=None, help="share put in val/ (default: 0.2)")

    detect = parser.add_argument_group("detect (data_collection/detect_duplicates_by_phash.py)")
    detect.add_argument(
        "--phash-threshold",
        type=int,
        default=None,
        help="largest Hamming distance of 64-bit perceptual hashes counted as a near copy (default: the script's, 5)",
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    cli.apply_output_flags(args)
    check_args(parser, args)
    dataset_dir = args.dataset_dir
    html_path = args.report if args.report is not None else dataset_dir / DEFAULT_HTML_NAME
    run = Run(args, dataset_dir, args.models_dir, html_path, load_state(dataset_dir / STATE_NAME))
    stages, forced = chosen_stages(args)

    if args.dry_run:
        for number, stage in enumerate(stages, start=1):
            skip = stage not in forced and is_up_to_date(run, stage)
            print(f"[{number}/{len(stages)}] {stage}: {'up to date, would be skipped' if skip else 'would run'}")
            if not skip:
                for line in planned_commands(run, stage):
                    print(f"  $ {line}")
        return cli.EXIT_OK

    stage = stages[0]
    try:
        with pipeline_lock(dataset_dir):
            for number, stage in enumerate(stages, start=1):
                run_stage(run, stage, f"[{number}/{len(stages)}]", stage in forced)
    except fileio.ReportError as error:
        return cli.error(str(error))
    except StageFailed as failure:
        return cli.error(
            f"stage {failure.stage} stopped: {failure}; nothing after it ran. Fix that and run the same command again: "
            f"finished stages are skipped, so it starts at {failure.stage}"
        )
    except KeyboardInterrupt:
        print(
            f"\nInterrupted during stage {stage}: what is finished stays finished. {cli.CARRY_ON_ADVICE}",
            file=sys.stderr,
        )
        return cli.EXIT_INTERRUPTED
    summary = "done" if run.worst_code == cli.EXIT_OK else "done, but some inputs were unusable (see above)"
    print(f"\nPipeline {summary}." + (f" Report: {html_path}" if html_path.exists() else ""))
    return run.worst_code


if __name__ == "__main__":
    raise SystemExit(main())
