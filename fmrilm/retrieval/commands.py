"""`fmrilm search`: query a saved retrieval index with text or with brain embeddings.

Both directions use the same command: a caption index answers brain queries (scan → captions),
a scan index answers text queries (caption → scans)::

    fmrilm search --index runs/demo/retrieval/captions --scan-embedding scan.npy -k 5
    fmrilm search --index runs/demo/retrieval/scans --text "a zebra on grass" -k 5
    fmrilm search --index runs/demo/retrieval/captions --scan-features feats.npy \
        --embedder runs/demo/retrieval/embedder -k 5 --json
"""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("search", help="search a retrieval index with text or brain embeddings",
                       description="Nearest items of a saved SemanticIndex (fmrilm.retrieval.index) for "
                                   "text queries or brain embeddings, best first.")
    p.add_argument("--index", required=True, help="saved index directory")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", nargs="+", help="one or more text queries (embedded with MiniLM)")
    query.add_argument("--scan-embedding", metavar="FILE.npy",
                       help="brain embeddings already in the index space, [D] or [Q, D]")
    query.add_argument("--scan-features", metavar="FILE.npy",
                       help="brain features [D] or [Q, D], embedded with --embedder")
    p.add_argument("--embedder", help="saved brain embedder directory (with --scan-features)")
    p.add_argument("-k", type=int, default=5, help="results per query (default: %(default)s)")
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


def _search(args) -> int:
    from fmrilm.retrieval.index import SemanticIndex

    index = SemanticIndex.load(args.index)
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
