"""Readable evaluation output: ``report.md`` tables beside ``report.json``, and the brain map PNG."""

from __future__ import annotations

import math
from pathlib import Path

from fmrilm.evaluation.rest_eval import PARADIGM_KEYS
from fmrilm.io import atomic_path

CAPTION_COLUMNS = ("semscore", "BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _interval(ci) -> str:
    return "—" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _skipped(section) -> bool:
    return isinstance(section, dict) and section.get("status") == "skipped"


READING = ("How to read these numbers: each headline figure stands beside the control that says what the LM "
           "gets without the scan (shuffled brain: another test item's scan, averaged over several derangements; "
           "text only: no scan), a baseline (ridge decoder: vertices → caption embedding → nearest training "
           "caption; FC logistic/ridge for phenotypes; persistence and linear AR for the next scan), the base rate "
           "(majority class, training mean) and a bound (bank ceiling: the best training caption per item, the most "
           "a retrieval decoder can reach; ideal observer: the simulator's own most likely training stimulus). "
           "Intervals are 95 % bootstraps over test stimuli (cluster: a stimulus with all its subjects' items) or "
           "test subjects; a 3-seed spread is in `benchmarks/seeds.py`.")


def _protocol_lines(report: dict) -> list[str]:
    p = report.get("protocol") or {}
    if not p:
        return []
    return [f"Scored split: **{p['scored_split']}** of splits file `{p['splits']['path']}` (sha256 "
            f"{p['splits']['sha256'][:12]}). {p['note']}", ""]


def _headline_markdown(report: dict) -> list[str]:
    cap, vqa, targets = report["captioning"], report["vqa"], report["targets"]
    ret = report["retrieval"]

    def sem(name):
        return cap.get(name, {}).get("semscore")

    def ci(name):
        return _interval(targets.get(name, {}).get("ci95"))

    zero = report.get("zero_shot", {})
    rows = [("caption SemScore", sem("model"), f"shuffled {_fmt(sem('shuffled'))}, text only {_fmt(sem('text_only'))}",
             f"ridge {_fmt(sem('ridge_decoder'))}", f"bank ceiling {_fmt(sem('bank_ceiling'))}, ideal observer "
             f"{_fmt(sem('ideal_observer'))}", f"× shuffled {ci('caption_semscore_vs_shuffled')}; − ridge "
             f"{ci('caption_semscore_minus_ridge')}"),
            ("brain→caption top-1", ret["brain_embedder_tokens"]["brain_to_caption"]["top1"],
             f"chance {_fmt(1 / max(ret['brain_embedder_tokens'].get('n_way', 1), 1))}",
             f"ridge {_fmt(ret['ridge']['brain_to_caption']['top1'])}",
             f"ideal observer {_fmt(ret.get('ideal_observer', {}).get('brain_to_caption', {}).get('top1'))}",
             f"− ridge {ci('top1_minus_ridge')}")]
    if not _skipped(vqa):
        rows.insert(1, ("VQA exact match", vqa["model"]["overall"], f"shuffled {_fmt(vqa['shuffled']['overall'])}, "
                        f"text only {_fmt(vqa['text_only']['overall'])}", "—", "—",
                        f"× shuffled {ci('vqa_vs_shuffled')}"))
    if not _skipped(zero) and "model" in zero:
        rows.append(("zero-shot naming", zero["model"].get("fraction"),
                     f"shuffled {_fmt(zero['shuffled'].get('fraction'))}, "
                     f"text only {_fmt(zero['text_only'].get('fraction'))}", "—", "—", "—"))
    rest = report.get("rest", {})
    for name, result in ({} if _skipped(rest) else rest.get("phenotype", {})).items():
        key = "mae" if name == "age" else "accuracy"
        base = result.get("constant_mean" if name == "age" else "majority_class", {})
        for paradigm, label in PARADIGM_LABELS.items():
            if paradigm in result:
                rows.append((f"{name} {key} ({label})", _with_interval(result[paradigm], key),
                             f"base rate {_with_interval(base, key)}",
                             f"FC {_with_interval(result['fc_baseline'], key)}; network FC "
                             f"{_with_interval(result['network_fc_baseline'], key)}",
                             f"ideal observer {_with_interval(result['ideal_observer'], key)}"
                             if "ideal_observer" in result else "—", "subjects resampled"))
    t = rest.get("temporal") if not _skipped(rest) else None
    if t and not _skipped(t):
        rows.append(("next-scan R²", t["model"], f"persistence {_fmt(t['persistence'])}",
                     f"linear AR {_fmt(t['linear_ar'])}", f"tokenizer ceiling {_fmt(t['tokenizer_ceiling'])}", "—"))
    return ["## Headline figures", "", READING, "",
            *_table(("figure", "model", "controls / base rate", "baseline", "bound", "95 % interval"), rows)]


def render_markdown(report: dict) -> str:
    """Markdown tables of every section of a report dict (see :func:`fmrilm.evaluation.runner.run_evaluation`)."""
    out = ["# fmrilm evaluation", "", *_protocol_lines(report), f"Items: {report['items']}", ""]
    if report.get("skipped"):
        out += ["Sections skipped (what this data cannot support):", "",
                *[f"- {name}: skipped, {reason}" for name, reason in report["skipped"].items()], ""]
    out += _headline_markdown(report)
    cap = report["captioning"]
    out += ["## Captioning (repeats averaged)", ""]
    out += _table(("condition", *CAPTION_COLUMNS),
                  [(name, *(cap[name].get(c) for c in CAPTION_COLUMNS)) for name in cap["conditions"]])
    out += [f"SPICE: unavailable ({cap['model']['unavailable'].get('SPICE', '')})", "",
            "Bounds on the training captions: ideal_observer (the simulator's most likely training stimulus under its "
            "full noise covariance, its first caption), bank_ceiling (per item the best train-split caption by "
            "SemScore; no decoder answering with training captions can exceed it).", ""]
    out += _vqa_markdown(report["vqa"], cap["shuffled"])
    ret = report["retrieval"]
    out += [f"## Retrieval ({ret['ridge']['n_way']}-way over {ret['ridge']['n_distinct']} distinct test captions, "
            f"draws: {ret['ridge']['n_draws']})", ""]
    out += _table(("head", "brain→caption top1", "top5", "caption→brain top1", "top5",
                   "top1 − ridge 95 % CI (stimuli resampled)"),
                  [(name, ret[name]["brain_to_caption"].get("top1"), ret[name]["brain_to_caption"].get("top5"),
                    ret[name]["caption_to_brain"].get("top1"), ret[name]["caption_to_brain"].get("top5"),
                    _interval(ret[name].get("top1_minus_ridge_ci95")))
                   for name in ("brain_embedder_tokens", "continuous_tokens", "ridge", "ideal_observer")
                   if name in ret])
    zs = report["zero_shot"]
    out += ["## Zero-shot naming of novel categories", ""]
    bank = report["items"].get("retrieval_bank")
    if bank:
        out += [f"The LM's retrieval bank holds {bank['captions']} captions, {bank['text_only']} of them text-only "
                "scenes (no brain data) that name novel categories" + ("" if bank["text_only"] else
                                                                       ": none can name a novel category") + ".", ""]
    out += (["skipped: " + zs["reason"], ""] if _skipped(zs) else
            _table(("condition", "naming rate", "n"), [(c, zs[c]["fraction"], zs[c]["n"]) for c in zs]))
    fs = report["few_shot"]
    out += ["## Few-shot (in-context captioning SemScore)", ""]
    out += _table(("k", "SemScore (retrieval as deployed)", "SemScore without retrieval"),
                  [(k, v.get("semscore", v.get("reason")),
                    v["no_retrieval"].get("semscore", v["no_retrieval"].get("reason")) if "no_retrieval" in v else None)
                   for k, v in fs["in_context"].items()])
    out += _adaptation_markdown(fs["subject_adaptation"])
    out += _rest_markdown(report["rest"])
    out += _forgetting_markdown(report.get("forgetting"))
    out += ["## Targets", ""]
    out += _table(("target", "measured", "95 % CI (stimuli resampled)", "threshold", "met"),
                  [(name, t["measured"], _interval(t.get("ci95")), t["threshold"], t["met"])
                   for name, t in report["targets"].items()])
    out += ["Intervals resample test stimuli, each with all its subjects' items (cluster bootstrap: the items "
            "of one stimulus are correlated).", ""]
    out += ["## Examples", ""]
    for ex in report["examples"]:
        out += [f"- **{ex['subject']} / stim {ex['stimulus']}** reference: {ex['reference']}",
                f"  - generated: {ex['generated']}", f"  - shuffled: {ex['shuffled']}",
                f"  - Q: {ex['question']} A: {ex['answer']} (truth: {ex['truth']})",
                f"  - captions in its prompt (retrieved from the training bank): "
                f"{' | '.join(ex['prompt_captions']) if ex.get('prompt_captions') else 'none (no retriever)'}",
                f"  - nearest test captions (retrieval benchmark): {' | '.join(ex['nearest_test_captions'])}"]
    out += ["", f"![tokenizer map]({report['brain_map']})", ""]
    return "\n".join(out)


def _vqa_markdown(vqa: dict, shuffled_captions: dict) -> list[str]:
    out = ["## VQA (exact match)", ""]
    if _skipped(vqa):
        return out + ["skipped: " + vqa["reason"], ""] + _derangement_note(shuffled_captions, {})
    types = sorted(vqa["model"]["by_type"])
    out += _table(("condition", "overall", *types),
                  [(c, vqa[c]["overall"], *(vqa[c]["by_type"][t]["accuracy"] for t in types))
                   for c in ("model", "shuffled", "text_only")])
    return out + _derangement_note(shuffled_captions, vqa["shuffled"])


def _forgetting_markdown(section: dict | None) -> list[str]:
    """Knowledge kept: general-text perplexity and fixed text-only questions, pretrained base vs adapted."""
    out = ["## Knowledge kept (general text, no scans)", ""]
    if not section or "skipped" in section:
        return out + [f"skipped: {(section or {}).get('skipped', 'not measured')}", ""]
    out += _table(("model", "perplexity", "fixed questions answered"),
                  [(name, section[name]["perplexity"], section[name]["hits"]) for name in ("base", "adapted")])
    out += [f"Perplexity ratio adapted / base: {_fmt(section['perplexity_ratio'])} over {section['n_texts']} "
            "held-out general sentences (fmrilm/evaluation/data/general_text.json).", ""]
    out += _table(("question", "base", "adapted"),
                  list(zip(section["questions"], section["base"]["answers"], section["adapted"]["answers"])))
    return out


def _derangement_note(captioning: dict, vqa: dict) -> list[str]:
    """How the shuffled-brain rows were averaged, with each derangement's score."""
    if "per_derangement" not in captioning:
        return []
    return [f"shuffled: mean over {captioning['n_derangements']} derangements of the test items; per derangement "
            f"SemScore {', '.join(_fmt(v) for v in captioning['per_derangement'])}, VQA overall "
            f"{', '.join(_fmt(v) for v in vqa.get('per_derangement', []))}.", ""]


def _adaptation_markdown(section: dict) -> list[str]:
    out = ["## Held-out-subject adaptation (new subject encoders, codebook and LM frozen)", ""]
    if _skipped(section):
        return out + ["skipped: " + section["reason"], ""]
    rows = list(section["conditions"].items())
    n_way = rows[0][1]["n_way"]
    out += [f"Subject {section['subject']}: encoders fitted on k of {section['train_pool']} training-split "
            f"stimuli, scored on {section['test_stimuli']} test stimuli (repeats averaged); "
            f"{n_way}-way retrieval, chance {1 / n_way:.3f}.", ""]
    return out + _table(("condition", "R² vs clean", "R² vs scan", "top1 brain embedder", "top1 read-out",
                         "SemScore"),
                        [(name, c.get("r2_clean"), c["r2"], c.get("top1_brain_embedder"), c.get("top1_readout"),
                          c["semscore"]) for name, c in rows])


def _rest_markdown(rest: dict) -> list[str]:
    out = ["## Rest", ""]
    if _skipped(rest):
        return out + ["skipped: " + rest["reason"], ""]
    rows = []
    for name, result in rest["phenotype"].items():
        chance = result.get("constant_mean" if name == "age" else "majority_class", {})
        for key in ("mae",) if name == "age" else ("accuracy", "balanced_accuracy", "auc"):
            lm = [_with_interval(result[p], key) if p in result else "—" for p in PARADIGM_LABELS]
            baselines = (_with_interval(s, key) for s in (result["fc_baseline"], result["network_fc_baseline"], chance))
            rows.append((name, key, *lm, *baselines,
                         _with_interval(result["ideal_observer"], key) if "ideal_observer" in result else "—",
                         result["n_subjects"]))
    out += _table(("phenotype", "metric", *(f"LM: {label}" for label in PARADIGM_LABELS.values()), "FC baseline",
                   "network FC baseline", "majority class / training mean", "ideal observer", "subjects"), rows)
    out += ["Phenotype intervals: 95 % bootstrap over the test subjects (the same resamples for every column); the "
            "base rate is the training subjects' majority class / mean age given to every test subject. FC baseline: "
            "logistic / ridge on every Fisher-z FC edge; network FC baseline: the same on the 28 within- and "
            "between-network FC means the descriptors summarise (the text states the 7 within-network ones and the "
            "most atypical pair).", ""]
    rows, notes = [], []
    for label, key in (("synthetic held-out subjects", "temporal"), ("real brainspace run", "temporal_real_run")):
        t = rest.get(key)
        if t is None:
            continue
        if _skipped(t):
            notes.append(f"next scan on the {label} skipped: {t['reason']}")
        else:
            rows.append((label, t["model"], t.get("model_greedy"), t["persistence"], t["linear_ar"],
                         t["tokenizer_ceiling"]))
    if rows:  # rest patches: LM = the expected patch under the brain head, greedy = its most likely codes
        out += _table(("next-scan R² (parcels)", "LM", "LM greedy codes", "persistence", "linear AR",
                       "tokenizer ceiling"), rows)
    return out + notes + ([""] if notes else [])


# report key of the LM's phenotype scores per input paradigm → its column label
PARADIGM_LABELS = {PARADIGM_KEYS[p]: label for p, label in (("brain", "tokens"), ("brain_descriptors",
                   "tokens + descriptors"), ("descriptors", "descriptors only"))}


def _with_interval(scores: dict, key: str) -> str:
    """``value [low, high]`` of one metric, or n/a where it is undefined (e.g. AUC without two classes)."""
    if scores.get(key) is None:
        return "n/a"
    ci = scores.get("ci95", {}).get(key)
    return _fmt(scores[key]) + ("" if ci is None else f" {_interval(ci)}")


def write_markdown(report: dict, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(render_markdown(report))
    return path


def render_rest_fewshot(report: dict) -> str:
    """Markdown of a few-shot phenotype report (:mod:`fmrilm.evaluation.rest_fewshot`): accuracy with its
    95 % interval over the queries (draw 0) per k and condition, beside zero-shot and the base rate."""
    out = ["# Few-shot phenotypes on held-out rest subjects", "", report["protocol"]["note"], ""]
    for name, section in report["phenotypes"].items():
        numeric = "constant_mean" in section  # age: MAE in years, beside the k examples' mean
        metric, base, conditions, header = (
            ("mae", "constant_mean", ("in_context", "lora", "fc_ridge", "examples_mean"),
             ("k", "in-context MAE", "LoRA MAE", "FC ridge MAE", "examples' mean age MAE")) if numeric else
            ("accuracy", "majority_class", ("in_context", "lora", "fc_logistic"),
             ("k", "in-context", "LoRA", "FC logistic")))
        fixed = (f"zero-shot {_with_interval(section['zero_shot'], metric)}; {base.replace('_', ' ')} "
                 f"{_with_interval(section[base], metric)}; {section['n_queries']} test subjects "
                 f"answered, {section['pool']} runs in the few-shot pool")
        rows = []
        for k, result in section["k"].items():
            if _skipped(result):
                rows.append((k, f"skipped: {result['reason']}", *[""] * (len(conditions) - 1)))
                continue
            first = result["draws"][0]
            rows.append((k, *(f"skipped: {first[c]['reason']}" if _skipped(first.get(c, {})) else
                              _with_interval(first[c], metric) if c in first else "—" for c in conditions)))
        out += [f"## {name}", "", fixed, "", *_table(header, rows)]
    return "\n".join(out) + "\n"
