"""A deterministic template teacher for the synthetic world.

It plays the part of LLaVA's text-only teacher: it reads only the symbolic context
(captions and ``category: [x1, y1, x2, y2]`` boxes), never the scene or its pixels,
and writes the paper's three response types as LLaVA ``conversations``, speaking as
if it saw the image. The short-answer questions use the very wording shapes-bench
asks with, so the instruction-tuned model learns that format too.
"""

import itertools
import random
import re

from train.builtin.symbolic import (
    KINDS,
    SymbolicContext,
    SymbolicObject,
    box_centre,
    box_relation,
    box_third,
    relation_is_clear,
)

_BACKGROUND = re.compile(r"on (?:a )?(\w+)(?: background)?[.:]")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _split(obj: SymbolicObject) -> tuple[str, str]:
    colour, _, shape = obj.category.rpartition(" ")
    return colour, shape


def _centre(obj: SymbolicObject) -> tuple[float, float]:
    return box_centre(obj.box)


def _size(obj: SymbolicObject) -> str:
    return "large" if obj.box[2] - obj.box[0] >= 0.24 else "small"


def relation(a: SymbolicObject, b: SymbolicObject) -> str:
    return box_relation(a.box, b.box)


def clear_pairs(objs: list[SymbolicObject]) -> list[tuple[SymbolicObject, SymbolicObject]]:
    return [(a, b) for a in objs for b in objs if a is not b and relation_is_clear(a.box, b.box)]


def region(obj: SymbolicObject) -> str:
    r, c = box_third(obj.box)
    col = ("left", "", "right")[c]
    row = ("top", "", "bottom")[r]
    if not row and not col:
        return "in the centre"
    if row and col:
        return f"in the {row} {col}"
    return f"on the {col}" if col else f"at the {row}"


def background(context: SymbolicContext) -> str | None:
    for caption in context.captions:
        m = _BACKGROUND.search(caption)
        if m:
            return m.group(1)
    return None


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else f"{shape}s"


class _Facts:
    """Question/answer pairs that follow from the symbolic context alone."""

    def __init__(self, context: SymbolicContext, rng: random.Random):
        self.ctx, self.rng = context, rng
        self.objs = list(context.objects)
        self.shapes = [_split(o)[1] for o in self.objs]
        self.colours = [_split(o)[0] for o in self.objs]

    def count(self, short: bool) -> tuple[str, str]:
        n = len(self.objs)
        if short:
            return "How many shapes are in the image? Answer with a number.", str(n)
        q = self.rng.choice(["How many shapes are there?", "How many objects can you see?", "Count the shapes."])
        return q, f"There {'is' if n == 1 else 'are'} {n} {_plural('shape', n)} in the image."

    def count_kind(self, short: bool) -> tuple[str, str]:
        shape = self.rng.choice(self.shapes)
        n = self.shapes.count(shape)
        if short:
            return f"How many {shape}s are there? Answer with a number.", str(n)
        return f"How many {shape}s are in the picture?", f"There {'is' if n == 1 else 'are'} {n} {_plural(shape, n)}."

    def attribute(self, short: bool) -> tuple[str, str] | None:
        i = self.rng.randrange(len(self.objs))
        colour, shape = self.colours[i], self.shapes[i]
        if self.shapes.count(shape) == 1 and (self.colours.count(colour) > 1 or self.rng.random() < 0.5):
            if short:
                return f"What colour is the {shape}? Answer with one word.", colour
            return f"What is the colour of the {shape}?", f"The {shape} is {colour}."
        if self.colours.count(colour) == 1:
            if short:
                return f"What shape is {colour}? Answer with one word.", shape
            return f"Which shape is {colour}?", f"The {colour} shape is a {shape}."
        return None

    def exists(self, short: bool) -> tuple[str, str]:
        present = {o.category for o in self.objs}
        if self.rng.random() < 0.5:
            probe, yes = self.rng.choice(sorted(present)), True
        else:
            colours = sorted(set(self.colours) | {"red", "green", "blue", "yellow", "purple", "orange", "white", "black"})
            absent = [f"{c} {s}" for c in colours for s in ("circle", "square", "triangle") if f"{c} {s}" not in present]
            probe, yes = self.rng.choice(absent), False
        if short:
            return f"Is there a {probe} in the image? Answer yes or no.", "yes" if yes else "no"
        return f"Can you see a {probe}?", f"Yes, there is a {probe}." if yes else f"No, there is no {probe}."

    def relation(self, short: bool) -> tuple[str, str] | None:
        pairs = clear_pairs(self.objs)
        if not pairs:
            return None
        a, b = self.rng.choice(pairs)
        rel = relation(a, b)
        if short:
            return ((f"Where is the {a.category} relative to the {b.category}? "
                    "Answer left of, right of, above or below."), rel)
        return f"Where is the {a.category} compared to the {b.category}?", f"The {a.category} is {rel} the {b.category}."

    def where(self, short: bool) -> tuple[str, str]:
        obj = self.rng.choice(self.objs)
        return f"Where is the {obj.category} in the image?", f"The {obj.category} is {region(obj)} of the image."

    def size(self, short: bool) -> tuple[str, str]:
        obj = self.rng.choice(self.objs)
        return f"Is the {obj.category} large or small?", f"The {obj.category} is {_size(obj)}."

    def background(self, short: bool) -> tuple[str, str] | None:
        bg = background(self.ctx)
        if bg is None:
            return None
        if short:
            return "What colour is the background? Answer with one word.", bg
        return "What colour is the background?", f"The background is {bg}."


_CONVERSATION = ("count", "count_kind", "attribute", "exists", "relation", "where", "size", "background")


def _conversation(facts: _Facts, rng: random.Random, turns: int, short_odds: float,
                  weights: dict[str, float] | None = None) -> list[tuple[str, str]]:
    out, asked = [], set()
    for _ in range(turns * 4):
        if len(out) == turns:
            break
        if weights:
            kind = rng.choices(_CONVERSATION, [weights.get(k, 1.0) for k in _CONVERSATION])[0]
        else:
            kind = rng.choice(_CONVERSATION)
        qa = getattr(facts, kind)(rng.random() < short_odds)
        if qa is not None and qa[0] not in asked:
            asked.add(qa[0])
            out.append(qa)
    return out


def describe(context: SymbolicContext) -> str:
    objs = list(context.objects)
    n = len(objs)
    bg = background(context)
    parts = [f"The image shows {n} {_plural('shape', n)}" + (f" on a {bg} background." if bg else ".")]
    for obj in objs:
        parts.append(f"There is a {_size(obj)} {obj.category} {region(obj)}.")
    for a, b in itertools.pairwise(objs):
        if relation_is_clear(a.box, b.box):
            parts.append(f"The {a.category} is {relation(a, b)} the {b.category}.")
    return " ".join(parts)


def _complex(facts: _Facts, rng: random.Random) -> tuple[str, str]:
    objs = facts.objs
    n = len(objs)
    choice = rng.randrange(3) if n >= 2 else 0
    if choice == 0:
        obj = rng.choice(objs)
        left = n - 1
        return (f"If the {obj.category} were taken away, how many shapes would be left? Explain.",
                (f"I can see {n} {_plural('shape', n)}, and one of them is the {obj.category}. "
                f"Without it, {left} {_plural('shape', left)} would remain, so the answer is {left}."))
    if choice == 1:
        top = min(objs, key=lambda o: _centre(o)[1])
        listing = ", ".join(f"the {o.category} is {region(o)}" for o in objs)
        return ("Which shape is closest to the top of the image, and how can you tell?",
                (f"Looking at where each shape sits: {listing}. The highest one is the {top.category}, "
                f"so the {top.category} is closest to the top."))
    counts = {s: facts.shapes.count(s) for s in ("circle", "square", "triangle")}
    a, b = rng.sample(sorted(counts), 2)
    verdict = "more" if counts[a] > counts[b] else "fewer" if counts[a] < counts[b] else "as many"
    tail = f"there are as many {a}s as {b}s" if verdict == "as many" else f"there are {verdict} {a}s than {b}s"
    return (f"Are there more {a}s or more {b}s in the image? Reason step by step.",
            (f"First I count the {a}s: {counts[a]}. Then the {b}s: {counts[b]}. "
            f"Comparing {counts[a]} with {counts[b]}, {tail}."))


DETAIL_PROMPTS = (
    "Describe the image in detail.",
    "Give a detailed description of this picture.",
    "What do you see in this image? Describe it thoroughly.",
)


def template_conversation(context: SymbolicContext, kind: str, seed: int = 0,
                          turns: tuple[int, int] = (3, 5), short_odds: float = 0.6,
                          weights: dict[str, float] | None = None) -> list[dict]:
    """LLaVA ``conversations`` of one response type, written from ``context`` only.

    No ``<image>`` token: whoever builds the training sample adds it to the first turn.
    ``turns`` bounds the number of question-answer pairs of a conversation; ``short_odds`` is
    the share of them asked in the one-word-answer form (the form shapes-bench asks in);
    ``weights`` (question kind -> relative odds, 1 where absent) asks some kinds more often.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown response type {kind!r}; expected one of {KINDS}")
    if not context.objects:
        raise ValueError(f"{context.image_id}: no objects to talk about")
    rng = random.Random(f"{context.image_id}/{kind}/{seed}")
    facts = _Facts(context, rng)
    if kind == "conversation":
        pairs = _conversation(facts, rng, rng.randint(*turns), short_odds, weights)
    elif kind == "detail":
        pairs = [(rng.choice(DETAIL_PROMPTS), describe(context))]
    else:
        pairs = [_complex(facts, rng)]
    out = []
    for q, a in pairs:
        out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return out
