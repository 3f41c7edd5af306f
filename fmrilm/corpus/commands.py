"""`fmrilm corpus build|inspect` sub-commands (registered by fmrilm/cli.py).

    fmrilm corpus build --config corpus_demo --out runs/demo/corpus --set task_dataset=... task_tokens=...
    fmrilm corpus inspect runs/demo/corpus [--preview 3] [--verify]
"""

from __future__ import annotations

import json
from pathlib import Path

from fmrilm.config import add_config_args, config_from_args


def register(sub) -> None:
    corpus = sub.add_parser("corpus", help="build or inspect the descriptive fMRI corpus (WebDataset shards)",
                            description="Build or inspect the descriptive fMRI corpus.")
    actions = corpus.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = actions.add_parser("build", help="build shards + manifests from task/rest datasets and their tokens",
                           description="Build the corpus: descriptors, splits, samples, shards, manifests.")
    add_config_args(b, "corpus_demo", "config overrides, e.g. task_dataset=DIR task_tokens=DIR shards.maxcount=1000",
                    force_help="rebuild an existing corpus (idempotent)")
    b.add_argument("--out", required=True, help="corpus directory")
    b.set_defaults(handler=_build)
    i = actions.add_parser("inspect", help="counts per task and split, and a preview of samples",
                           description="Print counts per task and split and preview a few samples.")
    i.add_argument("dir", help="corpus directory")
    i.add_argument("--preview", type=int, default=2, help="samples shown per split (default: %(default)s)")
    i.add_argument("--verify", action="store_true", help="check every shard's sha256 against its manifest")
    i.set_defaults(handler=_inspect)


def _build(args) -> int:
    from fmrilm.corpus.build import CorpusConfig, build_corpus

    cfg = config_from_args(CorpusConfig, args)
    summary = build_corpus(cfg, args.out, overwrite=args.force)
    print(f"corpus written to {args.out}")
    _print_counts(summary)
    return 0


def _print_counts(summary: dict) -> None:
    from fmrilm.corpus import TASKS

    splits = list(summary["splits"])
    print(f"{'task':<10}" + "".join(f"{s:>10}" for s in splits))
    for task in TASKS:
        print(f"{task:<10}" + "".join(f"{summary['splits'][s]['counts'].get(task, 0):>10}" for s in splits))
    print(f"{'samples':<10}" + "".join(f"{summary['splits'][s]['n_samples']:>10}" for s in splits))
    print(f"{'shards':<10}" + "".join(f"{summary['splits'][s]['n_shards']:>10}" for s in splits))


def _inspect(args) -> int:
    from fmrilm.corpus.shards import iter_tar, load_manifest, verify_split
    from fmrilm.errors import InputError
    from fmrilm.io import read_json

    root = Path(args.dir)
    if not (root / "corpus.json").is_file():
        raise InputError(root, "corpus.json", "missing: not a finished corpus directory")
    summary = read_json(root / "corpus.json")
    tok = summary["tokenizer"]
    print(f"{root}: tokenizer {tok['name']} (K={tok['codebook_size']}, L={tok['levels']}, "
          f"{tok['fingerprint']}), atlas {summary['atlas']['name']}, tokens {summary['token_dtype']}, "
          f"{summary['tokens_per_scan']} per scan")
    _print_counts(summary)
    for split in summary["splits"]:
        manifest = verify_split(root, split) if args.verify else load_manifest(root, split)
        if args.verify:
            print(f"{split}: {len(manifest['shards'])} shards match their sha256")
        if args.preview > 0 and manifest["shards"]:
            for sample in iter_tar(root / manifest["shards"][0]["name"])[: args.preview]:
                meta = sample["json"]
                print(f"--- {sample['__key__']}  tokens {tuple(sample['tokens.npy'].shape)}  "
                      f"subject={meta['subject']} stimulus={meta['stimulus']}")
                print(f"    prompt: {json.dumps(meta['prompt'])[:300]}")
                print(f"    answer: {json.dumps(meta['answer'])[:300]}")
    return 0
