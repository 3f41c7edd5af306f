"""Codebook health: how much of the codebook the tokens actually use.

Collapse shows as few codes carrying most tokens. Three numbers expose it:

- **usage**: fraction of the vocabulary that occurs at least once;
- **perplexity**: ``exp(entropy)`` of the token histogram, the effective number of codes in use
  (K for a perfectly uniform histogram), reported also as a fraction of K;
- **dead codes**: codes whose EMA cluster size in the library's codebook has fallen below the
  dead-code threshold (these are the ones the library is about to replace).
"""

from __future__ import annotations

import torch


def token_histogram(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Counts of each token id, float64 ``[vocab_size]``."""
    return torch.bincount(tokens.reshape(-1).long(), minlength=vocab_size).double()


def histogram_health(counts: torch.Tensor) -> dict[str, float]:
    """Usage, perplexity and perplexity / K of a token histogram."""
    total = counts.sum()
    if total <= 0:
        return {"usage": 0.0, "perplexity": 0.0, "perplexity_ratio": 0.0}
    p = counts / total
    nz = p[p > 0]
    perplexity = float(torch.exp(-(nz * nz.log()).sum()))
    return {"usage": float((counts > 0).double().mean()), "perplexity": perplexity,
            "perplexity_ratio": perplexity / counts.numel()}


def dead_codes(quantizer) -> int:
    """Codes below the library's EMA dead-code threshold, summed over codebooks (0 for FSQ)."""
    threshold = quantizer.cfg.threshold_ema_dead_code
    return int(sum(int((cb.cluster_size < threshold).sum()) for cb in quantizer.codebooks()))


class UsageTracker:
    """Accumulates token counts over many batches (e.g. between two training log lines).

    Parameters
    ----------
    vocab_size : int
    """

    def __init__(self, vocab_size: int):
        self.counts = torch.zeros(vocab_size, dtype=torch.float64)

    def update(self, tokens: torch.Tensor) -> None:
        self.counts += token_histogram(tokens.detach().cpu(), self.counts.numel())

    def report(self, quantizer=None) -> dict[str, float]:
        """Health of everything seen so far (plus EMA dead codes if a quantizer is given)."""
        out = histogram_health(self.counts)
        if quantizer is not None:
            out["dead_codes"] = float(dead_codes(quantizer))
        return out

    def reset(self) -> None:
        self.counts.zero_()
