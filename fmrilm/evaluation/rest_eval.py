"""Rest evaluation: phenotypes from the LM vs FC baselines, and next-scan prediction vs AR baselines.

Items are the corpus's ``test``-split rest samples (zero-shot ones), so subjects are held out.

- Phenotypes, for each input paradigm the corpus holds (``model``: brain tokens; ``model_brain_descriptors``:
  tokens + the run's descriptor text; ``model_descriptors``: the text alone, :data:`PARADIGM_KEYS`): sex,
  diagnosis and site by constrained decoding among the sample's choices
  (:func:`~fmrilm.llm.generate.choose_answer`), age by greedy generation of digits only
  (:func:`~fmrilm.llm.generate.number_tokens`), as many as the training subjects' ages have, parsed as a
  number; the
  windows of a subject are pooled (majority vote, mean age). Baseline on the same test subjects:
  logistic / ridge regression on Fisher-z FC, trained on the subjects of neither test, val nor
  few-shot (:func:`~fmrilm.evaluation.baselines.phenotype_baseline`); the same predictor on the 28
  network FC means the rest descriptors summarise (``network_fc_baseline``: what a linear reader of the
  descriptors' FC reaches); and the base rate from those
  training subjects' labels alone (majority class, mean age:
  :func:`~fmrilm.evaluation.baselines.chance_baseline`). Each reports accuracy, balanced accuracy
  and AUC (the LM's from its constrained-decoding probability of the positive class, averaged over a
  subject's windows; the FC baseline's from its logistic probabilities) or MAE, with 95 % bootstrap
  intervals over the test subjects (the same resamples for all three). On a synthetic population,
  the ideal observer (:mod:`~fmrilm.evaluation.rest_ideal_observer`: whole run, true class
  covariances) on the same subjects shows how much the runs carry.
- Next scan: the LM's brain head predicts the target scan's tokens from the context scans
  (:func:`~fmrilm.llm.generate.generate_scan`); the tokenizer decodes them and the parcel means are
  compared with the true z-scored parcel signal of that TR. Beside it: persistence, a per-parcel
  AR(1) fitted on training subjects, and the tokenizer ceiling (decoding the true target's tokens).
- With a rest companion in the tokenizer (rest patches beside task codes, fMRI-LM's F2F), the unit is a
  W-TR patch: the brain head's prediction is kept among the rest codes, the companion decodes it, and
  the baselines are the previous patch and a per-parcel ridge map from the previous patch
  (:class:`~fmrilm.evaluation.temporal_baselines.PatchAR`); R² pools parcels and the patch's TRs.
- Next scan on a real run (``temporal_real_run``): the same comparison on the last ``n_temporal`` TRs
  of the real run the pipeline imports and tokenizes after training (stage ``real_rest_tokens``, found
  through the run's ``stages.json`` beside the corpus), which the LM never saw. The target is the
  signal in the tokenizer's own input space (parcel means of the per-vertex z-scored run), the LM's
  context is as many preceding TRs as its temporal training samples had, and the AR(1) is fitted on
  the TRs before the first target.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from fmrilm.brain.atlas import Atlas
from fmrilm.brain.rest_world import RestPopulation, RestWorldConfig
from fmrilm.brain.store import Dataset
from fmrilm.config import from_dict
from fmrilm.corpus.descriptors_task import network_index
from fmrilm.errors import InputError
from fmrilm.evaluation.baselines import chance_baseline, fc_features, network_fc_features, phenotype_baseline
from fmrilm.evaluation.regression import classification_scores, r2_score, regression_scores
from fmrilm.evaluation.rest_ideal_observer import ideal_observer
from fmrilm.evaluation.temporal_baselines import LinearAR, PatchAR, persistence_forecast
from fmrilm.llm.generate import choose_answer, generate, generate_scan, number_tokens
from fmrilm.tokenizer.data import rest_windows, zscore_time

SEX_LABELS = {"female": "F", "male": "M"}


def _number(text: str) -> float | None:
    match = re.search(r"\d+(?:\.\d+)?", text)
    return float(match.group()) if match else None


def positive_probability(candidates: list[str], log_likelihoods: np.ndarray, name: str) -> float:
    """The constrained-decoding probability of the positive class (the larger sorted label, as
    :func:`~fmrilm.evaluation.regression.classification_scores` takes it) among a window's choices."""
    labels = [SEX_LABELS.get(c, c) if name == "sex" else c for c in candidates]
    ll = np.asarray(log_likelihoods, np.float64)
    probability = np.exp(ll - ll.max())
    return float(probability[labels.index(max(labels))] / probability.sum())


def _first_windows(items: list, k: int) -> list:
    """At most `k` samples per subject (the first in corpus order); all of them when `k` is 0."""
    if k < 0:
        raise InputError("eval config", "phenotype_windows", f"{k}: windows per subject, >= 0 (0: all)")
    if k == 0:
        return items
    kept, count = [], Counter()
    for s in items:
        count[s["json"]["subject"]] += 1
        if count[s["json"]["subject"]] <= k:
            kept.append(s)
    return kept


def number_answers(model, tokens: list, prompts: list[str], train_ages: list[float],
                   batch_size: int) -> tuple[list[str], list[float], int]:
    """Greedy numeric answers: (raw answers, values, how many did not parse). A whole number with as many
    digits as the training ages have (the numeric analogue of ``choose_answer``: free text made the compact
    LM run on, "755", and stopping after one digit answered "7" for a 70-year-old); an unparsable answer
    counts as the training ages' median."""
    digits = [len(str(int(round(a)))) for a in train_ages] or [1, 2]
    answers = generate(model, tokens, prompts, max_new_tokens=max(digits), batch_size=batch_size,
                       allowed_tokens=number_tokens(model.tokenizer), min_new_tokens=min(digits))
    fallback = float(np.median(train_ages)) if train_ages else float("nan")
    # digit pieces may carry a word-start space ("Ġ7"): "6 8" is the two digits 68
    parsed = [_number(a.replace(" ", "")) for a in answers]
    return answers, [fallback if v is None else v for v in parsed], sum(v is None for v in parsed)


# report keys of the LM's scores per phenotype input paradigm (fmrilm.corpus.samples.PHENOTYPE_INPUTS)
PARADIGM_KEYS = {"brain": "model", "brain_descriptors": "model_brain_descriptors",
                 "descriptors": "model_descriptors"}


def _lm_phenotype(model, items: list, name: str, rows: list[dict], train_ages: list[float],
                  cfg) -> tuple[list[str], dict]:
    """The LM's answers to one phenotype's items, pooled per subject, scored: (test subjects, scores)."""
    index = {r["subject"]: i for i, r in enumerate(rows)}
    prompts = [s["json"]["prompt"] for s in items]
    tokens = [s["tokens.npy"] for s in items]
    per_subject, positive = defaultdict(list), defaultdict(list)
    if name == "age":
        answers, values, unparsed = number_answers(model, tokens, prompts, train_ages, cfg.batch_size)
        for s, value in zip(items, values, strict=True):
            per_subject[s["json"]["subject"]].append(value)
    else:
        choices = [s["json"]["choices"] for s in items]
        answers, log_likelihoods = choose_answer(model, tokens, prompts, choices)
        for s, a, c, ll in zip(items, answers, choices, log_likelihoods):
            per_subject[s["json"]["subject"]].append(a)
            positive[s["json"]["subject"]].append(positive_probability(c, ll, name))
    subjects = sorted(per_subject)
    if name == "age":
        pred = [float(np.mean(per_subject[s])) for s in subjects]
        truth = [float(rows[index[s]]["age"]) for s in subjects]
        return subjects, {**regression_scores(truth, pred, cfg.seed), "unparsed_answers": unparsed,
                          "answers": dict(Counter(answers).most_common(8))}  # what the LM says, for diagnosis
    # Majority vote over a subject's windows; ties go to the first label alphabetically.
    pred = [max(sorted(set(v)), key=v.count) for v in (per_subject[s] for s in subjects)]
    truth = [rows[index[s]][name] for s in subjects]
    pred = [SEX_LABELS.get(p, p) for p in pred] if name == "sex" else pred
    score = [float(np.mean(positive[s])) for s in subjects]
    return subjects, classification_scores(truth, pred, score, cfg.seed)


def phenotype_section(model, samples: list, rest: Dataset, excluded: set, cfg) -> dict:
    """LM (per input paradigm) vs FC-baseline vs chance phenotype scores on the test subjects of `samples`."""
    rows = rest.table("subjects")
    index = {r["subject"]: i for i, r in enumerate(rows)}
    series = np.asarray(rest.array("timeseries"))
    features = fc_features(series)
    # the corpus describes runs on the dataset's Schaefer atlas (corpus.inputs.open_inputs)
    networks = network_fc_features(series, network_index(Atlas.schaefer(int(rest.atlas_info["n_parcels"]))))
    population = _population(rest)
    out = {}
    for name in ("sex", "diagnosis", "site", "age"):
        items = [s for s in samples if s["json"].get("phenotype") == name and not s["json"]["shots"]]
        asked = {s["json"]["subject"] for s in items} | excluded
        train_ages = [float(r["age"]) for r in rows if r["subject"] not in asked and r.get("age") is not None]
        result, test_subjects = {}, set()
        for paradigm, key in PARADIGM_KEYS.items():
            chosen = _first_windows([s for s in items if s["json"].get("paradigm", "brain") == paradigm],
                                    cfg.phenotype_windows)
            if chosen:
                subjects, result[key] = _lm_phenotype(model, chosen, name, rows, train_ages, cfg)
                test_subjects |= set(subjects)
        if not result:
            continue
        # subjects whose value is unknown (own data: an empty participants.tsv cell) train no baseline
        train = [i for i, r in enumerate(rows)
                 if r["subject"] not in test_subjects | excluded and r.get(name) is not None]
        test = [index[s] for s in sorted(test_subjects)]
        task = "regression" if name == "age" else "classification"
        target = [rows[i][name] for i in train], [rows[i][name] for i in test]
        base, network = (phenotype_baseline(x[train], target[0], x[test], target[1], task, cfg.seed)
                         for x in (features, networks))
        for scores in (base, network):
            scores.pop("predictions")
        chance = chance_baseline(target[0], target[1], task, cfg.seed)
        for scores in (*result.values(), base, network, chance):
            # Pearson r (constant predictions) and R² (one test subject) can be undefined: JSON gets null.
            for key in ("pearson_r", "r2"):
                if scores.get(key) is not None and not np.isfinite(scores[key]):
                    scores[key] = None
        out[name] = {**result, "fc_baseline": base, "network_fc_baseline": network,
                     "constant_mean" if name == "age" else "majority_class": chance,
                     "n_subjects": len(test)}
        if population is not None:
            out[name]["ideal_observer"] = _ideal_observer_scores(population, rows, series[test], test, name, cfg.seed)
    return out


def _population(rest: Dataset):
    """The simulator that generated a synthetic rest dataset (None for real data: no ideal observer)."""
    if rest.manifest.get("source") != "synthetic":
        return None
    return RestPopulation(from_dict(RestWorldConfig, rest.config))


def _ideal_observer_scores(population, rows: list[dict], series: np.ndarray, test: list[int], name: str,
                           seed: int):
    test_rows = [rows[i] for i in test]
    observed = ideal_observer(population, test_rows, series, name)
    truth = [r[name] for r in test_rows]
    if name == "age":
        return regression_scores(truth, observed["predictions"], seed)
    return classification_scores(truth, observed["predictions"], observed["probabilities"], seed)


REAL_RUN_STAGE = "real_rest_tokens"  # pipeline stage holding the real run's tokens (fmrilm/pipeline.py)


def _masked_parcel_mean(tokenizer, grouped: torch.Tensor) -> np.ndarray:
    """Parcel-grouped vertex values ``[N, P, Vmax]`` → parcel means ``[N, P]`` (padding ignored)."""
    mask = tokenizer.mask
    return ((grouped * mask).sum(-1) / mask.sum(-1)).numpy()


@torch.no_grad()
def _parcel_means(tokenizer, tokens: np.ndarray) -> np.ndarray:
    return _masked_parcel_mean(tokenizer, tokenizer.decode(torch.as_tensor(np.asarray(tokens, np.int64))))


def _patch_scores(model, tokenizer, contexts, targets, previous, autoreg, true_tokens) -> dict:
    """Next-patch R² (pooled over parcels and the patch's TRs) of the LM's brain head, kept among the rest
    codes and decoded by the rest companion, beside persistence, the patch AR and the tokenizer ceiling.

    ``model`` is the expected patch under the head's distribution at each parcel's token (the forecast of
    least squared error it implies); ``model_greedy`` decodes the most likely codes, which are patches of
    full variance however uncertain the head is."""
    predicted, probabilities = generate_scan(model, contexts, tokenizer.tokens_per_scan, probabilities=True,
                                             codes=(tokenizer.vocab_size, tokenizer.total_vocab_size))

    def decode(tokens):
        return tokenizer.decode_rest(np.asarray(tokens, np.int64)).numpy()

    greedy = r2_score(targets, decode(predicted))
    expected = (r2_score(targets, tokenizer.expected_rest_patches(probabilities).numpy())
                if tokenizer.rest.cfg.levels == 1 else greedy)
    return {"model": expected, "model_greedy": greedy, "persistence": r2_score(targets, previous),
            "linear_ar": r2_score(targets, autoreg), "tokenizer_ceiling": r2_score(targets, decode(true_tokens)),
            "unit": f"patch of {tokenizer.rest.width} TRs", "n_targets": len(targets),
            "decoding": "expected patch" if tokenizer.rest.cfg.levels == 1 else "greedy codes"}


def _temporal_patches(model, tokenizer, items: list, rest: Dataset, index: dict, train: list) -> dict:
    windows = rest_windows(np.asarray(rest.array("timeseries"), np.float32), tokenizer.rest.width)
    where = [(index[s["json"]["subject"]], int(s["json"]["window"])) for s in items]
    ar = PatchAR(order=1).fit(windows[train])
    previous = np.stack([windows[i, j - 1] for i, j in where])
    return _patch_scores(model, tokenizer, [s["tokens.npy"][:-1] for s in items],
                         np.stack([windows[i, j] for i, j in where]), previous, ar.predict(previous[:, None]),
                         np.stack([s["tokens.npy"][-1] for s in items]))


def temporal_section(model, tokenizer, samples: list, rest: Dataset, excluded: set, cfg) -> dict:
    """Next-scan R² of the LM beside persistence, AR(1) and the tokenizer ceiling; with a rest companion,
    next-patch R² (fMRI-LM's F2F) beside persistence, the patch AR and the companion's ceiling."""
    items = [s for s in samples if s["json"]["task"] == "temporal"][: cfg.n_temporal]
    if not items:
        return {"status": "skipped", "reason": "no temporal samples in the test split"}
    rows = rest.table("subjects")
    index = {r["subject"]: i for i, r in enumerate(rows)}
    test_ids = {s["json"]["subject"] for s in items}
    train = [i for i, r in enumerate(rows) if r["subject"] not in test_ids | excluded]
    if tokenizer.rest is not None:
        return {**_temporal_patches(model, tokenizer, items, rest, index, train), "source": rest.manifest.get("source")}
    series = zscore_time(np.asarray(rest.array("timeseries"), np.float32))
    ar = LinearAR(order=1).fit(series[train])
    per_scan = tokenizer.tokens_per_scan
    predicted = generate_scan(model, [s["tokens.npy"][:-1] for s in items], per_scan)
    targets, persistence, autoreg = [], [], []
    for s in items:
        run, j = series[index[s["json"]["subject"]]], int(s["json"]["window"])
        targets.append(run[j])
        persistence.append(run[j - 1])
        autoreg.append(ar.predict(run[j - 1:j + 1])[0])
    targets = np.stack(targets)
    ceiling = _parcel_means(tokenizer, np.stack([s["tokens.npy"][-1] for s in items]))
    return {"model": r2_score(targets, _parcel_means(tokenizer, predicted)),
            "persistence": r2_score(targets, np.stack(persistence)),
            "linear_ar": r2_score(targets, np.stack(autoreg)),
            "tokenizer_ceiling": r2_score(targets, ceiling),
            "n_targets": len(items), "source": rest.manifest.get("source")}


def real_run_tokens(heldout) -> Path | None:
    """The real run's tokens dataset of the run the corpus belongs to, or None if it has none.

    The run is the corpus's parent directory; its ``stages.json`` says whether stage ``real_rest_tokens``
    finished and where it wrote (:func:`fmrilm.artifacts.read_state`).
    """
    from fmrilm.artifacts import read_state

    found = read_state(Path(heldout.corpus).parent).get(REAL_RUN_STAGE)
    return Path(found) if found and (Path(found) / "manifest.json").is_file() else None


@torch.no_grad()
def real_run_signal(tokenizer, rest: Dataset, subject: int = 0) -> np.ndarray:
    """Parcel signal ``[T, P]`` of a real run as the tokenizer sees it: each vertex z-scored over time
    (as :mod:`fmrilm.tokenizer.tokens` does before encoding), then averaged within each parcel."""
    vertices = zscore_time(np.asarray(rest.array("vertex_timeseries")[subject], np.float32))
    return _masked_parcel_mean(tokenizer, tokenizer.group_vertices(vertices, rest.path))


def real_run_temporal(model, tokenizer, tokens_dir, n_context: int, n_targets: int) -> dict:
    """Next-scan R² on the last `n_targets` TRs of a real run: LM, persistence, AR(1), tokenizer ceiling.

    Parameters
    ----------
    tokens_dir : path
        Tokens dataset of the run, one scan per TR (``rest_input == "vertex"``), encoded by `tokenizer`.
    n_context : int
        Scans before each target that the LM is given.
    n_targets : int
        Targets: the run's last TRs (fewer if the run is too short to leave context and AR training).

    Raises
    ------
    InputError
        Tokens from another tokenizer (fingerprint mismatch).
    """
    tokens_ds = Dataset(tokens_dir, kind="tokens")
    manifest = tokens_ds.manifest
    fingerprint = tokenizer.describe()["fingerprint"]
    if manifest["tokenizer"].get("fingerprint") != fingerprint:
        raise InputError(Path(tokens_dir) / "manifest.json", "tokenizer.fingerprint",
                         f"{manifest['tokenizer'].get('fingerprint')}, the evaluated tokenizer is {fingerprint}")
    rest = Dataset(manifest["source_dataset"], kind="rest")
    if manifest.get("rest_input") == "patch" and tokenizer.rest is not None:
        return _real_run_patches(model, tokenizer, tokens_ds, rest, n_context, n_targets)
    if manifest.get("rest_input") != "vertex":
        return {"status": "skipped", "reason": f"{tokens_dir}: neither one scan per TR nor rest patches"}
    if "vertex_timeseries" not in rest.manifest["arrays"]:
        return {"status": "skipped", "reason": f"{rest.path}: no vertex_timeseries (not a real run)"}
    tokens = np.asarray(tokens_ds.array("tokens")[0], np.int64)  # [T, P·L]
    signal = real_run_signal(tokenizer, rest)
    # The first target leaves n_context scans for the LM and at least 2 TRs to fit the AR(1) on.
    first = len(tokens) - min(n_targets, len(tokens) - max(n_context, 2))
    if first >= len(tokens):
        return {"status": "skipped", "reason": f"{len(tokens)} TRs leave no target after {n_context} context scans"}
    targets = signal[first:]
    contexts = [tokens[j - n_context:j] for j in range(first, len(tokens))]
    predicted = generate_scan(model, contexts, tokenizer.tokens_per_scan)
    ar = LinearAR(order=1).fit(signal[:first])
    return {"model": r2_score(targets, _parcel_means(tokenizer, predicted)),
            "persistence": r2_score(targets, persistence_forecast(signal[first - 1:])),
            "linear_ar": r2_score(targets, ar.predict(signal[first - 1:])),
            "tokenizer_ceiling": r2_score(targets, _parcel_means(tokenizer, tokens[first:])),
            "n_targets": int(len(targets)), "first_target_tr": int(first), "n_context": int(n_context),
            "n_timepoints": int(len(tokens)), "tr": rest.manifest.get("tr"), "source": rest.manifest.get("source")}


def _real_run_patches(model, tokenizer, tokens_ds: Dataset, rest: Dataset, n_context: int, n_targets: int) -> dict:
    """:func:`real_run_temporal` on rest patches: the last `n_targets` patches (at most half the run, the
    first half fits the patch AR), each from the `n_context` patches before it."""
    windows = rest_windows(np.asarray(rest.array("timeseries")[:1], np.float32), tokenizer.rest.width)[0]
    tokens = np.asarray(tokens_ds.array("tokens")[0], np.int64)  # [n_patches, P·L]
    first = max(len(tokens) - n_targets, len(tokens) // 2, n_context, 2)
    if first >= len(tokens):
        return {"status": "skipped", "reason": f"{len(tokens)} patches leave no target after {n_context} context "
                                               "patches and half the run for the AR"}
    ar = PatchAR(order=1, pooled=True).fit(windows[None, :first])  # one run: a map shared by the parcels
    previous = windows[first - 1:-1]
    out = _patch_scores(model, tokenizer, [tokens[j - n_context:j] for j in range(first, len(tokens))],
                        windows[first:], previous, ar.predict(previous[:, None]), tokens[first:])
    return {**out, "first_target_patch": int(first), "n_context": int(n_context), "n_patches": int(len(tokens)),
            "tr": rest.manifest.get("tr"), "source": rest.manifest.get("source")}


def rest_section(model, tokenizer, heldout, cfg) -> dict:
    """Rest evaluations, or a skip reason when the corpus holds no rest data.

    Keys ``phenotype``, ``temporal`` (synthetic held-out subjects) and ``temporal_real_run``
    (:func:`real_run_temporal` on the run's ``real_rest_tokens``, or a skip reason).
    """
    path = heldout.input_path("rest_dataset")
    if path is None or not heldout.test_samples:
        return {"status": "skipped", "reason": "the corpus has no rest dataset / no rest test samples"}
    rest = Dataset(path, kind="rest")
    excluded = set(heldout.summary.get("fewshot_subjects", [])) | heldout.untrained_rest_subjects
    out = {"phenotype": phenotype_section(model, heldout.test_samples, rest, excluded, cfg),
           "temporal": temporal_section(model, tokenizer, heldout.test_samples, rest, excluded, cfg)}
    temporal = [s for s in heldout.test_samples if s["json"]["task"] == "temporal"]
    real_tokens = real_run_tokens(heldout)
    if real_tokens is None or not temporal:
        out["temporal_real_run"] = {"status": "skipped", "reason": "no real_rest_tokens stage in this run / "
                                                                   "no temporal samples to take the context from"}
    else:
        # The LM's context length is that of its temporal training samples (target scan excluded).
        n_context = len(temporal[0]["tokens.npy"]) - 1
        out["temporal_real_run"] = real_run_temporal(model, tokenizer, real_tokens, n_context, cfg.n_temporal)
    return out
