"""`fmrilm stimulate`: graded in-silico stimulation of localized vertices, with controls.

    fmrilm stimulate --config stimulation_demo [--set target=places other_category=faces] [--force]
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("stimulate", help="in-silico microstimulation: dose-response of generated captions",
                       description="Add α·SD to the localizer-selected vertices of a category in held-out "
                                   "scans, re-tokenize, caption, and compare with random vertices and "
                                   "another category's patch. Writes stimulation.json and two PNGs.")
    p.add_argument("--config", default="stimulation_demo", help="shipped config name or YAML path")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.set_defaults(handler=_stimulate)


def _stimulate(args) -> int:
    from fmrilm.config import load_config
    from fmrilm.stimulation.experiment import StimulationConfig, run_stimulation

    cfg = load_config(StimulationConfig, args.config, args.set)
    summary = run_stimulation(cfg, overwrite=args.force)
    for condition, result in summary["conditions"].items():
        rates = " ".join(f"{d['concept_rate']:.2f}" for d in result["doses"])
        print(f"{condition:15s} rate by α {summary['alphas']}: {rates}  spearman={result['spearman_rate']}")
    print(f"specificity vs random: {summary['specificity_vs_random']:.2f}  targets: {summary['targets']}")
    print(f"output: {cfg.out}")
    return 0
