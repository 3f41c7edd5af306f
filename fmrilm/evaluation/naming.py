"""Zero-shot naming: how often generated captions name a category never paired with brain data.

A caption names a category when it contains the category or one of its synonyms as whole words,
case-insensitively, with the last word in singular or regular plural form ("zebra", "zebras";
"bus", "buses"; "pony", "ponies"; "fire hydrant", "fire hydrants"). Irregular plurals and
other names go in the synonyms dict ({"person": ["people", "man", "woman"]}).

>>> zero_shot_naming(["two zebras grazing", "a horse in a field"], ["zebra", "zebra"])["fraction"]
0.5
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict

from fmrilm.errors import InputError


def _plural_forms(word: str) -> set[str]:
    forms = {word, word + "s", word + "es"}
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        forms.add(word[:-1] + "ies")
    return forms


@functools.lru_cache(maxsize=4096)
def _name_pattern(name: str) -> re.Pattern:
    """Whole-word regex for `name` (one or more words) in singular or regular plural form."""
    *head, last = name.lower().split()
    lasts = "|".join(sorted(map(re.escape, _plural_forms(last)), key=len, reverse=True))
    prefix = "".join(re.escape(w) + r"\s+" for w in head)
    return re.compile(rf"\b{prefix}(?:{lasts})\b")


def names_category(caption: str, category: str, synonyms: dict | None = None) -> bool:
    """Whether `caption` names `category` or one of ``synonyms[category]``."""
    names = [category, *((synonyms or {}).get(category, []))]
    text = caption.lower()
    return any(_name_pattern(n).search(text) for n in names if n.strip())


def zero_shot_naming(captions, categories, synonyms: dict | None = None) -> dict:
    """Fraction of captions that name their item's category, overall and per category.

    Parameters
    ----------
    captions : list of str
        Generated captions of novel-category test items.
    categories : list of (str or list of str)
        The item's novel category; with a list, naming any of them counts.
    synonyms : dict, optional
        ``{category: [other accepted names]}``.

    Returns
    -------
    dict
        ``{"fraction": float, "n": int, "by_category": {category: {"fraction": float, "n": int}}}``;
        an item with several categories counts once under each.
    """
    captions, categories = list(captions), list(categories)
    if len(captions) != len(categories):
        raise InputError("naming", "rows", f"{len(captions)} captions, {len(categories)} categories")
    if not captions:
        raise InputError("naming", "rows", "no captions to score")
    hits, by_category = [], defaultdict(list)
    for caption, cats in zip(captions, categories):
        cats = [cats] if isinstance(cats, str) else list(cats)
        if not cats:
            raise InputError("naming", "categories", f"empty category list for caption {caption!r}")
        named = {c: names_category(caption, c, synonyms) for c in cats}
        hits.append(any(named.values()))
        for c, hit in named.items():
            by_category[c].append(hit)
    return {"fraction": sum(hits) / len(hits), "n": len(hits),
            "by_category": {c: {"fraction": sum(h) / len(h), "n": len(h)} for c, h in sorted(by_category.items())}}
