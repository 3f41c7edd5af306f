"""Configs have one source: no run path or demo location in a dataclass default, the demo's values in
the shipped YAMLs, targets in the evaluation config, every seeded draw a named stream in fmrilm.seeds,
and the test-size configs under tests/configs (issue 18, item 5)."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest
from tiny_configs import TINY_CONFIGS, tiny_config

import fmrilm
from fmrilm import seeds
from fmrilm.config import CONFIG_DIR, check_required, load_config, load_yaml
from fmrilm.errors import InputError

PACKAGE = Path(fmrilm.__file__).parent


def _config_dataclasses():
    """Every dataclass defined in a module of the package whose source declares one."""
    found = {}
    for info in pkgutil.walk_packages([str(PACKAGE)], "fmrilm."):
        path = PACKAGE.joinpath(*info.name.split(".")[1:])
        source = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
        if "@dataclass" not in source.read_text():
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == info.name:
                found[f"{info.name}.{obj.__qualname__}"] = obj
    return found


def _defaults(cls):
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            yield f.name, f.default
        elif f.default_factory is not dataclasses.MISSING:
            yield f.name, f.default_factory()


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _strings(getattr(value, f.name))


def test_no_config_default_is_a_run_path():
    classes = _config_dataclasses()
    assert {"fmrilm.evaluation.runner.EvalConfig", "fmrilm.pipeline.PipelineConfig",
            "fmrilm.stages.joint.JointStageConfig"} <= set(classes)
    bad = [f"{name}.{field} = {text!r}" for name, cls in classes.items() for field, value in _defaults(cls)
           for text in _strings(value) if "runs/" in text]
    assert bad == []


@pytest.mark.parametrize("module, cls, field", [
    ("fmrilm.evaluation.runner", "EvalConfig", "corpus"),
    ("fmrilm.stimulation.experiment", "StimulationConfig", "corpus"),
    ("fmrilm.retrieval.search", "SearchIndexConfig", "corpus"),
    ("fmrilm.pipeline", "PipelineConfig", "run_dir"),
    ("fmrilm.stages.tokenizer", "TokenizerStageConfig", "out_dir"),
    ("fmrilm.stages.backbone", "BackboneStageConfig", "out_dir"),
    ("fmrilm.stages.joint", "JointStageConfig", "out_dir"),
    ("fmrilm.stages.instruct", "InstructStageConfig", "out_dir"),
])
def test_an_empty_run_path_is_refused_naming_the_field(module, cls, field):
    config = getattr(importlib.import_module(module), cls)
    with pytest.raises(InputError, match=rf"field '{field}': required: {cls}\.{field} has no default"):
        check_required(config())


def test_evaluation_and_stimulation_refuse_a_missing_path_before_anything(tmp_path, monkeypatch):
    from fmrilm.evaluation.runner import EvalConfig, run_evaluation
    from fmrilm.stimulation.experiment import StimulationConfig, run_stimulation

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="eval config: field 'tokenizer': required"):
        run_evaluation(EvalConfig(corpus="c"))
    with pytest.raises(InputError, match="stimulation config: field 'out': required"):
        run_stimulation(StimulationConfig(corpus="c", tokenizer="t", model="m"))
    assert list(tmp_path.iterdir()) == []


def test_the_demo_yamls_state_the_run_paths_and_the_evaluation_targets():
    assert load_yaml("demo")["run_dir"] == "runs/demo"
    from fmrilm.evaluation.runner import EvalConfig
    from fmrilm.stimulation.experiment import StimulationConfig

    for name in ("eval_demo", tiny_config("eval_tiny")):
        targets = dataclasses.asdict(load_config(EvalConfig, name).targets)
        assert targets == {"caption_semscore_vs_shuffled": 1.7, "caption_semscore_minus_ridge": 0.0,
                           "caption_semscore_minus_retrieved_caption": 0.0, "vqa_vs_shuffled": 2.0,
                           "vqa_minus_text_only": 0.2, "zero_shot_naming": 0.3, "top1_minus_ridge": 0.0,
                           "general_text_perplexity_ratio_at_most": 1.1}
    assert all(v is None for v in dataclasses.asdict(EvalConfig().targets).values())  # none in code
    stim = load_config(StimulationConfig, "stimulation_demo")
    assert (stim.targets.spearman_min, stim.targets.specificity_min) == (0.9, 3.0)
    from fmrilm.evaluation.rest_fewshot import RestFewShotConfig

    few = load_config(RestFewShotConfig, "rest_fewshot_demo")
    few.validate()
    assert few.ks == (2, 4, 10) and few.lora.steps > 0 and few.out == "runs/demo/rest_fewshot"


def test_seed_stream_names_are_unique_but_for_the_listed_legacy_shares():
    by_id = {}
    for name, sid in seeds.STREAMS.items():
        by_id.setdefault(sid, []).append(name)
    shared = {sid: tuple(sorted(names)) for sid, names in by_id.items() if len(names) > 1}
    assert shared == {sid: tuple(sorted(names)) for sid, names in seeds.LEGACY_SHARED.items()}
    legacy = {n for names in seeds.LEGACY_SHARED.values() for n in names}
    assert legacy <= set(seeds.STREAMS)
    assert len(set(seeds.SPAWNED.values())) == len(seeds.SPAWNED)
    with pytest.raises(KeyError, match="known"):
        seeds.stream(0, "no.such.stream")


@pytest.mark.parametrize("name, ids, key", [
    ("eval.items", (), [5, 3]), ("lm.task_weights", (), [5, 3]), ("search.train_items", (), [5, 7]),
    ("corpus.shard_order", (1,), [5, 1, 7]), ("splits.subjects", (4,), [5, 2, 4]), ("splits.stimuli", (), [5, 1]),
    ("joint.direction", (), [5, 2]), ("eval.vqa_questions", (), [5, 11]), ("eval.fewshot_shots", (), [5, 13]),
    ("eval.adaptation_pool", (), [5, 17]), ("stimulation.patches", (), [5, 0]), ("stimulation.scans", (), [5, 1]),
    ("stimulation.bootstrap", (), [5, 2]), ("task_world.scenes", (), [5, 0]), ("task_world.trial_noise", (2, 3),
                                                                                [5, 5, 2, 3]),
])
def test_named_streams_draw_what_the_published_keys_drew(name, ids, key):
    assert seeds.stream_key(5, name, *ids) == key
    assert np.array_equal(seeds.stream(5, name, *ids).random(4), np.random.default_rng(key).random(4))


def test_spawned_streams_draw_what_the_rest_world_drew():
    for name, sid, ids in (("rest_world.subject", 0, (3,)), ("rest_world.site", 1, ()), ("rest_world.vertex", 2, (7,))):
        legacy = np.random.default_rng(np.random.SeedSequence(4, spawn_key=(sid, *ids)))
        assert np.array_equal(seeds.spawned_stream(4, name, *ids).random(4), legacy.random(4))


def test_every_seeded_draw_goes_through_the_registry():
    # counter-keyed draws (epoch, k) are documented in fmrilm.seeds and stay where they are
    allowed = {"seeds.py", "corpus/reader.py", "tokenizer/adapt.py"}
    found = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if re.search(r"default_rng\(\[", p.read_text()) and str(p.relative_to(PACKAGE)) not in allowed]
    assert found == []


def test_test_size_configs_live_under_tests_only():
    assert not list(CONFIG_DIR.glob("*_tiny.yaml"))
    assert {p.stem for p in TINY_CONFIGS.glob("*.yaml")} >= {"eval_tiny", "pipeline_tiny", "splits_tiny"}
    for path in PACKAGE.rglob("*.py"):  # the package never loads a test config by name
        assert not re.search(r"[\"'][a-z_]+_tiny[\"']", path.read_text()), path


def test_the_tiny_pipeline_finds_its_stage_configs_beside_it(tmp_path, monkeypatch):
    from fmrilm.pipeline import load_pipeline_config

    monkeypatch.chdir(tmp_path)  # from anywhere
    cfg = load_pipeline_config(tiny_config("pipeline_tiny"))
    assert Path(cfg.stages["evaluation"].config) == TINY_CONFIGS / "eval_tiny.yaml"
    assert all(Path(s.config).is_file() for s in cfg.stages.values() if s.config)
    assert load_pipeline_config("demo").stages["evaluation"].config == "eval_demo"  # shipped names stay names


def test_toy_split_rules_are_the_tiny_splits():
    from fmrilm.corpus.toy import TOY_SPLIT_RULES

    tiny = {k: v for k, v in load_yaml(tiny_config("splits_tiny")).items() if k != "seed"}
    assert dict(r.split("=") for r in TOY_SPLIT_RULES) == {k: str(v) for k, v in tiny.items()}
