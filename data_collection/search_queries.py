"""Image-search queries per class for download_images.py, and a loader for a user's own JSON query file.

Each class gets varied queries so the images differ in pose, scale, background and style; "other" covers many
kinds of things, including hard negatives that look like the other classes (kites, drones, other superheroes).

    python data_collection/search_queries.py                          # print the default queries as JSON
    python data_collection/search_queries.py > my_queries.json        # a starting point for your own file
    python data_collection/search_queries.py --queries my_queries.json  # check a file, print what it holds

A query file is a JSON object mapping each class name to a list of query strings, e.g.
{"cat": ["cat photo", "kitten sleeping"], "dog": ["dog photo"]}. It writes nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli.py lives in the project root
import cli  # noqa: E402 - needs the line above
import fileio  # noqa: E402

# A class name becomes a folder name: no path separators, no leading dot, nothing a shell or Windows chokes on (no
# trailing dot or space, which Windows drops), at most 100 characters (a file system takes 255 per name), and \Z, not
# $, so "bird\n" is refused instead of becoming a folder with a newline in its name.
CLASS_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_ .-]{0,98}[A-Za-z0-9_-])?\Z")

QUERIES: dict[str, list[str]] = {
    "bird": [
        "bird photo",
        "bird flying in the sky",
        "bird in flight against blue sky",
        "eagle soaring",
        "seagull flying",
        "hawk in flight",
        "flock of birds flying",
        "small songbird on a branch",
        "parrot",
        "owl",
        "pigeon in the city",
        "hummingbird",
        "duck on a lake",
        "heron standing in water",
        "bird silhouette at sunset",
        "crow on a fence",
    ],
    "plane": [
        "airplane photo",
        "passenger jet in flight",
        "airliner taking off",
        "airplane landing at airport",
        "airplane in the sky from below",
        "fighter jet",
        "small propeller plane",
        "cargo plane",
        "airplane parked at the gate",
        "seaplane",
        "vintage biplane",
        "glider aircraft in flight",
        "airplane contrail in blue sky",
        "military transport aircraft",
        "business jet",
        "airplane silhouette at sunset",
    ],
    "superman": [
        "superman",
        "superman flying",
        "superman comic book art",
        "superman movie still",
        "superman costume cosplay",
        "superman action figure",
        "superman cartoon",
        "man of steel superman",
        "superman logo on chest",
        "superman flying over city",
        "superman illustration",
        "christopher reeve superman",
    ],
    "other": [
        # Hard negatives: things in the sky or shaped like the other classes.
        "kite flying in the sky",
        "drone flying",
        "quadcopter drone",
        "helicopter in flight",
        "hot air balloon",
        "paraglider",
        "rocket launch",
        "blimp airship",
        "butterfly",
        "dragonfly",
        "bat flying",
        "flying squirrel",
        # Other superheroes and costumes, so "superman" means Superman.
        "batman",
        "spiderman",
        "wonder woman",
        "iron man",
        "the flash superhero",
        "captain america",
        "person in a red cape",
        # Everything else a user might point a camera at.
        "blue sky with clouds",
        "sunset sky",
        "city skyline",
        "mountain landscape",
        "beach",
        "forest",
        "dog",
        "cat",
        "horse",
        "fish in an aquarium",
        "car on a road",
        "train",
        "ship at sea",
        "bicycle",
        "people walking on a street",
        "portrait of a person",
        "food on a plate",
        "house",
        "flowers",
        "tree",
        "furniture",
        "laptop on a desk",
        "abstract painting",
    ],
}


def validate_queries(data: object, source: str) -> dict[str, list[str]]:
    """Check a parsed query file and return it as ``{class: [query, ...]}``; raises ValueError naming the problem.

    Queries are stripped, blank ones dropped and repeats within a class removed (first one kept, order kept).
    """
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{source}: expected a JSON object mapping class names to lists of queries")
    queries: dict[str, list[str]] = {}
    for class_name, class_queries in data.items():
        if not isinstance(class_name, str) or not CLASS_NAME_PATTERN.match(class_name):
            raise ValueError(
                f"{source}: class name {cli.short_repr(class_name)} cannot be a folder name "
                "(use letters, digits, spaces, '_', '-', '.'; no '/' and no leading '.')"
            )
        if not isinstance(class_queries, list) or not all(isinstance(query, str) for query in class_queries):
            raise ValueError(f"{source}: class {cli.short_repr(class_name)} must map to a list of query strings")
        cleaned = list(dict.fromkeys(query.strip() for query in class_queries if query.strip()))
        if not cleaned:
            raise ValueError(f"{source}: class {cli.short_repr(class_name)} has no queries")
        queries[class_name] = cleaned
    return queries


def load_queries(path: Path | None = None) -> dict[str, list[str]]:
    """The default queries, or those of the JSON file at ``path`` (which replace the defaults entirely).

    Raises ValueError with one sentence naming the file and the problem when the file is missing or malformed.
    """
    if path is None:
        return {class_name: list(class_queries) for class_name, class_queries in QUERIES.items()}
    try:  # bounded, and deep nesting or a huge number is a sentence too (fileio.ReportError is a ValueError)
        data = fileio.read_json(path, "query file", fileio.MAX_SMALL_JSON_BYTES)
    except fileio.ReportError as error:
        raise ValueError(str(error)) from None
    return validate_queries(data, str(path))


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Print the image-search queries per class (the defaults, or a checked JSON file) as JSON.",
        epilog=cli.EXIT_CODES_HELP,
        add_help=add_help,
    )
    parser.add_argument(
        "--queries",
        type=Path,
        default=None,
        help="JSON file mapping class names to lists of queries, to check and print (default: the built-in queries)",
    )
    cli.add_output_flags(parser)  # the same switches as every script; nothing here is long enough for progress
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cli.apply_output_flags(args)
    try:
        queries = load_queries(args.queries)
    except ValueError as error:
        return cli.error(cli.printable(error))
    json.dump(queries, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return cli.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
