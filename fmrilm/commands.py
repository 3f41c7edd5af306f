"""`fmrilm pipeline`: the main job (registered by fmrilm/cli.py)."""

from __future__ import annotations

import json

from fmrilm.config import add_config_args


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="run every stage on one run directory (the main job)",
                       description="Run import or world → splits → tokenizer → corpus → LM stages → index → "
                                   "evaluation → stimulation on one run directory, skipping finished stages.")
    # --force names stages here (a list), so it is not the helper's flag
    add_config_args(p, "demo", "overrides, e.g. run_dir=runs/x", config_help="pipeline YAML path or shipped name")
    p.add_argument("--force", nargs="*", default=[], metavar="STAGE",
                   help="stages to redo (and every stage after them); 'all' redoes everything")
    p.set_defaults(handler=_pipeline)


def _pipeline(args) -> int:
    from fmrilm.pipeline import load_pipeline_config, run_pipeline

    report = run_pipeline(load_pipeline_config(args.config, args.set), force=args.force)
    print(json.dumps(report, indent=2))
    return 0
