"""`make bench` at test size: every benchmark runs with --quick and ends with its JSON figures.

The benchmarks are scripts, not library code, so nothing else would notice when a config change
breaks one (the quick tokenizer world once had fewer scans than the codebook has codes).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def test_every_benchmark_is_covered():
    assert {b.stem for b in BENCHMARKS} == {"corpus", "faults", "llm", "seeds", "tokenizer", "world"}


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.stem)
def test_quick_benchmark_prints_its_figures(script, tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    # the machinery at its smallest: one kill and resume (--quick: 3), two training seeds (an sd; default 3),
    # 50 task tokenizer steps (--quick: 300)
    smallest = {"faults": ["--kills", "1"], "seeds": ["--seeds", "0", "1"], "tokenizer": ["--steps", "50"]}
    extra = smallest.get(script.stem, [])
    if script.stem == "llm":
        # the script's own --backbone path on a tiny Llama: every loop, child process and figure, without
        # the packaged GGUF's conversion and 135M-parameter steps (≈ 6 of the suite's minutes); `make bench`
        # runs it on the real backbone
        from test_llm_backbone import TEXTS, TINY

        from fmrilm.llm.backbone import bootstrap_backbone
        from fmrilm.llm.config import BootstrapConfig

        # the demo stage configs' sequences (≈ 450 tokens) need more context than the unit tests' 192
        cfg = BootstrapConfig(**{**TINY.__dict__, "max_position_embeddings": 1024})
        extra = ["--backbone", str(bootstrap_backbone(TEXTS, tmp_path / "backbone", cfg))]
    run = subprocess.run([sys.executable, str(script), "--quick", *extra], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert isinstance(figures, dict) and figures
