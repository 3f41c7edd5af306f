"""A captioner: a BrainLM composed with the retriever whose captions its prompts carry.

The language model (:class:`fmrilm.llm.model.BrainLM`) knows nothing of retrieval; a model trained
with retrieval-augmented prompts (:mod:`fmrilm.retrieval.caption_prompts`, stage 3) is only prompted
the way it was trained when its retriever rewrites each prompt first. :class:`Captioner` holds the
two and answers the way the model was trained: everything that asks the trained model about a scan
(stage 3's own closed-question check, the evaluation's captions, VQA and few-shot sections,
subject adaptation, in-silico stimulation, ``fmrilm ask``) goes through one. Scoring that never
retrieves (rest scans, the text-only forgetting check) takes ``captioner.model`` directly.

A captioner is saved as the model's export with the retriever as its own artifact beside the
model's files (the layout stage 3 has always written, so existing runs load unchanged)::

    DIR/brainlm.json, adapter/, ...   the model (:mod:`fmrilm.llm.checkpoint`)
    DIR/retriever/                    its CaptionRetriever (retriever.json, codes, embedder, captions);
                                      absent for a model trained without retrieval
    DIR/merged/                       optional standalone HF checkpoint, with its own retriever/

The retriever is written into the export's scratch directory, so the export appears with it or not
at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fmrilm.artifacts import RETRIEVER_DIR
from fmrilm.errors import InputError
from fmrilm.llm import checkpoint
from fmrilm.llm.generate import choose_answer, generate, prompt_lists
from fmrilm.llm.model import BrainLM
from fmrilm.retrieval.caption_prompts import CaptionRetriever


@dataclass
class Captioner:
    """A BrainLM and its prompt retriever.

    Attributes
    ----------
    model : BrainLM
    retriever : CaptionRetriever or None
        Prefixes single-task-scan prompts with the scan's retrieved training captions; None: prompts
        go to the model as they are.
    """

    model: BrainLM
    retriever: CaptionRetriever | None = None

    # ------------------------------------------------------------------ persistence
    @classmethod
    def load(cls, model_dir, backbone=None, add_lora=None) -> Captioner:
        """The model of a saved or merged export (:func:`fmrilm.llm.checkpoint.load_brainlm`, whose
        `backbone` and `add_lora` these are) and the retriever saved beside it, if any."""
        model_dir = Path(model_dir)
        retriever = model_dir / RETRIEVER_DIR
        return cls(checkpoint.load_brainlm(model_dir, backbone, add_lora),
                   CaptionRetriever.load(retriever) if retriever.is_dir() else None)

    def _write_retriever(self, export_dir: Path) -> None:
        if self.retriever is not None:
            self.retriever.save(export_dir / RETRIEVER_DIR)

    def save(self, out_dir, overwrite: bool = False) -> Path:
        """The model's export (:func:`~fmrilm.llm.checkpoint.save_brainlm`) with the retriever inside."""
        return checkpoint.save_brainlm(self.model, out_dir, overwrite, write_extra=self._write_retriever)

    def merge_to_hf(self, out_dir, overwrite: bool = False) -> Path:
        """A standalone HF checkpoint (:func:`~fmrilm.llm.checkpoint.merge_to_hf`) with the retriever inside."""
        return checkpoint.merge_to_hf(self.model, out_dir, overwrite, write_extra=self._write_retriever)

    # ------------------------------------------------------------------ use
    @property
    def reads_latents(self) -> bool:
        """Whether the model reads the tokenizer encoder's outputs (``brain_input: continuous``) rather
        than the codes: callers then pass ``brain_latents`` beside the tokens."""
        return self.model.llm_config.brain_input == "continuous"

    def prompts(self, brain_tokens, prompts, retrieve=True, exclude=None) -> tuple[list, list[str]]:
        """(token arrays, prompts) as lists, prompts rewritten by the retriever where `retrieve` says so.

        Parameters
        ----------
        brain_tokens, prompts
            As :func:`fmrilm.llm.generate.generate` takes them (one prompt, or lists).
        retrieve : bool or list of bool
            For all prompts or per prompt: prefix single-scan prompts with retrieved captions. The
            captions describe task stimuli, so rest scans are prompted without them (False).
        exclude : list, optional
            Per prompt, a stimulus index whose captions are not retrieved (a training sample's own).
        """
        brain_tokens, prompts = prompt_lists(brain_tokens, prompts)
        if self.retriever is None:
            return brain_tokens, prompts
        flags = [retrieve] * len(prompts) if isinstance(retrieve, bool) else list(retrieve)
        if len(flags) != len(prompts):
            raise InputError("generate", "retrieve", f"{len(flags)} flags for {len(prompts)} prompts")
        scans = [t if f else None for t, f in zip(brain_tokens, flags, strict=True)]
        return brain_tokens, self.retriever.augment(prompts, scans, exclude)

    def generate(self, brain_tokens, prompts, retrieve=True, **options) -> list[str]:
        """:func:`fmrilm.llm.generate.generate` (`options`: its keyword arguments) on :meth:`prompts`."""
        return generate(self.model, *self.prompts(brain_tokens, prompts, retrieve), **options)

    def choose_answer(self, brain_tokens, prompts, candidates, retrieve=True, batch_size: int = 32,
                      brain_latents=None):
        """:func:`fmrilm.llm.generate.choose_answer` on :meth:`prompts`: (answers, log-likelihoods)."""
        return choose_answer(self.model, *self.prompts(brain_tokens, prompts, retrieve), candidates, batch_size,
                             brain_latents)
