"""Bad input gets one line naming the file (or option) and field, exit 2, nothing written; anything
unexpected gets one line and exit 1 (the traceback with FMRILM_DEBUG=1).

Probes: wrong config types in a YAML file and in ``--set``; an empty YAML; an empty or truncated
``.npy``; a symlink member in a corpus shard; out-of-range ``-k`` / ``--max-new-tokens``.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
from tiny_configs import tiny_config

from fmrilm.cli import main as cli
from fmrilm.config import from_dict, load_config
from fmrilm.errors import InputError
from fmrilm.io import load_npy, save_npy, sha256_file


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------ configs
@dataclass
class Inner:
    epochs: int = 3
    lr: float = 0.1


@dataclass
class Outer:
    n: int = 2
    maybe: Inner | None = None
    name: str = "x"
    flag: bool = False
    ratio: float | None = None
    shots: tuple[int, ...] = (0, 1)
    pair: tuple[float, float] = (0.0, 1.0)
    words: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


@pytest.mark.parametrize("data, key, expected", [
    ({"n": "three"}, "n", "expected int, got 'three'"),
    ({"n": True}, "n", "expected int, got True"),
    ({"n": 2.5}, "n", "expected int, got 2.5"),
    ({"name": 3}, "name", "expected str, got 3"),
    ({"flag": "yes please"}, "flag", "expected bool"),
    ({"ratio": "half"}, "ratio", "expected float or None, got 'half'"),
    ({"shots": 3}, "shots", "expected a list"),
    ({"shots": [0, "one"]}, "shots[1]", "expected int, got 'one'"),
    ({"pair": [1.0]}, "pair", "expected 2 items"),
    ({"words": ["a", 1]}, "words[1]", "expected str"),
    ({"weights": {"a": "heavy"}}, "weights.a", "expected float"),
    ({"inner": {"epochs": "many"}}, "inner.epochs", "expected int, got 'many'"),
    ({"inner": 5}, "inner", "expected a mapping (Inner)"),
    ({"inner": {"epoch": 1}}, "inner.epoch", "unknown key"),
    ({"maybe": {"lr": "slow"}}, "maybe.lr", "expected float, got 'slow'"),
])
def test_from_dict_names_field_and_expected_type(data, key, expected):
    with pytest.raises(InputError) as err:
        from_dict(Outer, data, "cfg.yaml")
    assert err.value.source == "cfg.yaml" and err.value.field == key and expected in err.value.problem


def test_from_dict_coerces_what_yaml_and_json_give():
    cfg = from_dict(Outer, {"ratio": 1, "shots": [2, 3], "pair": [0, 2], "inner": {"lr": 1}, "weights": {"a": 2}})
    assert cfg.ratio == 1.0 and isinstance(cfg.ratio, float) and cfg.shots == (2, 3) and cfg.pair == (0.0, 2.0)
    assert cfg.inner == Inner(3, 1.0) and cfg.weights == {"a": 2.0}
    assert from_dict(Outer, {"ratio": None}).ratio is None


def test_yaml_of_wrong_type_is_refused_at_load_naming_file_and_field(tmp_path, capsys):
    from fmrilm.brain.task_world import TaskWorldConfig

    bad = tmp_path / "world.yaml"
    bad.write_text('n_subjects: "three"\n')
    with pytest.raises(InputError, match=r"world\.yaml: field 'n_subjects': expected int, got 'three'"):
        load_config(TaskWorldConfig, bad)
    assert cli(["world", "task", "--config", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "field 'n_subjects': expected int, got 'three'" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_set_of_wrong_type_names_set_before_any_work(tmp_path, capsys):
    out = tmp_path / "eval"
    for override, message in (("n_items=lots", "--set: field 'n_items': expected int, got 'lots'"),
                              ("adaptation.fit.lr=fast", "--set: field 'adaptation.fit.lr': expected float"),
                              ("shots=3", "--set: field 'shots': expected a list"),
                              ("n_itemz=3", "--set: field 'n_itemz': unknown key 'n_itemz' for EvalConfig"),
                              ("split.x=1", "--set: field 'split.x': 'split' is a str, not a section"),
                              # a stage's set list holding a list needs quoted items (pipeline --set)
                              ("shots=[a=[1]]", "--set: field 'shots': '[a=[1]]' is not a YAML value")):
        assert cli(["eval", "--config", tiny_config("eval_tiny"), "--set", f"out={out}", override]) == 2
        assert message in _one_line_error(capsys)
    assert not out.exists()


def test_empty_yaml_is_an_error_not_all_defaults(tmp_path):
    from fmrilm.evaluation.runner import EvalConfig

    for text in ("", "# only a comment\n"):
        (tmp_path / "empty.yaml").write_text(text)
        with pytest.raises(InputError, match=r"empty\.yaml: field 'yaml': empty file"):
            load_config(EvalConfig, tmp_path / "empty.yaml")
    (tmp_path / "defaults.yaml").write_text("{}\n")
    assert load_config(EvalConfig, tmp_path / "defaults.yaml") == EvalConfig()


# ---------------------------------------------------------------------------------------------- npy
def test_empty_or_truncated_npy_is_an_input_error(tmp_path):
    save_npy(tmp_path / "good.npy", np.arange(1000, dtype=np.float32))
    data = (tmp_path / "good.npy").read_bytes()
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "cut.npy").write_bytes(data[:500])
    (tmp_path / "header.npy").write_bytes(data[:20])
    for name in ("empty.npy", "cut.npy", "header.npy"):
        for mmap in (True, False):
            with pytest.raises(InputError, match=rf"{name}: field 'npy'"):
                load_npy(tmp_path / name, mmap=mmap)
    assert load_npy(tmp_path / "good.npy").shape == (1000,)


# ------------------------------------------------------------------------------------------- shards
@pytest.fixture(scope="module")
def toy_corpus(tmp_path_factory):
    from fmrilm.brain.atlas import Atlas
    from fmrilm.corpus.build import CorpusConfig, build_corpus
    from fmrilm.corpus.toy import write_toy_inputs

    root = tmp_path_factory.mktemp("corpus")
    paths = write_toy_inputs(root / "inputs", Atlas.schaefer(100))
    cfg = load_config(CorpusConfig, tiny_config("corpus_tiny"), [f"{k}={v}" for k, v in paths.items()])
    build_corpus(cfg, root / "corpus", progress=False)
    return root / "corpus"


def _with_symlink_member(corpus, tmp_path, outside: bool):
    """A copy of `corpus` whose first train shard has one sample's json replaced by a symlink to
    another sample's json or to a file outside (manifest updated, so the shard passes its sha256
    check and the member itself is what is refused)."""
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    manifest = json.loads((copy / "train.manifest.json").read_text())
    shard = copy / manifest["shards"][0]["name"]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    first, second = [i for i, (m, _) in enumerate(members) if m.name.endswith(".json")][:2]
    target = "/etc/passwd" if outside else members[first][0].name
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (member, data) in enumerate(members):
            if i == second:
                link = tarfile.TarInfo(member.name)
                link.type, link.linkname = tarfile.SYMTYPE, target
                tar.addfile(link)
            else:
                tar.addfile(member, io.BytesIO(data))
    manifest["shards"][0].update(bytes=shard.stat().st_size, sha256=sha256_file(shard))
    (copy / "train.manifest.json").write_text(json.dumps(manifest))
    return copy, shard.name


@pytest.mark.parametrize("outside", [True, False])
def test_symlink_member_in_a_shard_is_refused_clearly(toy_corpus, tmp_path, capsys, outside):
    from fmrilm.corpus.reader import corpus_loader, corpus_stream
    from fmrilm.corpus.shards import iter_tar

    corpus, shard = _with_symlink_member(toy_corpus, tmp_path, outside)
    with pytest.raises(InputError, match=r"field 'member '.*\.json'': is a symlink to"):
        iter_tar(corpus / shard)
    for argv in (["corpus", "inspect", str(corpus)], ["corpus", "inspect", str(corpus), "--verify"]):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert f"{shard}: field 'member" in err and "symlink" in err and "Traceback" not in err
    # the training reader skips the whole shard, counts it and says why
    stream = corpus_stream(corpus, "train", shuffle_buffer=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read = [s for batch in corpus_loader(stream, 0, batch_size=8) for s in batch]
    assert stream.skipped.shards == 1 and stream.skipped.samples == 0
    assert any("symlink" in str(w.message) and shard in str(w.message) for w in caught)
    manifest = json.loads((corpus / "train.manifest.json").read_text())
    assert len(read) == manifest["n_samples"] - manifest["shards"][0]["count"]


# ----------------------------------------------------------------------------------- argument ranges
@pytest.mark.parametrize("argv, option", [
    (["search", "--text", "a dog", "-k", "0"], "-k"),
    (["search", "--text", "a dog", "-k", "many"], "-k"),
    (["ask", "--run", "nowhere", "--scan", "0/0", "--max-new-tokens", "-5", "What?"], "--max-new-tokens"),
])
def test_out_of_range_arguments_are_refused_while_parsing(argv, option, capsys):
    with pytest.raises(SystemExit) as stop:
        cli(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "expected an integer >= 1" in err


def test_search_without_a_run_or_index_names_the_missing_option(capsys):
    assert cli(["search", "--text", "a dog"]) == 2
    err = _one_line_error(capsys)
    assert "--run" in err and "--index" in err


# ------------------------------------------------------------------------------------- last resort
def test_unexpected_exception_is_one_line_unless_debugging(tmp_path, capsys, monkeypatch):
    (tmp_path / "corpus.json").write_text("{}")  # a corpus record without its fields: a KeyError inside
    monkeypatch.delenv("FMRILM_DEBUG", raising=False)
    assert cli(["corpus", "inspect", str(tmp_path)]) == 1
    err = _one_line_error(capsys)
    assert err.startswith("error: KeyError: 'tokenizer'") and "rerun with FMRILM_DEBUG=1 for the traceback" in err
    monkeypatch.setenv("FMRILM_DEBUG", "1")
    assert cli(["corpus", "inspect", str(tmp_path)]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("FMRILM_DEBUG")
    assert cli(["--debug", "corpus", "inspect", str(tmp_path)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_stage_entry_points_report_errors_in_one_line(capsys, monkeypatch):
    """``python -m fmrilm.stages.<x>`` reports as the CLI does: bad config exit 2, anything else exit 1."""
    import subprocess
    import sys

    from fmrilm.engine import stage_main
    from fmrilm.stages.joint import JointStageConfig

    monkeypatch.delenv("FMRILM_DEBUG", raising=False)
    bad = subprocess.run([sys.executable, "-m", "fmrilm.stages.joint", "--config", tiny_config("joint_tiny"),
                          "--set", "engine.max_steps=lots"], capture_output=True, text=True, timeout=300)
    err = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(err) == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert err[0].startswith("error: --set") and "engine.max_steps" in err[0] and "'lots'" in err[0]

    def boom(cfg):
        raise RuntimeError("disk on fire\nsecond line")

    assert stage_main([], "joint", tiny_config("joint_tiny"), JointStageConfig, boom) == 1
    assert _one_line_error(capsys) == "error: RuntimeError: disk on fire (rerun with FMRILM_DEBUG=1 for the traceback)"
    assert stage_main(["--debug"], "joint", tiny_config("joint_tiny"), JointStageConfig, boom) == 1
    assert "Traceback" in capsys.readouterr().err
