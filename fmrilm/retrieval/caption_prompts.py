"""Retrieval-augmented prompts: a scan's nearest training captions, written into its prompt.

SmallCap (Ramos et al., CVPR 2023) showed that a small caption decoder does well when prompted with
captions retrieved for its image from a datastore: it learns to copy and edit text long before it
could learn to verbalize visual features alone. fmrilm's compact LM is in that regime: in a few
hundred CPU steps the scan conditioning moves caption SemScore only a little above the shuffled
control, while the run's brain embedder already finds a scan's caption among 300 at top-1 ≈ 0.96.
This module joins the two: the prompt of a question about ONE scan is prefixed with the ``k`` captions
nearest to that scan's brain embedding, from the *training* stimuli only::

    Similar scenes: <caption 1> | <caption 2> | <caption 3>
    What was the person looking at during this scan? <scan>

Everything still flows from the brain tokens: the embedding is the retrieval stage's embedder on the
code vectors of the scan's tokens, so the shuffled control retrieves another scan's neighbours, the
text-only control (no scan) gets no prefix, and in-silico stimulation acts through re-tokenization.
Training prompts leave out the sample's own stimulus, so the LM never learns to expect an exact
match, which a held-out test scan (its stimulus is not in the bank) never has. A k-shot prompt
(:func:`fmrilm.corpus.phrasing.with_shots`: examples, then the query after the last
:data:`~fmrilm.corpus.phrasing.SHOT_SEPARATOR`) gets the prefix of its QUERY scan, the last of its
scans, written just before the query, so the query reads exactly as a zero-shot prompt does and
in-context k ≥ 1 is compared with k = 0 under the same retrieval::

    <example prompt> <caption>\n\nSimilar scenes: <caption 1> | ...\nWhat was the person looking at ...? <scan>

A prompt whose query refers to no scan or to several (temporal runs) is left as it is, and so are
rest scans (the captions describe viewed scenes; callers pass ``None`` tokens, or ``retrieve=False``
to :class:`~fmrilm.retrieval.captioner.Captioner`).

A retriever is saved inside the stage-3 export (``retriever/``) by the
:class:`~fmrilm.retrieval.captioner.Captioner` that composes it with the model, and loaded with it,
so everything that asks the trained model (evaluation, ``fmrilm ask``, stimulation) prompts the way
training did::

    DIR/retriever.json        k, prefix, tokens per scan, source search directory
    DIR/codes.safetensors     code vectors of the brain tokens [K, C] (the embedder's input features)
    DIR/embedder/             BrainEmbedder
    DIR/captions/             SemanticIndex of the training captions (metadata: caption, stimulus_index,
                              text_only: a text-only scene, no brain data, stimulus_index -1)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmrilm.corpus import SCAN
from fmrilm.corpus.phrasing import SHOT_SEPARATOR
from fmrilm.errors import InputError
from fmrilm.io import atomic_dir, portable_path, read_json, recorded_path, write_json
from fmrilm.retrieval.brain_embedder import BrainEmbedder
from fmrilm.retrieval.index import SemanticIndex

RETRIEVER_FILE = "retriever.json"
TEXT_ONLY = "text_only"  # split name of the search index's text-only scenes (no brain data)
PREFIX = "Similar scenes: "
SEPARATOR = " | "


class CaptionRetriever:
    """Brain embedder + training-caption index that prefix a prompt's query with its scan's neighbours.

    Parameters
    ----------
    codes : float array [K, C]
        Code vectors of the brain tokens (features of a scan: its tokens' vectors, concatenated).
    embedder : BrainEmbedder
        Maps ``P·L·C`` features into the MiniLM space.
    captions : SemanticIndex
        Training captions; each row's metadata holds ``caption`` and ``stimulus_index``.
    k : int
        Captions written into each prompt.
    source : str
        Where it was built from (recorded on save).
    """

    def __init__(self, codes: np.ndarray, embedder: BrainEmbedder, captions: SemanticIndex, k: int = 3,
                 source: str = ""):
        self.codes = np.asarray(codes, np.float32)
        if self.codes.ndim != 2 or embedder.in_dim % self.codes.shape[1]:
            raise InputError("retriever", "codes", f"code vectors {self.codes.shape} do not divide the embedder's "
                                                   f"{embedder.in_dim} input features")
        if k < 1 or len(captions) == 0:
            raise InputError("retriever", "k", f"needs k >= 1 and captions to retrieve (k={k}, {len(captions)})")
        self.embedder, self.captions, self.k, self.source = embedder, captions, k, source
        self.tokens_per_scan = embedder.in_dim // self.codes.shape[1]

    @property
    def n_text_only(self) -> int:
        """Captions in the bank from text-only scenes (no brain data)."""
        return sum(bool(m.get("text_only")) for m in self.captions.metadata)

    # ------------------------------------------------------------------ building / persistence
    @classmethod
    def from_search_dir(cls, search_dir, k: int = 3, text_only: bool = False) -> CaptionRetriever:
        """The retriever of a run's ``retrieval`` stage output (its embedder and training captions).

        With `text_only` its bank also holds the world's text-only scenes (captions that name novel
        categories; no brain data, never a val/test caption): a novel scan's neighbours can then name
        what no training scan showed, which is where zero-shot naming can come from.
        """
        from safetensors.numpy import load_file

        search_dir = Path(search_dir)
        info = read_json(search_dir / "search.json")
        codes_path = Path(recorded_path(info["tokenizer"], search_dir)) / "code_embeddings.safetensors"
        if not codes_path.is_file():
            raise InputError(codes_path, "file", "missing: the tokenizer export has no code embeddings")
        index = SemanticIndex.load(search_dir / "captions")
        splits = ("train", TEXT_ONLY) if text_only else ("train",)
        rows = [i for i, m in enumerate(index.metadata) if m.get("split") in splits]
        if not rows or "stimulus_index" not in index.metadata[rows[0]]:
            raise InputError(search_dir / "captions", "metadata", "no training captions with a stimulus_index "
                                                                  "(rebuild the retrieval stage)")
        vectors = index.vectors()[rows]
        meta = [{"caption": index.metadata[i]["caption"], "stimulus_index": index.metadata[i]["stimulus_index"],
                 "text_only": index.metadata[i]["split"] == TEXT_ONLY} for i in rows]
        train_index = SemanticIndex.build(vectors, [index.ids[i] for i in rows], meta, kind="flat")
        return cls(load_file(str(codes_path))["code_embeddings"], BrainEmbedder.load(search_dir / "embedder"),
                   train_index, k, str(search_dir.resolve()))

    def save(self, out_dir, overwrite: bool = False) -> Path:
        from safetensors.numpy import save_file

        with atomic_dir(out_dir, overwrite) as tmp:
            save_file({"codes": self.codes}, str(tmp / "codes.safetensors"))
            self.embedder.save(tmp / "embedder")
            self.captions.save(tmp / "captions")
            write_json(tmp / RETRIEVER_FILE, {"k": self.k, "prefix": PREFIX, "tokens_per_scan": self.tokens_per_scan,
                                              "source": portable_path(self.source, out_dir) if self.source else "",
                                              "n_captions": len(self.captions),
                                              "n_text_only": self.n_text_only})
        return Path(out_dir)

    @classmethod
    def load(cls, path) -> CaptionRetriever:
        from safetensors.numpy import load_file

        path = Path(path)
        info = read_json(path / RETRIEVER_FILE)
        return cls(load_file(str(path / "codes.safetensors"))["codes"], BrainEmbedder.load(path / "embedder"),
                   SemanticIndex.load(path / "captions"), int(info["k"]),
                   recorded_path(info["source"], path) if info.get("source") else "")

    # ------------------------------------------------------------------ use
    def neighbours(self, scans: np.ndarray, exclude=None, chunk: int = 1024) -> list[list[str]]:
        """The `k` nearest distinct training captions of each scan ``[N, P·L]`` (codebook ids), best first.

        `exclude` gives per scan a stimulus index whose captions are skipped (None: skip nothing).
        Scans are embedded `chunk` at a time (their features are P·L·C floats each).
        """
        scans = np.asarray(scans, np.int64).reshape(-1, self.tokens_per_scan)
        if len(scans) == 0:
            return []
        if scans.min() < 0 or scans.max() >= len(self.codes):
            raise InputError("retriever", "tokens", f"codebook ids outside [0, {len(self.codes)})")
        exclude = [None] * len(scans) if exclude is None else list(exclude)
        queries = np.concatenate([self.embedder.embed(self.codes[scans[i:i + chunk]].reshape(-1, self.embedder.in_dim))
                                  for i in range(0, len(scans), chunk)])
        # over-fetch: the excluded stimulus and repeated captions (stimuli can share one) are dropped
        _, _, meta = self.captions.search(queries, 2 * self.k + 1)
        return [list(dict.fromkeys(m["caption"] for m in rows if m["stimulus_index"] != skip))[: self.k]
                for rows, skip in zip(meta, exclude, strict=True)]

    def _query_scan(self, prompt: str, tokens) -> np.ndarray | None:
        """The scan ``[P·L]`` a prompt's query asks about: the last of its scans, when the query (the
        text after the last shot separator) refers to exactly one; else None."""
        if tokens is None:
            return None
        tokens = np.asarray(tokens)
        if tokens.size == 0 or tokens.size % self.tokens_per_scan or prompt.split(SHOT_SEPARATOR)[-1].count(SCAN) != 1:
            return None
        return tokens.reshape(-1, self.tokens_per_scan)[-1]

    def augment(self, prompts: list[str], brain_tokens: list, exclude=None) -> list[str]:
        """`prompts` with the neighbours' prefix before each one's query (see module docstring).

        Parameters
        ----------
        brain_tokens : list of (array [n_scans, P·L] or None)
            Each prompt's scans, the query's last; None (text-only, rest) leaves the prompt as it is.
        exclude : list, optional
            Per prompt, a stimulus index whose captions are not retrieved (the query's own, in training).
        """
        exclude = [None] * len(prompts) if exclude is None else list(exclude)
        scans = [self._query_scan(p, t) for p, t in zip(prompts, brain_tokens, strict=True)]
        queried = [i for i, scan in enumerate(scans) if scan is not None]
        out = list(prompts)
        if queried:
            found = self.neighbours(np.stack([scans[i] for i in queried]), [exclude[i] for i in queried])
            for i, captions in zip(queried, found, strict=True):
                *shots, query = prompts[i].split(SHOT_SEPARATOR)
                out[i] = SHOT_SEPARATOR.join([*shots, f"{PREFIX}{SEPARATOR.join(captions)}\n{query}"])
        return out
