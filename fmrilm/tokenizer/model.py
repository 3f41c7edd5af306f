"""BrainTokenizer: region-wise encoders → shared VQ codebook → token ids, and back.

Token layout
------------
``encode`` returns ``LongTensor [B, P·L]`` in **parcel-major** order: all L levels of parcel 0,
then parcel 1, ... (``tokens.view(B, P, L)`` recovers the grid). A token id indexes a row of
:meth:`BrainTokenizer.code_embeddings`: for ``vq``, ``fsq`` and ``rvq`` with a shared codebook
ids lie in ``[0, K)``; for ``rvq`` with one codebook per level, level l's code k is ``l·K + k``.

Artifacts
---------
``save_pretrained(dir)`` writes ``model.safetensors`` (weights, codebook, parcel layout buffers),
``code_embeddings.safetensors`` (the ``[vocab, code_dim]`` table of :meth:`BrainTokenizer.code_embeddings`)
and ``config.json`` (architecture, atlas identity, input layout, weights fingerprint);
``from_pretrained(dir)`` rebuilds the module, verifies the fingerprint and, if given an atlas,
refuses a tokenizer built for another one. Nothing is unpickled.

Rest companion (fMRI-LM's two kinds of brain tokens in one LM vocabulary)
--------------------------------------------------------------------------
A task (vertex-pattern) tokenizer can carry a rest (temporal-patch) tokenizer on the same atlas,
:meth:`BrainTokenizer.attach_rest`. Its ids follow the task ids: rest code k is token
``vocab_size + k``, so one LM vocabulary holds both (:attr:`BrainTokenizer.total_vocab_size`) and
``code_embeddings`` stacks both tables. The companion is a submodule: its weights are in the same
``model.safetensors``, so the one fingerprint covers both.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fmrilm.config import from_dict
from fmrilm.errors import InputError
from fmrilm.io import atomic_path, read_json, sha256_file, write_json
from fmrilm.tokenizer.config import TokenizerConfig
from fmrilm.tokenizer.contrastive import ContrastiveHead
from fmrilm.tokenizer.encoders import ParcelDecoder, ParcelEncoder
from fmrilm.tokenizer.health import dead_codes, histogram_health, token_histogram
from fmrilm.tokenizer.quantizer import Quantizer

WEIGHTS, CONFIG = "model.safetensors", "config.json"
CODE_EMBEDDINGS = "code_embeddings.safetensors"  # read by fmrilm.stages.lm_common.load_tokenizer_exports
ATLAS_KEYS = ("name", "n_parcels", "n_vertices", "fingerprint")


def check_atlas(expected: dict, got: dict, source) -> None:
    """Raise InputError naming the first atlas-identity field where `got` differs from `expected`.

    The dict form of :meth:`fmrilm.brain.atlas.Atlas.check_same`, for artifacts that store only
    ``Atlas.describe()`` (a tokenizer checkpoint, a dataset manifest).
    """
    for key in ATLAS_KEYS:
        if got.get(key) != expected.get(key):
            raise InputError(source, f"atlas.{key}", f"{got.get(key)!r} does not match the tokenizer's atlas "
                             f"{expected.get('name')} ({key}={expected.get(key)!r})")


class BrainTokenizer(nn.Module):
    """Region-wise VQ tokenizer.

    Parameters
    ----------
    cfg : TokenizerConfig
    atlas_info : dict
        ``Atlas.describe()`` of the atlas the parcels come from.
    mask : bool array, shape (P, D)
        Which input slots are real (task: vertices of each parcel; rest: all W time points).
    vertex_index : int array, shape (P, D), optional
        Task input: the vertex feeding each slot, so raw ``[N, V]`` betas can be grouped without
        rebuilding the atlas.
    sync_codebook : bool
        Keep the codebook identical across ranks (set by the training stage under a launcher).
    """

    def __init__(self, cfg: TokenizerConfig, atlas_info: dict, mask, vertex_index=None,
                 sync_codebook: bool = False):
        super().__init__()
        cfg.validate()
        self.cfg, self.atlas_info = cfg, dict(atlas_info)
        mask = torch.as_tensor(np.asarray(mask, bool))
        if mask.shape[0] != atlas_info["n_parcels"]:
            raise InputError("tokenizer", "mask", f"{mask.shape[0]} parcels, atlas {atlas_info['name']} has "
                             f"{atlas_info['n_parcels']}")
        self.register_buffer("mask", mask.float())
        if vertex_index is not None:
            self.register_buffer("vertex_index", torch.as_tensor(np.asarray(vertex_index, np.int64)))
        else:
            self.vertex_index = None
        self.encoder = ParcelEncoder(self.mask, cfg.hidden_dim, cfg.code_dim)
        self.quantizer = Quantizer(cfg.quantizer, cfg.code_dim, sync_codebook)
        self.decoder = ParcelDecoder(self.mask, cfg.hidden_dim, cfg.code_dim)
        self.contrast = (ContrastiveHead(cfg.contrastive, mask.shape[0], cfg.code_dim, cfg.text_dim)
                         if cfg.contrastive != "none" else None)
        self.rest: BrainTokenizer | None = None
        self.fingerprint: str | None = None
        # What the tokenizer was trained on (splits record, train stimuli and subjects): saved in
        # config.json so later stages can check it against their own splits file.
        self.provenance: dict = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_atlas(cls, cfg: TokenizerConfig, atlas, sync_codebook: bool = False) -> BrainTokenizer:
        """A fresh tokenizer for `atlas`: task input groups its vertices, rest input takes W-TR windows."""
        if cfg.input == "task":
            # Grouping the vertex numbers themselves yields each slot's vertex (0 in padding).
            index, mask = atlas.group(np.arange(atlas.n_vertices, dtype=np.int64))
            return cls(cfg, atlas.describe(), mask, index, sync_codebook)
        return cls(cfg, atlas.describe(), np.ones((atlas.n_parcels, cfg.window), bool), None, sync_codebook)

    @property
    def n_parcels(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    @property
    def vocab_size(self) -> int:
        """Ids of this tokenizer's own codes, [0, vocab_size) (without the rest companion)."""
        return self.cfg.vocab_size

    @property
    def total_vocab_size(self) -> int:
        """Brain token ids of the LM vocabulary: own codes, then the rest companion's."""
        return self.vocab_size + (self.rest.vocab_size if self.rest is not None else 0)

    def attach_rest(self, rest: BrainTokenizer, source="rest_tokenizer") -> None:
        """Carry `rest` (a temporal-patch tokenizer on the same atlas) as the rest companion."""
        self.check_rest(rest, source)
        self.rest = rest

    def check_rest(self, rest: BrainTokenizer, source="rest_tokenizer") -> None:
        """InputError unless `rest` can be this tokenizer's rest companion (:meth:`attach_rest`)."""
        if self.cfg.input != "task" or rest.cfg.input != "rest" or rest.rest is not None:
            raise InputError(source, "tokenizer.input", f"a {rest.cfg.input!r} tokenizer cannot be the rest "
                             f"companion of a {self.cfg.input!r} one (expected a rest tokenizer beside a task one)")
        check_atlas(self.atlas_info, rest.atlas_info, source)
        if rest.tokens_per_scan != self.tokens_per_scan:
            raise InputError(source, "tokenizer.quantizer.levels",
                             f"{rest.cfg.levels} levels ({rest.tokens_per_scan} tokens per patch); the task "
                             f"tokenizer has {self.cfg.levels} ({self.tokens_per_scan} per scan): they share "
                             "the LM's parcel-position slots, so they need the same levels")
        if rest.cfg.code_dim != self.cfg.code_dim:
            raise InputError(source, "tokenizer.code_dim", f"{rest.cfg.code_dim}, the task tokenizer's is "
                             f"{self.cfg.code_dim}: one code-embedding table needs one width")

    @property
    def tokens_per_scan(self) -> int:
        return self.n_parcels * self.cfg.levels

    # ------------------------------------------------------------------ input checks
    def check_input(self, x: torch.Tensor, source="batch", mask=None) -> None:
        """Refuse an empty batch, a different parcel layout, or non-finite values (InputError)."""
        want = (self.n_parcels, self.width)
        if x.ndim != 3 or tuple(x.shape[1:]) != want:
            raise InputError(source, "shape", f"{tuple(x.shape)} does not match the tokenizer's layout "
                             f"[B, {want[0]} parcels, {want[1]}] (atlas {self.atlas_info['name']})")
        if x.shape[0] == 0:
            raise InputError(source, "batch", "empty batch (0 scans)")
        if mask is not None and not torch.equal(torch.as_tensor(mask).bool(), self.mask.bool()):
            raise InputError(source, "mask", "parcel layout differs from the tokenizer's atlas "
                             f"{self.atlas_info['name']} (different vertices per parcel)")
        bad = ~torch.isfinite(x)
        if bad.any():
            raise InputError(source, "values", f"{int(bad.sum())} non-finite values (NaN/inf)")

    def group_vertices(self, betas: np.ndarray, source="betas") -> torch.Tensor:
        """Task betas ``[N, V]`` → parcel groups ``[N, P, D]`` (zeros in padding)."""
        if self.vertex_index is None:
            raise InputError(source, "input", "this tokenizer reads rest windows, not vertex maps")
        betas = np.asarray(betas, np.float32)
        if betas.ndim != 2 or betas.shape[1] != self.atlas_info["n_vertices"]:
            raise InputError(source, "shape", f"{betas.shape}: expected [N, {self.atlas_info['n_vertices']}] "
                             f"vertices of atlas {self.atlas_info['name']}")
        # NumPy fancy indexing copies, so read-only memmapped betas never back a tensor.
        return torch.from_numpy(betas[:, self.vertex_index.numpy()]) * self.mask

    # ------------------------------------------------------------------ training
    def forward(self, x: torch.Tensor, text: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training step losses: masked reconstruction MSE + commitment + weighted contrastive.

        Returns a dict of scalar tensors: ``loss`` (to minimise), ``recon``, ``commit``,
        ``contrast`` and the batch's codebook ``usage`` / ``perplexity_ratio`` / ``dead_codes``.
        """
        self.check_input(x)
        out = self.quantizer(self.encoder(x, self.mask))
        recon = self.decoder(out.quantized, self.mask)
        err = (recon.float() - x) * self.mask
        recon_loss = err.pow(2).sum() / (self.mask.sum() * x.shape[0])
        loss = recon_loss + out.commit_loss
        contrast = x.new_zeros(())
        if self.contrast is not None and text is not None and self.cfg.contrastive_weight > 0:
            contrast = self.contrast(out.quantized, text)
            loss = loss + self.cfg.contrastive_weight * contrast
        health = histogram_health(token_histogram(self.to_tokens(out.indices), self.vocab_size))
        logs = {"usage": health["usage"], "perplexity_ratio": health["perplexity_ratio"],
                "dead_codes": float(dead_codes(self.quantizer))}
        return {"loss": loss, "recon": recon_loss.detach(), "commit": out.commit_loss.detach(),
                "contrast": contrast.detach(), **{k: torch.tensor(v) for k, v in logs.items()}}

    # ------------------------------------------------------------------ tokens
    def _level_offsets(self, device) -> torch.Tensor | int:
        """Token id of code 0 at each level: l·K with one codebook per level, else 0."""
        q = self.cfg.quantizer
        if q.kind == "rvq" and not q.shared_codebook:
            return torch.arange(q.levels, device=device) * q.codebook_size
        return 0

    def to_tokens(self, indices: torch.Tensor) -> torch.Tensor:
        """Per-level code indices ``[B, P, L]`` → token ids ``[B, P·L]`` (parcel-major)."""
        return (indices + self._level_offsets(indices.device)).reshape(indices.shape[0], -1)

    def to_indices(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_tokens`: ``[B, P·L]`` → ``[B, P, L]`` code indices in ``[0, K)``."""
        tokens = torch.as_tensor(tokens).long()
        grid = tokens.view(tokens.shape[0], self.n_parcels, self.cfg.levels)
        return grid - self._level_offsets(tokens.device)

    def _embed(self, x: torch.Tensor, source) -> torch.Tensor:
        self.check_input(x, source)
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            return self.encoder(x.float(), self.mask)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, source="batch") -> torch.Tensor:
        """Scans ``[B, P, D]`` → token ids ``[B, P·L]`` with the matmul + argmin fast path."""
        return self.encode_with_latents(x, source)[0]

    @torch.no_grad()
    def encode_with_latents(self, x: torch.Tensor, source="batch") -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[B, P·L]`` and the encoder's pre-quantisation outputs ``[B, P, code_dim]``: what an
        LM with ``brain_input: continuous`` reads in place of the codes (fMRI-LM's released code)."""
        latents = self._embed(x, source)
        return self.to_tokens(self.quantizer.nearest(latents)), latents

    @torch.no_grad()
    def encode_reference(self, x: torch.Tensor, source="batch") -> torch.Tensor:
        """As :meth:`encode` but through the library's forward (eval mode; slow, for checks)."""
        training = self.training
        self.eval()
        try:
            return self.to_tokens(self.quantizer(self._embed(x, source)).indices)
        finally:
            self.train(training)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, source="tokens") -> torch.Tensor:
        """Token ids ``[B, P·L]`` → reconstructed scans ``[B, P, D]`` (zeros in padding)."""
        tokens = torch.as_tensor(tokens).long()
        if tokens.ndim != 2 or tokens.shape[1] != self.tokens_per_scan:
            raise InputError(source, "shape", f"{tuple(tokens.shape)}: expected [B, {self.tokens_per_scan}]")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise InputError(source, "values", f"token ids outside [0, {self.vocab_size})")
        with torch.autocast("cpu", enabled=False):
            return self.decoder(self.quantizer.vectors(self.to_indices(tokens)), self.mask)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, source="batch") -> torch.Tensor:
        """``decode(encode(x))``."""
        return self.decode(self.encode(x, source))

    def code_embeddings(self) -> torch.Tensor:
        """``[total_vocab_size, code_dim]`` float: row i is token id i's vector (to initialise LM
        embeddings); the rest companion's codes follow this tokenizer's."""
        own = self.quantizer.code_embeddings()
        return own if self.rest is None else torch.cat([own, self.rest.code_embeddings()])

    def _companion(self) -> BrainTokenizer:
        if self.rest is None:
            raise InputError("tokenizer", "rest", "this tokenizer carries no rest companion")
        return self.rest

    @torch.no_grad()
    def encode_rest(self, x: torch.Tensor, source="batch") -> tuple[torch.Tensor, torch.Tensor]:
        """Rest patches ``[B, P, W]`` through the companion → LM-vocabulary ids ``[B, P·L]`` and latents."""
        tokens, latents = self._companion().encode_with_latents(x, source)
        return tokens + self.vocab_size, latents

    @torch.no_grad()
    def decode_rest(self, tokens, source="tokens") -> torch.Tensor:
        """LM-vocabulary rest ids ``[B, P·L]`` (from :meth:`encode_rest`) → patches ``[B, P, W]``."""
        return self._companion().decode(torch.as_tensor(tokens).long() - self.vocab_size, source)

    @torch.no_grad()
    def expected_rest_patches(self, probabilities, source="probabilities") -> torch.Tensor:
        """Rest-code probabilities ``[B, P, K_rest]`` (e.g. an LM's brain head at each parcel's token of a
        patch) → the expected patches ``[B, P, W]``: each parcel's decoded codes averaged with their
        probabilities, the forecast of least squared error under them. The decoder is per parcel, so each
        code is decoded once for every parcel. Needs one code per parcel (``levels: 1``)."""
        rest = self._companion()
        probabilities = torch.as_tensor(probabilities, dtype=torch.float32)
        if rest.cfg.levels != 1:
            raise InputError("tokenizer", "levels", f"{rest.cfg.levels}: expected patches need one code per parcel")
        shape = (rest.n_parcels, rest.vocab_size)
        if probabilities.ndim != 3 or tuple(probabilities.shape[1:]) != shape:
            raise InputError(source, "shape", f"{tuple(probabilities.shape)}: expected [B, {shape[0]}, {shape[1]}]")
        every_code = torch.arange(rest.vocab_size)[:, None].expand(-1, rest.n_parcels)
        decoded = rest.decode(every_code)  # [K, P, W]
        return torch.einsum("bpk,kpw->bpw", probabilities, decoded)

    def lm_exports(self) -> dict[str, torch.Tensor]:
        """What the LM stages read (``code_embeddings.safetensors``), so they never import this package.

        ``code_embeddings`` ``[vocab, code_dim]``; with a contrastive head also ``text_readout``
        ``[P·L, code_dim, 384]``, the per-parcel read-out repeated for each level's token slot (the
        quantized vector of a parcel is the sum of its levels' code vectors, so the read-out is exact).
        """
        out = {"code_embeddings": self.code_embeddings().detach().cpu().contiguous()}
        if self.contrast is not None:
            pool = self.contrast.pool.detach().cpu().float()
            out["text_readout"] = pool.repeat_interleave(self.cfg.levels, dim=0).contiguous()
        return out

    def scan_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-norm text-space embeddings ``[B, 384]`` of tokenized scans (needs a contrastive head)."""
        if self.contrast is None:
            raise InputError("tokenizer", "contrastive", "trained without a contrastive head")
        with torch.no_grad():
            return self.contrast.embed(self.quantizer.vectors(self.to_indices(tokens)))

    # ------------------------------------------------------------------ artifacts
    def describe(self) -> dict:
        """Identity stored in every tokens dataset (``manifest["tokenizer"]``)."""
        q = self.cfg.quantizer
        out = {"name": q.kind, "codebook_size": q.codebook_size, "levels": q.levels,
               "vocab_size": self.total_vocab_size, "input": self.cfg.input, "width": self.width,
               "code_dim": self.cfg.code_dim, "fingerprint": self.fingerprint, "atlas": self.atlas_info,
               "splits": self.provenance.get("splits")}
        if self.rest is not None:
            # rest ids are [offset, offset + vocab_size) of the same LM vocabulary
            out["rest"] = {"offset": self.vocab_size, "vocab_size": self.rest.vocab_size, "width": self.rest.width,
                           "codebook_size": self.rest.cfg.quantizer.codebook_size, "splits":
                           self.rest.provenance.get("splits")}
        return out

    def save_pretrained(self, out_dir) -> Path:
        """Write ``model.safetensors``, ``code_embeddings.safetensors`` and ``config.json`` into `out_dir`.

        Each file is written atomically; ``config.json`` comes last, so a directory holding it is
        complete. ``code_embeddings.safetensors`` (tensor ``"code_embeddings"`` = :meth:`code_embeddings`)
        lets the LM stages initialise brain-token embeddings without importing this package.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / WEIGHTS) as tmp:
            # Contiguous copies: under ZeRO the parameters are views into one flat buffer, and
            # ResidualVQ(shared_codebook) lists one codebook under every level's name.
            tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
            save_file(tensors, str(tmp))
            self.fingerprint = sha256_file(tmp)[:16]
        with atomic_path(out_dir / CODE_EMBEDDINGS) as tmp:
            save_file(self.lm_exports(), str(tmp))
        write_json(out_dir / CONFIG, {"format": "fmrilm-brain-tokenizer", "version": 1,
                                      "tokenizer": dataclasses.asdict(self.cfg), "atlas": self.atlas_info,
                                      "width": self.width, "task_layout": self.vertex_index is not None,
                                      "fingerprint": self.fingerprint, "provenance": self.provenance,
                                      "rest": None if self.rest is None else {
                                          "tokenizer": dataclasses.asdict(self.rest.cfg), "width": self.rest.width,
                                          "provenance": self.rest.provenance}})
        return out_dir

    @classmethod
    def from_pretrained(cls, path, atlas=None) -> BrainTokenizer:
        """Load a saved tokenizer; with `atlas` (an ``Atlas`` or its ``describe()``), refuse another atlas."""
        path = Path(path)
        meta = read_json(path / CONFIG)
        if meta.get("format") != "fmrilm-brain-tokenizer":
            raise InputError(path / CONFIG, "format", f"{meta.get('format')!r} is not a brain tokenizer")
        if atlas is not None:
            check_atlas(meta["atlas"], atlas if isinstance(atlas, dict) else atlas.describe(), path)
        weights = path / WEIGHTS
        if not weights.is_file():
            raise InputError(weights, "file", "missing")
        if sha256_file(weights)[:16] != meta["fingerprint"]:
            raise InputError(weights, "fingerprint",
                             f"weights do not match config.json ({meta['fingerprint']})")
        cfg = from_dict(TokenizerConfig, meta["tokenizer"], str(path / CONFIG))
        n_parcels, width = meta["atlas"]["n_parcels"], meta["width"]
        # Placeholders of the right shape; load_state_dict overwrites them with the saved layout.
        index = np.zeros((n_parcels, width), np.int64) if meta["task_layout"] else None
        model = cls(cfg, meta["atlas"], np.ones((n_parcels, width), bool), index)
        if meta.get("rest"):
            rest_cfg = from_dict(TokenizerConfig, meta["rest"]["tokenizer"], str(path / CONFIG))
            model.attach_rest(cls(rest_cfg, meta["atlas"], np.ones((n_parcels, meta["rest"]["width"]), bool)),
                              path / CONFIG)
            model.rest.provenance = meta["rest"].get("provenance") or {}
        try:
            model.load_state_dict(load_file(str(weights)), strict=True)
        except RuntimeError as err:
            raise InputError(weights, "tensors",
                             f"do not fit the architecture in config.json ({err})") from None
        model.fingerprint = meta["fingerprint"]
        model.provenance = meta.get("provenance") or {}
        return model.eval()
