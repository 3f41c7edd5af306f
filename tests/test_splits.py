"""The run's splits file: decided once, deterministic, tamper-evident, checked against its datasets."""

import json
from collections import Counter

import pytest
from tiny_configs import tiny_config

from fmrilm.artifacts import check_recorded
from fmrilm.brain.splits import (
    SplitsConfig,
    decide_splits,
    read_splits,
    write_run_splits,
    write_splits,
)
from fmrilm.brain.store import Dataset
from fmrilm.cli import main as cli
from fmrilm.errors import InputError


@pytest.fixture(scope="module")
def rest_world(tmp_path_factory):
    from fmrilm.brain.rest_world import RestWorldConfig, generate_rest_population
    from fmrilm.config import load_config

    return generate_rest_population(load_config(RestWorldConfig, tiny_config("rest_world_tiny")),
                                    tmp_path_factory.mktemp("rest") / "rest")


def _cfg(task, rest, out="", **rules):
    return SplitsConfig(task_dataset=str(task), rest_dataset=str(rest), out=str(out), **rules)


def test_decided_once_deterministic_and_novel_stimuli_are_test(tiny_task_world, rest_world, tmp_path):
    cfg = _cfg(tiny_task_world, rest_world, tmp_path / "a.json", heldout_task_subjects=1, rest_fewshot_subjects=2)
    first = read_splits(write_run_splits(cfg))
    again = read_splits(write_splits(decide_splits(cfg), tmp_path / "b.json"))
    assert first.sha256 == again.sha256 and first.stimuli == again.stimuli
    other = read_splits(write_splits(decide_splits(_cfg(tiny_task_world, rest_world, seed=1)), tmp_path / "c.json"))
    assert other.sha256 != first.sha256
    task = Dataset(tiny_task_world)
    stimuli = task.table("stimuli")
    assert all(first.stimuli[r["key"]] == "test" for r in stimuli if r["novel"])
    familiar = [first.stimuli[r["key"]] for r in stimuli if not r["novel"]]
    counts = Counter(familiar)
    assert counts["val"] == round(0.1 * len(familiar)) and counts["test"] == round(0.2 * len(familiar))
    subjects = [r["subject"] for r in task.table("subjects")]
    assert first.heldout_task_subjects() == subjects[-1:]
    assert list(first.task_subject_indices(task, "train")) == list(range(len(subjects) - 1))
    assert Counter(first.rest_subjects.values())["fewshot"] == 2
    with pytest.raises(InputError, match="already exists"):
        write_run_splits(cfg)


def test_a_tampered_or_malformed_file_is_refused(tiny_task_world, tmp_path):
    path = write_splits(decide_splits(_cfg(tiny_task_world, "")), tmp_path / "s.json")
    data = json.loads(path.read_text())
    key = next(iter(data["task"]["stimuli"]))
    data["task"]["stimuli"][key] = "train" if data["task"]["stimuli"][key] != "train" else "test"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="sha256.*edited after it was written"):
        read_splits(path)
    # a stimulus listed twice (two splits for one id): refused even with a matching digest
    text = json.dumps({k: v for k, v in data.items() if k != "sha256"})
    duplicated = text.replace(f'"{key}": ', f'"{key}": "val", "{key}": ', 1)
    path.write_text(duplicated)
    with pytest.raises(InputError, match="listed twice"):
        read_splits(path)
    with pytest.raises(InputError, match="no splits file"):
        read_splits(tmp_path / "missing.json")


def test_a_file_that_does_not_match_the_dataset_is_refused(tiny_task_world, tmp_path):
    task = Dataset(tiny_task_world)
    payload = decide_splits(_cfg(tiny_task_world, ""))
    stimuli = dict(payload["task"]["stimuli"])
    first = next(iter(stimuli))
    del stimuli[first]
    stimuli["stim-999999"] = "train"
    bad = read_splits(write_splits({**payload, "task": {**payload["task"], "stimuli": stimuli}}, tmp_path / "x.json"))
    with pytest.raises(InputError, match=r"1 unknown id\(s\) \['stim-999999'\], 1 missing \['" + first):
        bad.stimulus_split(task)
    novel = next(r["key"] for r in task.table("stimuli") if r["novel"])
    moved = {**payload["task"]["stimuli"], novel: "train"}
    leaky = read_splits(write_splits({**payload, "task": {**payload["task"], "stimuli": moved}}, tmp_path / "y.json"))
    with pytest.raises(InputError, match=f"novel-category stimuli outside test.*{novel}"):
        leaky.check_task(task)
    unknown = {**payload["task"]["stimuli"], first: "holdout"}
    with pytest.raises(InputError, match="unknown split"):
        read_splits(write_splits({**payload, "task": {**payload["task"], "stimuli": unknown}}, tmp_path / "z.json"))


def test_bad_rules_are_refused_before_anything_is_written(tiny_task_world, tmp_path):
    for rules, field in (({"val_fraction": 0.6, "test_fraction": 0.5}, "val_fraction \\+ test_fraction"),
                         ({"test_fraction": 1.2}, "test_fraction"),
                         ({"heldout_task_subjects": 3}, "heldout_task_subjects")):
        with pytest.raises(InputError, match=field):
            write_run_splits(_cfg(tiny_task_world, "", tmp_path / "s.json", **rules))
        assert not (tmp_path / "s.json").exists()


def test_recorded_splits_must_match_naming_both(tiny_task_world, tmp_path):
    a = read_splits(write_splits(decide_splits(_cfg(tiny_task_world, "")), tmp_path / "a.json"))
    b = read_splits(write_splits(decide_splits(_cfg(tiny_task_world, "", seed=3)), tmp_path / "b.json"))
    check_recorded(a.record(), a, "the tokenizer", "config.json")
    with pytest.raises(InputError, match=rf"built on splits {a.sha256[:12]} \(.*a\.json\).*handed .*b\.json"):
        check_recorded(a.record(), b, "the tokenizer", "config.json")
    with pytest.raises(InputError, match="the tokenizer records no splits file"):
        check_recorded(None, b, "the tokenizer", "config.json")


def test_cli_writes_and_summarises(tiny_task_world, tmp_path, capsys):
    out = tmp_path / "splits.json"
    assert cli(["splits", "--task-dataset", str(tiny_task_world), "--config", tiny_config("splits_tiny"),
                "--out", str(out)]) == 0
    assert "sha256" in capsys.readouterr().out and read_splits(out).heldout_task_subjects()
    assert cli(["splits", "--task-dataset", str(tiny_task_world), "--out", str(out)]) == 2  # exists, no --force
