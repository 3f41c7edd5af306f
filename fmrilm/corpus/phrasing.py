"""Seeded wording: paraphrased prompts per task and descriptor texts with exact numbers.

Every choice draws from a ``numpy.random.Generator`` the caller seeds per sample
(:func:`sample_rng`), so a corpus is identical for a seed whatever the build order. Numbers are
printed with :func:`fmt` (two decimals, sign where a sign is meaningful), so a text's figures are
the descriptor's values rounded to 0.01.
"""

from __future__ import annotations

import zlib

import numpy as np

from fmrilm.brain.atlas import NETWORKS, Atlas
from fmrilm.corpus import SCAN
from fmrilm.corpus.descriptors_rest import GRAPH_METRICS, RestFeatures
from fmrilm.corpus.descriptors_task import TaskDescriptor

NETWORK_NAMES = {"Vis": "visual", "SomMot": "somatomotor", "DorsAttn": "dorsal attention",
                 "SalVentAttn": "salience / ventral attention", "Limbic": "limbic",
                 "Cont": "frontoparietal control", "Default": "default mode"}
HEMISPHERE_NAMES = {"LH": "left", "RH": "right"}

# Paraphrased instructions. Each holds the scan placeholder exactly once (temporal: {scans}).
PROMPTS = {
    "caption": (f"{SCAN} Describe the image the participant was viewing.",
                f"Brain activity: {SCAN}\nWrite a one-sentence caption of the scene that was shown.",
                f"What was the person looking at during this scan? {SCAN}",
                f"Caption the visual stimulus that evoked this response: {SCAN}"),
    "vqa": (f"{SCAN} Question about the viewed image: {{question}} Answer:",
            f"Brain activity: {SCAN}\nQ: {{question}}\nA:",
            f"Based on this scan {SCAN}, answer the question: {{question}}"),
    "describe": (f"{SCAN} Describe this pattern of brain activity.",
                 f"Summarise the functional features of this scan: {SCAN}",
                 f"Brain data: {SCAN}\nWhat does this activity look like?"),
    "temporal": ("Consecutive scans of one run: {scans}. Predict the next scan.",
                 "Given the preceding scans {scans}, continue the run with the next scan.",
                 "Run so far: {scans}\nNext scan:"),
    "sex": (f"{SCAN} Is this participant female or male?",
            f"Resting-state scan: {SCAN}\nWhat is the participant's sex (female or male)?",
            f"Based on this brain activity {SCAN}, classify the person's sex as female or male."),
    "age": (f"{SCAN} How old is this participant, in years?",
            f"Resting-state scan: {SCAN}\nEstimate the participant's age in years.",
            f"Based on this brain activity {SCAN}, what is the person's age?"),
    "diagnosis": (f"{SCAN} Is this participant a control or a patient?",
                  f"Resting-state scan: {SCAN}\nDiagnosis (control or patient)?",
                  f"Based on this brain activity {SCAN}, is the person a patient or a healthy control?"),
    # the sites differ between datasets, so the question names them ({sites}: "site-1, site-2 or site-3")
    "site": (f"{SCAN} At which site was this participant scanned ({{sites}})?",
             f"Resting-state scan: {SCAN}\nAcquisition site ({{sites}})?",
             f"Based on this brain activity {SCAN}, which scanner site recorded it: {{sites}}?"),
}
SHOT_SEPARATOR = "\n\n"


def sample_rng(seed: int, *parts) -> np.random.Generator:
    """Generator for one sample, from the corpus seed and stable identifiers (task, index, ...)."""
    key = [int(seed)] + [zlib.crc32(str(p).encode()) for p in parts]
    return np.random.default_rng(key)


def choose(options, rng: np.random.Generator):
    """One of `options`, drawn with `rng`."""
    return options[int(rng.integers(len(options)))]


def fmt(value: float, signed: bool = False) -> str:
    """Two decimals; a leading sign for signed quantities (activation, z-scores)."""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def prompt(kind: str, rng: np.random.Generator, **fields) -> str:
    """A paraphrase of the instruction for `kind` (a task or phenotype field), fields filled in."""
    return choose(PROMPTS[kind], rng).format(**fields)


def scan_placeholders(n: int) -> str:
    """`n` scan placeholders in time order (one per scan: a run of windows, a temporal context)."""
    return " ".join([SCAN] * n)


def temporal_prompt(n_context: int, rng: np.random.Generator) -> str:
    """Instruction holding `n_context` scan placeholders in time order."""
    return prompt("temporal", rng, scans=scan_placeholders(n_context))


def phenotype_with_description(description: str, question: str, with_scan: bool) -> str:
    """fMRI-LM's phenotype prompt: the run's descriptor text before the question. Without the scan
    (descriptors only) the question's scan placeholder becomes "this run"."""
    if not with_scan:
        question = question.replace(f"Resting-state scan: {SCAN}", "Resting-state run described above.")
        question = question.replace(f"Based on this brain activity {SCAN}", "Based on this description")
        question = question.replace(f"{SCAN} ", "")
        if SCAN in question:
            raise ValueError(f"phenotype prompt keeps a scan placeholder: {question!r}")
    return f"Description of the resting-state run: {description}\n{question}"


def with_shots(query_prompt: str, shots: list[tuple[str, str]]) -> str:
    """Prefix a query with in-context examples ``(prompt, answer)`` written in the same format."""
    return SHOT_SEPARATOR.join([f"{p} {a}" for p, a in shots] + [query_prompt])


# --------------------------------------------------------------------- task descriptions
def parcel_phrase(name: str, hemisphere: str, network: str, value: float) -> str:
    return f"{name} ({HEMISPHERE_NAMES[hemisphere]} hemisphere, {NETWORK_NAMES[network]}, {fmt(value, True)})"


def describe_task(desc: TaskDescriptor, rng: np.random.Generator) -> str:
    """Text of a task-scan descriptor: network extremes, top parcels, lateralisation."""
    means = desc.network_means
    hi = max(means, key=means.get)
    lo = min(means, key=means.get)
    network_sentence = choose((
        "Activity is strongest in the {hi} network (mean {hv}) and weakest in the {lo} network ({lv}).",
        "The {hi} network responds most (mean {hv}); the {lo} network least ({lv}).",
        "Mean response by network peaks in the {hi} network at {hv} and is lowest in the {lo} network "
        "at {lv}.",
    ), rng).format(hi=NETWORK_NAMES[hi], hv=fmt(means[hi], True), lo=NETWORK_NAMES[lo],
                   lv=fmt(means[lo], True))
    parcels = ", ".join(parcel_phrase(p.name, p.hemisphere, p.network, p.value) for p in desc.top_parcels)
    parcel_sentence = choose(("The most active parcels are {p}.", "Peak parcels: {p}.",
                              "The strongest responses are in {p}."), rng).format(p=parcels)
    li = desc.lateralisation
    side = "left-lateralised" if li > 0.1 else "right-lateralised" if li < -0.1 else "bilateral"
    lat_sentence = choose(("The response is {side} (lateralisation index {li}).",
                           "Lateralisation index {li}: {side}.",
                           "With a lateralisation index of {li} the pattern is {side}."),
                          rng).format(side=side, li=fmt(li, True))
    return " ".join([network_sentence, parcel_sentence, lat_sentence])


# --------------------------------------------------------------------- rest descriptions
def _z(z: float) -> str:
    """``", z = +1.20"`` relative to the population, or nothing without a population reference."""
    return "" if np.isnan(z) else f", z = {fmt(z, True)}"


def _within_sentence(f: RestFeatures, s: int, rng) -> str:
    parts = [f"{NETWORK_NAMES[n]} {fmt(f.network_fc[s, i, i])}{_z(f.network_fc_z[s, i, i])}"
             for i, n in enumerate(NETWORKS)]
    return choose(("Within-network FC (Fisher z): {p}.", "Functional connectivity within networks: {p}.",
                   "Mean within-network connectivity is {p}."), rng).format(p="; ".join(parts))


def _between_sentence(f: RestFeatures, s: int, rng) -> str:
    iu = np.triu_indices(len(NETWORKS), 1)
    z = f.network_fc_z[s][iu]
    # the most atypical pair when there is a population, else the most strongly coupled pair
    score = np.abs(z) if not np.isnan(z).all() else f.network_fc[s][iu]
    k = int(np.nanargmax(score))
    a, b = iu[0][k], iu[1][k]
    fields = dict(a=NETWORK_NAMES[NETWORKS[a]], b=NETWORK_NAMES[NETWORKS[b]], v=fmt(f.network_fc[s, a, b]),
                  z=_z(f.network_fc_z[s, a, b]))
    return choose(("The most distinctive between-network coupling is {a}–{b} ({v}{z}).",
                   "Between networks, {a} and {b} stand out ({v}{z}).",
                   "Coupling between the {a} and {b} networks is {v}{z}."), rng).format(**fields)


def _graph_sentence(f: RestFeatures, s: int, rng) -> str:
    names = {"efficiency": "global efficiency", "clustering": "clustering coefficient",
             "modularity": "network modularity"}
    parts = [f"{names[k]} {fmt(f.graph[k][s])}{_z(f.graph_z[k][s])}" for k in GRAPH_METRICS]
    return choose(("Graph metrics: {p}.", "On the thresholded connectome: {p}.",
                   "The FC graph has {p}."), rng).format(p="; ".join(parts))


def _gradient_sentence(f: RestFeatures, s: int, atlas: Atlas, rng) -> str:
    low, high = f.gradient_ends(s, atlas)
    fields = dict(lo=NETWORK_NAMES[low], hi=NETWORK_NAMES[high], r=fmt(f.gradient_range[s]),
                  e=f"{100 * f.gradient_share[s]:.0f}%")
    return choose(("The principal gradient runs from the {lo} to the {hi} network (range {r}, {e} of the "
                   "leading eigenvalues).",
                   "Its principal functional gradient spans {r} from {lo} to {hi} ({e} of the leading "
                   "eigenvalues).",
                   "Gradient 1 ({e} of the leading eigenvalues) separates the {lo} and {hi} networks over a "
                   "range of {r}."), rng).format(**fields)


def _amplitude_sentence(f: RestFeatures, s: int, rng) -> str:
    i = int(np.argmax(f.falff[s]))
    fields = dict(n=NETWORK_NAMES[NETWORKS[i]], fa=fmt(f.falff[s, i]), z=_z(f.falff_z[s, i]),
                  a=fmt(f.alff[s].mean()), ac=fmt(f.autocorr[s].mean()),
                  acn=NETWORK_NAMES[NETWORKS[int(np.argmax(f.autocorr[s]))]])
    return choose(("Low-frequency power is highest in the {n} network (fALFF {fa}{z}); mean ALFF {a}. "
                   "Mean lag-1 autocorrelation is {ac}, highest in the {acn} network.",
                   "fALFF peaks in the {n} network at {fa}{z} (mean ALFF {a}); temporal autocorrelation "
                   "averages {ac} and is highest in the {acn} network.",
                   "The {n} network has the largest fALFF ({fa}{z}); ALFF averages {a}, lag-1 "
                   "autocorrelation {ac} (highest: {acn})."), rng).format(**fields)


def describe_rest(f: RestFeatures, s: int, atlas: Atlas, rng: np.random.Generator) -> str:
    """Text describing subject `s`'s run: network FC, graph, gradient, amplitude, autocorrelation."""
    return " ".join([_within_sentence(f, s, rng), _between_sentence(f, s, rng), _graph_sentence(f, s, rng),
                     _gradient_sentence(f, s, atlas, rng), _amplitude_sentence(f, s, rng)])
