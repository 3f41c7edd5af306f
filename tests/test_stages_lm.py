"""Language-model stages 0 → 2 → 3 on a tiny corpus: end to end, kill-and-resume, 2 CPU ranks, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny_configs import tiny_config

from fmrilm.brain.atlas import Atlas
from fmrilm.config import load_config
from fmrilm.corpus.build import CorpusConfig, build_corpus
from fmrilm.corpus.toy import write_toy_inputs
from fmrilm.engine import TrainEngine
from fmrilm.errors import InputError
from fmrilm.io import read_json, write_json
from fmrilm.stages import backbone, commands, instruct, joint, lm_common

TOY_CODEBOOK = 512  # write_toy_tokens' default; its fingerprint is "toy-<seed>-<K>"


def fake_tokenizer(path, codebook: int = TOY_CODEBOOK, fingerprint: str = f"toy-0-{TOY_CODEBOOK}"):
    """A stage-1 tokenizer directory as far as the LM stages read it: config.json + code embeddings."""
    path.mkdir(parents=True, exist_ok=True)
    table = torch.randn(codebook, 16, generator=torch.Generator().manual_seed(3))
    save_file({"code_embeddings": table}, str(path / lm_common.CODE_EMBEDDINGS_FILE))
    write_json(path / "config.json", {"format": lm_common.TOKENIZER_FORMAT, "fingerprint": fingerprint,
                                      "atlas": {"n_parcels": 100},  # the toy inputs' Schaefer-100
                                      "tokenizer": {"quantizer": {"kind": "vq", "codebook_size": codebook,
                                                                  "levels": 1}}})
    return path


def local_backbone(path):
    """A small HF causal-LM directory unrelated to the stage-0 export (another base)."""
    from fmrilm.llm.backbone import bootstrap_backbone
    from fmrilm.llm.config import BootstrapConfig

    texts = ["a zebra in the park", "two dogs near a field", "the boat in the harbour"] * 10
    return bootstrap_backbone(texts, path, BootstrapConfig(vocab_size=330, hidden_size=64, num_layers=1,
                                                           num_heads=2, intermediate_size=128, seed=1))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Corpus, tokenizer and stage-0 backbone shared by the tests (stage 0 runs once, in-process)."""
    root = tmp_path_factory.mktemp("lm")
    paths = write_toy_inputs(root / "inputs", Atlas.schaefer(100))
    corpus_cfg = load_config(CorpusConfig, tiny_config("corpus_tiny"), [f"{k}={v}" for k, v in paths.items()])
    build_corpus(corpus_cfg, root / "corpus", progress=False)
    stage0 = backbone.run(load_config(backbone.BackboneStageConfig, tiny_config("backbone_tiny"),
                                      [f"corpus={root / 'corpus'}", f"out_dir={root / 'run'}"]))
    return {"root": root, "corpus": root / "corpus", "tokenizer": fake_tokenizer(root / "tokenizer"),
            "backbone": stage0}


def joint_cfg(world, out, *extra):
    return load_config(joint.JointStageConfig, tiny_config("joint_tiny"),
                       [f"out_dir={out}", f"corpus={world['corpus']}", f"tokenizer={world['tokenizer']}",
                        f"llm.backbone={world['backbone']}", *extra])


def log_rows(train_dir):
    return [json.loads(line) for line in (train_dir / "train_log.jsonl").read_text().splitlines()]


def test_stage0_bootstraps_an_hf_backbone_that_knows_the_novel_category(world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stage0 = world["backbone"]
    assert stage0.name == "stage0_backbone-" + backbone.bootstrap_tag(
        load_config(backbone.BackboneStageConfig, tiny_config("backbone_tiny")).bootstrap)
    info = lm_common.read_stage(stage0, "backbone")
    assert info["bootstrapped"] and info["steps"] == 4
    # the neighbour-prompted captions (caption_neighbours: 3, weight 2) joined the plain texts
    assert info["mixture"]["text"] > 0 and info["mixture"]["caption_neighbours"] > 0
    AutoModelForCausalLM.from_pretrained(stage0, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(stage0, local_files_only=True)
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("a zebra", add_special_tokens=False)["input_ids"])
    assert not any(p.startswith("<0x") for p in pieces)  # no byte fallback: learnt from the novel captions
    log = log_rows(stage0.parent / f"train-{stage0.name}")
    assert [r["step"] for r in log] == [2, 4] and all(r["loss"] > 0 for r in log)


def test_stage0_logs_skipped_corrupt_shards_and_fails_above_the_limit(world, tmp_path):
    from fmrilm.corpus.shards import load_manifest

    corpus = tmp_path / "corpus"
    shutil.copytree(world["corpus"], corpus)
    shards = load_manifest(corpus, "train")["shards"]
    (corpus / shards[-1]["name"]).write_bytes(b"not a tar file")

    def cfg(limit):
        return load_config(backbone.BackboneStageConfig, tiny_config("backbone_tiny"), [
            f"corpus={corpus}", f"out_dir={tmp_path / 'run'}", f"engine.max_skipped_shards={limit}"])

    with pytest.warns(RuntimeWarning, match="skipped shard"), \
            pytest.raises(InputError, match=f"1 of {len(shards)} shards unreadable"):
        backbone.run(cfg(0))
    with pytest.warns(RuntimeWarning, match="skipped shard"):
        export = backbone.run(cfg(0.99))
    rows = log_rows(export.parent / f"train-{export.name}")
    assert [r["step"] for r in rows] == [2, 4] and all(r["skipped_shards"] == 1 for r in rows)


def test_stages_2_and_3_end_to_end_then_rerun_is_a_no_op(world, tmp_path, capsys):
    from fmrilm.llm.checkpoint import load_brainlm
    from fmrilm.llm.generate import generate

    stage2 = joint.run(joint_cfg(world, tmp_path))
    assert stage2.name == f"stage2_joint-{lm_common.read_stage(world['backbone'])['backbone_tag']}-vqK512L1-step000006"
    info = lm_common.read_stage(stage2, "joint")
    assert info["steps"] == 6 and info["tokenizer"]["fingerprint"] == "toy-0-512"
    rows = log_rows(tmp_path / ("train-" + stage2.name.rsplit("-", 1)[0]))
    seen = {k for r in rows for k in r if k.startswith("loss_")}
    assert {"loss_text", "loss_brain", "loss_brain_to_text", "loss_text_to_brain"} <= seen
    assert all(r["skipped_shards"] == 0 for r in rows)

    stage3 = instruct.run(load_config(instruct.InstructStageConfig, tiny_config("instruct_tiny"),
                                      [f"out_dir={tmp_path}", f"corpus={world['corpus']}", f"model={stage2}"]))
    assert stage3.name == stage2.name.replace("stage2_joint", "stage3_instruct").replace("step000006", "step000004")
    report = read_json(stage3 / "eval.json")
    assert report["n"] > 0 and 0.0 <= report["accuracy"] <= 1.0
    assert sum(q["n"] for q in report["by_question"].values()) == report["n"]
    model = load_brainlm(stage3)
    text = generate(model, [None], ["Describe a dog."], max_new_tokens=4)
    assert isinstance(text[0], str)

    marker = (stage2 / lm_common.STAGE_FILE).stat().st_mtime_ns
    capsys.readouterr()
    assert joint.run(joint_cfg(world, tmp_path)) == stage2
    assert "already finished" in capsys.readouterr().out
    assert (stage2 / lm_common.STAGE_FILE).stat().st_mtime_ns == marker


class Killed(Exception):
    """Stands in for a kill signal: raised inside the training loop after a checkpoint."""


def test_joint_kill_and_resume_reproduces_the_uninterrupted_loss_curve(world, tmp_path, monkeypatch):
    straight = joint.run(joint_cfg(world, tmp_path / "straight"))
    expected = log_rows(tmp_path / "straight" / ("train-" + straight.name.rsplit("-", 1)[0]))

    real_step = TrainEngine.train_step
    calls = []

    def dies_at_step_4(self, batch):
        calls.append(1)
        if len(calls) == 4:  # after the step-3 checkpoint (checkpoint_every: 3)
            raise Killed
        return real_step(self, batch)

    monkeypatch.setattr(TrainEngine, "train_step", dies_at_step_4)
    with pytest.raises(Killed):
        joint.run(joint_cfg(world, tmp_path / "resumed"))
    monkeypatch.setattr(TrainEngine, "train_step", real_step)
    torch.manual_seed(1234)  # the ambient RNG at restart must not matter
    resumed = joint.run(joint_cfg(world, tmp_path / "resumed"))
    train_dir = tmp_path / "resumed" / ("train-" + resumed.name.rsplit("-", 1)[0])
    got = [r for r in log_rows(train_dir) if "event" not in r]
    assert [r for r in log_rows(train_dir) if "event" in r] == [
        {"event": "resumed", "step": 3, "checkpoint": str(train_dir / "checkpoints" / "step-000003")}]
    assert [r["step"] for r in got] == [r["step"] for r in expected] == list(range(1, 7))
    for a, b in zip(got, expected, strict=True):
        assert {k for k in a if k.startswith("loss")} == {k for k in b if k.startswith("loss")}
        for key in (k for k in a if k.startswith("loss")):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["step"], key)


@pytest.mark.slow
def test_two_cpu_ranks_train_stage2_under_the_deepspeed_launcher(world, tmp_path):
    overrides = [f"out_dir={tmp_path}", f"corpus={world['corpus']}", f"tokenizer={world['tokenizer']}",
                 f"llm.backbone={world['backbone']}", "engine.max_steps=3", "engine.checkpoint_every=3"]
    cmd = commands.launch_command("2", tiny_config("joint_tiny"), overrides, nproc=2, master_port=29547)
    env = commands.launch_env({**os.environ, "OMP_NUM_THREADS": "1"})
    assert env["DS_ACCELERATOR"] == ("cuda" if torch.cuda.is_available() else "cpu")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    export = next(tmp_path.glob("stage2_joint-*-step000003"))
    assert lm_common.read_stage(export, "joint")["world_size"] == 2
    train_dir = next(tmp_path.glob("train-stage2_joint-*"))
    assert [r["step"] for r in log_rows(train_dir)] == [1, 2, 3]
    assert (train_dir / "checkpoints" / "latest").read_text().strip() == "step-000003"


PHASE_ONE = ["llm.lora.enabled=false", "llm.freeze_backbone=true", "llm.train_norms=true"]
ADD_LORA = ["add_lora.enabled=true", "add_lora.rank=4", "add_lora.alpha=8", "add_lora.dropout=0.0"]


def test_cortext_phases_frozen_stage2_then_lora_stage3_with_a_plain_hf_merged_export(world, tmp_path):
    """The demo's recipe on the tiny backbone: stage 2 as phase 1 (frozen backbone referenced, not
    copied), stage 3 adds LoRA, and its merged/ loads with plain transformers."""
    from transformers import AutoModelForCausalLM

    from fmrilm.llm.checkpoint import load_brainlm

    stage2 = joint.run(joint_cfg(world, tmp_path, *PHASE_ONE))
    assert read_json(stage2 / "brainlm.json")["weights"] == "frozen" and not (stage2 / "backbone").exists()
    stage3 = instruct.run(load_config(instruct.InstructStageConfig, tiny_config("instruct_tiny"), [
        f"out_dir={tmp_path}", f"corpus={world['corpus']}", f"model={stage2}", "merge=true", *ADD_LORA]))
    assert read_json(stage3 / "brainlm.json")["weights"] == "adapter"
    assert (stage3 / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(stage3 / "merged", local_files_only=True)
    model = load_brainlm(stage3)
    assert merged.get_input_embeddings().weight.shape[0] == model.vocab.size


@pytest.mark.slow
def test_two_cpu_ranks_run_phase_two_under_the_deepspeed_launcher(world, tmp_path):
    stage2 = joint.run(joint_cfg(world, tmp_path, *PHASE_ONE, "engine.max_steps=2"))
    overrides = [f"out_dir={tmp_path}", f"corpus={world['corpus']}", f"model={stage2}", *ADD_LORA,
                 "engine.max_steps=2", "engine.checkpoint_every=2", "eval_split="]
    cmd = commands.launch_command("3", tiny_config("instruct_tiny"), overrides, nproc=2, master_port=29548)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=commands.launch_env({**os.environ, "OMP_NUM_THREADS": "1"}))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    export = next(tmp_path.glob("stage3_instruct-*-step000002"))
    assert lm_common.read_stage(export, "instruct")["world_size"] == 2
    assert read_json(export / "brainlm.json")["weights"] == "adapter"


def test_bad_inputs_are_refused_with_clear_errors(world, tmp_path):
    from fmrilm.llm.checkpoint import load_brainlm

    with pytest.raises(InputError, match="--backbone PATH"):  # says how to provide one
        joint.run(joint_cfg(world, tmp_path, f"llm.backbone={tmp_path / 'no-such-model'}"))
    other = fake_tokenizer(tmp_path / "other_tok", fingerprint="another-tokenizer")
    with pytest.raises(InputError, match="rebuild the corpus"):
        joint.run(joint_cfg(world, tmp_path, f"tokenizer={other}"))
    small = fake_tokenizer(tmp_path / "small_tok", codebook=64)  # same tokens, a codebook too small for them
    with pytest.raises(InputError, match="outside the codebook"):
        joint.run(joint_cfg(world, tmp_path, f"tokenizer={small}"))
    with pytest.raises(InputError, match="exceed the context of 64"):
        joint.run(joint_cfg(world, tmp_path, "llm.max_length=64"))
    assert not list(tmp_path.glob("stage2_*"))  # nothing was exported by any of them

    stage2 = joint.run(joint_cfg(world, tmp_path / "ok", "engine.max_steps=1", "engine.checkpoint_every=0"))
    foreign = local_backbone(tmp_path / "foreign")
    with pytest.raises(InputError, match="adapter was made for base"):
        load_brainlm(stage2, backbone=foreign)


def test_train_command_builds_the_launcher_line(tmp_path):
    cmd = commands.launch_command("joint", tiny_config("joint_tiny"), ["engine.max_steps=2"], nproc=2)
    assert cmd[1:] == ["--num_gpus", "2", "--module", "fmrilm.stages.joint", "--config", tiny_config("joint_tiny"),
                       "--set", "engine.max_steps=2"]
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=8\nnode2 slots=8\n")
    cmd = commands.launch_command("3", None, None, nproc=8, hostfile=str(hostfile), num_nodes=2)
    assert cmd[1:] == ["--hostfile", str(hostfile), "--num_nodes", "2", "--num_gpus", "8", "--module",
                       "fmrilm.stages.instruct"]
    with pytest.raises(InputError, match="hostfile"):
        commands.launch_command("joint", num_nodes=2)
    with pytest.raises(InputError, match="not one of"):
        commands.stage_module("pretrain")
    assert commands.launch_env({})["DS_ACCELERATOR"] in ("cpu", "cuda")


def test_stage0_records_a_local_checkpoint_instead_of_bootstrapping(tmp_path):
    local = local_backbone(tmp_path / "My-LLM-1B")
    cfg = load_config(backbone.BackboneStageConfig, tiny_config("backbone_tiny"),
                      [f"out_dir={tmp_path}", f"backbone={local}"])
    export = backbone.run(cfg)
    assert export.name == "stage0_backbone-My_LLM_1B" and not (export / "model.safetensors").exists()
    assert lm_common.resolve_backbone(export) == (local.resolve(), "My_LLM_1B")
    with pytest.raises(InputError, match="--backbone PATH"):
        backbone.run(load_config(backbone.BackboneStageConfig, tiny_config("backbone_tiny"),
                                 [f"out_dir={tmp_path}", f"backbone={tmp_path / 'missing'}"]))


def test_closed_questions_are_scored_per_phenotype_beside_their_majority_rate():
    meta = [{"task": "phenotype", "phenotype": "sex", "answer": "female"},
            {"task": "phenotype", "phenotype": "sex", "answer": "female"},
            {"task": "phenotype", "phenotype": "sex", "answer": "male"},
            {"task": "phenotype", "phenotype": "diagnosis", "answer": "control"},
            {"task": "vqa", "answer": "yes"}]
    report = instruct._by_question(meta, np.array([True, False, False, True, False]))
    assert report == {"phenotype:diagnosis": {"n": 1, "accuracy": 1.0, "majority": 1.0},
                      "phenotype:sex": {"n": 3, "accuracy": 1 / 3, "majority": 2 / 3},
                      "vqa": {"n": 1, "accuracy": 0.0, "majority": 1.0}}


def test_task_weights_resample_by_task_and_refuse_unknown_tasks():
    samples = [{"json": {"task": t}} for t in ["caption"] * 400 + ["temporal"] * 400 + ["vqa"] * 10]
    positions = lm_common.weight_tasks(samples, {"caption": 2.0, "temporal": 0.25}, seed=0)
    tasks = [samples[i]["json"]["task"] for i in positions]
    assert tasks.count("caption") == 800 and tasks.count("vqa") == 10
    assert 60 < tasks.count("temporal") < 140  # a seeded quarter
    assert np.array_equal(positions, lm_common.weight_tasks(samples, {"caption": 2.0, "temporal": 0.25}, seed=0))
    assert len(lm_common.weight_tasks(samples, {}, seed=0)) == len(samples)
    with pytest.raises(InputError, match="task_weights.describe"):
        lm_common.weight_tasks(samples, {"describe": 2.0}, seed=0)


def test_continuous_brain_input_reads_the_corpus_latents_in_stages_2_and_3(world, tmp_path):
    """fMRI-LM's input: stages 2 and 3 feed the tokens datasets' encoder outputs, looked up by each sample's
    scan references (rest tokens without latents read codes); a corpus without any latents is refused."""
    from fmrilm.brain.store import Dataset
    from fmrilm.corpus.reader import read_split
    from fmrilm.llm.checkpoint import load_brainlm
    from fmrilm.llm.formatting import collate
    from fmrilm.retrieval.captioner import Captioner

    paths = write_toy_inputs(tmp_path / "inputs", Atlas.schaefer(100), latent_dim=16)  # the fake tokenizer's width
    build_corpus(load_config(CorpusConfig, tiny_config("corpus_tiny"), [f"{k}={v}" for k, v in paths.items()]),
                 tmp_path / "corpus", progress=False)
    with pytest.raises(InputError, match="they have none: rewrite the tokens with latents"):
        joint.run(joint_cfg(world, tmp_path / "refused", "llm.brain_input=continuous"))
    stage2 = joint.run(joint_cfg({**world, "corpus": tmp_path / "corpus"}, tmp_path, "llm.brain_input=continuous"))
    assert read_json(stage2 / "brainlm.json")["config"]["brain_input"] == "continuous"
    stage3 = instruct.run(load_config(instruct.InstructStageConfig, tiny_config("instruct_tiny"), [
        f"out_dir={tmp_path}", f"corpus={tmp_path / 'corpus'}", f"model={stage2}"]))
    assert read_json(stage3 / "eval.json")["n"] > 0

    model = load_brainlm(stage3)
    store = lm_common.scan_latents(model, tmp_path / "corpus")
    samples, _ = read_split(tmp_path / "corpus", "train", ["caption", "temporal"], progress=False)
    task = next(s for s in samples if s["json"]["source"] == "task")
    rest = next(s for s in samples if s["json"]["source"] == "rest")
    trials = [ref[1] for ref in task["json"]["scans"]]
    tokens_ds = Dataset(paths["task_tokens"], kind="tokens")
    np.testing.assert_array_equal(task["tokens.npy"], tokens_ds.array("tokens")[trials])
    np.testing.assert_array_equal(store.lookup(task["json"]["scans"], "t"), tokens_ds.array("latents")[trials])
    assert store.lookup(rest["json"]["scans"], "r") is None
    item = instruct.instruction_encoder(Captioner(model), [task])(task, 0)
    assert item["scans"] == task["json"]["scans"]
    with_latents = collate([item], model.tokenizer.eos_token_id, None, store)
    assert int(with_latents["brain_latent_count"][0]) == task["tokens.npy"].size
    with torch.no_grad():
        assert not torch.allclose(model(**with_latents)["loss"],
                                  model(**collate([item], model.tokenizer.eos_token_id))["loss"])
