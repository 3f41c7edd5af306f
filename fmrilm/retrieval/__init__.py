"""fMRI ↔ text retrieval in the MiniLM space: FAISS indexes and the brain embedder.

- :mod:`fmrilm.retrieval.index`: :class:`~fmrilm.retrieval.index.SemanticIndex` (flat / HNSW /
  IVF-PQ with exact re-ranking, saved with ids and metadata, incremental adds).
- :mod:`fmrilm.retrieval.brain_embedder`: contrastive head from brain features to MiniLM space.
- :mod:`fmrilm.retrieval.search`: a run's search indexes (the pipeline's ``retrieval`` stage).
- :mod:`fmrilm.retrieval.caption_prompts`: retrieval-augmented prompts (a scan's nearest training captions).
- :mod:`fmrilm.retrieval.captioner`: :class:`~fmrilm.retrieval.captioner.Captioner`, a BrainLM composed
  with its prompt retriever (the LM itself knows nothing of retrieval), saved and loaded together.
- :mod:`fmrilm.retrieval.commands`: ``fmrilm search``.

Text queries are embedded with :func:`fmrilm.textembed.embed_texts`.
"""
