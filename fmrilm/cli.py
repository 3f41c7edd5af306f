"""The `fmrilm` command line: one sub-command per capability, each with its own --help.

Sub-commands live beside the code they drive (``fmrilm/<package>/commands.py``, each exposing
``register(subparsers)``); this file only routes. Heavy imports happen inside the handlers so
``fmrilm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from fmrilm.errors import InputError

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmrilm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # No hub access at run time: everything loads from disk or from installed packages.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
