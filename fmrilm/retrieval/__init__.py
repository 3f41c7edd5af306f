"""fMRI ↔ text retrieval in the MiniLM space: FAISS indexes and the brain embedder.

- :mod:`fmrilm.retrieval.index`: :class:`~fmrilm.retrieval.index.SemanticIndex` (flat / HNSW /
  IVF-PQ with exact re-ranking, saved with ids and metadata, incremental adds).
- :mod:`fmrilm.retrieval.brain_embedder`: contrastive head from brain features to MiniLM space.
- :mod:`fmrilm.retrieval.commands`: ``fmrilm search``.

Text queries are embedded with :func:`fmrilm.textembed.embed_texts`.
"""
