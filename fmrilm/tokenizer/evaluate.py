"""Held-out evaluation of a tokenizer: reconstruction R² (overall and per parcel) and codebook health."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from fmrilm.brain.rest_covariance import fc_edges
from fmrilm.tokenizer.data import rest_windows
from fmrilm.tokenizer.health import UsageTracker


class R2Accumulator:
    """Streaming R² of predictions against targets over the real (masked) slots of ``[B, P, D]``.

    R² = 1 − SSE / SST with SST around each slot's mean over all scans, accumulated in float64 so
    any number of batches can be added. Per-parcel R² pools the slots of a parcel.
    """

    def __init__(self, mask: torch.Tensor):
        self.mask = mask.double()
        shape = mask.shape
        self.n = 0
        self.sse = torch.zeros(shape, dtype=torch.float64)
        self.total = torch.zeros(shape, dtype=torch.float64)
        self.total_sq = torch.zeros(shape, dtype=torch.float64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        prediction, target = prediction.double(), target.double()
        self.n += target.shape[0]
        self.sse += ((prediction - target) ** 2).sum(0)
        self.total += target.sum(0)
        self.total_sq += (target ** 2).sum(0)

    def result(self) -> tuple[float, np.ndarray]:
        """Overall R² and per-parcel R² ``[P]``."""
        sst = (self.total_sq - self.total ** 2 / max(self.n, 1)) * self.mask
        sse = self.sse * self.mask
        per_parcel = 1 - sse.sum(1) / sst.sum(1).clamp(min=1e-12)
        return float(1 - sse.sum() / sst.sum().clamp(min=1e-12)), per_parcel.numpy()


@torch.no_grad()
def evaluate_tokenizer(tokenizer, scans, batch_size: int = 256, progress: bool = False) -> dict:
    """Reconstruction R² and codebook health of `tokenizer` on a :class:`~fmrilm.tokenizer.data.ScanSet`.

    Returns
    -------
    dict
        ``r2``, ``r2_per_parcel`` (list of P floats), ``usage``, ``perplexity``, ``perplexity_ratio``,
        ``n_scans``.
    """
    tokenizer.eval()
    r2 = R2Accumulator(tokenizer.mask)
    usage = UsageTracker(tokenizer.vocab_size)
    n_batches = -(-len(scans) // batch_size)
    for batch in tqdm(scans.batches(batch_size), total=n_batches, disable=not progress, desc="evaluate"):
        tokens = tokenizer.encode(batch["x"], scans.source)
        usage.update(tokens)
        r2.update(tokenizer.decode(tokens), batch["x"])
    overall, per_parcel = r2.result()
    return {"r2": overall, "r2_per_parcel": per_parcel.tolist(), **usage.report(), "n_scans": len(scans)}


@torch.no_grad()
def rest_run_fidelity(tokenizer, series: np.ndarray, source="timeseries", batch_size: int = 256) -> dict:
    """How much of each whole run a rest tokenizer keeps: its windows encoded, decoded and stitched back.

    Parameters
    ----------
    tokenizer : BrainTokenizer
        A rest tokenizer (``input: rest``, window W).
    series : ndarray [S, T, P]
        Runs of held-out subjects; each is z-scored and cut into T // W windows as in training.

    Returns
    -------
    dict
        ``r2`` (pooled over the runs' samples), ``fc_r``: the mean over runs of the correlation between
        the Fisher-z FC edges of the decoded run and of the input run, with ``fc_r_per_run``; and
        ``tokens_per_run`` = P · T // W.
    """
    windows = rest_windows(series, tokenizer.width, source)  # [S, n, P, W]
    n_subjects, n_windows, n_parcels, width = windows.shape
    tokenizer.eval()
    flat = torch.from_numpy(windows.reshape(-1, n_parcels, width))
    decoded = np.concatenate([tokenizer.decode(tokenizer.encode(flat[i:i + batch_size], source)).numpy()
                              for i in range(0, len(flat), batch_size)])

    def to_runs(w):  # windows back to runs: [S, n, P, W] → [S, n·W, P]
        return (w.reshape(n_subjects, n_windows, n_parcels, width).transpose(0, 1, 3, 2)
                .reshape(n_subjects, n_windows * width, n_parcels))

    original, restored = to_runs(windows), to_runs(decoded)
    sse = float(((restored - original) ** 2).sum())
    sst = float(((original - original.mean(1, keepdims=True)) ** 2).sum())
    fc_r = [float(np.corrcoef(fc_edges(a), fc_edges(b))[0, 1]) for a, b in zip(original, restored)]
    return {"r2": 1 - sse / sst, "fc_r": float(np.mean(fc_r)), "fc_r_per_run": fc_r,
            "tokens_per_run": n_parcels * n_windows}
