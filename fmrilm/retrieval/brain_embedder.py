"""Brain embedder: a MindEye-style contrastive head from brain features into the MiniLM text space.

Input is one fixed-length vector per scan, e.g. the mean of its brain-token embeddings or the
mean-pooled LM hidden states over its brain tokens (float [N, D]). The head standardises the
features with training statistics, runs a residual MLP (MindEye's backbone, shrunk to CPU size)
and projects to 384-d unit vectors, trained with a symmetric InfoNCE loss against the MiniLM
embeddings of the scans' captions. Repeated presentations of one stimulus share a caption, so
rows whose captions are (nearly) identical count as positives for each other, not as negatives.

Saved as a directory (written atomically)::

    DIR/model.safetensors   weights and the feature mean/std buffers
    DIR/config.json         input dimension, BrainEmbedderConfig, training summary

Examples
--------
>>> model, history = train_brain_embedder(train_features, embed_texts(train_captions), BrainEmbedderConfig())
>>> model.embed(test_features)            # float32 [N, 384], unit norm
>>> model.save("runs/demo/retrieval/embedder"); BrainEmbedder.load("runs/demo/retrieval/embedder")
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fmrilm.config import from_dict
from fmrilm.errors import InputError, check_finite
from fmrilm.io import atomic_dir, read_json, write_json
from fmrilm.textembed import EMBED_DIM

# Text embeddings with cosine above this are the same caption (MiniLM of identical strings).
SAME_TEXT = 0.999
FORMAT_VERSION = 1


@dataclasses.dataclass
class BrainEmbedderConfig:
    """Architecture and training of the brain embedder.

    Parameters
    ----------
    hidden : int
        Width of the residual MLP.
    n_blocks : int
        Residual blocks (Linear → LayerNorm → GELU → Dropout, added back).
    dropout : float
    out_dim : int
        Embedding size; the MiniLM space is 384-d.
    epochs, batch_size : int
    lr, weight_decay : float
        AdamW settings; a cosine schedule decays the learning rate to zero.
    temperature : float
        Initial softmax temperature (learned afterwards, as in CLIP).
    seed : int
    """

    hidden: int = 512
    n_blocks: int = 2
    dropout: float = 0.15
    out_dim: int = EMBED_DIM
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    temperature: float = 0.07
    seed: int = 0


class BrainEmbedder(nn.Module):
    """Residual MLP from brain features [B, in_dim] to unit-norm embeddings [B, out_dim]."""

    def __init__(self, in_dim: int, cfg: BrainEmbedderConfig):
        super().__init__()
        self.in_dim, self.cfg = int(in_dim), cfg
        # Standardisation statistics live in the state dict so a loaded model needs no training data.
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))
        self.stem = nn.Linear(in_dim, cfg.hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                          nn.Linear(cfg.hidden, cfg.hidden))
            for _ in range(cfg.n_blocks))
        self.head = nn.Sequential(nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, cfg.out_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.stem((features - self.feature_mean) / self.feature_std)
        for block in self.blocks:
            h = h + block(h)
        return F.normalize(self.head(h), dim=-1)

    @torch.no_grad()
    def embed(self, features, batch_size: int = 1024) -> np.ndarray:
        """Embed a float array [N, in_dim] → float32 [N, out_dim], unit norm (eval mode)."""
        x = check_features(features, "features", self.in_dim)
        was_training = self.training
        self.eval()
        out = [self(torch.from_numpy(x[i:i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
        self.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, self.cfg.out_dim), np.float32)

    def save(self, out_dir, overwrite: bool = False, summary: dict | None = None) -> Path:
        """Write model.safetensors + config.json atomically; `summary` (e.g. training loss) goes in the JSON."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
            save_file(tensors, str(tmp / "model.safetensors"))
            write_json(tmp / "config.json", {"format_version": FORMAT_VERSION, "in_dim": self.in_dim,
                                             "config": dataclasses.asdict(self.cfg), "summary": summary or {}})
        return out_dir

    @classmethod
    def load(cls, path) -> BrainEmbedder:
        """Load a saved embedder (eval mode); InputError if the weights disagree with the config."""
        from safetensors.torch import load_file

        path = Path(path)
        info = read_json(path / "config.json")
        if info.get("format_version") != FORMAT_VERSION:
            raise InputError(path / "config.json", "format_version",
                             f"{info.get('format_version')} is not {FORMAT_VERSION}")
        model = cls(info["in_dim"], from_dict(BrainEmbedderConfig, info["config"], str(path / "config.json")))
        weights_path = path / "model.safetensors"
        if not weights_path.is_file():
            raise InputError(weights_path, "file", "missing")
        state = load_file(str(weights_path))
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if expected != found:
            wrong = sorted(set(expected.items()) ^ set(found.items()))[:4]
            raise InputError(weights_path, "tensors", f"do not match config.json (first differences: {wrong})")
        model.load_state_dict(state)
        return model.eval()


def check_features(features, field: str, dim: int | None = None) -> np.ndarray:
    """C-contiguous float32 [N, D] brain features, finite, with the expected width."""
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if x.ndim != 2:
        raise InputError(field, "shape", f"{x.shape}; expected [N, D]")
    if dim is not None and x.shape[1] != dim:
        raise InputError(field, "dim", f"{x.shape[1]} features, the embedder takes {dim}")
    check_finite(x, field)
    return x


def symmetric_info_nce(brain: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP loss between unit-norm brain and text rows, treating identical captions as shared positives."""
    logits = brain @ text.t() * logit_scale.exp().clamp(max=100.0)
    positive = (text @ text.t() > SAME_TEXT).float()
    targets = positive / positive.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets.t()))


def train_brain_embedder(features, text_embeddings, cfg: BrainEmbedderConfig | None = None,
                         progress: bool = True) -> tuple[BrainEmbedder, list[float]]:
    """Fit a :class:`BrainEmbedder` on paired rows (scan features, caption embedding).

    Parameters
    ----------
    features : float [N, D]
        One vector per scan (trial).
    text_embeddings : float [N, out_dim]
        MiniLM embedding of each scan's caption (``fmrilm.textembed.embed_texts``).
    cfg : BrainEmbedderConfig
    progress : bool
        Show a tqdm bar over epochs.

    Returns
    -------
    model : BrainEmbedder (eval mode)
    history : list of float
        Mean training loss per epoch.
    """
    cfg = cfg or BrainEmbedderConfig()
    x = check_features(features, "features")
    y = check_features(text_embeddings, "text_embeddings", cfg.out_dim)
    if len(x) != len(y):
        raise InputError("features", "rows", f"{len(x)} feature rows but {len(y)} text embeddings")
    if len(x) < 2:
        raise InputError("features", "rows", f"{len(x)} rows; contrastive training needs at least 2")
    torch.manual_seed(cfg.seed)
    model = BrainEmbedder(x.shape[1], cfg)
    model.feature_mean.copy_(torch.from_numpy(x.mean(0)))
    # Constant features would divide by zero; give them unit scale (they carry no signal anyway).
    std = x.std(0)
    model.feature_std.copy_(torch.from_numpy(np.where(std > 1e-6, std, 1.0).astype(np.float32)))
    xt, yt = torch.from_numpy(x), F.normalize(torch.from_numpy(y), dim=-1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    batch = min(cfg.batch_size, len(x))
    steps_per_epoch = max(1, len(x) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    model.train()
    for _ in tqdm(range(cfg.epochs), desc="brain embedder", disable=not progress):
        order = torch.randperm(len(x), generator=gen)
        losses = []
        # Drop the ragged last batch: a 1-row batch has no negatives and an undefined loss.
        for step in range(steps_per_epoch):
            rows = order[step * batch:(step + 1) * batch]
            loss = symmetric_info_nce(model(xt[rows]), yt[rows], model.logit_scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        history.append(float(np.mean(losses)))
    return model.eval(), history
