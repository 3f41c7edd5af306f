"""Corpus build and read throughput, against a plain ``tarfile`` loop and stage-2 consumption.

    python benchmarks/corpus.py [--quick]

Builds a corpus from toy inputs (``fmrilm.corpus.toy``: exact dataset layouts, random token ids),
then reads the train split with the webdataset pipeline (sha256 check, shuffle buffer, decoding)
through ``corpus_loader`` (torch DataLoader, batches of 32 formed in the workers, worker start-up
included) with 1 and 2 workers, and with the standard-library reader
(``fmrilm.corpus.shards.iter_tar``) over the same shards. Prints a table, then one JSON line.

Stage-2 consumption (the assumption the ratio rests on): a ~7M-parameter Llama trains at about
7.6k tokens/s in bf16 on this machine, so it consumes ``7600 / mean_tokens_per_sample`` samples/s.
A sample's length in LM tokens is ``n_scans · (P·L + 2)`` (scan start/end delimiters) plus its
prompt and answer text at ~4 characters per text token.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

from fmrilm.brain.atlas import Atlas
from fmrilm.config import load_config
from fmrilm.corpus import SCAN
from fmrilm.corpus.build import CorpusConfig, build_corpus
from fmrilm.corpus.reader import corpus_loader, corpus_stream
from fmrilm.corpus.shards import iter_tar, load_manifest
from fmrilm.corpus.toy import write_toy_inputs

STAGE2_TOKENS_PER_S = 7600.0
CHARS_PER_TEXT_TOKEN = 4.0
BATCH = 32  # samples per list the DataLoader workers hand over (the trainer's batch)


def sample_tokens(tokens_shape, meta) -> float:
    """LM tokens of one sample: scans with delimiters plus text (placeholders excluded)."""
    text = (meta["prompt"] + meta["answer"]).replace(SCAN, "")
    return tokens_shape[0] * (tokens_shape[1] + 2) + len(text) / CHARS_PER_TEXT_TOKEN


def read_loader(corpus: Path, workers: int) -> tuple[int, float]:
    stream = corpus_stream(corpus, "train", shuffle_buffer=1000, seed=0)
    start = time.perf_counter()
    n = sum(len(batch) for batch in corpus_loader(stream, num_workers=workers, batch_size=BATCH))
    seconds = time.perf_counter() - start
    if stream.skipped.shards:
        warnings.warn(f"{stream.skipped.shards} shards skipped", stacklevel=1)
    return n, seconds


def read_plain(corpus: Path) -> tuple[int, float, float]:
    """Samples, seconds and mean LM tokens per sample with the standard-library reader."""
    start = time.perf_counter()
    samples = [s for sh in load_manifest(corpus, "train")["shards"] for s in iter_tar(corpus / sh["name"])]
    seconds = time.perf_counter() - start
    mean_tokens = sum(sample_tokens(s["tokens.npy"].shape, s["json"]) for s in samples) / len(samples)
    return len(samples), seconds, mean_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpus (about a minute)")
    args = parser.parse_args()
    quick = dict(n_stimuli=60, n_task_subjects=2, repeats=2, n_rest_subjects=16, n_timepoints=128)
    full = dict(n_stimuli=240, n_task_subjects=4, repeats=2, n_rest_subjects=80, n_timepoints=160)
    size = quick if args.quick else full
    atlas = Atlas.schaefer(100)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_toy_inputs(Path(tmp) / "inputs", atlas, **size, split_rules=["rest_fewshot_subjects=2"])
        cfg = load_config(CorpusConfig, "corpus_demo", [f"{k}={v}" for k, v in paths.items()]
                          + ["shards.maxcount=1000"])
        corpus = Path(tmp) / "corpus"
        start = time.perf_counter()
        summary = build_corpus(cfg, corpus, progress=False)
        build_s = time.perf_counter() - start
        n_total = sum(s["n_samples"] for s in summary["splits"].values())
        mbytes = sum(s["bytes"] for s in summary["splits"].values()) / 1e6
        n_plain, plain_s, mean_tokens = read_plain(corpus)
        reads = {w: read_loader(corpus, w) for w in (1, 2)}
    assert all(n == n_plain for n, _ in reads.values()), "reader and tarfile disagree on the sample count"
    consumption = STAGE2_TOKENS_PER_S / mean_tokens
    rate = {w: n / s for w, (n, s) in reads.items()}
    result = {
        "samples": n_total, "train_samples": n_plain, "shard_mb": round(mbytes, 2),
        "build_samples_per_s": round(n_total / build_s, 1), "build_mb_per_s": round(mbytes / build_s, 2),
        "read_samples_per_s_1_worker": round(rate[1], 1), "read_samples_per_s_2_workers": round(rate[2], 1),
        "tarfile_samples_per_s": round(n_plain / plain_s, 1),
        "read_vs_tarfile_2_workers": round(rate[2] / (n_plain / plain_s), 2),
        "mean_tokens_per_sample": round(mean_tokens, 1),
        "stage2_samples_per_s": round(consumption, 1),
        "read_vs_stage2_ratio": round(rate[2] / consumption, 1),
        "assumption": f"stage 2 consumes {STAGE2_TOKENS_PER_S:.0f} tokens/s (7M Llama, bf16, this machine); "
                      f"sample length = n_scans*(P*L+2) + text chars/{CHARS_PER_TEXT_TOKEN:g}",
        "quick": args.quick,
    }
    print(f"{'measure':<36}{'value':>14}")
    for key, value in result.items():
        if key != "assumption":
            print(f"{key:<36}{value!s:>14}")
    print(f"(build includes descriptors, splits and sample planning; {result['assumption']})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
