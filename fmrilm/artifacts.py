"""Whether a run's artifacts fit together, decided from their records before anything is loaded.

A model handed the tokens of another tokenizer still answers, only wrongly, so every command that
combines artifacts (``fmrilm ask``, ``fmrilm eval``, ``fmrilm stimulate``, ``fmrilm search --scan``)
calls :func:`check_compatible` first. It reads JSON records (and one safetensors header) only::

    tokenizer  config.json                   fingerprint, atlas parcels × levels, provenance.splits
               code_embeddings.safetensors   header: brain token ids × code dimension
    corpus     corpus.json                   tokenizer (fingerprint, K) of its tokens, run_splits
    model      brainlm.json                  vocab.codebook_size: the brain token ids it reads and writes
               stage.json                    training stages: tokenizer {path, fingerprint}, splits, retrieval
               retriever/retriever.json      tokens_per_scan of its retrieved-caption prompts
    search     search.json                   tokenizer (path, relative inside a run), tokenizer_fingerprint, splits
               embedder/config.json          in_dim: the token-feature width it embeds

The paths a training stage's ``stage.json`` and a corpus's ``corpus.json`` record (:data:`STAGE_PATHS`,
:data:`CORPUS_PATHS`) are relative to the file inside a run (:func:`fmrilm.io.portable_path`);
:func:`stage_record` / :func:`corpus_record` write them so, :func:`read_stage_record` /
:func:`read_corpus_record` resolve them.

A disagreement is an :class:`~fmrilm.errors.InputError` on the record that disagrees, naming both
sides, e.g. ``runs/x/instruct/…/stage.json: field 'tokenizer.fingerprint': model trained on tokens
of tokenizer runs/x/tokenizer/… (fingerprint 3f2a…); the tokenizer given is runs/y/… (fingerprint
9c01…)``. A record an artifact does not have (a model saved by hand has no ``stage.json``) is not
compared.

Artifact directories may be given directly or as a stage's parent directory (``runs/demo/instruct``
holding one ``stage3_instruct-*`` export; ``runs/demo/tokenizer`` holding one ``tokenizer_*``):
:func:`resolve_model_dir`, :func:`resolve_tokenizer_dir`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from fmrilm.errors import InputError
from fmrilm.io import portable_path, read_json, recorded_path, write_json

TOKENIZER_FORMAT = "fmrilm-brain-tokenizer"
RETRIEVER_DIR = "retriever"  # a captioner's retriever, inside the model export it prompts for
STAGE_FILE = "stage.json"  # written last into every LM stage export: its presence marks a finished stage
# The keys of stage.json that hold paths: the backbone a stage 0 recorded, the export a stage
# started from, the search indexes its retriever came from, its tokenizer and splits files.
STAGE_PATHS = (("backbone_path",), ("from",), ("retrieval",), ("tokenizer", "path"), ("splits", "path"))
# The keys of corpus.json that hold paths: its run's splits file and its inputs (datasets, tokens).
CORPUS_PATHS = (("run_splits", "path"), ("inputs", "*"))


def _map_paths(info: dict, keys, convert) -> dict:
    """A copy of `info` with `convert` applied to the paths at `keys` ("*": every key of that section)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in info.items()}
    for *parents, key in keys:
        node = out
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        for k in (list(node) if key == "*" else [key]):
            if isinstance(node.get(k), str) and node[k]:
                node[k] = convert(node[k])
    return out


def stage_record(info: dict, export_dir) -> dict:
    """`info` as ``export_dir/stage.json`` stores it: its paths portable (relative inside a run)."""
    return _map_paths(info, STAGE_PATHS, lambda p: portable_path(p, export_dir))


def read_stage_record(export_dir) -> dict:
    """``export_dir/stage.json`` with its paths resolved (relative ones against `export_dir`)."""
    return _map_paths(read_json(Path(export_dir) / STAGE_FILE), STAGE_PATHS, lambda p: recorded_path(p, export_dir))


def corpus_record(summary: dict, corpus_dir) -> dict:
    """`summary` as ``corpus_dir/corpus.json`` stores it: its paths portable (relative inside a run)."""
    return _map_paths(summary, CORPUS_PATHS, lambda p: portable_path(p, corpus_dir))


def read_corpus_record(corpus_dir) -> dict:
    """``corpus_dir/corpus.json`` with its paths resolved (relative ones against `corpus_dir`)."""
    return _map_paths(read_json(Path(corpus_dir) / "corpus.json"), CORPUS_PATHS,
                      lambda p: recorded_path(p, corpus_dir))


@dataclass(frozen=True)
class TokenizerRecord:
    """What a saved brain tokenizer says about itself, read without loading its weights.

    Attributes
    ----------
    path : Path
    fingerprint : str
        Of its weights (``config.json``); every artifact made from its tokens records it.
    vocab_size, code_dim : int
        Rows and columns of its code-embedding table (the brain token ids and their vectors).
    tokens_per_scan : int
        P·L: parcels times quantizer levels.
    splits : dict or None
        ``{"path", "sha256"}`` of the splits file it was trained on.
    """

    path: Path
    fingerprint: str
    vocab_size: int
    code_dim: int
    tokens_per_scan: int
    splits: dict | None

    def __str__(self) -> str:
        return f"{self.path} (fingerprint {self.fingerprint})"


def read_tokenizer_record(tokenizer_dir) -> TokenizerRecord:
    """The :class:`TokenizerRecord` of a tokenizer directory; InputError if it is not one."""
    from safetensors import safe_open

    path = Path(tokenizer_dir)
    meta = read_json(path / "config.json")
    if meta.get("format") != TOKENIZER_FORMAT:
        raise InputError(path / "config.json", "format", f"{meta.get('format')!r} is not a brain tokenizer")
    table = path / "code_embeddings.safetensors"
    if not table.is_file():
        raise InputError(table, "file", "missing: re-save the tokenizer with this version")
    # The table's shape is the vocabulary as the LM stages see it; the header alone holds it.
    with safe_open(str(table), framework="numpy") as fh:
        if "code_embeddings" not in fh.keys():
            raise InputError(table, "code_embeddings", f"missing tensor (has {sorted(fh.keys())})")
        vocab_size, code_dim = fh.get_slice("code_embeddings").get_shape()
    tokens_per_scan = int(meta["atlas"]["n_parcels"]) * int(meta["tokenizer"]["quantizer"]["levels"])
    return TokenizerRecord(path, meta["fingerprint"], int(vocab_size), int(code_dim), tokens_per_scan,
                           (meta.get("provenance") or {}).get("splits"))


def check_recorded(recorded, splits, what: str, source, against: str = "this stage was handed",
                   field: str = "splits") -> None:
    """InputError unless an artifact's recorded splits (``{"sha256", "path"}``) are `splits`.

    Parameters
    ----------
    recorded : dict or str or None
        What the artifact recorded (a record, a bare sha256, or nothing).
    splits : RunSplits or dict
        The splits to match: anything with ``path`` and ``sha256`` (attributes or keys).
    what, source, field : str
        The artifact in words, the file holding its record and the record's key (for the message).
    against : str
        Where `splits` comes from, in words ("this stage was handed", "the corpus … was built on").
    """
    want = splits if isinstance(splits, dict) else {"path": str(splits.path), "sha256": splits.sha256}
    found = recorded.get("sha256") if isinstance(recorded, dict) else recorded
    if found == want["sha256"]:
        return
    where = recorded.get("path", "?") if isinstance(recorded, dict) else "?"
    built = f"was built on splits {str(found)[:12]} ({where})" if found else "records no splits file"
    raise InputError(source, field, f"{what} {built}, but {against} {want['path']} ({want['sha256'][:12]}): "
                     "rebuild it on one splits file")


def check_compatible(tokenizer_dir=None, model_dir=None, corpus_dir=None, search_dir=None, splits=None) -> None:
    """InputError, before any compute, unless the given artifacts share one tokenizer and one splits file.

    Parameters
    ----------
    tokenizer_dir : path, optional
        A tokenizer directory (``config.json``). Default with `search_dir`: the one ``search.json`` names.
    model_dir : path, optional
        A BrainLM export (``brainlm.json``; ``stage.json`` when a training stage wrote it).
    corpus_dir : path, optional
        A corpus directory (``corpus.json``).
    search_dir : path, optional
        A retrieval stage output (``search.json``, ``embedder/``).
    splits : RunSplits or dict, optional
        The command's splits file. Without it, the first splits an artifact records (corpus, then
        tokenizer) is the reference the others must match.

    Raises
    ------
    InputError
        On the first disagreement, naming the record that disagrees and both sides.
    """
    search = read_json(Path(search_dir) / "search.json") if search_dir is not None else None
    if tokenizer_dir is None and search is not None:
        tokenizer_dir = recorded_path(search["tokenizer"], search_dir)
    tokenizer = read_tokenizer_record(tokenizer_dir) if tokenizer_dir is not None else None
    corpus = read_corpus_record(corpus_dir) if corpus_dir is not None else None
    model = _ModelRecord.read(model_dir) if model_dir is not None else None
    if tokenizer is not None:
        if corpus is not None:
            _corpus_tokenizer(Path(corpus_dir), corpus, tokenizer)
        if model is not None:
            model.check_tokenizer(tokenizer)
        if search is not None:
            _search_tokenizer(Path(search_dir), search, tokenizer)
    if corpus is not None and model is not None:
        model.check_corpus(Path(corpus_dir), corpus)
    records = []  # (recorded splits, artifact in words, file, key): the order picks the reference
    if corpus is not None:
        records.append((corpus.get("run_splits"), f"the corpus {corpus_dir}", Path(corpus_dir) / "corpus.json",
                        "run_splits"))
    if tokenizer is not None:
        records.append((tokenizer.splits, f"the tokenizer {tokenizer.path}", tokenizer.path / "config.json",
                        "provenance.splits"))
    if model is not None:
        records += model.splits_records()
    if search is not None:
        records.append((search.get("splits"), f"the search indexes {search_dir}", Path(search_dir) / "search.json",
                        "splits"))
    _same_splits(records, splits)


def _same_splits(records: list, splits) -> None:
    if splits is not None:
        against = "this command was handed"
    else:
        first = next((r for r in records if r[0]), None)
        if first is None:
            return
        splits, against = first[0], f"{first[1]} was built on"
    for recorded, what, source, field in records:
        check_recorded(recorded, splits, what, source, against, field)


def _corpus_tokenizer(corpus_dir: Path, corpus: dict, tokenizer: TokenizerRecord) -> None:
    made = corpus.get("tokenizer") or {}
    if made.get("fingerprint") != tokenizer.fingerprint:
        raise InputError(corpus_dir / "corpus.json", "tokenizer.fingerprint",
                         f"corpus tokens were made by tokenizer {made.get('name')!r} K={made.get('codebook_size')} "
                         f"(fingerprint {made.get('fingerprint')}); the tokenizer given is {tokenizer}")


def _search_tokenizer(search_dir: Path, search: dict, tokenizer: TokenizerRecord) -> None:
    recorded = search.get("tokenizer_fingerprint")
    if recorded is not None and recorded != tokenizer.fingerprint:
        raise InputError(search_dir / "search.json", "tokenizer_fingerprint",
                         f"search indexes built with tokenizer {search.get('tokenizer')} (fingerprint {recorded}); "
                         f"the tokenizer given is {tokenizer}: rebuild the retrieval stage")
    # Indexes written before the fingerprint was recorded: the embedder's input width still tells.
    in_dim = read_json(search_dir / "embedder" / "config.json")["in_dim"]
    width = tokenizer.tokens_per_scan * tokenizer.code_dim
    if in_dim != width:
        raise InputError(search_dir / "embedder" / "config.json", "in_dim",
                         f"the search embedder reads {in_dim} token features per scan; the tokenizer given is "
                         f"{tokenizer}, whose scans have {tokenizer.tokens_per_scan} tokens × {tokenizer.code_dim} "
                         f"= {width}: rebuild the retrieval stage")


@dataclass
class _ModelRecord:
    """The records of a BrainLM export: ``brainlm.json``, and ``stage.json`` / ``retriever.json`` if present."""

    path: Path
    meta: dict
    stage: dict
    retriever: dict | None

    @classmethod
    def read(cls, model_dir) -> _ModelRecord:
        path = Path(model_dir)
        stage = read_stage_record(path) if (path / STAGE_FILE).is_file() else {}
        retriever = path / RETRIEVER_DIR / "retriever.json"
        return cls(path, read_json(path / "brainlm.json"), stage, read_json(retriever) if retriever.is_file() else None)

    def _trained_on(self) -> str:
        made = self.stage.get("tokenizer") or {}
        return f"model trained on tokens of tokenizer {made.get('path', '?')} (fingerprint {made.get('fingerprint')})"

    def check_tokenizer(self, tokenizer: TokenizerRecord) -> None:
        recorded = (self.stage.get("tokenizer") or {}).get("fingerprint")
        if recorded is not None and recorded != tokenizer.fingerprint:
            raise InputError(self.path / "stage.json", "tokenizer.fingerprint",
                             f"{self._trained_on()}; the tokenizer given is {tokenizer}")
        codebook = (self.meta.get("vocab") or {}).get("codebook_size")
        if codebook != tokenizer.vocab_size:
            raise InputError(self.path / "brainlm.json", "vocab.codebook_size",
                             f"model reads and writes {codebook} brain token ids; the tokenizer given is {tokenizer} "
                             f"with {tokenizer.vocab_size}: a model of another tokenizer")
        if self.retriever is not None and self.retriever.get("tokens_per_scan") != tokenizer.tokens_per_scan:
            raise InputError(self.path / RETRIEVER_DIR / "retriever.json", "tokens_per_scan",
                             f"the model's retriever reads {self.retriever.get('tokens_per_scan')} tokens per scan; "
                             f"the tokenizer given is {tokenizer} with {tokenizer.tokens_per_scan}")

    def check_corpus(self, corpus_dir: Path, corpus: dict) -> None:
        recorded = (self.stage.get("tokenizer") or {}).get("fingerprint")
        made = (corpus.get("tokenizer") or {}).get("fingerprint")
        if recorded is not None and recorded != made:
            raise InputError(self.path / "stage.json", "tokenizer.fingerprint",
                             f"{self._trained_on()}; the corpus {corpus_dir} holds tokens of fingerprint {made}")

    def splits_records(self) -> list:
        """Splits records to compare: a training stage's, and its retriever source's when still there."""
        if not self.stage:
            return []  # saved by hand: nothing recorded
        out = [(self.stage.get("splits"), f"the model {self.path}", self.path / "stage.json", "splits")]
        search = Path(self.stage["retrieval"]) / "search.json" if self.stage.get("retrieval") else None
        if search is not None and search.is_file():
            out.append((read_json(search).get("splits"), f"the model's retriever {search.parent}", search, "splits"))
        return out


# ------------------------------------------------------------------ finding an artifact
def resolve_artifact(path, marker: str, pattern: str, what: str) -> Path:
    """`path` itself if it holds `marker`, else its single newest child matching `pattern` that does."""
    path = Path(path)
    if (path / marker).is_file():
        return path
    found = sorted(p for p in path.glob(pattern) if (p / marker).is_file()) if path.is_dir() else []
    if not found:
        raise InputError(path, what, f"no {marker} here nor in a {pattern} subdirectory")
    # Export names end in the step number (step000300), so the last in sorted order is the newest.
    return found[-1]


def resolve_model_dir(path) -> Path:
    """A BrainLM directory (``brainlm.json``), given it or the stage directory holding exports."""
    return resolve_artifact(path, "brainlm.json", "stage3_instruct-*", "model")


def resolve_tokenizer_dir(path) -> Path:
    """A brain tokenizer directory (``config.json`` + weights), given it or its stage directory."""
    return resolve_artifact(path, "model.safetensors", "tokenizer_*", "tokenizer")


# ------------------------------------------------------------------ a pipeline run's stages
STAGES_FILE = "stages.json"  # finished stage → its artifact, relative to the run (fmrilm.pipeline writes it)


def read_state(run: Path) -> dict[str, str]:
    """Finished stages → artifact paths under `run` (only those whose artifact still exists).

    A recorded path outside the run (a ``stages.json`` written before paths were relative, then
    moved or copied) is used but warned about: it is another run's artifact. A path that older
    versions wrote relative to the working directory is still found while it lies inside the run.
    """
    path = run / STAGES_FILE
    state = {}
    for stage, recorded in (read_json(path) if path.is_file() else {}).items():
        artifact = run / recorded  # an absolute `recorded` stays as it is
        legacy = Path(recorded)
        if not artifact.exists() and legacy.exists() and _inside(legacy, run):
            artifact = legacy  # written before paths were relative to the run: relative to the working directory
        if Path(recorded).is_absolute() and not _inside(artifact, run):
            warnings.warn(f"{path}: stage {stage!r} points outside this run, at {recorded}: that artifact is "
                          f"used, not one of this run (--force {stage} recomputes it here)", RuntimeWarning,
                          stacklevel=2)
        if artifact.exists():
            state[stage] = str(artifact)
    return state


def write_state(run: Path, state: dict[str, str]) -> None:
    """``stages.json``: each artifact inside `run` relative to it, anything else absolute."""
    write_json(run / STAGES_FILE, {stage: os.path.relpath(Path(p).resolve(), run.resolve())
                                     if _inside(Path(p), run) else str(Path(p).resolve())
                                     for stage, p in state.items()})


def _inside(path: Path, run: Path) -> bool:
    return Path(path).resolve().is_relative_to(run.resolve())


def run_artifact(run, stage: str) -> Path:
    """The artifact a finished stage of pipeline run `run` recorded in its ``stages.json`` (commands such
    as ``fmrilm ask`` find a run's pieces this way, wherever a stage wrote); InputError naming the file and
    the stage when the run has not finished it. A directory assembled by hand, without ``stages.json``,
    is read in the pipeline's layout: ``run/<stage>``."""
    run = Path(run)
    if not (run / STAGES_FILE).is_file():
        return run / stage
    state = read_state(run)
    if stage not in state:
        raise InputError(run / STAGES_FILE, stage, "not a finished stage of this run (`fmrilm pipeline --set "
                                                   f"run_dir={run}` runs it; finished: {sorted(state)})")
    return Path(state[stage])


# The stages that can give a run its task / rest dataset: own data imported, or a synthetic world.
DATASET_STAGES = {"task": ("task_import", "task_world"), "rest": ("rest_import", "rest_world")}


def run_dataset(run, kind: str) -> Path:
    """A pipeline run's `kind` ("task" or "rest") dataset, whichever stage gave it (:data:`DATASET_STAGES`)."""
    run = Path(run)
    state = read_state(run) if (run / STAGES_FILE).is_file() else {}
    for stage in DATASET_STAGES[kind]:
        if stage in state:
            return Path(state[stage])
    return run_artifact(run, DATASET_STAGES[kind][-1])  # the error names the run and what it finished


# Config key → the pipeline stage whose artifact it names, for each command that reads a finished run.
RUN_PATHS = {"evaluation": {"corpus": "corpus", "splits": "splits", "tokenizer": "tokenizer", "model": "instruct"},
             "stimulation": {"corpus": "corpus", "tokenizer": "tokenizer", "model": "instruct"},
             "rest_fewshot": {"corpus": "corpus", "splits": "splits", "tokenizer": "tokenizer", "model": "instruct"}}


def run_paths(run, command: str) -> list[str]:
    """Overrides pointing `command`'s config at pipeline run `run`: its inputs from the run's ``stages.json``
    (:data:`RUN_PATHS`), its output to ``run/<command>``; none when `run` is None."""
    if run is None:
        return []
    return [*(f"{key}={run_artifact(run, stage)}" for key, stage in RUN_PATHS[command].items()),
            f"out={Path(run) / command}"]
