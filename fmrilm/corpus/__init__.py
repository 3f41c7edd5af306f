"""The descriptive fMRI corpus: brain tokens paired with captions, answers and descriptions.

fMRI–text pairs are scarce, so the corpus manufactures them (after fMRI-LM's descriptive corpus):
a descriptor engine turns each scan into text (network activation, most active parcels,
lateralisation for task scans; network FC z-scored against the population, graph metrics,
functional gradients, ALFF/fALFF and autocorrelation for rest runs), and sample builders pair
brain tokens with captions, VQA answers, descriptions, phenotypes and next-scan targets.
Samples are written to WebDataset shards with a manifest per split.

Build and inspect::

    fmrilm corpus build --config corpus_demo --set task_dataset=W task_tokens=T rest_dataset=R \
        rest_tokens=RT --out runs/demo/corpus
    fmrilm corpus inspect runs/demo/corpus

Directory layout
----------------
``DIR/corpus.json``
    Summary: config, tokenizer, atlas, counts per split and task, dropped samples, and
    ``run_splits`` (path and sha256 of the run's splits file, :mod:`fmrilm.brain.splits`, which
    decides every sample's split).
``DIR/config.yaml``
    The resolved build config.
``DIR/{split}.manifest.json``
    Per split: ``shards`` ([{"name", "count", "bytes", "sha256"}]), ``n_samples``,
    ``counts`` (per task), ``tokenizer`` (the tokens' tokenizer identity incl. its atlas),
    ``token_dtype``, ``tokens_per_scan`` (P·L).
``DIR/{split}-{shard:06d}.tar``
    Shards; splits are ``train``, ``val``, ``test`` and ``fewshot`` (held-out subjects).

Sample fields (one tar member per field, all sharing the sample's ``__key__``)
-------------------------------------------------------------------------------
``__key__``
    ``{split}-{task}-{n:08d}``: unique within the corpus.
``tokens.npy``
    ``[n_scans, P·L]`` brain token ids, parcel-major per scan, in the smallest unsigned integer
    dtype that holds every id of the corpus (``token_dtype`` in the manifest); ``[0, P·L]`` for
    text-only samples.
``json``
    ``{"task", "prompt", "answer", "split", "subject", "stimulus", "shots", "answer_type",
    "choices"}`` (``choices`` only for closed answers):

    - ``task``: one of :data:`TASKS`.
    - ``prompt``: instruction text. Every scan appears as the placeholder :data:`SCAN` (``"<scan>"``);
      the LM replaces the i-th placeholder (counting through ``prompt`` then ``answer``) with
      scan-start + ``tokens[i]`` + scan-end. Invariant: ``prompt.count(SCAN) + answer.count(SCAN)
      == tokens.shape[0]``.
    - ``answer``: target text. For ``temporal`` it is exactly ``"<scan>"``: the target scan is the last
      row of ``tokens`` (the rows before it are the context scans in time order).
      For ``text`` the prompt is empty and the answer is the whole text.
    - ``shots``: k-shot in-context examples placed *before* the query inside ``prompt``, as
      ``[{"answer": str, "subject": str, "stimulus": int|None}]``; their scans are the first rows of
      ``tokens``. Empty for zero-shot samples.
    - ``answer_type``: ``"free"`` (open text), ``"yesno"`` (choices yes/no), ``"count"`` (a
      non-negative integer, also used for age in years) or ``"class"`` (one of ``choices``).
    - ``subject``: subject id (``"sub-01"``) or null for text-only samples; ``stimulus``: stimulus
      row index in the task dataset, or null.
    - ``scans``: where each row of ``tokens`` comes from, in order: ``["task", trial]`` or
      ``["rest", subject, window]``, rows of the corpus's input tokens datasets (``corpus.json``
      ``inputs``); an LM with ``brain_input: continuous`` reads their ``latents`` there.
    - ``source``: ``"task"``, ``"rest"`` or ``"text"``: where the scans come from. Extras by task:
      ``question_type`` (vqa, the stimulus table's qa "type"), ``phenotype`` (``"sex"``, ``"age"``,
      ``"diagnosis"`` or ``"site"``), ``window`` (temporal: index of the target window in the subject's run).

Reading::

    from fmrilm.corpus.reader import corpus_loader, corpus_stream
    stream = corpus_stream("runs/demo/corpus", "train", resampled=True, epoch_length=10_000)
    for batch in corpus_loader(stream, num_workers=2, batch_size=32):  # lists of decoded samples
        ...; log(skipped_shards=stream.skipped.shards)
"""

SCAN = "<scan>"
TASKS = ("caption", "vqa", "describe", "temporal", "phenotype", "text")
SPLITS = ("train", "val", "test", "fewshot")


def without_scan(prompt: str) -> str:
    """A prompt with its scan placeholders removed (text-only controls and text-only training)."""
    return " ".join(prompt.replace(SCAN, " ").split())
