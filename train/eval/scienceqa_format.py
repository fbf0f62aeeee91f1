"""ScienceQA problems: loading, the prompt formats, and reading a letter from a reply.

Problems use ScienceQA's ``problems.json`` fields (``question``, ``choices``, ``answer`` as an
index, ``hint`` as the context, ``image``, ``subject``, ``grade``, ``split``). Formats:

- ``CQM-A``: context, question, options -> "The answer is X." (the paper's answer format);
- ``QCM-LEA``: question, context, options -> reasoning first, then "The answer is X.";
- ``letter``: question, context, lettered options -> the letter alone (LLaVA-1.5's form).
"""

import re
from dataclasses import dataclass
from pathlib import Path

from train.eval.rows import InputError, read_rows

LETTERS = "ABCDEFGHIJ"
FORMATS = ("CQM-A", "QCM-LEA", "letter")
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}

_ANSWER_IS = re.compile(r"(?i:answer is):?\s*\(?\**([A-J])\b\)?")
_BARE = re.compile(r"^\s*[(\[]?([A-J])[)\].:]?\s*$")
_LEADING = re.compile(r"^\s*[(\[]?([A-J])[)\].:]\s+\S")
_ANSWER_LABEL = re.compile(r"\b(?i:answer)\s*[:=]\s*\(?([A-J])\b")


@dataclass(frozen=True)
class Problem:
    pid: str
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    hint: str = ""
    image: str | None = None  # ScienceQA's file name (usually image.png)
    subject: str = ""
    grade: str = ""
    split: str = ""

    @property
    def letter(self) -> str:
        return LETTERS[self.answer]

    @property
    def context_type(self) -> str:
        """ScienceQA's context split: IMG (image), TXT (text context only), NO (neither)."""
        return "IMG" if self.image else "TXT" if self.hint.strip() else "NO"

    @property
    def grade_band(self) -> str:
        digits = re.sub(r"\D", "", self.grade)
        return "" if not digits else "G1-6" if int(digits) <= 6 else "G7-12"


def load_problems(path: Path, split: str | None = None, limit: int | None = None) -> list[Problem]:
    out = []
    for where, row in read_rows(path):
        pid = str(row.get("pid") or row.get("id") or where.rsplit("[", 1)[-1].rstrip("]"))
        choices = row.get("choices")
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
            raise InputError(f"{where}: problem {pid}: choices must be a list of 2-{len(LETTERS)} options")
        answer = row.get("answer")
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise InputError(f"{where}: problem {pid}: answer must be an option index, got {answer!r}")
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise InputError(f"{where}: problem {pid}: no question")
        if split and row.get("split") and row["split"] != split:
            continue
        out.append(Problem(pid, row["question"].strip(), tuple(str(c) for c in choices), answer,
                           (row.get("hint") or "").strip(), row.get("image") or None,
                           row.get("subject") or "", str(row.get("grade") or ""), row.get("split") or ""))
    return out[:limit] if limit is not None else out


def image_path(problem: Problem, root: Path) -> Path:
    """ScienceQA keeps images at ``<root>/<split>/<pid>/image.png``; also tried: ``<root>/<pid>/``,
    ``<root>/``."""
    root = Path(root)
    for candidate in (root / problem.split / problem.pid / problem.image, root / problem.pid / problem.image,
                      root / problem.image):
        if candidate.is_file():
            return candidate
    raise InputError(f"problem {problem.pid}: image {problem.image!r} not found under {root}")


def build_prompt(problem: Problem, fmt: str = "CQM-A") -> str:
    options = [f"{LETTERS[i]}. {c}" for i, c in enumerate(problem.choices)]
    context = problem.hint or "N/A"
    if fmt == "letter":
        lines = [problem.question] + ([f"Context: {problem.hint}"] if problem.hint else []) + options
        return "\n".join(lines + ["Answer with the option's letter from the given choices directly."])
    inline = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(problem.choices))
    if fmt == "CQM-A":
        return (f"Context: {context}\nQuestion: {problem.question}\nOptions: {inline}\n"
                "Reply with 'The answer is X.', where X is the letter of the correct option.")
    if fmt == "QCM-LEA":
        return (f"Question: {problem.question}\nContext: {context}\nOptions: {inline}\n"
                "Explain the relevant knowledge and your reasoning step by step, then finish with "
                "'The answer is X.', where X is the letter of the correct option.")
    raise ValueError(f"unknown prompt format {fmt!r}; expected one of {FORMATS}")


def parse_choice(text: str, n_options: int, options: tuple[str, ...] = ()) -> str | None:
    """The chosen letter, or None when the reply names no valid option.

    Tried in order: the last "The answer is X"; a bare letter ("B", "(B)", "B."); a leading
    letter ("B. Paris"); "Answer: B"; a reply that is exactly one option's text.
    """
    text = (text or "").strip()
    valid = LETTERS[:n_options]
    found = _ANSWER_IS.findall(text)
    if found:
        return found[-1] if found[-1] in valid else None
    for pattern in (_BARE, _LEADING):
        m = pattern.match(text)
        if m and m.group(1) in valid:
            return m.group(1)
    m = _ANSWER_LABEL.search(text)
    if m and m.group(1) in valid:
        return m.group(1)
    plain = text.rstrip(".").strip().lower()
    matches = [LETTERS[i] for i, option in enumerate(options) if option.strip().lower() == plain]
    return matches[0] if len(matches) == 1 else None
