"""BrainLM: one causal LM that reads and writes brain tokens and text.

The Hugging Face backbone (possibly LoRA-wrapped, possibly 4-bit) runs on input embeddings that this
module assembles: text ids through the backbone's own embedding table, brain tokens and delimiters
through :class:`~fmrilm.llm.vocab.BrainEmbedding`. The backbone's vocabulary is left untouched during
training (an 8B model's 128k-row tables are not resized or made trainable); only merging writes the
new rows into a standalone checkpoint.

Two output heads share the final hidden state (fMRI-LM keeps a separate brain head):

- the LM head, restricted to the text ids, predicts positions whose label is a text token;
- the brain head (hidden → K) predicts positions whose label is a brain token.

With a :class:`~fmrilm.llm.scan_condition.ScanCondition`, every position after a scan also receives
that scan's language-space summary in its input embedding (see that module for why).

``forward(**batch)`` returns a dict of scalar tensors: ``loss`` (the weighted mixture of the
per-objective losses), ``loss_<objective>`` for each objective present in the batch, and
``loss_text_tokens`` / ``loss_brain_tokens`` (mean token loss of each head).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fmrilm.errors import InputError
from fmrilm.llm.config import OBJECTIVES, LossWeights
from fmrilm.llm.scan_condition import ScanCondition
from fmrilm.llm.vocab import BrainEmbedding, BrainVocab

IGNORE = -100  # label of positions that carry no loss (prompt, padding, delimiters)
BRAIN_PARTS_PREFIXES = ("brain_embed.", "brain_head.", "scan_condition.")


@dataclass
class DecodeState:
    """What incremental decoding carries between calls: the KV cache, the scan conditioning in force and
    the brain tokens read since the last ``<scan>`` (for parcel-position embeddings)."""

    cache: object
    condition: torch.Tensor | None
    slot: torch.Tensor | None = None

    def select(self, rows: torch.Tensor) -> DecodeState:
        """The state of batch rows `rows` (repeats allowed: several continuations of one prefix). The
        cache is re-indexed in place, so this state is spent."""
        self.cache.batch_select_indices(rows)
        return DecodeState(self.cache, None if self.condition is None else self.condition[rows],
                           None if self.slot is None else self.slot[rows])


def cache_keyword(decoder: nn.Module) -> str:
    """The name `decoder.forward` takes (and returns) the KV cache under. transformers renamed
    ``past_key_values`` to ``cache`` (the old name warns on every call and goes in 5.40); the versions
    pyproject allows from before the rename know only the old one, and an unknown keyword would be
    swallowed by ``**kwargs``, silently decoding without the cache."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


class BrainLM(nn.Module):
    """Joint brain–text language model around a Hugging Face causal LM.

    Parameters
    ----------
    lm : transformers PreTrainedModel or peft PeftModel
        The backbone; LoRA layers, when present, are already injected.
    tokenizer : transformers tokenizer
        Text tokenizer already extended by :func:`fmrilm.llm.vocab.extend_tokenizer`.
    vocab : BrainVocab
        Id layout of the extended vocabulary.
    brain_embed : BrainEmbedding
        Input embeddings of the new tokens.
    loss_weights : LossWeights
        Mixture weights of the objectives.
    max_length : int or None
        Longest accepted sequence; defaults to the backbone's ``max_position_embeddings``.
    scan_condition : ScanCondition, optional
        Scan-summary conditioning of the positions after each scan.
    """

    def __init__(
        self,
        lm,
        tokenizer,
        vocab: BrainVocab,
        brain_embed: BrainEmbedding,
        loss_weights: LossWeights | None = None,
        max_length: int | None = None,
        scan_condition: ScanCondition | None = None,
    ):
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.brain_embed = brain_embed
        self.scan_condition = scan_condition
        hidden = self.base_lm.config.hidden_size
        self.brain_head = nn.Linear(hidden, vocab.codebook_size, bias=False)
        with torch.no_grad():
            # Start like a tied head: a brain token's output vector is its input embedding.
            self.brain_head.weight.copy_(brain_embed.table()[: vocab.codebook_size])
        context = getattr(self.base_lm.config, "max_position_embeddings", None)
        limits = [x for x in (max_length, context) if x]
        self.max_length = min(limits) if limits else None
        self.register_buffer(
            "loss_weights", torch.tensor((loss_weights or LossWeights()).as_list()), persistent=False
        )

    # ----------------------------------------------------------------------------------- parts
    @property
    def base_lm(self):
        """The underlying HF causal LM (through the peft wrapper if there is one)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def brain_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights outside the backbone: brain embedding, brain head and scan conditioning."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(BRAIN_PARTS_PREFIXES)}

    def train(self, mode: bool = True) -> BrainLM:
        """Set train/eval mode, keeping bitsandbytes 4-bit layers in training mode.

        In eval mode without grad, bitsandbytes repacks 4-bit weights for a CPU inference kernel that
        has no backward; training after any evaluation (e.g. generation between steps) would then get
        wrong gradients. The 4-bit layers behave the same in both modes otherwise, so they stay in
        training mode.
        """
        super().train(mode)
        if getattr(self.base_lm, "is_loaded_in_4bit", False):
            from bitsandbytes.nn import Linear4bit

            for module in self.modules():
                if isinstance(module, Linear4bit):
                    module.training = True
        return self

    # --------------------------------------------------------------------------------- checks
    def check_ids(self, input_ids: torch.Tensor, field: str = "input_ids") -> None:
        """InputError if ids fall outside the extended vocabulary or exceed the context."""
        if input_ids.ndim != 2:
            raise InputError(field, "shape", f"expected [batch, length], got {tuple(input_ids.shape)}")
        bad = (input_ids < 0) | (input_ids >= self.vocab.size)
        if bad.any():
            raise InputError(
                field,
                "values",
                f"{int(bad.sum())} token ids outside the vocabulary [0, {self.vocab.size}), "
                f"e.g. {int(input_ids[bad][0])}",
            )
        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            raise InputError(
                field, "length", f"{input_ids.shape[1]} tokens exceed the context of {self.max_length}"
            )

    # -------------------------------------------------------------------------------- compute
    def embed(self, input_ids: torch.Tensor, state: DecodeState | None = None,
              brain_latents: torch.Tensor | None = None, brain_latent_count: torch.Tensor | None = None):
        """Input embeddings [B, T, d] and the :class:`DecodeState` carry (conditioning, slot count) after
        the last position (its ``cache`` is left None).

        Text ids come from the backbone table, new ids from ``brain_embed`` (plus each brain token's
        parcel-position vector when it has them); with scan conditioning, each position after a scan
        adds that scan's summary. `state` carries both from an earlier call on the same sequences.
        With `brain_latents`, the rows they cover read their brain tokens from the encoder outputs
        instead of the codes (:mod:`fmrilm.llm.brain_input`).
        """
        is_text = input_ids < self.vocab.n_text
        text = self.base_lm.get_input_embeddings()(input_ids.masked_fill(~is_text, 0))
        new = self.brain_embed.table().to(text.dtype)[(input_ids - self.vocab.n_text).clamp(min=0)]
        embeds = torch.where(is_text.unsqueeze(-1), text, new)
        if brain_latents is not None:
            embeds = self._read_latents(input_ids, embeds, brain_latents, brain_latent_count)
        condition, slot = None, None
        if self.brain_embed.slots is not None:
            added, slot = self.brain_embed.slot_embeddings(input_ids, self.vocab, state.slot if state else None)
            embeds = embeds + added.to(embeds.dtype)
        if self.scan_condition is not None:
            added, condition = self.scan_condition(input_ids, self.vocab, state.condition if state else None)
            embeds = embeds + added.to(embeds.dtype)
        return embeds, DecodeState(None, condition, slot)

    def _read_latents(self, input_ids, embeds, latents: torch.Tensor, count: torch.Tensor | None):
        """`embeds` with the brain tokens of the rows `count` covers replaced by their projected latents."""
        is_brain = (input_ids >= self.vocab.brain_offset) & (input_ids < self.vocab.scan_start)
        if count is None:
            raise InputError("brain_latents", "brain_latent_count", "needed beside brain_latents")
        reads = count > 0
        n_brain = is_brain.sum(1)
        if (reads & (count != n_brain)).any():
            row = int((reads & (count != n_brain)).nonzero()[0, 0])
            raise InputError(f"batch row {row}", "brain_latents",
                             f"{int(count[row])} encoder outputs for {int(n_brain[row])} brain tokens: continuous "
                             "input needs one token per parcel (a tokenizer with levels: 1) and every scan's latents")
        if latents.shape[1] == 0 or not reads.any():
            return embeds
        projected = self.brain_embed.project(latents).to(embeds.dtype)  # [B, n, d_model]
        rank = (is_brain.long().cumsum(1) - 1).clamp(0, latents.shape[1] - 1)
        read = projected.gather(1, rank.unsqueeze(-1).expand(-1, -1, projected.shape[-1]))
        return torch.where((is_brain & reads.unsqueeze(1)).unsqueeze(-1), read, embeds)

    def hidden_states(
        self, input_ids, attention_mask=None, position_ids=None, state: DecodeState | None = None,
        use_cache: bool = False, brain_latents: torch.Tensor | None = None,
        brain_latent_count: torch.Tensor | None = None,
    ):
        """Final hidden states [B, T, d] and, when `use_cache`, the :class:`DecodeState` to continue from."""
        embeds, carry = self.embed(input_ids, state, brain_latents, brain_latent_count)
        decoder = self.base_lm.get_decoder()
        key = cache_keyword(decoder)
        out = decoder(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=use_cache, **{key: state.cache if state is not None else None})
        carry.cache = getattr(out, key) if use_cache else None
        return out.last_hidden_state, (carry if use_cache else None)

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits over the text ids only [..., n_text]."""
        return self.base_lm.get_output_embeddings()(hidden)[..., : self.vocab.n_text].float()

    def brain_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Brain-head logits over the codebook [..., K]."""
        return self.brain_head(hidden.to(self.brain_head.weight.dtype)).float()

    def token_losses(self, hidden: torch.Tensor, labels: torch.Tensor):
        """Next-token cross-entropy per position, each position scored by the head its label belongs to.

        Returns
        -------
        losses : Tensor [B, T-1]
            Zero where the label is IGNORE.
        is_text, is_brain : BoolTensor [B, T-1]
        """
        h, target = hidden[:, :-1], labels[:, 1:]
        is_text = (target >= 0) & (target < self.vocab.n_text)
        is_brain = (target >= self.vocab.brain_offset) & (target < self.vocab.scan_start)
        stray = (target != IGNORE) & ~is_text & ~is_brain
        if stray.any():
            raise InputError(
                "labels",
                "values",
                f"{int(stray.sum())} labels are neither text nor brain tokens nor "
                f"{IGNORE} (delimiters are never predicted), e.g. {int(target[stray][0])}",
            )
        # Both heads run even when no label is theirs (on zero rows): their weights then get zero
        # gradients rather than none, so data-parallel ranks always reduce the same gradient buckets.
        losses = torch.zeros(target.shape, dtype=torch.float32, device=hidden.device)
        losses = losses.masked_scatter(
            is_text, F.cross_entropy(self.text_logits(h[is_text]), target[is_text], reduction="none")
        )
        losses = losses.masked_scatter(
            is_brain,
            F.cross_entropy(
                self.brain_logits(h[is_brain]), target[is_brain] - self.vocab.brain_offset, reduction="none"
            ),
        )
        return losses, is_text, is_brain

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        objective: torch.Tensor | None = None,
        brain_latents: torch.Tensor | None = None,
        brain_latent_count: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss mixture on a batch (the training engine calls ``model(**batch)``).

        Parameters
        ----------
        input_ids, labels : LongTensor [B, T]
            Labels are aligned with the inputs (shifted inside); IGNORE marks unsupervised positions.
        attention_mask : LongTensor [B, T], optional
        objective : LongTensor [B], optional
            Index into ``OBJECTIVES`` per sample; without it every sample counts as "text".
        brain_latents, brain_latent_count : Tensor [B, n, d_code], LongTensor [B], optional
            Encoder outputs the brain tokens are read from (``brain_input: continuous``).
        """
        self.check_ids(input_ids)
        if labels.shape != input_ids.shape:
            raise InputError(
                "labels", "shape", f"{tuple(labels.shape)} differs from input_ids {tuple(input_ids.shape)}"
            )
        if objective is None:
            objective = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        if (
            objective.shape != (input_ids.shape[0],)
            or ((objective < 0) | (objective >= len(OBJECTIVES))).any()
        ):
            raise InputError(
                "objective", "values", f"expected [{input_ids.shape[0]}] indices into {OBJECTIVES}"
            )
        hidden, _ = self.hidden_states(input_ids, attention_mask, brain_latents=brain_latents,
                                       brain_latent_count=brain_latent_count)
        losses, is_text, is_brain = self.token_losses(hidden, labels)
        supervised = is_text | is_brain
        if not supervised.any():
            raise InputError(
                "labels", "values", "no supervised position in the batch (all labels are IGNORE)"
            )
        out: dict[str, torch.Tensor] = {}
        total = losses.new_zeros(())
        weight_sum = 0.0
        for index, name in enumerate(OBJECTIVES):
            mask = supervised & (objective == index).unsqueeze(1)
            if mask.any():
                out[f"loss_{name}"] = losses[mask].mean()
                total = total + self.loss_weights[index] * out[f"loss_{name}"]
                weight_sum += float(self.loss_weights[index])
        if weight_sum <= 0:
            raise InputError("loss_weights", "values", "every objective present in the batch has weight 0")
        for name, mask in (("text_tokens", is_text), ("brain_tokens", is_brain)):
            if mask.any():
                out[f"loss_{name}"] = losses[mask].mean().detach()
        out["loss"] = total / weight_sum
        return out
