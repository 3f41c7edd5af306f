"""Scene graphs for the synthetic NSD-like task world, with reference captions and QA pairs.

A stimulus is a small scene graph: 1–3 objects from ~60 COCO-like categories (eight
supercategories), each with a count, an optional colour and a size, an action (one predicate per
object), a spatial/interaction relation between the first two objects, and a scene context::

    {"scene": "beach",
     "objects": [{"category": "dog", "supercategory": "animals", "count": 2, "colour": "brown",
                  "size": "large", "action": "running"}, ...],
     "relations": [{"subject": 0, "predicate": "next to", "object": 1}]}

Captions are rendered from seeded templates, so numbers, colours and nouns always match the graph
(every caption names every object; colours and sizes are mentioned or omitted, never wrong). QA
pairs are derived from the graph: ``what`` (which category of a supercategory), ``how many``,
``what colour``, ``where`` (the scene) and ``is there`` (yes, and no for an absent category).
Counts are answered with digits (the VQA convention); captions spell them ("two").

Categories in ``novel`` are held out of every brain–text training pair downstream: stimuli that
contain one are marked ``"novel": True``, their captions name the category, and no other
stimulus mentions a novel category anywhere (captions, QA negatives, actions or scene phrases).
"""

from __future__ import annotations

import re

import numpy as np

from fmrilm.errors import InputError

# fmt: off
# name: (plural, supercategory, colours, max count). Colours are the natural ones for the category;
# an empty tuple means the category carries no colour attribute (people, most food, ...).
CATEGORIES: dict[str, tuple[str, str, tuple[str, ...], int]] = {
    "man": ("men", "people", (), 3), "woman": ("women", "people", (), 3),
    "child": ("children", "people", (), 3), "surfer": ("surfers", "people", (), 2),
    "skier": ("skiers", "people", (), 2), "skateboarder": ("skateboarders", "people", (), 2),
    "baseball player": ("baseball players", "people", (), 2),
    "dog": ("dogs", "animals", ("brown", "black", "white"), 3),
    "cat": ("cats", "animals", ("black", "white", "grey"), 2),
    "horse": ("horses", "animals", ("brown", "black", "white"), 3),
    "cow": ("cows", "animals", ("black", "brown", "white"), 3), "sheep": ("sheep", "animals", ("white",), 3),
    "elephant": ("elephants", "animals", ("grey",), 3), "giraffe": ("giraffes", "animals", (), 3),
    "zebra": ("zebras", "animals", (), 3), "bird": ("birds", "animals", ("red", "blue", "white", "black"), 3),
    "bear": ("bears", "animals", ("brown", "black", "white"), 2),
    "car": ("cars", "vehicles", ("red", "blue", "white", "black", "silver"), 3),
    "bus": ("buses", "vehicles", ("red", "yellow", "white", "blue"), 2),
    "truck": ("trucks", "vehicles", ("red", "white", "blue", "green"), 2),
    "bicycle": ("bicycles", "vehicles", ("red", "blue", "black"), 3),
    "motorcycle": ("motorcycles", "vehicles", ("red", "black", "blue"), 2),
    "train": ("trains", "vehicles", ("red", "yellow", "blue"), 1),
    "boat": ("boats", "vehicles", ("white", "red", "blue"), 3),
    "airplane": ("airplanes", "vehicles", ("white",), 2),
    "pizza": ("pizzas", "food", (), 2), "sandwich": ("sandwiches", "food", (), 3),
    "banana": ("bananas", "food", ("yellow", "green"), 3), "apple": ("apples", "food", ("red", "green"), 3),
    "orange": ("oranges", "food", (), 3), "cake": ("cakes", "food", ("white", "pink", "brown"), 1),
    "carrot": ("carrots", "food", (), 3), "donut": ("donuts", "food", ("pink", "brown"), 3),
    "hot dog": ("hot dogs", "food", (), 2),
    "chair": ("chairs", "furniture", ("brown", "black", "white", "red"), 3),
    "couch": ("couches", "furniture", ("brown", "grey", "blue", "red"), 1),
    "bed": ("beds", "furniture", ("white", "blue"), 1),
    "table": ("tables", "furniture", ("brown", "white"), 1),
    "potted plant": ("potted plants", "furniture", ("green",), 3),
    "toilet": ("toilets", "furniture", ("white",), 1),
    "surfboard": ("surfboards", "sports", ("white", "yellow", "red", "blue"), 2),
    "skateboard": ("skateboards", "sports", ("red", "black"), 2),
    "snowboard": ("snowboards", "sports", ("red", "blue", "black"), 2),
    "frisbee": ("frisbees", "sports", ("red", "yellow", "blue", "white"), 1),
    "kite": ("kites", "sports", ("red", "blue", "yellow", "green"), 3),
    "tennis racket": ("tennis rackets", "sports", ("black", "red"), 2),
    "baseball bat": ("baseball bats", "sports", ("brown", "black"), 1),
    "ball": ("balls", "sports", ("white", "red"), 2),
    "cup": ("cups", "kitchen", ("white", "red", "blue"), 3),
    "bottle": ("bottles", "kitchen", ("green", "blue", "brown"), 3),
    "bowl": ("bowls", "kitchen", ("white", "blue", "red"), 3), "knife": ("knives", "kitchen", ("silver",), 2),
    "fork": ("forks", "kitchen", ("silver",), 2), "wine glass": ("wine glasses", "kitchen", (), 3),
    "spoon": ("spoons", "kitchen", ("silver",), 2),
    "traffic light": ("traffic lights", "outdoor", (), 2),
    "fire hydrant": ("fire hydrants", "outdoor", ("red", "yellow", "blue"), 1),
    "stop sign": ("stop signs", "outdoor", ("red",), 1),
    "parking meter": ("parking meters", "outdoor", ("grey",), 2),
    "bench": ("benches", "outdoor", ("brown", "green", "grey"), 2),
    "umbrella": ("umbrellas", "outdoor", ("red", "blue", "black", "yellow"), 3),
}
SUPERCATEGORIES = ("people", "animals", "vehicles", "food", "furniture", "sports", "kitchen", "outdoor")
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "grey", "pink", "silver")
SIZES = ("small", "large")
NUMBER_WORDS = {2: "two", 3: "three"}
# Noun used in "what kind of ..." questions, per supercategory.
QUESTION_NOUN = {"people": "person", "animals": "animal", "vehicles": "vehicle", "food": "food",
                 "furniture": "furniture", "sports": "sports equipment", "kitchen": "kitchen item",
                 "outdoor": "street object"}

# Words that name each category, for zero-shot naming evaluation (any of them counts as naming it).
CATEGORY_SYNONYMS: dict[str, list[str]] = {name: [name, plural] for name, (plural, *_) in CATEGORIES.items()}
CATEGORY_SYNONYMS.update({
    "zebra": ["zebra", "zebras"], "surfer": ["surfer", "surfers", "surfing"],
    "surfboard": ["surfboard", "surfboards", "surf board", "surf boards"],
    "airplane": ["airplane", "airplanes", "plane", "planes", "aeroplane", "aeroplanes", "jet", "jets",
                 "aircraft", "airliner"],
    "man": ["man", "men", "person", "guy"], "woman": ["woman", "women", "person", "lady"],
    "child": ["child", "children", "kid", "kids", "boy", "girl"],
})
DEFAULT_NOVEL = ("zebra", "surfer", "surfboard", "airplane")

# Scene contexts: the phrases that place a scene, and the categories that plausibly appear in it.
SCENES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "beach": (("on the beach", "on a sandy beach", "at the beach"),
              ("man", "woman", "child", "dog", "bird", "umbrella", "kite", "frisbee", "ball", "bottle",
               "surfer", "surfboard")),
    "ocean": (("in the ocean", "out on the ocean", "on the open sea"),
              ("boat", "bird", "man", "surfer", "surfboard")),
    "kitchen": (("in a kitchen", "in the kitchen"),
                ("cup", "bottle", "bowl", "knife", "fork", "spoon", "wine glass", "pizza", "sandwich",
                 "banana", "apple", "orange", "cake", "carrot", "donut", "cat", "woman", "man", "table",
                 "chair")),
    "street": (("on a city street", "on the street", "on a busy street"),
               ("car", "bus", "truck", "bicycle", "motorcycle", "traffic light", "fire hydrant", "stop sign",
                "parking meter", "bench", "man", "woman", "child", "dog", "umbrella", "skateboarder",
                "skateboard")),
    "field": (("in a grassy field", "in a field", "out in a field"),
              ("horse", "cow", "sheep", "dog", "bird", "man", "child", "kite", "ball", "baseball player",
               "baseball bat", "bear", "zebra")),
    "sky": (("in the sky", "high in the sky", "against the open sky"), ("bird", "kite", "airplane")),
    "living room": (("in a living room", "in a cozy living room"),
                    ("couch", "chair", "potted plant", "cat", "dog", "man", "woman", "child", "cup",
                     "bottle")),
    "dining room": (("in a dining room", "in a bright dining room"),
                    ("table", "chair", "pizza", "sandwich", "cake", "cup", "wine glass", "bowl", "fork",
                     "knife", "hot dog", "donut", "man", "woman", "child")),
    "bedroom": (("in a bedroom", "in a quiet bedroom"),
                ("bed", "cat", "dog", "child", "woman", "potted plant")),
    "bathroom": (("in a bathroom", "in a tiled bathroom"), ("toilet", "cat", "bottle", "potted plant")),
    "snowy mountain": (("on a snowy mountain", "on a snowy hillside"),
                       ("skier", "snowboard", "man", "woman", "child", "dog")),
    "park": (("in a park", "in a public park"),
             ("bench", "dog", "child", "man", "woman", "frisbee", "kite", "bicycle", "skateboarder",
              "skateboard", "bird", "hot dog", "ball", "umbrella")),
    "airport": (("at an airport", "on an airport runway"),
                ("airplane", "bus", "truck", "car", "man", "woman")),
    "railway platform": (("at a railway platform", "on a station platform"),
                         ("train", "man", "woman", "child", "bench", "umbrella")),
    "savanna": (("on the savanna", "on a dry savanna"), ("elephant", "giraffe", "zebra", "bird")),
    "tennis court": (("on a tennis court",), ("tennis racket", "ball", "man", "woman", "child")),
}

# Actions: per supercategory, with category-specific ones that replace them. None names a category.
ACTIONS = {"people": ("standing", "walking", "sitting", "smiling"),
           "animals": ("standing", "walking", "resting", "running"),
           "vehicles": ("parked", "moving slowly"), "food": ("on a plate", "ready to eat"),
           "furniture": ("in the corner", "by the window"), "sports": ("on the ground", "ready for play"),
           "kitchen": ("on the counter", "by the sink"), "outdoor": ("on the sidewalk", "by the road")}
CATEGORY_ACTIONS = {"surfer": ("surfing", "riding a wave"),
                    "skier": ("skiing down a slope", "posing for a photo"),
                    "skateboarder": ("doing a trick", "rolling down a ramp"),
                    "baseball player": ("getting ready to swing", "waiting for a pitch"),
                    "bird": ("flying", "perched on a branch"), "horse": ("grazing", "galloping", "standing"),
                    "cow": ("grazing", "lying down"), "sheep": ("grazing", "standing together"),
                    "zebra": ("grazing", "standing in the grass", "running"),
                    "airplane": ("flying overhead", "taking off"),
                    "boat": ("floating on the water", "sailing"),
                    "train": ("pulling into the station", "waiting at the station"), "kite": ("flying high",),
                    "umbrella": ("open", "standing open"), "surfboard": ("ready for the waves",)}
RELATIONS = ("next to", "near", "beside", "behind", "in front of")
HOLDABLE = ("sports", "kitchen", "food")
# fmt: on


def sample_graph(
    rng: np.random.Generator, novel: tuple[str, ...] = DEFAULT_NOVEL, anchor: str | None = None
) -> dict:
    """Draw one scene graph.

    Parameters
    ----------
    rng : numpy.random.Generator
    novel : tuple of str
        Held-out categories: never drawn unless given as `anchor`.
    anchor : str, optional
        Category of the first object (used to make novel stimuli); its scene is drawn among the
        scenes that contain it, and the other objects are non-novel categories of that scene.
    """
    if anchor is None:
        scene = str(rng.choice(list(SCENES)))
        pool = [c for c in SCENES[scene][1] if c not in novel]
        first = str(rng.choice(pool))
    else:
        scene = str(rng.choice([s for s, (_, cats) in SCENES.items() if anchor in cats]))
        pool = [c for c in SCENES[scene][1] if c not in novel and c != anchor]
        first = anchor
    others = [c for c in pool if c != first]
    n_extra = int(rng.integers(0, min(2, len(others)) + 1))
    names = [first] + [str(c) for c in rng.choice(others, size=n_extra, replace=False)]
    objects = [_sample_object(rng, name) for name in names]
    relations = []
    if len(objects) > 1:
        holds = CATEGORIES[names[0]][1] == "people" and CATEGORIES[names[1]][1] in HOLDABLE
        predicate = "holding" if holds and rng.random() < 0.6 else str(rng.choice(RELATIONS))
        relations.append({"subject": 0, "predicate": predicate, "object": 1})
    return {"scene": scene, "objects": objects, "relations": relations}


def _sample_object(rng: np.random.Generator, name: str) -> dict:
    plural, supercategory, colours, max_count = CATEGORIES[name]
    actions = CATEGORY_ACTIONS.get(name, ACTIONS[supercategory])
    return {
        "category": name,
        "supercategory": supercategory,
        "count": int(rng.integers(1, max_count + 1)),
        "colour": str(rng.choice(colours)) if colours else None,
        # "a large man" reads oddly: people carry no size attribute.
        "size": None if supercategory == "people" else str(rng.choice(SIZES)),
        "action": str(rng.choice(actions)),
    }


# ----------------------------------------------------------------------------- captions
def noun_phrase(obj: dict, colour: bool = True, size: bool = False) -> str:
    """``a large brown dog`` / ``two dogs``: count word, optional size and colour, noun."""
    plural = CATEGORIES[obj["category"]][0]
    words = [w for w, keep in ((obj["size"], size), (obj["colour"], colour)) if keep and w]
    noun = obj["category"] if obj["count"] == 1 else plural
    head = " ".join(words + [noun])
    if obj["count"] > 1:
        return f"{NUMBER_WORDS[obj['count']]} {head}"
    return f"{'an' if head[0] in 'aeiou' else 'a'} {head}"


def _be(obj: dict) -> str:
    return "is" if obj["count"] == 1 else "are"


# Templates over: S (subject phrase), be, P (predicate: relation + object, or action), W (scene phrase),
# X (", with <extra> nearby"), A (" and <extra>"), N (scene name with article). Every one names every object.
TEMPLATES = (
    "{S} {be} {P} {W}{X}.",
    "{W}, {S} {be} {P}{A}.",
    "A photo of {S} {P} {W}{X}.",
    "There {be} {S} {P} {W}{X}.",
    "{N} scene with {S} {P}{A}.",
    "{S} {P} {W}{X}.",
    "This image shows {S} {P} {W}{X}.",
)


def render_caption(
    graph: dict, template: str, rng: np.random.Generator | None = None, scene_phrase: str | None = None
) -> str:
    """Fill one template from `graph`; `rng` decides whether colours/sizes are mentioned (all if None)."""

    def np_(obj):
        if rng is None:
            return noun_phrase(obj, colour=True, size=True)
        return noun_phrase(obj, colour=bool(rng.random() < 0.6), size=bool(rng.random() < 0.25))

    objs = graph["objects"]
    subject = np_(objs[0])
    if graph["relations"]:
        rel = graph["relations"][0]
        predicate = f"{rel['predicate']} {np_(objs[rel['object']])}"
    else:
        predicate = objs[0]["action"]
    extras = [np_(o) for o in objs[2:]]
    where = scene_phrase or SCENES[graph["scene"]][0][0]
    text = template.format(
        S=subject,
        be=_be(objs[0]),
        P=predicate,
        W=where,
        N=f"{_article(graph['scene'])} {graph['scene']}",
        X=f", with {' and '.join(extras)} nearby" if extras else "",
        A="".join(f" and {e}" for e in extras),
    )
    return text[0].upper() + text[1:]


def canonical_caption(graph: dict) -> str:
    """The fully specified caption (all attributes, first template): what the encoding model 'sees'."""
    return render_caption(graph, TEMPLATES[0])


def captions_for(graph: dict, rng: np.random.Generator, n: int = 5) -> list[str]:
    """`n` reference captions: the canonical one, then distinct templates with varied attributes."""
    if not 1 <= n <= len(TEMPLATES):
        raise InputError("captions_for", "n", f"{n} captions requested; 1..{len(TEMPLATES)} templates exist")
    order = 1 + rng.permutation(len(TEMPLATES) - 1)
    out = [canonical_caption(graph)]
    for t in order[: n - 1]:
        out.append(render_caption(graph, TEMPLATES[t], rng, str(rng.choice(SCENES[graph["scene"]][0]))))
    return out


# ----------------------------------------------------------------------------- QA
def qa_for(graph: dict, rng: np.random.Generator, novel: tuple[str, ...] = DEFAULT_NOVEL) -> list[dict]:
    """Question–answer pairs derived from `graph` (answers lower-case; counts as digits).

    Negatives ("is there ...?" → "no") name a non-novel category from a supercategory absent from
    the scene, so they can never contradict the graph or its captions, nor leak a novel category.
    """
    objs = graph["objects"]
    qa = [
        {
            "question": str(rng.choice(("Where was this picture taken?", "Where is this scene?"))),
            "answer": graph["scene"],
            "type": "where",
        }
    ]
    supers = [o["supercategory"] for o in objs]
    for obj in objs:
        name, plural = obj["category"], CATEGORIES[obj["category"]][0]
        if supers.count(obj["supercategory"]) == 1:
            qa.append(
                {
                    "question": f"What kind of {QUESTION_NOUN[obj['supercategory']]} is in the picture?",
                    "answer": name,
                    "type": "what",
                }
            )
        qa.append(
            {"question": f"How many {plural} are there?", "answer": str(obj["count"]), "type": "how many"}
        )
        if obj["colour"]:
            q = f"What colour is the {name}?" if obj["count"] == 1 else f"What colour are the {plural}?"
            qa.append({"question": q, "answer": obj["colour"], "type": "what colour"})
    present = objs[int(rng.integers(len(objs)))]["category"]
    qa.append(
        {
            "question": f"Is there {_article(present)} {present} in the image?",
            "answer": "yes",
            "type": "is there",
        }
    )
    absent = [c for c, (_, sup, _, _) in CATEGORIES.items() if sup not in supers and c not in novel]
    missing = str(rng.choice(absent))
    qa.append(
        {
            "question": f"Is there {_article(missing)} {missing} in the image?",
            "answer": "no",
            "type": "is there",
        }
    )
    return qa


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


# ----------------------------------------------------------------------------- checks
def mentions(text: str, category: str) -> bool:
    """Whether `text` names `category` (whole words, any synonym)."""
    lowered = text.lower()
    return any(
        re.search(rf"\b{re.escape(s)}\b", lowered) for s in CATEGORY_SYNONYMS.get(category, [category])
    )


def check_novel(novel) -> tuple[str, ...]:
    """Validate held-out category names against the vocabulary; each must appear in some scene."""
    novel = tuple(novel)
    unknown = [c for c in novel if c not in CATEGORIES]
    if unknown:
        raise InputError(
            "config", "novel_categories", f"unknown categories {unknown}; known: {sorted(CATEGORIES)}"
        )
    return novel


def make_stimulus(
    index: int,
    rng: np.random.Generator,
    novel: tuple[str, ...],
    anchor: str | None = None,
    n_captions: int = 5,
) -> dict:
    """One row of ``stimuli.jsonl``: scene graph, captions, QA, categories and the novel flag."""
    graph = sample_graph(rng, novel, anchor)
    categories = [o["category"] for o in graph["objects"]]
    return {
        "stimulus": index,
        "key": f"stim-{index:06d}",
        "captions": captions_for(graph, rng, n_captions),
        "qa": qa_for(graph, rng, novel),
        "categories": categories,
        "supercategories": sorted({o["supercategory"] for o in graph["objects"]}),
        "novel": any(c in novel for c in categories),
        "graph": graph,
    }


def make_stimuli(
    n: int, rng: np.random.Generator, novel=DEFAULT_NOVEL, novel_fraction: float = 0.05, n_captions: int = 5
) -> list[dict]:
    """`n` stimuli, of which ``round(n * novel_fraction)`` (at least one per novel category if that
    fraction allows any) are anchored on a novel category, at seeded random positions."""
    novel = check_novel(novel)
    if not 0.0 <= novel_fraction < 1.0:
        raise InputError("config", "novel_fraction", f"{novel_fraction} is not in [0, 1)")
    n_novel = int(round(n * novel_fraction)) if novel else 0
    positions = set(rng.permutation(n)[:n_novel].tolist())
    anchors = iter(novel[i % len(novel)] for i in range(n_novel))
    return [
        make_stimulus(m, rng, novel, next(anchors) if m in positions else None, n_captions) for m in range(n)
    ]


def make_text_scenes(n: int, rng: np.random.Generator, novel=DEFAULT_NOVEL, n_captions: int = 5,
                     exclude=()) -> list[dict]:
    """`n` text-only scenes anchored on the novel categories in turn, never shown as stimuli.

    They are where a language model learns the novel words without any brain data (CorText's
    zero-shot naming rests on the LLM knowing them). Captions that are word for word in `exclude`
    (the stimuli's captions) are dropped, so no scene text is ever a test reference.
    """
    novel = check_novel(novel)
    if n and not novel:
        raise InputError("config", "n_text_scenes", "text-only scenes name novel categories, but none are set")
    exclude = set(exclude)
    out = []
    for i in range(n):
        row = make_stimulus(i, rng, novel, novel[i % len(novel)], n_captions)
        row.update(stimulus=None, key=f"text-{i:06d}", captions=[c for c in row["captions"] if c not in exclude])
        out.append(row)
    return out

