"""Stage 3: multi-task instruction tuning (captioning, VQA, description, phenotypes, temporal).

Launch (``--set`` overrides any config key)::

    # 1 process (CPU here)
    python -m fmrilm.stages.instruct --config instruct_demo --set out_dir=runs/demo corpus=runs/demo/corpus \
        model=runs/demo/stage2_joint-llama5m_sp4k-vqK1024L1-step000040
    # 2 CPU ranks on this machine (ZeRO-2)
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --master_port 29600 --module fmrilm.stages.instruct \
        --config instruct_demo --set ...
    # N GPUs on one node
    deepspeed --num_gpus N --module fmrilm.stages.instruct --config instruct_demo --set ...
    # M nodes x N GPUs (hostfile lines: "node1 slots=N")
    deepspeed --hostfile hostfile --num_nodes M --num_gpus N --module fmrilm.stages.instruct \
        --config instruct_demo --set ...
    # or through the CLI wrapper
    fmrilm train instruct --config instruct_demo --nproc 2 --set ...

Starts from the stage-2 export (``load_brainlm``: the same adapter or backbone keeps training, on the
same base, which is checked by fingerprint). Every corpus sample of the configured tasks, k-shot
examples included, is written in the chat template of :mod:`fmrilm.llm.formatting` with the loss on
the answer tokens only; :func:`~fmrilm.llm.formatting.check_answer_mask` verifies that on every
sample before training starts. After training, closed questions of the validation split (yes/no,
classes) are answered by constrained decoding (:func:`~fmrilm.llm.generate.choose_answer`) and the
accuracy is stored in the export's ``eval.json``, per task and per question kind (``phenotype:sex``
beside its majority rate: a phenotype probe on val reads its figure there).

``task_weights`` resamples the mixture by task (the demo up-weights captions and VQA, the tasks whose
answers the retrieved captions carry). With ``retrieved_captions`` > 0 and ``retrieval``
(the run's search indexes; the pipeline passes them) every single-task-scan prompt is prefixed with the
captions its scan retrieves from the training stimuli (:mod:`fmrilm.retrieval.caption_prompts`,
SmallCap-style), and the export is a :class:`~fmrilm.retrieval.captioner.Captioner`'s: the model with
its retriever beside it, so that generation prompts the same way.

Output: ``OUT/stage3_instruct-<backbone>-<tokenizer>-step<N>/`` (``save_brainlm`` layout, optional
``merged/``), ``stage.json`` last; training state in ``OUT/train-stage3_instruct-<backbone>-<tokenizer>/``.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fmrilm.corpus.reader import read_split
from fmrilm.engine import EngineConfig, TrainEngine, stage_main
from fmrilm.errors import InputError
from fmrilm.io import read_json, write_json
from fmrilm.llm.config import LoraSettings
from fmrilm.stages import lm_common
from fmrilm.stages.recipe import LMRecipe, run_recipe

STAGE = "instruct"
INSTRUCTION_TASKS = ("caption", "vqa", "describe", "phenotype", "temporal")
CLOSED_ANSWERS = ("yesno", "class")  # answer types with a finite choice set


@dataclass
class InstructStageConfig:
    """Stage-3 settings (YAML: ``fmrilm/configs/instruct_*.yaml``).

    Attributes
    ----------
    out_dir, corpus : str
        Run directory and corpus directory.
    model : str
        The stage-2 export directory to start from.
    tasks : tuple of str
        Instruction tasks of the mixture (subset of ``INSTRUCTION_TASKS``).
    task_weights : dict of str to float
        Resampling weight per task (:func:`~fmrilm.stages.lm_common.weight_tasks`); unnamed tasks 1.
    retrieval : str
        The run's ``retrieval`` stage directory (the pipeline passes it).
    retrieved_captions : int
        With ``retrieval``, single-task-scan prompts are prefixed with this many captions its embedder
        retrieves (:mod:`fmrilm.retrieval.caption_prompts`; SmallCap uses 4) and the export keeps the
        retriever; 0 trains without.
    retrieval_text_only : bool
        The retriever's bank also holds the task world's text-only scenes (captions naming the novel
        categories, no brain data): zero-shot naming through retrieval; the report says so.
    eval_split : str
        Split whose closed questions are scored after training ("" to skip).
    eval_max_samples : int
        At most this many closed questions scored.
    add_lora : LoraSettings or None
        LoRA (or QLoRA) adapters added to a stage-2 model whose backbone was frozen (CorText: phase 1
        in stage 2, phase 2 here); None trains what the stage-2 model trained.
    merge : bool
        Also write a standalone merged HF checkpoint into the export (``merged/``), loadable with plain
        ``AutoModelForCausalLM``.
    """

    out_dir: str = field(default="", metadata={"required": True})  # fmrilm.config.required_path(): no demo default
    corpus: str = ""
    model: str = ""
    tasks: tuple[str, ...] = INSTRUCTION_TASKS
    task_weights: dict[str, float] = field(default_factory=dict)
    retrieval: str = ""
    retrieved_captions: int = 0
    retrieval_text_only: bool = False
    split: str = "train"
    eval_split: str = "val"
    eval_max_samples: int = 64
    add_lora: LoraSettings | None = None
    merge: bool = False
    engine: EngineConfig = field(default_factory=EngineConfig)
    force: bool = False


def names(cfg: InstructStageConfig) -> tuple[Path, Path, dict]:
    """(export dir, training dir, stage-2 info) — decided before any work."""
    for key in ("corpus", "model"):
        if not getattr(cfg, key):
            raise InputError("config", key, f"not given (--set {key}=DIR)")
    unknown = sorted(set(cfg.tasks) - set(INSTRUCTION_TASKS))
    if unknown or not cfg.tasks:
        raise InputError("config", "tasks", f"{unknown or 'none'}: instruction tasks are {list(INSTRUCTION_TASKS)}")
    for task in sorted(set(cfg.task_weights) - set(cfg.tasks)):
        raise InputError("config", f"task_weights.{task}", f"not one of the stage's tasks {list(cfg.tasks)}")
    joint = lm_common.read_stage(cfg.model, "joint")
    base = f"stage3_{STAGE}-{joint['backbone_tag']}-{joint['tokenizer_tag']}"
    out = Path(cfg.out_dir)
    return out / f"{base}-step{cfg.engine.max_steps:06d}", out / f"train-{base}", joint


def instruction_encoder(captioner, samples: list[dict]):
    """`encode(sample, index)` for stage 3 over `samples`: the chat template, loss on the answer, masking
    checked; with the captioner's retriever, single-task-scan prompts carry their neighbours' captions
    (never the sample's own stimulus)."""
    from fmrilm.llm.formatting import encode_instruction

    model = captioner.model
    # the retrieved captions describe task stimuli: rest scans keep their plain prompts
    task = [s["json"].get("source") == "task" for s in samples]
    own = [s["json"].get("stimulus") if t else None for s, t in zip(samples, task, strict=True)]
    tokens, prompts = captioner.prompts([np.asarray(s["tokens.npy"]).astype(np.int64) for s in samples],
                                        [s["json"]["prompt"] for s in samples], retrieve=task, exclude=own)

    def encode(sample: dict, index: int) -> dict:
        item = encode_instruction(model.tokenizer, model.vocab, {
            "prompt": prompts[index], "answer": sample["json"]["answer"], "tokens": tokens[index]},
            sample["__key__"])
        # every scan of the sample is in the sequence (continuous brain input looks their latents up)
        return {**item, "scans": sample["json"].get("scans"), "source": sample["__key__"]}

    return encode


def closed_question_accuracy(captioner, corpus: str, split: str, tasks, max_samples: int) -> dict:
    """Accuracy of constrained decoding on the split's yes/no and class questions, per task (task-scan
    prompts retrieve as in training)."""
    samples, _ = read_split(corpus, split, tasks, progress=False)
    closed = [s for s in samples if s["json"].get("answer_type") in CLOSED_ANSWERS and s["json"].get("choices")]
    closed = closed[:max_samples]
    if not closed:
        return {"n": 0}
    meta = [s["json"] for s in closed]
    # the answer's own scans (none for closed answers) never reach the prompt
    tokens = [np.asarray(s["tokens.npy"]).astype(np.int64) for s in closed]
    store = lm_common.scan_latents(captioner.model, corpus)
    latents = None if store is None else [store.lookup(m.get("scans") or [], s["__key__"])
                                          for s, m in zip(closed, meta, strict=True)]
    with torch.no_grad():
        answers, _ = captioner.choose_answer(tokens, [m["prompt"] for m in meta], [m["choices"] for m in meta],
                                             retrieve=[m.get("source") == "task" for m in meta], brain_latents=latents)
    hits = np.array([a == m["answer"] for a, m in zip(answers, meta, strict=True)])
    by_task = {t: float(hits[[m["task"] == t for m in meta]].mean()) for t in sorted({m["task"] for m in meta})}
    return {"n": len(closed), "accuracy": float(hits.mean()), "by_task": by_task,
            "by_question": _by_question(meta, hits),
            "chance": float(np.mean([1 / len(m["choices"]) for m in meta]))}


def _by_question(meta: list[dict], hits: np.ndarray) -> dict:
    """Accuracy per question kind ("vqa", "phenotype:sex", …) beside the rate of its most common true
    answer: a probe of one phenotype reads its figure here without the full evaluation."""
    kinds = [m["task"] + (f":{m['phenotype']}" if m.get("phenotype") else "") for m in meta]
    out = {}
    for kind in sorted(set(kinds)):
        mask = np.array([k == kind for k in kinds])
        answers = Counter(m["answer"] for m, keep in zip(meta, mask, strict=True) if keep)
        out[kind] = {"n": int(mask.sum()), "accuracy": float(hits[mask].mean()),
                     "majority": answers.most_common(1)[0][1] / int(mask.sum())}
    return out


class InstructRecipe(LMRecipe):
    """Multi-task instruction tuning of the stage-2 model, answer-only loss, retrieval-prefixed prompts."""

    name = STAGE

    def __init__(self, cfg: InstructStageConfig):
        export_dir, train_dir, joint = names(cfg)
        super().__init__(cfg, export_dir, train_dir)
        self.joint = joint
        self.retriever = None

    def setup(self) -> None:
        """Load the stage-2 model and the retriever its prompts will use, encode the instruction mixture,
        build the engine."""
        from fmrilm.llm.checkpoint import load_brainlm
        from fmrilm.retrieval.captioner import Captioner

        cfg = self.cfg
        for split in filter(None, (cfg.split, cfg.eval_split)):
            lm_common.check_corpus_tokenizer(cfg.corpus, split, self.joint["tokenizer"])
        model = load_brainlm(cfg.model, add_lora=cfg.add_lora)
        if cfg.merge and model.llm_config.brain_input != "codes":
            raise InputError(cfg.model, "merge", "a model reading continuous brain input has no merged form (its "
                                                 "merged brain rows would be code embeddings): set merge=false")
        if cfg.retrieval and cfg.retrieved_captions > 0:
            self.retriever = _retriever(cfg)
        samples, self.skipped = read_split(cfg.corpus, cfg.split, cfg.tasks,
                                           max_skipped=cfg.engine.max_skipped_shards)
        mixture = lm_common.weight_tasks(samples, cfg.task_weights, cfg.engine.seed)
        self.data = lm_common.training_set(samples, instruction_encoder(Captioner(model, self.retriever), samples),
                                           model.max_length, cfg.engine, mixture,
                                           latents=lm_common.scan_latents(model, cfg.corpus))
        self.pad_id, self.max_length = model.tokenizer.eos_token_id, model.max_length
        self.engine = TrainEngine(model, cfg.engine, self.train_dir)
        if self.engine.is_main:
            mix = Counter(samples[i]["json"]["task"] for i in mixture)
            print(f"instruct: {self.data.size} samples ({dict(mix)}), {len(self.data.items)} visited by this run, "
                  f"answer-only loss checked on each", flush=True)

    def save(self, step: int) -> Path | None:
        """Export the trained model with its retriever as a captioner (+ ``merged/`` if asked) and the
        closed-question accuracy."""
        from fmrilm.retrieval.captioner import Captioner

        engine, cfg, joint, retriever = self.engine, self.cfg, self.joint, self.retriever

        def save(out: Path) -> None:
            captioner = Captioner(engine.module, retriever)
            captioner.save(out, overwrite=True)
            if cfg.merge:
                captioner.merge_to_hf(out / "merged", overwrite=True)
            if cfg.eval_split:
                report = closed_question_accuracy(captioner, cfg.corpus, cfg.eval_split, cfg.tasks,
                                                  cfg.eval_max_samples)
                write_json(out / "eval.json", report)
                print(f"instruct: closed questions on {cfg.eval_split}: {report}", flush=True)

        return lm_common.export(engine, self.export_dir, save, cfg, {
            "stage": STAGE, "backbone_tag": joint["backbone_tag"], "tokenizer_tag": joint["tokenizer_tag"],
            "tokenizer": joint["tokenizer"], "from": str(Path(cfg.model).resolve()), "steps": step,
            "retrieval": retriever.source if retriever is not None else None,
            "world_size": engine.world_size, "merged": cfg.merge})


def _retriever(cfg: InstructStageConfig):
    """The caption retriever of the run's search indexes, after checking they were built on the corpus's splits."""
    from fmrilm.artifacts import check_recorded, read_corpus_record
    from fmrilm.brain.splits import read_splits
    from fmrilm.retrieval.caption_prompts import CaptionRetriever
    from fmrilm.retrieval.search import SEARCH_FILE

    # prompts retrieve from the search indexes: they must be the ones built on the corpus's splits
    corpus_splits = read_corpus_record(cfg.corpus).get("run_splits") or {}
    check_recorded(read_json(Path(cfg.retrieval) / SEARCH_FILE).get("splits"), read_splits(corpus_splits["path"]),
                   f"the search indexes {cfg.retrieval}", Path(cfg.retrieval) / SEARCH_FILE)
    return CaptionRetriever.from_search_dir(cfg.retrieval, cfg.retrieved_captions, cfg.retrieval_text_only)


def run(cfg: InstructStageConfig) -> Path | None:
    """Train stage 3 (:class:`InstructRecipe`); returns the export directory on the main rank."""
    return run_recipe(InstructRecipe(cfg))


def main(argv: list[str] | None = None) -> int:
    return stage_main(argv, __doc__.splitlines()[0], "instruct_demo", InstructStageConfig, run)


if __name__ == "__main__":
    sys.exit(main())
