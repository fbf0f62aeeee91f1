"""LLaVA-Bench-style judging: the judge's prompt, parsing its two scores, the relative score.

The judge sees the symbolic context, the question, the reference answer (Assistant 1) and
the candidate (Assistant 2), and gives each a 1-10 score. Relative score per type and
overall = mean(candidate) / mean(reference) x 100 over the items the judge scored; items
whose reply cannot be parsed are counted as failures, never silently dropped.
"""

import re
from dataclasses import dataclass

JUDGE_SYSTEM = "You are a careful and fair reviewer of answers to questions about images."

_RUBRIC = (
    "You cannot see the image; the description above tells you what it shows (captions, then objects as "
    "category: [x1, y1, x2, y2] boxes with coordinates from 0 to 1). Two AI assistants answered the question "
    "as if they saw the image. Rate how helpful, relevant, accurate and detailed each answer is, "
    "with a score from 1 to 10 for each, higher being better.\n"
    "On the first line, write only the two scores, Assistant 1's then Assistant 2's, separated by a space. "
    "Then explain your ratings briefly, without letting the order of the answers sway you."
)

_NUMBER = r"(10(?:\.0+)?|\d(?:\.\d+)?)"
_LABELLED = (
    # "Assistant 1: 8", "Assistant 1's score = 8"
    re.compile(r"assistant\s*([12])\s*(?:'s)?\s*(?:score)?\s*[:=\-\u2013]\s*\**\s*"
               + _NUMBER + r"(?![\d.]*\d)", re.IGNORECASE),
    # "Assistant 1 receives a score of 8", "Assistant 2 gets 6"
    re.compile(r"assistant\s*([12])\b[^.\n]{0,40}?\b(?:scores?|scored|gets|receives|earns|deserves|rated)"
               r"\b\W{0,3}(?:a\s+)?(?:score\s+)?(?:of\s+)?" + _NUMBER + r"(?![\d.]*\d)", re.IGNORECASE),
)
_FILLER = re.compile(r"\b(?:scores?|and)\b|[\s,;:&*()\[\]]", re.IGNORECASE)
_OUT_OF_TEN = re.compile(_NUMBER + r"\s*/\s*10\b")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d+)?")


class JudgeParseError(ValueError):
    pass


def judge_messages(context: str, question: str, reference: str, candidate: str) -> list[dict]:
    user = (f"[Image description]\n{context}\n\n[Question]\n{question}\n\n"
            f"[Assistant 1]\n{reference}\n[End of Assistant 1]\n\n"
            f"[Assistant 2]\n{candidate}\n[End of Assistant 2]\n\n[Task]\n{_RUBRIC}")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def _in_range(pair: tuple[float, float], text: str) -> tuple[float, float]:
    if not all(1 <= v <= 10 for v in pair):
        raise JudgeParseError(f"scores {pair} outside 1-10 in the judge's reply {text[:80]!r}")
    return pair


def parse_scores(text: str) -> tuple[float, float]:
    """(reference score, candidate score) from the judge's reply; ``JudgeParseError`` if absent.

    Tried in order: a first line of exactly two numbers ("8 7", "8, 7", "8.5 7"); scores given
    as "x/10"; scores labelled "Assistant 1 ... 8" and "Assistant 2 ... 7".
    """
    text = (text or "").strip()
    if not text:
        raise JudgeParseError("empty judge reply")
    first = text.splitlines()[0].strip()
    tokens = _FILLER.sub(" ", first).split()
    if len(tokens) == 2 and all(_PLAIN_NUMBER.fullmatch(t) for t in tokens):
        return _in_range((float(tokens[0]), float(tokens[1])), text)
    out_of_ten = _OUT_OF_TEN.findall(text)
    if len(out_of_ten) >= 2:
        return _in_range((float(out_of_ten[0]), float(out_of_ten[1])), text)
    labelled: dict[str, float] = {}
    for pattern in _LABELLED:
        for who, value in pattern.findall(text):
            labelled.setdefault(who, float(value))
    if len(labelled) == 2:
        return _in_range((labelled["1"], labelled["2"]), text)
    raise JudgeParseError(f"no pair of 1-10 scores in the judge's reply {text[:80]!r}")


@dataclass(frozen=True)
class Judgement:
    question_id: str
    kind: str
    reference_score: float | None  # None: the judge's reply could not be parsed (or the call failed)
    candidate_score: float | None
    error: str | None = None


def relative_scores(judgements: list[Judgement]) -> dict:
    """Per type and overall: n, failures, mean scores, relative score (%)."""

    def summary(items: list[Judgement]) -> dict:
        scored = [j for j in items if j.error is None]
        out = {"n": len(items), "scored": len(scored), "failed": len(items) - len(scored),
               "reference_mean": None, "candidate_mean": None, "relative": None}
        if scored:
            ref = sum(j.reference_score for j in scored) / len(scored)
            cand = sum(j.candidate_score for j in scored) / len(scored)
            out.update(reference_mean=round(ref, 4), candidate_mean=round(cand, 4),
                       relative=round(100 * cand / ref, 2) if ref else None)
        return out

    kinds = sorted({j.kind for j in judgements})
    return {"overall": summary(judgements), "by_kind": {k: summary([j for j in judgements if j.kind == k])
                                                        for k in kinds}}
