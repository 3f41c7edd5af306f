"""The `fmrilm` command line: one sub-command per capability, each with its own --help.

Sub-commands live beside the code they drive (``fmrilm/<package>/commands.py``, each exposing
``register(subparsers)``); this file only routes. Heavy imports happen inside the handlers so
``fmrilm --help`` stays fast.

Errors (:func:`fmrilm.errors.run_reported`): bad input prints ``error: <file>: field '<x>': <problem>``
and exits 2; anything else prints one line ``error: <Type>: <message>`` and exits 1. ``--debug`` (or
``FMRILM_DEBUG=1``) shows the traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from fmrilm.errors import run_reported

# Module that registers each top-level sub-command. Added as capabilities land.
COMMAND_MODULES = (
    "fmrilm.commands",
    "fmrilm.brain.commands",
    "fmrilm.tokenizer.commands",
    "fmrilm.corpus.commands",
    "fmrilm.stages.commands",
    "fmrilm.retrieval.commands",
    "fmrilm.evaluation.commands",
    "fmrilm.stimulation.commands",
)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (refused while parsing, before any work starts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmrilm", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error (as FMRILM_DEBUG=1 does)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # No hub access at run time: everything loads from disk or from installed packages.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    args = build_parser().parse_args(argv)
    return run_reported(lambda: args.handler(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
