"""Caption quality: SemScore (MiniLM) and the BrainHub/COCO metrics from pycocoevalcap.

- SemScore: cosine similarity of MiniLM embeddings between a generated caption and each of its
  references, averaged over references, then over items (a text analogue of CLIP-S).
- BLEU-1…4, METEOR, ROUGE-L, CIDEr(-D): pycocoevalcap's scorers on PTB-tokenised, lowercased text
  with punctuation removed (the COCO caption protocol). Tokenisation and METEOR run the Java jars
  shipped inside pycocoevalcap; without a ``java`` on PATH, tokens come from a regex instead and
  METEOR is reported unavailable with the reason.
- SPICE is always reported unavailable: its jar fetches Stanford CoreNLP models on first use, and
  nothing may be downloaded at run time.

Scores are fractions (BLEU 0.31, not 31.0); CIDEr is on its usual 0–10 scale. Corpus-level BLEU
and CIDEr depend on the whole set (BLEU pools n-gram counts, CIDEr takes IDF from the references).

>>> caption_metrics(["a man riding a horse"], [["a man rides a horse", "a person on a horse"]])["BLEU-1"]
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from fmrilm.errors import InputError
from fmrilm.textembed import embed_texts

SPICE_UNAVAILABLE = ("SPICE downloads Stanford CoreNLP models on first use (pycocoevalcap get_stanford_models); "
                     "run-time downloads are not allowed")
# Punctuation tokens the COCO protocol drops after PTB tokenisation (as pycocoevalcap's PTBTokenizer).
_PTB_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", "-lrb-", "-rrb-", "-lcb-", "-rcb-",
                    ".", "?", "!", ",", ":", "-", "--", "...", ";"}


def _check_pairs(generated, references) -> tuple[list[str], list[list[str]]]:
    generated = [str(g) for g in generated]
    references = [[r] if isinstance(r, str) else [str(x) for x in r] for r in references]
    if len(generated) != len(references):
        raise InputError("captions", "rows", f"{len(generated)} generated captions, {len(references)} reference sets")
    if not generated:
        raise InputError("captions", "rows", "no captions to score")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise InputError("captions", "references", f"items {empty[:5]} have no reference caption")
    return generated, references


# ---------------------------------------------------------------------- SemScore
def semscore_from_embeddings(generated: np.ndarray, references: np.ndarray, owner) -> np.ndarray:
    """Per-item SemScore from unit-norm embeddings: `references` row j belongs to item ``owner[j]``."""
    owner = np.asarray(owner)
    cos = np.einsum("jd,jd->j", generated[owner], references)
    totals = np.bincount(owner, weights=cos, minlength=len(generated))
    return totals / np.bincount(owner, minlength=len(generated))


def semscore(generated, references, progress: bool = False) -> dict:
    """SemScore of generated captions against their references.

    Parameters
    ----------
    generated : list of str
    references : list of (str or list of str)
    progress : bool
        Progress bar while embedding.

    Returns
    -------
    dict
        ``{"semscore": mean over items, "per_item": list of float, "n": int}``.
    """
    generated, references = _check_pairs(generated, references)
    owner = np.repeat(np.arange(len(references)), [len(r) for r in references])
    emb = embed_texts(generated + [r for refs in references for r in refs], progress=progress)
    per_item = semscore_from_embeddings(emb[:len(generated)], emb[len(generated):], owner)
    return {"semscore": float(per_item.mean()), "per_item": per_item.tolist(), "n": len(generated)}


# ---------------------------------------------------------------------- COCO metrics
def _java_jar(package: str, jar: str) -> Path:
    import importlib

    return Path(importlib.import_module(f"pycocoevalcap.{package}").__file__).parent / jar


def tokenize(captions: list[str]) -> tuple[list[str], str]:
    """COCO-protocol tokens (space-joined, lowercase, no punctuation) and the tokenizer used.

    Uses Stanford's PTBTokenizer from pycocoevalcap's CoreNLP jar, fed through stdin (the
    pycocoevalcap wrapper writes a temporary file into site-packages, which may be read-only).
    """
    lines = [c.replace("\n", " ").replace("\r", " ") for c in captions]
    if shutil.which("java") is None:
        return [" ".join(re.findall(r"\w+", line.lower())) for line in lines], "regex (java not found)"
    jar = _java_jar("tokenizer.ptbtokenizer", "stanford-corenlp-3.4.1.jar")
    cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    done = subprocess.run(cmd, input="\n".join(lines).encode(), capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"PTBTokenizer failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    out = done.stdout.decode().split("\n")
    # Trailing empty captions leave no trailing lines; anything else would be a misalignment.
    if len(out) < len(lines) and any(lines[len(out):]) or len(out) > len(lines) + 1:
        raise RuntimeError(f"PTBTokenizer returned {len(out)} lines for {len(lines)} captions")
    out = (out + [""] * len(lines))[:len(lines)]
    return [" ".join(w for w in line.split() if w not in _PTB_PUNCTUATION) for line in out], "ptb"


class MeteorScorer:
    """One METEOR process (pycocoevalcap's meteor-1.5.jar) kept for several scorings.

    Each start loads a 60 MB paraphrase table into a JVM (~10 s), so an evaluation that scores
    several conditions opens one and passes it to every :func:`caption_metrics` call::

        with MeteorScorer() as meteor:
            scores = [caption_metrics(gen, refs, meteor=meteor) for gen in conditions]
    """

    def __enter__(self) -> MeteorScorer:
        from pycocoevalcap.meteor.meteor import Meteor

        self._scorer = Meteor() if shutil.which("java") else None  # no java: caption_metrics says so
        return self

    def score(self, gts: dict, res: dict) -> float:
        return float(self._scorer.compute_score(gts, res)[0])

    def __exit__(self, *exc) -> None:
        # Stop the Java process now rather than whenever the garbage collector gets to it.
        if self._scorer is not None:
            self._scorer.meteor_p.stdin.close()
            self._scorer.meteor_p.kill()
            self._scorer.meteor_p.wait()


def caption_metrics(generated, references, meteor: bool | MeteorScorer = True) -> dict:
    """BLEU-1…4, METEOR, ROUGE-L and CIDEr of generated captions (corpus level).

    Parameters
    ----------
    generated : list of str
    references : list of (str or list of str)
    meteor : bool or MeteorScorer
        True starts a METEOR JVM for this call (~10 s), an open :class:`MeteorScorer` is reused,
        False skips METEOR.

    Returns
    -------
    dict
        ``{"BLEU-1": …, "BLEU-4": …, "METEOR": float or None, "ROUGE-L": …, "CIDEr": …,
        "SPICE": None, "unavailable": {metric: reason}, "tokenizer": str, "n": int}``.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    generated, references = _check_pairs(generated, references)
    tokens, tokenizer = tokenize(generated + [r for refs in references for r in refs])
    res = {i: [tokens[i]] for i in range(len(generated))}
    gts, pos = {}, len(generated)
    for i, refs in enumerate(references):
        gts[i], pos = tokens[pos:pos + len(refs)], pos + len(refs)
    bleu = Bleu(4).compute_score(gts, res, verbose=0)[0]
    out = {f"BLEU-{n}": float(bleu[n - 1]) for n in range(1, 5)}
    unavailable = {"SPICE": SPICE_UNAVAILABLE}
    out["METEOR"] = None
    if not meteor:
        unavailable["METEOR"] = "skipped (meteor=False)"
    elif shutil.which("java") is None:
        unavailable["METEOR"] = "needs Java (meteor-1.5.jar); no java on PATH"
    elif isinstance(meteor, MeteorScorer):
        out["METEOR"] = meteor.score(gts, res)
    else:
        with MeteorScorer() as scorer:
            out["METEOR"] = scorer.score(gts, res)
    out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    out.update(SPICE=None, unavailable=unavailable, tokenizer=tokenizer, n=len(generated))
    return out
