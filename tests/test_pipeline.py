"""The main job at test size: every stage runs once, finished stages are skipped, --force redoes."""

import json
import shutil
from pathlib import Path

import pytest
from tiny_configs import tiny_config

from fmrilm.brain.store import Dataset
from fmrilm.corpus.reader import read_split
from fmrilm.errors import InputError
from fmrilm.pipeline import STAGES, load_pipeline_config, read_state, run_pipeline


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    cfg = load_pipeline_config(tiny_config("pipeline_tiny"), [f"run_dir={run_dir}"])
    report = run_pipeline(cfg)
    return cfg, run_dir, report


def test_every_configured_stage_ran_in_order_and_left_an_artifact(tiny_run):
    cfg, run_dir, report = tiny_run
    state = read_state(run_dir)
    expected = [name for name in STAGES if name in cfg.stages]
    assert list(state) == expected and list(report["timings_s"]) == expected
    for path in state.values():
        assert Path(path).exists()
    corpus = json.loads((run_dir / "corpus" / "corpus.json").read_text())
    assert corpus["tokenizer"]["fingerprint"]  # one tokenizer for task and rest tokens
    # stage 3 trained with retrieval-augmented prompts; its export carries the retriever, which
    # Captioner.load restores beside the model, so the evaluation also scores the ablation without it
    assert (Path(state["instruct"]) / "retriever" / "retriever.json").is_file()
    report = json.loads((Path(state["evaluation"]) / "report.json").read_text())
    assert {"no_retrieval", "retrieved_caption"} <= set(report["captioning"]["conditions"])
    # rest patches (the rest_tokenizer stage, carried as the tokenizer's rest companion): the corpus
    # holds rest ids after the task codes, and next-patch prediction is scored on synthetic held-out
    # subjects and on the real run beside its bounds
    tokenizer = corpus["tokenizer"]
    assert tokenizer["rest"]["offset"] == tokenizer["codebook_size"]
    rest_tokens = Dataset(state["rest_tokens"], kind="tokens")
    assert rest_tokens.manifest["rest_input"] == "patch"
    assert rest_tokens.array("tokens").min() >= tokenizer["rest"]["offset"]
    for section in ("temporal", "temporal_real_run"):
        scores = report["rest"][section]
        assert scores["unit"].startswith("patch") and {"persistence", "linear_ar", "tokenizer_ceiling"} <= set(scores)
        assert scores["decoding"] == "expected patch" and scores["model"] is not None and "model_greedy" in scores


def test_few_shot_phenotypes_learn_from_held_out_runs_only_and_answer_test_subjects(tiny_run):
    _, run_dir, _ = tiny_run
    state = read_state(run_dir)
    report = json.loads((Path(state["rest_fewshot"]) / "report.json").read_text())
    splits = json.loads(Path(state["splits"]).read_text())["rest"]["subjects"]
    sex = report["phenotypes"]["sex"]
    draw = sex["k"]["2"]["draws"][0]
    assert len(draw["examples"]) == 2 and {splits[s] for s in draw["examples"]} == {"fewshot"}
    # one query / pool run per subject with a shot-free sex sample (the tiny corpus gives half its samples a shot)
    samples = {split: read_split(state["corpus"], split, ("phenotype",), progress=False)[0]
               for split in ("test", "fewshot")}
    unshot = {split: {s["json"]["subject"] for s in found if s["json"]["phenotype"] == "sex" and not s["json"]["shots"]}
              for split, found in samples.items()}
    assert sex["n_queries"] == min(3, len(unshot["test"])) and sex["pool"] == len(unshot["fewshot"]) >= 2
    assert 0 <= sex["zero_shot"]["accuracy"] <= 1
    for condition in ("fc_logistic", "in_context", "lora"):
        assert 0 <= draw[condition]["accuracy"] <= 1, condition
    assert len(draw["lora"]["train_loss"]) == 2 and draw["in_context"]["example_windows"] >= 1
    # age: k runs spread over the range, answered as digits, beside the FC ridge and the examples' mean age
    age = report["phenotypes"]["age"]
    draw = age["k"]["2"]["draws"][0]
    assert {splits[s] for s in draw["examples"]} == {"fewshot"} and age["constant_mean"]["mae"] >= 0
    for condition in ("fc_ridge", "examples_mean", "in_context", "lora"):
        assert draw[condition]["mae"] >= 0, condition
    assert sum(draw["in_context"]["answers"].values()) == age["n_queries"]  # one answer per query (3 < 8 kept)
    markdown = (Path(state["rest_fewshot"]) / "report.md").read_text()
    assert "## sex" in markdown and "## age" in markdown and "FC ridge MAE" in markdown


def test_retrieved_captions_prefix_task_scans_only(tiny_run):
    from fmrilm.corpus.reader import read_split
    from fmrilm.llm.generate import generate
    from fmrilm.retrieval.caption_prompts import PREFIX
    from fmrilm.retrieval.captioner import Captioner
    from fmrilm.stages.instruct import instruction_encoder

    _, run_dir, _ = tiny_run
    state = read_state(run_dir)
    captioner = Captioner.load(state["instruct"])
    model = captioner.model
    assert not hasattr(model, "prompt_retriever")  # the LM knows nothing of retrieval
    samples, _ = read_split(state["corpus"], "train", ["caption", "phenotype"], progress=False)
    task = next(s for s in samples if s["json"]["source"] == "task" and not s["json"]["shots"])
    rest = next(s for s in samples if s["json"]["source"] == "rest" and not s["json"]["shots"])
    encode = instruction_encoder(captioner, [task, rest])
    prompts = [model.tokenizer.decode([t for t in encode(s, i)["input_ids"] if t < model.vocab.n_text])
               for i, s in enumerate([task, rest])]
    assert PREFIX.strip() in prompts[0] and PREFIX.strip() not in prompts[1]
    # generation: retrieve=False prompts exactly as the model alone does, retrieve=True with the prefix
    scan, prompt = [task["tokens.npy"]], task["json"]["prompt"]
    plain = captioner.generate(scan, [prompt], retrieve=False, max_new_tokens=5)
    assert plain == generate(model, scan, [prompt], max_new_tokens=5)
    (augmented,) = captioner.prompts(scan, [prompt])[1]
    assert augmented.startswith(PREFIX) and captioner.prompts(scan, [prompt], retrieve=False)[1] == [prompt]


def test_every_fitted_component_obeys_the_one_splits_file(tiny_run):
    """Leakage guard: tokenizer, corpus, retriever and LM exports were built on the run's splits and
    saw no test stimulus, no held-out subject and no held-out caption."""
    from fmrilm.brain.splits import read_splits
    from fmrilm.brain.store import Dataset
    from fmrilm.corpus.heldout import load_heldout
    from fmrilm.corpus.reader import read_split

    _, run_dir, _ = tiny_run
    state = read_state(run_dir)
    splits = read_splits(state["splits"])
    task = Dataset(state["task_world"])
    stimuli = task.table("stimuli")
    heldout = set(splits.heldout_task_subjects())
    assert heldout  # the tiny job holds one task subject out
    # tokenizer: train stimuli of train subjects only, recorded in its config.json and its tokens
    (tok_dir,) = Path(state["tokenizer"]).parent.glob("tokenizer_*")
    provenance = json.loads((tok_dir / "config.json").read_text())["provenance"]
    assert provenance["splits"]["sha256"] == splits.sha256
    assert {splits.stimuli[k] for k in provenance["train_stimuli"]} == {"train"}
    assert not heldout & set(provenance["train_subjects"])
    for tokens in ("task_tokens", "rest_tokens", "real_rest_tokens"):
        assert Dataset(state[tokens]).manifest["tokenizer"]["splits"]["sha256"] == splits.sha256
    # corpus: recorded splits; no train sample of a non-train stimulus or a held-out subject; no
    # val/test caption among the training texts, which do name the novel categories (text scenes)
    corpus = json.loads((Path(state["corpus"]) / "corpus.json").read_text())
    assert corpus["run_splits"]["sha256"] == splits.sha256
    samples, _ = read_split(state["corpus"], "train", ("caption", "vqa", "describe", "text"), progress=False)
    brain = [s["json"] for s in samples if s["json"]["task"] != "text"]
    assert brain and all(splits.stimuli[stimuli[m["stimulus"]]["key"]] == "train" for m in brain
                         if m["stimulus"] is not None)
    assert not heldout & {m["subject"] for m in brain}
    held_captions = {c for r in stimuli if splits.stimuli[r["key"]] != "train" for c in r["captions"]}
    texts = {s["json"]["answer"] for s in samples if s["json"]["task"] == "text"}
    assert held_captions and not held_captions & texts
    novel = [w for c in task.manifest["novel_categories"] for w in (c, c + "s")]
    assert any(any(w in t.split() for w in novel) for t in texts)
    # retriever: embedder trained on the train subjects; LM exports record the same splits
    search = json.loads((Path(state["retrieval"]) / "search.json").read_text())
    assert search["splits"]["sha256"] == splits.sha256 and not heldout & set(search["train_subjects"])
    for stage in ("backbone", "joint", "instruct"):
        assert json.loads((Path(state[stage]) / "stage.json").read_text())["splits"]["sha256"] == splits.sha256
    # the evaluation scores test once per run; recipes are chosen on val, through the same code
    report = json.loads((Path(state["evaluation"]) / "report.json").read_text())
    assert report["protocol"]["scored_split"] == "test" and report["protocol"]["splits"]["sha256"] == splits.sha256
    for split in ("val", "test"):
        held = load_heldout(state["corpus"], split=split)
        assert list(held.test_stimuli) == list(splits.stimulus_indices(task, split))
        assert {s["json"]["split"] for s in held.test_samples} <= {split}
    with pytest.raises(InputError, match="split"):
        load_heldout(state["corpus"], split="train")


def test_a_stage_handed_another_splits_file_refuses_before_any_work(tiny_run, tmp_path):
    from fmrilm.brain.splits import SplitsConfig, write_run_splits
    from fmrilm.evaluation.runner import EvalConfig, run_evaluation
    from fmrilm.retrieval.search import SearchIndexConfig, build_search_indexes

    _, run_dir, _ = tiny_run
    state = read_state(run_dir)
    other = write_run_splits(SplitsConfig(task_dataset=state["task_world"], rest_dataset=state["rest_world"],
                                          out=str(tmp_path / "other.json"), seed=5))
    with pytest.raises(InputError, match=r"the corpus .* was built on splits .* handed .*other\.json"):
        build_search_indexes(SearchIndexConfig(corpus=state["corpus"], tokenizer=state["tokenizer"],
                                               splits=str(other), out=str(tmp_path / "search")))
    with pytest.raises(InputError, match="was built on splits"):
        run_evaluation(EvalConfig(corpus=state["corpus"], tokenizer=state["tokenizer"], model=state["instruct"],
                                  splits=str(other), out=str(tmp_path / "eval")))
    assert not (tmp_path / "search").exists() and not (tmp_path / "eval").exists()


def test_a_second_run_skips_finished_stages_and_force_redoes_the_rest(tiny_run):
    cfg, run_dir, _ = tiny_run
    assert run_pipeline(cfg)["timings_s"] == {}
    redone = run_pipeline(cfg, force=["corpus"])["timings_s"]
    configured = [name for name in STAGES if name in cfg.stages]
    assert list(redone) == configured[configured.index("corpus"):]


def test_a_moved_or_copied_run_skips_finished_stages_and_uses_its_own_artifacts(tiny_run, tmp_path):
    from fmrilm.llm.checkpoint import load_brainlm

    _, run_dir, _ = tiny_run
    assert not any(Path(p).is_absolute() for p in json.loads((run_dir / "stages.json").read_text()).values())
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    report = run_pipeline(load_pipeline_config(tiny_config("pipeline_tiny"), [f"run_dir={copy}"]))
    assert report["timings_s"] == {}  # nothing recomputed
    assert all(Path(p).resolve().is_relative_to(copy.resolve()) for p in report["artifacts"].values())
    model = load_brainlm(report["artifacts"]["instruct"])  # the adapter's base: the copy's own backbone
    assert Path(model.base_identity["path"]).is_relative_to(copy.resolve())
    hidden = run_dir.with_name("hidden")
    run_dir.rename(hidden)  # moved: nothing may reach back into the original
    try:
        assert run_pipeline(load_pipeline_config(tiny_config("pipeline_tiny"), [f"run_dir={copy}"]))["timings_s"] == {}
        load_brainlm(report["artifacts"]["instruct"])
    finally:
        hidden.rename(run_dir)


def test_lm_records_point_into_their_run_relatively_and_follow_it_when_moved(tiny_run, tmp_path, capsys):
    """stage.json, peft's adapter_config.json, retriever.json, search.json and corpus.json name artifacts
    of their own run relative to themselves: the run renamed (nothing left at the old place) still
    checks, loads, searches and answers from its own artifacts."""
    from fmrilm.artifacts import check_compatible, read_corpus_record
    from fmrilm.cli import main as cli
    from fmrilm.corpus.heldout import load_heldout
    from fmrilm.retrieval.caption_prompts import CaptionRetriever
    from fmrilm.retrieval.captioner import Captioner
    from fmrilm.retrieval.search import embed_scan
    from fmrilm.stages import lm_common

    _, run_dir, _ = tiny_run
    rel = {stage: Path(p).relative_to(run_dir) for stage, p in read_state(run_dir).items()}
    instruct = run_dir / rel["instruct"]
    stage = json.loads((instruct / "stage.json").read_text())
    recorded = [stage["tokenizer"]["path"], stage["from"], stage["retrieval"], stage["splits"]["path"]]
    adapter = json.loads((instruct / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    source = json.loads((instruct / "retriever" / "retriever.json").read_text())["source"]
    search = json.loads((run_dir / rel["retrieval"] / "search.json").read_text())
    corpus = json.loads((run_dir / rel["corpus"] / "corpus.json").read_text())
    recorded += [search["tokenizer"], search["task_dataset"], corpus["run_splits"]["path"], *corpus["inputs"].values()]
    assert not any(Path(p).is_absolute() for p in [*recorded, adapter, source]), [*recorded, adapter, source]
    assert (instruct / "adapter" / adapter).resolve() == (run_dir / rel["backbone"]).resolve()
    moved = tmp_path / "moved"
    run_dir.rename(moved)
    try:
        assert not run_dir.exists()
        at = {stage: moved / p for stage, p in rel.items()}
        info = lm_common.read_stage(at["instruct"], "instruct")
        assert Path(info["tokenizer"]["path"]) == at["tokenizer"].resolve()
        assert [Path(info[k]) for k in ("from", "retrieval")] == [at["joint"].resolve(), at["retrieval"].resolve()]
        assert Path(info["splits"]["path"]) == at["splits"].resolve()
        assert Path(lm_common.read_stage(at["joint"], "joint")["tokenizer"]["path"]) == at["tokenizer"].resolve()
        check_compatible(at["tokenizer"], at["instruct"], at["corpus"], at["retrieval"])
        check_compatible(search_dir=at["retrieval"])  # the tokenizer search.json names
        inputs = read_corpus_record(at["corpus"])["inputs"]
        assert Path(inputs["task_dataset"]) == at["task_world"].resolve()
        assert list(load_heldout(at["corpus"]).test_stimuli)  # its recorded splits and task world
        assert embed_scan(at["retrieval"], "0/0").shape == (1, 384)
        assert CaptionRetriever.from_search_dir(at["retrieval"]).source == str(at["retrieval"].resolve())
        captioner = Captioner.load(at["instruct"])
        assert Path(captioner.model.base_identity["path"]) == at["backbone"].resolve()
        assert Path(captioner.retriever.source) == at["retrieval"].resolve()
        assert cli(["ask", "--run", str(moved), "--scan", "0/0", "--max-new-tokens", "2", "--json", "What?"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["answer"] is not None
    finally:
        moved.rename(run_dir)


def test_recorded_paths_are_relative_inside_a_run_and_absolute_outside(tmp_path, monkeypatch):
    from fmrilm.artifacts import read_stage_record, stage_record
    from fmrilm.io import RUN_MARKER, portable_path, recorded_path

    run, models = (tmp_path / "run").resolve(), (tmp_path / "models" / "llama").resolve()
    export = run / "joint" / "stage2_joint-x"
    export.mkdir(parents=True)
    tok = run / "tokenizer" / "tok"
    assert portable_path(tok, export) == str(tok)  # no pipeline run here: absolute, as before
    (run / RUN_MARKER).write_text("run_dir: run\n")
    assert portable_path(tok, export) == "../../tokenizer/tok"
    assert portable_path(models, export) == str(models)  # an external input stays absolute
    assert recorded_path("../../tokenizer/tok", export) == str(tok)
    # older versions wrote paths relative to the working directory, as given on the command line
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo" / "task_world").mkdir(parents=True)
    assert recorded_path("runs/demo/task_world", export) == str((tmp_path / "runs/demo/task_world").resolve())
    info = {"stage": "joint", "tokenizer": {"path": str(tok), "fingerprint": "f"}, "backbone_path": str(models),
            "retrieval": None}
    written = stage_record(info, export)
    assert written["tokenizer"] == {"path": "../../tokenizer/tok", "fingerprint": "f"}
    assert written["backbone_path"] == str(models) and info["tokenizer"]["path"] == str(tok)  # `info` untouched
    (export / "stage.json").write_text(json.dumps(written))
    assert read_stage_record(export) == info
    (export / "stage.json").write_text(json.dumps(info))  # written by an older version: absolute paths
    assert read_stage_record(export) == info


def test_a_stages_file_pointing_outside_the_run_warns(tmp_path):
    elsewhere = tmp_path / "original" / "task_world"
    elsewhere.mkdir(parents=True)
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "stages.json").write_text(json.dumps({"task_world": str(elsewhere)}))
    with pytest.warns(RuntimeWarning, match="'task_world' points outside this run"):
        assert read_state(tmp_path / "copy") == {"task_world": str(elsewhere)}


def test_unknown_stage_names_are_refused(tiny_run):
    cfg, _, _ = tiny_run
    with pytest.raises(InputError, match="unknown stage"):
        run_pipeline(cfg, force=["tokeniser"])


def test_a_run_starts_by_removing_leftovers_of_killed_writers(tmp_path, capsys, dead_pid):
    from fmrilm.pipeline import PipelineConfig

    leftover = tmp_path / "run" / f"task_world.partial-{dead_pid}"
    leftover.mkdir(parents=True)
    run_pipeline(PipelineConfig(run_dir=str(tmp_path / "run")))
    assert not leftover.exists()
    assert f"removed {leftover}, left by a killed run" in capsys.readouterr().out


def test_stages_json_of_older_versions_is_still_read(tmp_path, monkeypatch):
    """Older versions wrote paths relative to the working directory; they still resolve inside the run."""
    from fmrilm.pipeline import read_state, write_state

    monkeypatch.chdir(tmp_path)
    run = Path("runs") / "old"
    (run / "corpus").mkdir(parents=True)
    (run / "stages.json").write_text(json.dumps({"corpus": "runs/old/corpus", "gone": "runs/old/gone"}))
    assert read_state(run) == {"corpus": str(Path("runs/old/corpus"))}
    write_state(run, read_state(run))  # rewritten relative to the run
    assert json.loads((run / "stages.json").read_text()) == {"corpus": "corpus"}
    assert read_state(run) == {"corpus": str(run / "corpus")}


@pytest.mark.slow
def test_lm_stages_run_on_two_cpu_ranks_under_the_launcher(tiny_run, tmp_path, capfd):
    _, run_dir, _ = tiny_run
    copy = tmp_path / "ranks"
    shutil.copytree(run_dir, copy)
    later = ("real_rest", "real_rest_tokens", "evaluation", "stimulation", "rest_fewshot")
    cfg = load_pipeline_config(tiny_config("pipeline_tiny"), [f"run_dir={copy}", "stages.joint.nproc=2",
                                                              "stages.instruct.nproc=2",
                                                              *[f"stages.{s}.enabled=false" for s in later]])
    report = run_pipeline(cfg, force=["joint"])
    assert set(report["timings_s"]) == {"joint", "retrieval", "instruct"}
    launched = [line for line in capfd.readouterr().out.splitlines()
                if "deepspeed --num_gpus 2 --master_port" in line and "--module fmrilm.stages." in line]
    assert len(launched) == 2 and all("_launch_config.yaml" in line for line in launched)
    for stage in ("joint", "instruct"):
        assert (copy / stage / f"{stage}_launch_config.yaml").is_file()
        assert (copy / read_state(copy)[stage] / "stage.json").is_file()


def test_ranks_are_refused_for_stages_that_run_in_process_before_any_work(tmp_path):
    for bad in ("stages.corpus.nproc=2", "stages.joint.nproc=0"):
        cfg = load_pipeline_config(tiny_config("pipeline_tiny"), [f"run_dir={tmp_path / 'run'}", bad])
        with pytest.raises(InputError, match="nproc"):
            run_pipeline(cfg)
        assert not (tmp_path / "run" / "task_world").exists()


def test_commands_find_a_runs_artifacts_through_its_stages_file(tiny_run, tmp_path):
    from fmrilm.evaluation.commands import answer_question

    _, run_dir, _ = tiny_run
    copy = tmp_path / "moved"
    shutil.copytree(run_dir, copy)
    (copy / "instruct").rename(copy / "instruct_v2")  # a stage that wrote elsewhere: only stages.json knows
    stages = json.loads((copy / "stages.json").read_text())
    stages["instruct"] = stages["instruct"].replace("instruct/", "instruct_v2/", 1)
    (copy / "stages.json").write_text(json.dumps(stages))
    scan = "sub-01/" + json.loads((copy / "task_world" / "stimuli.jsonl").read_text().splitlines()[0])["key"]
    assert isinstance(answer_question(copy, scan, "What is it?", max_new_tokens=2)["answer"], str)
    del stages["instruct"]
    (copy / "stages.json").write_text(json.dumps(stages))
    with pytest.raises(InputError, match="instruct.*not a finished stage of this run"):
        answer_question(copy, scan, "What is it?", max_new_tokens=2)
