"""The brain–language model: backbone, brain vocabulary, BrainLM, sequence formatting, PEFT, generation.

Modules, in the order data flows through them:

- :mod:`~fmrilm.llm.backbone`     local HF checkpoint (offline) or the bootstrapped compact Llama (stage 0)
- :mod:`~fmrilm.llm.vocab`        brain tokens + delimiters, code-embedding initialisation
- :mod:`~fmrilm.llm.model`        ``BrainLM``: text head + brain head, per-objective loss mixture
- :mod:`~fmrilm.llm.formatting`   joint (stage 2) and chat instruction (stage 3) sequences, masking check
- :mod:`~fmrilm.llm.peft_setup`   building a model with LoRA / QLoRA
- :mod:`~fmrilm.llm.checkpoint`   save / load (refusing a foreign base) / merge to a standalone HF dir
- :mod:`~fmrilm.llm.generate`     batched generation, constrained answers, next-scan prediction
"""
