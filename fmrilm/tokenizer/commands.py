"""`fmrilm tokenizer encode | inspect` (registered by fmrilm/cli.py).

`fmrilm tokenizer train` runs stage 1, which sits above this package, so its verb is added to the
parser's ``verbs`` by :mod:`fmrilm.stages.commands` (registered after this module).
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("tokenizer", help="stage 1: train, apply and inspect the VQ brain tokenizer",
                       description="Stage 1: the region-wise VQ brain tokenizer.")
    p.verbs = verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    e = verbs.add_parser("encode", help="tokenize a task or rest dataset into a tokens dataset",
                         description="Write a tokens dataset (manifest kind 'tokens', array 'tokens').")
    e.add_argument("--tokenizer", required=True, help="tokenizer directory (config.json + model.safetensors)")
    e.add_argument("--data", required=True, help="task or rest dataset directory")
    e.add_argument("--out", required=True, help="output tokens dataset directory")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--force", action="store_true", help="replace an existing output")
    e.add_argument("--latents", action="store_true",
                   help="also store the encoder outputs (array 'latents'), for llm.brain_input=continuous")
    e.set_defaults(handler=_encode)

    i = verbs.add_parser("inspect", help="print codebook health and save a per-parcel R² surface map",
                         description="Codebook health and reconstruction R² per parcel (on --data if "
                                     "given, else the training run's held-out eval.json).")
    i.add_argument("--tokenizer", required=True, help="tokenizer directory")
    i.add_argument("--data", help="dataset to evaluate on (all its scans)")
    i.add_argument("--out", help="PNG path of the surface map (default: TOKENIZER/r2_surface.png)")
    i.add_argument("--batch-size", type=int, default=256)
    i.set_defaults(handler=_inspect)


def _encode(args) -> int:
    from fmrilm.brain.store import Dataset
    from fmrilm.tokenizer.model import BrainTokenizer
    from fmrilm.tokenizer.tokens import write_tokens_dataset

    tokenizer = BrainTokenizer.from_pretrained(args.tokenizer)
    out = write_tokens_dataset(tokenizer, args.data, args.out, args.batch_size, args.force, args.tokenizer,
                               args.latents)
    print(Dataset(out))
    return 0


def _inspect(args) -> int:
    from pathlib import Path

    import numpy as np

    from fmrilm.errors import InputError
    from fmrilm.io import read_json
    from fmrilm.tokenizer.data import all_scans, dataset_atlas
    from fmrilm.tokenizer.evaluate import evaluate_tokenizer
    from fmrilm.tokenizer.health import dead_codes
    from fmrilm.tokenizer.model import BrainTokenizer
    from fmrilm.tokenizer.plotting import plot_parcel_map

    directory = Path(args.tokenizer)
    tokenizer = BrainTokenizer.from_pretrained(directory)
    if args.data:
        scans = all_scans(args.data, tokenizer)
        report, source = evaluate_tokenizer(tokenizer, scans, args.batch_size, progress=True), args.data
    elif (directory / "eval.json").is_file():
        report, source = read_json(directory / "eval.json"), "held-out split of training (eval.json)"
    else:
        raise InputError(directory, "eval.json", "missing; pass --data DATASET to evaluate on")
    print(f"tokenizer {directory}: {tokenizer.describe()['name']} K={tokenizer.cfg.quantizer.codebook_size} "
          f"L={tokenizer.cfg.levels} vocab={tokenizer.vocab_size} atlas={tokenizer.atlas_info['name']}")
    print(f"evaluated on {source}: {report['n_scans']} scans")
    print(f"  codebook usage   {report['usage']:.3f}")
    print(f"  perplexity       {report['perplexity']:.1f}  "
          f"({report['perplexity_ratio']:.3f} of the vocabulary)")
    print(f"  EMA dead codes   {dead_codes(tokenizer.quantizer)}")
    print(f"  reconstruction R2 {report['r2']:.3f}")
    r2 = np.asarray(report["r2_per_parcel"])
    worst = np.argsort(r2)[:3]
    print(f"  per-parcel R2: median {np.median(r2):.3f}, "
          f"worst parcels {worst.tolist()} ({r2[worst].round(3).tolist()})")
    atlas = dataset_atlas(tokenizer.atlas_info, directory / "config.json")
    out = Path(args.out or directory / "r2_surface.png")
    # Headless-safe under any backend: the plot never touches pyplot (fmrilm.tokenizer.plotting).
    plot_parcel_map(r2, atlas, title=f"reconstruction R² per parcel ({directory.name})", vmax=1.0, output_file=out)
    print(f"surface map: {out}")
    return 0
