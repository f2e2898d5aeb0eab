"""``sop-data``: list, inspect and export the datasets of the registry."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence

from .export import export_image_folder
from .registry import DATASETS, DEFAULT_DATASET, get_dataset, list_datasets

Command = Callable[[argparse.Namespace], int]
EXPORT_LAYOUT = "DIR/train/<class>/<i>.png and DIR/val/<class>/<i>.png (ImageFolder layout)"


def cmd_list(args: argparse.Namespace) -> int:
    """Print every registered dataset with its summary."""
    width = max(len(n) for n in list_datasets())
    for name in list_datasets():
        marker = " (default)" if name == DEFAULT_DATASET else ""
        print(f"{name:<{width}}  {DATASETS.get(name).summary}{marker}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Load one split and print its size, shape, classes and statistics."""
    start = time.perf_counter()
    ds = get_dataset(args.name, args.path, args.split, args.download, **_options(args))
    c, h, w = ds.images.shape[1:]
    loaded = f"loaded in {time.perf_counter() - start:.2f}s"
    print(f"{ds.name} [{ds.split}]: {len(ds)} images, {c}x{h}x{w}, {ds.num_classes} classes ({loaded})")
    print(f"classes: {', '.join(ds.class_names)}")
    print(f"mean: {ds.mean}  std: {ds.std}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export train and test splits as PNG folders ``DIR/train`` and ``DIR/val``."""
    options = _options(args)
    splits = {s: get_dataset(args.name, args.path, s, args.download, **options) for s in ("train", "test")}
    written = export_image_folder(splits, args.out_dir, args.limit, args.overwrite)
    for folder, count in written.items():
        print(f"wrote {count} images to {args.out_dir}/{folder}")
    return 0


def _options(args: argparse.Namespace) -> dict[str, int]:
    return {} if args.image_size is None else {"image_size": args.image_size}


def _add_source_args(parser: argparse.ArgumentParser, name_optional: bool) -> None:
    if name_optional:
        name_help = f"dataset name (default: {DEFAULT_DATASET}); see `sop-data list`"
        parser.add_argument("name", nargs="?", default=DEFAULT_DATASET, help=name_help)
    else:
        parser.add_argument("name", help="dataset name; see `sop-data list`")
    parser.add_argument(
        "--path", default=None, help="where the files are (data.path); default: the dataset's usual place"
    )
    parser.add_argument(
        "--download", action="store_true", help="let torchvision datasets download (data.download=true)"
    )
    size_help = "image-folder only: resize to this square size"
    parser.add_argument("--image-size", type=int, default=None, help=size_help)


def build_parser() -> argparse.ArgumentParser:
    """The ``sop-data`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="sop-data",
        description="Datasets of sop-plugin: list them, inspect one, or export one as PNG image folders.",
        epilog="Example: sop-data export fashion-mnist /tmp/fmnist --limit 1000",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, tuple[str, Command]] = {
        "list": ("list the registered datasets", cmd_list),
        "info": ("load one split and print its size, classes and mean/std", cmd_info),
        "export": (f"write {EXPORT_LAYOUT}", cmd_export),
    }
    for name, (help_text, func) in commands.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(func=func)
        if name == "info":
            _add_source_args(command, name_optional=True)
            command.add_argument("--split", default="train", help="train or test (default: train)")
        if name == "export":
            _add_source_args(command, name_optional=False)
            command.add_argument("out_dir", metavar="DIR", help="output folder")
            command.add_argument(
                "--limit", type=int, default=None, help="write at most N images per split (the first N)"
            )
            overwrite_help = "write into non-empty output folders"
            command.add_argument("--overwrite", action="store_true", help=overwrite_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sop-data``; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileExistsError) as error:  # incl. DatasetNotFoundError / DatasetCorruptError
        print(f"sop-data: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
