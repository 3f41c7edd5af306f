"""Sample builders: one list of :class:`Sample` per task, plus k-shot in-context examples.

A sample holds its json fields and *references* to its scans (``("task", trial)`` or
``("rest", subject, window)``); token rows are gathered only when the shard is written, so a corpus
of millions of samples never holds its tokens in memory. Field meanings are documented in
:mod:`fmrilm.corpus`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from fmrilm.corpus import SCAN
from fmrilm.corpus.descriptors_rest import RestFeatures
from fmrilm.corpus.descriptors_task import describe_task_scan
from fmrilm.corpus.inputs import CorpusInputs
from fmrilm.corpus.phrasing import (
    describe_rest,
    describe_task,
    phenotype_with_description,
    prompt,
    sample_rng,
    scan_placeholders,
    temporal_prompt,
    with_shots,
)
from fmrilm.corpus.splits import mentions

# name: (answer type, classes); the site classes (None) are the sites the rest dataset holds
PHENOTYPES = {"sex": ("class", ("female", "male")), "age": ("count", None),
              "diagnosis": ("class", ("control", "patient")), "site": ("class", None)}
# What a phenotype question shows the LM (fMRI-LM's paradigms): the run's brain tokens, the tokens and the
# subject's descriptor text in the prompt, or the descriptor text alone.
PHENOTYPE_INPUTS = ("brain", "brain_descriptors", "descriptors")
SEX_WORDS = {"F": "female", "M": "male"}


@dataclass
class SampleConfig:
    """What to generate.

    Attributes
    ----------
    tasks : tuple of str
        Subset of :data:`fmrilm.corpus.TASKS`.
    captions_per_trial, questions_per_trial : int
        Caption / VQA samples per task trial (distinct captions / questions, capped by what exists).
    rest_windows_per_subject : int
        Rest windows used per subject for describe samples, and for phenotype samples when
        `phenotype_scans` is 1 (evenly spaced; 0 = all).
    phenotype_scans : int
        Windows (rest patches) one phenotype sample carries, evenly spaced over the run; 0 = every one
        (fMRI-LM: the whole run's ROI × patch tokens); 1 = one window per sample, a sample per window.
    phenotype_inputs : tuple of str
        Paradigms of the phenotype samples (:data:`PHENOTYPE_INPUTS`); each gets its own samples.
    temporal_context, temporal_stride : int
        Context scans before the target, and the step between targets.
    top_parcels : int
        Parcels named in task descriptions.
    shots : int
        k in-context examples for a k-shot sample (0: zero-shot only).
    shot_fraction : float
        Share of samples of `shot_tasks` that get k shots.
    shot_tasks : tuple of str
    """

    tasks: tuple[str, ...] = ("caption", "vqa", "describe", "temporal", "phenotype", "text")
    captions_per_trial: int = 1
    questions_per_trial: int = 2
    rest_windows_per_subject: int = 4
    phenotype_scans: int = 0
    phenotype_inputs: tuple[str, ...] = ("brain",)
    temporal_context: int = 3
    temporal_stride: int = 1
    top_parcels: int = 3
    shots: int = 0
    shot_fraction: float = 0.5
    shot_tasks: tuple[str, ...] = ("caption", "describe", "phenotype")


@dataclass
class Sample:
    """One sample before writing: json fields (``meta``), scan references and its shot group."""

    meta: dict
    scans: tuple
    group: str = field(default="")

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def record(self) -> dict:
        """The json written to the shard: `meta` plus its scans' references (``scans``)."""
        return {**self.meta, "scans": [[ref[0], *map(int, ref[1:])] for ref in self.scans]}

    @property
    def split(self) -> str:
        return self.meta["split"]


def _meta(task, prompt_text, answer, split, subject, stimulus, source, answer_type="free", choices=None,
          **extra):
    meta = {"task": task, "prompt": prompt_text, "answer": answer, "split": split, "subject": subject,
            "stimulus": stimulus, "shots": [], "answer_type": answer_type, "source": source, **extra}
    if choices is not None:
        meta["choices"] = list(choices)
    return meta


def qa_answer_type(qa: dict) -> tuple[str, list | None]:
    """Closed answers are typed so evaluation can score them: yes/no, counts, else free text."""
    answer = str(qa["answer"]).strip().lower()
    if answer in ("yes", "no"):
        return "yesno", ["yes", "no"]
    if answer.isdigit() or qa.get("type") == "count":
        return "count", None
    return "free", None


class SampleBuilder:
    """Builds every task's samples from checked inputs, splits and rest features.

    Parameters
    ----------
    inputs : CorpusInputs
    cfg : SampleConfig
    seed : int
    trial_split : ndarray of str or None
        Split per task trial.
    rest_split : ndarray of str or None
        Split per rest subject.
    rest_features : RestFeatures or None
    novel : re.Pattern or None
        Matches novel category names; training brain samples that name one are dropped (counted).
    heldout_captions : set of str
        Captions of val and test stimuli: a training stimulus whose caption is word for word one of
        them contributes no text-only sample of it (counted), so no held-out reference is ever
        training text.
    """

    def __init__(self, inputs: CorpusInputs, cfg: SampleConfig, seed: int, trial_split=None, rest_split=None,
                 rest_features: RestFeatures | None = None, novel=None, progress: bool = True,
                 heldout_captions: set = frozenset()):
        self.inputs, self.cfg, self.seed = inputs, cfg, seed
        self.trial_split, self.rest_split, self.features = trial_split, rest_split, rest_features
        self.novel, self.progress, self.heldout_captions = novel, progress, heldout_captions
        self.dropped_novel = self.dropped_heldout_captions = 0
        self.descriptions: list[tuple[str, str]] = []  # (split, text) for text-only samples
        if inputs.task is not None:
            self.stimuli = inputs.task.table("stimuli")
            self.task_subjects = [r["subject"] for r in inputs.task.table("subjects")]
            self.trial_stimulus = np.asarray(inputs.task.array("trial_stimulus"))
            self.trial_subject = np.asarray(inputs.task.array("trial_subject"))
        if inputs.rest is not None:
            self.rest_subjects = inputs.rest.table("subjects")

    # ----------------------------------------------------------------- helpers
    def _keep(self, meta: dict) -> bool:
        """False (and counted) for a training brain sample that names a novel category."""
        if meta["split"] == "train" and mentions(self.novel, meta["prompt"], meta["answer"]):
            self.dropped_novel += 1
            return False
        return True

    def _trial(self, i: int) -> tuple[str, str, int]:
        subject = self.task_subjects[self.trial_subject[i]]
        return str(self.trial_split[i]), subject, int(self.trial_stimulus[i])

    def _windows(self, k: int | None = None) -> np.ndarray:
        """`k` (default ``rest_windows_per_subject``) evenly spaced windows of a run; all when k <= 0."""
        n = self.inputs.rest_tokens.tokens.shape[1]
        k = self.cfg.rest_windows_per_subject if k is None else k
        return np.arange(n) if k <= 0 or k >= n else np.unique(np.linspace(0, n - 1, k).round().astype(int))

    def _phenotype_scans(self) -> list[np.ndarray]:
        """The windows of each phenotype sample of a subject (:attr:`SampleConfig.phenotype_scans`)."""
        if self.cfg.phenotype_scans == 1:
            return [np.array([j]) for j in self._windows()]
        return [self._windows(self.cfg.phenotype_scans)]

    # ----------------------------------------------------------------- task data
    def caption(self) -> list[Sample]:
        out = []
        for i in range(self.trial_stimulus.size):
            split, subject, stim = self._trial(i)
            captions = self.stimuli[stim]["captions"]
            rng = sample_rng(self.seed, "caption", i)
            for c in rng.permutation(len(captions))[: self.cfg.captions_per_trial]:
                meta = _meta("caption", prompt("caption", rng), captions[c], split, subject, stim, "task")
                if self._keep(meta):
                    out.append(Sample(meta, (("task", i),), "caption"))
        return out

    def vqa(self) -> list[Sample]:
        out = []
        for i in range(self.trial_stimulus.size):
            split, subject, stim = self._trial(i)
            qas = self.stimuli[stim].get("qa", [])
            rng = sample_rng(self.seed, "vqa", i)
            for q in rng.permutation(len(qas))[: self.cfg.questions_per_trial]:
                qa = qas[q]
                answer_type, choices = qa_answer_type(qa)
                meta = _meta("vqa", prompt("vqa", rng, question=qa["question"]), str(qa["answer"]), split,
                             subject, stim, "task", answer_type, choices, question_type=qa.get("type"))
                if self._keep(meta):
                    out.append(Sample(meta, (("task", i),), "vqa"))
        return out

    def describe_task(self, chunk: int = 256) -> list[Sample]:
        out = []
        betas = self.inputs.task.array("betas")
        n = betas.shape[0]
        for start in tqdm(range(0, n, chunk), desc="task descriptors", disable=not self.progress):
            block = np.asarray(betas[start:start + chunk])
            parcels = self.inputs.atlas.parcellate(block, self.inputs.task.path)
            for offset, values in enumerate(parcels):
                i = start + offset
                split, subject, stim = self._trial(i)
                desc = describe_task_scan(values, self.inputs.atlas, self.cfg.top_parcels, f"betas[{i}]")
                rng = sample_rng(self.seed, "describe-task", i)
                text = describe_task(desc, rng)
                self.descriptions.append((split, text))
                meta = _meta("describe", prompt("describe", rng), text, split, subject, stim, "task")
                out.append(Sample(meta, (("task", i),), "describe-task"))
        return out

    # ----------------------------------------------------------------- rest data
    def describe_rest(self) -> list[Sample]:
        out = []
        for s, row in enumerate(self.rest_subjects):
            self.descriptions.append((str(self.rest_split[s]),
                                      describe_rest(self.features, s, self.inputs.atlas,
                                                    sample_rng(self.seed, "describe-rest-text", s))))
            for j in self._windows():
                rng = sample_rng(self.seed, "describe-rest", s, j)
                text = describe_rest(self.features, s, self.inputs.atlas, rng)
                meta = _meta("describe", prompt("describe", rng), text, str(self.rest_split[s]),
                             row["subject"], None, "rest")
                out.append(Sample(meta, (("rest", s, int(j)),), "describe-rest"))
        return out

    def _phenotype_classes(self) -> dict[str, tuple | None]:
        """Each phenotype's classes; ``site``'s are the dataset's sites, and a dataset of one site (or none
        recorded) asks no site question, which would have a single answer."""
        sites = tuple(sorted({str(r["site"]) for r in self.rest_subjects if r.get("site") is not None}))
        return {name: (sites if name == "site" else choices) for name, (_, choices) in PHENOTYPES.items()
                if name != "site" or len(sites) > 1}

    def phenotype(self) -> list[Sample]:
        """One sample per subject, phenotype, window group and paradigm (:data:`PHENOTYPE_INPUTS`); a
        ``descriptors`` sample has no scans, and its prompt text stands where the scan would."""
        out = []
        classes = self._phenotype_classes()
        sites = ", ".join(classes["site"][:-1]) + f" or {classes['site'][-1]}" if "site" in classes else ""
        for s, row in enumerate(self.rest_subjects):
            for name, choices in classes.items():
                answer_type, value = PHENOTYPES[name][0], row.get(name)
                if value is None:  # unknown for real runs: no sample rather than a guessed label
                    continue
                answer = SEX_WORDS.get(value, value) if name == "sex" else (
                    str(int(round(float(value)))) if name == "age" else str(value))
                for paradigm in self.cfg.phenotype_inputs:
                    for windows in self._phenotype_scans():
                        # brain-only samples keep the draws they had before paradigms existed
                        j = int(windows[0])
                        key = (name, s, j) if paradigm == "brain" else (name, s, j, paradigm)
                        rng = sample_rng(self.seed, "phenotype", *key)
                        one = prompt(name, rng, sites=sites)  # one placeholder per window carried
                        question = one.replace(SCAN, scan_placeholders(len(windows)))
                        scans = tuple(("rest", s, int(w)) for w in windows)
                        if paradigm != "brain":
                            question = phenotype_with_description(
                                describe_rest(self.features, s, self.inputs.atlas, rng),
                                question if paradigm == "brain_descriptors" else one,
                                with_scan=paradigm == "brain_descriptors")
                            scans = scans if paradigm == "brain_descriptors" else ()
                        meta = _meta("phenotype", question, answer, str(self.rest_split[s]), row["subject"], None,
                                     "rest", answer_type, choices, phenotype=name, paradigm=paradigm)
                        out.append(Sample(meta, scans, f"phenotype-{name}-{paradigm}"))
        return out

    def temporal(self) -> list[Sample]:
        out = []
        k, n_windows = self.cfg.temporal_context, self.inputs.rest_tokens.tokens.shape[1]
        for s, row in enumerate(self.rest_subjects):
            for j in range(k, n_windows, self.cfg.temporal_stride):
                rng = sample_rng(self.seed, "temporal", s, j)
                meta = _meta("temporal", temporal_prompt(k, rng), SCAN, str(self.rest_split[s]),
                             row["subject"], None, "rest", window=int(j))
                out.append(Sample(meta, tuple(("rest", s, w) for w in range(j - k, j + 1)), "temporal"))
        return out

    # ----------------------------------------------------------------- text only
    def text(self) -> list[Sample]:
        """Captions of the training stimuli and of the world's text-only scenes, and the descriptor texts.

        Text-only scenes (table ``text_scenes`` of a synthetic task world) name the novel categories in
        scenes never shown as stimuli: where the LM learns those words without any brain data.
        """
        out = []
        if self.inputs.task is not None:
            train = set(self.trial_stimulus[self.trial_split == "train"].tolist())
            rows = [self.stimuli[m] for m in sorted(train)]
            if "text_scenes" in self.inputs.task.manifest.get("tables", {}):
                rows += self.inputs.task.table("text_scenes")
            for row in rows:
                for caption in row["captions"]:
                    if caption in self.heldout_captions:
                        self.dropped_heldout_captions += 1
                        continue
                    out.append(Sample(_meta("text", "", caption, "train", None, None, "text"), (), "text"))
        for split, text in self.descriptions:
            out.append(Sample(_meta("text", "", text, split, None, None, "text"), (), "text"))
        return out

    def build(self) -> list[Sample]:
        """Every requested task's samples (descriptions before text, which reuses them), shots added."""
        tasks = set(self.cfg.tasks)
        samples = []
        if self.inputs.task is not None:
            samples += self.caption() if "caption" in tasks else []
            samples += self.vqa() if "vqa" in tasks else []
            samples += self.describe_task() if {"describe", "text"} & tasks else []
        if self.inputs.rest is not None:
            samples += self.describe_rest() if {"describe", "text"} & tasks else []
            samples += self.phenotype() if "phenotype" in tasks else []
            samples += self.temporal() if "temporal" in tasks else []
        # descriptors feed text-only data even when the describe task itself is off
        samples = [s for s in samples if s.task in tasks]
        samples += self.text() if "text" in tasks else []
        return add_shots(samples, self.cfg, self.seed)


def _independent(donor: dict, query: dict) -> bool:
    if query["stimulus"] is not None:
        return donor["stimulus"] != query["stimulus"]
    return donor["subject"] != query["subject"]


def add_shots(samples: list[Sample], cfg: SampleConfig, seed: int, max_tries: int = 50) -> list[Sample]:
    """Give a seeded share of samples k in-context examples from the same split and shot group.

    Examples never share what determines the query's answer: the stimulus for task samples (its
    captions and answers), the subject for rest samples (their sex, age, diagnosis, run); queries
    without k such examples stay zero-shot. The examples' scans come first in ``scans``; their
    prompts and answers precede the query's prompt (:func:`fmrilm.corpus.phrasing.with_shots`).
    """
    if cfg.shots <= 0:
        return samples
    pools: dict[tuple, list[int]] = {}
    for i, s in enumerate(samples):
        if s.task in cfg.shot_tasks:
            pools.setdefault((s.split, s.group), []).append(i)
    out = list(samples)
    for i, query in enumerate(samples):
        if query.task not in cfg.shot_tasks:
            continue
        rng = sample_rng(seed, "shots", i)
        if rng.random() >= cfg.shot_fraction:
            continue
        pool = pools[(query.split, query.group)]
        chosen: list[int] = []
        for _ in range(max_tries):
            j = pool[int(rng.integers(len(pool)))]
            d = samples[j]
            if j not in chosen and _independent(d.meta, query.meta):
                chosen.append(j)
                if len(chosen) == cfg.shots:
                    break
        if len(chosen) < cfg.shots:
            continue
        donors = [samples[j] for j in chosen]
        meta = dict(query.meta)
        meta["prompt"] = with_shots(query.meta["prompt"],
                                    [(d.meta["prompt"], d.meta["answer"]) for d in donors])
        meta["shots"] = [{k: d.meta[k] for k in ("answer", "subject", "stimulus")} for d in donors]
        out[i] = Sample(meta, sum((d.scans for d in donors), ()) + query.scans, query.group)
    return out
