"""The problematic-images report: its schema, written by the trainer and read by the reviewer, defined once.

Imported by problematic_analysis.py (the trainer's side, which builds and writes it), review_problematic_images.py
(which reads and validates it) and html_report.py (which shows it); not a script. Standard library only (no torch, no
numpy), so the reviewer's summary mode and the HTML report stay fast. Also the words every reader uses for a report's
fields (``is_out_of_fold``, ``report_evidence_note``, ``label_probability``) and the names of the decisions file a
review produces (made by the reviewer or the HTML page, applied by ``review_problematic_images.py``).

Schema version 2, a JSON object (version 1, written before label issues and hard examples were told apart and
before every image's probabilities were kept, is still read):
    schema_version     2
    report_type        "problematic_images"
    created            UTC time, ISO 8601
    dataset_dir        the dataset folder the trainer read (paths below are relative to it, POSIX form)
    arguments          the trainer's arguments (plain JSON values)
    classes            class names, in the model's order
    analysis_epochs    how many epochs contributed a loss per image
    method             whose probabilities the label-issue rule read: "linear-out-of-fold" (the default: a logistic
                       regression fitted on the other folds, over features that do not depend on the labels: pixel
                       gradients and colours, the pretrained backbone's embeddings), "out-of-fold"
                       (--cross-val-folds K: a network that never trained on the image; older trainers wrote
                       "cross_validation") or "in-sample" (version 1 only: the network itself)
    evidence_note      one sentence saying how much weight the label-issue flags carry
    check_agreement    the share of images whose most probable class, in the probabilities the rule read, is the
                       given one (0 to 1; optional: older reports lack it); under WEAK_CHECK_AGREEMENT the readers say
                       the check is weak (``weak_check_note``)
    label_issue_rule   "prune_by_noise_rate" or "confident_learning" (cleanlab's rules; version 2)
    cross_val_folds    K or null
    num_images         images analysed
    class_thresholds   {class: confident-learning threshold or null}
    confident_joint    [[count]]: images of given label (row) likely of class (column) (version 2)
    summary_by_class   {class: {count, reported, label_issues, hard_examples, highest/lowest/average_mean_loss}}
    problematic_images {class: [entry, ...]}: every likely label issue and the hardest other examples, entry =
                       {path, class, mean_loss, losses[], rank, is_label_issue, is_hard_example, suggested_class,
                       margin, probabilities{}, given_label_probability, label_issue_reason, ...}; ``mean_loss`` is
                       the network's mean loss over the analysis epochs (``rank`` orders by it within the class),
                       ``given_label_probability`` the probability of the labelled class the rule read
                       (``last_probability`` in drafts of version 1); ``suggested_class`` is null unless that class
                       is more probable than the given one
    all_images         [{path, class, probabilities[]}] every analysed image, probabilities in ``classes`` order
                       (version 2)
    errors             [{path, reason}] images that could not be read
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cli import short_repr
from fileio import ReportError, is_finite_number, is_safe_relative, read_json, write_json

SCHEMA_VERSION = 2  # bump when the layout above changes; the reviewer refuses versions it does not know
READABLE_VERSIONS = (1, 2)  # version 1 lacks label_issue_rule, confident_joint, all_images and is_hard_example
REPORT_TYPE = "problematic_images"  # other JSON files are refused by name
DEFAULT_NAME = "problematic_images_report.json"  # inside the dataset folder, where the reviewer looks by default
REQUIRED_ENTRY_KEYS = ("path", "class", "mean_loss", "losses")  # what every reviewer mode needs from an entry
MAX_LOSSES = 1_000  # one per analysis epoch; a crafted million held the trajectory figure for hours
IN_SAMPLE_NOTE = (
    "in-sample flags are weak evidence: the model scored images it was trained on, so it may have memorised a wrong "
    "label or flag a hard but correct one; re-run train_classifier.py --detect-problematic for out-of-fold scores"
)
OUT_OF_FOLD_NOTE = "out-of-fold flags: each image was scored by a model that never trained on it"
LINEAR_NOTE = (
    "out-of-fold flags: each image's probabilities come from a logistic regression fitted on the other folds' "
    "images (features that do not depend on the labels); a flag means the evidence prefers another class"
)
LINEAR_OUT_OF_FOLD = "linear-out-of-fold"  # the default analysis: a logistic regression's out-of-fold probabilities
OUT_OF_FOLD_METHODS = ("out-of-fold", "cross_validation", LINEAR_OUT_OF_FOLD)  # "cross_validation": older trainers
KNOWN_METHODS = ("in-sample", "in_sample", *OUT_OF_FOLD_METHODS)  # "in_sample": older trainers; others are refused
MAX_CREATED_CHARACTERS = 64  # an ISO 8601 time is 25; readers print it in headers and titles

# Under this out-of-fold agreement with the given labels the label check is weak: with 5% of labels planted wrong,
# every check measured (real photos agreeing 0.49 to 0.80, generated images 0.64 to 0.65) found most planted mislabels
# (recall 0.67 to 0.98), but only 11% to 27% of what it flagged was mislabelled (BENCHMARKS.md, "Label issues").
WEAK_CHECK_AGREEMENT = 0.9
DECISIONS_TYPE = "problematic_review_decisions"  # what review_problematic_images.py --apply-decisions reads
DECISIONS_SCHEMA_VERSION = 1  # bump when the decisions layout changes; other versions are refused
DECISIONS_FILE_NAME = "problematic_review_decisions.json"  # beside the report (a rerun resumes it); the page's download


def evidence_note(method: str) -> str:
    """The sentence a report, the reviewer's grid and summary print about how far to trust its flags."""
    if method == LINEAR_OUT_OF_FOLD:
        return LINEAR_NOTE
    return OUT_OF_FOLD_NOTE if method in OUT_OF_FOLD_METHODS else IN_SAMPLE_NOTE


def is_out_of_fold(report: dict[str, Any]) -> bool:
    """True when each image was scored by a model that never trained on it (--cross-val-folds)."""
    return report.get("method") in OUT_OF_FOLD_METHODS


def weak_check_note(agreement: Any, flagged: int, images: int) -> str | None:
    """The caution shown beside the flags when the check is weak (``agreement`` under WEAK_CHECK_AGREEMENT), with
    its numbers; None when it is not, when nothing was flagged, or when ``agreement`` is unknown (a report from before
    it was kept)."""
    if not _is_number(agreement) or not 0 <= agreement < WEAK_CHECK_AGREEMENT or flagged <= 0:
        return None
    share = f" ({flagged / images:.0%} of {images:,})" if images > 0 else ""
    return (
        f"the check is weak here: its classifier agrees with only {agreement:.0%} of the given labels, and checks that "
        "weak flagged 3 to 8 correctly labelled images for each mislabelled one (measured with 5% of labels planted "
        f"wrong); expect most of the {flagged:,} flagged images{share} to be labelled right, look at them in the order "
        "shown (most likely first), and use pretrained features (--weights imagenet or FILE) for a sharper check"
    )


def report_weak_check_note(report: dict[str, Any]) -> str | None:
    """``weak_check_note`` of a loaded report, as a sentence of its own (capitalised); None for a sharp check."""

    def count(value: Any) -> int:  # a count the trainer wrote; anything else (a crafted 1e308, text) counts 0
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    summary = report.get("summary_by_class")
    flagged = sum(
        count(stats.get("label_issues"))
        for stats in (summary.values() if isinstance(summary, dict) else ())
        if isinstance(stats, dict)
    )
    weak = weak_check_note(report.get("check_agreement"), flagged, count(report.get("num_images")))
    return f"{weak[0].upper()}{weak[1:]}" if weak else None


def issue_word(report: dict[str, Any]) -> str:
    """How the readers name a flag: "likely label issue", or "possible label issue" when the check is weak."""
    return "possible" if report_weak_check_note(report) else "likely"


def report_evidence_note(report: dict[str, Any]) -> str:
    """``evidence_note`` of a loaded report: how far its label-issue flags can be trusted, with the weak-check
    caution when its classifier agreed with too few of the given labels."""
    note, weak = evidence_note(str(report.get("method"))), report_weak_check_note(report)
    return f"{note}. {weak}" if weak else note


def label_probability(entry: dict[str, Any]) -> Any:
    """An entry's probability of its labelled class: at the last analysis epoch, or out of fold (None when absent)."""
    return entry.get("given_label_probability", entry.get("last_probability"))


def issue_rank_key(entry: dict[str, Any]) -> tuple[float, float]:
    """The order label issues are shown in, the most likely mislabelled first: the lowest probability of the given
    class (cleanlab's default ranking, self-confidence: as many or more mislabels among the first flags than the
    largest margin first in every run measured, BENCHMARKS.md), then the largest margin over it."""
    given, margin = label_probability(entry), entry.get("margin")
    return (float(given) if _is_number(given) else 1.0, -float(margin) if _is_number(margin) else 0.0)


def suggested_class(entry: dict[str, Any]) -> str | None:
    """The class a reader may offer instead of the given one: only for a likely label issue, and only one more
    probable than the given class (a version-1 entry named one for every image, even when its own class was the
    most probable), so no card says "hard example" and "suggested X" at once."""
    suggested, probabilities = entry.get("suggested_class"), entry.get("probabilities")
    if suggested is None or not is_label_issue(entry):
        return None
    if isinstance(probabilities, dict):
        given, other = probabilities.get(entry.get("class")), probabilities.get(suggested)
        if _is_number(given) and _is_number(other) and other <= given:
            return None
    return suggested


def is_label_issue(entry: dict[str, Any]) -> bool:
    """True when the label-issue rule fired for the entry (the evidence prefers another class)."""
    return bool(entry.get("is_label_issue"))


_is_number = is_finite_number  # what every reader can format: no NaN, no integer of hundreds of digits


def validate_report(data: Any) -> dict[str, Any]:
    """``data`` when it is a version-1 report; raises ReportError naming the first field that is wrong."""
    if not isinstance(data, dict):
        raise ReportError("it is not a JSON object")
    if data.get("report_type") != REPORT_TYPE:
        raise ReportError(f"its report_type is {short_repr(data.get('report_type'))}, not {REPORT_TYPE!r}")
    if data.get("schema_version") not in READABLE_VERSIONS:
        raise ReportError(
            f"it has schema_version {short_repr(data.get('schema_version'))} but this script reads versions "
            f"{' and '.join(map(str, READABLE_VERSIONS))}; re-run train_classifier.py --detect-problematic to write "
            "a current one"
        )
    classes = data.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(name, str) for name in classes):
        raise ReportError("its 'classes' is not a non-empty list of class names")
    per_class = data.get("problematic_images")
    if not isinstance(per_class, dict):
        raise ReportError("it has no 'problematic_images' object")
    for class_name, entries in per_class.items():
        if class_name not in classes:
            raise ReportError(f"'problematic_images' names class {short_repr(class_name)}, which is not in 'classes'")
        if not isinstance(entries, list):
            raise ReportError(f"'problematic_images' of class {short_repr(class_name)} is not a list")
        for index, entry in enumerate(entries):
            where = f"entry {index} of class {short_repr(class_name)}"
            missing = [key for key in REQUIRED_ENTRY_KEYS if not isinstance(entry, dict) or key not in entry]
            if missing:
                raise ReportError(f"{where} lacks {', '.join(missing)}")
            if not isinstance(entry["path"], str) or not is_safe_relative(entry["path"]):
                raise ReportError(
                    f"{where} has 'path' {short_repr(entry['path'])}, not a relative path inside the dataset"
                )
            if not isinstance(entry["losses"], list) or len(entry["losses"]) > MAX_LOSSES:
                raise ReportError(f"{where} has 'losses' that is not a list of at most {MAX_LOSSES:,} values")
            if not all(_is_number(value) for value in [entry["mean_loss"], *entry["losses"]]):
                raise ReportError(f"{where} has a 'mean_loss' or 'losses' value that is not a number")
            if entry["class"] not in classes:
                raise ReportError(f"{where} has 'class' {short_repr(entry['class'])}, which is not in 'classes'")
            suggested = entry.get("suggested_class")
            if suggested is not None and suggested not in classes:
                raise ReportError(f"{where} has 'suggested_class' {short_repr(suggested)}, which is not in 'classes'")
            rank = entry.get("rank")
            if rank is not None and not (isinstance(rank, int) and not isinstance(rank, bool)):
                raise ReportError(f"{where} has a 'rank' that is not a whole number")
            if entry.get("margin") is not None and not _is_number(entry["margin"]):
                raise ReportError(f"{where} has a 'margin' that is not a number")
            probabilities = entry.get("probabilities")
            if probabilities is not None and not (
                isinstance(probabilities, dict) and all(_is_number(value) for value in probabilities.values())
            ):
                raise ReportError(f"{where} has 'probabilities' that is not an object of numbers")
    if data["schema_version"] >= 2:
        all_images = data.get("all_images")
        if not isinstance(all_images, list) or not all(
            isinstance(item, dict)
            and isinstance(item.get("path"), str)
            and is_safe_relative(item["path"])
            and item.get("class") in classes
            and isinstance(item.get("probabilities"), list)
            and all(_is_number(value) for value in item["probabilities"])
            for item in all_images
        ):
            raise ReportError("its 'all_images' is not a list of {path inside the dataset, class, probabilities}")
    dataset_dir = data.get("dataset_dir")
    if dataset_dir is not None and not isinstance(dataset_dir, str):
        raise ReportError("its 'dataset_dir' is not text")
    if data.get("method") is not None and data["method"] not in KNOWN_METHODS:
        raise ReportError(f"its 'method' {short_repr(data['method'])} is not one of {', '.join(KNOWN_METHODS)}")
    created = data.get("created")
    if created is not None and not (isinstance(created, str) and len(created) <= MAX_CREATED_CHARACTERS):
        raise ReportError(f"its 'created' {short_repr(created)} is not a date and time")
    for key in ("analysis_epochs", "num_images", "cross_val_folds"):
        value = data.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise ReportError(f"its {key!r} {short_repr(value)} is not a whole number")
    summary = data.get("summary_by_class")
    if summary is not None and not (isinstance(summary, dict) and all(isinstance(v, dict) for v in summary.values())):
        raise ReportError("its 'summary_by_class' is not an object of one object per class")
    agreement = data.get("check_agreement")
    if agreement is not None and not (_is_number(agreement) and 0 <= agreement <= 1):
        raise ReportError("its 'check_agreement' is not a number from 0 to 1")
    return data


def is_report_file(path: str | Path) -> bool:
    """Whether ``path`` holds a problematic-images report of any version (one the trainer may replace); a file of
    the user's that is not one is never overwritten."""
    try:
        data = read_json(path, "report")
    except ReportError:
        return False
    return isinstance(data, dict) and data.get("report_type") == REPORT_TYPE


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and validate; ReportError with one sentence (naming the file) otherwise."""
    path = Path(path)
    if not path.exists():
        raise ReportError(
            f"the report {path} does not exist; run train_classifier.py --detect-problematic first or pass --report"
        )
    data = read_json(path, "report")
    try:
        return validate_report(data)
    except ReportError as error:
        raise ReportError(f"the report {path} cannot be used: {error}") from None


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    """Validate (so the trainer can never write what the reviewer refuses), then write atomically."""
    validate_report(report)
    write_json(path, report)


if __name__ == "__main__":
    import cli  # only short_repr is imported by name above

    cli.refuse_running_as_script(
        __file__, "run train_classifier.py --detect-problematic or review_problematic_images.py"
    )
