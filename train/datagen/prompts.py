"""The teacher's prompts: per response type, a system message and hand-written few-shot examples.

Files under ``prompts/<kind>/``: ``system.txt``, ``example_<n>.context.txt`` (what the
teacher is given) and ``example_<n>.response.txt`` (what it should write); ``detail`` also
has ``instructions.txt``, the requests a detailed description answers. The query is
appended last, after the examples, as in the paper.
"""

from dataclasses import dataclass
from pathlib import Path

from train.builtin.symbolic import KINDS, SymbolicContext

PROMPTS_DIR = Path(__file__).parent / "prompts"


@dataclass(frozen=True)
class Example:
    context: str
    response: str


@dataclass(frozen=True)
class PromptSet:
    kind: str
    system: str
    examples: tuple[Example, ...]

    def messages(self, context: SymbolicContext) -> list[dict]:
        out = [{"role": "system", "content": self.system}]
        for ex in self.examples:
            out += [{"role": "user", "content": ex.context}, {"role": "assistant", "content": ex.response}]
        out.append({"role": "user", "content": context.text()})
        return out


def _read(path: Path) -> str:
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"{path}: empty prompt file")
    return text


def load_prompts(kind: str, root: Path = PROMPTS_DIR) -> PromptSet:
    if kind not in KINDS:
        raise ValueError(f"unknown response type {kind!r}; expected one of {KINDS}")
    folder = Path(root) / kind
    if not (folder / "system.txt").is_file():
        raise FileNotFoundError(f"{folder}: no system.txt")
    examples = []
    for ctx in sorted(folder.glob("example_*.context.txt")):
        response = ctx.with_name(ctx.name.replace(".context.txt", ".response.txt"))
        if not response.is_file():
            raise FileNotFoundError(f"{ctx}: no matching {response.name}")
        examples.append(Example(_read(ctx), _read(response)))
    return PromptSet(kind, _read(folder / "system.txt"), tuple(examples))


def detail_instructions(root: Path = PROMPTS_DIR) -> tuple[str, ...]:
    lines = (Path(root) / "detail" / "instructions.txt").read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())
