"""`fmrilm search`: nearest captions of a scan, nearest scans of a caption.

A run's search indexes (pipeline stage ``retrieval``, :mod:`fmrilm.retrieval.search`) answer both
directions: brain queries search the caption index, text queries the scan index::

    fmrilm search --run runs/demo --scan sub-01/stim-000012 -k 5       # scan → captions
    fmrilm search --run runs/demo --text "a zebra on grass" -k 5        # caption → test scans
    fmrilm search --index runs/demo/retrieval/captions --scan-embedding scan.npy -k 5
    fmrilm search --index runs/demo/retrieval/captions --scan-features feats.npy \
        --embedder runs/demo/retrieval/embedder -k 5 --json

``--index`` searches any saved SemanticIndex instead of the run's own.
"""

from __future__ import annotations

import json

from fmrilm.cli import positive_int


def register(sub) -> None:
    p = sub.add_parser("search", help="nearest captions of a scan, or nearest scans of a text",
                       description="Nearest items of a saved SemanticIndex (fmrilm.retrieval.index), best "
                                   "first: a run's caption index for brain queries, its scan index for text.")
    p.add_argument("--run", metavar="DIR",
                   help="pipeline run whose retrieval stage (from its stages.json) is searched")
    p.add_argument("--index", help="search this saved index directory instead of the run's")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", nargs="+", help="one or more text queries (embedded with MiniLM) → scans")
    query.add_argument("--scan", nargs="+", metavar="SUBJECT/STIMULUS",
                       help="scans of the run's task dataset, e.g. sub-01/stim-000012 or 0/12 → captions")
    query.add_argument("--scan-embedding", metavar="FILE.npy",
                       help="brain embeddings already in the index space, [D] or [Q, D]")
    query.add_argument("--scan-features", metavar="FILE.npy",
                       help="brain features [D] or [Q, D], embedded with --embedder")
    p.add_argument("--embedder", help="saved brain embedder directory (with --scan-features)")
    p.add_argument("-k", type=positive_int, default=5, help="results per query, >= 1 (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object per query instead of a table")
    p.set_defaults(handler=_search)


def _queries(args):
    """Query vectors and a label per query."""
    import numpy as np

    from fmrilm.errors import InputError
    from fmrilm.io import load_npy

    if args.text:
        from fmrilm.textembed import embed_texts

        return embed_texts(args.text), list(args.text)
    if args.scan:
        from fmrilm.retrieval.search import embed_scan

        return np.concatenate([embed_scan(_search_dir(args), scan) for scan in args.scan]), list(args.scan)
    if args.scan_features and not args.embedder:
        raise InputError("--scan-features", "embedder", "needs --embedder DIR to map features into the index space")
    if args.embedder and not args.scan_features:
        raise InputError("--embedder", "query", "only applies to --scan-features")
    path = args.scan_embedding or args.scan_features
    vectors = np.atleast_2d(load_npy(path, mmap=False))
    if args.scan_features:
        from fmrilm.retrieval.brain_embedder import BrainEmbedder

        vectors = BrainEmbedder.load(args.embedder).embed(vectors)
    return vectors, [f"{path}[{i}]" for i in range(len(vectors))]


def _search_dir(args):
    from fmrilm.artifacts import run_artifact
    from fmrilm.errors import InputError

    if not args.run:
        raise InputError("--run", "run", "name a pipeline run directory (or --index DIR)")
    return run_artifact(args.run, "retrieval")


def _search(args) -> int:
    from fmrilm.retrieval.index import SemanticIndex

    # Text queries look for scans; every brain query looks for captions.
    index = SemanticIndex.load(args.index or _search_dir(args) / ("scans" if args.text else "captions"))
    vectors, labels = _queries(args)
    scores, ids, metadata = index.search(vectors, k=args.k)
    for label, row_scores, row_ids, row_meta in zip(labels, scores, ids, metadata):
        hits = [{"rank": r + 1, "score": round(float(s), 4), "id": i, "metadata": m}
                for r, (s, i, m) in enumerate(zip(row_scores, row_ids, row_meta))]
        if args.json:
            print(json.dumps({"query": label, "results": hits}))
            continue
        print(f"query: {label}")
        for hit in hits:
            print(f"  {hit['rank']:3d}  {hit['score']:+.4f}  {hit['id']:24s}  {json.dumps(hit['metadata'])[:100]}")
    return 0
