"""`fmrilm stimulate`: graded in-silico stimulation of localized vertices, with controls.

    fmrilm stimulate --config stimulation_demo [--set target=places other_category=faces] [--force]
    fmrilm stimulate --run runs/demo --config stimulation_demo --force   # a run's artifacts, via its stages.json
"""

from __future__ import annotations

from fmrilm.config import add_run_args, config_from_args


def register(sub) -> None:
    p = sub.add_parser("stimulate", help="in-silico microstimulation: dose-response of captions and the ideal observer",
                       description="Add α·SD to the localizer-selected vertices of a category in held-out "
                                   "scans, re-tokenize and caption them, and decode them with the ideal "
                                   "observer; compare with random patches of the same size and shape and "
                                   "another category's patch, with bootstrap intervals. Writes "
                                   "stimulation.json and two PNGs.")
    add_run_args(p, "stimulation_demo", "stimulation", _stimulate)


def _stimulate(args) -> int:
    from fmrilm.artifacts import run_paths
    from fmrilm.stimulation.experiment import StimulationConfig, run_stimulation

    cfg = config_from_args(StimulationConfig, args, run_paths(args.run, "stimulation"))
    summary = run_stimulation(cfg, overwrite=args.force)
    for reader in ("lm", "ideal_observer"):
        result = summary[reader]
        for condition, curve in result["conditions"].items():
            rates = " ".join(f"{d['concept_rate']:.2f}" for d in curve["doses"])
            print(f"{reader:14s} {condition:15s} rate by α {summary['alphas']}: {rates}  "
                  f"rise {curve['rise']:+.2f} {_ci(curve['rise_ci'])}  spearman={curve['spearman']}")
        spec, diff = result["specificity"], result["rise_difference_vs_controls"]
        print(f"{reader:14s} specificity {spec['value']} ({spec['status']}); "
              f"rise − control rise {diff['value']:+.2f} {_ci(diff['ci'])}")
    print(f"targets: {summary['targets']}  cost: {summary['cost']}")
    print(f"output: {cfg.out}")
    return 0


def _ci(bounds) -> str:
    return "[" + ", ".join("—" if b is None else f"{b:+.2f}" for b in bounds) + "]"
