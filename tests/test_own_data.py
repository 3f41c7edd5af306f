"""A researcher's own NSD-format data through the whole pipeline: import → … → evaluation, and its bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from data_writers import write_nsd_dataset, write_rest_dir
from tiny_configs import tiny_config

from fmrilm.errors import InputError
from fmrilm.pipeline import load_pipeline_config, read_state, run_pipeline

# The shipped `nsd` pipeline at test size: its stages, with the tiny stage configs.
TINY = {"task_import": {}, "rest_import": {},
        "splits": {"config": tiny_config("splits_tiny"), "set": ["heldout_task_subjects=0"]},
        "tokenizer": {"config": tiny_config("tokenizer_tiny"), "set": ["tokenizer.input=task"]}, "task_tokens": {},
        "rest_tokens": {},
        "corpus": {"config": tiny_config("corpus_tiny"),
                   "set": ["samples.tasks=[caption,describe,text,phenotype,temporal]"]},
        "backbone": {"config": tiny_config("backbone_tiny")},
        "joint": {"config": tiny_config("joint_tiny"), "set": ["tasks=[text,caption,describe]"]},
        "retrieval": {"set": ["max_train_items=120", "embedder.hidden=32", "embedder.n_blocks=1",
                              "embedder.epochs=3"]},
        "instruct": {"config": tiny_config("instruct_tiny"), "set": ["tasks=[caption,phenotype]"]},
        "evaluation": {"config": tiny_config("eval_tiny")}}


def nsd_pipeline(tmp_path, source: dict, stages: dict | None = None) -> Path:
    path = tmp_path / "nsd_tiny.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "seed": 0, "source": source,
                                    "stages": stages or TINY}))
    return path


@pytest.fixture(scope="module")
def nsd_files(tmp_path_factory, atlas):
    root = tmp_path_factory.mktemp("nsd")
    betas, trials, captions, _ = write_nsd_dataset(root)
    rest = write_rest_dir(root / "rest", [p.name for p in atlas.parcels])
    return {"betas_dir": str(betas), "trials": str(trials), "captions": str(captions), "rest_dir": str(rest),
            "tr": 2.0}


@pytest.fixture(scope="module")
def nsd_run(nsd_files, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nsd_run")
    cfg = load_pipeline_config(str(nsd_pipeline(tmp, nsd_files)))
    return tmp / "run", run_pipeline(cfg)


def test_own_nsd_and_rest_data_run_end_to_end_with_a_report(nsd_run):
    run, report = nsd_run
    state = read_state(run)
    assert list(state) == list(TINY)
    task = json.loads((Path(state["task_import"]) / "manifest.json").read_text())
    assert task["source"] == "nsd" and task["n_trials"] == 140
    evaluation = json.loads((Path(state["evaluation"]) / "report.json").read_text())
    assert evaluation["captioning"]["model"]["semscore"] is not None
    # what needs simulator ground truth or labels the data lacks is skipped, with the reason in the report
    skipped = evaluation["skipped"]
    assert set(skipped) == {"ideal_observer", "vqa", "zero_shot", "subject_adaptation"}
    assert "ground truth" in skipped["ideal_observer"]
    # the own rest runs: phenotypes from participants.tsv, scored beside their base rates
    rest = json.loads((Path(state["rest_import"]) / "manifest.json").read_text())
    assert rest["n_subjects"] == 8 and rest["n_timepoints"] == 84
    assert {"sex", "age"} <= set(evaluation["rest"]["phenotype"])
    markdown = (Path(state["evaluation"]) / "report.md").read_text()
    assert "ground truth" in markdown and "skipped" in markdown
    assert "vqa_vs_shuffled" not in evaluation["targets"]
    assert "caption_semscore_vs_shuffled" in evaluation["targets"]


def test_pipeline_refuses_a_source_it_cannot_read_before_any_work(nsd_files, tmp_path):
    with pytest.raises(InputError, match="source.captions"):
        load_pipeline_config(str(nsd_pipeline(tmp_path, {**nsd_files, "captions": ""})))
    with pytest.raises(InputError, match="does not exist"):
        load_pipeline_config(str(nsd_pipeline(tmp_path, {**nsd_files, "trials": str(tmp_path / "nope.tsv")})))
    both = {**TINY, "task_world": {"config": tiny_config("task_world_tiny")}}
    with pytest.raises(InputError, match="both give the run its task dataset"):
        run_pipeline(load_pipeline_config(str(nsd_pipeline(tmp_path, nsd_files, both))))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("problem, match", [
    ("vertices", "vertices"), ("session", "betas_session03"), ("captions", "no caption")])
def test_bad_own_data_fails_before_anything_is_written(tmp_path, problem, match):
    betas, trials, captions, ids = write_nsd_dataset(tmp_path / "nsd", n_stimuli=12, trials_per_session=(10, 8, 6))
    if problem == "vertices":  # betas of another mesh than the atlas's
        import numpy as np
        from data_writers import write_nsd_session

        write_nsd_session(betas, 2, np.zeros((2 * 2562, 8), np.float32), hemi_sizes=(2562, 2562))
    elif problem == "session":  # the trial table names a session with no betas file
        for hemi in ("lh", "rh"):
            (betas / f"{hemi}.betas_session03.mgh").unlink()
    else:  # captions for stimulus ids the trial table does not know, none for those it does
        doc = json.loads(captions.read_text())
        for a in doc["annotations"]:
            a["image_id"] += 1
        captions.write_text(json.dumps(doc))
    source = {"betas_dir": str(betas), "trials": str(trials), "captions": str(captions)}
    task_only = {k: v for k, v in TINY.items() if not k.startswith("rest_")}
    with pytest.raises(InputError, match=match):
        run_pipeline(load_pipeline_config(str(nsd_pipeline(tmp_path, source, task_only))))
    assert not (tmp_path / "run" / "task_import").exists()


def test_a_stage_pointed_at_another_runs_artifact_is_refused(nsd_files, tmp_path):
    stages = {**TINY, "splits": {**TINY["splits"], "set": [*TINY["splits"]["set"], "task_dataset=/elsewhere"]}}
    with pytest.raises(InputError, match="another run"):
        run_pipeline(load_pipeline_config(str(nsd_pipeline(tmp_path, nsd_files, stages))))


def test_eval_stimulate_and_ask_find_the_runs_artifacts_through_its_stages_file(nsd_run, capsys):
    from fmrilm.cli import main
    from fmrilm.evaluation.commands import answer_question

    run, _ = nsd_run
    shutil.rmtree(run / "evaluation")  # written again by the command, where the pipeline put it
    assert main(["eval", "--run", str(run), "--config", tiny_config("eval_tiny"),
                 "--set", "n_items=4", "n_fewshot_items=2"]) == 0
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert report["items"]["captioned"] == 4 and report["protocol"]["splits"]["path"].endswith("splits.json")
    answer = answer_question(run, "0/0", "What is in the picture?", max_new_tokens=4)
    assert answer["subject"] == "subj01" and answer["reference_captions"]
    # stimulation needs a localizer and the simulator's truth: refused with the reason, nothing written
    capsys.readouterr()
    assert main(["stimulate", "--run", str(run), "--config", tiny_config("stimulation_tiny")]) != 0
    assert "error" in capsys.readouterr().err.lower()
    assert not (run / "stimulation").exists()


def test_the_shipped_nsd_config_reads_the_source_from_the_command_line(nsd_files, tmp_path):
    with pytest.raises(InputError, match="source.betas_dir"):
        load_pipeline_config("nsd")
    cfg = load_pipeline_config("nsd", [f"source.{k}={v}" for k, v in nsd_files.items() if k != "rest_dir"])
    assert cfg.source.betas_dir == nsd_files["betas_dir"]
    enabled = [name for name, spec in cfg.stages.items() if spec.enabled]
    assert enabled[0] == "task_import" and "task_world" not in enabled and "rest_import" not in enabled
