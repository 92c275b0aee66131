"""The command-line plumbing every script shares: common flags, config loading, one-line errors."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from utils.errors import ToolkitError

ConfigT = TypeVar("ConfigT")


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--config``, ``--set``, ``--device``, ``--seed`` and ``--strict``."""
    group = parser.add_argument_group("configuration (all scripts)")
    group.add_argument("--config", metavar="FILE", default=None,
                       help="JSON file or Python file (defining a dict CONFIG) of overrides, by section; "
                            "a config.json saved beside earlier outputs works too")
    group.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[], dest="set_items",
                       help="override one config value, e.g. --set facenet.margin=0.3 "
                            "(repeatable; applied after --config)")
    group.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: runtime.device, 'auto')")
    group.add_argument("--seed", type=int, default=None, help="random seed (default: runtime.seed)")
    group.add_argument("--strict", action="store_true",
                       help="stop at the first bad input file with a one-line error "
                            "instead of skipping and counting it")
    return parser


def add_detector_arg(parser: argparse.ArgumentParser | Any, purpose: str = "") -> None:
    """Add ``--detector DIR``: one folder of pnet.pt, rnet.pt and onet.pt in place of paths.pnet/rnet/onet."""
    parser.add_argument("--detector", metavar="DIR", default=None,
                        help="folder holding pnet.pt, rnet.pt and onet.pt (e.g. the original MTCNN weights), or a "
                             f"model-zoo entry's name{purpose}; sets paths.pnet/rnet/onet "
                             "(default: the trained cascade)")


def detector_overrides(folder: str | Path | None) -> list[str]:
    """The ``--set`` items that ``--detector folder`` stands for (none when no folder is given): each of
    paths.pnet/rnet/onet names the folder (or entry), which holds that net's file."""
    if not folder:
        return []
    return [f"paths.{net}={folder}" for net in ("pnet", "rnet", "onet")]


def config_from_args(args: argparse.Namespace, load: Callable[[str | None, list[str]], ConfigT]) -> ConfigT:
    """Build the validated config with ``load`` (``config.load_config``) from ``--config``/``--set`` and the
    shortcut flags; the loader is passed in so that this plumbing does not depend on the config module."""
    items = list(args.set_items)
    if args.device is not None:
        items.append(f"runtime.device={args.device}")
    if args.seed is not None:
        items.append(f"runtime.seed={args.seed}")
    if args.strict:
        items.append("runtime.strict=true")
    return load(args.config, items)


def run(main: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser,
        argv: list[str] | None = None) -> int:
    """Parse ``argv``, run ``main``; a ToolkitError becomes one line on stderr and exit code 2."""
    args = parser.parse_args(argv)
    try:
        result = main(args)
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
