"""Text-only neighbour prompts: captions and answers behind similar captions of OTHER stimuli.

SmallCap (Ramos et al., CVPR 2023) trains its decoder to write a caption from retrieved captions; a
compact LM bootstrapped from scratch has no copying skill to begin with, and in stage 3 it must learn
it at the same time as reading the scan (with the retrieval prefix of
:mod:`fmrilm.retrieval.caption_prompts`). Stage 0 can teach it cheaply on text alone: a training
caption, or a question about a training stimulus with its answer, is written after the captions most
similar to the stimulus's caption (TF-IDF cosine, which rewards the shared content words a copy
needs) from other stimuli, in exactly the prefix format stage 3 uses::

    Similar scenes: <neighbour 1> | <neighbour 2> | <neighbour 3>
    <caption>                                   or    <question> <answer>

Neighbours never come from the stimulus itself, as in stage 3, where a training scan's own stimulus
is left out of its retrieval.
"""

from __future__ import annotations

import numpy as np

from fmrilm.errors import InputError
from fmrilm.retrieval.caption_prompts import PREFIX, SEPARATOR


class CaptionNeighbours:
    """TF-IDF nearest captions of other stimuli.

    Parameters
    ----------
    captions : list of str
        Training captions (repeats allowed: a stimulus is captioned once per subject).
    stimuli : list of int
        The stimulus of each caption.
    """

    def __init__(self, captions: list[str], stimuli: list[int]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        if len(captions) != len(stimuli):
            raise InputError("captions", "stimuli", f"{len(captions)} captions but {len(stimuli)} stimuli")
        self.pairs = list(dict.fromkeys(zip(stimuli, captions, strict=True)))
        self.texts = list(dict.fromkeys(c for _, c in self.pairs))
        stimulus_ids = sorted({s for s, _ in self.pairs})
        if len(stimulus_ids) < 2:
            raise InputError("captions", "stimuli", "neighbours need captions of at least two stimuli")
        self._row = {c: i for i, c in enumerate(self.texts)}
        self._column = {s: j for j, s in enumerate(stimulus_ids)}
        self._owned = np.zeros((len(self.texts), len(stimulus_ids)), bool)  # caption text × stimulus
        for s, c in self.pairs:
            self._owned[self._row[c], self._column[s]] = True
        self.first_caption = dict(reversed(self.pairs))  # stimulus → its first caption
        # sparse rows, one similarity row per distinct query: a dense caption × caption matrix would
        # not fit for NSD-sized banks (45k captions → 16 GB)
        self._vectors = TfidfVectorizer().fit_transform(self.texts).tocsr()
        self._prefixes: dict[tuple[int, str, int], str] = {}

    def prefix(self, stimulus: int, caption: str, k: int) -> str:
        """``Similar scenes: …`` with the `k` captions nearest to `caption` that `stimulus` does not have."""
        if k < 1:
            raise InputError("captions", "k", f"needs k >= 1 neighbours (got {k})")
        key = (stimulus, caption, k)
        if key not in self._prefixes:
            sims = (self._vectors @ self._vectors[self._row[caption]].T).toarray().ravel()
            sims[self._owned[:, self._column[stimulus]]] = -np.inf  # every caption the stimulus itself has
            best = [i for i in np.argsort(-sims, kind="stable")[:k] if np.isfinite(sims[i])]
            self._prefixes[key] = PREFIX + SEPARATOR.join(self.texts[i] for i in best)
        return self._prefixes[key]


def neighbour_prompted_captions(neighbours: CaptionNeighbours, k: int = 3) -> list[str]:
    """One text per distinct (stimulus, caption) pair: its `k` nearest other-stimulus captions, then it.

    Returns ``"Similar scenes: n1 | n2 | n3\\n<caption>"`` in first-seen order of the pairs.
    """
    return [f"{neighbours.prefix(s, c, k)}\n{c}" for s, c in neighbours.pairs]


def neighbour_prompted_answers(neighbours: CaptionNeighbours, questions: list[str], answers: list[str],
                               stimuli: list[int], k: int = 3) -> list[str]:
    """``"Similar scenes: …\\n<question> <answer>"`` for questions about captioned stimuli.

    The neighbours are those of the stimulus's first caption; questions about stimuli without a
    caption in `neighbours` are refused (their scene is unknown to the text).
    """
    missing = sorted({s for s in stimuli if s not in neighbours.first_caption})
    if missing:
        raise InputError("questions", "stimulus", f"{len(missing)} stimuli have no caption, e.g. {missing[:3]}")
    return [f"{neighbours.prefix(s, neighbours.first_caption[s], k)}\n{q} {a}"
            for q, a, s in zip(questions, answers, stimuli, strict=True)]
